//! Switching to a built deployment and trying it (hooks, the durable trial, the switch,
//! the restart, the health checks, rollback). Network updates and bundles share it.

use anyhow::Result;
use ferry_store::{Commit, Id};

use crate::config::Config;
use crate::crash;
use crate::local::Local;
use crate::state::{self, Outcome};

use super::{collect_garbage, TrialFailed};

/// Switches to the built deployment `head` and tries it: the pre-switch hook, the trial
/// made durable, the atomic switch, the restart, the post-switch hook and the health
/// checks, rolling back on a failure (a [`TrialFailed`] error). Returns true if the release
/// asked for a reboot (its trial goes on after it). Network updates and bundles share it.
pub(crate) async fn install(
    config: &Config,
    local: &Local,
    head: Id,
    commit: &Commit,
    current: Option<Id>,
) -> Result<bool> {
    let (new_hex, old_hex) = (head.to_hex(), current.map(|c| c.to_hex()));
    let version = commit.version.to_string();
    if let Err(e) = crate::trial::hook(config, crate::trial::Hook::PreSwitch, &new_hex, &version, old_hex.as_deref()) {
        // Nothing was switched; the release is not tried again.
        state::change(config, |s| {
            s.mark_bad(&new_hex);
            s.record(Outcome::Aborted, Some(format!("release {version} ({new_hex}) not installed: {e:#}")));
        })?;
        collect_garbage(local, &current.into_iter().collect::<Vec<_>>())?;
        return Err(TrialFailed(format!("release {version} ({new_hex}) not installed: {e:#}")).into());
    }
    // The trial is durable before the switch, so a crash after it is finished at restart.
    crate::trial::begin(config, &new_hex, old_hex.clone())?;
    ferry_boot::switch_symlink(&config.current_link, &local.deploy_dir().join(head.to_hex()))?;
    crash::point(crash::Step::Switched);
    crate::trial::mark_switched(config)?;
    // An unlocked copy the switch replaced goes (unless it is to be kept).
    if let Ok(st) = state::read(config) {
        crate::devboard::drop_unlocked(&st, config)?;
    }
    state::change(config, |s| {
        s.dev = None;
        s.previous = current.map(|c| c.to_hex());
        s.record_attempt(Outcome::Ok, None);
    })?;
    crash::point(crash::Step::StateSaved);
    if commit.metadata.get("reboot").map(String::as_str) == Some("required") {
        // Firmware or kernel changed: the trial continues after the reboot.
        let keep: Vec<Id> = std::iter::once(head).chain(current).collect();
        collect_garbage(local, &keep)?;
        crate::trial::reboot(config)?;
        return Ok(true);
    }
    if let Err(e) = crate::trial::restart(config) {
        // The health checks decide: a deployment that cannot start fails them.
        tracing::warn!(error = %format!("{e:#}"), "restart after the switch failed");
    }
    // After a failed trial the device runs `current` again, or, with nothing to go back
    // to, still the failed release (which the collection must then keep).
    let failed = |reason: String| -> Result<bool> {
        collect_garbage(local, &[current.unwrap_or(head)])?;
        Err(TrialFailed(match current {
            Some(c) => format!("release {version} ({head}) failed its trial and was rolled back to {c}: {reason}"),
            None => format!(
                "release {version} ({head}) failed its trial; there is no earlier deployment to roll back to, so it stays, marked bad, until a newer release: {reason}"
            ),
        })
        .into())
    };
    if let Err(e) = crate::trial::hook(config, crate::trial::Hook::PostSwitch, &new_hex, &version, old_hex.as_deref()) {
        let reason = format!("{e:#}");
        crate::trial::rollback(config, &reason)?;
        return failed(reason);
    }
    if let Some(crate::trial::Outcome::RolledBack(reason)) = crate::trial::run(config).await? {
        return failed(reason);
    }
    let keep: Vec<Id> = std::iter::once(head).chain(current).collect();
    collect_garbage(local, &keep)?;
    Ok(false)
}
