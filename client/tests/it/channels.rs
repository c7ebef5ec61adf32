//! Channels and key documents against the real server and agent: each attack a server (or
//! whoever controls it) could mount is refused with a clear error and changes nothing; the
//! operator's promotions, rollbacks and key rotations go through.
//!
//! Attack documents are written straight into the served repository with the store's API,
//! bypassing `ferry promote`'s own checks, as a compromised server would serve them.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_fixtures::test_key;
use ferry_publisher::channels::{self, KeyChange, Promotion};
use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::channel::{ChannelDoc, Envelope, Target};
use ferry_store::{Id, SecretKey, Signed};

use crate::harness::{ferryd, Env};

pub(crate) const ROOT: u8 = 10;
pub(crate) const CHANNEL_KEY: u8 = 11;
pub(crate) const DAY: i64 = 86400;

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A served repository with a key document: root key 10, commit key 1 (the harness's CI
/// key), channel key 11.
fn fleet() -> Env {
    let env = Env::new();
    set_up_keys(&env);
    env
}

/// Root key 10 (saved as `root.key`), commit key 1, channel key 11, in a key document.
pub(crate) fn set_up_keys(env: &Env) {
    test_key(ROOT).save(&env.path().join("root.key")).unwrap();
    let change = KeyChange {
        roots: Some(vec![test_key(ROOT).public()]),
        commit_keys: Some(vec![test_key(1).public()]),
        channel_keys: Some(vec![test_key(CHANNEL_KEY).public()]),
        ..KeyChange::default()
    };
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, now()).unwrap();
}

/// A device following `channel` as hardware revision `hardware`.
pub(crate) fn device(env: &Env, name: &str, channel: &str, hardware: &str) -> PathBuf {
    device_rooted(env, name, channel, hardware, "root.key.pub")
}

/// The same, with the image's root key `root` (a file in the test directory).
pub(crate) fn device_rooted(env: &Env, name: &str, channel: &str, hardware: &str, root: &str) -> PathBuf {
    let dev = env.path().join(name);
    std::fs::create_dir_all(&dev).unwrap();
    let config = dev.join("ferryd.toml");
    let text = format!(
        "insecure_http = true\nserver = \"http://{}\"\nchannel = \"{channel}\"\nstate_dir = \"{}\"\ncurrent_link = \"{}\"\nroot_keys = [\"{}\"]\nhardware = \"{hardware}\"\n",
        env.addr,
        dev.join("state").display(),
        dev.join("current").display(),
        env.path().join(root).display(),
    );
    std::fs::write(&config, text).unwrap();
    config
}

pub(crate) fn promote(
    env: &Env,
    commit: Option<Id>,
    from: Option<&str>,
    to: &str,
    rollback: bool,
) -> anyhow::Result<Id> {
    let key = test_key(CHANNEL_KEY);
    let p = Promotion {
        to: to.into(),
        commit,
        from: from.map(str::to_string),
        hardware: Vec::new(),
        keys: std::slice::from_ref(&key),
        expires_in: 7 * DAY,
        rollback,
        force: false,
        create: true,
        now: now(),
    };
    let id = channels::promote(&env.repo, &p)?.id;
    if env.has_fleet() {
        // The server reads the repository another writer changes: a check-in sees a
        // promotion within the fleet server's freshness bound (250 ms), so the next
        // check-in is made after it, as an operator's would be.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    Ok(id)
}

/// Publishes `doc` signed by `signer` as the channel's newest document, as a compromised
/// server would.
pub(crate) fn serve_document(env: &Env, doc: &ChannelDoc, signer: &SecretKey) {
    let envelope = Envelope::sign(Signed::Channel, doc.encode().unwrap(), &[signer]);
    let head = env.repo.channel(&doc.name).unwrap();
    env.repo.publish_channel(&envelope, head, None).unwrap();
}

/// The channel's newest document, to derive an attack from.
pub(crate) fn newest(env: &Env, channel: &str) -> ChannelDoc {
    let id = env.repo.channel(channel).unwrap().unwrap();
    ChannelDoc::decode(&env.repo.read_envelope(&id).unwrap().document).unwrap()
}

/// Where the device's current link points: the commit it runs.
pub(crate) fn running(config: &Path) -> Option<String> {
    let link = config.parent().unwrap().join("current");
    std::fs::read_link(link).ok().map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
}

pub(crate) fn updated(config: &Path) -> serde_json::Value {
    updated_env(config, &[])
}

pub(crate) fn updated_env(config: &Path, envs: &[(&str, String)]) -> serde_json::Value {
    let out = Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .args(["update", "--json"])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "ferryd update failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The channel serials a device has accepted (none before its first check).
pub(crate) fn serials(config: &Path) -> serde_json::Value {
    std::fs::read(config.parent().unwrap().join("state/trust.json"))
        .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap()["channels"].clone())
        .unwrap_or_else(|_| serde_json::json!({}))
}

/// Runs an update that must be refused: checks that the error names `expect`, that
/// `ferryd status` reports it, and that neither the deployment nor the accepted channel
/// serials changed (a newer key document met on the way is kept: it was valid).
pub(crate) fn refused(config: &Path, envs: &[(&str, String)], expect: &str) {
    let before = (running(config), serials(config));
    let out = Command::new(crate::harness::ferryd_bin())
        .arg("--config")
        .arg(config)
        .arg("update")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the update was not refused");
    assert!(stderr.contains(expect), "expected {expect:?} in: {stderr}");
    assert_eq!((running(config), serials(config)), before, "a refusal changed the device");
    let (ok, status, _) = ferryd(config, &["status", "--json"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let last = status["last_error"].as_str().unwrap_or_default();
    assert!(last.contains(expect), "status does not report the refusal: {last}");
}

#[test]
fn promotion_moves_each_channel_only_when_it_changes() {
    let env = fleet();
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "dev", false).unwrap();
    promote(&env, None, Some("dev"), "beta", false).unwrap();
    promote(&env, None, Some("beta"), "stable", false).unwrap();
    let devices: Vec<PathBuf> = ["dev", "beta", "stable"].iter().map(|c| device(&env, c, c, "rev-a")).collect();
    for d in &devices {
        assert_eq!(updated(d)["to"], c1.to_hex());
    }
    let step = |expected: [&Id; 3]| {
        for (d, want) in devices.iter().zip(expected) {
            updated(d);
            assert_eq!(running(d).as_deref(), Some(want.to_hex().as_str()), "{}", d.display());
        }
    };
    promote(&env, Some(c2), None, "dev", false).unwrap();
    step([&c2, &c1, &c1]);
    // Stable's upstream is beta, which never had c2.
    let err = promote(&env, Some(c2), None, "stable", false).unwrap_err();
    assert!(format!("{err:#}").contains("never had commit"), "{err:#}");
    promote(&env, None, Some("dev"), "beta", false).unwrap();
    step([&c2, &c2, &c1]);
    promote(&env, Some(c2), None, "stable", false).unwrap();
    step([&c2, &c2, &c2]);
    let log = channels::history(&env.repo, "stable").unwrap();
    assert_eq!(log.iter().map(|(_, d, _)| d.serial).collect::<Vec<_>>(), [2, 1]);
}

#[test]
fn a_replayed_older_document_is_refused() {
    let env = fleet();
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    let old = promote(&env, Some(c1), None, "stable", false).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    updated(&dev);
    promote(&env, Some(c2), None, "stable", false).unwrap();
    assert_eq!(updated(&dev)["to"], c2.to_hex());
    // The server goes back to serving serial 1 (validly signed, not expired).
    let envelope = env.repo.read_envelope(&old).unwrap();
    env.repo.publish_channel(&envelope, env.repo.channel("stable").unwrap(), None).unwrap();
    refused(&dev, &[], "serial 1 is older than serial 2 already seen");
}

#[test]
fn an_expired_document_is_refused() {
    let env = fleet();
    let c1 = env.commit(1, "1");
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let mut doc = newest(&env, "stable");
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.timestamp = now() - 3 * DAY;
    doc.expires = now() - 60;
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    refused(&device(&env, "device", "stable", "rev-a"), &[], "expired at");
}

#[test]
fn unknown_and_revoked_keys_are_refused_and_rotation_keeps_devices_updating() {
    let env = fleet();
    let (c1, c2, c3) = (env.commit(1, "1"), env.commit(2, "2"), env.commit(3, "3"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    updated(&dev);

    // A key nobody trusts.
    let mut doc = newest(&env, "stable");
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.targets = vec![Target { hardware: "rev-a".into(), commit: c2, version: "2".parse().unwrap() }];
    serve_document(&env, &doc, &test_key(2));
    refused(&dev, &[], "is signed by 0 of the keys allowed to sign channels");

    // The root rotates the channel key from 11 to 12; 11 is revoked.
    let change = KeyChange { channel_keys: Some(vec![test_key(12).public()]), ..Default::default() };
    let err =
        channels::set_keys(&env.repo, &[test_key(CHANNEL_KEY)], KeyChange { ..Default::default() }, now()).unwrap_err();
    assert!(format!("{err:#}").contains("signed by 0 of the root keys"), "{err:#}");
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, now()).unwrap();
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    // The key document is taken (it is valid), and with key 11 gone the channel serials it
    // vouched for are forgotten; the document 11 signed is refused.
    let before = running(&dev);
    let (ok, _, err) = ferryd(&dev, &["update"]);
    assert!(
        !ok && err.contains("is signed by 0 of the keys allowed to sign channels (key document 2), 1 needed"),
        "{err}"
    );
    assert_eq!((running(&dev), serials(&dev)), (before, serde_json::json!({})));

    // Documents by the new key are accepted: the device keeps updating.
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    serve_document(&env, &doc, &test_key(12));
    assert_eq!(updated(&dev)["to"], c2.to_hex());
    let p = Promotion {
        to: "stable".into(),
        commit: Some(c3),
        from: None,
        hardware: Vec::new(),
        keys: &[test_key(12)],
        expires_in: DAY,
        rollback: false,
        force: false,
        create: true,
        now: now(),
    };
    channels::promote(&env.repo, &p).unwrap();
    assert_eq!(updated(&dev)["to"], c3.to_hex());

    // Rotating the root needs the old and the new root together.
    let new_root = KeyChange { roots: Some(vec![test_key(13).public()]), ..Default::default() };
    let err = channels::set_keys(&env.repo, &[test_key(ROOT)], new_root, now()).unwrap_err();
    assert!(format!("{err:#}").contains("is signed by 0 of the root keys it names, 1 needed"), "{err:#}");
    let new_root = KeyChange { roots: Some(vec![test_key(13).public()]), ..Default::default() };
    channels::set_keys(&env.repo, &[test_key(ROOT), test_key(13)], new_root, now()).unwrap();
    let status = updated(&dev);
    assert_eq!(status["up_to_date"], true);
    let trust: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dev.parent().unwrap().join("state/trust.json")).unwrap()).unwrap();
    assert_eq!(trust["keys"]["serial"], 3);
    assert_eq!(trust["keys"]["roots"][0], test_key(13).public().to_hex());

    // A device from a new image holds only the new root: it starts at the key document that
    // root signed, not at document 1, which only the old root signed.
    test_key(13).save(&env.path().join("root13.key")).unwrap();
    let fresh = device_rooted(&env, "new-image", "stable", "rev-a", "root13.key.pub");
    assert_eq!(updated(&fresh)["to"], c3.to_hex());
    // An image holding a key that is no root at all trusts nothing.
    test_key(2).save(&env.path().join("stranger.key")).unwrap();
    let stranger = device_rooted(&env, "stranger", "stable", "rev-a", "stranger.key.pub");
    refused(&stranger, &[], "is signed by 0 of the root keys this device trusts");
}

#[test]
fn a_commit_built_for_other_hardware_is_refused() {
    let env = fleet();
    let c1 = env.commit(1, "1");
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    updated(&dev);
    let key = test_key(1);
    let req = CommitRequest {
        hardware: vec!["rev-b".into()],
        ..CommitRequest::new(env.tree(2), "main", "2".parse().unwrap(), &key)
    };
    let only_b: Id = commit_tree(&env.repo, &req, &NoProgress).unwrap().commit.parse().unwrap();
    // `ferry promote` refuses it for rev-a...
    let p = Promotion {
        to: "stable".into(),
        commit: Some(only_b),
        from: None,
        hardware: vec!["rev-a".into()],
        keys: &[test_key(CHANNEL_KEY)],
        expires_in: DAY,
        rollback: false,
        force: false,
        create: true,
        now: now(),
    };
    assert!(format!("{:#}", channels::promote(&env.repo, &p).unwrap_err()).contains("not for rev-a"));
    // ...and a device refuses a document that points its revision at it anyway.
    let mut doc = newest(&env, "stable");
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.targets = vec![Target { hardware: "rev-a".into(), commit: only_b, version: "2".parse().unwrap() }];
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    refused(&dev, &[], "is built for rev-b only, not for this device's \"rev-a\"");
    // A device of another revision has no target in the channel at all.
    refused(&device(&env, "rev-c", "stable", "rev-c"), &[], "has no target for hardware revision \"rev-c\"");
}

#[test]
fn a_downgrade_needs_the_rollback_mark() {
    let env = fleet();
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    promote(&env, Some(c2), None, "stable", false).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    assert_eq!(updated(&dev)["to"], c2.to_hex());
    let err = promote(&env, Some(c1), None, "stable", false).unwrap_err();
    assert!(format!("{err:#}").contains("needs --rollback"), "{err:#}");
    let mut doc = newest(&env, "stable");
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.targets = vec![Target { hardware: "rev-a".into(), commit: c1, version: "1".parse().unwrap() }];
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    refused(&dev, &[], "version 1 is older than the running 2 and the document is not marked as a rollback");
    // The operator's deliberate rollback goes through.
    promote(&env, Some(c1), None, "stable", true).unwrap();
    let s = updated(&dev);
    assert_eq!((s["to"].as_str(), s["version"].as_str()), (Some(c1.to_hex().as_str()), Some("1")));
}

#[test]
fn a_wrong_clock_helps_no_attacker() {
    let env = fleet();
    let (c1, c2) = (env.commit(1, "1"), env.commit(2, "2"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    updated(&dev);
    let accepted = newest(&env, "stable");

    // An attacker's document that expired yesterday, offered to a device whose clock was
    // reset to 1970: the floor (the newest signed time it has seen) still rules.
    let mut stale = accepted.clone();
    stale.serial += 1;
    stale.previous = env.repo.channel("stable").unwrap();
    stale.timestamp = accepted.timestamp - 2 * DAY;
    stale.expires = accepted.timestamp - DAY;
    serve_document(&env, &stale, &test_key(CHANNEL_KEY));
    let in_1970 = [("FERRYD_CLOCK_OFFSET", (-now() + 1000).to_string())];
    refused(&dev, &in_1970, "expired at");

    // A clock years ahead refuses a valid document, says so, and raises nothing: once the
    // clock is right the same document is accepted.
    promote(&env, Some(c2), None, "stable", false).unwrap();
    let ahead = [("FERRYD_CLOCK_OFFSET", (30 * 365 * DAY).to_string())];
    refused(&dev, &ahead, "if this device's clock runs far ahead, set it right");
    assert_eq!(updated(&dev)["to"], c2.to_hex());
}

/// One document signed with a channel key (the fleet server's online one is enough, once
/// stolen) with serial 2^64-1, or signed in 2100, used to stop the channel on every device
/// that saw it, for good: rotating the key did not undo it. Now a device with a plausible
/// clock believes a signed time only to a day past it, and the serials a key vouched for are
/// forgotten when the root removes that key; the operator's next promotion starts afresh.
#[test]
fn a_leaked_channel_key_stops_a_channel_only_until_the_root_removes_it() {
    let env = fleet();
    let (c1, c2, c3) = (env.commit(1, "1"), env.commit(2, "2"), env.commit(3, "3"));
    promote(&env, Some(c1), None, "stable", false).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    assert_eq!(updated(&dev)["to"], c1.to_hex());
    let floor = |config: &Path| -> i64 {
        let t: serde_json::Value =
            serde_json::from_slice(&std::fs::read(config.parent().unwrap().join("state/trust.json")).unwrap()).unwrap();
        t["floor"].as_i64().unwrap()
    };

    // Signed in 2100: its signature is good, so it is taken, but the device's clock is
    // plausible and believes its time only to a day ahead: the floor stays near now, and
    // the next document signed now is taken.
    let mut doc = newest(&env, "stable");
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.timestamp = 4_102_444_800;
    doc.expires = doc.timestamp + 7 * DAY;
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    updated(&dev);
    assert!(floor(&dev) <= now() + DAY + 60, "the floor went to {}", floor(&dev));
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.timestamp = now();
    doc.expires = now() + 7 * DAY;
    doc.targets = vec![Target { hardware: "rev-a".into(), commit: c2, version: "2".parse().unwrap() }];
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    assert_eq!(updated(&dev)["to"], c2.to_hex());

    // Serial 2^64-1 at a plausible time is validly signed, so the device takes it...
    doc.serial = u64::MAX;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.timestamp = now();
    doc.expires = now() + 7 * DAY;
    serve_document(&env, &doc, &test_key(CHANNEL_KEY));
    updated(&dev);
    assert_eq!(serials(&dev)["stable"].as_u64(), Some(u64::MAX));
    // ... and no later document can follow it while key 11 is trusted.
    let err = promote(&env, Some(c3), None, "stable", false).unwrap_err();
    assert!(format!("{err:#}").contains("largest possible serial"), "{err:#}");

    // The root removes key 11 for key 12; the operator promotes with key 12.
    let change = KeyChange { channel_keys: Some(vec![test_key(12).public()]), ..Default::default() };
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, now()).unwrap();
    let key = test_key(12);
    let p = Promotion {
        to: "stable".into(),
        commit: Some(c3),
        from: None,
        hardware: Vec::new(),
        keys: std::slice::from_ref(&key),
        expires_in: 7 * DAY,
        rollback: false,
        force: false,
        create: true,
        now: now(),
    };
    let promoted = channels::promote(&env.repo, &p).unwrap();
    assert_eq!(promoted.doc.serial, 1, "the channel starts afresh");
    assert_eq!(updated(&dev)["to"], c3.to_hex());
    assert_eq!(serials(&dev)["stable"].as_u64(), Some(1));
}
