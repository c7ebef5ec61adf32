//! The fleet server with real devices: enrollment, check-in, inventory, approval and
//! revocation, and the wall between the device API and the admin API.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{ferryd, update, Env};

/// A device of the fleet: branch mode, with `[fleet]` enrolling as `serial` using the
/// enrollment token in `token_file`. A branch has no key document, so nothing can sign its
/// configuration: it takes it unsigned (`unsigned_config`).
fn fleet_device(env: &Env, name: &str, serial: &str, token_file: &Path) -> PathBuf {
    env.device_named(
        name,
        env.addr,
        &format!(
            "\n[fleet]\nenrollment_token_file = \"{}\"\nserial = \"{serial}\"\nunsigned_config = true\n",
            token_file.display()
        ),
    )
}

/// A request to the server: `method` on `/v1/{path}` with a bearer token and a JSON body.
pub(crate) fn call(env: &Env, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let url = format!("http://{}/v1/{path}", env.addr);
        let mut req = if method == "POST" { c.post(url) } else { c.get(url) };
        req = req.bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
    })
}

fn devices(env: &Env) -> Vec<Value> {
    let (status, v) = call(env, "GET", "admin/devices", &env.admin_token, None);
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn failed_update(config: &Path, expect: &str) {
    let (ok, _, err) = ferryd(config, &["update"]);
    assert!(!ok, "the update should have failed");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
}

#[test]
fn devices_enroll_check_in_and_report_what_they_run() {
    let mut env = Env::with_fleet(false);
    let c1 = env.commit(1, "1");
    let tokens = env.path().join("enrollment-token");
    let dev = fleet_device(&env, "device", "SN-0001", &tokens);
    assert_eq!(update(&dev)["to"], c1.to_hex());
    // The token is kept, readable by its owner only.
    let token_file = env.path().join("device/state/device-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    let list = devices(&env);
    assert_eq!(list.len(), 1);
    let d = &list[0];
    assert_eq!(
        (d["serial"].as_str(), d["hardware"].as_str(), d["state"].as_str()),
        (Some("SN-0001"), Some("rev-a"), Some("accepted"))
    );
    assert_eq!(d["report"]["current"], c1.to_hex());
    assert_eq!(d["report"]["current_version"], "1");
    assert_eq!(d["report"]["last_result"], "ok");
    assert!(d["last_seen"].as_i64().is_some());

    // A failed update is reported with its error: here, a release built for other hardware.
    let key = ferry_fixtures::test_key(1);
    let req = ferry_publisher::import::CommitRequest {
        hardware: vec!["rev-b".into()],
        ..ferry_publisher::import::CommitRequest::new(env.tree(2), "main", "2".parse().unwrap(), &key)
    };
    ferry_publisher::import::commit_tree(&env.repo, &req, &ferry_publisher::import::NoProgress).unwrap();
    failed_update(&dev, "built for rev-b only");
    let d = &devices(&env)[0];
    assert_eq!(d["report"]["last_result"], "error");
    assert!(d["report"]["last_error"].as_str().unwrap().contains("rev-b"), "{d}");
    assert_eq!(d["report"]["current"], c1.to_hex());
    let (status, one) = call(&env, "GET", "admin/devices/SN-0001", &env.admin_token, None);
    assert_eq!(status, 200);
    let events: Vec<String> =
        one["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap().to_string()).collect();
    assert!(events.iter().any(|e| e.starts_with("enrolled (rev-a)")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("now runs 1")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("update error:") && e.contains("rev-b")), "{events:?}");

    // The fleet's state survives a restart of the server.
    env.restart_server();
    assert_eq!(devices(&env)[0]["report"]["current"], c1.to_hex());
    let (_, audit) = call(&env, "GET", "admin/audit", &env.admin_token, None);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["token create", "token create", "enroll"]);
}

#[test]
fn a_wrong_enrollment_token_is_refused() {
    let env = Env::with_fleet(false);
    env.commit(1, "1");
    let wrong = env.path().join("wrong-token");
    std::fs::write(&wrong, "fe_0000000000000000000000000000000000000000000000000000000000000000\n").unwrap();
    let dev = fleet_device(&env, "device", "SN-0002", &wrong);
    failed_update(&dev, "not a valid enrollment token");
    assert!(!env.path().join("device/state/device-token").exists());
    assert!(devices(&env).is_empty());
    // An admin token is no enrollment token either.
    std::fs::write(&wrong, &env.admin_token).unwrap();
    failed_update(&dev, "not a valid enrollment token");
    assert!(devices(&env).is_empty());
}

#[test]
fn a_revoked_device_is_refused_and_cannot_enroll_again() {
    let env = Env::with_fleet(false);
    env.commit(1, "1");
    let dev = fleet_device(&env, "device", "SN-0003", &env.path().join("enrollment-token"));
    update(&dev);
    let (status, v) = call(&env, "POST", "admin/devices/SN-0003/revoke", &env.admin_token, None);
    assert_eq!((status, v["state"].as_str()), (200, Some("revoked")));
    failed_update(&dev, "device SN-0003 is revoked");
    let (ok, status, _) = ferryd(&dev, &["status", "--json"]);
    assert!(ok);
    assert!(status.contains("is revoked"), "{status}");
    // Losing the token and enrolling again does not help.
    std::fs::remove_file(env.path().join("device/state/device-token")).unwrap();
    failed_update(&dev, "device SN-0003 is revoked");
    let (status, _) = call(&env, "POST", "admin/devices/SN-0003/accept", &env.admin_token, None);
    assert_eq!(status, 400, "a revoked device stays revoked");
}

#[test]
fn with_approval_required_a_device_waits_until_accepted() {
    let env = Env::with_fleet(true);
    let c1 = env.commit(1, "1");
    let dev = fleet_device(&env, "device", "SN-0004", &env.path().join("enrollment-token"));
    failed_update(&dev, "device SN-0004 is waiting for approval");
    assert!(!env.path().join("device/current").exists());
    assert_eq!(devices(&env)[0]["state"], "pending");
    let (status, _) = call(&env, "POST", "admin/devices/SN-0004/accept", &env.admin_token, None);
    assert_eq!(status, 200);
    assert_eq!(update(&dev)["to"], c1.to_hex());
}

#[test]
fn device_tokens_open_only_the_device_api_and_only_as_themselves() {
    let env = Env::with_fleet(false);
    env.commit(1, "1");
    let a = fleet_device(&env, "a", "SN-A", &env.path().join("enrollment-token"));
    let b = fleet_device(&env, "b", "SN-B", &env.path().join("enrollment-token"));
    update(&a);
    update(&b);
    let token_a = std::fs::read_to_string(env.path().join("a/state/device-token")).unwrap();
    for path in ["admin/devices", "admin/devices/SN-B", "admin/audit", "admin/tokens"] {
        assert_eq!(call(&env, "GET", path, &token_a, None).0, 401, "{path}");
    }
    assert_eq!(call(&env, "POST", "admin/devices/SN-B/revoke", &token_a, None).0, 401);
    // The admin token is no device token.
    assert_eq!(call(&env, "POST", "device/checkin", &env.admin_token, Some(serde_json::json!({}))).0, 401);
    // A device reports only as itself: a report naming another serial is still A's, and
    // B's record is untouched by A's check-in.
    let before = devices(&env).into_iter().find(|d| d["serial"] == "SN-B").unwrap();
    let (status, v) = call(&env, "POST", "device/checkin", &token_a, Some(serde_json::json!({ "serial": "SN-B" })));
    assert_eq!((status, v["serial"].as_str()), (200, Some("SN-A")), "{v}");
    let (status, v) = call(&env, "POST", "device/checkin", &token_a, Some(serde_json::json!({ "last_error": "x" })));
    assert_eq!((status, v["serial"].as_str()), (200, Some("SN-A")));
    let after = devices(&env).into_iter().find(|d| d["serial"] == "SN-B").unwrap();
    assert_eq!(before["report"], after["report"]);
    // Oversized reports are refused, naming the field.
    let long = "x".repeat(5000);
    let (status, v) = call(&env, "POST", "device/checkin", &token_a, Some(serde_json::json!({ "last_error": long })));
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("last_error"), "{v}");
    // No token, or garbage: 401.
    assert_eq!(call(&env, "POST", "device/checkin", "", Some(serde_json::json!({}))).0, 401);
    // Escape sequences for an operator's terminal are refused.
    let (status, _) =
        call(&env, "POST", "device/checkin", &token_a, Some(serde_json::json!({ "last_error": "\u{1b}[2J" })));
    assert_eq!(status, 400);
}

#[test]
fn fleet_enrolling_a_known_serial_again_takes_nothing_from_the_real_device() {
    let env = Env::with_fleet(false);
    let c1 = env.commit(1, "1");
    let b = fleet_device(&env, "b", "SN-B", &env.path().join("enrollment-token"));
    assert_eq!(update(&b)["to"], c1.to_hex());
    let (status, _) = call(
        &env,
        "POST",
        "admin/config/device/SN-B",
        &env.admin_token,
        Some(serde_json::json!({ "set": { "API_KEY": "secret" } })),
    );
    assert_eq!(status, 200);
    // Someone else with the enrollment token (it is in every image) enrolls as B.
    let enrollment = std::fs::read_to_string(env.path().join("enrollment-token")).unwrap();
    let body = serde_json::json!({ "serial": "SN-B", "hardware": "rev-a", "enrollment_token": enrollment.trim() });
    let (status, v) = call(&env, "POST", "device/enroll", "", Some(body));
    assert_eq!((status, v["state"].as_str()), (200, Some("pending")), "{v}");
    let stolen = v["device_token"].as_str().unwrap().to_string();
    // The attacker's token gets no configuration, no document and no release.
    let (status, v) = call(&env, "POST", "device/checkin", &stolen, Some(serde_json::json!({})));
    assert_eq!(status, 403, "{v}");
    assert!(v.get("config").is_none(), "{v}");
    assert_eq!(call(&env, "GET", "branches/main", &stolen, None).0, 403);
    // The real device keeps its token and its state, and still updates.
    let c2 = env.commit(2, "2");
    assert_eq!(update(&b)["to"], c2.to_hex());
    let applied = std::fs::read_to_string(env.path().join("b/state/config.env")).unwrap();
    assert!(applied.contains("API_KEY=\"secret\""), "{applied}");
    let (_, one) = call(&env, "GET", "admin/devices/SN-B", &env.admin_token, None);
    assert_eq!(one["state"], "accepted");
    assert_eq!(one["report"]["current"], c2.to_hex());
    assert!(
        one["events"].as_array().unwrap().iter().any(|e| e["what"].as_str().unwrap().contains("enrolled again")),
        "{one}"
    );
    // An operator who re-accepts the device hands the attacker nothing either.
    assert_eq!(call(&env, "POST", "admin/devices/SN-B/accept", &env.admin_token, None).0, 200);
    assert_eq!(call(&env, "POST", "device/checkin", &stolen, Some(serde_json::json!({}))).0, 403);
    update(&b);
    // The request the fleet shows is not the real device's: `ferryd status` shows a
    // different fingerprint, which is how an operator tells a reflashed board from anyone.
    let (ok, out, err) = crate::harness::ferryd(&b, &["status", "--json"]);
    assert!(ok, "{err}");
    let mine = serde_json::from_str::<Value>(&out).unwrap()["device_token"].as_str().unwrap().to_string();
    let token = std::fs::read_to_string(env.path().join("b/state/device-token")).unwrap();
    assert_eq!(mine, blake3::hash(token.trim().as_bytes()).to_hex()[..12]);
    let (_, one) = call(&env, "GET", "admin/devices/SN-B", &env.admin_token, None);
    let request = one["reenrollment"]["request"].as_str().unwrap();
    assert_eq!(request, &blake3::hash(stolen.as_bytes()).to_hex()[..12]);
    assert_ne!(request, mine);
}

#[test]
fn fleet_repository_routes_need_the_devices_token() {
    let env = Env::with_fleet(false);
    let c1 = env.commit(1, "1");
    let dev = fleet_device(&env, "device", "SN-R", &env.path().join("enrollment-token"));
    // ferryd sends its token on every repository request: the whole update works.
    assert_eq!(update(&dev)["to"], c1.to_hex());
    // Without it: 401, on a content route as on a branch.
    assert_eq!(call(&env, "GET", "branches/main", "", None).0, 401);
    assert_eq!(call(&env, "GET", &format!("commits/{c1}"), "", None).0, 401);
    // A device with approval pending may not download.
    let env = Env::with_fleet(true);
    env.commit(1, "1");
    let dev = fleet_device(&env, "device", "SN-P", &env.path().join("enrollment-token"));
    failed_update(&dev, "waiting for approval");
    let token = std::fs::read_to_string(env.path().join("device/state/device-token")).unwrap();
    assert_eq!(call(&env, "GET", "branches/main", token.trim(), None).0, 403);
}

#[test]
fn configuration_merges_fleet_groups_and_device_and_reaches_the_device() {
    let env = Env::with_fleet(false);
    env.commit(1, "1");
    let reload_log = env.path().join("reloads");
    let marker = env.path().join("fail-reload");
    let dev = env.device_named(
        "device",
        env.addr,
        &format!(
            "\n[fleet]\nenrollment_token_file = \"{}\"\nserial = \"SN-C\"\nunsigned_config = true\nreload_command = \"test ! -e {} && cat {} >> {}\"\n",
            env.path().join("enrollment-token").display(),
            marker.display(),
            env.path().join("device/state/config.env").display(),
            reload_log.display()
        ),
    );
    update(&dev);
    let set = |scope: &str, body: Value| {
        let (status, v) = call(&env, "POST", &format!("admin/config/{scope}"), &env.admin_token, Some(body));
        assert_eq!(status, 200, "{v}");
        v["version"].as_u64().unwrap()
    };
    set("fleet", serde_json::json!({ "set": { "LOG": "info", "REGION": "eu", "MODE": "fleet" } }));
    set("group/lab", serde_json::json!({ "set": { "LOG": "debug", "MODE": "lab" } }));
    set("group/night", serde_json::json!({ "set": { "MODE": "night" } }));
    let v = set("device/SN-C", serde_json::json!({ "set": { "NAME": "it's me" } }));
    let (status, _) = call(
        &env,
        "POST",
        "admin/devices/SN-C/groups",
        &env.admin_token,
        Some(serde_json::json!({ "groups": ["lab", "night"] })),
    );
    assert_eq!(status, 200);
    let (_, merged) = call(&env, "GET", "admin/devices/SN-C/config", &env.admin_token, None);
    let expect = serde_json::json!({ "LOG": "debug", "MODE": "night", "NAME": "it's me", "REGION": "eu" });
    assert_eq!(merged["values"], expect);
    assert_eq!(merged["sources"]["MODE"], "group night");
    assert_eq!(merged["sources"]["LOG"], "group lab");
    let version = merged["version"].as_u64().unwrap();
    assert!(version > v, "changing groups bumps the version");

    // The device writes it (JSON and env file) and reloads.
    update(&dev);
    let applied: Value =
        serde_json::from_slice(&std::fs::read(env.path().join("device/state/config.json")).unwrap()).unwrap();
    assert_eq!((applied["version"].as_u64(), &applied["values"]), (Some(version), &expect));
    // The configuration holds secrets: readable by the agent's user only.
    for name in ["config.json", "config.env"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.path().join("device/state").join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is {mode:o}");
    }
    let script = format!(". {} && printf %s \"$NAME/$MODE\"", env.path().join("device/state/config.env").display());
    let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "it's me/night");
    assert_eq!(std::fs::read_to_string(&reload_log).unwrap().lines().count(), 4, "reloaded once");
    // Nothing changed: no reload.
    update(&dev);
    assert_eq!(std::fs::read_to_string(&reload_log).unwrap().lines().count(), 4);

    // A failing reload keeps the previous files and is reported.
    std::fs::write(&marker, "").unwrap();
    let failed = set("device/SN-C", serde_json::json!({ "unset": ["NAME"] }));
    update(&dev);
    let still: Value =
        serde_json::from_slice(&std::fs::read(env.path().join("device/state/config.json")).unwrap()).unwrap();
    assert_eq!(still["version"].as_u64(), Some(version));
    let d = devices(&env).into_iter().find(|d| d["serial"] == "SN-C").unwrap();
    assert_eq!(d["report"]["config_version"].as_u64(), Some(version));
    let error = d["report"]["config_error"].as_str().unwrap();
    assert!(error.contains(&format!("configuration version {failed} not applied")), "{error}");
    // Fixed: the next check applies it and clears the error.
    std::fs::remove_file(&marker).unwrap();
    update(&dev);
    let d = devices(&env).into_iter().find(|d| d["serial"] == "SN-C").unwrap();
    assert_eq!((d["report"]["config_version"].as_u64(), d["report"]["config_error"].as_str()), (Some(failed), None));

    // Bad input changes nothing.
    for body in [
        serde_json::json!({ "set": { "1BAD": "x" } }),
        serde_json::json!({ "set": { "A-B": "x" } }),
        serde_json::json!({ "sett": {} }),
    ] {
        let (status, _) = call(&env, "POST", "admin/config/fleet", &env.admin_token, Some(body));
        assert_eq!(status, 400);
    }
    assert_eq!(
        call(
            &env,
            "POST",
            "admin/config/device/NOPE",
            &env.admin_token,
            Some(serde_json::json!({ "set": { "A": "1" } }))
        )
        .0,
        404
    );
    assert_eq!(call(&env, "GET", "admin/config/fleet/extra", &env.admin_token, None).0, 404);
    let (_, after) = call(&env, "GET", "admin/devices/SN-C/config", &env.admin_token, None);
    assert_eq!(after["version"].as_u64(), Some(failed));
    // A device cannot read configuration through the admin API.
    let token = std::fs::read_to_string(env.path().join("device/state/device-token")).unwrap();
    assert_eq!(call(&env, "GET", "admin/devices/SN-C/config", &token, None).0, 401);
    assert_eq!(call(&env, "GET", "admin/config/fleet", &token, None).0, 401);
}

#[test]
fn a_running_update_reports_its_progress() {
    let env = Env::with_fleet(false);
    let c1 = env.commit(1, "1");
    // The transfer stalls half-way for read_timeout; progress reports go out every second.
    let proxy = ferry_fixtures::proxy::Proxy::start(env.addr).unwrap();
    let dev = env.device_named(
        "device",
        proxy.addr,
        &format!(
            "read_timeout = 2\n[fleet]\nenrollment_token_file = \"{}\"\nserial = \"SN-P\"\nprogress_interval = 1\n",
            env.path().join("enrollment-token").display()
        ),
    );
    proxy.arm(ferry_fixtures::proxy::Fault::Stall(700_000));
    let mut child = crate::harness::spawn_update(&dev);
    let mut seen = Vec::new();
    while child.try_wait().unwrap().is_none() {
        if let Some(d) = devices(&env).into_iter().find(|d| d["serial"] == "SN-P") {
            if let Some(p) = d["report"]["progress"].as_u64() {
                seen.push(p);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(proxy.fired(), "the stall never happened");
    assert!(seen.iter().any(|p| (1..=99).contains(p)), "progress seen: {seen:?}");
    let d = devices(&env).into_iter().find(|d| d["serial"] == "SN-P").unwrap();
    assert_eq!((d["report"]["progress"].as_u64(), d["report"]["current"].as_str()), (None, Some(c1.to_hex().as_str())));
}

/// `ferryd`'s exit code for a failure, with what it printed.
fn exit_code(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A script tells the failures apart by the exit code alone (README "Exit codes").
#[test]
fn exit_codes_tell_a_refusal_a_rollback_an_unreachable_server_a_pending_device_and_no_configuration_apart() {
    // Pending: 6, until an operator accepts it.
    let env = Env::with_fleet(true);
    env.commit(1, "1");
    let dev = fleet_device(&env, "device", "SN-X", &env.path().join("enrollment-token"));
    let (code, err) = exit_code(&dev, &["update"]);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("waiting for approval") && err.contains("ferry device accept"), "{err}");
    // No configuration: 7.
    let (code, err) = exit_code(&env.path().join("nowhere.toml"), &["update"]);
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("no configuration at"), "{err}");
    // Unreachable: 5 (a port nothing listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let env = Env::new();
    env.commit(1, "1");
    let lost = env.device_named("lost", closed, "retries = 1\n");
    let (code, err) = exit_code(&lost, &["update"]);
    assert_eq!(code, Some(5), "{err}");
    // Said as what to check, not as the HTTP library's layers.
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains(&format!("cannot reach http://{closed}: Connection refused")) && last.contains("ferryd doctor"),
        "{err}"
    );
    assert!(!err.contains("client error (Connect)") && !err.contains("tcp connect error"), "{err}");
    // Refused: 3 (signed by a key the device does not trust).
    let other = env.path().join("other.key.pub");
    std::fs::write(&other, format!("ferry-public-key-v1 {}\n", ferry_fixtures::test_key(9).public().to_hex())).unwrap();
    let picky = env.device_named("picky", env.addr, "");
    let text = std::fs::read_to_string(&picky).unwrap();
    std::fs::write(
        &picky,
        text.replace(&env.path().join("ci.key.pub").display().to_string(), &other.display().to_string()),
    )
    .unwrap();
    let (code, err) = exit_code(&picky, &["update"]);
    assert_eq!(code, Some(3), "{err}");
    // Failed trial: 4.
    let sick = env.device_named("sick", env.addr, "[health]\ncommands = [\"false\"]\ndeadline = 2\ninterval = 1\n");
    let (code, err) = exit_code(&sick, &["update"]);
    assert_eq!(code, Some(4), "{err}");
}

/// `ferryd doctor` says what stands between the device and its updates: a server that does
/// not answer, an enrollment token that is not there, a serial it cannot read.
#[test]
fn doctor_checks_the_server_the_enrollment_token_and_the_serial() {
    let env = Env::with_fleet(true);
    env.commit(1, "1");
    let token_file = env.path().join("enrollment-token");
    let dev = fleet_device(&env, "device", "SN-D", &token_file);
    let (ok, out, err) = ferryd(&dev, &["doctor"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains(&format!("ok    server: http://{} answers", env.addr)), "{out}");
    assert!(out.contains("ok    enrollment: not yet; the enrollment token is in"), "{out}");
    assert!(out.contains("ok    serial number: SN-D"), "{out}");
    // Enrolled and pending: the doctor asks with the device's token, and says it is not let in.
    let _ = ferryd(&dev, &["update"]);
    let (ok, out, _) = ferryd(&dev, &["doctor"]);
    assert!(
        !ok && out.contains("ok    enrollment: enrolled")
            && out.contains("FAIL  server:")
            && out.contains("does not let this device in (403): pending"),
        "{out}"
    );
    let (status, _) = call(&env, "POST", "admin/devices/SN-D/accept", &env.admin_token, None);
    assert_eq!(status, 200);
    let (ok, out, _) = ferryd(&dev, &["doctor"]);
    assert!(ok && out.contains(&format!("ok    server: http://{} answers\n", env.addr)), "{out}");
    // No token file, on a device not enrolled yet; a serial file that is missing.
    let missing = env.path().join("no-such-token");
    let lost = env.device_named(
        "lost",
        env.addr,
        &format!("\n[fleet]\nenrollment_token_file = \"{}\"\nserial_file = \"/nonexistent/serial\"\nunsigned_config = true\n", missing.display()),
    );
    let (ok, out, _) = ferryd(&lost, &["doctor"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  enrollment: reading the enrollment token from") && out.contains("no-such-token"),
        "{out}"
    );
    assert!(out.contains("FAIL  serial number: reading the serial number from /nonexistent/serial"), "{out}");
    // A server that does not answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let away = env.device_named("away", closed, "");
    let (ok, out, _) = ferryd(&away, &["doctor"]);
    assert!(!ok && out.contains(&format!("FAIL  server: reaching http://{closed}")), "{out}");
}
