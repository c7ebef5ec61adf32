//! Crash points for the power-cut tests.
//!
//! `FERRYD_CRASH_AT=<step>:<n>` makes the agent abort (like a SIGKILL: no cleanup, no
//! flushing of anything not yet written) the n-th time it reaches the durable step `<step>`.
//! Without the variable this is one environment lookup per step. Only debug builds (the
//! tests') honour it: a release build, the one devices run, never aborts on request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Every durable step, in the order an update reaches them.
pub const STEPS: &[&str] = &[
    "commit-stored",
    "tree-stored",
    "chunk-staged",
    "object-written",
    "deployment-complete",
    "switched",
    "state-saved",
    "gc",
];

/// The durable steps of a trial: starting it, marking good, rolling back.
pub const TRIAL_STEPS: &[&str] = &[
    "trial-saved",
    "bootloader-trial",
    "switched",
    "state-saved",
    "bootloader-good",
    "bootloader-rollback",
    "rolled-back",
    "rollback-recorded",
];

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);

static TRACE: OnceLock<bool> = OnceLock::new();

/// Marks a durable step: with `FERRYD_TRACE_STEPS` set, prints `FERRY-STEP <step>` on stderr
/// (the VM power-cut harness reads where a cut landed from it); with `FERRYD_CRASH_AT`,
/// aborts at the chosen one.
pub fn point(step: &str) {
    if *TRACE.get_or_init(|| std::env::var_os("FERRYD_TRACE_STEPS").is_some()) {
        eprintln!("FERRY-STEP {step}");
    }
    let target = TARGET.get_or_init(|| {
        if !cfg!(debug_assertions) {
            return None;
        }
        let v = std::env::var("FERRYD_CRASH_AT").ok()?;
        let (name, n) = v.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    });
    if let Some((name, n)) = target {
        if name == step && COUNT.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("ferryd: crash point {step}:{n} reached, aborting");
            std::process::abort();
        }
    }
}
