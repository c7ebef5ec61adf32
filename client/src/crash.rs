//! Crash points for the power-cut tests.
//!
//! `FERRYD_CRASH_AT=<step>:<n>` makes the agent abort (like a SIGKILL: no cleanup, no
//! flushing of anything not yet written) the n-th time it reaches the durable step `<step>`.
//! Without the variable this is one environment lookup per step. Only debug builds (the
//! tests') honour it: a release build, the one devices run, never aborts on request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A durable step: a point after which a power cut must find the written state intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `commit-stored`: the commit, verified, is in the device database.
    CommitStored,
    /// `tree-stored`: a tree, verified, is in the device database.
    TreeStored,
    /// `chunk-staged`: a chunk, verified, is in staging.
    ChunkStaged,
    /// `object-written`: a file object is built and synced.
    ObjectWritten,
    /// `deployment-complete`: a deployment is renamed into place.
    DeploymentComplete,
    /// `switched`: `current_link` points at the new deployment.
    Switched,
    /// `state-saved`: `state.json` records the switch.
    StateSaved,
    /// `gc`: garbage collection is done.
    Gc,
    /// `trial-saved`: `trial.json` is written.
    TrialSaved,
    /// `bootloader-trial`: the bootloader counts the new release's boots.
    BootloaderTrial,
    /// `bootloader-good`: the bootloader stops counting.
    BootloaderGood,
    /// `bootloader-rollback`: the bootloader boots the previous release.
    BootloaderRollback,
    /// `rolled-back`: `current_link` points back.
    RolledBack,
    /// `rollback-recorded`: `state.json` records the rollback.
    RollbackRecorded,
    /// `provision-enrolled`: first boot: the device is enrolled.
    ProvisionEnrolled,
    /// `provision-configured`: first boot: the fleet's configuration is applied.
    ProvisionConfigured,
    /// `provision-initialized`: first boot: the init command ran.
    ProvisionInitialized,
    /// `provision-updated`: first boot: the first update is done.
    ProvisionUpdated,
}

impl Step {
    /// The name `FERRYD_CRASH_AT` and `FERRY-STEP` lines use.
    pub fn name(self) -> &'static str {
        match self {
            Step::CommitStored => "commit-stored",
            Step::TreeStored => "tree-stored",
            Step::ChunkStaged => "chunk-staged",
            Step::ObjectWritten => "object-written",
            Step::DeploymentComplete => "deployment-complete",
            Step::Switched => "switched",
            Step::StateSaved => "state-saved",
            Step::Gc => "gc",
            Step::TrialSaved => "trial-saved",
            Step::BootloaderTrial => "bootloader-trial",
            Step::BootloaderGood => "bootloader-good",
            Step::BootloaderRollback => "bootloader-rollback",
            Step::RolledBack => "rolled-back",
            Step::RollbackRecorded => "rollback-recorded",
            Step::ProvisionEnrolled => "provision-enrolled",
            Step::ProvisionConfigured => "provision-configured",
            Step::ProvisionInitialized => "provision-initialized",
            Step::ProvisionUpdated => "provision-updated",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every durable step, in the order an update reaches them.
pub const STEPS: &[Step] = &[
    Step::CommitStored,
    Step::TreeStored,
    Step::ChunkStaged,
    Step::ObjectWritten,
    Step::DeploymentComplete,
    Step::Switched,
    Step::StateSaved,
    Step::Gc,
];

/// The durable steps of a trial: starting it, marking good, rolling back.
pub const TRIAL_STEPS: &[Step] = &[
    Step::TrialSaved,
    Step::BootloaderTrial,
    Step::Switched,
    Step::StateSaved,
    Step::BootloaderGood,
    Step::BootloaderRollback,
    Step::RolledBack,
    Step::RollbackRecorded,
];

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);
static HANG: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HANG_COUNT: AtomicU64 = AtomicU64::new(0);

/// `<step>:<n>` from the variable `var`, in debug builds only.
fn target(var: &str) -> Option<(String, u64)> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let v = std::env::var(var).ok()?;
    let (name, n) = v.split_once(':')?;
    Some((name.to_string(), n.parse().ok()?))
}

static TRACE: OnceLock<bool> = OnceLock::new();

/// Marks a durable step: with `FERRYD_TRACE_STEPS` set, prints `FERRY-STEP <step>` on stderr
/// (the VM power-cut harness reads where a cut landed from it); with `FERRYD_CRASH_AT`,
/// aborts at the chosen one; with `FERRYD_HANG_AT` (same form), stops there for ever, as an
/// agent stuck in a system call would (the watchdog tests).
pub fn point(step: Step) {
    // Each durable step is progress (the systemd watchdog).
    crate::notify::alive();
    if *TRACE.get_or_init(|| std::env::var_os("FERRYD_TRACE_STEPS").is_some()) {
        eprintln!("FERRY-STEP {step}");
    }
    if let Some((name, n)) = TARGET.get_or_init(|| target("FERRYD_CRASH_AT")) {
        if name == step.name() && COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("ferryd: crash point {step}:{n} reached, aborting");
            std::process::abort();
        }
    }
    if let Some((name, n)) = HANG.get_or_init(|| target("FERRYD_HANG_AT")) {
        if name == step.name() && HANG_COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("ferryd: hang point {step}:{n} reached, stopping here");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}
