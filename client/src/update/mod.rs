//! One check-and-update: from whatever the device runs (or nothing) to the branch's head.
//!
//! Order of work, and what a crash at each step leaves (see `crash::STEPS`):
//! 1. branch head (ETag: an unchanged head costs a 304 and nothing else);
//! 2. the commit and its signatures; the signature is verified with a trusted key **before**
//!    the commit is decoded or anything it names is fetched (`commit-stored`);
//! 3. the trees the device lacks, one batched request per tree depth (`tree-stored`);
//! 4. the plan: chunks of files whose object the device lacks, minus chunks it holds;
//! 5. those chunks, in batched requests with bounded concurrency, each verified and staged
//!    as it arrives, so a broken connection costs at most the chunk in flight (`chunk-staged`);
//! 6. the deployment, built beside the current one: an unchanged file is a hardlink to its
//!    existing object, a changed one is built from verified chunks (`object-written`), synced,
//!    then renamed from `deploy/<id>.tmp-*` to `deploy/<id>` (`deployment-complete`);
//! 7. the atomic switch of `current_link` (`switched`), state (`state-saved`), and garbage
//!    collection of older deployments, unreferenced objects and staging (`gc`).
//!
//! A crash before 7 leaves the old deployment current and everything fetched so far reusable;
//! recovery at the next start removes only temporary files. Steps 2–6 are retried on network
//! errors, each retry asking only for what is still missing.

mod accept;
mod assemble;
mod content;
mod fetch;
mod install;
mod plan;
mod source;
mod trees;

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use ferry_store::channel::Quorum;
use ferry_store::{Commit, Id, Signed};

use crate::config::Config;
use crate::http::{Head, Server, Traffic};
use crate::local::Local;
use crate::state::{self, Outcome};

pub use crate::error::Failure::{Refused, TrialFailed};
pub(crate) use accept::MAX_COMMIT;
pub(crate) use assemble::assemble;
pub use assemble::collect_garbage;
pub(crate) use fetch::{stage_chunk, StagingSync};
pub(crate) use install::install;
pub(crate) use plan::{distinct_chunks, Plan};
pub(crate) use trees::MAX_TREES;

use accept::{fetch_commit, follow_channel, refuse_branch_downgrade, resolve};
use source::Network;
pub(crate) use source::{stage, Source};

/// What one `ferryd update` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UpdateSummary {
    pub from: Option<String>,
    pub to: String,
    pub version: String,
    pub up_to_date: bool,
    /// HTTP body bytes received, everything included.
    pub bytes_downloaded: u64,
    /// Of those, the bytes of chunk frames (36-byte header + zstd frame each).
    pub chunk_bytes_downloaded: u64,
    pub chunks_downloaded: u64,
    /// Patches asked for (missing chunks compressed against files the device holds).
    pub patches: u64,
    /// Of the chunks downloaded, those that came in patches.
    pub chunks_patched: u64,
    /// Chunks whose patch could not be used (reference damaged on the device, patch
    /// refused by the server or not decoding) and that were fetched plain instead.
    pub patch_fallbacks: u64,
    /// Of the chunks downloaded, those read from the static copy (`content_url`).
    pub chunks_from_copy: u64,
    /// Why the static copy was left for the server (it was unreachable, lacked the commit's
    /// index, or sent something refused); the server then sent what was still missing.
    pub copy_fallback: Option<String>,
    /// Distinct chunks of the new commit the device already held.
    pub chunks_reused: u64,
    pub requests: u64,
    pub files: u64,
    /// Files of the new deployment that are hardlinks to objects that existed before.
    pub files_reused: u64,
    pub attempts: u32,
    pub seconds: f64,
    /// The branch points at a commit that failed its trial here before: not installed again.
    pub skipped_bad_commit: Option<String>,
    /// The release asked for a reboot (`reboot=required` in its metadata); its trial goes on
    /// after the reboot.
    pub rebooting: bool,
    /// The device is pinned: nothing was looked for or downloaded.
    pub pinned: bool,
    /// What the update did to the application (`[app]`): strategy, downtime, veto.
    pub app: Option<crate::app::AppRun>,
}

/// What an update goes to.
#[derive(Debug, Clone, Copy)]
enum Goal<'a> {
    /// The channel's (or branch's) head, unless the device is pinned.
    Follow,
    /// A developer's choice: a commit id, a version, or a branch; the device is pinned after.
    Deploy(&'a str),
    /// A pinned device downloading the head's missing chunks (kept in staging for later),
    /// without deploying or switching.
    Prefetch,
}

/// Runs one check-and-update.
pub async fn update(config: &Config) -> Result<UpdateSummary> {
    update_to(config, Goal::Follow).await
}

/// On a pinned device: fetches what the channel's (or branch's) head lacks, keeps it in
/// staging, and deploys nothing; unpinned, it is an ordinary update.
pub async fn prefetch(config: &Config) -> Result<UpdateSummary> {
    update_to(config, Goal::Prefetch).await
}

/// Deploys any commit of the repository (by id, version or branch), fetching what is
/// missing, and pins the device to it.
pub async fn deploy(config: &Config, rev: &str) -> Result<UpdateSummary> {
    // A working copy or unlocked copy makes way first: the deployment it replaced is
    // current again, and the deploy goes from there.
    if state::read(config)?.dev.is_some() {
        crate::devboard::off(config)?;
    }
    update_to(config, Goal::Deploy(rev)).await
}

/// After a kill-then-download update failed: the current deployment's application is
/// started again, and that is recorded.
fn restore(config: &Config, app: &crate::app::Control, before: crate::app::Before, stopped_at: Instant) {
    let restored = crate::app::current_deployment(config).and_then(|d| match d {
        // Not started again if it runs: a rollback after the switch restarted it already.
        Some(d) => app.ensure(&d),
        None => Ok(false),
    });
    match restored {
        Ok(true) => {
            let run = crate::app::AppRun {
                strategy: crate::app::Strategy::KillThenDownload,
                outcome: crate::app::AppOutcome::Restored,
                strategy_source: None,
                downtime_ms: Some(stopped_at.elapsed().as_millis() as u64),
                killed: before.stopped.killed,
                vetoed_seconds: before.vetoed.as_secs(),
                veto_overruled: before.overruled,
                at: state::now(),
            };
            tracing::info!("the update failed after the application was stopped; started it again");
            if let Err(e) = state::change(config, |s| s.last_app = Some(run)) {
                tracing::warn!(error = %format!("{e:#}"), "recording the application's restart");
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "starting the application again after a failed update"),
    }
}

async fn update_to(config: &Config, goal: Goal<'_>) -> Result<UpdateSummary> {
    let started = Instant::now();
    crate::progress::phase("checking for updates");
    if config.channel.is_none() {
        tracing::warn!(
            "following branch {} (development mode): any commit the trusted keys signed is installed, without a channel document's expiry, rollout and rollback rules; devices in the field follow a channel",
            config.branch.as_deref().unwrap_or("?")
        );
    }
    let keys = if config.channel.is_some() { Quorum::any(Signed::Commit, &[]) } else { config.commit_quorum()? };
    let hardware = config.hardware_revision()?;
    let local = Local::open(&config.state_dir)?;
    let server = Server::for_device(config)?;
    // A copy that cannot be set up (its CA file unreadable, say) is no reason not to update.
    let (copy, copy_error) = match Server::for_content(config) {
        Ok(copy) => (copy, None),
        Err(e) => {
            let why = format!("cannot use content_url: {e:#}");
            tracing::warn!(error = %why, "fetching everything from the server");
            (None, Some(why))
        }
    };
    // A trial interrupted by a crash or a reboot is finished before anything else.
    match crate::trial::run(config).await? {
        Some(crate::trial::Outcome::RolledBack(reason)) => {
            tracing::warn!(reason, "a pending trial failed; rolled back")
        }
        Some(outcome) => tracing::info!(?outcome, "finished a pending trial"),
        None => {}
    }
    let state = state::read(config)?;
    let bad = state.bad_commits.clone();
    let mut skipped: Option<Id> = None;
    let current = crate::devboard::current_commit(config, &local)?;
    let mut s = UpdateSummary { from: current.map(|c| c.to_hex()), copy_fallback: copy_error, ..Default::default() };
    let mut t = Traffic::default();
    let app = crate::app::Control::of(config);
    // Kill-then-download: what was stopped before the download.
    let mut before = crate::app::Before::default();

    let result = async {
        // With a fleet server: report first; the answer carries the channel's document.
        let checked_in = crate::fleet::check_in(config, &server, &mut t).await?;
        // A fleet server serves the repository to its devices only.
        let server = checked_in.server.clone().unwrap_or_else(|| server.clone());
        let server = match &checked_in.token {
            Some(token) => server.with_token(token),
            None => server,
        };
        if matches!(goal, Goal::Follow) && state.pinned {
            s.pinned = true;
            return Ok(None);
        }
        let _reporter = crate::fleet::Reporter::start(config, &server);
        let mut attempt = 0;
        let (head, commit, files, reused) = loop {
            attempt += 1;
            s.attempts = attempt;
            let r: Result<Option<(Id, Commit, u64, u64)>> = async {
                let (head, target, keys, accepted) = match (goal, &config.channel, &config.branch) {
                    (Goal::Deploy(rev), channel, _) => {
                        let keys = if channel.is_some() {
                            // The commit keys of the newest key document this device accepted.
                            let trust = state::read_trust(config)?.trust()?;
                            if trust.serial == 0 {
                                return Err(Refused(
                                    "this device has not accepted a key document yet: run `ferryd update` once".into(),
                                )
                                .into());
                            }
                            trust.quorum(Signed::Commit)
                        } else {
                            keys.clone()
                        };
                        (resolve(&server, rev, &mut t).await?, None, keys, None)
                    }
                    (Goal::Follow | Goal::Prefetch, ..) => match (&config.channel, &config.branch) {
                        (Some(_), _) => {
                            let hw = hardware.as_deref().ok_or_else(|| anyhow!("no hardware revision configured"))?;
                            let given = checked_in.channel_document.as_deref();
                            let (target, keys, accepted) =
                                follow_channel(config, &server, &local, hw, current, given, &mut t).await?;
                            (target.commit, Some(target), keys, Some(accepted))
                        }
                        (None, Some(branch)) => match server.branch(branch, current, &mut t).await? {
                            Head::Unchanged => return Ok(None),
                            Head::At(id) => (id, None, keys.clone(), None),
                        },
                        (None, None) => bail!("the configuration names no channel or branch"),
                    },
                };
                let deploying = matches!(goal, Goal::Deploy(_));
                if Some(head) == current || (bad.contains(&head.to_hex()) && !deploying) {
                    if let Some(a) = accepted {
                        a.record(config)?;
                    }
                    if Some(head) != current {
                        skipped = Some(head);
                    }
                    return Ok(None);
                }
                let commit = fetch_commit(&server, &local, &head, &keys, &mut t).await?;
                if target.is_none() && !deploying && !config.allow_downgrade {
                    refuse_branch_downgrade(&local, current, &head, &commit)?;
                }
                match (&target, &hardware) {
                    (Some(target), Some(hw)) => {
                        ferry_store::channel::check_target_commit(target, &commit, hw)
                            .map_err(|e| Refused(format!("{e}; refusing it")))?;
                        if let Some(a) = accepted {
                            a.record(config)?;
                        }
                    }
                    (None, Some(hw)) if !commit.hardware.is_empty() && !commit.hardware.contains(hw) => {
                        return Err(Refused(format!(
                            "commit {head} is built for {} only, not for this device's {hw}; refusing it",
                            commit.hardware.join(", ")
                        ))
                        .into());
                    }
                    _ => {}
                }
                // Kill-then-download: the application gives up its memory and disk before
                // the download (once, whatever the retries), after its veto.
                if let (Some(a), false) = (&app, matches!(goal, Goal::Prefetch)) {
                    let (strategy, _) = a.strategy_for(&commit.metadata);
                    if strategy == crate::app::Strategy::KillThenDownload && before.stopped_at.is_none() {
                        let (vetoed, overruled) = a.wait_veto();
                        // Recorded before the stop: one that fails half-way is restored too.
                        before = crate::app::Before {
                            stopped_at: Some(Instant::now()),
                            stopped: crate::app::Stopped { any: true, killed: false },
                            vetoed,
                            overruled,
                        };
                        before.stopped = a.stop_all_but(None)?;
                    }
                }
                let mut network = Network {
                    config,
                    server: &server,
                    copy: copy.as_ref(),
                    head,
                    current,
                    traffic: &mut t,
                    summary: &mut s,
                };
                let p = stage(config, &local, &mut network, &head, &commit, false).await?;
                s.chunks_reused = plan::distinct_chunks(&p).saturating_sub(s.chunks_downloaded);
                if matches!(goal, Goal::Prefetch) && state.pinned {
                    // Everything is staged for when the device is unpinned; nothing deployed.
                    s.pinned = true;
                    return Ok(None);
                }
                let (files, reused) = assemble(&local, &head, &p)?;
                Ok(Some((head, commit, files, reused)))
            }
            .await;
            match r {
                Ok(Some(done)) => break done,
                Ok(None) => return Ok(None),
                Err(e) if !crate::error::retryable(&e) || attempt >= config.retries => return Err(e),
                Err(e) => {
                    let wait = Duration::from_millis(250 << attempt.min(6));
                    tracing::warn!(attempt, error = %format!("{e:#}"), "update attempt failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        (s.rebooting, s.app) = install(config, &local, head, &commit, current, before).await?;
        Ok(Some((head, commit, files, reused)))
    }
    .await;

    s.requests = t.requests;
    s.bytes_downloaded = t.bytes;
    s.seconds = started.elapsed().as_secs_f64();
    s.skipped_bad_commit = skipped.map(|id| id.to_hex());
    let out = match result {
        Ok(Some((head, commit, files, reused))) => {
            s.to = head.to_hex();
            s.version = commit.version.to_string();
            s.files = files;
            s.files_reused = reused;
            if matches!(goal, Goal::Deploy(_)) {
                state::change(config, |st| st.pinned = true)?;
                s.pinned = true;
            }
            Ok(s)
        }
        Ok(None) => {
            let c = current.ok_or_else(|| anyhow!("the server reports no change but the device has no deployment"))?;
            s.up_to_date = true;
            s.to = c.to_hex();
            s.version = local.commit(&c)?.map(|c| c.version.to_string()).unwrap_or_default();
            let deploying = matches!(goal, Goal::Deploy(_));
            let outcome = if s.pinned { Outcome::Pinned } else { Outcome::UpToDate };
            state::change(config, |st| {
                st.record_attempt(outcome, None);
                st.pinned |= deploying;
            })?;
            s.pinned |= deploying;
            Ok(s)
        }
        Err(e) if crate::error::is_failed_trial(&e) => Err(e),
        Err(e) => {
            let _ = state::record_attempt(config, Outcome::Error, Some(format!("{e:#}")));
            Err(e)
        }
    };
    // Kill-then-download that failed: the application runs again (on whatever is current:
    // the old deployment before the switch, the one rolled back to after it).
    if let (Err(_), Some(a), Some(stopped_at)) = (&out, &app, before.stopped_at) {
        restore(config, a, before, stopped_at);
    }
    // Tell the fleet server how it went (not counted in the update's own traffic).
    if config.fleet.is_some() {
        drop(local);
        if let Err(e) = crate::fleet::check_in(config, &server, &mut Traffic::default()).await {
            tracing::warn!(error = %format!("{e:#}"), "reporting the update's outcome to the fleet server");
        }
    }
    out
}
