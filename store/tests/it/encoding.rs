//! The canonical encoding: round trips, golden ids, and strict decoding of bad input.

use ferry_store::object::{DecodeError, Version};
use ferry_store::{ChunkRef, Commit, Entry, EntryKind, Id, Meta, Tree, Xattr};
use proptest::prelude::*;

use crate::{sample_commit, sample_tree};

/// Decoding `bytes` must fail with an error matching `expected`.
fn check_tree_error(bytes: &[u8], expected: impl Fn(&DecodeError) -> bool) {
    match Tree::decode(bytes) {
        Ok(t) => panic!("decoded a bad tree: {t:?}"),
        Err(e) => assert!(expected(&e), "unexpected error: {e}"),
    }
}

#[test]
fn golden_ids_are_pinned() {
    // If these change, every stored object changes id: that needs a new format version.
    let tree = sample_tree();
    let tree_id = tree.id().unwrap();
    assert_eq!(tree_id.to_hex(), GOLDEN_TREE);
    let commit = sample_commit(tree_id);
    assert_eq!(commit.id().unwrap().to_hex(), GOLDEN_COMMIT);
}

const GOLDEN_TREE: &str = "7ff1697008b5b4f3ea5ce32f52ae6023fd8d0abd8e687caa5dd485b817f41493";
const GOLDEN_COMMIT: &str = "a63086d072bc7ff22518abd712a412def155e0414b9ae8508397aa87f65d4236";

#[test]
fn round_trip_sample_objects() {
    let tree = sample_tree();
    let bytes = tree.encode().unwrap();
    assert_eq!(Tree::decode(&bytes).unwrap(), tree);
    let commit = sample_commit(Id::of(&bytes));
    let cbytes = commit.encode().unwrap();
    assert_eq!(Commit::decode(&cbytes).unwrap(), commit);
    // Same content, same id: the encoding does not depend on anything else.
    assert_eq!(commit.id().unwrap(), sample_commit(Id::of(&bytes)).id().unwrap());
}

/// Re-encodes a tree whose entry names were replaced, bypassing `validate`, to build bad input.
fn raw_tree_with_names(names: &[&[u8]]) -> Vec<u8> {
    let mut out = b"FRYT".to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0o755u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in names {
        out.extend_from_slice(&(n.len() as u16).to_le_bytes());
        out.extend_from_slice(n);
        out.push(2);
        out.extend_from_slice(Id::of(n).as_bytes());
    }
    out
}

#[test]
fn raw_builder_matches_the_encoder() {
    let bytes = raw_tree_with_names(&[b"a", b"b"]);
    let t = Tree::decode(&bytes).unwrap();
    assert_eq!(t.encode().unwrap(), bytes);
}

#[test]
fn unsorted_and_duplicate_names_are_refused() {
    check_tree_error(&raw_tree_with_names(&[b"b", b"a"]), |e| matches!(e, DecodeError::Unsorted { .. }));
    check_tree_error(&raw_tree_with_names(&[b"a", b"a"]), |e| matches!(e, DecodeError::Unsorted { .. }));
}

#[test]
fn bad_names_are_refused() {
    for name in [&b".."[..], b".", b"", b"a/b", b"a\0b", &[b'x'; 256][..]] {
        let bytes = raw_tree_with_names(&[name]);
        check_tree_error(&bytes, |e| matches!(e, DecodeError::BadName { .. } | DecodeError::TooLong { .. }));
    }
}

#[test]
fn truncation_and_trailing_bytes_are_refused() {
    let bytes = sample_tree().encode().unwrap();
    for cut in [0, 3, 5, 6, 20, bytes.len() - 1] {
        check_tree_error(&bytes[..cut], |e| matches!(e, DecodeError::Truncated { .. } | DecodeError::BadMagic { .. }));
    }
    let mut longer = bytes.clone();
    longer.push(0);
    check_tree_error(&longer, |e| matches!(e, DecodeError::TrailingBytes { extra: 1 }));
    let commit = sample_commit(Id::of(b"x")).encode().unwrap();
    assert!(matches!(Commit::decode(&commit[..commit.len() - 1]), Err(DecodeError::Truncated { .. })));
}

#[test]
fn wrong_magic_version_and_kind_are_refused() {
    let mut bytes = sample_tree().encode().unwrap();
    bytes[4] = 2;
    check_tree_error(&bytes, |e| matches!(e, DecodeError::UnsupportedVersion { found: 2 }));
    let commit = sample_commit(Id::of(b"x")).encode().unwrap();
    check_tree_error(&commit, |e| matches!(e, DecodeError::BadMagic { .. }));
}

#[test]
fn file_size_must_match_chunks() {
    let mut t = sample_tree();
    if let EntryKind::File { size, .. } = &mut t.entries[1].kind {
        *size = 6;
    }
    assert!(matches!(t.encode(), Err(DecodeError::SizeMismatch { size: 6, sum: 5 })));
}

#[test]
fn versions_are_canonical_and_ordered() {
    for good in ["0", "42", "1.2.3", "1.4.0-rc.1", "2.0.0+build.5"] {
        assert_eq!(good.parse::<Version>().unwrap().to_string(), good);
    }
    for bad in ["", "042", "v1.2.3", "1.2", "1.2.3.4", " 1"] {
        assert!(bad.parse::<Version>().is_err(), "{bad:?} accepted");
    }
    let v = |s: &str| s.parse::<Version>().unwrap();
    assert_eq!(v("9").compare(&v("10")), Some(std::cmp::Ordering::Less));
    assert_eq!(v("1.10.0").compare(&v("1.9.0")), Some(std::cmp::Ordering::Greater));
    assert_eq!(v("1.0.0-rc.1").compare(&v("1.0.0")), Some(std::cmp::Ordering::Less));
    assert_eq!(v("1").compare(&v("1.0.0")), None);
}

fn arb_meta() -> impl Strategy<Value = Meta> {
    (
        0u32..0o7777,
        any::<u32>(),
        any::<u32>(),
        proptest::collection::btree_map("user\\.[a-z]{1,8}", proptest::collection::vec(any::<u8>(), 0..16), 0..3),
    )
        .prop_map(|(mode, uid, gid, x)| Meta {
            mode,
            uid,
            gid,
            xattrs: x.into_iter().map(|(k, v)| Xattr { name: k.into_bytes(), value: v }).collect(),
        })
}

fn arb_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        (arb_meta(), proptest::collection::vec((any::<[u8; 32]>(), 1u32..100_000), 0..5)).prop_map(|(meta, c)| {
            let chunks: Vec<ChunkRef> = c.into_iter().map(|(id, len)| ChunkRef { id: Id(id), len }).collect();
            let size = chunks.iter().map(|c| u64::from(c.len)).sum();
            EntryKind::File { meta, size, chunks }
        }),
        any::<[u8; 32]>().prop_map(|t| EntryKind::Dir { tree: Id(t) }),
        (any::<u32>(), any::<u32>(), "[a-z/._]{1,40}").prop_map(|(uid, gid, t)| EntryKind::Symlink {
            uid,
            gid,
            xattrs: vec![],
            target: t.into_bytes()
        }),
    ]
}

fn arb_tree() -> impl Strategy<Value = Tree> {
    (arb_meta(), proptest::collection::btree_map(proptest::collection::vec(1u8..=255, 1..20), arb_kind(), 0..12))
        .prop_map(|(meta, entries)| Tree {
            meta,
            entries: entries
                .into_iter()
                .filter(|(n, _)| ferry_store::object::check_name(n).is_ok())
                .map(|(name, kind)| Entry { name, kind })
                .collect(),
        })
}

proptest! {
    #[test]
    fn tree_encode_decode_is_identity(tree in arb_tree()) {
        let bytes = tree.encode().unwrap();
        prop_assert_eq!(Tree::decode(&bytes).unwrap(), tree);
    }

    /// Strictness: whatever decodes re-encodes to exactly the same bytes, so one value has
    /// one encoding and one id. Mutated valid encodings exercise the decoder's error paths.
    #[test]
    fn decode_never_panics_and_is_canonical(tree in arb_tree(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut bytes = tree.encode().unwrap();
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] ^= v;
        }
        if let Ok(t) = Tree::decode(&bytes) {
            prop_assert_eq!(t.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn commit_decode_never_panics_and_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..300), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4)) {
        let _ = Commit::decode(&bytes);
        let mut good = sample_commit(Id::of(&bytes)).encode().unwrap();
        for (at, v) in flips {
            let n = good.len();
            good[at % n] ^= v;
        }
        if let Ok(c) = Commit::decode(&good) {
            prop_assert_eq!(c.encode().unwrap(), good);
        }
    }
}

/// The seeds in `fuzz/seeds` were written by an independent encoder (Python, following the
/// format in ARCHITECTURE.md): they must decode, and re-encode to the same bytes.
#[test]
fn the_documented_format_decodes() {
    // The runner's CARGO_MANIFEST_DIR: the shared build cache may hold a binary built elsewhere.
    let seeds = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"))
        .join("../fuzz/seeds");
    let tree = std::fs::read(seeds.join("tree_decode/sample")).unwrap();
    let t = Tree::decode(&tree).unwrap();
    assert_eq!(t.entries.len(), 3);
    assert_eq!(t.encode().unwrap(), tree);
    let commit = std::fs::read(seeds.join("commit_decode/sample")).unwrap();
    let c = Commit::decode(&commit).unwrap();
    assert_eq!((c.version.to_string(), c.hardware.len()), ("1.2.3".to_string(), 2));
    assert_eq!(c.encode().unwrap(), commit);
    for (dir, name) in [("tree_decode", "empty"), ("commit_decode", "minimal")] {
        let bytes = std::fs::read(seeds.join(dir).join(name)).unwrap();
        let ok = if dir == "tree_decode" { Tree::decode(&bytes).is_ok() } else { Commit::decode(&bytes).is_ok() };
        assert!(ok, "{dir}/{name} does not decode");
    }
}
