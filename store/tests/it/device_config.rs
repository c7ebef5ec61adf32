//! Configuration documents: golden id, round trips, strict decoding, and the rule a device
//! accepts them by (the agent's tests run it end to end against the real server).

use std::collections::BTreeMap;

use ferry_store::channel::{Envelope, KeyDoc, Thresholds, Trust, TrustError};
use ferry_store::device_config::{accept_config, ConfigDoc, ConfigError};
use ferry_store::object::DecodeError;
use ferry_store::{Id, SecretKey, Signed};
use proptest::prelude::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

const T: i64 = 1_800_000_000;

fn sample() -> ConfigDoc {
    ConfigDoc {
        serial: "SN-1".into(),
        version: 7,
        timestamp: T,
        expires: T + 30 * 86400,
        values: [("API_KEY", "s3cret \"quoted\" $x"), ("LOG", "debug")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn golden_id_and_round_trip() {
    let bytes = sample().encode().unwrap();
    assert_eq!(Id::of(&bytes).to_hex(), GOLDEN_CONFIG);
    assert_eq!(ConfigDoc::decode(&bytes).unwrap(), sample());
}

const GOLDEN_CONFIG: &str = "bb1f01476d5c24af9201f20c90e852dc7eb26198aa21f9fe65429ad8166fbc95";

#[test]
fn bad_configuration_documents_are_refused() {
    let check = |doc: ConfigDoc| assert!(doc.encode().is_err(), "encoded {doc:?}");
    check(ConfigDoc { serial: String::new(), ..sample() });
    check(ConfigDoc { serial: "SN\n1".into(), ..sample() });
    check(ConfigDoc { serial: "S".repeat(129), ..sample() });
    check(ConfigDoc { version: 0, ..sample() });
    check(ConfigDoc { expires: T, ..sample() });
    for (k, v) in [("1BAD", "x"), ("A-B", "x"), ("", "x"), ("OK", "two\nlines"), ("OK", "\u{7f}")] {
        let mut d = sample();
        d.values.insert(k.into(), v.into());
        check(d);
    }
    let mut big = sample();
    big.values.insert("BIG".into(), "x".repeat(4097));
    check(big);

    let good = sample().encode().unwrap();
    for n in 0..good.len() {
        assert!(ConfigDoc::decode(&good[..n]).is_err(), "decoded a prefix of {n} bytes");
    }
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(ConfigDoc::decode(&long), Err(DecodeError::TrailingBytes { extra: 1 })));
    // Keys out of order: API_KEY and LOG swapped in place ("LOG" is shorter, so rebuild).
    let mut w = Vec::new();
    w.extend_from_slice(&good[..4 + 2 + 2 + 4 + 8 + 8 + 8 + 2]);
    for (k, v) in sample().values.iter().rev() {
        w.extend_from_slice(&(k.len() as u16).to_le_bytes());
        w.extend_from_slice(k.as_bytes());
        w.extend_from_slice(&(v.len() as u16).to_le_bytes());
        w.extend_from_slice(v.as_bytes());
    }
    assert_eq!(w.len(), good.len());
    assert!(matches!(ConfigDoc::decode(&w), Err(DecodeError::Unsorted { .. })));
    // Another kind's bytes are not a configuration.
    let keys = KeyDoc {
        serial: 1,
        timestamp: T,
        expires: None,
        previous: None,
        roots: vec![key(1).public().to_bytes()],
        commit_keys: vec![],
        channel_keys: vec![key(3).public().to_bytes()],
        config_keys: vec![],
        thresholds: Thresholds::default(),
    };
    assert!(matches!(ConfigDoc::decode(&keys.encode().unwrap()), Err(DecodeError::BadMagic { .. })));
}

/// A trust whose key document names configuration keys 8 and 9 (`threshold` of them needed)
/// and expires at `T + 365 days`.
fn trust(config_keys: &[u8], threshold: u16) -> Trust {
    let mut keys: Vec<[u8; 32]> = config_keys.iter().map(|s| key(*s).public().to_bytes()).collect();
    keys.sort();
    let doc = KeyDoc {
        serial: 1,
        timestamp: T - 86400,
        expires: Some(T + 365 * 86400),
        previous: None,
        roots: vec![key(1).public().to_bytes()],
        commit_keys: vec![key(2).public().to_bytes()],
        channel_keys: vec![key(3).public().to_bytes()],
        config_keys: keys,
        thresholds: Thresholds { config: threshold, ..Thresholds::default() },
    };
    let e = Envelope::sign(Signed::Keys, doc.encode().unwrap(), &[&key(1)]);
    Trust::from_roots(&[key(1).public()]).advance(&e).unwrap()
}

fn signed(doc: &ConfigDoc, signers: &[u8]) -> Envelope {
    let keys: Vec<SecretKey> = signers.iter().map(|s| key(*s)).collect();
    let refs: Vec<&SecretKey> = keys.iter().collect();
    Envelope::sign(Signed::Config, doc.encode().unwrap(), &refs)
}

#[test]
fn the_acceptance_rules() {
    let t = trust(&[8, 9], 1);
    let doc = sample();
    let ok = signed(&doc, &[8]);
    assert_eq!(accept_config(&ok, &t, "SN-1", 0, T + 10, 0).unwrap(), doc);
    // The applied version again is accepted (nothing new to write); an older one is a replay.
    accept_config(&ok, &t, "SN-1", 7, T + 10, 0).unwrap();
    let r = accept_config(&ok, &t, "SN-1", 8, T + 10, 0);
    assert!(matches!(r, Err(ConfigError::Replayed { found: 7, applied: 8 })), "{r:?}");
    // Another device's document.
    let r = accept_config(&ok, &t, "SN-2", 0, T + 10, 0);
    assert!(
        matches!(&r, Err(ConfigError::WrongDevice { expected, found, .. }) if expected == "SN-2" && found == "SN-1")
    );
    // Expired by the clock, or by the floor when the clock is in 1970.
    let r = accept_config(&ok, &t, "SN-1", 0, doc.expires, 0);
    assert!(matches!(r, Err(ConfigError::Expired { version: 7, .. })), "{r:?}");
    let r = accept_config(&ok, &t, "SN-1", 0, 0, doc.expires + 1);
    assert!(matches!(r, Err(ConfigError::Expired { clock: 0, .. })), "{r:?}");
    // Signed by a key that is not a configuration key (a channel key, a stranger), or with
    // another domain's signature by a configuration key.
    for e in [signed(&doc, &[3]), signed(&doc, &[17])] {
        let r = accept_config(&e, &t, "SN-1", 0, T + 10, 0);
        assert!(matches!(r, Err(ConfigError::NotSigned { signed: 0, threshold: 1, .. })), "{r:?}");
    }
    let bytes = doc.encode().unwrap();
    let cross = Envelope {
        signatures: vec![(key(8).public().to_bytes(), key(8).sign(Signed::Channel, &Id::of(&bytes)))],
        document: bytes,
    };
    assert!(matches!(accept_config(&cross, &t, "SN-1", 0, T + 10, 0), Err(ConfigError::NotSigned { .. })));
    // A changed value breaks the signature.
    let mut tampered = ok.clone();
    let at = tampered.document.len() - 1;
    tampered.document[at] ^= 1;
    assert!(matches!(accept_config(&tampered, &t, "SN-1", 0, T + 10, 0), Err(ConfigError::NotSigned { .. })));
    // A key document without configuration keys checks nothing.
    let r = accept_config(&ok, &trust(&[], 1), "SN-1", 0, T + 10, 0);
    assert!(matches!(r, Err(ConfigError::NoConfigKeys { .. })), "{r:?}");
    // An expired key document stops configuration too.
    let r = accept_config(&ok, &t, "SN-1", 0, T + 400 * 86400, 0);
    assert!(matches!(r, Err(ConfigError::Keys(TrustError::KeysExpired { .. }))), "{r:?}");
}

#[test]
fn the_configuration_threshold_is_enforced() {
    let t = trust(&[8, 9], 2);
    let doc = sample();
    let r = accept_config(&signed(&doc, &[8]), &t, "SN-1", 0, T + 10, 0);
    assert!(matches!(r, Err(ConfigError::NotSigned { signed: 1, threshold: 2, .. })), "{r:?}");
    let mut twice = signed(&doc, &[8]);
    twice.signatures.push(twice.signatures[0]);
    let r = accept_config(&twice, &t, "SN-1", 0, T + 10, 0);
    assert!(matches!(r, Err(ConfigError::NotSigned { signed: 1, .. })), "one key counted twice: {r:?}");
    accept_config(&signed(&doc, &[8, 9]), &t, "SN-1", 0, T + 10, 0).unwrap();
}

proptest! {
    #[test]
    fn configuration_documents_round_trip(
        serial in "[A-Za-z0-9-]{1,40}",
        version in 1u64..u64::MAX,
        timestamp in -(1i64 << 40)..(1i64 << 40),
        lifetime in 1i64..(1i64 << 40),
        values in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,20}", "[ -~]{0,60}", 0..20),
    ) {
        let doc = ConfigDoc { serial, version, timestamp, expires: timestamp + lifetime, values: values.into_iter().collect::<BTreeMap<_, _>>() };
        let bytes = doc.encode().unwrap();
        prop_assert_eq!(ConfigDoc::decode(&bytes).unwrap(), doc);
    }
}

/// The fuzzer's seed of a signed configuration document (`fuzz/seeds/signed_documents/`)
/// is what the encoder writes today; `FERRY_WRITE_SEEDS=1` rewrites it.
#[test]
fn the_fuzz_seed_is_current() {
    let path = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"))
        .join("../fuzz/seeds/signed_documents/config-document");
    let bytes = signed(&sample(), &[8]).encode();
    if std::env::var_os("FERRY_WRITE_SEEDS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "run with FERRY_WRITE_SEEDS=1 to rewrite {}", path.display());
}
