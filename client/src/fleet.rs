//! Enrollment with a fleet server and check-in: the device's side of the device API.
//!
//! What it is for: getting and keeping a device token (`state_dir/device-token`, mode 0600,
//! written durably before it is used; a power cut between enrollment and saving makes the
//! next enrollment a re-enrollment of a known serial, which waits for an operator's
//! `ferry device approve-reenrollment`), and reporting what
//! `ferryd status` knows at every check. The answer carries the newest document of the
//! device's channel, which the update then verifies exactly as one fetched on its own, and
//! the device's configuration, which is verified here before anything is written
//! ([`decide_config`]): once the key document in force names configuration keys, only a
//! configuration document they signed for this device's serial, of a version not below the
//! applied one and not expired, is applied; while it names none, configuration nobody
//! signed is applied only if `[fleet] unsigned_config = true`. A refusal writes nothing but
//! `config-error`, which the next check-in reports. What it is not for: deciding anything
//! else; the server records, the device verifies.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use ferry_api::device::{CheckinAnswer, EnrollRequest, Enrolled, Report, MAX_REPORT_TEXT};
use ferry_store::channel::Envelope;

use crate::config::{Config, Fleet};
use crate::http::{DeviceReply, Server, Traffic};

/// What a check-in brought back.
#[derive(Debug, Default)]
pub struct Answer {
    /// The channel's newest signed document (an envelope), if the device follows one.
    pub channel_document: Option<Vec<u8>>,
    /// The server with the client certificate this check-in's enrollment brought, for the
    /// requests that follow; `None` when nothing changed.
    pub server: Option<Server>,
    /// The device token the check-in used: a fleet server serves the repository only with
    /// it (`Server::with_token`). `None` without a fleet.
    pub token: Option<String>,
}

/// The configuration applied on the device (`state_dir/config.json`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub version: u64,
    pub values: std::collections::BTreeMap<String, String>,
}

fn config_paths(config: &Config) -> [std::path::PathBuf; 3] {
    let l = config.layout();
    [l.config_json(), l.config_env(), l.config_error()]
}

/// The configuration the device runs with, if any was applied.
pub fn applied(config: &Config) -> Result<Option<Applied>> {
    let [json_path, _, _] = config_paths(config);
    match std::fs::read(&json_path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("reading {}", json_path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", json_path.display())),
    }
}

/// `KEY="value"` lines that `sh` and systemd's EnvironmentFile read alike: `\`, `"`, `$` and
/// `` ` `` escaped; values are single lines (control characters are dropped; the server
/// refuses them anyway).
pub(crate) fn env_file(values: &std::collections::BTreeMap<String, String>) -> String {
    let quote = |v: &str| {
        let mut out = String::with_capacity(v.len() + 2);
        for c in v.chars().filter(|c| !c.is_control()) {
            if matches!(c, '\\' | '"' | '$' | '`') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    values.iter().map(|(k, v)| format!("{k}=\"{}\"\n", quote(v))).collect()
}

/// Makes an existing file readable by its owner only.
fn restrict(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} readable by its owner only", path.display()))
        }
        _ => Ok(()),
    }
}

/// Writes a new configuration (env file first, then the JSON that records its version, each
/// atomically) and runs the reload command. A failed reload puts the previous files back and
/// is recorded in `config-error` for the next report; success clears it.
fn apply_config(
    config: &Config,
    fleet: &Fleet,
    version: u64,
    values: std::collections::BTreeMap<String, String>,
) -> Result<()> {
    // The configuration holds the fleet's secrets (site passwords, API keys): readable by
    // the agent's user only, like the device token.
    use ferry_durable::replace_secret as write_atomic;
    let [json_path, env_path, error_path] = config_paths(config);
    if applied(config)?.is_some_and(|a| a.version == version) {
        // Files written by an agent from before they were secret keep their old mode until
        // the next change: tighten them now.
        for path in [&json_path, &env_path] {
            restrict(path)?;
        }
        return Ok(());
    }
    // Keys become shell variable names: refuse anything else rather than write it.
    if let Some(k) = values.keys().find(|k| {
        k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }) {
        bail!("check-in: configuration key {k:?} is not a valid variable name; not applied");
    }
    let old = (std::fs::read(&json_path).ok(), std::fs::read(&env_path).ok());
    let new = Applied { version, values };
    write_atomic(&env_path, env_file(&new.values).as_bytes())?;
    write_atomic(&json_path, &serde_json::to_vec_pretty(&new)?)?;
    let Some(cmd) = &fleet.reload_command else {
        let _ = std::fs::remove_file(&error_path);
        tracing::info!(version, "applied configuration");
        return Ok(());
    };
    match crate::process::run(cmd, std::time::Duration::from_secs(60), None, &[]) {
        Ok(_) => {
            let _ = std::fs::remove_file(&error_path);
            tracing::info!(version, "applied configuration and reloaded");
            Ok(())
        }
        Err(e) => {
            // Back to what ran before: the new values are not half in force.
            for (path, bytes) in [(&env_path, &old.1), (&json_path, &old.0)] {
                match bytes {
                    Some(b) => write_atomic(path, b)?,
                    None => {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            // The service may have half-read the new files: reload it on the old ones.
            let again = crate::process::run(cmd, std::time::Duration::from_secs(60), None, &[]);
            let message = match again {
                Ok(_) => format!("configuration version {version} not applied: {e:#}"),
                Err(e2) => {
                    format!("configuration version {version} not applied: {e:#}; reloading the previous one failed too: {e2:#}")
                }
            };
            write_atomic(&error_path, message.as_bytes())?;
            tracing::warn!(version, error = %format!("{e:#}"), "reloading the new configuration failed; kept the previous one");
            Ok(())
        }
    }
}

/// What to do with the configuration of a check-in answer.
#[derive(Debug, PartialEq, Eq)]
enum ConfigDecision {
    /// Nothing came, or nothing to apply.
    Nothing,
    /// Verified (or unsigned and allowed): write it.
    Apply { version: u64, values: BTreeMap<String, String> },
    /// Refused, with the reason `config-error` records; nothing is written.
    Refuse(String),
}

/// Decides what the answer's configuration is worth on this device (see the module doc).
/// With a channel and a signed document, the key chain is brought up to date first (as an
/// update would), so configuration keys added since the last update are known.
async fn decide_config(
    config: &Config,
    fleet: &Fleet,
    server: &Server,
    answer: &CheckinAnswer,
    t: &mut Traffic,
) -> Result<ConfigDecision> {
    let applied_version = applied(config)?.map_or(0, |a| a.version);
    let trusted = match &config.channel {
        Some(_) => {
            let mut state = crate::state::read_trust(config)?;
            let mut trust = state.trust()?;
            if answer.config_document.is_some() {
                let chain = server.keys(t).await?;
                let chain = match Envelope::decode_all(&chain) {
                    Ok(c) => c,
                    Err(e) => {
                        return Ok(ConfigDecision::Refuse(format!(
                            "the server's key documents do not decode: {e}; configuration not applied"
                        )))
                    }
                };
                match trust.advance_all(&chain) {
                    Ok(newer) if newer != trust => {
                        tracing::info!(serial = newer.serial, "accepted a new key document");
                        state.set_trust(&newer);
                        crate::state::save_trust(config, &state)?;
                        trust = newer;
                    }
                    Ok(_) => {}
                    Err(e) => return Ok(ConfigDecision::Refuse(format!("{e}; configuration not applied"))),
                }
            }
            Some((state, trust))
        }
        None => None,
    };
    let nothing_unsigned = answer.config.as_ref().is_none_or(|c| c.version == 0 && c.values.is_empty());
    match trusted {
        Some((state, trust)) if !trust.config_keys.is_empty() => {
            let Some(text) = &answer.config_document else {
                return Ok(match &answer.config {
                    _ if nothing_unsigned => ConfigDecision::Nothing,
                    Some(c) => ConfigDecision::Refuse(format!(
                        "configuration version {} came unsigned, and key document {} names configuration keys: not applied (the fleet server signs configuration with `ferry serve --config-key`)",
                        c.version, trust.serial
                    )),
                    None => ConfigDecision::Nothing,
                });
            };
            let Ok(bytes) = hex::decode(text) else {
                return Ok(ConfigDecision::Refuse("the configuration document is not hex; not applied".into()));
            };
            let envelope = match Envelope::decode(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    return Ok(ConfigDecision::Refuse(format!(
                        "the configuration document does not decode: {e}; not applied"
                    )))
                }
            };
            let clock = crate::trust::clock()?;
            let floor = state.floor.max(crate::trust::AGENT_FLOOR);
            let serial = fleet.serial()?;
            match ferry_store::device_config::accept_config(&envelope, &trust, &serial, applied_version, clock, floor) {
                Ok(doc) => Ok(ConfigDecision::Apply { version: doc.version, values: doc.values }),
                Err(e) => Ok(ConfigDecision::Refuse(format!("{e}; not applied"))),
            }
        }
        _ => match &answer.config {
            Some(c) if fleet.unsigned_config => {
                Ok(ConfigDecision::Apply { version: c.version, values: c.values.clone() })
            }
            _ if nothing_unsigned => Ok(ConfigDecision::Nothing),
            Some(c) => Ok(ConfigDecision::Refuse(format!(
                "configuration version {} is not signed (the key document in force names no configuration keys), and this device takes unsigned configuration only with `unsigned_config = true` in [fleet]; not applied",
                c.version
            ))),
            None => Ok(ConfigDecision::Nothing),
        },
    }
}

/// Applies the answer's configuration, or records why not in `config-error` (the next
/// check-in reports it) and writes nothing else.
async fn take_config(
    config: &Config,
    fleet: &Fleet,
    server: &Server,
    answer: &CheckinAnswer,
    t: &mut Traffic,
) -> Result<()> {
    match decide_config(config, fleet, server, answer, t).await? {
        ConfigDecision::Nothing => Ok(()),
        ConfigDecision::Apply { version, values } => apply_config(config, fleet, version, values),
        ConfigDecision::Refuse(why) => {
            tracing::warn!(reason = %why, "refused the fleet's configuration");
            let [_, _, error_path] = config_paths(config);
            std::fs::create_dir_all(&config.state_dir)?;
            ferry_durable::replace_secret(&error_path, why.as_bytes())
                .with_context(|| format!("writing {}", error_path.display()))
        }
    }
}

/// The running update's size for progress reports: chunks to fetch, and chunks already in
/// staging when it started (0, 0 when no update runs).
static PROGRESS: std::sync::Mutex<(u64, u64)> = std::sync::Mutex::new((0, 0));

/// Tells progress reports how many chunks the running update fetches (`missing`) and how
/// many were staged before it began; `(0, 0)` when it is over.
pub fn set_progress_total(missing: u64, staged_before: u64) {
    *PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = (missing, staged_before);
}

/// Chunks this process staged or wrote in place since it started: what progress counts (a
/// chunk written into the object being built leaves no file in staging to count).
static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts one chunk received, verified and kept (staged or written in place).
pub(crate) fn chunk_received() {
    RECEIVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How far the running update's download is, in percent, from what this process received.
pub(crate) fn download_percent() -> Option<u8> {
    progress(0)
}

fn progress(staged_now: u64) -> Option<u8> {
    let (missing, before) = *PROGRESS.lock().unwrap_or_else(|e| e.into_inner());
    if missing == 0 {
        return None;
    }
    // Chunks received by this process, plus those staged as files before it began.
    let received = RECEIVED.load(std::sync::atomic::Ordering::Relaxed).max(staged_now.saturating_sub(before));
    Some((received.saturating_mul(100) / missing).min(99) as u8)
}

/// Checks in every `[fleet] progress_interval` seconds while an update runs, so the fleet
/// sees its progress; stops when dropped.
#[derive(Debug)]
pub struct Reporter(Option<tokio::task::JoinHandle<()>>);

impl Reporter {
    pub fn start(config: &Config, server: &Server) -> Reporter {
        let Some(fleet) = &config.fleet else { return Reporter(None) };
        let (config, server, every) = (config.clone(), server.clone(), fleet.progress_interval.max(1));
        Reporter(Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(every)).await;
                if let Err(e) = check_in(&config, &server, &mut Traffic::default()).await {
                    tracing::debug!(error = %format!("{e:#}"), "progress report");
                }
            }
        })))
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
        set_progress_total(0, 0);
    }
}

fn token_path(config: &Config) -> std::path::PathBuf {
    config.layout().device_token()
}

/// The fingerprint of this device's token (the first 12 hex digits of its BLAKE3 hash), as
/// the fleet's `ferry device show` names a re-enrollment request: an operator approves the
/// request this device made, not a newer one made by someone else. `None` before enrolling.
pub fn token_fingerprint(config: &Config) -> Option<String> {
    let token = std::fs::read_to_string(token_path(config)).ok()?;
    let mut hex = ferry_store::Id::of(token.trim().as_bytes()).to_hex();
    hex.truncate(12);
    Some(hex)
}

async fn enroll(config: &Config, fleet: &Fleet, server: &Server, t: &mut Traffic) -> Result<String> {
    let serial = fleet.serial()?;
    let hardware = config.hardware_revision()?.ok_or_else(|| anyhow!("no hardware revision configured"))?;
    // Over HTTPS the device asks for a client certificate for its own key (a server without
    // a client CA ignores the request); over plain HTTP a certificate would protect nothing.
    let csr = if config.server.starts_with("https://") {
        Some(crate::tls::certificate_request(config, &serial)?)
    } else {
        None
    };
    let body = EnrollRequest { csr, enrollment_token: fleet.enrollment_token()?, hardware, serial: serial.clone() };
    let enrolled: Enrolled = match server.device_call("enroll", None, &body, t).await {
        Ok(DeviceReply::Answer(a)) => a,
        Ok(DeviceReply::Refused { status, reason }) => bail!(
            "enrolling {serial}: the fleet server answered {status}: {}",
            reason.as_deref().unwrap_or("no reason given")
        ),
        Err(e) if e.root_cause().is::<serde_json::Error>() => {
            bail!("enrolling {serial}: no device token in the answer")
        }
        Err(e) => return Err(e),
    };
    let token = enrolled.device_token.as_str();
    if !token.starts_with("fd_") || token.len() > 256 {
        bail!("enrolling {serial}: the answer's device token is malformed");
    }
    std::fs::create_dir_all(&config.state_dir)?;
    // The certificate before the token: a device holding a token holds the certificate the
    // same enrollment issued (a power cut between them enrolls again).
    crate::tls::save_certificate(config, enrolled.certificate.as_deref())
        .with_context(|| format!("enrolling {serial}: the client certificate in the answer"))?;
    ferry_durable::replace_secret(&token_path(config), token.as_bytes())
        .with_context(|| format!("saving {}", token_path(config).display()))?;
    tracing::info!(serial, state = enrolled.state.map_or("unknown", |s| s.as_str()), "enrolled with the fleet server");
    Ok(token.to_string())
}

/// Enrolls unless the device holds a token already (`ferryd provision`'s first step).
/// Returns true if it enrolled now.
pub async fn ensure_enrolled(config: &Config, server: &Server, t: &mut Traffic) -> Result<bool> {
    let Some(fleet) = &config.fleet else { return Ok(false) };
    if token_path(config).exists() {
        return Ok(false);
    }
    enroll(config, fleet, server, t).await?;
    Ok(true)
}

/// The report: what `ferryd status` says.
fn report(config: &Config) -> Result<Report> {
    let s = crate::status::status(config)?;
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split('.').next().and_then(|n| n.parse::<u64>().ok()));
    let free = crate::layout::free_bytes(&config.state_dir).ok();
    let trial =
        s.trial
            .as_ref()
            .map(|t| if t.marked_good { "good".to_string() } else { format!("on trial ({} boots)", t.boots) });
    let clip = |v: Option<String>, max: usize| {
        v.map(|mut v| {
            if v.len() > max {
                let mut end = max;
                while !v.is_char_boundary(end) {
                    end -= 1;
                }
                v.truncate(end);
            }
            v
        })
    };
    Ok(Report {
        agent_version: Some(env!("CARGO_PKG_VERSION").into()),
        app: s.last_app.clone(),
        channel: s.channel.clone(),
        config_error: clip(std::fs::read_to_string(config.layout().config_error()).ok(), MAX_REPORT_TEXT),
        config_version: applied(config)?.map(|a| a.version),
        current: s.current.as_ref().map(|d| d.commit.clone()),
        current_version: s.current.as_ref().and_then(|d| d.version.clone()),
        dev: Some(s.dev.is_some()),
        free_bytes: free,
        last_error: clip(s.last_error, MAX_REPORT_TEXT),
        last_result: s.last_result.map(|o| o.as_str().to_string()),
        pinned: Some(s.pinned),
        previous: s.previous.as_ref().map(|d| d.commit.clone()),
        progress: progress(s.staged_chunks),
        trial: Some(trial.unwrap_or_else(|| "none".into())),
        uptime,
    })
}

/// Checks in (enrolling first if the device has no token, or its token was replaced).
pub async fn check_in(config: &Config, server: &Server, t: &mut Traffic) -> Result<Answer> {
    let Some(fleet) = &config.fleet else { return Ok(Answer::default()) };
    let report = report(config)?;
    let mut token_was_there = true;
    let mut token = match std::fs::read_to_string(token_path(config)) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            token_was_there = false;
            enroll(config, fleet, server, t).await?
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", token_path(config).display())),
    };
    let mut enrolled_now = false;
    // After an enrollment the connection must present the certificate it brought.
    let mut fresh: Option<Server> = None;
    if !token_was_there {
        fresh = Some(Server::for_device(config)?);
    }
    loop {
        let current = fresh.as_ref().unwrap_or(server);
        let (status, reason) = match current.device_call::<CheckinAnswer>("checkin", Some(&token), &report, t).await? {
            DeviceReply::Answer(v) => {
                let channel_document = match &v.channel_document {
                    Some(h) => Some(hex::decode(h).map_err(|_| anyhow!("check-in: the channel document is not hex"))?),
                    None => None,
                };
                take_config(config, fleet, &current.clone().with_token(&token), &v, t).await?;
                return Ok(Answer { channel_document, token: Some(token), server: fresh });
            }
            DeviceReply::Refused { status, reason } => {
                (status, reason.unwrap_or_else(|| "no reason given".to_string()))
            }
        };
        match status.as_u16() {
            401 if !enrolled_now => {
                tracing::warn!(reason, "the fleet server does not know this device's token; enrolling again");
                token = enroll(config, fleet, server, t).await?;
                fresh = Some(Server::for_device(config)?);
                enrolled_now = true;
            }
            // The fleet's own words for a device it does not let in (fleet/tokens.rs); other
            // 403s (a client certificate refused, a proxy) are errors like the rest.
            403 if reason.contains("waiting for approval")
                || reason.contains("waiting for an operator")
                || reason.ends_with("is revoked") =>
            {
                return Err(crate::error::Failure::NotAccepted(format!(
                    "the fleet server does not accept this device: {reason} (a pending device waits for `ferry device accept`)"
                ))
                .into())
            }
            _ => bail!("the fleet server refused this device's check-in ({status}): {reason}"),
        }
    }
}
