//! Key and channel documents: golden ids, round trips, strict decoding, signature domains,
//! and the acceptance rules on their own (the agent's tests run them end to end).

use ferry_store::channel::{
    accept_channel, believable_time, ChannelDoc, Envelope, KeyDoc, Running, Seen, Target, Trust, TrustError, MAX_AHEAD,
};
use ferry_store::object::DecodeError;
use ferry_store::{Id, SecretKey, Signed};
use proptest::prelude::*;

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn sample_keys() -> KeyDoc {
    KeyDoc {
        serial: 1,
        timestamp: 1_700_000_000,
        previous: None,
        roots: vec![key(1).public().to_bytes()],
        commit_keys: vec![key(2).public().to_bytes()],
        channel_keys: vec![key(3).public().to_bytes()],
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
    assert_eq!(Id::of(&sample_channel().encode().unwrap()).to_hex(), GOLDEN_CHANNEL);
}

const GOLDEN_KEYS: &str = "bac091203ef483b85a29e748a25e775a3d7e3d559428ec245438de362477166a";
const GOLDEN_CHANNEL: &str = "ba62de487fdb568c19339f963c24913d8704c327f6c5b347c977f5b6e061ef7b";

#[test]
fn documents_round_trip() {
    let k = sample_keys();
    assert_eq!(KeyDoc::decode(&k.encode().unwrap()).unwrap(), k);
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

#[test]
fn signatures_do_not_cross_domains() {
    let doc = sample_channel().encode().unwrap();
    let id = Id::of(&doc);
    let k = key(3);
    // The same key's signature over the same id, made for a commit or a key document, is
    // no channel signature.
    for other in [Signed::Commit, Signed::Keys] {
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

proptest! {
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
