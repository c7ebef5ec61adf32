//! What a person at a terminal, or a log, sees while `ferryd update`, `deploy` and `apply`
//! run: the step the update is at (checking, fetching trees, downloading, assembling,
//! switching, the trial) and, while chunks arrive, how far the download is.
//!
//! The update's code says where it is ([`phase`]) and counts what arrives ([`received`]);
//! a [`Display`] started by the command prints it from a thread of its own, so a step that
//! blocks (assembly, a trial's wait) still shows. At a terminal it is one line redrawn in
//! place; otherwise a line as each step begins, and one per tenth of the download at most
//! every two seconds, so a log holds a few lines, not a stream.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The step the running update is at, if one runs, and whether it counts chunks.
static PHASE: Mutex<Option<(String, bool)>> = Mutex::new(None);
/// Bytes of content received by this process (answers' bodies).
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Whether a [`Display`] shows progress, and how.
static MODE: AtomicU8 = AtomicU8::new(OFF);
const OFF: u8 = 0;
const BAR: u8 = 1;
const LINES: u8 = 2;

/// How often the display looks.
const TICK: Duration = Duration::from_millis(250);
/// Off a terminal, the least time between two download lines.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// The update is at `what` now ("assembling the deployment", "trial: healthy for 3 of 60 s").
pub fn phase(what: impl Into<String>) {
    set(what.into(), false);
}

/// The update is at `what`, receiving the chunks it lacks: the line says how far.
pub fn counting(what: impl Into<String>) {
    set(what.into(), true);
}

/// The step a phase's text names (the words before a colon).
fn step(text: &str) -> &str {
    text.split(':').next().unwrap_or(text)
}

fn set(what: String, counts: bool) {
    let mut phase = PHASE.lock().unwrap_or_else(|e| e.into_inner());
    let new_step = phase.as_ref().map(|(w, _)| step(w)) != Some(step(&what));
    // Off a terminal each step is a line of its own, said when it begins.
    if new_step && MODE.load(Ordering::Relaxed) == LINES {
        eprintln!("{what}");
    }
    *phase = Some((what, counts));
}

/// `n` more bytes of an answer arrived.
pub(crate) fn received(n: u64) {
    BYTES.fetch_add(n, Ordering::Relaxed);
}

/// The line that says where the update is, if it is anywhere yet.
fn line() -> Option<(String, Option<u8>)> {
    let (phase, counts) = PHASE.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    if !counts {
        return Some((phase, None));
    }
    let bytes = BYTES.load(Ordering::Relaxed);
    let received =
        if bytes > 0 { format!(", {:.1} MiB received", bytes as f64 / (1 << 20) as f64) } else { String::new() };
    Some(match crate::fleet::download_percent() {
        Some(p) => (format!("{phase}: {p}% of the chunks{received}"), Some(p)),
        None => (format!("{phase}{received}"), None),
    })
}

/// Prints the update's progress on stderr while it lives.
#[derive(Debug)]
pub struct Display {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    /// Starts printing (a bar at a terminal, lines otherwise).
    pub fn start() -> Display {
        let stop = Arc::new(AtomicBool::new(false));
        let terminal = std::io::stderr().is_terminal();
        MODE.store(if terminal { BAR } else { LINES }, Ordering::Relaxed);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || show(&flag, terminal))
            .map_err(|e| tracing::debug!(error = %e, "no progress display"))
            .ok();
        Display { stop, thread }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *PHASE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        MODE.store(OFF, Ordering::Relaxed);
    }
}

fn show(stop: &AtomicBool, terminal: bool) {
    let mut shown: Option<String> = None;
    let mut last_tenth: Option<u8> = None;
    let mut last_line = Instant::now() - LINE_EVERY;
    let mut err = std::io::stderr();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let Some((text, percent)) = line() else { continue };
        if terminal {
            if shown.as_deref() != Some(text.as_str()) {
                let _ = write!(err, "\r\x1b[2K{text}");
                let _ = err.flush();
                shown = Some(text);
            }
            continue;
        }
        // The steps' own lines are said by `set`; here, the download's tenths.
        let tenth = percent.map(|p| p / 10);
        if tenth.is_some() && tenth != last_tenth && last_line.elapsed() >= LINE_EVERY {
            let _ = writeln!(err, "{text}");
            last_tenth = tenth;
            last_line = Instant::now();
        }
    }
    if terminal && shown.is_some() {
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
