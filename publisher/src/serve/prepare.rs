//! The patch cache's background worker: one thread per server that computes, at the
//! server's level and one at a time, the patches a fast first answer left for later, and
//! prepares each new release's tree answers and patches ahead of its devices
//! (`crate::patches`), at the lowest CPU priority.
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
use crate::patches::Queued;

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
    lower_priority();
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

/// The worker's CPU goes to what no request wants: its thread runs at the lowest
/// priority ([`WORKER_NICE`]), so devices being answered, the first one on a release
/// included, are not slowed by the patches prepared for the devices after them.
#[allow(unsafe_code)]
fn lower_priority() {
    // On Linux, PRIO_PROCESS with 0 names the calling thread, not the whole process.
    // SAFETY: setpriority only reads its integer arguments.
    let r = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, WORKER_NICE) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the patch worker's priority");
    }
}

/// The patch worker thread's nice value (the lowest priority).
pub(super) const WORKER_NICE: i32 = 19;

/// What this worker has seen: the heads, each channel's targets by hardware, and the pairs
/// (from, to) whose patches are all queued (or computed).
#[derive(Default)]
struct Seen {
    heads: HashMap<String, Id>,
    targets: HashMap<String, Vec<(String, Id)>>,
    done: HashSet<(Id, Id)>,
}

/// A new head: its name, its id, its releases, and (for a channel) its targets by
/// hardware, remembered once all its releases are queued.
type NewHead = (String, Id, Vec<Release>, Vec<(String, Id)>);

/// One release to prepare: what names it (for the log), the commit, and commits devices ran
/// before it there (the channel's previous target for the same hardware).
struct Release {
    what: String,
    commit: Id,
    before: Vec<Id>,
}

/// Queues the patches of every release not seen before. A channel or release that cannot be
/// read is logged and skipped (the others go on); a head is marked seen only once all its
/// pairs are queued, so a full queue or a failure is tried again at the next scan.
fn scan(s: &Arc<AppState>, seen: &mut Seen, running: Option<&Running>) -> Result<()> {
    super::catch_up(s, Instant::now()).map_err(|e| anyhow::anyhow!("{}", e.1))?;
    let repo = &s.repo;
    let mut heads: Vec<NewHead> = Vec::new();
    for (name, head) in repo.channels()? {
        let key = format!("channel {name}");
        if seen.heads.get(&key) == Some(&head) {
            continue;
        }
        let doc = match repo
            .read_envelope(&head)
            .map_err(anyhow::Error::from)
            .and_then(|e| Ok(ferry_store::channel::ChannelDoc::decode(&e.document)?))
        {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(channel = %name, error = %format!("{e:#}"), "cannot read the channel's document to prepare its patches");
                seen.heads.insert(key, head);
                continue;
            }
        };
        let targets: Vec<(String, Id)> = doc.targets.iter().map(|t| (t.hardware.clone(), t.commit)).collect();
        let before = seen.targets.get(&key).cloned().unwrap_or_default();
        let releases = targets
            .iter()
            .map(|(hw, commit)| Release {
                what: format!("{key} ({hw})"),
                commit: *commit,
                before: before.iter().filter(|(h, _)| h == hw).map(|(_, c)| *c).collect(),
            })
            .collect();
        heads.push((key, head, releases, targets));
    }
    for (name, head) in repo.branches()? {
        let key = format!("branch {name}");
        if seen.heads.get(&key) != Some(&head) {
            heads.push((key.clone(), head, vec![Release { what: key, commit: head, before: Vec::new() }], Vec::new()));
        }
    }
    if heads.is_empty() {
        return Ok(());
    }
    let fleet: Vec<Id> = running.map(|r| r()).unwrap_or_default();
    for (key, head, releases, targets) in heads {
        let mut complete = true;
        for release in releases {
            match prepare(s, seen, &fleet, &release) {
                Ok(true) => {}
                Ok(false) => complete = false,
                Err(e) => {
                    tracing::warn!(release = %release.commit, what = %release.what, error = %format!("{e:#}"), "preparing a release's patches");
                }
            }
        }
        if complete {
            seen.heads.insert(key.clone(), head);
            if !targets.is_empty() {
                seen.targets.insert(key, targets);
            }
        }
    }
    Ok(())
}

/// Queues the patches of one release from each of its sources; false when the queue filled
/// up before all were queued.
fn prepare(s: &AppState, seen: &mut Seen, fleet: &[Id], release: &Release) -> Result<bool> {
    let repo = &s.repo;
    let to = repo.read_commit(&release.commit)?;
    let mut sources: Vec<Id> = fleet.iter().chain(&release.before).copied().collect();
    let mut next = to.parent;
    for _ in 0..PREVIOUS_COMMITS {
        let Some(id) = next else { break };
        sources.push(id);
        next = repo.read_commit(&id)?.parent;
    }
    let mut once = HashSet::new();
    sources.retain(|f| {
        *f != release.commit
            && once.insert(*f)
            && !seen.done.contains(&(*f, release.commit))
            && repo.has_object(f).unwrap_or(false)
    });
    let mut queued = 0u64;
    for from in &sources {
        let from_commit = repo.read_commit(from)?;
        // The trees first: a device plans nothing until they arrive.
        if let Err(e) = s.patcher.prepare_trees(&to.root, &from_commit.root, |level| {
            super::stream::compress_trees(s, to.root, from_commit.root, level)
        }) {
            tracing::warn!(release = %release.commit, from = %from, error = %e.1, "preparing a release's trees");
        }
        let plan = ferry_delta::plan::planned_patches(repo, &from_commit, &to)?;
        let (mut added, mut full) = (0u64, false);
        for p in &plan.patches {
            match s.patcher.queue(p.request()) {
                Queued::Added => added += 1,
                Queued::Already => {}
                Queued::Full => {
                    full = true;
                    break;
                }
            }
        }
        s.patcher.count_prepared(added);
        queued += added;
        if full {
            tracing::info!(release = %release.commit, "the patch queue is full; preparing the rest later");
            return Ok(false);
        }
        seen.done.insert((*from, release.commit));
    }
    if queued > 0 {
        tracing::info!(release = %release.commit, what = %release.what, sources = sources.len(), patches = queued, "preparing patches for a new release");
    }
    Ok(true)
}
