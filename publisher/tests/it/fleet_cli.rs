//! `ferry admin`, `ferry devices`, `ferry device` and `ferry audit` against a real
//! `ferry serve --fleet` process.

use crate::cmd::{fails_with as fails, ferry, ok, Serve};

/// Where a test's fleet is kept, as the command line names it: `--fleet DIR`, or
/// `--fleet-db URL` with `FERRY_TEST_FLEET_DB=postgres`.
struct FleetArg {
    flag: &'static str,
    at: String,
    store: ferry_fixtures::postgres::TestFleetStore,
}

impl FleetArg {
    fn new(dir: &std::path::Path) -> FleetArg {
        let store = ferry_fixtures::postgres::TestFleetStore::new(dir).unwrap();
        let flag = if store.is_postgres() { "--fleet-db" } else { "--fleet" };
        if !store.is_postgres() {
            // An empty fleet store, as `admin token create --create-fleet` makes one.
            drop(
                ferry_publisher::fleet::Fleet::open(
                    ferry_publisher::fleet::db::Location::parse(&store.at),
                    ferry_publisher::fleet::Settings::default(),
                )
                .unwrap(),
            );
        }
        FleetArg { flag, at: store.at.clone(), store }
    }
}

/// `ferry serve --fleet` (or `--fleet-db`), enrolling as fast as these tests' simulated
/// fleets do (the rate limit has its own test in `fleet_attacks`).
fn serve(repo: &str, fleet: &FleetArg) -> Serve {
    crate::cmd::serve(repo, &[fleet.flag, &fleet.at, "--enrollments-per-minute", "1000000"])
}

fn enroll(url: &str, serial: &str, token: &str) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let body = serde_json::json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": token });
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/device/enroll"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), serde_json::from_slice(&r.bytes().await.unwrap()).unwrap())
    })
}

#[test]
fn an_operator_manages_the_fleet_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo").display().to_string();
    let fleet = FleetArg::new(&t.path().join("fleet"));
    ok(&["init", "--repo", &repo]);
    fails(&["admin", "token", "create", "--name", "ops"], "--fleet DIR");
    // A mistyped fleet directory is an error, not a second, empty fleet; so is one that
    // holds something else.
    let typo = t.path().join("flet").display().to_string();
    fails(&["admin", "token", "create", "--name", "ops", "--fleet", &typo], "no fleet store at");
    fails(&["serve", "--repo", &repo, "--fleet", &typo], "add --create-fleet");
    assert!(!std::path::Path::new(&typo).exists());
    fails(&["serve", "--repo", &repo, "--fleet", &repo], "holds no fleet store");
    let admin = ok(&["admin", "token", "create", "--name", "ops", fleet.flag, &fleet.at]).trim().to_string();
    assert!(admin.starts_with("fa_") && admin.len() == 67, "{admin}");

    let server = serve(&repo, &fleet);
    let url = server.1.clone();
    if fleet.store.is_postgres() {
        // A database is shared: a token made beside a running server is one it knows.
        ok(&["admin", "token", "create", "--name", "x", fleet.flag, &fleet.at]);
    } else {
        // The store is the server's now: offline creation says so.
        fails(&["admin", "token", "create", "--name", "x", fleet.flag, &fleet.at], "is in use");
    }
    let s = ["--server", url.as_str(), "--token", admin.as_str()];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(s.iter()).map(|a| a.to_string()).collect() };
    let run = |args: &[&str]| ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());
    let enrollment = run(&["admin", "token", "create", "--name", "factory", "--enrollment"]).trim().to_string();
    assert!(enrollment.starts_with("fe_"));
    let tokens: serde_json::Value = serde_json::from_str(&run(&["admin", "token", "list", "--json"])).unwrap();
    assert_eq!(tokens.as_array().unwrap().len(), if fleet.store.is_postgres() { 3 } else { 2 });

    assert_eq!(enroll(&url, "SN-1", &enrollment).0, 200);
    assert_eq!(enroll(&url, "SN-2", &enrollment).0, 200);
    let (status, v) = enroll(&url, "SN-3", &admin);
    assert_eq!(status, 401, "{v}");
    let (status, v) = enroll(&url, "bad serial!", &enrollment);
    assert_eq!(status, 400, "{v}");

    let devices: serde_json::Value = serde_json::from_str(&run(&["devices", "--json"])).unwrap();
    let serials: Vec<&str> = devices.as_array().unwrap().iter().map(|d| d["serial"].as_str().unwrap()).collect();
    assert_eq!(serials, ["SN-1", "SN-2"]);
    let table = run(&["devices"]);
    assert!(table.starts_with("SERIAL") && table.contains("SN-2") && table.contains("accepted"), "{table}");
    run(&["device", "revoke", "SN-2"]);
    let revoked: serde_json::Value = serde_json::from_str(&run(&["devices", "--state", "revoked", "--json"])).unwrap();
    assert_eq!(revoked.as_array().unwrap().len(), 1);
    assert_eq!(revoked[0]["serial"], "SN-2");
    // Filters and counts: a search by serial, the fleet's summary.
    let found: serde_json::Value = serde_json::from_str(&run(&["devices", "--search", "sn-1", "--json"])).unwrap();
    assert_eq!(found.as_array().unwrap().iter().map(|d| d["serial"].as_str().unwrap()).collect::<Vec<_>>(), ["SN-1"]);
    let summary: serde_json::Value = serde_json::from_str(&run(&["devices", "--summary", "--json"])).unwrap();
    assert_eq!(summary["devices"], 2, "{summary}");
    assert_eq!(summary["state"]["counts"].as_array().unwrap().len(), 2, "{summary}");
    let text = run(&["devices", "--summary"]);
    assert!(text.starts_with("2 devices") && text.contains("\nSTATE\n  accepted  1\n  revoked   1\n"), "{text}");
    let table = run(&["devices"]);
    let header = table.lines().next().unwrap();
    // The columns line up: each row's state starts where the header's STATE does.
    let at = header.find("STATE").unwrap();
    assert!(
        table.lines().skip(1).all(|l| l[at..].starts_with("accepted") || l[at..].starts_with("revoked")),
        "{table}"
    );
    let out = ferry(&["devices", "--server", "localhost:8080", "--token", &admin]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give it as http://HOST:PORT"), "{err}");
    let shown = run(&["device", "show", "SN-2"]);
    assert!(shown.contains("revoke by admin:ops"), "{shown}");
    let out = ferry(&with(&["device", "show", "SN-9"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no device SN-9"));

    // Revoking the enrollment token stops new enrollments.
    run(&["admin", "token", "revoke", "factory"]);
    assert_eq!(enroll(&url, "SN-4", &enrollment).0, 401);

    let audit: serde_json::Value = serde_json::from_str(&run(&["audit", "--json"])).unwrap();
    let lines: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["who"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string()))
        .collect();
    let mut expected = vec![
        ("local", "token create"),
        ("admin:ops", "token create"),
        ("device:SN-1", "enroll"),
        ("device:SN-2", "enroll"),
        ("admin:ops", "revoke"),
        ("admin:ops", "token revoke"),
    ];
    if fleet.store.is_postgres() {
        expected.insert(1, ("local", "token create"));
    }
    let expected: Vec<(String, String)> = expected.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(lines, expected);

    // A wrong admin token gets nothing.
    let out = ferry(&["devices", "--server", &url, "--token", "fa_nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

/// An admin or device call: (status, body), or None when the connection failed.
async fn send(
    c: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    let r = c
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let bytes = r.bytes().await.ok()?;
    Some((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}

#[test]
fn a_server_killed_during_writes_loses_nothing_it_acknowledged() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo").display().to_string();
    let fleet = FleetArg::new(&t.path().join("fleet"));
    ok(&["init", "--repo", &repo]);
    let admin = ok(&["admin", "token", "create", "--name", "ops", fleet.flag, &fleet.at]).trim().to_string();
    let enrollment = ok(&["admin", "token", "create", "--name", "factory", "--enrollment", fleet.flag, &fleet.at])
        .trim()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acked_config: Vec<(String, String)> = Vec::new();
    let mut acked_devices: Vec<String> = Vec::new();
    for round in 0..3u32 {
        let mut server = serve(&repo, &fleet);
        let url = server.1.clone();
        let (admin, enrollment) = (admin.clone(), enrollment.clone());
        let writes = rt.spawn(async move {
            let c = reqwest::Client::new();
            let mut tasks = Vec::new();
            for w in 0..4u32 {
                let (c, url, admin, enrollment) = (c.clone(), url.clone(), admin.clone(), enrollment.clone());
                tasks.push(tokio::spawn(async move {
                    let (mut config, mut devices) = (Vec::new(), Vec::new());
                    for i in 0..10_000u32 {
                        if w % 2 == 0 {
                            // Each writer cycles over its own 40 keys, values counting up.
                            let (k, v) = (format!("K{w}_{}", i % 40), format!("{round}:{i:06}"));
                            let body = serde_json::json!({ "set": { k.clone(): v.clone() } });
                            match send(&c, format!("{url}/v1/admin/config/fleet"), &admin, body).await {
                                Some((200, _)) => config.push((k, v)),
                                Some((s, b)) => panic!("config write answered {s}: {b}"),
                                None => break,
                            }
                        } else {
                            let serial = format!("SN-{round}-{w}-{i}");
                            let body = serde_json::json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": enrollment });
                            let token = match send(&c, format!("{url}/v1/device/enroll"), "", body).await {
                                Some((200, v)) => v["device_token"].as_str().unwrap().to_string(),
                                Some((s, b)) => panic!("enroll answered {s}: {b}"),
                                None => break,
                            };
                            devices.push(serial);
                            let report = serde_json::json!({ "last_result": "ok", "uptime": i });
                            if send(&c, format!("{url}/v1/device/checkin"), &token, report).await.is_none() {
                                break;
                            }
                        }
                    }
                    (config, devices)
                }));
            }
            let mut out = (Vec::new(), Vec::new());
            for t in tasks {
                let (c, d) = t.await.unwrap();
                out.0.extend(c);
                out.1.extend(d);
            }
            out
        });
        // Let writes pile up, then pull the plug on the server (SIGKILL: no shutdown).
        std::thread::sleep(std::time::Duration::from_millis(300 + 150 * u64::from(round)));
        server.0.kill().unwrap();
        server.0.wait().unwrap();
        let (c, d) = rt.block_on(writes).unwrap();
        assert!(!c.is_empty() && !d.is_empty(), "round {round}: the writers did nothing before the kill");
        acked_config.extend(c);
        acked_devices.extend(d);
    }

    // After a restart, everything acknowledged is there, and the audit log has no hole.
    let server = serve(&repo, &fleet);
    let s = ["--server", server.1.as_str(), "--token", admin.as_str()];
    let run = |args: &[&str]| ok(&args.iter().chain(s.iter()).copied().collect::<Vec<_>>());
    let config: serde_json::Value = serde_json::from_str(&run(&["config", "show", "--json"])).unwrap();
    // Per key, the stored value is the last acknowledged one or a later write that was in
    // flight at the kill (values of one key only grow: "round:counter").
    let mut last: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
    for (k, v) in &acked_config {
        let e = last.entry(k.as_str()).or_insert(v.as_str());
        if v.as_str() > *e {
            *e = v.as_str();
        }
    }
    for (k, v) in last {
        let stored = config["values"][k].as_str().unwrap_or_else(|| panic!("acknowledged {k} lost"));
        assert!(stored >= v, "{k}: stored {stored}, but {v} was acknowledged");
    }
    let devices: serde_json::Value = serde_json::from_str(&run(&["devices", "--json"])).unwrap();
    let known: std::collections::HashSet<&str> =
        devices.as_array().unwrap().iter().map(|d| d["serial"].as_str().unwrap()).collect();
    for serial in &acked_devices {
        assert!(known.contains(serial.as_str()), "acknowledged enrollment of {serial} lost");
    }
    let audit: serde_json::Value = serde_json::from_str(&run(&["audit", "--limit", "100000", "--json"])).unwrap();
    let seqs: Vec<u64> = audit.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "the audit log has a hole");
    let config_entries = audit.as_array().unwrap().iter().filter(|e| e["action"] == "config").count();
    assert!(config_entries >= acked_config.len());
    eprintln!(
        "{} config writes and {} enrollments acknowledged across 3 kills",
        acked_config.len(),
        acked_devices.len()
    );
}

#[test]
fn a_rollout_at_10_percent_reaches_10_percent_of_1000_devices_the_same_ones_after_a_restart() {
    use ferry_publisher::fleet::{Caller, Fleet, HeadDoc, Pick, Settings, TokenKind};
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("fleet");
    let head = |serial: u64| HeadDoc { id: format!("{serial:064x}"), serial, targets: Default::default() };
    let picks = |f: &Fleet| -> Vec<String> {
        let mut chosen = Vec::new();
        for d in f.devices().unwrap() {
            if f.pick(&d, "stable", &head(2)).unwrap() == Pick::Head {
                chosen.push(d.serial);
            }
        }
        chosen
    };
    let first = {
        // A thousand enrollments at once: past the default rate limit.
        let f = Fleet::open(&path, Settings { enrollments_per_minute: 1_000_000, ..Settings::default() }).unwrap();
        let token = f.create_token(&Caller::Local, TokenKind::Enrollment, "factory").unwrap();
        for i in 0..1000 {
            f.enroll(&format!("SN-{i:04}"), "rev-a", &token, None).unwrap();
        }
        f.start_rollout(&Caller::Local, "stable", &head(1), 10, None, 10).unwrap();
        picks(&f)
    };
    // 10% of 1000 is 100; the binomial spread is about 9.5, so 70..=130 is over 3 sigma.
    assert!((70..=130).contains(&first.len()), "{} devices chosen", first.len());
    // The choice is a pure function of channel and serial...
    let expected: Vec<String> = (0..1000)
        .map(|i| format!("SN-{i:04}"))
        .filter(|s| ferry_publisher::fleet::bucket("stable", s) < 1000)
        .collect();
    assert_eq!(first, expected);
    // ...and what each device was given is kept: after a restart the same devices get it.
    let again = picks(&Fleet::open(&path, Settings::default()).unwrap());
    assert_eq!(again, first, "the chosen devices changed across a restart");
    // Raising the share keeps every device already chosen.
    let f = Fleet::open(&path, Settings::default()).unwrap();
    f.change_rollout(&Caller::Local, "stable", ferry_publisher::fleet::RolloutAction::SetPercent, Some(30)).unwrap();
    let more = picks(&f);
    assert!(first.iter().all(|s| more.contains(s)));
    assert!((240..=360).contains(&more.len()), "{} devices chosen at 30%", more.len());
    eprintln!("10%: {} of 1000 devices; 30%: {}", first.len(), more.len());
}

/// `ferry config sign`: the operator's configuration keys, kept off the server, sign each
/// device's configuration (two of them, the key document's threshold); the server keeps what
/// they signed and hands it to the device at check-in, where it passes the device's rule.
#[test]
fn an_operator_signs_configuration_offline() {
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).display().to_string();
    let (repo, fleet) = (p("repo"), FleetArg::new(&t.path().join("fleet")));
    ok(&["init", "--repo", &repo]);
    for k in ["root", "ci", "chan", "conf1", "conf2"] {
        ok(&["keygen", "--out", &p(&format!("{k}.key"))]);
    }
    let keys = |extra: &[&str]| {
        let mut args = vec!["keys", "set", "--repo", repo.as_str()];
        args.extend_from_slice(extra);
        ok(&args);
    };
    let (root, root_pub, ci_pub, chan_pub) = (p("root.key"), p("root.key.pub"), p("ci.key.pub"), p("chan.key.pub"));
    let (conf1, conf2, conf1_pub, conf2_pub) = (p("conf1.key"), p("conf2.key"), p("conf1.key.pub"), p("conf2.key.pub"));
    keys(&["--sign-key", &root, "--root", &root_pub, "--commit-key", &ci_pub, "--channel-key", &chan_pub]);
    let admin = ok(&["admin", "token", "create", "--name", "ops", fleet.flag, &fleet.at]).trim().to_string();
    let server = serve(&repo, &fleet);
    let url = server.1.clone();
    let s = ["--server", url.as_str(), "--token", admin.as_str()];
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(s.iter()).map(|a| a.to_string()).collect() };
    let run = |args: &[&str]| ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());
    let fail = |args: &[&str], expect: &str| fails(&with(args).iter().map(String::as_str).collect::<Vec<_>>(), expect);
    let enrollment = run(&["admin", "token", "create", "--name", "factory", "--enrollment"]).trim().to_string();
    let (status, enrolled) = enroll(&url, "SN-1", &enrollment);
    assert_eq!(status, 200, "{enrolled}");
    run(&["config", "set", "API_KEY=s3cret", "--device", "SN-1"]);

    // No configuration keys in the key document yet: nothing a device would take.
    fail(&["config", "sign", "--sign-key", &conf1], "names no configuration keys");
    keys(&["--sign-key", &root, "--config-key", &conf1_pub, "--config-key", &conf2_pub, "--config-threshold", "2"]);
    fail(
        &["config", "sign", "--sign-key", &conf1],
        "signed by 1 of the configuration keys of key document 2, 2 needed",
    );
    fail(&["config", "sign", "--sign-key", &conf1, "--device", "SN-9"], "no device SN-9");
    let out = run(&["config", "sign", "--sign-key", &conf1, "--sign-key", &conf2]);
    assert!(out.contains("SN-1: configuration version 1 signed"), "{out}");

    // The device's check-in carries it, and it passes the device's own rule.
    let token = enrolled["device_token"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer: serde_json::Value = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{url}/v1/device/checkin"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    });
    let bytes = hex::decode(answer["config_document"].as_str().unwrap()).unwrap();
    let envelope = ferry_store::channel::Envelope::decode(&bytes).unwrap();
    let r = ferry_store::Repository::open_read_only(std::path::Path::new(&repo)).unwrap();
    let trust = ferry_publisher::channels::current_trust(&r).unwrap().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let doc = ferry_store::device_config::accept_config(&envelope, &trust, "SN-1", 0, now, 0).unwrap();
    assert_eq!((doc.version, doc.values.get("API_KEY").map(String::as_str)), (1, Some("s3cret")));
}

/// A hostile admin server on 127.0.0.1: every request is answered by `answer(n)` (the
/// request's number, from 0: status, extra headers and body), over kept-alive connections.
/// It stops when dropped, or by itself after ten minutes.
struct HostileAdmin {
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HostileAdmin {
    fn start(answer: impl Fn(usize) -> (u16, String, Vec<u8>) + Send + Sync + 'static) -> HostileAdmin {
        use std::io::{BufRead, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = std::sync::Arc::new(answer);
        let (st, sv) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while !st.load(SeqCst) && std::time::Instant::now() < until {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let (answer, served) = (answer.clone(), sv.clone());
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_nodelay(true).unwrap();
                    conn.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
                    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        // One request: its head, up to the empty line (no body: GETs).
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let (status, headers, body) = answer(served.fetch_add(1, SeqCst));
                        let mut answer = format!(
                            "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n",
                            body.len()
                        )
                        .into_bytes();
                        answer.extend_from_slice(&body);
                        if conn.write_all(&answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        HostileAdmin { url, stop, served }
    }

    /// `ferry ARGS --server URL --token T` against it: (exit code, stderr).
    fn ferry(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut all = args.to_vec();
        all.extend(["--server", self.url.as_str(), "--token", "fa_x"]);
        let out = ferry(&all);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HostileAdmin {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A server that names a next page without end, names a page twice, points the next page
/// elsewhere or answers without end cannot keep `ferry devices` or `ferry config sign`
/// reading: each stops with an error that says why, after a bounded number of requests.
#[test]
fn the_command_line_stops_following_a_hostile_servers_pages() {
    let link = |q: String| format!("link: </v1/admin/devices?{q}>; rel=\"next\"\r\n");
    // Pages without end, each with a new name: 1000 pages are read, then no more.
    let endless = HostileAdmin::start(move |n| (200, link(format!("limit=1&after=P{n:07}")), b"[]".to_vec()));
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("config.key").display().to_string();
    ok(&["keygen", "--out", &key]);
    for args in [&["devices"][..], &["config", "sign", "--sign-key", &key]] {
        let before = endless.served();
        let (code, err) = endless.ferry(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("named more than 1000 pages of devices"), "{args:?}: {err}");
        assert_eq!(endless.served() - before, 1000, "{args:?}");
    }
    // The same page named again, or the first one.
    let looping = HostileAdmin::start(move |_| (200, link("limit=1&after=A".into()), b"[]".to_vec()));
    let (code, err) = looping.ferry(&["devices"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("named the page devices?limit=1&after=A twice"), "{err}");
    assert_eq!(looping.served(), 2);
    let first = HostileAdmin::start(move |_| (200, link("limit=5".into()), b"[]".to_vec()));
    let (code, err) = first.ferry(&["devices", "--limit", "5"]);
    assert_eq!(code, Some(0), "one page asked for, one read: {err}");
    let (code, err) = first.ferry(&["devices"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("named the page devices?limit=5 twice"), "{err}");
    assert_eq!(first.served(), 3);
    // A page of more devices than a page holds.
    let crowded = HostileAdmin::start(move |_| {
        let d = r#"{"accepted_by":null,"enrolled":1,"groups":[],"hardware":"rev-a","last_seen":null,"reenrollment":null,"report":{},"serial":"SN-1","state":"accepted"}"#;
        (200, String::new(), format!("[{}]", vec![d; 1001].join(",")).into_bytes())
    });
    let (code, err) = crowded.ferry(&["devices"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("answered 1001 devices in one page (at most 1000)"), "{err}");
    // An error whose words hold a terminal's escape sequence, and go on for a megabyte:
    // escaped, and cut.
    let escaping = HostileAdmin::start(move |_| {
        let words = format!("\u{1b}]0;owned\u{7}\u{1b}[2J{}", "x".repeat(1 << 20));
        (400, String::new(), serde_json::to_vec(&serde_json::json!({ "error": words })).unwrap())
    });
    let (code, err) = escaping.ferry(&["devices"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains('\u{1b}') && err.contains("\\u{1b}]0;owned"), "{}", &err[..200.min(err.len())]);
    assert!(err.len() < 4000, "{} bytes of error", err.len());
    // A next "page" that is another route of the admin API is not asked for.
    let elsewhere = HostileAdmin::start(move |_| {
        (200, "link: </v1/admin/tokens/ops/revoke>; rel=\"next\"\r\n".into(), b"[]".to_vec())
    });
    let (code, err) = elsewhere.ferry(&["devices"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("named \"tokens/ops/revoke\" as the next page"), "{err}");
    assert_eq!(elsewhere.served(), 1);
    // An answer larger than any page: refused once 64 MiB have come.
    let huge = HostileAdmin::start(move |_| (200, String::new(), vec![b' '; 65 << 20]));
    let (code, err) = huge.ferry(&["devices"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the answer is larger than 64 MiB"), "{err}");
}
