//! The device's memory between runs: `state.json` (previous deployment, the last outcome,
//! bad commits, pins) and `trust.json` (what a device following a channel has accepted;
//! [`crate::trust`] holds its rules). This module is the only reader and writer of both.
//!
//! Each change is read-modify-write of the newest file ([`change`]), written atomically: a
//! trial, a rollback and an update that each record something never undo one another's
//! records, and a power cut leaves the old file or the new one.
//!
//! The current deployment is not stored here: the `current_link` symlink is the truth, and
//! these files record only what cannot be read from the file system.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::trust::TrustState;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The deployment that ran before the current one (kept for rollback).
    pub previous: Option<String>,
    /// How the last update, apply or trial ended.
    pub last_result: Option<Outcome>,
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
    /// What the last update did to the application (`[app]`).
    #[serde(default)]
    pub last_app: Option<crate::app::AppRun>,
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

/// How the last update, bundle or trial ended (`last_result`; `ferryd status` and the
/// check-in report show it as the kebab-case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new release was switched to.
    Ok,
    /// Nothing newer to install.
    UpToDate,
    /// The device is pinned; nothing was looked for.
    Pinned,
    /// The update failed before the switch; the running release is unchanged.
    Error,
    /// The pre-switch hook refused the release; nothing was switched.
    Aborted,
    /// The release failed its trial and the device went back.
    RolledBack,
    /// The release failed its trial with nothing to go back to; it stays, marked bad.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpToDate => "up-to-date",
            Outcome::Pinned => "pinned",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl State {
    /// Records how something ended (a trial's end is not an update attempt: its time stays).
    pub fn record(&mut self, outcome: Outcome, error: Option<String>) {
        self.last_result = Some(outcome);
        self.last_error = error;
    }

    /// Records how an update or apply attempt ended, now.
    pub fn record_attempt(&mut self, outcome: Outcome, error: Option<String>) {
        self.record(outcome, error);
        self.last_attempt = Some(now());
    }

    /// Marks `commit` as failed here: it is never installed again (a newer one is).
    pub fn mark_bad(&mut self, commit: &str) {
        if !self.bad_commits.iter().any(|c| c == commit) {
            self.bad_commits.push(commit.to_string());
        }
    }
}

/// The state as it is on disk now (the default before the first update).
pub fn read(config: &Config) -> Result<State> {
    let path = config.layout().state();
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Changes the state durably: reads the newest file, applies `f`, writes it back atomically.
pub fn change<T>(config: &Config, f: impl FnOnce(&mut State) -> T) -> Result<T> {
    let mut state = read(config)?;
    let out = f(&mut state);
    let path = config.layout().state();
    ferry_durable::replace(&path, &serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(out)
}

/// Records how an update or apply attempt ended ([`State::record_attempt`]).
pub fn record_attempt(config: &Config, outcome: Outcome, error: Option<String>) -> Result<()> {
    change(config, |s| s.record_attempt(outcome, error))
}

/// `trust.json`, or, before the first key document was accepted, the image's root keys.
pub fn read_trust(config: &Config) -> Result<TrustState> {
    let path = config.layout().trust();
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrustState::from_roots(&config.roots()?),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `trust.json` atomically (only after a document was accepted).
pub fn save_trust(config: &Config, trust: &TrustState) -> Result<()> {
    let path = config.layout().trust();
    std::fs::create_dir_all(config.layout().root())?;
    ferry_durable::replace(&path, &serde_json::to_vec_pretty(trust)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_keep_the_names_older_agents_wrote() {
        for (o, name) in [
            (Outcome::Ok, "ok"),
            (Outcome::UpToDate, "up-to-date"),
            (Outcome::Pinned, "pinned"),
            (Outcome::Error, "error"),
            (Outcome::Aborted, "aborted"),
            (Outcome::RolledBack, "rolled-back"),
            (Outcome::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Outcome>(&format!("\"{name}\"")).unwrap(), o);
            assert_eq!(o.to_string(), name);
        }
        // A state.json written before the enum existed reads the same.
        let old = r#"{"previous":null,"last_result":"rolled-back","last_error":"x","last_attempt":5}"#;
        let s: State = serde_json::from_str(old).unwrap();
        assert_eq!(s.last_result, Some(Outcome::RolledBack));
    }

    #[test]
    fn a_change_starts_from_what_another_writer_recorded() {
        let dir = tempfile::tempdir().unwrap();
        ferry_store::SecretKey::from_seed(&[1; 32]).save(&dir.path().join("k")).unwrap();
        let key = dir.path().join("k.pub");
        let config = Config::parse(&format!(
            "insecure_http = true\nserver = \"http://127.0.0.1:1\"\nbranch = \"main\"\ntrusted_keys = [{key:?}]\nstate_dir = {:?}\ncurrent_link = {:?}\n",
            dir.path().join("state"),
            dir.path().join("current")
        ))
        .unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        change(&config, |s| s.mark_bad("aa")).unwrap();
        // Another writer (a trial, a rollback) records meanwhile; the next change keeps it.
        change(&config, |s| s.record(Outcome::RolledBack, Some("why".into()))).unwrap();
        change(&config, |s| s.pinned = true).unwrap();
        let s = read(&config).unwrap();
        assert_eq!(s.bad_commits, ["aa"]);
        assert_eq!(s.last_result, Some(Outcome::RolledBack));
        assert_eq!(s.last_attempt, None, "a trial's end is not an attempt");
        assert!(s.pinned);
    }
}
