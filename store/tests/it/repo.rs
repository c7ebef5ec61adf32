//! The RocksDB repository: creation, format checks, chunks, publishing, refs, revisions.

use std::collections::HashMap;
use std::path::Path;

use ferry_store::{ChunkParams, Commit, Id, RepoConfig, Repository, SecretKey, StoreError, Tree};

use crate::{sample_commit, sample_tree};

fn new_repo(dir: &Path) -> Repository {
    Repository::init(&dir.join("repo"), &RepoConfig::new(ChunkParams::default(), 3)).unwrap()
}

fn put_chunk(repo: &Repository, bytes: &[u8]) -> Id {
    let id = Id::of(bytes);
    repo.put_chunk(&id, bytes.len() as u32, &repo.compress_chunk(bytes).unwrap()).unwrap();
    id
}

/// Stores an empty root tree and returns a commit on it (not yet published).
fn commit_on(repo: &Repository, subject: &str, parent: Option<Id>) -> Commit {
    let root = repo.put_tree(&Tree::default()).unwrap();
    Commit { parent, subject: subject.into(), ..sample_commit(root) }
}

fn publish(repo: &Repository, c: &Commit, branch: &str, expected: Option<Id>) -> Result<Id, StoreError> {
    let key = SecretKey::from_seed(&[3; 32]);
    let id = c.id().unwrap();
    repo.publish_commit(c, &[(key.public(), key.sign_commit(&id))], branch, expected)
}

#[test]
fn init_refuses_non_empty_directories_and_open_refuses_non_repositories() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("stuff");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), "precious").unwrap();
    let err = Repository::init(&dir, &RepoConfig::new(ChunkParams::default(), 3)).unwrap_err();
    assert!(matches!(err, StoreError::NotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "init changed a non-empty directory");
    assert!(matches!(Repository::open(&dir), Err(StoreError::NotARepository { .. })));
    let bad = RepoConfig::new(ChunkParams { min_size: 10, avg_size: 20, max_size: 30 }, 3);
    assert!(matches!(Repository::init(&t.path().join("x"), &bad), Err(StoreError::BadConfig { .. })));
    assert!(!t.path().join("x").exists());
}

#[test]
fn init_where_a_repository_is_changes_nothing_and_says_why() {
    let t = tempfile::tempdir().unwrap();
    let path = new_repo(t.path()).path().to_path_buf();
    let config = std::fs::read(path.join("ferry-repo.json")).unwrap();
    let again = |params, level| Repository::init(&path, &RepoConfig::new(params, level)).map(drop).unwrap_err();
    let err = again(ChunkParams::default(), 3);
    assert!(matches!(&err, StoreError::AlreadyARepository { path: p } if *p == path), "{err}");
    let other = ChunkParams { avg_size: ChunkParams::default().avg_size * 2, ..ChunkParams::default() };
    let err = again(other, 3);
    assert!(
        matches!(&err, StoreError::ChunkParamsMismatch { existing, requested, .. }
            if *existing == ChunkParams::default().to_string() && *requested == other.to_string()),
        "{err}"
    );
    // Chunking is compared first.
    assert!(matches!(again(other, 5), StoreError::ChunkParamsMismatch { .. }));
    let err = again(ChunkParams::default(), 5);
    assert!(matches!(err, StoreError::CompressionMismatch { existing: 3, requested: 5, .. }), "{err}");
    assert_eq!(std::fs::read(path.join("ferry-repo.json")).unwrap(), config);
    Repository::open(&path).unwrap();
}

#[test]
fn unknown_formats_and_features_are_refused_before_opening() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let path = repo.path().to_path_buf();
    drop(repo);
    let config_file = path.join("ferry-repo.json");
    let original = std::fs::read_to_string(&config_file).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        f(&mut v);
        std::fs::write(&config_file, serde_json::to_string(&v).unwrap()).unwrap();
    };
    edit(&|v| v["format"] = 2.into());
    assert!(matches!(Repository::open(&path), Err(StoreError::UnsupportedFormat { found: 2, .. })));
    edit(&|v| v["features"]["incompatible"] = serde_json::json!(["zoned-chunks"]));
    let err = Repository::open_read_only(&path).unwrap_err();
    assert!(matches!(&err, StoreError::UnknownFeatures { features, .. } if features == &["zoned-chunks"]), "{err}");
    edit(&|v| v["features"]["read_only_compatible"] = serde_json::json!(["fancy-index"]));
    assert!(Repository::open_read_only(&path).is_ok(), "read-only-compatible features allow reading");
    assert!(matches!(Repository::open(&path), Err(StoreError::UnknownFeatures { .. })));
    edit(&|v| v["chunking"]["max_size"] = 7.into());
    assert!(matches!(Repository::open(&path), Err(StoreError::BadConfig { .. })));
    std::fs::write(&config_file, &original).unwrap();
    let repo = Repository::open(&path).unwrap();
    let other = ChunkParams { min_size: 4096, avg_size: 16384, max_size: 65536 };
    let err = repo.expect_chunk_params(&other).unwrap_err();
    assert!(matches!(err, StoreError::ChunkParamsMismatch { .. }) && err.to_string().contains("16384"), "{err}");
}

#[test]
fn chunks_are_verified_on_read() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let id = put_chunk(&repo, b"hello chunk");
    assert_eq!(repo.read_chunk(&id).unwrap(), b"hello chunk");
    assert_eq!(repo.chunk_info(&id).unwrap().unwrap().len, 11);
    let missing = Id::of(b"nope");
    assert!(matches!(repo.read_chunk(&missing), Err(StoreError::ChunkMissing { id }) if id == missing));
    let path = repo.path().to_path_buf();
    drop(repo);
    // Same length, other bytes, under the same id: what a flipped bit on disk looks like.
    let other = zstd::bulk::compress(b"hello chunK", 3).unwrap();
    ferry_fixtures::corrupt::rewrite(&path, "chunks", id.as_bytes(), |_| other).unwrap();
    let repo = Repository::open(&path).unwrap();
    let err = repo.read_chunk(&id).unwrap_err();
    assert!(matches!(err, StoreError::ChunkCorrupt { id: bad, .. } if bad == id), "{err}");
    assert!(err.to_string().contains(&id.to_hex()));
}

#[test]
fn truncated_objects_are_named() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let id = repo.put_tree(&sample_tree()).unwrap();
    let path = repo.path().to_path_buf();
    drop(repo);
    ferry_fixtures::corrupt::rewrite(&path, "objects", id.as_bytes(), |mut v| {
        v.truncate(v.len() - 3);
        v
    })
    .unwrap();
    let repo = Repository::open(&path).unwrap();
    let err = repo.read_tree(&id).unwrap_err();
    assert!(matches!(err, StoreError::ObjectCorrupt { id: bad, .. } if bad == id), "{err}");
}

#[test]
fn publishing_is_a_compare_and_swap() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let first = publish(&repo, &commit_on(&repo, "one", None), "main", None).unwrap();
    assert_eq!(repo.branch("main").unwrap(), Some(first));
    // Two writers both built on `first`; exactly one may move the branch.
    let a = commit_on(&repo, "a", Some(first));
    let b = commit_on(&repo, "b", Some(first));
    let results: Vec<Result<Id, StoreError>> = std::thread::scope(|s| {
        let ha = s.spawn(|| publish(&repo, &a, "main", Some(first)));
        let hb = s.spawn(|| publish(&repo, &b, "main", Some(first)));
        vec![ha.join().unwrap(), hb.join().unwrap()]
    });
    let won: Vec<&Id> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "exactly one writer wins: {results:?}");
    let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(matches!(lost, StoreError::RefConflict { .. }), "{lost}");
    assert_eq!(repo.branch("main").unwrap(), Some(*won[0]));
    // The loser's commit is not visible anywhere.
    let loser = if *won[0] == a.id().unwrap() { &b } else { &a };
    assert!(!repo.has_object(&loser.id().unwrap()).unwrap());
}

#[test]
fn publishing_checks_its_inputs() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let c = commit_on(&repo, "x", None);
    assert!(matches!(publish(&repo, &c, "../evil", None), Err(StoreError::BadBranchName { .. })));
    let orphan = Commit { root: Id::of(b"no such tree"), ..c.clone() };
    assert!(matches!(publish(&repo, &orphan, "main", None), Err(StoreError::ObjectMissing { .. })));
    let dangling = Commit { parent: Some(Id::of(b"no such parent")), ..c };
    assert!(matches!(publish(&repo, &dangling, "main", None), Err(StoreError::ObjectMissing { .. })));
    assert_eq!(repo.branch("main").unwrap(), None);
    let ro = {
        let path = repo.path().to_path_buf();
        drop(repo);
        Repository::open_read_only(&path).unwrap()
    };
    assert!(matches!(ro.put_tree(&Tree::default()), Err(StoreError::ReadOnly)));
}

#[test]
fn revisions_resolve_by_id_branch_and_unique_prefix() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let id = publish(&repo, &commit_on(&repo, "one", None), "main", None).unwrap();
    assert_eq!(repo.resolve(&id.to_hex()).unwrap(), id);
    assert_eq!(repo.resolve("main").unwrap(), id);
    assert_eq!(repo.resolve(&id.to_hex()[..8]).unwrap(), id);
    assert_eq!(repo.resolve(&id.to_hex()[..9].to_uppercase()).unwrap(), id);
    assert!(matches!(repo.resolve(&id.to_hex()[..7]), Err(StoreError::UnknownRev { .. })), "7 digits are too few");
    assert!(matches!(repo.resolve("nosuchbranch"), Err(StoreError::UnknownRev { .. })));
    // A tree's id prefix is not a revision.
    let root = repo.read_commit(&id).unwrap().root;
    assert!(matches!(repo.resolve(&root.to_hex()[..10]), Err(StoreError::UnknownRev { .. })));
    assert!(matches!(repo.resolve(&root.to_hex()), Err(StoreError::UnknownRev { .. })), "a tree's full id");
}

#[test]
fn revisions_resolve_by_version_and_say_which_rule_failed() {
    use ferry_store::Version;
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    let v = |s: &str| s.parse::<Version>().unwrap();
    let one = publish(&repo, &Commit { version: v("1.1.0"), ..commit_on(&repo, "one", None) }, "main", None).unwrap();
    let two = publish(&repo, &Commit { version: v("1.2.0"), ..commit_on(&repo, "two", Some(one)) }, "main", Some(one))
        .unwrap();
    // Versions on any branch's history, not only heads.
    assert_eq!(repo.resolve("1.1.0").unwrap(), one);
    assert_eq!(repo.resolve("1.2.0").unwrap(), two);
    // The same version for two commits (on another branch): ambiguous, both named.
    let other =
        publish(&repo, &Commit { version: v("1.1.0"), ..commit_on(&repo, "again", None) }, "other", None).unwrap();
    let err = repo.resolve("1.1.0").unwrap_err().to_string();
    assert!(err.contains(&one.short()) && err.contains(&other.short()) && err.contains("name one by its id"), "{err}");
    // Each failure names the rule.
    for (rev, says) in [
        ("1.9.0", "no commit on the branches has version 1.9.0"),
        ("820dbe", "as a commit id prefix it has 6 digits; give at least 8"),
        ("stabel", "no branch has that name"),
        ("v1.1.0", "no branch has that name"),
        ("not a rev", "it is not a commit id, a branch name, a version or a prefix of 8+ hex digits"),
        (&"0".repeat(64), "no object of this repository has that id"),
    ] {
        let err = repo.resolve(rev).unwrap_err().to_string();
        assert!(err.contains(says), "{rev}: {err}");
    }
    // A name both a version and a prefix must name one commit either way.
    let numeric = publish(&repo, &Commit { version: v("12345678"), ..commit_on(&repo, "n", None) }, "n", None).unwrap();
    assert_eq!(repo.resolve("12345678").unwrap(), numeric);
}

#[test]
fn an_ambiguous_prefix_is_an_error_naming_the_candidates() {
    let t = tempfile::tempdir().unwrap();
    let repo = new_repo(t.path());
    // Find two commits whose ids share their first 8 hex digits (a birthday search over
    // 32 bits: about 2^16 candidates), then publish both.
    let base = commit_on(&repo, "", None);
    let mut seen: HashMap<[u8; 4], String> = HashMap::new();
    let (a, b) = (0u64..)
        .find_map(|n| {
            let subject = format!("candidate {n}");
            let id = Commit { subject: subject.clone(), ..base.clone() }.id().unwrap();
            let prefix = [id.0[0], id.0[1], id.0[2], id.0[3]];
            seen.insert(prefix, subject.clone()).map(|other| (other, subject))
        })
        .unwrap();
    let ca = Commit { subject: a, ..base.clone() };
    let cb = Commit { subject: b, ..base };
    let ia = publish(&repo, &ca, "a", None).unwrap();
    let ib = publish(&repo, &cb, "b", None).unwrap();
    let prefix = &ia.to_hex()[..8];
    assert_eq!(prefix, &ib.to_hex()[..8]);
    let err = repo.resolve(prefix).unwrap_err();
    assert!(matches!(&err, StoreError::AmbiguousRev { candidates, .. } if candidates.len() == 2), "{err}");
    assert!(err.to_string().contains(&ia.short()) && err.to_string().contains(&ib.short()));
    // One more digit may tell them apart; the full ids always do.
    assert_eq!(repo.resolve(&ia.to_hex()).unwrap(), ia);
}
