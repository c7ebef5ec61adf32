//! Planning over trees held in memory (`ferry_store::read::MemTrees`): the changed paths,
//! the file walk both sides of a patch plan follow, and the patch plan itself, with no
//! RocksDB; and only the subtrees that changed are read.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};

use ferry_delta::patch::{plan_patches, walk_files};
use ferry_delta::plan::collect_chunks;
use ferry_delta::{diff_commits, Change, ChangeKind};
use ferry_store::read::MemTrees;
use ferry_store::{ChunkRef, Commit, Entry, EntryKind, Id, Meta, ReadTrees, StoreError, Tree, Version};

fn meta(mode: u32) -> Meta {
    Meta { mode, uid: 0, gid: 0, xattrs: Vec::new() }
}

fn chunk(n: u8) -> ChunkRef {
    ChunkRef { id: Id::of(&[n]), len: 100 }
}

fn file(name: &str, chunks: &[u8]) -> Entry {
    let chunks: Vec<ChunkRef> = chunks.iter().map(|n| chunk(*n)).collect();
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    Entry { name: name.into(), kind: EntryKind::File { meta: meta(0o644), size, chunks } }
}

fn dir(trees: &mut MemTrees, name: &str, entries: Vec<Entry>) -> Entry {
    let tree = trees.insert(&Tree { meta: meta(0o755), entries }).unwrap();
    Entry { name: name.into(), kind: EntryKind::Dir { tree } }
}

fn commit(trees: &mut MemTrees, entries: Vec<Entry>) -> Commit {
    let root = trees.insert(&Tree { meta: meta(0o755), entries }).unwrap();
    Commit {
        root,
        parent: None,
        version: Version::Number(1),
        timestamp: None,
        subject: String::new(),
        body: String::new(),
        metadata: BTreeMap::new(),
        hardware: Vec::new(),
    }
}

/// Counts the trees read through it.
struct Counting<'a> {
    inner: &'a MemTrees,
    reads: Cell<usize>,
}

impl ReadTrees for Counting<'_> {
    type Error = StoreError;

    fn tree(&self, id: &Id) -> Result<Tree, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.tree(id)
    }
}

/// Two releases: `share` is the same subtree in both, `lib` changes, `etc` goes.
fn releases() -> (MemTrees, Commit, Commit) {
    let mut t = MemTrees::new();
    let share1 = dir(&mut t, "share", vec![file("readme", &[9])]);
    let lib1 = dir(&mut t, "lib", vec![file("libz.so.1.2", &[4, 5])]);
    let etc = dir(&mut t, "etc", vec![file("conf", &[3])]);
    let v1 = commit(&mut t, vec![file("app", &[1, 2]), etc, lib1, share1]);
    let share2 = dir(&mut t, "share", vec![file("readme", &[9])]);
    let lib2 = dir(&mut t, "lib", vec![file("libz.so.1.3", &[4, 6])]);
    let link = Entry {
        name: "link".into(),
        kind: EntryKind::Symlink { uid: 0, gid: 0, xattrs: Vec::new(), target: b"app".to_vec() },
    };
    let v2 = commit(&mut t, vec![file("app", &[1, 10]), lib2, link, share2]);
    (t, v1, v2)
}

#[test]
fn changed_paths_read_only_what_changed() {
    let (trees, v1, v2) = releases();
    let counting = Counting { inner: &trees, reads: Cell::new(0) };
    let changes = diff_commits(&counting, &v1, &v2).unwrap();
    let c = |path: &str, kind| Change { path: path.into(), kind };
    assert_eq!(
        changes,
        vec![
            c("app", ChangeKind::Changed),
            c("etc", ChangeKind::Removed),
            c("etc/conf", ChangeKind::Removed),
            c("lib/libz.so.1.2", ChangeKind::Removed),
            c("lib/libz.so.1.3", ChangeKind::Added),
            c("link", ChangeKind::Added),
        ]
    );
    // Both roots, both `lib`s and the removed `etc`; never the shared `share`.
    assert_eq!(counting.reads.get(), 5);
}

#[test]
fn patch_plans_follow_the_file_walk() {
    let (trees, v1, v2) = releases();
    let old = walk_files(&trees, &v1.root).unwrap();
    let new = walk_files(&trees, &v2.root).unwrap();
    let paths = |files: &[ferry_delta::patch::FileChunks]| {
        files.iter().map(|f| String::from_utf8_lossy(&f.path).into_owned()).collect::<Vec<_>>()
    };
    assert_eq!(paths(&old), ["app", "etc/conf", "lib/libz.so.1.2", "share/readme"]);
    assert_eq!(paths(&new), ["app", "lib/libz.so.1.3", "share/readme"]);
    let (mut have_trees, mut have) = (HashSet::new(), HashSet::new());
    collect_chunks(&trees, &v1.root, &mut have_trees, &mut have).unwrap();
    let plan = plan_patches(&old, &new, |id| !have.contains(id));
    // Each new chunk is patched against the file it replaces: same path, then same stem.
    assert_eq!(plan.patches.len(), 2);
    assert_eq!(
        (plan.patches[0].reference.clone(), plan.patches[0].target.clone()),
        (vec![chunk(1), chunk(2)], vec![chunk(10)])
    );
    assert_eq!(
        (plan.patches[1].reference.clone(), plan.patches[1].target.clone()),
        (vec![chunk(4), chunk(5)], vec![chunk(6)])
    );
    assert!(plan.plain.is_empty());
}

#[test]
fn a_missing_tree_is_named() {
    let (_, v1, v2) = releases();
    let empty = MemTrees::new();
    assert!(matches!(diff_commits(&empty, &v1, &v2), Err(StoreError::ObjectMissing { id }) if id == v1.root));
    assert!(matches!(walk_files(&empty, &v1.root), Err(StoreError::ObjectMissing { id }) if id == v1.root));
}
