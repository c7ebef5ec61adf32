//! Running the commands a device's configuration names (hooks, health checks, restart,
//! reboot, reload, init, serial and hardware commands): `sh -c`, bounded in time, with their
//! output drained while they run.
//!
//! A child whose output is not read blocks once the pipe's buffer (64 KiB on Linux) is full,
//! and would then "time out" although it did nothing wrong. So both streams are read by
//! threads for as long as the child writes; the last [`TAIL`] bytes of stderr (what a
//! failure report shows) and, for a command whose answer is read ([`first_line`]), the first
//! [`HEAD`] bytes of stdout are kept; the rest is counted and dropped (other commands' stdout
//! goes to /dev/null). Each command runs in a process
//! group of its own, and a timeout kills the whole group: a shell's children do not outlive
//! it holding the device. A command that leaves a background process holding its pipes open
//! (a restart command starting a daemon) is not waited on past its own exit and a short grace.
//!
//! Not for `ferryd apply -` started by the local page, which streams an upload into its
//! child (`local_ui`).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Bytes of stdout kept from the start.
pub const HEAD: usize = 4096;
/// Bytes of stderr kept from the end, for the report.
pub const TAIL: usize = 4096;
/// How long the output is still read after the command exited (a background child may hold
/// the pipes open for ever).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// What a finished command printed.
#[derive(Debug, Default)]
pub struct Output {
    /// The first [`HEAD`] bytes of stdout.
    pub stdout: String,
    /// The last [`TAIL`] bytes of stderr, trimmed.
    pub stderr: String,
}

/// How much of a stream is kept.
#[derive(Clone, Copy)]
enum Keep {
    Head(usize),
    Tail(usize),
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
    done: bool,
}

fn drain(mut from: impl Read + Send + 'static, keep: Keep) -> Arc<Mutex<Captured>> {
    let shared = Arc::new(Mutex::new(Captured::default()));
    let out = shared.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut c = out.lock().unwrap_or_else(|e| e.into_inner());
            let piece = buf.get(..n).unwrap_or_default();
            match keep {
                Keep::Head(cap) => {
                    let room = cap.saturating_sub(c.bytes.len()).min(piece.len());
                    c.bytes.extend_from_slice(piece.get(..room).unwrap_or_default());
                    c.dropped += (piece.len() - room) as u64;
                }
                Keep::Tail(cap) => {
                    c.bytes.extend_from_slice(piece);
                    if c.bytes.len() > cap {
                        let cut = c.bytes.len() - cap;
                        c.bytes.drain(..cut);
                        c.dropped += cut as u64;
                    }
                }
            }
        }
        out.lock().unwrap_or_else(|e| e.into_inner()).done = true;
    });
    shared
}

fn text(c: &Arc<Mutex<Captured>>, keep: Keep) -> String {
    let c = c.lock().unwrap_or_else(|e| e.into_inner());
    let s = String::from_utf8_lossy(&c.bytes);
    match keep {
        Keep::Tail(_) if c.dropped > 0 => format!("[{} bytes before this] {}", c.dropped, s.trim()),
        Keep::Tail(_) => s.trim().to_string(),
        Keep::Head(_) => s.into_owned(),
    }
}

fn done(c: &Arc<Mutex<Captured>>) -> bool {
    c.lock().unwrap_or_else(|e| e.into_inner()).done
}

/// Kills the command's whole process group.
pub(crate) fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Runs `sh -c command` in `cwd` with `env` added, for at most `timeout`. Ok with what it
/// printed if it exits 0; otherwise an error naming the command, its status and the tail of
/// its stderr. On timeout its process group is killed.
pub fn run(command: &str, timeout: Duration, cwd: Option<&Path>, env: &[(&str, String)]) -> Result<Output> {
    run_with(command, timeout, cwd, env, false)
}

/// [`run`], keeping stdout when `capture_stdout`. Otherwise stdout goes to /dev/null: a
/// daemon that a restart command leaves running must not inherit a pipe that closes when
/// the agent exits.
fn run_with(
    command: &str,
    timeout: Duration,
    cwd: Option<&Path>,
    env: &[(&str, String)],
    capture_stdout: bool,
) -> Result<Output> {
    let (output, status) = execute(command, timeout, cwd, env, capture_stdout)?;
    if !status.success() {
        let err = &output.stderr;
        bail!("`{command}` failed ({status}){}", if err.is_empty() { String::new() } else { format!(": {err}") });
    }
    Ok(output)
}

/// Runs `sh -c command` like [`run`], and answers its exit code (None if a signal ended
/// it) whatever it is: for commands whose status is the answer.
pub fn exit_code(command: &str, timeout: Duration, env: &[(&str, String)]) -> Result<Option<i32>> {
    execute(command, timeout, None, env, false).map(|(_, status)| status.code())
}

/// Runs `sh -c command`: what it printed and how it ended, or an error if it could not be
/// started or overran `timeout` (then its process group is killed).
fn execute(
    command: &str,
    timeout: Duration,
    cwd: Option<&Path>,
    env: &[(&str, String)],
    capture_stdout: bool,
) -> Result<(Output, ExitStatus)> {
    let mut cmd = Command::new("sh");
    let stdout = if capture_stdout { Stdio::piped() } else { Stdio::null() };
    cmd.arg("-c").arg(command).stdin(Stdio::null()).stdout(stdout).stderr(Stdio::piped());
    cmd.process_group(0);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting `{command}`"))?;
    let (out_keep, err_keep) = (Keep::Head(HEAD), Keep::Tail(TAIL));
    let stdout = child.stdout.take().map(|o| drain(o, out_keep));
    let stderr = child.stderr.take().map(|e| drain(e, err_keep));
    let started = Instant::now();
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for `{command}`"))? {
            break status;
        }
        if started.elapsed() >= timeout {
            kill_group(child.id());
            let _ = child.wait();
            let err = stderr.as_ref().map(|e| text(e, err_keep)).unwrap_or_default();
            bail!(
                "`{command}` did not finish within {} s; killed it and its children{}",
                timeout.as_secs_f32(),
                if err.is_empty() { String::new() } else { format!(" (stderr: {err})") }
            );
        }
        // A bounded wait is progress (the systemd watchdog).
        crate::notify::alive();
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = Instant::now();
    while exited.elapsed() < DRAIN_GRACE
        && (stdout.as_ref().is_some_and(|o| !done(o)) || stderr.as_ref().is_some_and(|e| !done(e)))
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = Output {
        stdout: stdout.as_ref().map(|o| text(o, out_keep)).unwrap_or_default(),
        stderr: stderr.as_ref().map(|e| text(e, err_keep)).unwrap_or_default(),
    };
    Ok((output, status))
}

/// The first line `command` prints, trimmed; it must succeed within `timeout`.
pub fn first_line(command: &str, timeout: Duration) -> Result<String> {
    let out = run_with(command, timeout, None, &[], true)?;
    Ok(out.stdout.lines().next().unwrap_or("").trim().to_string())
}
