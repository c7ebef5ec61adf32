//! Signed configuration against the real `ferry serve --fleet --config-key` and the real
//! `ferryd`: a device applies only configuration signed for its serial by the configuration
//! keys of its key document, never an older version than it applied, and reports every
//! refusal at its next check-in, having written nothing.

use std::path::{Path, PathBuf};

use ferry_fixtures::test_key;
use ferry_publisher::channels::{self, KeyChange};
use serde_json::Value;

use crate::channels::{promote, updated, CHANNEL_KEY, ROOT};
use crate::fleet::call;
use crate::harness::Env;

const CONFIG_KEY: u8 = 16;

/// Keys with a configuration key (16, saved as `config.key`), commit 1 on `stable`, and the
/// server restarted holding the configuration key.
fn fleet() -> Env {
    let mut env = Env::with_fleet(false);
    test_key(ROOT).save(&env.path().join("root.key")).unwrap();
    test_key(CONFIG_KEY).save(&env.path().join("config.key")).unwrap();
    let change = KeyChange {
        roots: Some(vec![test_key(ROOT).public()]),
        commit_keys: Some(vec![test_key(1).public()]),
        channel_keys: Some(vec![test_key(CHANNEL_KEY).public()]),
        config_keys: Some(vec![test_key(CONFIG_KEY).public()]),
        ..KeyChange::default()
    };
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, crate::channels::now()).unwrap();
    let c1 = env.commit(1, "1");
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let key = env.path().join("config.key");
    env.restart_with_config_key(Some(key));
    env
}

/// A device following `stable`, enrolled in the fleet as `serial`, under `name/`.
fn device(env: &Env, name: &str, serial: &str) -> PathBuf {
    env.fleet_device(name, &format!("http://{}", env.addr), serial, "", "")
}

fn set_config(env: &Env, scope: &str, values: Value) -> u64 {
    let (status, v) = call(env, "POST", &format!("admin/config/{scope}"), &env.admin_token, Some(values));
    assert_eq!(status, 200, "{v}");
    v["version"].as_u64().unwrap()
}

/// What the device applied: (version, values), from `config.json`; and its `config.env`.
fn applied(config: &Path) -> Option<(u64, Value, String)> {
    let state = config.parent().unwrap().join("state");
    let json: Value = serde_json::from_slice(&std::fs::read(state.join("config.json")).ok()?).unwrap();
    let env = std::fs::read_to_string(state.join("config.env")).unwrap();
    Some((json["version"].as_u64().unwrap(), json["values"].clone(), env))
}

/// The `config_error` the fleet last heard from device `serial`.
fn reported_error(env: &Env, serial: &str) -> Option<String> {
    let (status, d) = call(env, "GET", &format!("admin/devices/{serial}"), &env.admin_token, None);
    assert_eq!(status, 200, "{d}");
    d["report"]["config_error"].as_str().map(str::to_string)
}

/// Runs an update (it goes through), then checks the device wrote no configuration but
/// `config-error` naming `expect`, and that the next check-in reports it.
fn refused(env: &Env, config: &Path, serial: &str, expect: &str) {
    let before = applied(config);
    updated(config);
    assert_eq!(applied(config), before, "a refused configuration was written");
    let error = std::fs::read_to_string(config.parent().unwrap().join("state/config-error")).unwrap();
    assert!(error.contains(expect), "expected {expect:?} in config-error: {error}");
    updated(config);
    let reported = reported_error(env, serial).unwrap_or_default();
    assert!(reported.contains(expect), "expected {expect:?} in the reported config_error: {reported}");
}

#[test]
fn signed_configuration_is_applied_only_by_its_device_and_only_forward() {
    let mut env = fleet();
    let a = device(&env, "a", "SN-A");
    updated(&a);
    assert_eq!(applied(&a), None, "no configuration yet, nothing written");

    // A good one: signed by the server's configuration key for SN-A, applied.
    let v1 = set_config(&env, "fleet", serde_json::json!({ "set": { "LOG": "info" } }));
    updated(&a);
    let (version, values, text) = applied(&a).unwrap();
    assert_eq!((version, &values), (v1, &serde_json::json!({ "LOG": "info" })));
    assert_eq!(text, "LOG=\"info\"\n");
    assert_eq!(reported_error(&env, "SN-A"), None);

    // The fleet's state as it was at version 1, kept aside (a backup).
    env.kill_server();
    env.fleet_snapshot("backup");
    env.restart_with_config_key(Some(env.path().join("config.key")));
    let v2 = set_config(&env, "device/SN-A", serde_json::json!({ "set": { "API_KEY": "s3cret" } }));
    updated(&a);
    assert_eq!(applied(&a).unwrap().0, v2);

    // A replay: the server restored from the backup signs version 1 again, with the right
    // key. The device applied version 2: refused, nothing written, reported.
    env.kill_server();
    env.fleet_snapshot("newer");
    env.fleet_restore("backup");
    env.restart_with_config_key(Some(env.path().join("config.key")));
    refused(&env, &a, "SN-A", &format!("configuration version {v1} is older than version {v2}"));
    env.kill_server();
    env.fleet_restore("newer");
    env.restart_with_config_key(Some(env.path().join("config.key")));

    // Another device's document: device B holding A's token (a cloned identity) is sent
    // SN-A's configuration, signed for SN-A. B refuses it.
    let b = device(&env, "b", "SN-B");
    updated(&b);
    std::fs::copy(env.path().join("a/state/device-token"), env.path().join("b/state/device-token")).unwrap();
    let before = applied(&b);
    updated(&b);
    assert_eq!(applied(&b), before, "another device's configuration was written");
    let error = std::fs::read_to_string(env.path().join("b/state/config-error")).unwrap();
    assert!(error.contains("is for device \"SN-A\", not this device \"SN-B\""), "{error}");

    // Configuration rewritten by a server without the key: signed with a key of its own...
    test_key(17).save(&env.path().join("impostor.key")).unwrap();
    env.restart_with_config_key(Some(env.path().join("impostor.key")));
    set_config(&env, "device/SN-A", serde_json::json!({ "set": { "API_KEY": "attacker's" } }));
    refused(&env, &a, "SN-A", "is signed by 0 of the configuration keys (key document 1), 1 needed");
    // ...or sent unsigned.
    env.restart_with_config_key(None);
    refused(&env, &a, "SN-A", "came unsigned, and key document 1 names configuration keys");
    assert_eq!(applied(&a).unwrap().1["API_KEY"], "s3cret");

    // With the fleet's key again, the newest version is applied and the error cleared.
    env.restart_with_config_key(Some(env.path().join("config.key")));
    let v4 = set_config(&env, "device/SN-A", serde_json::json!({ "set": { "API_KEY": "rotated" } }));
    updated(&a);
    let (version, values, _) = applied(&a).unwrap();
    assert_eq!((version, values["API_KEY"].as_str()), (v4, Some("rotated")));
    updated(&a);
    assert_eq!(reported_error(&env, "SN-A"), None);

    // Rotating the configuration key: the root replaces 16 with 19. The device catches up
    // with the key chain before it checks, so what the server still signs with 16 is
    // refused from then on...
    test_key(19).save(&env.path().join("config19.key")).unwrap();
    let change = KeyChange { config_keys: Some(vec![test_key(19).public()]), ..KeyChange::default() };
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, crate::channels::now()).unwrap();
    let v5 = set_config(&env, "fleet", serde_json::json!({ "set": { "LOG": "debug" } }));
    refused(&env, &a, "SN-A", "is signed by 0 of the configuration keys (key document 2), 1 needed");
    // ...and the server holding 19 gets the device its configuration again.
    env.restart_with_config_key(Some(env.path().join("config19.key")));
    updated(&a);
    assert_eq!(applied(&a).unwrap().0, v5);
}

/// Secure by default: a fleet whose key document names no configuration keys sends
/// configuration nobody signed, and a device takes it only if its ferryd.toml says so.
#[test]
fn unsigned_configuration_needs_the_devices_consent() {
    let env = Env::with_fleet(false);
    crate::channels::set_up_keys(&env);
    let c1 = env.commit(1, "1");
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let strict = device(&env, "strict", "SN-S");
    let lenient = device(&env, "lenient", "SN-L");
    let mut text = std::fs::read_to_string(&lenient).unwrap();
    text.push_str("unsigned_config = true\n");
    std::fs::write(&lenient, text).unwrap();
    updated(&strict);
    updated(&lenient);
    let v = set_config(&env, "fleet", serde_json::json!({ "set": { "LOG": "info" } }));
    refused(&env, &strict, "SN-S", &format!("configuration version {v} is not signed"));
    updated(&lenient);
    assert_eq!(applied(&lenient).unwrap().0, v);
}

/// The operator keeps the configuration keys offline (the server holds none): two of them
/// must sign (threshold 2). `ferry config sign` hands the server what they signed for each
/// device (here its admin API call); the server refuses a document devices would refuse or
/// one of a configuration since changed, and the device applies what was signed.
#[test]
fn configuration_signed_offline_by_the_operator_is_applied() {
    let env = Env::with_fleet(false);
    test_key(ROOT).save(&env.path().join("root.key")).unwrap();
    let change = KeyChange {
        roots: Some(vec![test_key(ROOT).public()]),
        commit_keys: Some(vec![test_key(1).public()]),
        channel_keys: Some(vec![test_key(CHANNEL_KEY).public()]),
        config_keys: Some(vec![test_key(CONFIG_KEY).public(), test_key(18).public()]),
        thresholds: channels::ThresholdChange { config: Some(2), ..Default::default() },
        ..KeyChange::default()
    };
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, crate::channels::now()).unwrap();
    let c1 = env.commit(1, "1");
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let a = device(&env, "a", "SN-A");
    updated(&a);
    let v1 = set_config(&env, "device/SN-A", serde_json::json!({ "set": { "SITE_PASSWORD": "hunter2" } }));
    // Nothing signed yet: the server sends it unsigned, the device applies nothing.
    refused(&env, &a, "SN-A", "came unsigned");

    let merged = |serial: &str| -> ferry_api::admin::MergedConfig {
        let (_, v) = call(&env, "GET", &format!("admin/devices/{serial}/config"), &env.admin_token, None);
        serde_json::from_value(v).unwrap()
    };
    // Signs `m` for `signed_for` with the keys `signers` and hands it over for device `to`.
    let upload_to = |to: &str, signed_for: &str, signers: &[u8], m: &ferry_api::admin::MergedConfig| {
        let keys: Vec<ferry_store::SecretKey> = signers.iter().map(|s| test_key(*s)).collect();
        let refs: Vec<&ferry_store::SecretKey> = keys.iter().collect();
        let now = crate::channels::now();
        let envelope = ferry_publisher::fleet::sign_config(&refs, signed_for, m, now, 30 * 86400).unwrap().unwrap();
        let body = serde_json::json!({ "document": hex::encode(envelope) });
        call(&env, "POST", &format!("admin/devices/{to}/config-document"), &env.admin_token, Some(body))
    };
    let upload =
        |serial: &str, signers: &[u8], m: &ferry_api::admin::MergedConfig| upload_to(serial, serial, signers, m);
    // One of the two keys: devices would refuse it, so the server does.
    let m = merged("SN-A");
    let (status, v) = upload("SN-A", &[CONFIG_KEY], &m);
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("signed by 1 of the configuration keys of key document 1, 2 needed"),
        "{v}"
    );
    // Signed for another serial than the device it is handed for, or for no known device.
    let (status, v) = upload_to("SN-A", "SN-B", &[CONFIG_KEY, 18], &m);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("is for device \"SN-B\", not SN-A"), "{v}");
    let (status, v) = upload("SN-OTHER", &[CONFIG_KEY, 18], &m);
    assert_eq!(status, 404, "{v}");
    // Both keys: kept, sent at the next check-in, applied.
    let (status, v) = upload("SN-A", &[CONFIG_KEY, 18], &m);
    assert_eq!((status, v["version"].as_u64()), (200, Some(v1)), "{v}");
    updated(&a);
    let (version, values, _) = applied(&a).unwrap();
    assert_eq!((version, values["SITE_PASSWORD"].as_str()), (v1, Some("hunter2")));

    // The configuration changes: what was signed is stale, and the server refuses it; the
    // device keeps version 1 until the operator signs again.
    let v2 = set_config(&env, "device/SN-A", serde_json::json!({ "set": { "SITE_PASSWORD": "correct horse" } }));
    let (status, v) = upload("SN-A", &[CONFIG_KEY, 18], &m);
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains(&format!("is version {v2} now")), "{v}");
    updated(&a);
    assert_eq!(applied(&a).unwrap().0, v1);
    let (status, _) = upload("SN-A", &[CONFIG_KEY, 18], &merged("SN-A"));
    assert_eq!(status, 200);
    updated(&a);
    let (version, values, _) = applied(&a).unwrap();
    assert_eq!((version, values["SITE_PASSWORD"].as_str()), (v2, Some("correct horse")));
}
