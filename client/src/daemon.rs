//! `ferryd run`: the agent as a service. It provisions a device flashed from an image
//! first (retrying until that succeeds), then checks for updates every `poll_interval`
//! (with ±10% jitter, so a fleet does not check in in lockstep), backing off from 5 s to the
//! poll interval after failures. It never returns on its own.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Result;

use crate::Config;

/// Runs the agent until the process is stopped. With `json`, one line per check on stdout
/// (an update's summary, or `{"error", "retry_in_seconds"}`).
pub fn run(config: &Config, json: bool) -> Result<Infallible> {
    let rt = crate::runtime()?;
    // Ready at once (under systemd, Type=notify): provisioning and the first update may take
    // longer than a start timeout; the watchdog's pings say it makes progress meanwhile.
    crate::notify::ready(if config.provision.is_some() { "provisioning" } else { "starting" });
    let mut backoff = Duration::from_secs(5);
    // With --json, a line per check. A supervisor that stops reading must not stop
    // the updates: a failed write is logged and the daemon goes on.
    let report = |v: serde_json::Value| {
        if json {
            if let Err(e) = json_line(&v) {
                tracing::warn!(error = %format!("{e:#}"), "writing a --json line");
            }
        }
    };
    let failed = |e: String, retry_in: Duration| {
        report(serde_json::json!({ "error": e, "retry_in_seconds": retry_in.as_secs() }));
    };
    // A device flashed from an image provisions first (a no-op once done), retrying
    // until it succeeds: the init command runs before any other update.
    if config.provision.is_some() {
        loop {
            match rt.block_on(crate::provision::provision(config)) {
                Ok(s) => {
                    if !s.already_provisioned {
                        tracing::info!(ran = ?s.ran, "provisioned");
                    }
                    // Provisioning's own first update is the first check.
                    if let Some(u) = &s.update {
                        report(serde_json::to_value(u)?);
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "provisioning failed");
                    failed(format!("provisioning: {e:#}"), backoff);
                    crate::notify::status(&format!("provisioning failed; again in {} s: {e:#}", backoff.as_secs()));
                    crate::notify::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(config.poll_interval.max(5)));
                }
            }
        }
        backoff = Duration::from_secs(5);
    }
    // The application runs from the current deployment: after a reboot, or a crash in the
    // middle of a switch, what `[app]` started is started again (and nothing else runs).
    if let Some(app) = crate::app::Control::of(config) {
        let ensured = crate::app::current_deployment(config).and_then(|d| match d {
            Some(d) => app.ensure(&d).map(drop),
            None => Ok(()),
        });
        if let Err(e) = ensured {
            tracing::warn!(error = %format!("{e:#}"), "starting the application");
        }
    }
    // An update's own trial runs inside it; one left by a reboot runs first of all.
    loop {
        crate::notify::status("checking for updates");
        let wait = match rt.block_on(crate::update::update(config)) {
            Ok(s) => {
                if !s.up_to_date {
                    tracing::info!(to = %s.to, version = %s.version, bytes = s.bytes_downloaded, "updated");
                }
                report(serde_json::to_value(&s)?);
                backoff = Duration::from_secs(5);
                let base = config.poll_interval as f64;
                // ±10% jitter so a fleet does not check in in lockstep.
                let jitter = (std::process::id() as f64 * 0.618 + crate::state::now() as f64).fract() * 0.2 - 0.1;
                let wait = Duration::from_secs_f64(base * (1.0 + jitter));
                crate::notify::status(&format!("runs {}; next check in {} s", s.version, wait.as_secs()));
                wait
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "update failed");
                failed(format!("{e:#}"), backoff);
                crate::notify::status(&format!("update failed; again in {} s: {e:#}", backoff.as_secs()));
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(config.poll_interval));
                w
            }
        };
        crate::notify::sleep(wait);
    }
}

/// One line of `ferryd run --json`, flushed at once so a supervisor reading a pipe sees
/// each check as it ends.
fn json_line(v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}
