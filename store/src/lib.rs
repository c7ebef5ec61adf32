//! ferry-store: Ferry's object model and repository.
//!
//! What it is for: the objects a release is made of (chunks, trees, commits), their canonical
//! encoding and BLAKE3 ids, ed25519 commit signatures, and the RocksDB repository that holds
//! them with its branches. What it is not for: cutting files into chunks (ferry-delta),
//! reading or writing file system trees (the publisher and the device agent), the network,
//! devices or bootloaders.
//!
//! The `rocksdb` feature (on by default) adds the repository; without it the crate is the
//! object model alone, which is what the fuzz targets build. It never opens a socket and never starts a thread of its own
//! (RocksDB's background threads aside).

pub mod channel;
pub mod chunk;
pub mod config;
pub mod device_config;
pub mod error;
pub mod id;
#[cfg(feature = "rocksdb")]
pub mod kv;
pub mod object;
pub mod read;
#[cfg(feature = "rocksdb")]
pub mod repo;
pub mod sign;
pub mod time;
pub mod wire;

pub use config::{ChunkParams, RepoConfig};
pub use error::{Result, StoreError};
pub use id::Id;
pub use object::{ChunkRef, Commit, DecodeError, Entry, EntryKind, Meta, Tree, Version, Xattr};
pub use read::ReadTrees;
#[cfg(feature = "rocksdb")]
pub use repo::{ChunkInfo, Repository, StoredSignature};
pub use sign::{KeyError, PublicKey, SecretKey, Signed};
