//! The power-cut runs: one update without a cut (for its length, its durable steps and its
//! downloads), then each cut on a fresh copy of the disk served with a volatile write cache
//! (`nbd.rs`), and the boot after it checked (`check_after_cut`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ferry_fixtures::rng::Rng;

use crate::nbd;
use crate::qemu::{boot, boot_drive, CutAt, Start};
use crate::report::{self, Cut};
use crate::rig::Rig;

/// What a power-cut run does.
#[derive(Debug)]
pub struct Plan {
    /// Power cuts to make.
    pub cuts: u32,
    /// Seed of the cut times and of which unflushed writes a cut loses.
    pub seed: u64,
    /// Where to write the report too.
    pub report: Option<PathBuf>,
}

/// Runs the cuts and reports them; whether every one survived.
pub fn run(rig: &Rig, plan: &Plan) -> Result<bool> {
    let Plan { cuts, seed, .. } = *plan;
    let commits = &rig.commits;
    rig.promote(commits[1])?;
    let (v1, v2) = (commits[0].to_hex(), commits[1].to_hex());

    // Calibration: one update without a cut, for its length and its downloads.
    let disk = rig.work.join("disk.img");
    std::fs::copy(&rig.base, &disk)?;
    let started = Instant::now();
    let start = Start::Direct { kernel: &rig.vmlinuz, initrd: &rig.initrd };
    let calm = boot(start, &disk, None)?;
    let full = calm.json("update").context("the uncut update")?;
    if full["to"] != v2.as_str()
        || calm.markers.get("fsck-after").map(String::as_str) != Some("ok")
        || calm.markers.get("app-after").map(String::as_str) != Some("1.2.0")
    {
        bail!("the uncut update did not reach release 2 cleanly; console:\n{}", calm.log);
    }
    // The device ran release 1's deployment as its root file system (ferry-prepare-root).
    let root = calm.root_deployment().context("the uncut boot")?;
    if root != v1 {
        bail!("the uncut boot ran deployment {root} as its root, not release 1's {v1}");
    }
    let window = calm.update_seconds.ok_or_else(|| anyhow!("no update time"))?;
    let calm_steps = calm.steps.len();
    let needed = full["chunks_downloaded"].as_u64().unwrap_or(0);
    eprintln!(
        "uncut boot: {:.1} s in all, update {:.1} s, {} chunks ({} bytes) downloaded; cutting {cuts} times (seed {seed})",
        started.elapsed().as_secs_f64(),
        window,
        needed,
        full["bytes_downloaded"]
    );

    let mut rng = Rng::new(seed);
    let mut results = Vec::new();
    for i in 0..cuts {
        std::fs::copy(&rig.base, &disk)?;
        // Every other cut is aimed at a random durable step, a few milliseconds after it;
        // the others fall at a random time from the update's first request to after its
        // trial (the window plus a margin).
        let aim = if i % 2 == 1 && calm_steps > 0 {
            let n = 1 + rng.below(calm_steps as u64) as usize;
            CutAt::Step { n, delay: Duration::from_secs_f64(rng.next_f64() * 0.03) }
        } else {
            CutAt::Time(Duration::from_secs_f64(rng.next_f64() * window * 1.05))
        };
        // The disk under the cut has a volatile write cache (nbd.rs): at the cut, each write
        // not yet flushed is lost or kept at random.
        let cache = nbd::Disk::open(&disk)?;
        let port = nbd::serve(cache.clone())?;
        let cut = boot_drive(start, &format!("file=nbd://127.0.0.1:{port},format=raw,if=virtio"), Some(aim))?;
        let at = cut.cut_after;
        let aimed = match aim {
            CutAt::Time(_) => "at a random time".to_string(),
            CutAt::Step { n, delay } => format!("{} ms after step {n}", delay.as_millis()),
        };
        cache.cut(|| rng.next_f64() < 0.5)?;
        let lost = *cache.stats.lock().unwrap_or_else(|e| e.into_inner());
        drop(cache);
        let step = match (cut.killed, cut.steps.last()) {
            (false, _) => "not cut: the update finished first".to_string(),
            (true, None) => "before the first durable step".to_string(),
            (true, Some(s)) => format!("after {s} (step {})", cut.steps.len()),
        };
        let step = format!("{step}, aimed {aimed}");
        let step = if cut.killed {
            format!(
                "{step}; {} of {} unflushed writes lost ({} writes, {} flushes)",
                lost.lost_at_cut, lost.pending_at_cut, lost.writes, lost.flushes
            )
        } else {
            step
        };
        let outcome = check_after_cut(start, &disk, &v1, &v2, needed);
        results.push(Cut::record(i, cuts, at, step, outcome));
    }
    report::publish(&results, report::Run { seed, window, needed }, plan.report.as_deref())
}

/// Boots the cut disk again and checks what the issue asks: it boots, every deployment is
/// complete, `current` is release 1 or 2, and the update then reaches release 2 without
/// downloading more than what was not durably staged.
fn check_after_cut(start: Start<'_>, disk: &Path, v1: &str, v2: &str, needed: u64) -> Result<String> {
    let b = boot(start, disk, None)?;
    if !b.markers.contains_key("up") {
        bail!("the device did not boot; console:\n{}", b.log);
    }
    match b.markers.get("fsck-before").map(String::as_str) {
        Some("ok") => {}
        other => bail!("fsck after the cut: {}", other.unwrap_or("not run")),
    }
    let before = b.json("status-before")?;
    let current = before["current"]["commit"].as_str().unwrap_or("none");
    if current != v1 && current != v2 {
        bail!("after the cut the device runs {current}, neither release 1 nor 2");
    }
    // Its root file system is the deployment the current link named at boot: release 1's,
    // or release 2's when the cut came after the switch.
    let root = b.root_deployment()?;
    if root != current {
        bail!("after the cut the device's root file system is deployment {root}, but it runs {current}");
    }
    let staged = before["staged_chunks"].as_u64().unwrap_or(0);
    let update = match b.json("update") {
        Ok(u) => u,
        Err(_) => {
            bail!("the update after the cut failed: {}", b.markers.get("update-failed").cloned().unwrap_or_default())
        }
    };
    if update["to"] != v2 {
        bail!("the update after the cut went to {}, not release 2", update["to"]);
    }
    match b.markers.get("fsck-after").map(String::as_str) {
        Some("ok") => {}
        other => bail!("fsck after the update: {}", other.unwrap_or("not run")),
    }
    // The application running at the end is release 2's (restarted after the switch).
    match b.markers.get("app-after").map(String::as_str) {
        Some("1.2.0") => {}
        other => bail!("after the update the application running is {:?}, not release 2's", other.unwrap_or("none")),
    }
    let downloaded = update["chunks_downloaded"].as_u64().unwrap_or(0);
    // Staged chunk files whose bytes the cut lost (the agent verifies them, discards them
    // and says so) were not durably stored: they may be downloaded again.
    let damaged = b.log.matches("discarding a damaged staged chunk").count() as u64;
    let durable = staged.saturating_sub(damaged);
    if current == v1 && downloaded + durable.min(needed) > needed {
        bail!(
            "the update downloaded {downloaded} chunks although {durable} of the {needed} it needs were staged intact before the cut"
        );
    }
    Ok(format!(
        "ran {} after the cut, {staged} chunks staged{}, then {downloaded} downloaded",
        if current == v1 { "release 1" } else { "release 2" },
        if damaged > 0 { format!(" ({damaged} of them damaged by the cut)") } else { String::new() }
    ))
}
