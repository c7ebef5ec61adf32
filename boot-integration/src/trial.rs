//! The trial: the state a deployment is in between the switch and being marked good.
//!
//! A trial is written durably (`trial.json`, temp + fsync + rename + fsync dir) *before* the
//! switch, so a power cut at any point after the switch finds it and the agent finishes the
//! job at the next start: it runs the health checks again, or rolls back when the deployment
//! has used up its boots (`boot-check`) or its deadline. Clearing the trial is the commit
//! point of "marked good"; rolling back switches to `previous` first and clears it after.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The commit on trial (its deployment is `deploy/<commit>`).
    pub commit: String,
    /// The commit to go back to, if the trial fails.
    pub previous: Option<String>,
    /// Unix seconds when the trial started and by when it must be good.
    pub started: i64,
    pub deadline: i64,
    /// Boots of this deployment so far (counted by `boot-check`).
    pub boots: u32,
    /// Set by `ferryd mark-good` (the application's own self-test).
    pub marked_good: bool,
    /// Set once the switch to `commit` has happened. A trial found without it belongs to an
    /// update interrupted before its switch, which is abandoned, not rolled back.
    #[serde(default)]
    pub switched: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid trial record: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("trial.json")
}

impl Trial {
    /// The trial in progress, if any.
    pub fn load(state_dir: &Path) -> Result<Option<Trial>, TrialError> {
        let p = path(state_dir);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| TrialError::Corrupt { path: p, message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TrialError::Io { path: p, source }),
        }
    }

    /// Writes the trial durably.
    pub fn save(&self, state_dir: &Path) -> Result<(), TrialError> {
        let p = path(state_dir);
        let io = |source| TrialError::Io { path: p.clone(), source };
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| TrialError::Corrupt { path: p.clone(), message: e.to_string() })?;
        ferry_durable::replace(&p, &bytes).map_err(io)
    }

    /// Ends the trial (the commit point of "good", or the last step of a rollback).
    pub fn clear(state_dir: &Path) -> Result<(), TrialError> {
        let p = path(state_dir);
        ferry_durable::remove(&p).map_err(|source| TrialError::Io { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trial_survives_save_load_and_clear() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(Trial::load(t.path()).unwrap(), None);
        let trial = Trial {
            commit: "a".into(),
            previous: Some("b".into()),
            started: 1,
            deadline: 2,
            boots: 0,
            marked_good: false,
            switched: true,
        };
        trial.save(t.path()).unwrap();
        assert_eq!(Trial::load(t.path()).unwrap(), Some(trial));
        Trial::clear(t.path()).unwrap();
        assert_eq!(Trial::load(t.path()).unwrap(), None);
        std::fs::write(t.path().join("trial.json"), "{").unwrap();
        assert!(matches!(Trial::load(t.path()), Err(TrialError::Corrupt { .. })));
    }
}
