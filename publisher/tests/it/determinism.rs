//! Same tree + same metadata ⇒ same commit id, on any repository; re-commits are no-ops.

use std::time::{Duration, SystemTime};

use crate::{commit, init, SMALL};

fn fixture(dir: &std::path::Path, version: u32) -> std::path::PathBuf {
    let out = dir.join(format!("tree-v{version}"));
    ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 11, size: 1 << 20, version }, &out).unwrap();
    out
}

#[test]
fn one_tree_gives_one_commit_id_in_any_repository() {
    let t = tempfile::tempdir().unwrap();
    let tree = fixture(t.path(), 1);
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let ra = init(a.path(), SMALL);
    let rb = init(b.path(), SMALL);
    let ca = commit(&ra, &tree, "main", "1").unwrap();
    // Touching every file changes mtimes, which are not part of a commit.
    for e in std::fs::read_dir(tree.join("bin")).unwrap() {
        let f = std::fs::File::options().write(true).open(e.unwrap().path()).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(3600)).unwrap();
    }
    let cb = commit(&rb, &tree, "main", "1").unwrap();
    assert_eq!(ca.commit, cb.commit);
    assert_eq!(ca.new_chunks, cb.new_chunks);
    // Other metadata, other id.
    let cc = commit(&rb, &tree, "other", "2").unwrap();
    assert_ne!(cc.commit, ca.commit);
}

#[test]
fn committing_the_same_tree_again_is_a_no_op() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let tree = fixture(t.path(), 1);
    let first = commit(&repo, &tree, "main", "1").unwrap();
    assert!(!first.unchanged && first.new_chunks > 0);
    let again = commit(&repo, &tree, "main", "1").unwrap();
    assert!(again.unchanged, "{again:?}");
    assert_eq!(again.commit, first.commit);
    assert_eq!(again.new_chunks, 0, "no chunk is compressed or written twice");
    assert_eq!(repo.branch("main").unwrap().unwrap().to_hex(), first.commit);
}

#[test]
fn a_new_version_writes_only_new_chunks_and_links_to_its_parent() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), ferry_store::ChunkParams::default());
    let v1 = commit(&repo, &fixture(t.path(), 1), "main", "1").unwrap();
    let v2 = commit(&repo, &fixture(t.path(), 2), "main", "2").unwrap();
    assert!(v2.new_chunks > 0 && v2.new_chunks < v2.chunks / 2, "{v2:?}");
    let head = repo.read_commit(&v2.commit.parse().unwrap()).unwrap();
    assert_eq!(head.parent.unwrap().to_hex(), v1.commit);
}

#[test]
fn recommitting_with_a_new_key_adds_its_signature() {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let tree = fixture(t.path(), 1);
    let first = commit(&repo, &tree, "main", "1").unwrap();
    let new_key = ferry_fixtures::test_key(7);
    let again = ferry_publisher::import::commit_tree(
        &repo,
        &crate::request(&tree, "main", "1", &new_key),
        &ferry_publisher::import::NoProgress,
    )
    .unwrap();
    assert!(again.unchanged);
    assert_eq!(again.commit, first.commit);
    let id = first.commit.parse().unwrap();
    let keys: Vec<[u8; 32]> = repo.signatures(&id).unwrap().iter().map(|s| s.key).collect();
    assert!(
        keys.contains(&new_key.public().to_bytes()) && keys.contains(&crate::key().public().to_bytes()),
        "{keys:?}"
    );
}
