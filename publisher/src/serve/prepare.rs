//! The patch cache's background worker: one thread per server that computes, at the
//! server's level and one at a time, the patches a fast first answer left for later, and
//! prepares each new release's patches ahead of its devices (`crate::patches`).
//!
//! Every [`SCAN_INTERVAL`] it catches up with the repository and looks for channel
//! documents and branch heads it has not seen; for each new release (a channel target or a
//! branch head) it queues the patches a device plans from each commit devices may run: the
//! ones the fleet's devices report (at most [`MAX_RUNNING`], the most run first), the
//! channel's targets before this document (when this server saw them), and the release's
//! previous [`PREVIOUS_COMMITS`] commits. The worker holds the server's state only while it
//! works, so it ends once the server is gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_store::Id;

use super::AppState;

/// How often the worker looks for new releases.
pub(super) const SCAN_INTERVAL: Duration = Duration::from_secs(2);
/// How long one wait for queued work lasts (and so how late the worker notices the server
/// is gone).
const WAIT: Duration = Duration::from_millis(250);
/// Previous commits of a release that patches are prepared from.
const PREVIOUS_COMMITS: usize = 2;
/// The most commits the fleet's reports add as sources.
const MAX_RUNNING: usize = 16;

/// The commits the fleet's devices run, the most run first.
pub(super) type Running = Box<dyn Fn() -> Vec<Id> + Send>;

/// Reads what the fleet's devices run from their last reports (without keeping the fleet
/// alive: the worker must not outlive the server).
pub(super) fn fleet_running(fleet: &Arc<crate::fleet_api::FleetState>) -> Running {
    let fleet = Arc::downgrade(fleet);
    Box::new(move || {
        let Some(fs) = fleet.upgrade() else { return Vec::new() };
        let mut counts: HashMap<Id, usize> = HashMap::new();
        match fs.fleet.devices() {
            Ok(devices) => {
                for d in devices {
                    if let Some(id) = d.report.current.as_deref().and_then(|c| c.parse().ok()) {
                        *counts.entry(id).or_default() += 1;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the fleet's devices to prepare patches"),
        }
        let mut by_count: Vec<(Id, usize)> = counts.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by_count.into_iter().take(MAX_RUNNING).map(|(id, _)| id).collect()
    })
}

/// Starts the worker if the patcher needs one.
pub(super) fn start(state: &Arc<AppState>, running: Option<Running>) {
    if !state.patcher.needs_worker() {
        return;
    }
    let weak = Arc::downgrade(state);
    let spawned = std::thread::Builder::new().name("ferry-patches".into()).spawn(move || work(weak, running));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the patch worker: patches are computed when asked for");
    }
}

fn work(state: Weak<AppState>, running: Option<Running>) {
    let mut seen = Seen::default();
    let mut last_scan: Option<Instant> = None;
    loop {
        let Some(s) = state.upgrade() else { return };
        if Arc::strong_count(&s) == 1 {
            // Only this worker holds the server's state: the server is gone.
            return;
        }
        if s.patcher.prepares() && last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL) {
            last_scan = Some(Instant::now());
            if let Err(e) = scan(&s, &mut seen, running.as_ref()) {
                tracing::warn!(error = %format!("{e:#}"), "looking for new releases to prepare patches for");
            }
        }
        s.patcher.work_once(&s.repo, WAIT);
    }
}

/// The heads this worker has seen, and each channel's targets.
#[derive(Default)]
struct Seen {
    heads: HashMap<String, Id>,
    targets: HashMap<String, Vec<Id>>,
}

/// Queues the patches of every release not seen before.
fn scan(s: &Arc<AppState>, seen: &mut Seen, running: Option<&Running>) -> Result<()> {
    super::catch_up(s, Instant::now()).map_err(|e| anyhow::anyhow!("{}", e.1))?;
    let repo = &s.repo;
    // (what names it, the release, commits devices may run before it)
    let mut new: Vec<(String, Id, Vec<Id>)> = Vec::new();
    for (name, head) in repo.channels()? {
        let key = format!("channel {name}");
        if seen.heads.get(&key) == Some(&head) {
            continue;
        }
        let doc = ferry_store::channel::ChannelDoc::decode(&repo.read_envelope(&head)?.document)?;
        let targets: Vec<Id> = doc.targets.iter().map(|t| t.commit).collect();
        let before = seen.targets.insert(key.clone(), targets.clone()).unwrap_or_default();
        seen.heads.insert(key.clone(), head);
        new.extend(targets.into_iter().map(|t| (key.clone(), t, before.clone())));
    }
    for (name, head) in repo.branches()? {
        let key = format!("branch {name}");
        if seen.heads.insert(key.clone(), head) != Some(head) {
            new.push((key, head, Vec::new()));
        }
    }
    if new.is_empty() {
        return Ok(());
    }
    let fleet: Vec<Id> = running.map(|r| r()).unwrap_or_default();
    for (what, release, before) in new {
        let mut sources: Vec<Id> = fleet.iter().chain(&before).copied().collect();
        let mut next = repo.read_commit(&release)?.parent;
        for _ in 0..PREVIOUS_COMMITS {
            let Some(id) = next else { break };
            sources.push(id);
            next = repo.read_commit(&id)?.parent;
        }
        let mut once = HashSet::new();
        sources.retain(|f| *f != release && once.insert(*f) && repo.has_object(f).unwrap_or(false));
        let to = repo.read_commit(&release)?;
        let mut queued = 0u64;
        for from in &sources {
            let from = repo.read_commit(from)?;
            let plan = ferry_delta::plan::planned_patches(repo, &from, &to)?;
            queued += plan.patches.iter().filter(|p| s.patcher.queue(p.request())).count() as u64;
        }
        s.patcher.count_prepared(queued);
        if queued > 0 {
            tracing::info!(%release, %what, sources = sources.len(), patches = queued, "preparing patches for a new release");
        }
    }
    Ok(())
}
