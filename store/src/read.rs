//! Reading trees by id, wherever they are held: the one thing planning needs from a store.
//!
//! [`ReadTrees`] is what `ferry diff` on the server and `ferryd` on the device plan over
//! (`ferry_delta::plan`, `ferry_delta::patch::walk_files`, the device's deployment plan), so
//! the planning code depends on this trait and not on RocksDB: the repository implements it,
//! so do the device's store and a bundle's held trees (in the client), and [`MemTrees`], an
//! in-memory map for tests; [`walk`] is the one walk of a tree's directories, files and
//! symlinks they plan with. Not here: writing objects, chunks, or how a store keeps them.

use std::collections::HashMap;

use crate::error::StoreError;
use crate::id::Id;
use crate::object::{ChunkRef, EntryKind, Meta, Tree, Xattr, MAX_DEPTH};

/// Reads a tree by id, verified: the tree returned is the one whose canonical bytes hash to
/// `id`. Object safe (`dyn ReadTrees<Error = E>`).
pub trait ReadTrees {
    /// The implementation's error. Planning code asks for `From<StoreError>` so it can add
    /// its own (`StoreError::TooDeep`).
    type Error;

    /// The tree `id` names; an error if it is missing, damaged or not a tree.
    fn tree(&self, id: &Id) -> Result<Tree, Self::Error>;
}

impl<T: ReadTrees + ?Sized> ReadTrees for &T {
    type Error = T::Error;

    fn tree(&self, id: &Id) -> Result<Tree, Self::Error> {
        (**self).tree(id)
    }
}

#[cfg(feature = "rocksdb")]
impl ReadTrees for crate::repo::Repository {
    type Error = StoreError;

    fn tree(&self, id: &Id) -> Result<Tree, StoreError> {
        self.read_tree(id)
    }
}

/// What [`walk`] meets, with its path: a directory (its tree's metadata), a regular file or a
/// symlink (the entry's own fields, moved out of the tree).
#[derive(Debug)]
pub enum Walked {
    Dir { meta: Meta },
    File { meta: Meta, size: u64, chunks: Vec<ChunkRef> },
    Symlink { uid: u32, gid: u32, xattrs: Vec<Xattr>, target: Vec<u8> },
}

/// Walks the tree under `root` depth first, each directory's entries in the order its tree
/// stores them (by name): `visit` gets every directory (the root first, with an empty path)
/// before its entries, and every file and symlink, each with its `/`-separated path from the
/// root. The one tree walk of planning: the device's deployment and the files both sides of
/// a patch plan list (`ferry_delta::patch::walk_files`) come from it, in the same order.
///
/// Each tree is read once, when the walk enters it, and its entries are moved to `visit`:
/// at most one tree per level of nesting is held, and an explicit stack bounds nothing by
/// the call stack. A directory deeper than [`MAX_DEPTH`] is `StoreError::TooDeep`, before
/// its tree is read.
pub fn walk<T: ReadTrees + ?Sized>(
    trees: &T,
    root: &Id,
    mut visit: impl FnMut(&[u8], Walked) -> Result<(), T::Error>,
) -> Result<(), T::Error>
where
    T::Error: From<StoreError>,
{
    let tree = trees.tree(root)?;
    visit(b"", Walked::Dir { meta: tree.meta })?;
    let mut path: Vec<u8> = Vec::new();
    // (the directory's entries still to visit, the length of its path)
    let mut stack = vec![(tree.entries.into_iter(), 0usize)];
    while let Some((entries, dir_len)) = stack.last_mut() {
        let dir_len = *dir_len;
        let Some(entry) = entries.next() else {
            stack.pop();
            continue;
        };
        path.truncate(dir_len);
        if dir_len > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(&entry.name);
        match entry.kind {
            EntryKind::Dir { tree } => {
                // The stack holds the directory's parents: its depth is their number.
                if stack.len() > MAX_DEPTH {
                    return Err(StoreError::TooDeep { tree }.into());
                }
                let sub = trees.tree(&tree)?;
                visit(&path, Walked::Dir { meta: sub.meta })?;
                stack.push((sub.entries.into_iter(), path.len()));
            }
            EntryKind::File { meta, size, chunks } => visit(&path, Walked::File { meta, size, chunks })?,
            EntryKind::Symlink { uid, gid, xattrs, target } => {
                visit(&path, Walked::Symlink { uid, gid, xattrs, target })?
            }
        }
    }
    Ok(())
}

/// Trees held in memory as their canonical bytes, keyed by the id they hash to: a store for
/// tests of planning code, with no RocksDB.
#[derive(Debug, Clone, Default)]
pub struct MemTrees {
    trees: HashMap<Id, Vec<u8>>,
}

impl MemTrees {
    pub fn new() -> MemTrees {
        MemTrees::default()
    }

    /// Stores `tree` and returns its id.
    pub fn insert(&mut self, tree: &Tree) -> Result<Id, StoreError> {
        let bytes = tree.encode()?;
        let id = Id::of(&bytes);
        self.trees.insert(id, bytes);
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.trees.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trees.is_empty()
    }
}

impl ReadTrees for MemTrees {
    type Error = StoreError;

    fn tree(&self, id: &Id) -> Result<Tree, StoreError> {
        let bytes = self.trees.get(id).ok_or(StoreError::ObjectMissing { id: *id })?;
        Tree::decode(bytes).map_err(|source| StoreError::Decode { id: *id, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Entry;

    fn dir(entries: Vec<Entry>) -> Tree {
        Tree { meta: Meta { mode: 0o755, uid: 0, gid: 0, xattrs: Vec::new() }, entries }
    }

    #[test]
    fn memory_trees_read_back_what_was_stored_by_id() {
        let mut trees = MemTrees::new();
        let leaf = dir(Vec::new());
        let leaf_id = trees.insert(&leaf).unwrap();
        let root = dir(vec![Entry { name: b"etc".to_vec(), kind: EntryKind::Dir { tree: leaf_id } }]);
        let root_id = trees.insert(&root).unwrap();
        assert_eq!(leaf_id, Id::of(&leaf.encode().unwrap()));
        assert_eq!(trees.len(), 2);
        // Through the trait object too.
        let read: &dyn ReadTrees<Error = StoreError> = &trees;
        assert_eq!(read.tree(&root_id).unwrap(), root);
        assert_eq!(read.tree(&leaf_id).unwrap(), leaf);
        let absent = Id::of(b"absent");
        assert!(matches!(read.tree(&absent), Err(StoreError::ObjectMissing { id }) if id == absent));
    }

    #[test]
    fn walks_visit_directories_before_their_entries_in_name_order() {
        let mut trees = MemTrees::new();
        let file = |name: &str| Entry {
            name: name.into(),
            kind: EntryKind::File { meta: Meta::default(), size: 0, chunks: Vec::new() },
        };
        let sub = trees.insert(&dir(vec![file("x")])).unwrap();
        let link = Entry {
            name: b"c".to_vec(),
            kind: EntryKind::Symlink { uid: 0, gid: 0, xattrs: Vec::new(), target: b"a".to_vec() },
        };
        let root = dir(vec![file("a"), Entry { name: b"b".to_vec(), kind: EntryKind::Dir { tree: sub } }, link]);
        let root = trees.insert(&root).unwrap();
        let mut seen = Vec::new();
        walk(&trees, &root, |path, w| {
            let kind = match w {
                Walked::Dir { .. } => "dir",
                Walked::File { .. } => "file",
                Walked::Symlink { .. } => "symlink",
            };
            seen.push((String::from_utf8_lossy(path).into_owned(), kind));
            Ok(())
        })
        .unwrap();
        let want = [("", "dir"), ("a", "file"), ("b", "dir"), ("b/x", "file"), ("c", "symlink")];
        assert_eq!(seen, want.map(|(p, k)| (p.to_string(), k)));
    }

    #[test]
    fn walks_refuse_trees_nested_too_deep() {
        let mut trees = MemTrees::new();
        let mut id = trees.insert(&dir(Vec::new())).unwrap();
        for _ in 0..=MAX_DEPTH {
            id = trees.insert(&dir(vec![Entry { name: b"d".to_vec(), kind: EntryKind::Dir { tree: id } }])).unwrap();
        }
        let err = walk(&trees, &id, |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, StoreError::TooDeep { .. }), "{err}");
    }
}
