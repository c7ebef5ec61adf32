//! `state.json`: what the agent remembers between runs, written atomically.
//!
//! The current deployment is not stored here: the `current_link` symlink is the truth, and
//! this file records only what cannot be read from the file system.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The deployment that ran before the current one (kept for rollback).
    pub previous: Option<String>,
    /// `"ok"`, `"up-to-date"` or `"error"`, for the last `ferryd update`.
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    /// Unix seconds of the last update attempt.
    pub last_attempt: Option<i64>,
    /// Commits that failed their trial: never installed again (a newer commit is).
    #[serde(default)]
    pub bad_commits: Vec<String>,
    #[serde(default)]
    pub last_rollback: Option<Rollback>,
    /// A developer pinned this device (`ferryd deploy`, `ferryd pin`): fleet updates are
    /// not downloaded until `ferryd unpin`.
    #[serde(default)]
    pub pinned: bool,
    /// `current_link` points at a developer's working copy or an unlocked copy.
    #[serde(default)]
    pub dev: Option<Dev>,
}

/// What `ferryd dev --link` or `ferryd unlock` changed, to undo it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dev {
    /// Where `current_link` points.
    pub link: std::path::PathBuf,
    /// The deployment (commit) it replaced.
    pub back_to: Option<String>,
    pub was_pinned: bool,
    /// An unlocked copy (`ferryd unlock`) rather than a working copy.
    pub unlocked: bool,
    /// Keep the unlocked copy when the next deployment replaces it.
    pub keep: bool,
}

/// The most recent rollback, for `ferryd status` (and later the server).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollback {
    pub commit: String,
    pub to: String,
    pub reason: String,
    pub at: i64,
}

impl State {
    pub fn load(state_dir: &Path) -> Result<State> {
        let path = state_dir.join("state.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join("state.json");
        ferry_durable::replace(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
