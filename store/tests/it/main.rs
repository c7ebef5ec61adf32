//! ferry-store's integration tests, one module per feature.

mod channel;
mod device_config;
mod encoding;
mod repo;
mod signatures;

/// A small valid tree used across modules.
pub fn sample_tree() -> ferry_store::Tree {
    use ferry_store::{ChunkRef, Entry, EntryKind, Id, Meta, Tree, Xattr};
    Tree {
        meta: Meta { mode: 0o755, uid: 0, gid: 0, xattrs: vec![] },
        entries: vec![
            Entry { name: b"bin".to_vec(), kind: EntryKind::Dir { tree: Id::of(b"subtree") } },
            Entry {
                name: b"hello.txt".to_vec(),
                kind: EntryKind::File {
                    meta: Meta {
                        mode: 0o644,
                        uid: 1000,
                        gid: 1000,
                        xattrs: vec![Xattr { name: b"user.tag".to_vec(), value: b"x".to_vec() }],
                    },
                    size: 5,
                    chunks: vec![ChunkRef { id: Id::of(b"hello"), len: 5 }],
                },
            },
            Entry {
                name: b"link".to_vec(),
                kind: EntryKind::Symlink { uid: 0, gid: 0, xattrs: vec![], target: b"hello.txt".to_vec() },
            },
        ],
    }
}

pub fn sample_commit(root: ferry_store::Id) -> ferry_store::Commit {
    ferry_store::Commit {
        root,
        parent: None,
        version: "1.2.3".parse().unwrap(),
        timestamp: Some(1_700_000_000),
        subject: "release 1.2.3".into(),
        body: "body text".into(),
        metadata: [("git".to_string(), "3f2a9c1".to_string())].into_iter().collect(),
        hardware: vec!["rev-a".into(), "rev-b".into()],
    }
}
