//! Two `ferry serve` replicas (real processes) on one PostgreSQL database (a real cluster of
//! the test's own on 127.0.0.1) behind nginx balancing between them, with real `ferryd`
//! devices: enrollment, check-ins, a web session, configuration, a rollout and its halt
//! through both; a replica killed (SIGKILL) in the middle of the rollout and in the middle
//! of a promotion; the database restarted while devices update.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_fixtures::daemon::{free_ports, http_status, Daemon};
use ferry_fixtures::nginx::Nginx;
use ferry_fixtures::postgres::Postgres;
use serde_json::{json, Value};

use crate::channels::{promote, set_up_keys, CHANNEL_KEY};
use crate::harness::{ferryd, ferryd_bin, running_version, Env};

/// Longer than a replica's check-in freshness bound (250 ms).
const FRESH: Duration = Duration::from_secs(1);

/// The `ferry` built beside the `ferryd` the tests run.
fn ferry_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ferryd")).with_file_name("ferry");
    assert!(p.is_file(), "{} is missing: build the workspace's binaries (cargo build --bins)", p.display());
    p
}

fn ferry(args: &[&str]) -> String {
    let out = std::process::Command::new(ferry_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "ferry {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// One `ferry serve` process on the fleet's database, promoting with the channel key.
struct Replica {
    daemon: Daemon,
    port: u16,
}

fn replica(env: &Env, url: &str, name: &str) -> Replica {
    let repo = env.repo.path().to_str().unwrap().to_string();
    let key = env.path().join("channel.key");
    for attempt in 0..5 {
        let port = free_ports(1).unwrap()[0];
        let scratch = env.path().join(format!("{name}-scratch-{attempt}"));
        let log = env.path().join(format!("{name}.log"));
        let listen = format!("127.0.0.1:{port}");
        let mut daemon = Daemon::spawn(
            name,
            &ferry_bin(),
            [
                "serve",
                "--repo",
                &repo,
                "--listen",
                &listen,
                "--scratch",
                scratch.to_str().unwrap(),
                "--channel-key",
                key.to_str().unwrap(),
                "--no-prepare",
                "--enrollments-per-minute",
                "100",
            ],
            &[("FERRY_FLEET_DB", url)],
            &[],
            &log,
        )
        .unwrap();
        match daemon.wait_until("answer", || http_status(port, "/v1/keys", &[]).is_some()) {
            Ok(()) => return Replica { daemon, port },
            Err(_) if daemon.exited() && daemon.log_tail(20).contains("in use") => continue,
            Err(e) => panic!("{e:#}"),
        }
    }
    panic!("{name}: no free port in 5 tries")
}

/// An admin API call to `base` (the balancer or one replica): status and JSON answer.
fn admin(base: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let url = format!("{base}/v1/admin/{path}");
        let mut req = if method == "POST" { c.post(url) } else { c.get(url) };
        req = req.bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or(Value::Null))
            }
            // The replica died under the request.
            Err(e) => (0, Value::String(e.to_string())),
        }
    })
}

/// A device following `stable` through the balancer; with `bad`, release 2 fails its
/// health check.
fn device(env: &Env, server: &str, serial: &str, bad: bool) -> PathBuf {
    let health = if bad { "! grep -qx 2 etc/version" } else { "true" };
    let health = format!("[health]\ncommands = [\"{health}\"]\ndeadline = 2\ninterval = 1\n");
    env.fleet_device(serial, server, serial, &health, "unsigned_config = true\n")
}

/// Every device as the fleet (through `base`) has it, by serial.
fn fleet_devices(base: &str, token: &str) -> std::collections::BTreeMap<String, Value> {
    let (status, v) = admin(base, token, "GET", "devices", None);
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().iter().map(|d| (d["serial"].as_str().unwrap().to_string(), d.clone())).collect()
}

fn rollout(base: &str, token: &str) -> Value {
    let (status, v) = admin(base, token, "GET", "rollouts", None);
    assert_eq!(status, 200, "{v}");
    v[0].clone()
}

#[test]
fn two_replicas_behind_a_balancer_share_the_fleet_through_a_replica_killed_and_the_database_restarted() {
    let mut pg = Postgres::start(false).unwrap();
    let url = pg.create_database("fleet").unwrap();
    let mut env = Env::new();
    set_up_keys(&env);
    ferry_fixtures::test_key(CHANNEL_KEY).save(&env.path().join("channel.key")).unwrap();
    let (c1, c2, c3) = (env.commit(1, "1"), env.commit(2, "2"), env.commit(3, "3"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    // The test lets go of the repository's write lock: the replicas promote.
    let follower = env.path().join("test-follower");
    env.repo = ferry_store::Repository::open_follower(env.repo.path(), &follower).unwrap();
    // The first tokens written to the database by the real CLI, as the README does it.
    let token = ferry(&["admin", "token", "create", "--name", "ops", "--fleet-db", &url]).trim().to_string();
    let enrollment = ferry(&["admin", "token", "create", "--name", "factory", "--enrollment", "--fleet-db", &url])
        .trim()
        .to_string();
    std::fs::write(env.path().join("enrollment-token"), format!("{enrollment}\n")).unwrap();

    let mut a = replica(&env, &url, "replica-a");
    let b = replica(&env, &url, "replica-b");
    let lb = Nginx::balance(&[a.port, b.port]).unwrap();
    let (via_a, via_b, via_lb) =
        (format!("http://127.0.0.1:{}", a.port), format!("http://127.0.0.1:{}", b.port), lb.url());

    // Six devices enroll and install release 1 through the balancer (so through both).
    let devices: Vec<PathBuf> = (0..6).map(|i| device(&env, &via_lb, &format!("SN-{i}"), i >= 3)).collect();
    for d in &devices {
        let (ok, _, err) = ferryd(d, &["update"]);
        assert!(ok, "{err}");
        assert_eq!(running_version(d), "1");
    }
    for base in [&via_a, &via_b] {
        let list = fleet_devices(base, &token);
        assert_eq!(list.len(), 6, "{base}: {list:?}");
        assert!(list.values().all(|d| d["report"]["current_version"] == "1"), "{list:?}");
    }

    // The web UI's session: signed in through A, used and ended through B, gone on A.
    let (cookie, csrf) = sign_in(&via_a, &token);
    assert_eq!(with_session(&via_b, "GET", "devices", &cookie, None), 200);
    assert_eq!(with_session(&via_b, "DELETE", "session", &cookie, Some(&csrf)), 200);
    assert_eq!(with_session(&via_a, "GET", "devices", &cookie, None), 401);

    // Configuration set through A for the fleet and through B for one device reaches every
    // device through the balancer.
    let set = |base: &str, scope: &str, body: Value| {
        let (status, v) = admin(base, &token, "POST", &format!("config/{scope}"), Some(body));
        assert_eq!(status, 200, "{v}");
        v["version"].as_u64().unwrap()
    };
    set(&via_a, "fleet", json!({ "set": { "REGION": "eu" } }));
    let config_version = set(&via_b, "device/SN-0", json!({ "set": { "NAME": "zero" } }));
    for d in &devices[..2] {
        let (ok, _, err) = ferryd(d, &["update"]);
        assert!(ok, "{err}");
    }
    let applied = |serial: &str| -> Value {
        serde_json::from_slice(&std::fs::read(env.path().join(serial).join("state/config.json")).unwrap()).unwrap()
    };
    let zero = applied("SN-0");
    assert_eq!(
        (zero["version"].as_u64(), &zero["values"]),
        (Some(config_version), &json!({ "NAME": "zero", "REGION": "eu" }))
    );
    assert_eq!(applied("SN-1")["values"], json!({ "REGION": "eu" }));

    // A rollout of all of them that halts above 40% failures, started through the
    // balancer; release 2 promoted through replica A's admin API.
    let start = json!({ "percent": 100, "max_failure_percent": 40 });
    let (status, v) = admin(&via_lb, &token, "POST", "rollouts/stable/start", Some(start));
    assert_eq!(status, 200, "{v}");
    let (status, v) = admin(&via_a, &token, "POST", "channels/stable/promote", Some(json!({ "commit": c2.to_hex() })));
    assert_eq!(status, 200, "{v}");
    // Each replica sees a promotion within its check-in freshness bound (250 ms; waited
    // out with room to spare on a busy machine).
    std::thread::sleep(FRESH);
    for d in &devices[..3] {
        let (ok, _, err) = ferryd(d, &["update"]);
        assert!(ok, "{err}");
        assert_eq!(running_version(d), "2");
    }
    assert_eq!(
        (rollout(&via_b, &token)["took"].as_u64(), rollout(&via_a, &token)["failed"].as_u64()),
        (Some(3), Some(0))
    );

    // Replica A is killed while a device whose release 2 fails updates: the balancer sends
    // the rest to B, and the device, told 502 for what A dropped, asks again.
    let mut child =
        std::process::Command::new(ferryd_bin()).arg("--config").arg(&devices[3]).arg("update").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    a.daemon.stop();
    let _ = child.wait();
    // Every failing device's outcome reaches the fleet (a device asks again at its next run
    // if a report was cut).
    for (i, d) in devices.iter().enumerate().skip(3) {
        let serial = format!("SN-{i}");
        let mut tries = 0;
        loop {
            let known = fleet_devices(&via_b, &token)[&serial]["report"]["last_result"].clone();
            if known == "rolled-back" {
                break;
            }
            tries += 1;
            assert!(tries <= 3, "{serial}: the fleet has {known} after {tries} runs");
            let _ = ferryd(d, &["update"]);
        }
        assert_eq!(running_version(d), "1", "{serial} rolled back");
    }
    // The halt fired on the third failure (3 of 6 = 50% > 40%), with every device counted once.
    let r = rollout(&via_lb, &token);
    assert_eq!(
        (r["state"].as_str(), r["took"].as_u64(), r["failed"].as_u64()),
        (Some("paused"), Some(6), Some(3)),
        "{r}"
    );
    assert!(r["halt_reason"].as_str().unwrap().starts_with("3 of 6 devices that took serial 2 failed"), "{r}");
    // Nothing half-written: the audit log's numbers run without a hole, the halt in it once.
    let (status, log) = admin(&via_lb, &token, "GET", "audit", None);
    assert_eq!(status, 200);
    let mut seqs: Vec<u64> = log.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{log}");
    let halts = log.as_array().unwrap().iter().filter(|e| e["action"] == "rollout halt").count();
    assert_eq!(halts, 1, "{log}");
    // Every device's newest check-in is the fleet's: what each device runs.
    let list = fleet_devices(&via_lb, &token);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(list[&format!("SN-{i}")]["report"]["current_version"], running_version(d), "SN-{i}");
    }

    // A promotion cut by SIGKILL: the channel has the old document or the new one, never
    // a part, and the promotion made again through the balancer lands once.
    let mut a = replica(&env, &url, "replica-a2");
    let serial_before = channel_serial(&via_b, &token);
    let via_a = format!("http://127.0.0.1:{}", a.port);
    let (tx, rx) = std::sync::mpsc::channel();
    let (t, c3_hex) = (token.clone(), c3.to_hex());
    std::thread::spawn(move || {
        tx.send(admin(&via_a, &t, "POST", "channels/stable/promote", Some(json!({ "commit": c3_hex })))).unwrap()
    });
    std::thread::sleep(Duration::from_millis(15));
    a.daemon.stop();
    let cut = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    std::thread::sleep(FRESH);
    let serial_after = channel_serial(&via_b, &token);
    eprintln!("the promotion cut by SIGKILL answered {:?}; the channel went {serial_before} → {serial_after}", cut.0);
    assert!([serial_before, serial_before + 1].contains(&serial_after), "{serial_before} → {serial_after} ({cut:?})");
    let (status, v) = admin(&via_lb, &token, "POST", "channels/stable/promote", Some(json!({ "commit": c3.to_hex() })));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["serial"].as_u64(), Some(serial_before + 1), "{v} ({cut:?})");
    std::thread::sleep(FRESH);
    // A healthy device that took release 2 takes 3 (the rollout's halt keeps the rest).
    let (ok, _, err) = ferryd(&devices[0], &["update"]);
    assert!(ok, "{err}");
    assert_eq!(running_version(&devices[0]), "3");

    // The database restarted while devices check in: B answers 503 with Retry-After while
    // it is down, and everything goes through again once it is back.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let restarted_at = std::thread::scope(|s| {
        for d in &devices {
            let stop = &stop;
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = ferryd(d, &["update"]);
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        pg.stop();
        let (status, v) = admin(&via_b, &token, "GET", "devices", None);
        assert_eq!(status, 503, "{v}");
        assert!(v["error"].as_str().unwrap().contains("try again"), "{v}");
        std::thread::sleep(Duration::from_secs(2));
        pg.restart().unwrap();
        let at = chrono_now();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        at
    });
    for d in &devices {
        let (ok, _, err) = ferryd(d, &["update"]);
        assert!(ok, "{err}");
    }
    let list = fleet_devices(&via_lb, &token);
    for (serial, d) in &list {
        assert!(d["last_seen"].as_i64().unwrap() >= restarted_at, "{serial} not seen since the restart: {d}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(b.port, "/v1/keys", &[]).is_none() {
        assert!(Instant::now() < deadline, "replica B stopped answering");
    }
    drop(lb);
}

/// Signs in to the web UI at `base`: the session cookie (`name=value`) and CSRF token.
fn sign_in(base: &str, token: &str) -> (String, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/admin/session"))
            .header("content-type", "application/json")
            .body(json!({ "token": token }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        (cookie, v["csrf_token"].as_str().unwrap().to_string())
    })
}

/// A request of the web page's with `cookie` (and the CSRF token of a change): its status.
fn with_session(base: &str, method: &str, path: &str, cookie: &str, csrf: Option<&str>) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let url = format!("{base}/v1/admin/{path}");
        let mut req = match method {
            "DELETE" => c.delete(url),
            _ => c.get(url),
        };
        req = req.header("cookie", cookie).header("sec-fetch-site", "same-origin");
        if let Some(t) = csrf {
            req = req.header("x-csrf-token", t);
        }
        req.send().await.unwrap().status().as_u16()
    })
}

fn channel_serial(base: &str, token: &str) -> u64 {
    let (status, v) = admin(base, token, "GET", "channels", None);
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().iter().find(|c| c["channel"] == "stable").unwrap()["serial"].as_u64().unwrap()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}
