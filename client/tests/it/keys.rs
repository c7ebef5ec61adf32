//! Key documents version 2 against the real server and agent: thresholds (k of n) for
//! commits and channel documents, the expiry of the newest key document, the move of a
//! version 1 chain to version 2, and a device that was offline for months while every role
//! was rotated, catching up through the chain on its next check-in.

use std::path::Path;

use ferry_fixtures::test_key;
use ferry_publisher::channels::{self, KeyChange, Promotion, ThresholdChange};
use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::channel::{ChannelDoc, Envelope, KeyDoc, Thresholds};
use ferry_store::{Id, SecretKey, Signed};

use crate::channels::{device, newest, now, refused, running, updated, updated_env, CHANNEL_KEY, DAY, ROOT};
use crate::harness::Env;

/// `keys` as the public keys of fixture seeds.
fn publics(seeds: &[u8]) -> Vec<ferry_store::PublicKey> {
    seeds.iter().map(|s| test_key(*s).public()).collect()
}

fn secrets(seeds: &[u8]) -> Vec<SecretKey> {
    seeds.iter().map(|s| test_key(*s)).collect()
}

/// A commit of fixture version `v` as release `version`, signed by the keys `signers`.
fn commit_signed(env: &Env, v: u32, version: &str, signers: &[u8]) -> Id {
    let (first, rest) = signers.split_first().unwrap();
    let key = test_key(*first);
    let req = CommitRequest {
        hardware: vec!["rev-a".into()],
        ..CommitRequest::new(env.tree(v), "main", version.parse().unwrap(), &key)
    };
    let id: Id = commit_tree(&env.repo, &req, &NoProgress).unwrap().commit.parse().unwrap();
    for s in rest {
        let k = test_key(*s);
        env.repo.add_signature(&id, &k.public(), &k.sign_commit(&id)).unwrap();
    }
    id
}

/// Promotes `commit` to `stable` signed by the channel keys `signers`, as if at `at`.
fn promote_at(env: &Env, commit: Id, signers: &[u8], at: i64) -> anyhow::Result<ChannelDoc> {
    let keys = secrets(signers);
    let p = Promotion {
        to: "stable".into(),
        commit: Some(commit),
        from: None,
        hardware: Vec::new(),
        keys: &keys,
        expires_in: 7 * DAY,
        rollback: false,
        force: false,
        create: true,
        now: at,
    };
    Ok(channels::promote(&env.repo, &p)?.doc)
}

/// Publishes `doc` signed by the keys `signers`, as a compromised server would.
fn serve_signed(env: &Env, doc: &ChannelDoc, signers: &[u8]) {
    let keys = secrets(signers);
    let refs: Vec<&SecretKey> = keys.iter().collect();
    let envelope = Envelope::sign(Signed::Channel, doc.encode().unwrap(), &refs);
    env.repo.publish_channel(&envelope, env.repo.channel(&doc.name).unwrap(), None).unwrap();
}

fn trust_json(config: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(config.parent().unwrap().join("state/trust.json")).unwrap()).unwrap()
}

fn hexes(seeds: &[u8]) -> serde_json::Value {
    let mut v: Vec<String> = publics(seeds).iter().map(|k| k.to_hex()).collect();
    v.sort();
    serde_json::json!(v)
}

/// The first key document: root 10, the given commit and channel keys and thresholds, a
/// lifetime of `lifetime` seconds, signed at `at`.
fn first_keys(env: &Env, commit: &[u8], channel: &[u8], thresholds: ThresholdChange, lifetime: i64, at: i64) {
    test_key(ROOT).save(&env.path().join("root.key")).unwrap();
    let change = KeyChange {
        roots: Some(publics(&[ROOT])),
        commit_keys: Some(publics(commit)),
        channel_keys: Some(publics(channel)),
        thresholds,
        expires_in: Some(lifetime),
        ..KeyChange::default()
    };
    channels::set_keys(&env.repo, &[test_key(ROOT)], change, at).unwrap();
}

#[test]
fn commits_and_channel_documents_need_their_thresholds() {
    let env = Env::new();
    let two = ThresholdChange { commit: Some(2), channel: Some(2), ..ThresholdChange::default() };
    first_keys(&env, &[1, 2], &[CHANNEL_KEY, 12], two, 365 * DAY, now());

    // `ferry promote` refuses what devices would refuse: a commit one commit key signed,
    // a channel document one channel key would sign.
    let c1 = env.commit(1, "1");
    let err = promote_at(&env, c1, &[CHANNEL_KEY, 12], now()).unwrap_err();
    assert!(format!("{err:#}").contains("signed by 1 of the commit keys of key document 1, 2 needed"), "{err:#}");
    env.repo.add_signature(&c1, &test_key(2).public(), &test_key(2).sign_commit(&c1)).unwrap();
    let err = promote_at(&env, c1, &[CHANNEL_KEY], now()).unwrap_err();
    assert!(format!("{err:#}").contains("asks 2 signatures by channel keys"), "{err:#}");
    promote_at(&env, c1, &[CHANNEL_KEY, 12], now()).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    assert_eq!(updated(&dev)["to"], c1.to_hex());

    // A document only one channel key signed (k - 1 of k) is refused by the device...
    let c2 = commit_signed(&env, 2, "2", &[1, 2]);
    let mut doc = newest(&env, "stable");
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.targets[0].commit = c2;
    doc.targets[0].version = "2".parse().unwrap();
    serve_signed(&env, &doc, &[12]);
    refused(&dev, &[], "is signed by 1 of the keys allowed to sign channels (key document 1), 2 needed");
    // Both keys: accepted.
    serve_signed(&env, &doc, &[CHANNEL_KEY, 12]);
    assert_eq!(updated(&dev)["to"], c2.to_hex());

    // A commit only one commit key signed, named by a document both channel keys signed.
    let c3 = commit_signed(&env, 3, "3", &[2]);
    doc.serial += 1;
    doc.previous = env.repo.channel("stable").unwrap();
    doc.targets[0].commit = c3;
    doc.targets[0].version = "3".parse().unwrap();
    serve_signed(&env, &doc, &[CHANNEL_KEY, 12]);
    refused(&dev, &[], &format!("commit {c3} is signed by 1 of the trusted keys, 2 needed"));
    assert_eq!(running(&dev).as_deref(), Some(c2.to_hex().as_str()));
}

#[test]
fn an_expired_key_document_is_refused_until_the_operator_re_signs_it() {
    let env = Env::new();
    let t = now();
    first_keys(&env, &[1], &[CHANNEL_KEY], ThresholdChange::default(), 10 * DAY, t);
    let c1 = env.commit(1, "1");
    promote_at(&env, c1, &[CHANNEL_KEY], t).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    assert_eq!(updated(&dev)["to"], c1.to_hex());

    // Twenty days later the key document has expired: the device says so, and that its
    // clock decided it.
    let c2 = env.commit(2, "2");
    let later = [("FERRYD_CLOCK_OFFSET", (20 * DAY).to_string())];
    promote_at(&env, c2, &[CHANNEL_KEY], t + 19 * DAY).unwrap();
    refused(&dev, &later, "key document 1, the newest this device trusts, expired at");
    refused(&dev, &later, "judged by this device's clock");

    // The operator re-signs it with a longer life (the lists stay); the device moves on.
    let (_, doc) = channels::refresh_keys(&env.repo, &[test_key(ROOT)], Some(60 * DAY), t + 19 * DAY).unwrap();
    assert_eq!((doc.serial, doc.expires), (2, Some(t + 79 * DAY)));
    assert_eq!(doc.channel_keys, vec![test_key(CHANNEL_KEY).public().to_bytes()]);
    assert_eq!(updated_env(&dev, &later)["to"], c2.to_hex());
    assert_eq!(trust_json(&dev)["keys"]["expires"], t + 79 * DAY);
}

#[test]
fn a_device_on_a_version_1_chain_follows_the_transition_to_version_2() {
    let env = Env::new();
    // A repository whose key document was written before version 2.
    test_key(ROOT).save(&env.path().join("root.key")).unwrap();
    let v1 = KeyDoc {
        serial: 1,
        timestamp: now(),
        expires: None,
        previous: None,
        roots: vec![test_key(ROOT).public().to_bytes()],
        commit_keys: vec![test_key(1).public().to_bytes()],
        channel_keys: vec![test_key(CHANNEL_KEY).public().to_bytes()],
        config_keys: Vec::new(),
        thresholds: Thresholds::default(),
    };
    let envelope = Envelope::sign(Signed::Keys, v1.encode().unwrap(), &[&test_key(ROOT)]);
    env.repo.publish_keys(&envelope, None).unwrap();
    let c1 = env.commit(1, "1");
    promote_at(&env, c1, &[CHANNEL_KEY], now()).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    assert_eq!(updated(&dev)["to"], c1.to_hex());

    // The device's trust.json as an agent from before version 2 wrote it.
    let path = dev.parent().unwrap().join("state/trust.json");
    let mut old = trust_json(&dev);
    let keys = old["keys"].as_object_mut().unwrap();
    for field in ["config_keys", "thresholds", "expires"] {
        keys.remove(field);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&old).unwrap()).unwrap();

    // The operator's next key document is version 2 (the root signs it, as any rotation):
    // a second channel key, both needed, a configuration key, a 90-day life.
    let change = KeyChange {
        channel_keys: Some(publics(&[CHANNEL_KEY, 12])),
        config_keys: Some(publics(&[16])),
        thresholds: ThresholdChange { channel: Some(2), ..ThresholdChange::default() },
        expires_in: Some(90 * DAY),
        ..KeyChange::default()
    };
    let (_, doc) = channels::set_keys(&env.repo, &[test_key(ROOT)], change, now()).unwrap();
    assert_eq!((doc.serial, doc.version()), (2, 2));
    let c2 = env.commit(2, "2");
    let err = promote_at(&env, c2, &[CHANNEL_KEY], now()).unwrap_err();
    assert!(format!("{err:#}").contains("asks 2 signatures"), "{err:#}");
    promote_at(&env, c2, &[CHANNEL_KEY, 12], now()).unwrap();
    assert_eq!(updated(&dev)["to"], c2.to_hex());
    let keys = &trust_json(&dev)["keys"];
    assert_eq!(keys["serial"], 2);
    assert_eq!(keys["thresholds"]["channel"], 2);
    assert_eq!(keys["config_keys"], hexes(&[16]));
    assert_eq!(keys["expires"], doc.expires.unwrap());
}

/// The device checks in at the start, then not for four months. Meanwhile the operator
/// rotates the channel key, the root twice (the second time to two roots, both needed), the
/// commit key and adds a configuration key; every key document but the newest expired long
/// before the device comes back. On its next check-in it walks the whole chain and installs
/// a release signed by keys it never saw.
#[test]
fn a_device_offline_for_months_catches_up_through_every_rotation() {
    let env = Env::new();
    let t = now();
    let life = Some(45 * DAY);
    first_keys(&env, &[1], &[CHANNEL_KEY], ThresholdChange::default(), 45 * DAY, t);
    let c1 = env.commit(1, "1");
    promote_at(&env, c1, &[CHANNEL_KEY], t).unwrap();
    let dev = device(&env, "device", "stable", "rev-a");
    assert_eq!(updated(&dev)["to"], c1.to_hex());

    let set = |signers: &[u8], change: KeyChange, at: i64| {
        channels::set_keys(&env.repo, &secrets(signers), change, at).unwrap();
    };
    // Day 30: the channel key 11 is replaced by 12.
    set(
        &[ROOT],
        KeyChange { channel_keys: Some(publics(&[12])), expires_in: life, ..KeyChange::default() },
        t + 30 * DAY,
    );
    // Day 60: the root 10 is replaced by 13 (the old and the new root sign).
    set(&[ROOT, 13], KeyChange { roots: Some(publics(&[13])), expires_in: life, ..KeyChange::default() }, t + 60 * DAY);
    // Day 90: the root 13 is replaced by 14 and 15, both needed from now on.
    let two_roots = KeyChange {
        roots: Some(publics(&[14, 15])),
        thresholds: ThresholdChange { root: Some(2), ..ThresholdChange::default() },
        expires_in: life,
        ..KeyChange::default()
    };
    set(&[13, 14, 15], two_roots, t + 90 * DAY);
    // One new root is not enough any more.
    let one = channels::set_keys(&env.repo, &secrets(&[14]), KeyChange::default(), t + 95 * DAY).unwrap_err();
    assert!(format!("{one:#}").contains("signed by 1 of the root keys"), "{one:#}");
    // Day 100: the commit key 1 is replaced by 2, and configuration key 16 is added.
    let commit_key = KeyChange {
        commit_keys: Some(publics(&[2])),
        config_keys: Some(publics(&[16])),
        expires_in: Some(365 * DAY),
        ..KeyChange::default()
    };
    set(&[14, 15], commit_key, t + 100 * DAY);
    // Day 120: a release signed by the new commit key, promoted with the new channel key.
    let c2 = commit_signed(&env, 2, "2", &[2]);
    promote_at(&env, c2, &[12], t + 120 * DAY).unwrap();

    // Day 121: the device checks in.
    let back = [("FERRYD_CLOCK_OFFSET", (121 * DAY).to_string())];
    assert_eq!(updated_env(&dev, &back)["to"], c2.to_hex());
    let keys = &trust_json(&dev)["keys"];
    assert_eq!(keys["serial"], 5);
    assert_eq!(keys["roots"], hexes(&[14, 15]));
    assert_eq!(keys["thresholds"]["root"], 2);
    assert_eq!(keys["commit_keys"], hexes(&[2]));
    assert_eq!(keys["channel_keys"], hexes(&[12]));
    assert_eq!(keys["config_keys"], hexes(&[16]));
}
