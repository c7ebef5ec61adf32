//! Damaged repositories: fsck and checkout name the broken object, and checkout leaves
//! nothing behind.

use ferry_publisher::checkout::checkout;
use ferry_publisher::fsck::fsck;
use ferry_publisher::import::NoProgress;
use ferry_store::{EntryKind, Id, Repository};

use crate::{commit, init, SMALL};

/// A repository with one commit on main; returns (tempdir, repo path, commit id, a chunk id
/// of `data.bin`, the root tree id).
fn setup() -> (tempfile::TempDir, std::path::PathBuf, Id, Id, Id) {
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let tree = t.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let mut data = vec![0u8; 20_000];
    ferry_fixtures::rng::Rng::new(9).fill(&mut data);
    std::fs::write(tree.join("data.bin"), data).unwrap();
    std::fs::write(tree.join("small.txt"), "hello").unwrap();
    let id: Id = commit(&repo, &tree, "main", "1").unwrap().commit.parse().unwrap();
    let root = repo.read_commit(&id).unwrap().root;
    let chunk = repo
        .read_tree(&root)
        .unwrap()
        .entries
        .iter()
        .find_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } if e.name == b"data.bin" => Some(chunks[1].id),
            _ => None,
        })
        .unwrap();
    let path = repo.path().to_path_buf();
    (t, path, id, chunk, root)
}

#[test]
fn a_clean_repository_passes_fsck() {
    let (_t, path, ..) = setup();
    let repo = Repository::open_read_only(&path).unwrap();
    let report = fsck(&repo, &[crate::key().public()], &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.commits, report.branches), (1, 1));
    assert!(report.chunks > 10);
}

#[test]
fn an_altered_chunk_is_named_by_fsck_and_checkout() {
    let (t, path, id, chunk, _) = setup();
    ferry_fixtures::corrupt::rewrite(&path, "chunks", chunk.as_bytes(), |old| {
        let mut raw = zstd::bulk::decompress(&old, 1 << 20).unwrap();
        raw[10] ^= 0x40;
        zstd::bulk::compress(&raw, 3).unwrap()
    })
    .unwrap();
    let repo = Repository::open_read_only(&path).unwrap();
    let report = fsck(&repo, &[], &NoProgress).unwrap();
    assert!(
        report.problems.iter().any(|p| p.object == format!("chunk {chunk}") && p.message.contains("corrupt")),
        "{:?}",
        report.problems
    );
    let out = t.path().join("out");
    let err = checkout(&repo, &id, &out, &NoProgress).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&chunk.to_hex()) && msg.contains("data.bin"), "{msg}");
    assert!(!out.exists(), "a failed checkout left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(t.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!leftovers.iter().any(|n| n.to_string_lossy().contains("checkout")), "{leftovers:?}");
}

#[test]
fn a_missing_chunk_is_named_with_the_file_needing_it() {
    let (_t, path, _id, chunk, _) = setup();
    ferry_fixtures::corrupt::delete(&path, "chunks", chunk.as_bytes()).unwrap();
    let repo = Repository::open_read_only(&path).unwrap();
    let report = fsck(&repo, &[], &NoProgress).unwrap();
    assert!(
        report.problems.iter().any(|p| p.object == format!("chunk {chunk}") && p.message.contains("data.bin")),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_truncated_tree_is_named() {
    let (t, path, id, _, root) = setup();
    ferry_fixtures::corrupt::rewrite(&path, "objects", root.as_bytes(), |mut v| {
        v.truncate(v.len() / 2);
        v
    })
    .unwrap();
    let repo = Repository::open_read_only(&path).unwrap();
    let report = fsck(&repo, &[], &NoProgress).unwrap();
    let text: Vec<String> = report.problems.iter().map(|p| format!("{}: {}", p.object, p.message)).collect();
    assert!(text.iter().any(|p| p.starts_with(&format!("object {root}")) && p.contains("corrupt")), "{text:?}");
    assert!(
        text.iter().any(|p| p.starts_with(&format!("tree {root}")) && p.contains("missing or unreadable")),
        "{text:?}"
    );
    let err = checkout(&repo, &id, &t.path().join("out"), &NoProgress).unwrap_err();
    assert!(format!("{err:#}").contains(&root.to_hex()), "{err:#}");
}

#[test]
fn broken_and_untrusted_signatures_are_named() {
    let (_t, path, id, ..) = setup();
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(&crate::key().public().to_bytes());
    // Untrusted: signed by key 1, but only key 2 is trusted.
    {
        let repo = Repository::open_read_only(&path).unwrap();
        let report = fsck(&repo, &[ferry_fixtures::test_key(2).public()], &NoProgress).unwrap();
        assert!(
            report.problems.iter().any(|p| p.object == format!("commit {id}") && p.message.contains("trusted")),
            "{:?}",
            report.problems
        );
    }
    ferry_fixtures::corrupt::rewrite(&path, "signatures", &key, |mut s| {
        s[0] ^= 1;
        s
    })
    .unwrap();
    let repo = Repository::open_read_only(&path).unwrap();
    let report = fsck(&repo, &[], &NoProgress).unwrap();
    assert!(
        report.problems.iter().any(|p| p.object == format!("commit {id}") && p.message.contains("does not verify")),
        "{:?}",
        report.problems
    );
}

#[test]
fn trees_nested_deeper_than_any_path_are_refused_not_a_stack_overflow() {
    use ferry_store::{Commit, Entry, Meta, Tree};
    let t = tempfile::tempdir().unwrap();
    let repo = init(t.path(), SMALL);
    let dir_meta = Meta { mode: 0o755, ..Meta::default() };
    let mut id = repo.put_tree(&Tree { meta: dir_meta.clone(), entries: vec![] }).unwrap();
    for _ in 0..(ferry_store::object::MAX_DEPTH + 10) {
        let tree = Tree {
            meta: dir_meta.clone(),
            entries: vec![Entry { name: b"d".to_vec(), kind: EntryKind::Dir { tree: id } }],
        };
        id = repo.put_tree(&tree).unwrap();
    }
    let commit = Commit {
        root: id,
        parent: None,
        version: "1".parse().unwrap(),
        timestamp: None,
        subject: String::new(),
        body: String::new(),
        metadata: Default::default(),
        hardware: vec![],
    };
    let key = crate::key();
    let cid = commit.id().unwrap();
    repo.publish_commit(&commit, &[(key.public(), key.sign_commit(&cid))], "deep", None).unwrap();
    let empty = Commit { root: repo.put_tree(&Tree { meta: dir_meta, entries: vec![] }).unwrap(), ..commit.clone() };
    let err = ferry_delta::diff_commits(&repo, &empty, &commit).unwrap_err();
    assert!(matches!(err, ferry_store::StoreError::TooDeep { .. }), "{err}");
    let err = checkout(&repo, &cid, &t.path().join("out"), &NoProgress).unwrap_err();
    assert!(format!("{err:#}").contains("nested deeper"), "{err:#}");
    let report = fsck(&repo, &[], &NoProgress).unwrap();
    assert!(report.problems.iter().any(|p| p.message.contains("nested deeper")), "{:?}", report.problems);
    // Counting chunks walks without recursion and simply works.
    assert_eq!(ferry_delta::transfer_cost(&repo, None, &commit).unwrap().chunks, 0);
}
