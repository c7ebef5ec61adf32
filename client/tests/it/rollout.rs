//! Staged rollouts with real devices: a share of the fleet takes the new release first, the
//! rest keep the previous one, and a release that fails on the devices that took it halts
//! the rollout by itself.

use std::path::PathBuf;

use serde_json::Value;

use crate::channels::{promote, set_up_keys};
use crate::harness::{ferryd, running_version, Env};

fn call(env: &Env, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let url = format!("http://{}/v1/admin/{path}", env.addr);
        let mut req = if method == "POST" { c.post(url) } else { c.get(url) };
        req = req.bearer_auth(&env.admin_token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(serde_json::to_vec(&b).unwrap());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null))
    })
}

/// A fleet device following `stable`, whose health check fails on release 2.
fn device(env: &Env, serial: &str) -> PathBuf {
    let health = "[health]\ncommands = [\"! grep -qx 2 etc/version\"]\ndeadline = 2\ninterval = 1\n";
    env.fleet_device(serial, &format!("http://{}", env.addr), serial, health, "")
}

#[test]
fn a_failing_release_halts_its_rollout_and_the_rest_keep_the_previous_one() {
    let env = Env::with_fleet(false);
    set_up_keys(&env);
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    // Two devices inside the first half of the channel's order, two outside.
    let serials: Vec<String> = (0..200).map(|i| format!("SN-{i}")).collect();
    let inside: Vec<&String> =
        serials.iter().filter(|s| ferry_publisher::fleet::bucket("stable", s) < 5000).take(2).collect();
    let outside: Vec<&String> =
        serials.iter().filter(|s| ferry_publisher::fleet::bucket("stable", s) >= 5000).take(2).collect();
    let devices: Vec<(PathBuf, bool)> = inside
        .iter()
        .map(|s| (device(&env, s), true))
        .chain(outside.iter().map(|s| (device(&env, s), false)))
        .collect();
    for (d, _) in &devices {
        let (ok, _, err) = ferryd(d, &["update"]);
        assert!(ok, "{err}");
        assert_eq!(running_version(d), "1");
    }

    let (status, r) = call(
        &env,
        "POST",
        "rollouts/stable/start",
        Some(serde_json::json!({ "percent": 50, "max_failure_percent": 10 })),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!((r["state"].as_str(), r["devices"].as_u64(), r["took"].as_u64()), (Some("running"), Some(4), Some(0)));
    promote(&env, Some(c2), None, "stable", false).unwrap();
    // Check-ins see a promotion within 250 ms (the server's CHECKIN_FRESHNESS).
    std::thread::sleep(std::time::Duration::from_millis(300));

    // The first device inside takes release 2, fails its health check and rolls back; its
    // report halts the rollout.
    let (first, _) = &devices[0];
    let (ok, _, _) = ferryd(first, &["update"]);
    assert!(!ok, "release 2 must fail its trial");
    assert_eq!(running_version(first), "1");
    let (_, list) = call(&env, "GET", "rollouts", None);
    let r = &list[0];
    assert_eq!(
        (r["state"].as_str(), r["took"].as_u64(), r["failed"].as_u64()),
        (Some("paused"), Some(1), Some(1)),
        "{r}"
    );
    let reason = r["halt_reason"].as_str().unwrap();
    assert!(reason.starts_with("1 of 1 devices that took serial 2 failed"), "{reason}");
    let (_, audit) = call(&env, "GET", "audit", None);
    assert!(audit.as_array().unwrap().iter().any(|e| e["who"] == "server" && e["action"] == "rollout halt"));

    // Halted: nobody else starts taking release 2, inside the share or not.
    for (d, _) in &devices[1..] {
        let (ok, out, err) = ferryd(d, &["update", "--json"]);
        assert!(ok, "{err}");
        let s: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(s["up_to_date"], true);
        assert_eq!(running_version(d), "1");
    }
    // Resumed: the other device inside the share takes it (and fails too); outside, nothing.
    let (status, _) = call(&env, "POST", "rollouts/stable/resume", None);
    assert_eq!(status, 200);
    for (d, inside) in &devices[1..] {
        let (ok, _, _) = ferryd(d, &["update"]);
        assert_eq!(ok, !inside, "{}", d.display());
    }
    let (_, list) = call(&env, "GET", "rollouts", None);
    assert_eq!((list[0]["took"].as_u64(), list[0]["state"].as_str()), (Some(2), Some("paused")));
    // A lower share is refused: it would take the release away from devices that have it.
    let (status, v) = call(&env, "POST", "rollouts/stable/set-percent", Some(serde_json::json!({ "percent": 10 })));
    assert_eq!(status, 400, "{v}");
}

/// A fake device enrolled with the image's enrollment token that checks in on `stable` and
/// then reports `result`: what anyone holding the token can do.
fn fake(env: &Env, serial: &str, result: &str) {
    let enrollment = std::fs::read_to_string(env.path().join("enrollment-token")).unwrap();
    let body = serde_json::json!({ "serial": serial, "hardware": "rev-a", "enrollment_token": enrollment.trim() });
    let (status, v) = crate::fleet::call(env, "POST", "device/enroll", "", Some(body));
    assert_eq!(status, 200, "{v}");
    let token = v["device_token"].as_str().unwrap().to_string();
    for report in [
        serde_json::json!({ "channel": "stable", "current_version": "1" }),
        serde_json::json!({ "channel": "stable", "current_version": "1", "last_result": result }),
    ] {
        let (status, v) = crate::fleet::call(env, "POST", "device/checkin", &token, Some(report));
        assert_eq!(status, 200, "{v}");
        assert!(v["channel_document"].is_string(), "the fake took the new document: {v}");
    }
}

/// Starts a rollout of all of `stable` and promotes release 2 into it.
fn start_rollout_of_2(env: &Env, c2: ferry_store::Id) {
    let body = serde_json::json!({ "percent": 100, "max_failure_percent": 10 });
    let (status, r) = call(env, "POST", "rollouts/stable/start", Some(body));
    assert_eq!(status, 200, "{r}");
    promote(env, Some(c2), None, "stable", false).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
}

#[test]
fn fleet_fakes_enrolled_during_a_rollout_cannot_halt_it_with_rollbacks() {
    let env = Env::with_fleet(false);
    set_up_keys(&env);
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    start_rollout_of_2(&env, c2);
    for i in 0..3 {
        fake(&env, &format!("FAKE-{i}"), "rolled-back");
    }
    let (_, list) = call(&env, "GET", "rollouts", None);
    let r = &list[0];
    assert_eq!(
        (r["state"].as_str(), r["took"].as_u64(), r["failed"].as_u64(), r["uncounted"].as_u64()),
        (Some("running"), Some(0), Some(0), Some(3)),
        "{r}"
    );
}

#[test]
fn fleet_fakes_enrolled_during_a_rollout_cannot_hide_a_real_failure() {
    let env = Env::with_fleet(false);
    set_up_keys(&env);
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let real = device(&env, "SN-REAL");
    let (ok, _, err) = ferryd(&real, &["update"]);
    assert!(ok, "{err}");
    start_rollout_of_2(&env, c2);
    // Nine fakes report success: counted, they would make one real failure 10%, not above
    // the 10% limit.
    for i in 0..9 {
        fake(&env, &format!("FAKE-{i}"), "ok");
    }
    let (ok, _, _) = ferryd(&real, &["update"]);
    assert!(!ok, "release 2 must fail its trial");
    assert_eq!(running_version(&real), "1");
    let (_, list) = call(&env, "GET", "rollouts", None);
    let r = &list[0];
    assert_eq!(
        (r["state"].as_str(), r["took"].as_u64(), r["failed"].as_u64(), r["uncounted"].as_u64()),
        (Some("paused"), Some(1), Some(1), Some(9)),
        "{r}"
    );
    assert!(r["halt_reason"].as_str().unwrap().starts_with("1 of 1 devices"), "{r}");
}
