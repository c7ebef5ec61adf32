//! The systemd notification protocol for `ferryd run` (`Type=notify`, `WatchdogSec=` in
//! `ferryd.service`): `READY=1` once the agent runs, `STATUS=` lines as its work changes,
//! and `WATCHDOG=1` while it makes progress, so systemd restarts an agent that hangs (a
//! stuck system call, a deadlock); the restarted agent resumes the update from what it kept.
//!
//! Progress is said where the work moves: the daemon's wait between checks, chunks and
//! objects as they are stored, each round of a trial, each slice of a command's wait. Every
//! one of those waits is bounded, so an agent that stops saying it is alive is stuck.
//! Without `NOTIFY_SOCKET` (not under systemd) every call here is a no-op.
//!
//! What it is not for: the application's readiness during a hand-over (`app`, which listens
//! on a socket of its own).

use std::os::unix::net::UnixDatagram;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Notifier {
    socket: UnixDatagram,
    /// Where to (a path, or an abstract name after `@`).
    to: String,
    /// `WATCHDOG_USEC` for this process: a ping at least every half of it.
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

fn notifier() -> Option<&'static Notifier> {
    NOTIFIER
        .get_or_init(|| {
            let to = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty())?;
            let socket = UnixDatagram::unbound()
                .map_err(|e| tracing::warn!(error = %e, "NOTIFY_SOCKET is set but no socket could be made"))
                .ok()?;
            // The watchdog is ours unless WATCHDOG_PID names another process.
            let ours = std::env::var("WATCHDOG_PID")
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_none_or(|p| p == std::process::id());
            let watchdog = std::env::var("WATCHDOG_USEC")
                .ok()
                .and_then(|u| u.parse::<u64>().ok())
                .filter(|u| *u > 0 && ours)
                .map(Duration::from_micros);
            Some(Notifier { socket, to, watchdog, last_ping: Mutex::new(None) })
        })
        .as_ref()
}

/// Sends one message (lines of `KEY=value`); a failure is logged once and ignored: the
/// agent's work never depends on the service manager hearing it.
fn send(n: &Notifier, message: &str) {
    let sent = match n.to.strip_prefix('@') {
        Some(name) => abstract_send(&n.socket, name, message),
        None => n.socket.send_to(message.as_bytes(), &n.to).map(drop),
    };
    if let Err(e) = sent {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, socket = %n.to, "telling the service manager");
        }
    }
}

fn abstract_send(socket: &UnixDatagram, name: &str, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(message.as_bytes(), &addr).map(drop)
}

/// The agent runs: `READY=1`, with what it does.
pub fn ready(status: &str) {
    if let Some(n) = notifier() {
        send(n, &format!("READY=1\nSTATUS={}\nMAINPID={}", one_line(status), std::process::id()));
        mark_ping(n);
    }
}

/// What the agent does now, for `systemctl status`; also progress.
pub fn status(what: &str) {
    if let Some(n) = notifier() {
        send(n, &format!("STATUS={}", one_line(what)));
        alive();
    }
}

/// The agent makes progress: `WATCHDOG=1`, at most four times per watchdog interval.
pub fn alive() {
    let Some(n) = notifier() else { return };
    let Some(interval) = n.watchdog else { return };
    let mut last = n.last_ping.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|t| t.elapsed() < interval / 4) {
        return;
    }
    *last = Some(Instant::now());
    drop(last);
    send(n, "WATCHDOG=1");
}

fn mark_ping(n: &Notifier) {
    if n.watchdog.is_some() {
        *n.last_ping.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        send(n, "WATCHDOG=1");
    }
}

/// The longest slice of a wait between two looks at the watchdog.
const SLICE: Duration = Duration::from_millis(500);

/// The next slice of a wait that ends at `until`, after saying the agent is alive; None
/// once it has ended.
fn next_slice(until: Instant) -> Option<Duration> {
    alive();
    let left = until.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.min(SLICE))
}

/// Sleeps `d`, saying it is alive throughout (a wait is progress: it ends by itself).
pub fn sleep(d: Duration) {
    let until = Instant::now() + d;
    while let Some(slice) = next_slice(until) {
        std::thread::sleep(slice);
    }
}

/// [`sleep`] on the agent's runtime.
pub async fn sleep_async(d: Duration) {
    let until = Instant::now() + d;
    while let Some(slice) = next_slice(until) {
        tokio::time::sleep(slice).await;
    }
}

/// A status is one line.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect()
}
