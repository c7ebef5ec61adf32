//! The repository API (`GET /v1/…` of `ferry serve`, read by `ferryd` and by `ferry deploy`):
//! its JSON answers. Ids, keys and signatures travel as lower-case hex; this crate keeps them
//! as text, and each side parses them with its own id type. What it is not for: the binary
//! bodies (packs, the trees request, patches: `ferry_delta`), the signed channel and key
//! documents (`ferry_store::channel`), and the error body, [`crate::ErrorBody`], which all
//! three APIs share.
//!
//! Every answer here was first built with `json!`, so every field list is alphabetical.

use serde::{Deserialize, Serialize};

/// `GET /v1/branches/{name}`: the commit a branch points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchHead {
    pub branch: String,
    pub commit: String,
}

/// `GET /v1/versions/{version}`: the commits with that version on any branch, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCommits {
    /// Sorted, each once.
    pub commits: Vec<String>,
    pub version: String,
}

/// A signature of a commit: the signing key (32 bytes) and the signature (64 bytes), in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub key: String,
    pub signature: String,
}

/// `GET /v1/commits/{id}/signatures`: the signatures the server holds for a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitSignatures {
    pub commit: String,
    pub signatures: Vec<Signature>,
}

/// `GET /v1/commits/{id}`: a commit's canonical bytes (hex) and its signatures, everything a
/// device checks before it decodes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommit {
    pub bytes: String,
    pub commit: String,
    pub signatures: Vec<Signature>,
}
