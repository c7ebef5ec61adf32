//! Switching to a built deployment and trying it (hooks, the durable trial, the switch,
//! the restart, the health checks, rollback). Network updates and bundles share it.

use anyhow::Result;
use ferry_store::{Commit, Id};

use crate::app::{AppOutcome, AppRun, Before, Control, Strategy};
use crate::config::Config;
use crate::crash;
use crate::local::Local;
use crate::state::{self, Outcome};

use super::{collect_garbage, TrialFailed};

/// Switches to the built deployment `head` and tries it: the pre-switch hook, the trial
/// made durable, the atomic switch, the restart, the post-switch hook and the health
/// checks, rolling back on a failure (a [`TrialFailed`] error), with the application
/// stopped, started or handed over by its strategy (`[app]`). Returns true if the release
/// asked for a reboot (its trial goes on after it), and what was done to the application.
/// Network updates and bundles share it.
pub(crate) async fn install(
    config: &Config,
    local: &Local,
    head: Id,
    commit: &Commit,
    current: Option<Id>,
    before: Before,
) -> Result<(bool, Option<AppRun>)> {
    let (new_hex, old_hex) = (head.to_hex(), current.map(|c| c.to_hex()));
    let version = commit.version.to_string();
    let app = Control::of(config);
    let (strategy, strategy_source) = match &app {
        Some(a) => a.strategy_for(&commit.metadata),
        None => (Strategy::default(), None),
    };
    let reboot = commit.metadata.get("reboot").map(String::as_str) == Some("required");
    if let Err(e) = crate::trial::hook(config, crate::trial::Hook::PreSwitch, &new_hex, &version, old_hex.as_deref()) {
        // Nothing was switched; the release is not tried again.
        state::change(config, |s| {
            s.mark_bad(&new_hex);
            s.record(Outcome::Aborted, Some(format!("release {version} ({new_hex}) not installed: {e:#}")));
        })?;
        collect_garbage(local, &current.into_iter().collect::<Vec<_>>())?;
        return Err(TrialFailed(format!("release {version} ({new_hex}) not installed: {e:#}")).into());
    }
    // The application's "not now" holds the switch back (kill-then-download waited before
    // it stopped the application).
    let (vetoed, overruled) = match &app {
        // (A bundle stops nothing before: it waits here too.)
        Some(a) if strategy != Strategy::KillThenDownload || before.stopped_at.is_none() => a.wait_veto(),
        _ => (before.vetoed, before.overruled),
    };
    let run = |outcome, downtime: Option<std::time::Duration>, killed| AppRun {
        strategy,
        outcome,
        strategy_source: strategy_source.clone(),
        downtime_ms: downtime.map(|d| d.as_millis() as u64),
        killed,
        vetoed_seconds: vetoed.as_secs(),
        veto_overruled: overruled,
        at: state::now(),
    };
    // A hand-over starts the new version beside the old before anything switches; one that
    // is not ready in time is stopped, and the old one keeps the device.
    let mut beside = None;
    if let (Some(a), Strategy::HandOver, false) = (&app, strategy, reboot) {
        // With nothing running (a first install), it is an ordinary start.
        let takes_over = a.runs()?;
        if let Err(e) = a.start(&new_hex, takes_over) {
            let why =
                format!("release {version} ({new_hex}) not installed: {e:#}; the running version keeps the device");
            state::change(config, |s| {
                s.mark_bad(&new_hex);
                s.record(Outcome::Aborted, Some(why.clone()));
                s.last_app = Some(run(AppOutcome::NotReady, None, false));
            })?;
            collect_garbage(local, &current.into_iter().collect::<Vec<_>>())?;
            return Err(TrialFailed(why).into());
        }
        beside = Some(a);
    }
    crate::progress::phase(format!("switching to {version}"));
    // The trial is durable before the switch, so a crash after it is finished at restart.
    let switched = crate::trial::begin(config, &new_hex, old_hex.clone())
        .and_then(|()| Ok(ferry_boot::switch_symlink(&config.current_link, &local.deploy_dir().join(head.to_hex()))?));
    if let (Err(_), Some(a)) = (&switched, beside) {
        // Not switched: the new version started beside the old one goes again.
        if let Err(e) = a.stop_only(&new_hex) {
            tracing::warn!(error = %format!("{e:#}"), "stopping the new version after a failed switch");
        }
    }
    switched?;
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
    if reboot {
        // Firmware or kernel changed: the trial continues after the reboot.
        let keep: Vec<Id> = std::iter::once(head).chain(current).collect();
        collect_garbage(local, &keep)?;
        crate::trial::reboot(config)?;
        return Ok((true, None));
    }
    let mut app_run = None;
    match &app {
        None => {
            if let Err(e) = crate::trial::restart(config) {
                // The health checks decide: a deployment that cannot start fails them.
                tracing::warn!(error = %format!("{e:#}"), "restart after the switch failed");
            }
        }
        Some(a) => {
            let done = switch_application(a, strategy, &new_hex, before);
            let (outcome, downtime, killed) = match done {
                Ok((downtime, killed)) => (AppOutcome::Switched, downtime, killed),
                Err(e) => {
                    // The health checks decide, as above.
                    tracing::warn!(error = %format!("{e:#}"), "the application's switch failed");
                    (AppOutcome::StartFailed, None, before.stopped.killed)
                }
            };
            tracing::info!(strategy = strategy.as_str(), ?outcome, downtime_ms = ?downtime.map(|d| d.as_millis()), killed, "the application's switch");
            let r = run(outcome, downtime, killed);
            state::change(config, |s| s.last_app = Some(r.clone()))?;
            app_run = Some(r);
        }
    }
    // After a failed trial the device runs `current` again, or, with nothing to go back
    // to, still the failed release (which the collection must then keep).
    let failed = |reason: String| -> Result<(bool, Option<AppRun>)> {
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
    Ok((false, app_run))
}

/// Takes the application to the new deployment `new` (already switched to) by `strategy`:
/// how long the device was without it (from asking the old one to stop until the new one
/// started, and ready where it says so; for a hand-over, until the old one let go), and
/// whether an old one had to be killed.
fn switch_application(
    app: &Control,
    strategy: Strategy,
    new: &str,
    before: Before,
) -> Result<(Option<std::time::Duration>, bool)> {
    let began = std::time::Instant::now();
    Ok(match strategy {
        Strategy::HandOver => {
            let stopped = app.stop_all_but(Some(new))?;
            app.handed_over(new)?;
            (stopped.any.then(|| began.elapsed()), stopped.killed)
        }
        Strategy::DownloadThenKill => {
            let stopped = app.stop_all_but(None)?;
            app.start(new, false)?;
            (stopped.any.then(|| began.elapsed()), stopped.killed)
        }
        Strategy::KillThenDownload => {
            // Stopped before the download; anything started since goes too.
            let stopped = app.stop_all_but(None)?;
            app.start(new, false)?;
            // (A bundle stops nothing first: then from now.)
            let from = match (before.stopped.any, stopped.any) {
                (true, _) => before.stopped_at,
                (false, true) => Some(began),
                (false, false) => None,
            };
            (from.map(|t| t.elapsed()), before.stopped.killed || stopped.killed)
        }
    })
}
