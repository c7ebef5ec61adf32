//! The device's application under updates (`[app]` in ferryd.toml): how an update stops,
//! starts or hands over the application around the switch ([`Strategy`]), the "not now" an
//! application may put up while it is busy (a veto that can delay a switch, never block it),
//! and what happened ([`AppRun`]), kept in `state.json` and reported at check-in.
//!
//! Two ways to run it:
//! - **command**: `ferryd` starts the application itself (`sh -c`, in the deployment's
//!   directory, in a process group of its own so it outlives a `ferryd update`), remembers
//!   the group in `app.json`, asks it to release the device with `release_signal` and kills
//!   the group after `stop_timeout`;
//! - **start and stop**: a supervisor runs it (a systemd template unit, one instance per
//!   deployment: `systemctl start example@$FERRY_INSTANCE`); `start` returns once the
//!   instance runs (is ready, for a hand-over), `stop` has `stop_timeout`, then `kill`.
//!
//! The hand-over protocol for application writers: the new version is started with
//! `FERRY_HANDOVER=1` while the old one still holds the device; it gets ready, then says so
//! by creating the file `FERRY_READY_FILE` names or by sending `READY=1` to `NOTIFY_SOCKET`
//! (what `sd_notify` does); `ferryd` then switches and sends the old version
//! `release_signal`; the new one takes the device once the old one lets go. A new version
//! that is not ready within `ready_timeout` (or exits first) is stopped, the old one keeps
//! running and nothing is switched.
//!
//! What it is not for: deciding whether the new version is healthy (`trial` does, after the
//! switch), or restarting an application that crashed (its supervisor's job).

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
pub use ferry_api::device::{AppOutcome, AppRun, Strategy};
use serde::{Deserialize, Serialize};

use crate::config::{App, Config, Supervisor};

/// The longest a killed process group is waited on to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);
/// How long a busy command may take.
const BUSY_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The exit status of a busy command that says "not now" (EX_TEMPFAIL).
const BUSY: i32 = 75;
/// How long a start command may take when no hand-over bounds it.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a supervised instance's `check` is run while waiting for it.
const CHECK_POLL: Duration = Duration::from_millis(200);

/// Instances this process started and has not waited for, so an exited one is reaped.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// The instances started and not yet stopped (`app.json`): at most two, during a hand-over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Instances {
    running: Vec<Instance>,
    /// The boot they were started in (`/proc/sys/kernel/random/boot_id`): after a reboot
    /// none of them runs, and their process group ids may be anyone's.
    #[serde(default)]
    boot: Option<String>,
}

/// This boot's id, if the kernel says.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// One instance of the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Instance {
    /// The deployment (commit id) it runs from.
    deployment: String,
    /// With `command`: its process group, and its leader's start time (clock ticks after
    /// boot, `/proc/PID/stat`), so a reused process id is not taken for it.
    pgid: Option<i32>,
    leader_start: Option<u64>,
}

/// How stopping the running instances went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stopped {
    /// Something was running and was stopped.
    pub any: bool,
    /// One did not exit within `stop_timeout` and was killed.
    pub killed: bool,
}

/// What an update did to the application before the download (kill-then-download).
#[derive(Debug, Clone, Copy, Default)]
pub struct Before {
    /// When the application was asked to stop; None if it was not.
    pub stopped_at: Option<Instant>,
    pub stopped: Stopped,
    /// How long the veto held the stop back, and whether it was overruled.
    pub vetoed: Duration,
    pub overruled: bool,
}

/// The application of a device with an `[app]` table.
#[derive(Debug)]
pub struct Control<'a> {
    config: &'a Config,
    app: &'a App,
    supervisor: Supervisor,
}

impl<'a> Control<'a> {
    /// The device's application, if its configuration names one.
    pub fn of(config: &'a Config) -> Option<Control<'a>> {
        config.app.as_ref().map(|app| Control { config, app, supervisor: app.supervisor() })
    }

    /// The strategy for a release with commit `metadata`: its `strategy=…` if it names one
    /// this device can run, else the device's own; and why, when it is not the device's.
    pub fn strategy_for(&self, metadata: &std::collections::BTreeMap<String, String>) -> (Strategy, Option<String>) {
        let Some(asked) = metadata.get("strategy") else { return (self.app.strategy, None) };
        match Strategy::parse(asked) {
            None => {
                tracing::warn!(strategy = %asked.chars().take(64).collect::<String>(), "the release names a strategy this agent does not know; using the device's own");
                // Its words are not repeated: the report carries only what this agent wrote.
                (self.app.strategy, Some("the release names a strategy unknown here".into()))
            }
            Some(Strategy::HandOver) if self.app.single_instance() => {
                tracing::warn!(
                    "the release asks for a hand-over, but this device's application is a plain unit (one instance)"
                );
                (
                    Strategy::DownloadThenKill,
                    Some("the release asked for hand-over; the application's unit runs one instance".into()),
                )
            }
            Some(Strategy::HandOver) if self.app.command.is_some() && !self.app.ready_signal => {
                tracing::warn!("the release asks for a hand-over, but this device's application gives no ready signal");
                (
                    Strategy::DownloadThenKill,
                    Some("the release asked for hand-over; the application gives no ready signal".into()),
                )
            }
            Some(s) if s == self.app.strategy => (s, None),
            Some(s) => (s, Some("the release's metadata".into())),
        }
    }

    /// Waits while the application says "not now" (busy_file, busy_command), at most
    /// `max_veto` seconds: how long it waited, and whether the veto was still up then.
    pub fn wait_veto(&self) -> (Duration, bool) {
        let started = Instant::now();
        let limit = Duration::from_secs(self.app.max_veto);
        let mut said = false;
        loop {
            let Some(why) = self.busy() else { return (started.elapsed(), false) };
            let waited = started.elapsed();
            if waited >= limit {
                tracing::warn!(waited = waited.as_secs(), %why, "the application's veto held the switch as long as it may; going ahead");
                return (waited, true);
            }
            if !said {
                tracing::info!(%why, "the application says not now; waiting to switch");
                said = true;
            }
            crate::notify::status(&format!("waiting: the application says not now ({why})"));
            crate::notify::sleep(Duration::from_secs(self.app.veto_poll).min(limit - waited));
        }
    }

    /// Why the application says "not now", if it does.
    fn busy(&self) -> Option<String> {
        if let Some(file) = &self.app.busy_file {
            match read_head(file) {
                Ok(text) => {
                    let until = text.split_whitespace().next().and_then(|w| w.parse::<i64>().ok());
                    match until {
                        Some(t) if t <= crate::state::now() => {}
                        Some(t) => return Some(format!("{} says busy until {t}", file.display())),
                        None => return Some(format!("{} exists (without a time)", file.display())),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "reading the busy file; taken as not busy")
                }
            }
        }
        if let Some(command) = &self.app.busy_command {
            match crate::process::exit_code(command, BUSY_COMMAND_TIMEOUT, &[]) {
                Ok(Some(BUSY)) => return Some(format!("`{command}` exited {BUSY}")),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "the busy command failed; taken as not busy"),
            }
        }
        None
    }

    /// Stops every running instance but `keep`'s, each asked first and killed after
    /// `stop_timeout`.
    pub fn stop_all_but(&self, keep: Option<&str>) -> Result<Stopped> {
        let mut stopped = Stopped::default();
        for i in self.instances()?.running {
            if Some(i.deployment.as_str()) == keep {
                continue;
            }
            stopped.any = true;
            stopped.killed |= self.stop(&i)?;
            self.change(|all| all.running.retain(|r| *r != i))?;
        }
        Ok(stopped)
    }

    /// Stops `deployment`'s instance only (a hand-over that cannot go on).
    pub fn stop_only(&self, deployment: &str) -> Result<()> {
        for i in self.instances()?.running.into_iter().filter(|i| i.deployment == deployment) {
            self.stop(&i)?;
            self.change(|all| all.running.retain(|r| *r != i))?;
        }
        Ok(())
    }

    /// Starts the instance of `deployment` (a commit id with a deployment directory); with
    /// `handover`, as one taking over from a running instance. Waits until it is ready when
    /// it says so (`ready_signal`; always for a hand-over): an error then means it was not,
    /// and it was stopped again.
    pub fn start(&self, deployment: &str, handover: bool) -> Result<()> {
        let dir = self.config.layout().deployment(deployment);
        if !dir.is_dir() {
            bail!("cannot start the application: no deployment {}", dir.display());
        }
        let app_dir = self.config.layout().app_dir();
        std::fs::create_dir_all(&app_dir).with_context(|| format!("creating {}", app_dir.display()))?;
        let short = deployment.get(..16).unwrap_or(deployment);
        let ready_file = app_dir.join(format!("ready-{short}"));
        remove(&ready_file)?;
        let mut env = vec![
            ("FERRY_DEPLOYMENT", dir.display().to_string()),
            ("FERRY_INSTANCE", deployment.to_string()),
            ("FERRY_READY_FILE", ready_file.display().to_string()),
        ];
        if handover {
            env.push(("FERRY_HANDOVER", "1".into()));
        }
        let timeout = Duration::from_secs(self.app.ready_timeout);
        match (&self.app.command, &self.supervisor.start) {
            (Some(command), _) => {
                // Unix socket paths are short (108 bytes): a state directory too deep for
                // one still has the ready file.
                // The socket is given only while someone listens on it (sd_notify senders
                // may take a socket that is gone for an error).
                let waits = self.app.ready_signal || handover;
                let socket_path = app_dir.join(format!("notify-{short}.sock"));
                remove(&socket_path)?;
                let socket =
                    if waits && socket_path.as_os_str().len() < 100 { Some(bind_notify(&socket_path)?) } else { None };
                if socket.is_some() {
                    env.push(("NOTIFY_SOCKET", socket_path.display().to_string()));
                }
                let instance = self.spawn(command, deployment, &dir, &env)?;
                let waited = if waits { wait_ready(&ready_file, socket.as_ref(), &instance, timeout) } else { Ok(()) };
                drop(socket);
                remove(&socket_path)?;
                if let Err(e) = waited {
                    self.stop(&instance)?;
                    self.change(|all| all.running.retain(|r| *r != instance))?;
                    return Err(e);
                }
                Ok(())
            }
            (None, Some(start)) => {
                let limit = if handover { timeout } else { START_TIMEOUT };
                // A supervisor does not pass the caller's environment on (systemd does not):
                // the instance reads it from `<state>/app/<commit>.env`
                // (`EnvironmentFile=-/var/lib/ferry/app/%i.env` in a template unit).
                self.write_env(deployment, handover)?;
                // Recorded first: a start cut by a crash, or that failed half-way, may have
                // left it running.
                let instance = Instance { deployment: deployment.to_string(), pgid: None, leader_start: None };
                self.change(|all| all.running.push(instance.clone()))?;
                let began = Instant::now();
                let started = crate::process::run(start, limit, Some(&dir), &env)
                    .context("starting the application")
                    .and_then(|_| self.wait_check(deployment, timeout.saturating_sub(began.elapsed())));
                if let Err(e) = started {
                    if handover {
                        self.stop(&instance)?;
                        self.change(|all| all.running.retain(|r| *r != instance))?;
                    }
                    return Err(e);
                }
                Ok(())
            }
            (None, None) => bail!("[app] names no command and no start"),
        }
    }

    /// A supervised instance's environment, `<state>/app/<commit>.env` (systemd passes the
    /// caller's on to no service): FERRY_DEPLOYMENT, FERRY_INSTANCE and FERRY_HANDOVER.
    fn write_env(&self, deployment: &str, handover: bool) -> Result<()> {
        let dir = self.config.layout().app_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let vars = std::collections::BTreeMap::from([
            ("FERRY_DEPLOYMENT".to_string(), self.config.layout().deployment(deployment).display().to_string()),
            ("FERRY_INSTANCE".to_string(), deployment.to_string()),
            ("FERRY_HANDOVER".to_string(), if handover { "1" } else { "0" }.to_string()),
        ]);
        let path = dir.join(format!("{deployment}.env"));
        // It sets a service's environment: written by root for root, readable by all.
        ferry_durable::replace_with(&path, 0o644, |f| {
            use std::io::Write;
            f.write_all(crate::fleet::env_file(&vars).as_bytes())
        })
        .with_context(|| format!("writing {}", path.display()))
    }

    /// The hand-over to `deployment` is over: a supervisor that restarts its instance later
    /// (after a crash) starts it as the only one, not as one taking over.
    pub fn handed_over(&self, deployment: &str) -> Result<()> {
        if self.app.command.is_some() {
            return Ok(());
        }
        self.write_env(deployment, false)
    }

    /// With a `check`: waits until it passes for `deployment`'s instance, at most `timeout`.
    fn wait_check(&self, deployment: &str, timeout: Duration) -> Result<()> {
        if self.supervisor.check.is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.checks(deployment) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the application started but its check did not pass within {} s", timeout.as_secs());
            }
            crate::notify::sleep(CHECK_POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Whether `check` passes for `deployment`'s instance (true without a check).
    fn checks(&self, deployment: &str) -> bool {
        let Some(check) = &self.supervisor.check else { return true };
        let dir = self.config.layout().deployment(deployment);
        let env = [("FERRY_INSTANCE", deployment.to_string()), ("FERRY_DEPLOYMENT", dir.display().to_string())];
        match crate::process::exit_code(check, BUSY_COMMAND_TIMEOUT, &env) {
            Ok(code) => code == Some(0),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the application's check failed to run");
                false
            }
        }
    }

    /// Whether an instance of the application runs.
    pub fn runs(&self) -> Result<bool> {
        Ok(self.instances()?.running.iter().any(|i| self.alive(i)))
    }

    /// Stops what runs and starts `deployment`'s instance: how long the device was without
    /// its application (from asking the old one to stop to the new one started, and ready
    /// where it says so), and how the stop went.
    pub fn restart(&self, deployment: &str) -> Result<(Duration, Stopped)> {
        let began = Instant::now();
        // What cannot be stopped stays recorded; the deployment's instance starts anyway
        // (after a rollback, the device must not be left without its application).
        let stopped = self.stop_all_but(None).unwrap_or_else(|e| {
            tracing::warn!(error = %format!("{e:#}"), "stopping the application");
            Stopped { any: true, killed: false }
        });
        self.start(deployment, false)?;
        Ok((began.elapsed(), stopped))
    }

    /// Makes sure `deployment`'s instance runs and no other: after a crash or a reboot in
    /// the middle of a switch, at `ferryd run`'s start, after an update that stopped the
    /// application and then failed. With start and stop, `app.json` is the record of what
    /// runs (a supervisor restarts what crashed). True if it had to be started.
    pub fn ensure(&self, deployment: &str) -> Result<bool> {
        // The dead are forgotten (a supervised one whose check fails is stopped first, in
        // case it still runs half-alive), the others stopped.
        for i in self.instances()?.running {
            if !self.alive(&i) {
                if i.pgid.is_none() {
                    if let Err(e) = self.stop(&i) {
                        tracing::warn!(error = %format!("{e:#}"), deployment = %i.deployment, "stopping an instance whose check fails");
                    }
                }
                self.change(|all| all.running.retain(|r| *r != i))?;
            }
        }
        let stopped = self.stop_all_but(Some(deployment))?;
        // One unit runs every deployment's instance: stopping another's stopped this one too.
        if stopped.any && self.app.single_instance() {
            self.change(|all| all.running.clear())?;
        }
        if self.instances()?.running.iter().any(|i| i.deployment == deployment) {
            return Ok(false);
        }
        self.start(deployment, false)?;
        Ok(true)
    }

    /// Whether an instance still runs (with start and stop: as far as this device knows).
    fn alive(&self, i: &Instance) -> bool {
        reap();
        match i.pgid {
            Some(pgid) => group_alive(pgid, i.leader_start),
            None => self.checks(&i.deployment),
        }
    }

    /// Starts `command` for `deployment` in a process group of its own and records it.
    fn spawn(&self, command: &str, deployment: &str, dir: &Path, env: &[(&str, String)]) -> Result<Instance> {
        let output = match &self.app.log_file {
            Some(path) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the application's log {}", path.display()))?;
                let copy = f.try_clone()?;
                (Stdio::from(f), Stdio::from(copy))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command).current_dir(dir).stdin(Stdio::null()).stdout(output.0).stderr(output.1);
        cmd.process_group(0);
        as_the_system_starts_it(&mut cmd);
        // Not the agent's own service-manager variables: the application is not ferryd.
        for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"] {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting the application `{command}`"))?;
        let pgid = i32::try_from(child.id()).map_err(|_| anyhow!("process id {} out of range", child.id()))?;
        let instance =
            Instance { deployment: deployment.to_string(), pgid: Some(pgid), leader_start: start_time(pgid) };
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(child);
        self.change(|all| all.running.push(instance.clone()))?;
        tracing::info!(deployment = %deployment, pgid, "started the application");
        Ok(instance)
    }

    /// Stops one instance: asked, then killed after `stop_timeout`. True if it was killed.
    fn stop(&self, i: &Instance) -> Result<bool> {
        let timeout = Duration::from_secs(self.app.stop_timeout);
        match (i.pgid, &self.supervisor.stop) {
            (Some(pgid), _) => {
                if !group_alive(pgid, i.leader_start) {
                    return Ok(false);
                }
                signal_group(pgid, self.app.signal()?);
                if wait_gone(pgid, i.leader_start, timeout) {
                    tracing::info!(deployment = %i.deployment, "the application released the device and exited");
                    return Ok(false);
                }
                tracing::warn!(deployment = %i.deployment, seconds = timeout.as_secs(), "the application did not exit when asked; killing it");
                crate::process::kill_group(pgid.unsigned_abs());
                if !wait_gone(pgid, i.leader_start, KILL_WAIT) {
                    bail!("the application's process group {pgid} is still there after SIGKILL");
                }
                Ok(true)
            }
            (None, Some(stop)) => {
                let dir = self.config.layout().deployment(&i.deployment);
                let env = [("FERRY_INSTANCE", i.deployment.clone()), ("FERRY_DEPLOYMENT", dir.display().to_string())];
                let env_file = self.config.layout().app_dir().join(format!("{}.env", i.deployment));
                match crate::process::run(stop, timeout, None, &env) {
                    Ok(_) => {
                        remove(&env_file)?;
                        Ok(false)
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "stopping the application");
                        let Some(kill) = &self.supervisor.kill else {
                            return Err(e.context("stopping the application"));
                        };
                        crate::process::run(kill, START_TIMEOUT, None, &env).context("killing the application")?;
                        Ok(true)
                    }
                }
            }
            (None, None) => Ok(false),
        }
    }

    fn instances(&self) -> Result<Instances> {
        let path = self.config.layout().app_instances();
        let all: Instances = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Instances::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // Instances of an earlier boot run no more.
        let now = boot_id();
        if all.boot.is_some() && now.is_some() && all.boot != now {
            return Ok(Instances::default());
        }
        Ok(all)
    }

    /// Changes `app.json` durably.
    fn change(&self, f: impl FnOnce(&mut Instances)) -> Result<()> {
        let mut all = self.instances()?;
        f(&mut all);
        all.boot = boot_id();
        let path = self.config.layout().app_instances();
        ferry_durable::replace(&path, &serde_json::to_vec_pretty(&all)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// The agent runs niced and shielded from the OOM killer (its unit's Nice= and
/// OOMScoreAdjust=); the application it starts gets the system's defaults instead (priority
/// 0, OOM score adjustment 0), as if its own unit had started it.
#[allow(unsafe_code)]
fn as_the_system_starts_it(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes only async-signal-safe system calls
    // (setpriority, open, write, close) on memory it does not allocate.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 0);
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// The deployment `current_link` points at, if it is one (not a developer's copy).
pub fn current_deployment(config: &Config) -> Result<Option<String>> {
    let target = ferry_boot::current_target(&config.current_link)?;
    let deploy = config.layout().deploy();
    Ok(target
        .filter(|t| t.parent() == Some(deploy.as_path()))
        .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_string)))
}

/// The start of a small file the device's own software writes (a busy file, a watchdog's
/// boot status): a regular file (not a link, a FIFO or a device), its first 64 bytes.
pub(crate) fn read_head(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut head = Vec::with_capacity(64);
    f.take(64).read_to_end(&mut head)?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Removes a file that may not exist.
fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// A datagram socket an application's `sd_notify` writes to.
fn bind_notify(path: &PathBuf) -> Result<UnixDatagram> {
    let s = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Waits until the instance says it is ready: the ready file exists, or `READY=1` came on
/// the socket. An error if it exited first or `timeout` passed.
fn wait_ready(file: &Path, socket: Option<&UnixDatagram>, i: &Instance, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if file.exists() {
            return Ok(());
        }
        if let Some(s) = socket {
            // A bounded number a round: a flood of datagrams cannot hold the wait.
            for _ in 0..64 {
                let Ok(n) = s.recv(&mut buf) else { break };
                let said = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
                if said.lines().any(|l| l.trim() == "READY=1") {
                    return Ok(());
                }
            }
        }
        reap();
        if let Some(pgid) = i.pgid {
            if !group_alive(pgid, i.leader_start) {
                bail!("the new version of the application exited before it said it was ready");
            }
        }
        if started.elapsed() >= timeout {
            bail!("the new version of the application did not say it was ready within {} s", timeout.as_secs());
        }
        crate::notify::alive();
        std::thread::sleep(POLL);
    }
}

/// Waits for children this process started that have exited, so they are not zombies.
fn reap() {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).retain_mut(|c| matches!(c.try_wait(), Ok(None)));
}

fn signal_group(pgid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal);
}

/// Waits up to `timeout` for a process group to be gone; true if it is.
fn wait_gone(pgid: i32, leader_start: Option<u64>, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        reap();
        if !group_alive(pgid, leader_start) {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        crate::notify::alive();
        std::thread::sleep(POLL);
    }
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, ...
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When a process started (clock ticks after boot), if it exists.
fn start_time(pid: i32) -> Option<u64> {
    stat_fields(&pid.to_string())?.get(19)?.parse().ok()
}

/// Whether any process of group `pgid` still runs (zombies do not): the group's leader, if
/// it is still there, must be the one started at `leader_start`.
fn group_alive(pgid: i32, leader_start: Option<u64>) -> bool {
    if let (Some(expected), Some(now)) = (leader_start, start_time(pgid)) {
        if expected != now {
            return false;
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { return false };
        stat_fields(pid).is_some_and(|f| {
            let state = f.first().map(String::as_str).unwrap_or("Z");
            let pgrp = f.get(2).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(pgid) && state != "Z" && state != "X"
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_alive_while_a_member_runs_and_not_once_it_exited() {
        let mut child = Command::new("sh").arg("-c").arg("sleep 30").process_group(0).spawn().unwrap();
        let pgid = child.id() as i32;
        let started = start_time(pgid);
        assert!(started.is_some());
        assert!(group_alive(pgid, started));
        // Another start time: not this group (a reused process id).
        assert!(!group_alive(pgid, started.map(|s| s + 1)));
        signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
        // A zombie is not alive, before it is reaped and after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(pgid, started) {
            assert!(Instant::now() < deadline, "the group outlived SIGTERM");
            std::thread::sleep(POLL);
        }
        child.wait().unwrap();
        assert!(!group_alive(pgid, started));
    }
}
