//! Reading trees by id, wherever they are held: the one thing planning needs from a store.
//!
//! [`ReadTrees`] is what `ferry diff` on the server and `ferryd` on the device plan over
//! (`ferry_delta::plan`, `ferry_delta::patch::walk_files`, the device's deployment plan), so
//! the planning code depends on this trait and not on RocksDB: the repository implements it,
//! so do the device's store and a bundle's held trees (in the client), and [`MemTrees`], an
//! in-memory map for tests. Not here: writing objects, chunks, or how a store keeps them.

use std::collections::HashMap;

use crate::error::StoreError;
use crate::id::Id;
use crate::object::Tree;

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
    use crate::object::{Entry, EntryKind, Meta};

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
}
