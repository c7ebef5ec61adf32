//! The repository: one RocksDB database plus `ferry-repo.json`.
//!
//! ```text
//! R/ferry-repo.json   format, feature flags, chunking parameters, zstd level (config.rs)
//! R/db/               RocksDB, column families:
//!   chunks            chunk id → zstd frame of the chunk's bytes (BlobDB: values in blob files)
//!   chunk_index       chunk id → u32 LE uncompressed length ‖ u32 LE stored length
//!   objects           object id → canonical encoding of a tree or commit
//!   signatures        commit id ‖ public key (32 B) → ed25519 signature (64 B)
//!   refs              "heads/<branch>" → commit id
//! ```
//!
//! Writes are ordered so that what a ref names is always complete: chunks and trees are
//! written first (not synced one by one), then the commit, its signatures and the ref update go
//! in one synced write batch. RocksDB syncs a write together with every write before it, so a
//! power cut leaves either the whole commit visible or none of it. Ref updates are a
//! compare-and-swap under a lock: RocksDB admits one writing process per database, so a lock
//! inside that process serialises every writer.
//!
//! Nothing here knows about HTTP, devices or the file system trees being committed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::channel::{ChannelDoc, Envelope, KeyDoc};
use crate::chunk::decode_chunk;
use crate::config::{ChunkParams, RepoConfig, KNOWN_FEATURES, REPO_FORMAT};
use crate::error::{Result, StoreError};
use crate::id::{Id, ID_LEN};
use crate::object::{object_kind, Commit, DecodeError, ObjectKind, Tree, Version};
use crate::sign::PublicKey;

const CONFIG_FILE: &str = "ferry-repo.json";
const DB_DIR: &str = "db";
const CF_CHUNKS: &str = "chunks";
const CF_CHUNK_INDEX: &str = "chunk_index";
const CF_OBJECTS: &str = "objects";
const CF_SIGNATURES: &str = "signatures";
const CF_REFS: &str = "refs";
const ALL_CFS: [&str; 5] = [CF_CHUNKS, CF_CHUNK_INDEX, CF_OBJECTS, CF_SIGNATURES, CF_REFS];
/// The fewest hex digits a commit id prefix may have to name a commit.
pub const MIN_PREFIX: usize = 8;
/// The most commits a version lookup reads across all branches.
pub const MAX_VERSION_WALK: usize = 100_000;

/// Sizes of a stored chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Length of the chunk's bytes.
    pub len: u32,
    /// Length of the zstd frame stored for it (what travels on the wire).
    pub stored_len: u32,
}

/// A signature found on a commit: who signed it and the 64 signature bytes.
#[derive(Debug, Clone)]
pub struct StoredSignature {
    pub key: [u8; 32],
    pub signature: [u8; 64],
}

/// An open repository. Cheap to share between threads (`&Repository` is `Sync`).
pub struct Repository {
    path: PathBuf,
    config: RepoConfig,
    db: DB,
    read_only: bool,
    /// Opened as a RocksDB secondary instance that follows a writer in another process.
    follower: bool,
    ref_lock: Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository").field("path", &self.path).field("read_only", &self.read_only).finish()
    }
}

fn db_options(create: bool) -> Options {
    let mut o = Options::default();
    o.create_if_missing(create);
    o.create_missing_column_families(create);
    o.set_compression_type(DBCompressionType::None);
    o.set_max_open_files(512);
    o.increase_parallelism(std::thread::available_parallelism().map_or(2, |n| n.get() as i32));
    o
}

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    ALL_CFS
        .iter()
        .map(|name| {
            let mut o = Options::default();
            // Chunks are zstd frames already; nothing else is worth compressing twice.
            o.set_compression_type(DBCompressionType::None);
            if *name == CF_CHUNKS {
                o.set_enable_blob_files(true);
                o.set_min_blob_size(4096);
                o.set_blob_file_size(256 * 1024 * 1024);
                o.set_blob_compression_type(DBCompressionType::None);
                o.set_enable_blob_gc(true);
                o.set_write_buffer_size(128 * 1024 * 1024);
            }
            ColumnFamilyDescriptor::new(*name, o)
        })
        .collect()
}

fn is_empty_dir(path: &Path) -> std::io::Result<bool> {
    Ok(fs::read_dir(path)?.next().is_none())
}

pub use crate::object::check_branch_name;

const KEYS_REF: &[u8] = b"keys";

fn channel_ref(name: &str) -> Vec<u8> {
    format!("channels/{name}").into_bytes()
}

fn upstream_ref(name: &str) -> Vec<u8> {
    format!("upstream/{name}").into_bytes()
}

fn retired_ref(name: &str) -> Vec<u8> {
    format!("retired/{name}").into_bytes()
}

fn ref_key(branch: &str) -> Vec<u8> {
    format!("heads/{branch}").into_bytes()
}

impl Repository {
    /// Creates a repository at `path`, which must not exist or be an empty directory.
    ///
    /// The repository is built in a temporary sibling and renamed into place, so a crash
    /// during `init` leaves no half-made repository at `path`. Where a repository already
    /// is, nothing changes: `init` fails with [`StoreError::AlreadyARepository`] if it has
    /// `config`'s chunking and compression level, else with [`StoreError::ChunkParamsMismatch`]
    /// or [`StoreError::CompressionMismatch`].
    pub fn init(path: &Path, config: &RepoConfig) -> Result<Repository> {
        config.validate().map_err(|message| StoreError::BadConfig { path: path.to_path_buf(), message })?;
        match Repository::read_config(path) {
            Ok(existing) => return Err(Repository::already_there(path, &existing, config)),
            Err(StoreError::NotARepository { .. }) => {}
            Err(e) => return Err(e),
        }
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && is_empty_dir(path).map_err(io)? => {}
            Ok(_) => return Err(StoreError::NotEmpty { path: path.to_path_buf() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let name = path.file_name().ok_or_else(|| StoreError::BadConfig {
            path: path.to_path_buf(),
            message: "the repository path needs a final component".into(),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".init-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let _ = fs::remove_dir_all(&tmp);
        let build = || -> Result<()> {
            let tio = |source| StoreError::Io { path: tmp.clone(), source };
            fs::create_dir_all(&tmp).map_err(tio)?;
            {
                let db = DB::open_cf_descriptors(&db_options(true), tmp.join(DB_DIR), cf_descriptors())
                    .map_err(|e| StoreError::Db { path: tmp.clone(), message: e.to_string() })?;
                db.flush_wal(true).map_err(|e| StoreError::Db { path: tmp.clone(), message: e.to_string() })?;
            }
            let json = serde_json::to_vec_pretty(config)
                .map_err(|e| StoreError::BadConfig { path: tmp.clone(), message: e.to_string() })?;
            ferry_durable::replace(&tmp.join(CONFIG_FILE), &json).map_err(tio)?;
            ferry_durable::sync_dir(&tmp).map_err(tio)?;
            // rename(2) replaces an empty directory atomically.
            ferry_durable::rename(&tmp, path).map_err(io)
        };
        if let Err(e) = build() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Repository::open(path)
    }

    /// Why `init` stops at a repository made with `existing`, when asked for `requested`.
    fn already_there(path: &Path, existing: &RepoConfig, requested: &RepoConfig) -> StoreError {
        let path = path.to_path_buf();
        let (have, want) = (existing.chunking.params, requested.chunking.params);
        if have != want {
            StoreError::ChunkParamsMismatch { path, existing: have.to_string(), requested: want.to_string() }
        } else if existing.compression.level != requested.compression.level {
            StoreError::CompressionMismatch {
                path,
                existing: existing.compression.level,
                requested: requested.compression.level,
            }
        } else {
            StoreError::AlreadyARepository { path }
        }
    }

    /// Reads and checks `ferry-repo.json` without opening the database.
    pub fn read_config(path: &Path) -> Result<RepoConfig> {
        let file = path.join(CONFIG_FILE);
        let bytes = match fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotARepository { path: path.to_path_buf() })
            }
            Err(source) => return Err(StoreError::Io { path: file, source }),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::BadConfig { path: file.clone(), message: e.to_string() })?;
        // The format number is checked before the rest, so a newer layout is reported as such
        // rather than as a parse error.
        let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
        if format != REPO_FORMAT {
            return Err(StoreError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: format,
                supported: REPO_FORMAT,
            });
        }
        let config: RepoConfig = serde_json::from_value(value)
            .map_err(|e| StoreError::BadConfig { path: file.clone(), message: e.to_string() })?;
        config.validate().map_err(|message| StoreError::BadConfig { path: file, message })?;
        Ok(config)
    }

    fn check_features(path: &Path, config: &RepoConfig, write: bool) -> Result<()> {
        let unknown = |list: &[String]| -> Vec<String> {
            list.iter().filter(|f| !KNOWN_FEATURES.contains(&f.as_str())).cloned().collect()
        };
        let incompatible = unknown(&config.features.incompatible);
        if !incompatible.is_empty() {
            return Err(StoreError::UnknownFeatures {
                path: path.to_path_buf(),
                features: incompatible,
                action: "open",
            });
        }
        let ro = unknown(&config.features.read_only_compatible);
        if write && !ro.is_empty() {
            return Err(StoreError::UnknownFeatures { path: path.to_path_buf(), features: ro, action: "write to" });
        }
        Ok(())
    }

    /// Opens a repository for reading and writing. RocksDB allows one writing process at a
    /// time; a second one gets a clear error naming the lock.
    pub fn open(path: &Path) -> Result<Repository> {
        Repository::open_mode(path, false)
    }

    /// Opens a repository for reading only: takes no lock, changes nothing on disk, and sees
    /// the repository as it was when opened.
    pub fn open_read_only(path: &Path) -> Result<Repository> {
        Repository::open_mode(path, true)
    }

    fn open_mode(path: &Path, read_only: bool) -> Result<Repository> {
        let config = Repository::read_config(path)?;
        Repository::check_features(path, &config, !read_only)?;
        let db_path = path.join(DB_DIR);
        let dberr = |e: rocksdb::Error| StoreError::Db { path: db_path.clone(), message: e.to_string() };
        let db = if read_only {
            DB::open_cf_descriptors_read_only(&db_options(false), &db_path, cf_descriptors(), false).map_err(dberr)?
        } else {
            DB::open_cf_descriptors(&db_options(false), &db_path, cf_descriptors()).map_err(|e| {
                if e.to_string().contains("LOCK") {
                    StoreError::Locked { path: path.to_path_buf() }
                } else {
                    dberr(e)
                }
            })?
        };
        Ok(Repository { path: path.to_path_buf(), config, db, read_only, follower: false, ref_lock: Mutex::new(()) })
    }

    /// Opens a repository for reading while another process may be writing to it (a RocksDB
    /// secondary instance): [`Repository::refresh`] makes the writer's new commits visible.
    /// `scratch` is a directory of the caller's for the follower's own log files.
    pub fn open_follower(path: &Path, scratch: &Path) -> Result<Repository> {
        let config = Repository::read_config(path)?;
        Repository::check_features(path, &config, false)?;
        let db_path = path.join(DB_DIR);
        let mut opts = db_options(false);
        // A secondary instance must keep every file open to follow the primary's changes.
        opts.set_max_open_files(-1);
        let db = DB::open_cf_descriptors_as_secondary(&opts, &db_path, &scratch.to_path_buf(), cf_descriptors())
            .map_err(|e| StoreError::Db { path: db_path.clone(), message: e.to_string() })?;
        Ok(Repository {
            path: path.to_path_buf(),
            config,
            db,
            read_only: true,
            follower: true,
            ref_lock: Mutex::new(()),
        })
    }

    /// Catches up with the writing process (followers only; a no-op otherwise).
    pub fn refresh(&self) -> Result<()> {
        if self.follower {
            self.db.try_catch_up_with_primary().map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn chunk_params(&self) -> ChunkParams {
        self.config.chunking.params
    }

    /// Fails with [`StoreError::ChunkParamsMismatch`] unless the repository uses `params`.
    pub fn expect_chunk_params(&self, params: &ChunkParams) -> Result<()> {
        let existing = self.chunk_params();
        if existing != *params {
            return Err(StoreError::ChunkParamsMismatch {
                path: self.path.clone(),
                existing: existing.to_string(),
                requested: params.to_string(),
            });
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every descriptor in ALL_CFS is opened with the database, so the handle exists.
        #[allow(clippy::expect_used)]
        self.db.cf_handle(name).expect("column family opened with the database")
    }

    fn db_err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Db { path: self.path.join(DB_DIR), message: e.to_string() }
    }

    fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    // ---- chunks ---------------------------------------------------------------------

    /// Sizes of a stored chunk, or `None` if the repository lacks it. Reads only the small
    /// index, never the chunk's bytes.
    pub fn chunk_info(&self, id: &Id) -> Result<Option<ChunkInfo>> {
        let v = self.db.get_pinned_cf(self.cf(CF_CHUNK_INDEX), id.as_bytes()).map_err(|e| self.db_err(e))?;
        let Some(v) = v else { return Ok(None) };
        let parse = || -> Option<ChunkInfo> {
            let v: &[u8; 8] = v.as_ref().try_into().ok()?;
            let len = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
            let stored_len = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
            Some(ChunkInfo { len, stored_len })
        };
        match parse() {
            Some(info) if info.len >= 1 && info.len <= crate::object::MAX_CHUNK_LEN => Ok(Some(info)),
            _ => Err(StoreError::ChunkUnreadable { id: *id, message: "its index entry is malformed".into() }),
        }
    }

    pub fn has_chunk(&self, id: &Id) -> Result<bool> {
        Ok(self.chunk_info(id)?.is_some())
    }

    /// Compresses a chunk's bytes with the repository's zstd level.
    pub fn compress_chunk(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        zstd::bulk::compress(bytes, self.config.compression.level)
            .map_err(|e| StoreError::Io { path: self.path.clone(), source: e })
    }

    /// Stores a chunk given its id, its uncompressed length and its zstd frame. The caller
    /// has hashed the uncompressed bytes; `read_chunk` verifies them on every read.
    pub fn put_chunk(&self, id: &Id, len: u32, compressed: &[u8]) -> Result<()> {
        self.writable()?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_CHUNKS), id.as_bytes(), compressed);
        let mut index = [0u8; 8];
        index[..4].copy_from_slice(&len.to_le_bytes());
        index[4..].copy_from_slice(&(compressed.len() as u32).to_le_bytes());
        batch.put_cf(self.cf(CF_CHUNK_INDEX), id.as_bytes(), index);
        self.db.write(batch).map_err(|e| self.db_err(e))
    }

    /// The stored zstd frame of a chunk, unverified (what is sent on the wire).
    pub fn read_chunk_stored(&self, id: &Id) -> Result<Vec<u8>> {
        self.db
            .get_cf(self.cf(CF_CHUNKS), id.as_bytes())
            .map_err(|e| self.db_err(e))?
            .ok_or(StoreError::ChunkMissing { id: *id })
    }

    /// A chunk's bytes, decompressed and verified against its id.
    pub fn read_chunk(&self, id: &Id) -> Result<Vec<u8>> {
        let info = self.chunk_info(id)?.ok_or(StoreError::ChunkMissing { id: *id })?;
        let stored = self.read_chunk_stored(id)?;
        decode_chunk(id, &stored, info.len)
    }

    /// Calls `f` with every stored chunk's id, index entry and stored bytes, in id order.
    pub fn for_each_chunk(&self, mut f: impl FnMut(Id, Option<ChunkInfo>, &[u8]) -> Result<()>) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(CF_CHUNKS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let id = Id::from_slice(&k).unwrap_or(Id([0; ID_LEN]));
            let info = self.chunk_info(&id)?;
            f(id, info, &v)?;
        }
        Ok(())
    }

    // ---- objects ----------------------------------------------------------------------

    pub fn has_object(&self, id: &Id) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.cf(CF_OBJECTS), id.as_bytes()).map_err(|e| self.db_err(e))?.is_some())
    }

    /// Stores an encoded tree (if not already present) and returns its id.
    pub fn put_tree(&self, tree: &Tree) -> Result<Id> {
        self.writable()?;
        let bytes = tree.encode()?;
        let id = Id::of(&bytes);
        if !self.has_object(&id)? {
            self.db.put_cf(self.cf(CF_OBJECTS), id.as_bytes(), &bytes).map_err(|e| self.db_err(e))?;
        }
        Ok(id)
    }

    /// An object's bytes, verified against its id.
    pub fn read_object_bytes(&self, id: &Id) -> Result<Vec<u8>> {
        let bytes = self
            .db
            .get_cf(self.cf(CF_OBJECTS), id.as_bytes())
            .map_err(|e| self.db_err(e))?
            .ok_or(StoreError::ObjectMissing { id: *id })?;
        let actual = Id::of(&bytes);
        if actual != *id {
            return Err(StoreError::ObjectCorrupt { id: *id, actual });
        }
        Ok(bytes)
    }

    pub fn read_tree(&self, id: &Id) -> Result<Tree> {
        let bytes = self.read_object_bytes(id)?;
        if let Some(found) = object_kind(&bytes).filter(|k| *k != ObjectKind::Tree) {
            return Err(StoreError::WrongKind { id: *id, expected: "tree", found: found.name() });
        }
        Tree::decode(&bytes).map_err(|source| StoreError::Decode { id: *id, source })
    }

    pub fn read_commit(&self, id: &Id) -> Result<Commit> {
        let bytes = self.read_object_bytes(id)?;
        if let Some(found) = object_kind(&bytes).filter(|k| *k != ObjectKind::Commit) {
            return Err(StoreError::WrongKind { id: *id, expected: "commit", found: found.name() });
        }
        Commit::decode(&bytes).map_err(|source| StoreError::Decode { id: *id, source })
    }

    /// Calls `f` with every stored object's key and bytes, in id order.
    pub fn for_each_object(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(CF_OBJECTS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            f(&k, &v)?;
        }
        Ok(())
    }

    // ---- signatures -------------------------------------------------------------------

    /// The signatures stored for a commit (unverified: callers verify against their keys).
    pub fn signatures(&self, commit: &Id) -> Result<Vec<StoredSignature>> {
        let mut out = Vec::new();
        let cf = self.cf(CF_SIGNATURES);
        let iter = self.db.iterator_cf(cf, IteratorMode::From(commit.as_bytes(), Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(commit.as_bytes()) {
                break;
            }
            let key = k.get(ID_LEN..).and_then(|k| <[u8; 32]>::try_from(k).ok());
            let signature = <[u8; 64]>::try_from(&v[..]).ok();
            match (key, signature) {
                (Some(key), Some(signature)) => out.push(StoredSignature { key, signature }),
                // A malformed record is reported as a signature that cannot verify.
                _ => out.push(StoredSignature { key: [0; 32], signature: [0; 64] }),
            }
        }
        Ok(out)
    }

    /// Adds a signature to a stored commit (e.g. by a new signing key after a rotation). The
    /// signature must verify; it is written synced.
    pub fn add_signature(&self, commit: &Id, key: &PublicKey, signature: &[u8; 64]) -> Result<()> {
        self.writable()?;
        self.read_commit(commit)?;
        if !key.verify_commit(commit, signature) {
            return Err(StoreError::BadSignature { commit: *commit, key: key.to_hex() });
        }
        let mut k = commit.as_bytes().to_vec();
        k.extend_from_slice(&key.to_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.put_cf_opt(self.cf(CF_SIGNATURES), k, signature, &wo).map_err(|e| self.db_err(e))
    }

    // ---- refs -------------------------------------------------------------------------

    /// The commit a branch points at, if the branch exists.
    pub fn branch(&self, name: &str) -> Result<Option<Id>> {
        check_branch_name(name)?;
        let v = self.db.get_cf(self.cf(CF_REFS), ref_key(name)).map_err(|e| self.db_err(e))?;
        v.map(|v| Id::from_slice(&v).ok_or_else(|| StoreError::CorruptRef { branch: name.to_string(), len: v.len() }))
            .transpose()
    }

    /// Every branch and the commit it points at, sorted by name.
    pub fn branches(&self) -> Result<Vec<(String, Id)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_REFS), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if let Some(name) = k.strip_prefix(b"heads/") {
                let branch = String::from_utf8_lossy(name).into_owned();
                let id = Id::from_slice(&v)
                    .ok_or_else(|| StoreError::CorruptRef { branch: branch.clone(), len: v.len() })?;
                out.push((branch, id));
            }
        }
        Ok(out)
    }

    /// Makes a commit visible: stores the commit and its signatures and moves `branch` from
    /// `expected` to it, in one synced write batch. Fails with [`StoreError::RefConflict`] if
    /// the branch is no longer at `expected`, and with `ObjectMissing` if the root tree or the
    /// parent is not stored. Chunks and trees must have been written before.
    pub fn publish_commit(
        &self,
        commit: &Commit,
        signatures: &[(PublicKey, [u8; 64])],
        branch: &str,
        expected: Option<Id>,
    ) -> Result<Id> {
        self.writable()?;
        check_branch_name(branch)?;
        let bytes = commit.encode()?;
        let id = Id::of(&bytes);
        if !self.has_object(&commit.root)? {
            return Err(StoreError::ObjectMissing { id: commit.root });
        }
        if let Some(parent) = &commit.parent {
            self.read_commit(parent)?;
        }
        let _guard = self.ref_lock.lock().unwrap_or_else(|e| e.into_inner());
        let found = self.branch(branch)?;
        if found != expected {
            let show = |v: Option<Id>| v.map_or_else(|| "nothing (no branch)".to_string(), |id| id.to_hex());
            return Err(StoreError::RefConflict {
                branch: branch.to_string(),
                expected: show(expected),
                found: show(found),
            });
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_OBJECTS), id.as_bytes(), &bytes);
        for (key, sig) in signatures {
            let mut k = id.as_bytes().to_vec();
            k.extend_from_slice(&key.to_bytes());
            batch.put_cf(self.cf(CF_SIGNATURES), k, sig);
        }
        batch.put_cf(self.cf(CF_REFS), ref_key(branch), id.as_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.db_err(e))?;
        Ok(id)
    }

    // ---- key and channel documents ----------------------------------------------------

    /// A stored document with its signatures, as it is served.
    pub fn read_envelope(&self, id: &Id) -> Result<Envelope> {
        let document = self.read_object_bytes(id)?;
        let signatures = self.signatures(id)?.into_iter().map(|s| (s.key, s.signature)).collect();
        Ok(Envelope { document, signatures })
    }

    /// The newest key document's id, if the repository has one.
    pub fn keys_head(&self) -> Result<Option<Id>> {
        self.ref_value(KEYS_REF, "keys")
    }

    /// Every key document, oldest first (serial 1, 2, ...): what a device walks from the
    /// roots in its image.
    pub fn key_chain(&self) -> Result<Vec<Envelope>> {
        let mut out = Vec::new();
        let mut next = self.keys_head()?;
        while let Some(id) = next.take() {
            let e = self.read_envelope(&id)?;
            let doc = KeyDoc::decode(&e.document).map_err(|source| StoreError::Decode { id, source })?;
            next = doc.previous;
            out.push(e);
            if out.len() > crate::object::MAX_LIST {
                return Err(StoreError::Decode {
                    id,
                    source: DecodeError::TooLong {
                        field: "key document chain",
                        len: out.len(),
                        max: crate::object::MAX_LIST,
                    },
                });
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The newest document of a channel, if it exists.
    pub fn channel(&self, name: &str) -> Result<Option<Id>> {
        check_branch_name(name)?;
        self.ref_value(&channel_ref(name), name)
    }

    /// Every channel and its newest document, sorted by name.
    pub fn channels(&self) -> Result<Vec<(String, Id)>> {
        self.refs_with_prefix(b"channels/")
    }

    /// The channel whose commits this one is promoted from, once recorded.
    pub fn upstream(&self, name: &str) -> Result<Option<String>> {
        check_branch_name(name)?;
        let v = self.db.get_cf(self.cf(CF_REFS), upstream_ref(name)).map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// The channels promoted from `name` (whose upstream it is), sorted.
    pub fn downstream(&self, name: &str) -> Result<Vec<String>> {
        let prefix = b"upstream/";
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_REFS), IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let Some(channel) = k.strip_prefix(prefix.as_slice()) else { break };
            if v.as_ref() == name.as_bytes() {
                out.push(String::from_utf8_lossy(channel).into_owned());
            }
        }
        Ok(out)
    }

    /// The last document of a channel by that name that was retired, if one was.
    pub fn retired(&self, name: &str) -> Result<Option<Id>> {
        check_branch_name(name)?;
        self.ref_value(&retired_ref(name), name)
    }

    /// Retires a channel whose newest document is still `expected`: its name names nothing
    /// any more (the server answers 404 for it, `channel refresh` no longer signs it, a new
    /// promotion needs `--create`); its documents stay in the store.
    pub fn retire_channel(&self, name: &str, expected: Id) -> Result<()> {
        check_branch_name(name)?;
        self.writable()?;
        let _guard = self.ref_lock.lock().unwrap_or_else(|e| e.into_inner());
        let what = format!("channel {name}");
        let found = self.ref_value(&channel_ref(name), &what)?;
        if found != Some(expected) {
            let show = |v: Option<Id>| v.map_or_else(|| "nothing".to_string(), |id| id.to_hex());
            return Err(StoreError::RefConflict { branch: what, expected: expected.to_hex(), found: show(found) });
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_REFS), channel_ref(name));
        batch.delete_cf(self.cf(CF_REFS), upstream_ref(name));
        // Remembered: a channel made again under this name goes on from its serial, or the
        // devices that followed it would take the new documents for replays.
        batch.put_cf(self.cf(CF_REFS), retired_ref(name), expected.as_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.db_err(e))
    }

    /// Stores a signed key document and makes it the newest, if the newest is still
    /// `expected`. The caller has checked its signatures against the chain.
    pub fn publish_keys(&self, envelope: &Envelope, expected: Option<Id>) -> Result<Id> {
        let id = envelope.id();
        KeyDoc::decode(&envelope.document).map_err(|source| StoreError::Decode { id, source })?;
        self.publish_document(envelope, KEYS_REF.to_vec(), "keys", expected, None)
    }

    /// Stores a signed channel document and makes it the channel's newest, if the newest is
    /// still `expected`; records `upstream` if the channel had none.
    pub fn publish_channel(&self, envelope: &Envelope, expected: Option<Id>, upstream: Option<&str>) -> Result<Id> {
        let id = envelope.id();
        let doc = ChannelDoc::decode(&envelope.document).map_err(|source| StoreError::Decode { id, source })?;
        let upstream = match upstream {
            Some(u) if self.upstream(&doc.name)?.is_none() => {
                check_branch_name(u)?;
                Some((upstream_ref(&doc.name), u.as_bytes().to_vec()))
            }
            _ => None,
        };
        self.publish_document(envelope, channel_ref(&doc.name), &format!("channel {}", doc.name), expected, upstream)
    }

    fn publish_document(
        &self,
        envelope: &Envelope,
        reference: Vec<u8>,
        what: &str,
        expected: Option<Id>,
        extra: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Id> {
        self.writable()?;
        let id = envelope.id();
        let _guard = self.ref_lock.lock().unwrap_or_else(|e| e.into_inner());
        let found = self.ref_value(&reference, what)?;
        if found != expected {
            let show = |v: Option<Id>| v.map_or_else(|| "nothing".to_string(), |id| id.to_hex());
            return Err(StoreError::RefConflict {
                branch: what.to_string(),
                expected: show(expected),
                found: show(found),
            });
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_OBJECTS), id.as_bytes(), &envelope.document);
        for (key, sig) in &envelope.signatures {
            let mut k = id.as_bytes().to_vec();
            k.extend_from_slice(key);
            batch.put_cf(self.cf(CF_SIGNATURES), k, sig);
        }
        batch.put_cf(self.cf(CF_REFS), reference, id.as_bytes());
        if let Some((k, v)) = extra {
            batch.put_cf(self.cf(CF_REFS), k, v);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.db_err(e))?;
        Ok(id)
    }

    fn ref_value(&self, key: &[u8], name: &str) -> Result<Option<Id>> {
        let v = self.db.get_cf(self.cf(CF_REFS), key).map_err(|e| self.db_err(e))?;
        v.map(|v| Id::from_slice(&v).ok_or_else(|| StoreError::CorruptRef { branch: name.to_string(), len: v.len() }))
            .transpose()
    }

    fn refs_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(String, Id)>> {
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_REFS), IteratorMode::From(prefix, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let Some(name) = k.strip_prefix(prefix) else { break };
            let name = String::from_utf8_lossy(name).into_owned();
            let id = Id::from_slice(&v).ok_or_else(|| StoreError::CorruptRef { branch: name.clone(), len: v.len() })?;
            out.push((name, id));
        }
        Ok(out)
    }

    /// Resolves a revision, the one syntax every command takes: a full 64-digit commit id, a
    /// branch name, a version (one commit on the branches' histories has it), or a unique
    /// prefix of at least [`MIN_PREFIX`] hex digits of a commit id. A name that is both a
    /// version and a prefix (`12345678`) must name one commit either way. The error says
    /// which rule failed.
    pub fn resolve(&self, rev: &str) -> Result<Id> {
        let unknown = |why: String| StoreError::UnknownRev { rev: rev.to_string(), why };
        if let Ok(id) = rev.parse::<Id>() {
            if !self.has_object(&id)? {
                return Err(unknown("no object of this repository has that id".into()));
            }
            return match self.read_commit(&id) {
                Ok(_) => Ok(id),
                Err(StoreError::WrongKind { found, .. }) => Err(unknown(format!("that id is a {found}, not a commit"))),
                Err(e) => Err(e),
            };
        }
        if check_branch_name(rev).is_ok() {
            if let Some(id) = self.branch(rev)? {
                return Ok(id);
            }
        }
        let by_version = match rev.parse::<Version>() {
            Ok(v) => Some(self.commits_with_version(&v)?),
            Err(_) => None,
        };
        let is_hex = rev.len() < 64 && !rev.is_empty() && rev.bytes().all(|b| b.is_ascii_hexdigit());
        let by_prefix = if is_hex && rev.len() >= MIN_PREFIX { Some(self.commits_with_prefix(rev)?) } else { None };
        let mut found: BTreeSet<Id> = BTreeSet::new();
        found.extend(by_version.iter().flatten());
        found.extend(by_prefix.iter().flatten());
        match found.len() {
            1 => return Ok(found.into_iter().next().unwrap_or(Id([0; ID_LEN]))),
            0 => {}
            _ => {
                return Err(StoreError::AmbiguousRev { rev: rev.to_string(), candidates: found.into_iter().collect() })
            }
        }
        let mut why = Vec::new();
        if check_branch_name(rev).is_ok() {
            why.push("no branch has that name".to_string());
        }
        if by_version.is_some() {
            why.push(format!("no commit on the branches has version {rev}"));
        }
        if by_prefix.is_some() {
            why.push("no commit id starts with it".into());
        } else if is_hex {
            why.push(format!("as a commit id prefix it has {} digits; give at least {MIN_PREFIX}", rev.len()));
        }
        if why.is_empty() {
            why.push("it is not a commit id, a branch name, a version or a prefix of 8+ hex digits".into());
        }
        Err(unknown(why.join("; ")))
    }

    /// The commits whose id starts with `prefix` (hex digits, any case).
    fn commits_with_prefix(&self, prefix: &str) -> Result<BTreeSet<Id>> {
        let lower = prefix.to_ascii_lowercase();
        let whole = hex::decode(&lower[..lower.len() / 2 * 2]).unwrap_or_default();
        let mut candidates = BTreeSet::new();
        let iter = self.db.iterator_cf(self.cf(CF_OBJECTS), IteratorMode::From(&whole, Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(&whole) {
                break;
            }
            let Some(id) = Id::from_slice(&k) else { continue };
            if id.to_hex().starts_with(&lower) && object_kind(&v) == Some(ObjectKind::Commit) {
                candidates.insert(id);
            }
        }
        Ok(candidates)
    }

    /// The commits with `version` on any branch's history (each history walked from its
    /// head, at most [`MAX_VERSION_WALK`] commits in all).
    pub fn commits_with_version(&self, version: &Version) -> Result<BTreeSet<Id>> {
        let mut found = BTreeSet::new();
        let mut seen = std::collections::HashSet::new();
        for (_, head) in self.branches()? {
            let mut next = Some(head);
            while let Some(id) = next.take() {
                if !seen.insert(id) {
                    break;
                }
                if seen.len() > MAX_VERSION_WALK {
                    return Err(StoreError::HistoryTooLong { limit: MAX_VERSION_WALK });
                }
                let c = self.read_commit(&id)?;
                if c.version == *version {
                    found.insert(id);
                }
                next = c.parent;
            }
        }
        Ok(found)
    }
}
