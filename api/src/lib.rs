//! ferry-api: the JSON messages of the repository API (`/v1/branches/…`, `/v1/commits/…`,
//! read by `ferryd`), and of the fleet server's device API (`/v1/device/…`, spoken by
//! `ferryd`) and admin API (`/v1/admin/…`, spoken by `ferry` and the web UI), typed once and
//! used by both sides. `docs/api.md` describes the routes; this crate is the shape of what
//! travels on them.
//!
//! What it is for: the request and answer bodies, their field names, which fields are
//! optional and whether an absent one is omitted or `null`, and the order fields are written
//! in. What it is not for: HTTP (routes, status codes, tokens in headers), the rules that
//! check a message's contents (the server's `fleet` module), or the server's stored records.
//!
//! **Field order is part of the wire.** The server first built most answers with
//! `serde_json::json!`, whose map writes keys in alphabetical order; messages it built that
//! way declare their fields alphabetically here, so the bytes stay the same. Messages the
//! server always serialised from a struct ([`admin::TokenRecord`], [`admin::AuditEntry`],
//! [`admin::ConfigLevel`], [`admin::MergedConfig`], [`admin::Rollout`] and
//! [`admin::RolloutStatus`]) keep that struct's order. The tests in `tests/` pin the text of
//! every message.

pub mod admin;
pub mod device;
pub mod repo;

use serde::{Deserialize, Serialize};

/// The body of every error answer of the three APIs (a 4xx or 5xx status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the object.
    pub error: String,
    /// The ids a batch named that the repository lacks (a `404` of `POST /v1/chunks`,
    /// `/v1/objects`, `/v1/patches`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<String>>,
}

impl ErrorBody {
    /// An error without a list of missing ids.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody { error: error.into(), missing: None }
    }
}
