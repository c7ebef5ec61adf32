//! The store's error type. Every variant carries what a person needs to act on it.

use std::path::PathBuf;

use crate::id::Id;
use crate::object::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("repository database at {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("{path} is not a ferry repository (no ferry-repo.json); create one with `ferry init`")]
    NotARepository { path: PathBuf },
    #[error("{path} exists and is not empty; refusing to create a repository there")]
    NotEmpty { path: PathBuf },
    #[error("{path}: bad repository configuration: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("{path} has repository format {found}; this build of ferry reads format {supported}")]
    UnsupportedFormat { path: PathBuf, found: u32, supported: u32 },
    #[error("{path} uses features this build does not know: {features:?}; upgrade ferry to {action} it")]
    UnknownFeatures { path: PathBuf, features: Vec<String>, action: &'static str },
    /// `init` found a repository at `path` made with the parameters it was given: nothing
    /// to do.
    #[error("{path} is already a ferry repository with these parameters")]
    AlreadyARepository { path: PathBuf },
    #[error("{path} was created with chunking {existing}, not {requested}")]
    ChunkParamsMismatch { path: PathBuf, existing: String, requested: String },
    #[error("{path} was created with zstd level {existing}, not {requested}")]
    CompressionMismatch { path: PathBuf, existing: i32, requested: i32 },
    #[error("chunk {id} is missing from the repository")]
    ChunkMissing { id: Id },
    #[error("chunk {id} is corrupt: its bytes hash to {actual}")]
    ChunkCorrupt { id: Id, actual: Id },
    #[error("chunk {id} is corrupt: {message}")]
    ChunkUnreadable { id: Id, message: String },
    #[error("object {id} is missing from the repository")]
    ObjectMissing { id: Id },
    #[error("object {id} is corrupt: its bytes hash to {actual}")]
    ObjectCorrupt { id: Id, actual: Id },
    #[error("object {id} does not decode: {source}")]
    Decode { id: Id, source: DecodeError },
    #[error("invalid object: {0}")]
    Invalid(#[from] DecodeError),
    #[error("object {id} is a {found}, not a {expected}")]
    WrongKind { id: Id, expected: &'static str, found: &'static str },
    #[error("branch {branch} moved: expected it at {expected}, found {found}; commit again onto the new head")]
    RefConflict { branch: String, expected: String, found: String },
    #[error("branch {branch} is corrupt: its value is {len} bytes, not a 32-byte commit id")]
    CorruptRef { branch: String, len: usize },
    #[error("invalid branch name {name:?}: {why}")]
    BadBranchName { name: String, why: &'static str },
    /// `why` says which rule it failed: revisions are a full commit id, a branch, a version
    /// or a prefix of at least 8 hex digits.
    #[error("{rev:?} names no commit: {why}")]
    UnknownRev { rev: String, why: String },
    #[error("the branches' histories hold more than {limit} commits, more than a version is looked up in; name the commit by its id")]
    HistoryTooLong { limit: usize },
    #[error("{rev:?} is ambiguous: it matches commits {}; name one by its id", candidates.iter().map(|c| c.short()).collect::<Vec<_>>().join(", "))]
    AmbiguousRev { rev: String, candidates: Vec<Id> },
    #[error("{path} is open for writing by another process (RocksDB admits one writer); retry when it is done")]
    Locked { path: PathBuf },
    #[error("signature by key {key} does not verify for commit {commit}")]
    BadSignature { commit: Id, key: String },
    #[error("tree {tree} is nested deeper than {} directories", crate::object::MAX_DEPTH)]
    TooDeep { tree: Id },
    #[error("the repository was opened read-only")]
    ReadOnly,
    /// A conditional write ([`crate::kv::Op::Insert`], [`crate::kv::Op::Expect`]) found the
    /// key changed since its caller read it: nothing was written; read again and retry.
    #[error("{table}/{key} changed under this write (another writer was first)")]
    KvConflict { table: String, key: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
