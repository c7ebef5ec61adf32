//! Watchdogs (issue 24): `ferryd run` speaks the systemd notification protocol to a socket
//! this test owns (READY=1, STATUS=, WATCHDOG=1 while it makes progress; a hung agent stops
//! saying it, is killed as systemd would, and the next run resumes); a trial fails when the
//! application restarts during it (`restarts_command`) and passes only after `quiet_for`; a
//! hardware watchdog reset during a trial rolls back at the next boot.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{ferryd, ferryd_bin, running_version, update, Env};

/// `ferryd run` (or `update`) with the notification socket and a 2 s watchdog.
fn under_systemd(config: &Path, socket: &Path, command: &str, hang_at: Option<&str>) -> Child {
    let mut cmd = Command::new(ferryd_bin());
    cmd.arg("--config").arg(config).arg(command);
    cmd.env("NOTIFY_SOCKET", socket).env("WATCHDOG_USEC", "2000000");
    if let Some(h) = hang_at {
        cmd.env("FERRYD_HANG_AT", h);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// The messages that arrive within `d`, each with when it came.
fn listen(socket: &UnixDatagram, d: Duration) -> Vec<(Instant, String)> {
    let until = Instant::now() + d;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        socket
            .set_read_timeout(Some(until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            out.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    out
}

/// The longest time between two WATCHDOG=1 pings among `messages` (and from `from` to the
/// first), and how many there were.
fn pings(messages: &[(Instant, String)], from: Instant) -> (Duration, usize) {
    let times: Vec<Instant> =
        messages.iter().filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1")).map(|(t, _)| *t).collect();
    let mut gap = Duration::ZERO;
    let mut last = from;
    for t in &times {
        gap = gap.max(t.duration_since(last));
        last = *t;
    }
    (gap, times.len())
}

#[test]
fn ferryd_run_speaks_the_notify_protocol_and_a_hung_agent_stops_saying_it_is_alive() {
    let env = Env::new();
    let v1 = env.commit(1, "1");
    let config = env.device("poll_interval = 2\n");
    let path = env.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();

    // Running: ready, what it does, and alive well within the watchdog's 2 s (every 0.5 s).
    let mut run = under_systemd(&config, &path, "run", None);
    let heard = listen(&socket, Duration::from_secs(4));
    run.kill().unwrap();
    run.wait().unwrap();
    let all: Vec<&str> = heard.iter().map(|(_, m)| m.as_str()).collect();
    let ready = all.iter().position(|m| m.contains("READY=1")).unwrap_or_else(|| panic!("no READY=1: {all:?}"));
    assert!(all[ready].contains(&format!("MAINPID={}", run.id())), "{}", all[ready]);
    assert!(all.iter().any(|m| m.starts_with("STATUS=runs 1; next check in")), "{all:?}");
    // Counted from READY=1 (before it, the process starts and opens its store).
    let (gap, n) = pings(&heard[ready..], heard[ready].0);
    assert!(n >= 3, "{n} pings in 4 s: {all:?}");
    assert!(gap < Duration::from_millis(1500), "{gap:?} without a ping");
    assert_eq!(running_version(&config), "1");

    // An update that hangs in the middle of the download (as in a system call that never
    // returns): the pings stop; systemd would kill it after WatchdogSec.
    let v2 = env.commit(2, "2");
    let mut hung = under_systemd(&config, &path, "update", Some("chunk-staged:2"));
    let began = Instant::now();
    let heard = listen(&socket, Duration::from_secs(6));
    let last_ping = heard.iter().filter(|(_, m)| m.contains("WATCHDOG=1")).map(|(t, _)| *t).max();
    let quiet = Instant::now().duration_since(last_ping.unwrap_or(began));
    assert!(quiet >= Duration::from_millis(2500), "it still said it was alive {quiet:?} ago: {heard:?}");
    assert!(hung.try_wait().unwrap().is_none(), "the hung agent exited by itself");
    hung.kill().unwrap();
    hung.wait().unwrap();
    // The restarted agent resumes: what was staged is not downloaded again.
    let s = update(&config);
    assert_eq!(s["version"], "2", "{s}");
    let (v1, v2) = (env.repo.read_commit(&v1).unwrap(), env.repo.read_commit(&v2).unwrap());
    let total = ferry_delta::transfer_cost(&env.repo, Some(&v1), &v2).unwrap().chunks;
    assert!(s["chunks_downloaded"].as_u64().unwrap() < total, "{s} (of {total})");
}

/// A device whose trial watches the application's restarts through `restarts_command`.
fn trial_device(env: &Env, health: &str) -> std::path::PathBuf {
    env.device(&format!("[health]\ncommands = [\"true\"]\ndeadline = 8\ninterval = 1\n{health}"))
}

#[test]
fn an_application_that_restarts_during_its_trial_fails_it_and_a_quiet_one_passes_after_quiet_for() {
    let env = Env::new();
    env.commit(1, "1");
    update(&trial_device(&env, ""));
    let counter = env.path().join("restarts");
    std::fs::write(&counter, "0\n").unwrap();
    // Each reading counts one more restart: the application's watchdog keeps firing.
    let restarting = format!(
        "restarts_command = \"n=$(cat {0}); echo $((n+1)) > {0}; echo $n\"\nquiet_for = 3\n",
        counter.display()
    );
    let config = trial_device(&env, &restarting);
    env.commit(2, "2");
    let (ok, _, err) = ferryd(&config, &["update"]);
    assert!(!ok);
    assert!(err.contains("the application restarted during its trial") && err.contains("from 0 to 1"), "{err}");
    assert_eq!(running_version(&config), "1");

    // Quiet: the trial passes, after quiet_for and not before.
    let config = trial_device(&env, "restarts_command = \"echo 7\"\nquiet_for = 3\n");
    env.commit(3, "3");
    let started = Instant::now();
    let s = update(&config);
    assert_eq!(s["version"], "3", "{s}");
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(ferry_boot::Trial::load(&env.path().join("device/state")).unwrap().is_none());
}

#[test]
fn a_hardware_watchdog_reset_during_a_trial_rolls_back_at_the_next_boot() {
    let env = Env::new();
    env.commit(1, "1");
    let status = env.path().join("bootstatus");
    let health = format!("bootlimit = 3\nwatchdog_bootstatus = \"{}\"\n", status.display());
    let top = "reboot_command = \"true\"\n";
    let config = env.device(&format!("{top}[health]\ncommands = [\"true\"]\ndeadline = 60\ninterval = 1\n{health}"));
    update(&config);
    // Release 2 asks for a reboot: its trial goes on after it, counted by boot-check.
    env.commit_meta(2, "2", &[("reboot", "required")]);
    let s = update(&config);
    assert_eq!(s["rebooting"], true, "{s}");
    // A normal boot counts.
    std::fs::write(&status, "0\n").unwrap();
    let (ok, out, err) = ferryd(&config, &["boot-check"]);
    assert!(ok, "{err}");
    assert!(out.contains("boot 1 of 3"), "{out}");
    // The watchdog fired (WDIOF_CARDRESET): rolled back at once, not at the third boot.
    std::fs::write(&status, "32\n").unwrap();
    let (ok, out, err) = ferryd(&config, &["boot-check"]);
    assert!(ok, "{err}");
    assert!(out.contains("hardware watchdog reset the device during the trial"), "{out}");
    assert_eq!(running_version(&config), "1");
}
