//! What the device runs, what ran before, and how the last update went.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::local::Local;
use crate::Config;

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub commit: String,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub current_link: PathBuf,
    /// Where the link points, or `None` before the first deployment.
    pub target: Option<PathBuf>,
    pub current: Option<Deployment>,
    pub previous: Option<Deployment>,
    pub branch: Option<String>,
    pub channel: Option<String>,
    /// The highest channel document serial accepted, and the key document in force.
    pub channel_serial: Option<u64>,
    pub keys_serial: Option<u64>,
    pub server: String,
    pub hardware: Option<String>,
    pub last_result: Option<crate::state::Outcome>,
    pub last_error: Option<String>,
    pub last_attempt: Option<i64>,
    /// Pending work of an interrupted update: chunks downloaded and kept for the next try.
    pub staged_chunks: u64,
    /// The deployment on trial, if any.
    pub trial: Option<ferry_boot::Trial>,
    pub last_rollback: Option<crate::state::Rollback>,
    /// What the last update did to the application (`[app]`): strategy, outcome, downtime.
    pub last_app: Option<crate::app::AppRun>,
    pub bad_commits: Vec<String>,
    /// Fleet updates are held back (`ferryd deploy`, `ferryd pin`).
    pub pinned: bool,
    /// A developer's working copy or an unlocked copy is linked as current.
    pub dev: Option<crate::state::Dev>,
    /// What makes this device less safe than a field device should be (e.g. branch mode).
    pub warnings: Vec<String>,
    /// With a fleet server: the fingerprint of the device token (`fleet::token_fingerprint`).
    pub device_token: Option<String>,
    /// With `[local_ui] tls = true`: the SHA-256 fingerprint of the local page's certificate
    /// (`AB:CD:...`, as browsers show it), or `None` before it is made. A damaged one is a
    /// warning.
    pub local_ui_certificate: Option<String>,
}

/// What in `config` makes a device less safe than one in the field should be; `status` and
/// `doctor` print each.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.insecure_http && config.server.starts_with("http://") {
        out.push(format!(
            "insecure_http is set: {} is plain HTTP, so this device's tokens and configuration cross the network readable and changeable by anyone on the path; use https:// with ca_file",
            config.server
        ));
    }
    if let Some(b) = &config.branch {
        out.push(format!(
            "following branch {b}: development mode, without channel, expiry or rollout checks; field devices follow a channel"
        ));
        if config.allow_downgrade {
            out.push("allow_downgrade is set: the server may hand this device any older signed commit".into());
        }
    }
    out
}

/// The local page's certificate fingerprint (see [`Status::local_ui_certificate`]), and the
/// warning to print when its file is damaged.
fn local_ui_certificate(config: &Config) -> (Option<String>, Option<String>) {
    if !config.local_ui.as_ref().is_some_and(|l| l.tls) {
        return (None, None);
    }
    match crate::local_ui::certificate::load(config) {
        Ok(c) => (c.map(|c| c.fingerprint()), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    }
}

pub fn status(config: &Config) -> Result<Status> {
    status_with(config, local_ui_certificate(config))
}

/// [`status`] with the local page's certificate fingerprint already known: the page, no
/// longer root, cannot read the file that holds the certificate's key.
pub fn status_with_certificate(config: &Config, fingerprint: Option<String>) -> Result<Status> {
    status_with(config, (fingerprint, None))
}

fn status_with(config: &Config, certificate: (Option<String>, Option<String>)) -> Result<Status> {
    let target = ferry_boot::current_target(&config.current_link)?;
    let state = crate::state::read(config)?;
    let trust = crate::state::read_trust(config)?;
    // Versions come from the device database; status still answers (without them) if it
    // cannot be read, e.g. while the very first update is creating it.
    let local = Local::open_read_only(&config.state_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "reading the device database");
        None
    });
    let describe = |hex: &str| -> Deployment {
        let version = local
            .as_ref()
            .and_then(|l| hex.parse().ok().and_then(|id| l.commit(&id).ok().flatten()))
            .map(|c| c.version.to_string());
        Deployment { commit: hex.to_string(), version }
    };
    let current = target
        .as_ref()
        .filter(|t| t.parent() == Some(config.layout().deploy().as_path()))
        .and_then(|t| t.file_name())
        .map(|n| describe(&n.to_string_lossy()));
    let (local_ui_certificate, damaged) = certificate;
    let mut warnings = warnings(config);
    warnings.extend(damaged);
    Ok(Status {
        current_link: config.current_link.clone(),
        target,
        current,
        previous: state.previous.as_deref().map(describe),
        branch: config.branch.clone(),
        channel: config.channel.clone(),
        channel_serial: config.channel.as_ref().and_then(|c| trust.channels.get(c).copied()),
        keys_serial: config.channel.as_ref().map(|_| trust.keys.serial),
        server: config.server.clone(),
        hardware: config.hardware_revision().unwrap_or_else(|e| Some(format!("unknown: {e:#}"))),
        last_result: state.last_result,
        last_error: state.last_error.clone(),
        last_attempt: state.last_attempt,
        trial: ferry_boot::Trial::load(&config.state_dir)?,
        last_rollback: state.last_rollback.clone(),
        last_app: state.last_app.clone(),
        bad_commits: state.bad_commits.clone(),
        pinned: state.pinned,
        dev: state.dev.clone(),
        warnings,
        local_ui_certificate,
        device_token: config.fleet.as_ref().and_then(|_| crate::fleet::token_fingerprint(config)),
        staged_chunks: std::fs::read_dir(config.layout().staging())
            .map(|rd| rd.flatten().filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp")).count() as u64)
            .unwrap_or(0),
    })
}
