//! Key and channel documents: golden ids, round trips, strict decoding, signature domains,
//! and the acceptance rules on their own (the agent's tests run them end to end).

use ferry_store::channel::{
    accept_channel, believable_time, ChannelDoc, Envelope, KeyDoc, Quorum, Running, Seen, Target, Thresholds, Trust,
    TrustError, KEYS_VERSION, MAX_AHEAD,
};
use ferry_store::object::DecodeError;
use ferry_store::{Id, SecretKey, Signed};
use proptest::prelude::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

/// A version 1 key document (no expiry, thresholds of 1, no configuration keys).
fn sample_keys() -> KeyDoc {
    KeyDoc {
        serial: 1,
        timestamp: 1_700_000_000,
        expires: None,
        previous: None,
        roots: vec![key(1).public().to_bytes()],
        commit_keys: vec![key(2).public().to_bytes()],
        channel_keys: vec![key(3).public().to_bytes()],
        config_keys: Vec::new(),
        thresholds: Thresholds::default(),
    }
}

fn keys_of(seeds: &[u8]) -> Vec<[u8; 32]> {
    let mut v: Vec<[u8; 32]> = seeds.iter().map(|s| key(*s).public().to_bytes()).collect();
    v.sort();
    v
}

/// A version 2 key document: roots 1, 4, 5 (2 of 3), commit keys 2, 6 (2 of 2), channel
/// keys 3, 7 (1 of 2), configuration key 8; expires a year after it is signed.
fn sample_keys_v2() -> KeyDoc {
    KeyDoc {
        serial: 1,
        timestamp: 1_700_000_000,
        expires: Some(1_700_000_000 + 365 * 86400),
        previous: None,
        roots: keys_of(&[1, 4, 5]),
        commit_keys: keys_of(&[2, 6]),
        channel_keys: keys_of(&[3, 7]),
        config_keys: keys_of(&[8]),
        thresholds: Thresholds { root: 2, commit: 2, channel: 1, config: 1 },
    }
}

fn sample_channel() -> ChannelDoc {
    ChannelDoc {
        name: "stable".into(),
        serial: 7,
        timestamp: 1_700_000_000,
        expires: 1_700_604_800,
        rollback: false,
        previous: Some(Id::of(b"serial 6")),
        targets: vec![
            Target { hardware: "rev-a".into(), commit: Id::of(b"a"), version: "1.2.0".parse().unwrap() },
            Target { hardware: "rev-b".into(), commit: Id::of(b"b"), version: "1.2.0".parse().unwrap() },
        ],
    }
}

#[test]
fn golden_ids_are_pinned() {
    // If these change, every signed document changes id: that needs a new format version.
    assert_eq!(Id::of(&sample_keys().encode().unwrap()).to_hex(), GOLDEN_KEYS);
    assert_eq!(Id::of(&sample_keys_v2().encode().unwrap()).to_hex(), GOLDEN_KEYS_V2);
    assert_eq!(Id::of(&sample_channel().encode().unwrap()).to_hex(), GOLDEN_CHANNEL);
}

const GOLDEN_KEYS: &str = "bac091203ef483b85a29e748a25e775a3d7e3d559428ec245438de362477166a";
const GOLDEN_KEYS_V2: &str = "2cdfc1ff34135509e7cfc7627e786811aad56d27f12211a6a5ac5e337774d581";
const GOLDEN_CHANNEL: &str = "ba62de487fdb568c19339f963c24913d8704c327f6c5b347c977f5b6e061ef7b";

#[test]
fn documents_round_trip() {
    let k = sample_keys();
    assert_eq!(KeyDoc::decode(&k.encode().unwrap()).unwrap(), k);
    assert_eq!(k.version(), 1);
    let k2 = sample_keys_v2();
    assert_eq!(KeyDoc::decode(&k2.encode().unwrap()).unwrap(), k2);
    assert_eq!(k2.version(), KEYS_VERSION);
    let c = sample_channel();
    assert_eq!(ChannelDoc::decode(&c.encode().unwrap()).unwrap(), c);
    let e = Envelope::sign(Signed::Channel, c.encode().unwrap(), &[&key(3), &key(2)]);
    assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    let two: Vec<u8> = [e.encode(), e.encode()].concat();
    assert_eq!(Envelope::decode_all(&two).unwrap(), vec![e.clone(), e]);
}

fn check_channel_error(doc: &ChannelDoc, expected: impl Fn(&DecodeError) -> bool) {
    match doc.encode() {
        Ok(b) => panic!("encoded a bad channel document: {b:?}"),
        Err(e) => assert!(expected(&e), "unexpected error: {e}"),
    }
}

#[test]
fn bad_documents_are_refused() {
    let mut c = sample_channel();
    c.targets.reverse();
    check_channel_error(&c, |e| matches!(e, DecodeError::Unsorted { .. }));
    let mut c = sample_channel();
    c.targets[1].hardware = "rev-a".into();
    check_channel_error(&c, |e| matches!(e, DecodeError::Unsorted { .. }));
    let mut c = sample_channel();
    c.targets.clear();
    check_channel_error(&c, |e| matches!(e, DecodeError::Empty { .. }));
    let mut c = sample_channel();
    c.name = "../etc".into();
    check_channel_error(&c, |e| matches!(e, DecodeError::BadName { .. }));

    // Byte-level damage: trailing bytes, a bad flag, truncation, a wrong magic.
    let good = sample_channel().encode().unwrap();
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(ChannelDoc::decode(&long), Err(DecodeError::TrailingBytes { extra: 1 })));
    let mut flag = good.clone();
    let at = 4 + 2 + 2 + "stable".len() + 8 + 8 + 8;
    flag[at] = 2;
    assert!(matches!(ChannelDoc::decode(&flag), Err(DecodeError::BadFlag { field: "rollback flag", value: 2 })));
    for n in 0..good.len() {
        assert!(ChannelDoc::decode(&good[..n]).is_err(), "decoded a prefix of {n} bytes");
    }
    assert!(matches!(KeyDoc::decode(&good), Err(DecodeError::BadMagic { .. })));

    let mut k = sample_keys();
    k.channel_keys.clear();
    assert!(matches!(k.encode(), Err(DecodeError::Empty { field: "channel keys" })));
    let mut k = sample_keys();
    k.roots = vec![key(1).public().to_bytes(), key(1).public().to_bytes()];
    assert!(matches!(k.encode(), Err(DecodeError::Unsorted { .. })));
    let mut k = sample_keys();
    k.serial = 0;
    assert!(matches!(k.encode(), Err(DecodeError::Empty { .. })));
}

fn check_keys_error(doc: &KeyDoc, expected: impl Fn(&DecodeError) -> bool) {
    match doc.encode() {
        Ok(b) => panic!("encoded a bad key document: {b:?}"),
        Err(e) => assert!(expected(&e), "unexpected error: {e}"),
    }
}

/// Version 2 is as strict as version 1: thresholds within their role, an expiry after the
/// signing time, no version 2 field in a version 1 document, and byte damage refused.
#[test]
fn bad_version_2_key_documents_are_refused() {
    let bad_threshold = |e: &DecodeError| matches!(e, DecodeError::BadThreshold { .. });
    for set in [
        |t: &mut Thresholds| t.root = 0,
        |t: &mut Thresholds| t.root = 4,
        |t: &mut Thresholds| t.commit = 3,
        |t: &mut Thresholds| t.channel = 0,
        |t: &mut Thresholds| t.config = 2,
    ] {
        let mut k = sample_keys_v2();
        set(&mut k.thresholds);
        check_keys_error(&k, bad_threshold);
    }
    // An empty role takes a threshold of 1 (nothing to sign with yet), not 0 or 2.
    let mut k = sample_keys_v2();
    k.config_keys.clear();
    k.encode().unwrap();
    k.thresholds.config = 2;
    check_keys_error(&k, bad_threshold);
    let mut k = sample_keys_v2();
    k.expires = Some(k.timestamp);
    check_keys_error(&k, |e| matches!(e, DecodeError::Empty { .. }));
    // Version 1 has no room for thresholds or configuration keys.
    let mut k = sample_keys_v2();
    k.expires = None;
    check_keys_error(&k, |e| matches!(e, DecodeError::Empty { .. }));
    let mut k = sample_keys_v2();
    k.config_keys = keys_of(&[8, 8]);
    check_keys_error(&k, |e| matches!(e, DecodeError::Unsorted { .. }));

    let good = sample_keys_v2().encode().unwrap();
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(KeyDoc::decode(&long), Err(DecodeError::TrailingBytes { extra: 1 })));
    for n in 0..good.len() {
        assert!(KeyDoc::decode(&good[..n]).is_err(), "decoded a prefix of {n} bytes");
    }
    // Format versions 0 and 3 are unknown.
    for v in [0u16, 3] {
        let mut other = good.clone();
        other[4..6].copy_from_slice(&v.to_le_bytes());
        assert!(
            matches!(KeyDoc::decode(&other), Err(DecodeError::UnsupportedDocumentVersion { found, .. }) if found == v)
        );
    }
    // A version 1 document relabelled version 2 (and the other way round) does not decode.
    let mut relabelled = sample_keys().encode().unwrap();
    relabelled[4..6].copy_from_slice(&2u16.to_le_bytes());
    assert!(KeyDoc::decode(&relabelled).is_err());
    let mut relabelled = good.clone();
    relabelled[4..6].copy_from_slice(&1u16.to_le_bytes());
    assert!(KeyDoc::decode(&relabelled).is_err());
    // The root threshold's bytes (after magic, version, serial, timestamp, expires and the
    // previous flag) set to 0: refused as a threshold, not read as "no signature needed".
    let at = 4 + 2 + 8 + 8 + 8 + 1;
    let mut zero = good.clone();
    zero[at..at + 2].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(KeyDoc::decode(&zero), Err(DecodeError::BadThreshold { role: "root", threshold: 0, .. })));
}

#[test]
fn signatures_do_not_cross_domains() {
    let doc = sample_channel().encode().unwrap();
    let id = Id::of(&doc);
    let k = key(3);
    // The same key's signature over the same id, made for a commit or a key document, is
    // no channel signature.
    for other in [Signed::Commit, Signed::Keys, Signed::Config] {
        let forged = Envelope { document: doc.clone(), signatures: vec![(k.public().to_bytes(), k.sign(other, &id))] };
        assert!(forged.signed_by(Signed::Channel, &[k.public().to_bytes()]).is_empty());
    }
    let real = Envelope::sign(Signed::Channel, doc, &[&k]);
    assert_eq!(real.signed_by(Signed::Channel, &[k.public().to_bytes()]), vec![k.public().to_bytes()]);
    assert!(real.signed_by(Signed::Channel, &[key(4).public().to_bytes()]).is_empty());
}

fn trusted() -> Trust {
    let e = Envelope::sign(Signed::Keys, sample_keys().encode().unwrap(), &[&key(1)]);
    Trust::from_roots(&[key(1).public()]).advance(&e).unwrap()
}

fn check_accept(
    doc: &ChannelDoc,
    seen: Seen,
    clock: i64,
    running: Option<&str>,
    expected: impl Fn(&Result<(ChannelDoc, Target), TrustError>) -> bool,
) {
    let e = Envelope::sign(Signed::Channel, doc.encode().unwrap(), &[&key(3)]);
    let version = running.map(|v| v.parse().unwrap());
    let r = accept_channel(
        &e,
        "stable",
        &trusted(),
        seen,
        clock,
        &Running { version: version.as_ref(), hardware: "rev-a" },
    );
    assert!(expected(&r), "unexpected outcome: {r:?}");
}

#[test]
fn the_acceptance_rules() {
    let doc = sample_channel();
    let t = doc.timestamp;
    let fresh = Seen { serial: 0, floor: 0 };
    check_accept(&doc, fresh, t + 10, None, |r| r.as_ref().is_ok_and(|(_, target)| target.commit == Id::of(b"a")));
    // Same serial again is fine (nothing new); a lower one is a replay.
    check_accept(&doc, Seen { serial: 7, floor: 0 }, t + 10, None, |r| r.is_ok());
    check_accept(&doc, Seen { serial: 8, floor: 0 }, t + 10, None, |r| {
        matches!(r, Err(TrustError::Replayed { found: 7, highest: 8, .. }))
    });
    // Expiry is judged against max(clock, floor): a clock in 1970 does not help.
    check_accept(&doc, fresh, doc.expires, None, |r| matches!(r, Err(TrustError::Expired { .. })));
    check_accept(&doc, Seen { serial: 0, floor: doc.expires + 1 }, 0, None, |r| {
        matches!(r, Err(TrustError::Expired { clock: 0, .. }))
    });
    // Versions: equal and newer pass; older needs the rollback mark; kinds must match.
    check_accept(&doc, fresh, t, Some("1.2.0"), |r| r.is_ok());
    check_accept(&doc, fresh, t, Some("1.3.0"), |r| matches!(r, Err(TrustError::Downgrade { .. })));
    check_accept(&doc, fresh, t, Some("12"), |r| matches!(r, Err(TrustError::Unordered { .. })));
    let mut rollback = doc.clone();
    rollback.rollback = true;
    check_accept(&rollback, fresh, t, Some("1.3.0"), |r| r.is_ok());
    // A document signed far ahead is accepted (its signature decides); how much of its time
    // the device believes is `believable_time`'s.
    let mut ahead = doc.clone();
    ahead.timestamp = t + 100 * 365 * 86400;
    ahead.expires = ahead.timestamp + 86400;
    check_accept(&ahead, fresh, t, None, |r| r.is_ok());
    // Another channel's document is not this channel's.
    let mut other = doc.clone();
    other.name = "beta".into();
    check_accept(&other, fresh, t, None, |r| matches!(r, Err(TrustError::WrongChannel { .. })));
}

#[test]
fn key_chain_rules() {
    let roots = Trust::from_roots(&[key(1).public()]);
    let first = sample_keys();
    // Signed by a key that is not a root.
    let e = Envelope::sign(Signed::Keys, first.encode().unwrap(), &[&key(2)]);
    assert!(matches!(roots.advance(&e), Err(TrustError::KeysNotSignedByOldRoot { serial: 0, .. })));
    let t1 = roots.advance(&Envelope::sign(Signed::Keys, first.encode().unwrap(), &[&key(1)])).unwrap();
    // A gap in serials.
    let skip = KeyDoc { serial: 3, ..first.clone() };
    let e = Envelope::sign(Signed::Keys, skip.encode().unwrap(), &[&key(1)]);
    assert!(matches!(t1.advance(&e), Err(TrustError::KeysOutOfOrder { found: 3, expected: 2, .. })));
    // A new root needs the old and the new signature.
    let rotated = KeyDoc { serial: 2, roots: vec![key(9).public().to_bytes()], ..first };
    let only_old = Envelope::sign(Signed::Keys, rotated.encode().unwrap(), &[&key(1)]);
    assert!(matches!(t1.advance(&only_old), Err(TrustError::KeysNotSignedByNewRoot { .. })));
    let only_new = Envelope::sign(Signed::Keys, rotated.encode().unwrap(), &[&key(9)]);
    assert!(matches!(t1.advance(&only_new), Err(TrustError::KeysNotSignedByOldRoot { serial: 1, .. })));
    let both = Envelope::sign(Signed::Keys, rotated.encode().unwrap(), &[&key(1), &key(9)]);
    assert_eq!(t1.advance(&both).unwrap().roots, vec![key(9).public().to_bytes()]);
}

/// Thresholds: k - 1 root signatures do not advance the chain, k do, from the old roots
/// and from the new; commit and channel signatures are counted per distinct trusted key.
#[test]
fn thresholds_are_enforced() {
    let roots = Trust::from_roots(&[key(1).public()]);
    let first = sample_keys_v2();
    let bytes = first.encode().unwrap();
    // The image's root (threshold 1) signed, but only 1 of the document's own 2 roots.
    let one = Envelope::sign(Signed::Keys, bytes.clone(), &[&key(1)]);
    assert!(matches!(roots.advance(&one), Err(TrustError::KeysNotSignedByNewRoot { signed: 1, threshold: 2, .. })));
    let t1 = roots.advance(&Envelope::sign(Signed::Keys, bytes, &[&key(1), &key(5)])).unwrap();
    assert_eq!((t1.thresholds, t1.expires), (first.thresholds, first.expires));

    // The next document: 2 of the roots 1, 4, 5 must sign it.
    let second = KeyDoc { serial: 2, channel_keys: keys_of(&[7]), ..first.clone() };
    let bytes = second.encode().unwrap();
    let short = Envelope::sign(Signed::Keys, bytes.clone(), &[&key(4), &key(9)]);
    assert!(matches!(t1.advance(&short), Err(TrustError::KeysNotSignedByOldRoot { signed: 1, threshold: 2, .. })));
    // The same key's signature twice counts once.
    let mut twice = Envelope::sign(Signed::Keys, bytes.clone(), &[&key(4)]);
    twice.signatures.push(twice.signatures[0]);
    assert!(matches!(t1.advance(&twice), Err(TrustError::KeysNotSignedByOldRoot { signed: 1, .. })));
    let t2 = t1.advance(&Envelope::sign(Signed::Keys, bytes, &[&key(4), &key(5)])).unwrap();
    assert_eq!(t2.channel_keys, keys_of(&[7]));

    // Commits: 2 of the commit keys 2 and 6.
    let commit = Id::of(b"a commit");
    let sig = |n: u8| (key(n).public().to_bytes(), key(n).sign(Signed::Commit, &commit));
    let quorum = t2.quorum(Signed::Commit);
    assert_eq!(quorum.threshold, 2);
    assert!(!quorum.met(&commit, &[sig(2)]));
    assert!(!quorum.met(&commit, &[sig(2), sig(2)]), "one key counted twice");
    assert!(!quorum.met(&commit, &[sig(2), sig(3)]), "a channel key counted for commits");
    let mut forged = sig(6);
    forged.1[0] ^= 1;
    assert!(!quorum.met(&commit, &[sig(2), forged]), "a bad signature counted");
    assert!(quorum.met(&commit, &[sig(6), sig(2)]));
    // A device following a branch trusts any one of its keys.
    assert!(Quorum::any(Signed::Commit, &[key(2).public()]).met(&commit, &[sig(2)]));

    // Channel documents: with a channel threshold of 2, one signature is refused.
    let third = KeyDoc {
        serial: 3,
        channel_keys: keys_of(&[3, 7]),
        thresholds: Thresholds { channel: 2, ..first.thresholds },
        ..first
    };
    let t3 = t2.advance(&Envelope::sign(Signed::Keys, third.encode().unwrap(), &[&key(1), &key(4)])).unwrap();
    let doc = sample_channel();
    let running = Running { version: None, hardware: "rev-a" };
    let fresh = Seen { serial: 0, floor: 0 };
    let one = Envelope::sign(Signed::Channel, doc.encode().unwrap(), &[&key(3)]);
    let r = accept_channel(&one, "stable", &t3, fresh, doc.timestamp + 10, &running);
    assert!(matches!(r, Err(TrustError::ChannelNotSigned { signed: 1, threshold: 2, .. })), "{r:?}");
    let two = Envelope::sign(Signed::Channel, doc.encode().unwrap(), &[&key(3), &key(7)]);
    accept_channel(&two, "stable", &t3, fresh, doc.timestamp + 10, &running).unwrap();
}

/// A newest key document past its expiry is refused, judged by max(clock, floor); the
/// error says when the clock is the likely problem. Expired documents earlier in the chain
/// do not stop a device catching up.
#[test]
fn expired_key_documents_are_refused() {
    let mut first = sample_keys_v2();
    first.thresholds.root = 1;
    let t = Trust::from_roots(&[key(1).public()])
        .advance(&Envelope::sign(Signed::Keys, first.encode().unwrap(), &[&key(1)]))
        .unwrap();
    let expires = first.expires.unwrap();
    t.check_expiry(expires - 1, 0).unwrap();
    // The clock says it expired: a plausible clock just past it...
    let r = t.check_expiry(expires, 0);
    assert!(
        matches!(&r, Err(TrustError::KeysExpired { serial: 1, hint, .. }) if hint.contains("judged by this device's clock")),
        "{r:?}"
    );
    // ...or a clock years ahead, which is likely wrong.
    let r = t.check_expiry(expires + 30 * 365 * 86400, 0);
    assert!(matches!(&r, Err(TrustError::KeysExpired { hint, .. }) if hint.contains("runs far ahead")), "{r:?}");
    // A clock reset to 1970 does not help: the floor rules, and the error says so.
    let r = t.check_expiry(0, expires + 5);
    assert!(
        matches!(&r, Err(TrustError::KeysExpired { clock: 0, hint, .. }) if hint.contains("newest signed time")),
        "{r:?}"
    );
    // Channel documents are refused under an expired key document.
    let mut doc = sample_channel();
    doc.timestamp = expires + 10;
    doc.expires = expires + 1000;
    let e = Envelope::sign(Signed::Channel, doc.encode().unwrap(), &[&key(3)]);
    let running = Running { version: None, hardware: "rev-a" };
    let r = accept_channel(&e, "stable", &t, Seen { serial: 0, floor: 0 }, expires + 20, &running);
    assert!(matches!(r, Err(TrustError::KeysExpired { .. })), "{r:?}");

    // A re-signed document (next serial, a new expiry) moves the device on, through a
    // chain whose earlier documents expired long ago.
    let second = KeyDoc { serial: 2, timestamp: expires + 100, expires: Some(expires + 200), ..first.clone() };
    let third = KeyDoc { serial: 3, timestamp: expires + 150, expires: Some(expires + 365 * 86400), ..first.clone() };
    let chain: Vec<Envelope> = [&first, &second, &third]
        .iter()
        .map(|d| Envelope::sign(Signed::Keys, d.encode().unwrap(), &[&key(1)]))
        .collect();
    let t3 = t.advance_all(&chain).unwrap();
    assert_eq!(t3.serial, 3);
    t3.check_expiry(expires + 300, 0).unwrap();
    accept_channel(&e, "stable", &t3, Seen { serial: 0, floor: 0 }, expires + 20, &running).unwrap();
}

/// A chain that starts in version 1 moves to version 2 with a document signed by the
/// version 1 roots and its own; the device then holds its thresholds, configuration keys
/// and expiry.
#[test]
fn a_version_1_chain_moves_to_version_2() {
    let v1 = sample_keys();
    let e1 = Envelope::sign(Signed::Keys, v1.encode().unwrap(), &[&key(1)]);
    let t1 = Trust::from_roots(&[key(1).public()]).advance(&e1).unwrap();
    assert_eq!((t1.expires, t1.thresholds, t1.config_keys.len()), (None, Thresholds::default(), 0));
    let v2 = KeyDoc { serial: 2, previous: Some(e1.id()), ..sample_keys_v2() };
    // Only the new roots: the version 1 root did not sign.
    let e2 = Envelope::sign(Signed::Keys, v2.encode().unwrap(), &[&key(4), &key(5)]);
    assert!(matches!(t1.advance(&e2), Err(TrustError::KeysNotSignedByOldRoot { serial: 1, .. })));
    // The old root alone, which is also one of the new roots: the new threshold of 2 is not
    // met.
    let e2 = Envelope::sign(Signed::Keys, v2.encode().unwrap(), &[&key(1)]);
    assert!(matches!(t1.advance(&e2), Err(TrustError::KeysNotSignedByNewRoot { signed: 1, threshold: 2, .. })));
    let e2 = Envelope::sign(Signed::Keys, v2.encode().unwrap(), &[&key(1), &key(4), &key(5)]);
    let t2 = Trust::from_roots(&[key(1).public()]).advance_all(&[e1, e2]).unwrap();
    assert_eq!(t2.serial, 2);
    assert_eq!(t2.config_keys, keys_of(&[8]));
    assert_eq!(t2.thresholds, sample_keys_v2().thresholds);
    assert_eq!(t2.expires, v2.expires);
}

proptest! {
    #[test]
    fn key_documents_round_trip(
        serial in 1u64..u64::MAX,
        timestamp in -(1i64 << 40)..(1i64 << 40),
        lifetime in proptest::option::of(1i64..(1i64 << 40)),
        seeds in proptest::collection::btree_set(1u8..40, 5..12),
        cut in (1usize..3, 0usize..2, 1usize..2, 0usize..2),
        threshold_picks in (0u16..8, 0u16..8, 0u16..8, 0u16..8),
    ) {
        let all: Vec<[u8; 32]> = keys_of(&seeds.into_iter().collect::<Vec<_>>());
        let (a, b, c, d) = cut;
        let (roots, rest) = all.split_at(a);
        let (commit_keys, rest) = rest.split_at(b);
        let (channel_keys, rest) = rest.split_at(c);
        let config_keys = &rest[..d];
        let pick = |p: u16, keys: &[[u8; 32]]| 1 + p % keys.len().max(1) as u16;
        let (tr, tc, th, tg) = threshold_picks;
        let (thresholds, config_keys) = match lifetime {
            Some(_) => (
                Thresholds {
                    root: pick(tr, roots),
                    commit: pick(tc, commit_keys),
                    channel: pick(th, channel_keys),
                    config: pick(tg, config_keys),
                },
                config_keys.to_vec(),
            ),
            None => (Thresholds::default(), Vec::new()),
        };
        let doc = KeyDoc {
            serial,
            timestamp,
            expires: lifetime.map(|l| timestamp + l),
            previous: (serial > 1).then(|| Id::of(&serial.to_le_bytes())),
            roots: roots.to_vec(),
            commit_keys: commit_keys.to_vec(),
            channel_keys: channel_keys.to_vec(),
            config_keys,
            thresholds,
        };
        let bytes = doc.encode().unwrap();
        prop_assert_eq!(KeyDoc::decode(&bytes).unwrap(), doc);
    }

    #[test]
    fn channel_documents_round_trip(
        serial in any::<u64>(),
        timestamp in -(1i64 << 40)..(1i64 << 40),
        lifetime in 1i64..(1i64 << 40),
        rollback in any::<bool>(),
        revisions in proptest::collection::btree_set("[a-z0-9-]{1,12}", 1..6),
        version in 0u64..1000,
    ) {
        let doc = ChannelDoc {
            name: "dev/board".into(),
            serial, timestamp, expires: timestamp + lifetime, rollback,
            previous: None,
            targets: revisions.into_iter().map(|h| Target {
                commit: Id::of(h.as_bytes()), hardware: h, version: version.to_string().parse().unwrap(),
            }).collect(),
        };
        let bytes = doc.encode().unwrap();
        prop_assert_eq!(ChannelDoc::decode(&bytes).unwrap(), doc);
    }
}

#[test]
fn a_plausible_clock_believes_signed_times_to_within_a_day() {
    let (clock, plausible_from) = (1_800_000_000, 1_790_000_000);
    // Behind or close: taken whole.
    assert_eq!(believable_time(clock - 50, clock, plausible_from), clock - 50);
    assert_eq!(believable_time(clock + MAX_AHEAD, clock, plausible_from), clock + MAX_AHEAD);
    // Far ahead (2100, a time in milliseconds): a day past the clock at most, so a second
    // document cannot ratchet further than the clock itself moves.
    assert_eq!(believable_time(4_102_444_800, clock, plausible_from), clock + MAX_AHEAD);
    assert_eq!(believable_time(1_800_000_000_000, clock, plausible_from), clock + MAX_AHEAD);
    // A clock known to be behind (below what the root signed) cannot judge: taken whole.
    assert_eq!(believable_time(4_102_444_800, 0, plausible_from), 4_102_444_800);
}

/// The fuzzer's seed of a version 2 key document (`fuzz/seeds/signed_documents/`) is what
/// the encoder writes today; `FERRY_WRITE_SEEDS=1` rewrites it.
#[test]
fn the_version_2_fuzz_seed_is_current() {
    let path = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"))
        .join("../fuzz/seeds/signed_documents/key-document-v2");
    let envelope = Envelope::sign(Signed::Keys, sample_keys_v2().encode().unwrap(), &[&key(1), &key(4)]);
    let bytes = envelope.encode();
    if std::env::var_os("FERRY_WRITE_SEEDS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "run with FERRY_WRITE_SEEDS=1 to rewrite {}", path.display());
    // The seed's document alone is a seed too: the target decodes it as a key document.
    assert_eq!(KeyDoc::decode(&Envelope::decode(&bytes).unwrap().document).unwrap(), sample_keys_v2());
}
