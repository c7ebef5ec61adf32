//! `ferryd`'s configuration file (TOML).
//!
//! ```toml
//! server = "https://updates.example.com"   # required: the ferry server's base URL (https://)
//! ca_file = "/etc/ferry/fleet-ca.pem"       # the CA the server's certificate must chain to (PEM);
//!                                           #   default: the system's CA bundle
//! # insecure_http = false                   # allow an http:// server (behind a VPN or a TLS-terminating
//!                                           #   proxy on the device's side only); default false
//! # content_url = "https://cdn.example.com/ferry"  # a static copy (`ferry export`) to fetch chunks
//!                                           #   from; metadata and check-ins stay with the server
//! # content_ca_file = "/etc/ferry/cdn-ca.pem" # the CA its certificate must chain to; default:
//!                                           #   the system's CA bundle
//! channel = "stable"                        # the signed channel this device follows, or
//! # branch = "main"                         # a branch head (development; no channel checks)
//! state_dir = "/var/lib/ferry"              # default: /var/lib/ferry
//! current_link = "/opt/example/current"     # required: the symlink switched on update
//! root_keys = ["/etc/ferry/root.pub"]       # with channel: the root keys in the image
//! trusted_keys = ["/etc/ferry/ci.pub"]      # with branch: the keys commits must be signed by
//! # allow_downgrade = false                 # with branch: install a head older than what runs; default false
//! hardware = "board-rev-b"                  # this device's hardware revision (required with
//! # hardware_file = "/etc/hw-revision"      #   channel), or its first line read from a file,
//! # hardware_env = "BOARD_REV"              #   or an environment variable of the agent
//! poll_interval = 3600                      # seconds between checks (±10% jitter); default 3600
//! read_timeout = 30                         # seconds without a byte before a transfer is cut; default 30
//! retries = 5                               # attempts per update before giving up; default 5
//! concurrency = 2                           # chunk requests in flight; default 2
//! batch_bytes = 268435456                   # chunk bytes (uncompressed) per request; default 256 MiB
//! patches = true                            # fetch changed files as patches against their old version; default true
//! min_free_bytes = 16777216                 # space an update must leave free; default 16 MiB
//! restart_command = "systemctl restart example.service"  # run after a switch and a rollback; default none
//! reboot_command = "systemctl reboot"       # run instead when a release's metadata says reboot=required
//!
//! [health]                                  # optional: without it a switch is final at once
//! commands = ["/usr/bin/example-selftest"]  # run with `sh -c`; exit 0 is healthy
//! units = ["example.service"]               # systemd units that must be active
//! urls = ["http://127.0.0.1:8080/healthz"]  # must answer 2xx
//! check_timeout = 10                        # seconds per check; default 10
//! interval = 2                              # seconds between rounds of checks; default 2
//! deadline = 300                            # seconds for the trial to become good; default 300
//! require_mark_good = false                 # also wait for `ferryd mark-good`; default false
//! bootlimit = 3                             # boots on trial before rolling back; default 3 (1-5 with a bootloader)
//! restarts_command = "systemctl show -p NRestarts --value example.service"  # must not change during the trial
//! quiet_for = 60                            # seconds the checks must keep passing; default 0
//! watchdog_bootstatus = "/sys/class/watchdog/watchdog0/bootstatus"  # a watchdog reset during a trial
//!                                           #   rolls back at the next boot
//!
//! [app]                                     # optional: the application updates stop, start or hand over
//! command = "./usr/bin/example --port /dev/ttyS1"  # run by ferryd in the deployment's directory, in a
//!                                           #   process group of its own; or, for a supervisor such as
//! # start = "systemctl start example@$FERRY_INSTANCE"  #   systemd (a template unit, one instance per
//! # stop = "systemctl stop example@$FERRY_INSTANCE"    #   deployment): start returns once it is ready
//! # kill = "systemctl kill -s KILL example@$FERRY_INSTANCE"  # when stop overran stop_timeout
//! # check = "systemctl is-active --quiet example@$FERRY_INSTANCE"  # 0 while it runs and is ready
//! # unit = "example@.service"               #   or all four at once: a template unit (one instance
//!                                           #   per deployment) or a plain unit (no hand-over)
//! strategy = "download-then-kill"           # or "kill-then-download", "hand-over"; a release's
//!                                           #   metadata strategy=… overrides it
//! ready_signal = false                      # command: it says when it is ready (FERRY_READY_FILE or
//!                                           #   READY=1 on NOTIFY_SOCKET); hand-over needs it
//! ready_timeout = 60                        # seconds for a new version to be ready (hand-over)
//! stop_timeout = 30                         # seconds the old version has to exit once asked
//! release_signal = "TERM"                   # command: how it is asked to release the device
//! log_file = "/var/log/example.log"         # command: its output (appended); default discarded
//! busy_file = "/run/example/busy"           # "not now": while it holds a later unix time
//! busy_command = "/usr/bin/example-busy"    # "not now": while it exits 75 (EX_TEMPFAIL)
//! max_veto = 3600                           # seconds a veto may hold a switch back; default 3600
//! veto_poll = 10                            # seconds between looks at the veto; default 10
//!
//! [hooks]                                   # optional; run inside the new deployment's directory
//! pre_switch = "./usr/share/example/migrate pre"   # failure: the update stops, nothing switched
//! post_switch = "./usr/share/example/migrate post" # failure: rolled back
//! timeout = 60                              # seconds per hook; default 60
//!
//! [fleet]                                   # optional: enroll with and report to a fleet server
//! enrollment_token_file = "/etc/ferry/enrollment-token"   # the fleet's enrollment token
//! serial_file = "/etc/serial-number"        # this device's serial number (first line), or
//! # serial = "SN1234" / serial_env = "SERIAL"
//! reload_command = "systemctl reload example.service"  # after the device's configuration changed
//! unsigned_config = false                   # take configuration nobody signed when the key
//!                                           #   document names no configuration keys; default false
//! progress_interval = 30                    # seconds between progress reports during an update
//!
//! [local_ui]                                # optional: `ferryd local-ui`, the technician's page
//! password_file = "/etc/ferry/local-ui.password"  # its password (first line, 8 characters or more),
//! # password = "..."                        #   or the password itself
//! hosts = ["setup.local"]                   # names the page answers to besides IP addresses and
//!                                           #   localhost (any other Host is refused: DNS rebinding);
//!                                           #   with tls, also names (and addresses, e.g. 192.168.4.1)
//!                                           #   its certificate carries; default none
//! tls = true                                # serve HTTPS with the device's own self-signed certificate,
//!                                           #   made at `ferryd provision` or the first `ferryd local-ui`
//!                                           #   (its fingerprint: `ferryd status`); default false
//! user = "ferry-ui"                         # run the page as this user, not root (it starts as root to
//!                                           #   read its password and certificate); needs apply_socket
//! apply_socket = "/run/ferry/apply.sock"    # where `ferryd apply-server` (root) takes the page's uploads;
//!                                           #   without it the page installs them itself (as root)
//!
//! [bootloader]                              # optional: tell the bootloader too (default: symlink only)
//! kind = "uboot"                            # "uboot" (fw_setenv/fw_printenv) or "grub" (grub-editenv)
//! fw_config = "/etc/fw_env.config"          # uboot: libubootenv's configuration
//! defenv = "/etc/u-boot-initial-env"        # uboot: default environment, optional
//! grubenv = "/boot/grub/grubenv"            # grub: the environment block
//! ```
//!
//! The server is reached over HTTPS (rustls, ring): its certificate must chain to `ca_file`
//! (the fleet's own CA, the usual case for devices) or, without it, to the system's roots,
//! judged at the device's clock floor when its clock is behind (`crate::tls`). A plain
//! `http://` server is refused unless `insecure_http = true`: tokens, the device's
//! configuration and its identity would cross the network readable by anyone on the path.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Every trusted
//! key file is loaded and checked (weak keys refused) when the configuration is read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_store::PublicKey;
use serde::{Deserialize, Serialize};

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry")
}

fn default_poll_interval() -> u64 {
    3600
}

fn default_read_timeout() -> u64 {
    30
}

fn default_retries() -> u32 {
    5
}

fn default_concurrency() -> usize {
    2
}

fn default_batch_bytes() -> u64 {
    256 << 20
}

fn default_patches() -> bool {
    true
}

fn default_reboot_command() -> String {
    "systemctl reboot".into()
}

fn default_min_free_bytes() -> u64 {
    16 << 20
}

/// How a deployment proves itself after a switch (the `[health]` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub units: Vec<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default = "default_check_timeout")]
    pub check_timeout: u64,
    #[serde(default = "default_interval")]
    pub interval: u64,
    #[serde(default = "default_deadline")]
    pub deadline: u64,
    #[serde(default)]
    pub require_mark_good: bool,
    #[serde(default = "default_bootlimit")]
    pub bootlimit: u32,
    /// A command whose first line counts the application's restarts (e.g. `systemctl show
    /// -p NRestarts --value example.service`, which its unit's own watchdog raises): a count
    /// that changes during the trial fails it at once.
    #[serde(default)]
    pub restarts_command: Option<String>,
    /// Seconds the checks must keep passing without a failing round (and the restarts stay
    /// unchanged) before the trial is good; default 0 (the first passing round).
    #[serde(default)]
    pub quiet_for: u64,
    /// The hardware watchdog's boot status (`/sys/class/watchdog/watchdog0/bootstatus`):
    /// when it says the watchdog reset the board (WDIOF_CARDRESET) during a trial,
    /// `boot-check` rolls back at once instead of counting the boot.
    #[serde(default)]
    pub watchdog_bootstatus: Option<PathBuf>,
}

/// The device's application, which updates stop, start or hand over (the `[app]` table;
/// `crate::app` runs it). Either `command` (ferryd starts it itself) or `start` and `stop`
/// (a supervisor does).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The application's command line (`sh -c`), run in the deployment's directory in a
    /// process group of its own, with FERRY_DEPLOYMENT, FERRY_INSTANCE, FERRY_READY_FILE
    /// and NOTIFY_SOCKET set (and FERRY_HANDOVER=1 when it takes over from a running one).
    #[serde(default)]
    pub command: Option<String>,
    /// Starts the instance of `$FERRY_INSTANCE` (the deployment's commit id) through the
    /// application's supervisor; returns once it runs (and, for a hand-over, is ready).
    #[serde(default)]
    pub start: Option<String>,
    /// Stops the instance of `$FERRY_INSTANCE`; it has `stop_timeout` seconds.
    #[serde(default)]
    pub stop: Option<String>,
    /// Run when `stop` did not finish in time: kills the instance.
    #[serde(default)]
    pub kill: Option<String>,
    /// With start and stop: exits 0 while the instance of `$FERRY_INSTANCE` runs and is
    /// ready. After `start`, ferryd waits (`ready_timeout`) for it to pass; an instance
    /// whose check fails is taken as not running (and started again where it should run).
    #[serde(default)]
    pub check: Option<String>,
    /// A systemd unit instead of start, stop, kill and check: a template
    /// (`example@.service`: one instance per deployment, `example@<commit>.service`, so a
    /// hand-over can run two) or a plain unit (`example.service`: one instance, whose
    /// ExecStart runs the current deployment; no hand-over).
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub strategy: ferry_api::device::Strategy,
    /// With `command`: the application says when it is ready (it creates the file
    /// FERRY_READY_FILE names, or sends READY=1 to NOTIFY_SOCKET); a restart then counts
    /// as done once it is, and a hand-over is possible.
    #[serde(default)]
    pub ready_signal: bool,
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: u64,
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u64,
    /// With `command`: the signal that asks it to release the device and exit (`TERM`,
    /// `INT`, `HUP`, `USR1`, `USR2`); after `stop_timeout` it is killed.
    #[serde(default = "default_release_signal")]
    pub release_signal: String,
    /// With `command`: where its output is appended; default discarded.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// The application's "not now": while this file exists and its first word is a unix
    /// time still to come (or is not a time), a switch waits.
    #[serde(default)]
    pub busy_file: Option<PathBuf>,
    /// The same as a command: exit status 75 (EX_TEMPFAIL) is "not now".
    #[serde(default)]
    pub busy_command: Option<String>,
    /// Seconds vetoes may hold one update's switch back in all; then it goes ahead.
    #[serde(default = "default_max_veto")]
    pub max_veto: u64,
    #[serde(default = "default_veto_poll")]
    pub veto_poll: u64,
}

/// How a supervisor runs the application ([`App::supervisor`]).
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    pub start: Option<String>,
    pub stop: Option<String>,
    pub kill: Option<String>,
    pub check: Option<String>,
}

fn default_ready_timeout() -> u64 {
    60
}
fn default_stop_timeout() -> u64 {
    30
}
fn default_release_signal() -> String {
    "TERM".into()
}
fn default_max_veto() -> u64 {
    3600
}
fn default_veto_poll() -> u64 {
    10
}

impl App {
    /// The release signal, as `release_signal` names it.
    pub fn signal(&self) -> Result<nix::sys::signal::Signal> {
        use nix::sys::signal::Signal;
        let name = self.release_signal.trim_start_matches("SIG");
        Ok(match name {
            "TERM" => Signal::SIGTERM,
            "INT" => Signal::SIGINT,
            "HUP" => Signal::SIGHUP,
            "USR1" => Signal::SIGUSR1,
            "USR2" => Signal::SIGUSR2,
            "QUIT" => Signal::SIGQUIT,
            _ => bail!("[app] release_signal {:?} is not one of TERM, INT, HUP, USR1, USR2, QUIT", self.release_signal),
        })
    }

    /// Whether only one instance can run at a time (a plain systemd unit): no hand-over.
    pub fn single_instance(&self) -> bool {
        self.unit.as_deref().is_some_and(|u| !u.contains('@'))
    }

    /// The commands that start, stop, kill and check the instance of `$FERRY_INSTANCE`: the
    /// ones given, or `unit`'s through `systemctl`.
    pub fn supervisor(&self) -> Supervisor {
        match self.unit_target() {
            Some(target) => Supervisor {
                start: Some(format!("systemctl start {target}")),
                stop: Some(format!("systemctl stop {target}")),
                kill: Some(format!("systemctl kill --signal=KILL {target}")),
                check: Some(format!("systemctl is-active --quiet {target}")),
            },
            None => Supervisor {
                start: self.start.clone(),
                stop: self.stop.clone(),
                kill: self.kill.clone(),
                check: self.check.clone(),
            },
        }
    }

    /// The unit `systemctl` is given: a template's instance is named by `$FERRY_INSTANCE`.
    fn unit_target(&self) -> Option<String> {
        let unit = self.unit.as_deref()?;
        Some(match unit.strip_suffix("@.service") {
            Some(name) => format!("{name}@$FERRY_INSTANCE.service"),
            None => unit.to_string(),
        })
    }

    /// Checks `unit`: a service unit's name, a template or a plain unit, alone.
    fn check_unit(&self) -> Result<()> {
        let Some(unit) = &self.unit else { return Ok(()) };
        if self.command.is_some()
            || self.start.is_some()
            || self.stop.is_some()
            || self.kill.is_some()
            || self.check.is_some()
        {
            bail!("[app] unit replaces command, start, stop, kill and check: give unit alone");
        }
        let Some(stem) = unit.strip_suffix(".service") else {
            bail!("[app] unit {unit:?} must be a service unit (NAME.service, or NAME@.service for a template)");
        };
        let (name, instance) = match stem.split_once('@') {
            Some((name, instance)) => (name, Some(instance)),
            None => (stem, None),
        };
        let good = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
        if name.is_empty() || name.starts_with('-') || !good(name) || unit.len() > 128 {
            bail!("[app] unit {unit:?} is not a unit name (letters, digits, _ - . : before .service, not starting with -)");
        }
        if instance.is_some_and(|i| !i.is_empty()) {
            bail!("[app] unit {unit:?} names one instance: give the template ({name}@.service), whose instances ferryd names by deployment, or a plain unit");
        }
        Ok(())
    }

    fn validate(&self, c: &Config) -> Result<()> {
        self.check_unit()?;
        if self.check.is_some() && self.command.is_some() {
            bail!("[app] check is for start and stop; ferryd watches a command it started itself");
        }
        if self.single_instance() && self.strategy == ferry_api::device::Strategy::HandOver {
            bail!("[app] strategy hand-over runs two instances at once: a plain unit has one; use a template unit (NAME@.service)");
        }
        let supervisor = self.supervisor();
        match (&self.command, &supervisor.start, &supervisor.stop) {
            (Some(_), None, None) => {
                if self.kill.is_some() {
                    bail!("[app] kill is for start and stop; ferryd kills a command it started itself");
                }
            }
            (None, Some(_), Some(_)) => {
                let signal = self.signal().ok();
                if self.ready_signal || self.log_file.is_some() || signal != Some(nix::sys::signal::Signal::SIGTERM) {
                    bail!("[app] ready_signal, log_file and release_signal are for command; with start and stop, the supervisor does these");
                }
            }
            (Some(_), ..) => bail!("[app] give command, or start and stop, not both"),
            _ => {
                bail!("[app] needs command (ferryd runs the application) or both start and stop (its supervisor does)")
            }
        }
        self.signal()?;
        if self.command.is_some() && self.strategy == ferry_api::device::Strategy::HandOver && !self.ready_signal {
            bail!("[app] strategy hand-over needs ready_signal = true: the old version is asked to release the device only once the new one says it is ready");
        }
        if self.ready_timeout == 0 || self.stop_timeout == 0 || self.veto_poll == 0 {
            bail!("[app] ready_timeout, stop_timeout and veto_poll must be at least 1");
        }
        if c.restart_command.is_some() {
            bail!("restart_command and [app] both restart the application: [app] replaces restart_command");
        }
        Ok(())
    }
}

/// Commands around a switch (the `[hooks]` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    #[serde(default)]
    pub pre_switch: Option<String>,
    #[serde(default)]
    pub post_switch: Option<String>,
    #[serde(default = "default_hook_timeout")]
    pub timeout: u64,
}

fn default_hook_timeout() -> u64 {
    60
}

/// Which bootloader learns of switches, trials and rollbacks (the `[bootloader]` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Bootloader {
    Uboot {
        fw_config: PathBuf,
        #[serde(default)]
        defenv: Option<PathBuf>,
    },
    Grub {
        grubenv: PathBuf,
    },
}

impl Bootloader {
    pub fn env(&self) -> Box<dyn ferry_boot::bootenv::BootEnv> {
        match self {
            Bootloader::Uboot { fw_config, defenv } => {
                Box::new(ferry_boot::bootenv::UBootEnv { config: fw_config.clone(), defenv: defenv.clone() })
            }
            Bootloader::Grub { grubenv } => Box::new(ferry_boot::bootenv::GrubEnv { file: grubenv.clone() }),
        }
    }
}

fn default_check_timeout() -> u64 {
    10
}
fn default_interval() -> u64 {
    2
}
fn default_deadline() -> u64 {
    300
}
fn default_bootlimit() -> u32 {
    3
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: String,
    /// The CA (PEM) the server's certificate must chain to; default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allows an `http://` server: everything the device sends and receives readable and
    /// changeable on the path (signed commits and documents still protect what is installed).
    #[serde(default)]
    pub insecure_http: bool,
    /// A static copy of the repository (`ferry export`, behind a web server, a CDN or an
    /// S3-compatible store) the chunks are read from; the server still answers everything
    /// else. `http://` is allowed: every chunk is checked against the signed trees, and the
    /// device sends the copy no token and no identity.
    #[serde(default)]
    pub content_url: Option<String>,
    /// The CA (PEM) an `https://` content_url's certificate must chain to; default: the
    /// system's roots (a CDN's certificate is a public one).
    #[serde(default)]
    pub content_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub current_link: PathBuf,
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    pub root_keys: Vec<PathBuf>,
    /// Branch mode only: install a branch head whose version is older than the running one.
    /// A branch head is not signed (only its commit is), so without this a server could
    /// hand a device any older commit its keys ever signed.
    #[serde(default)]
    pub allow_downgrade: bool,
    #[serde(default)]
    pub hardware: Option<String>,
    #[serde(default)]
    pub hardware_file: Option<PathBuf>,
    #[serde(default)]
    pub hardware_env: Option<String>,
    /// A command (`sh -c`) whose first line of output is the hardware revision.
    #[serde(default)]
    pub hardware_command: Option<String>,
    #[serde(default = "default_poll_interval")]
    pub poll_interval: u64,
    #[serde(default = "default_read_timeout")]
    pub read_timeout: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    /// Ask for missing chunks as patches against the device's own files.
    #[serde(default = "default_patches")]
    pub patches: bool,
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    #[serde(default)]
    pub restart_command: Option<String>,
    #[serde(default = "default_reboot_command")]
    pub reboot_command: String,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub hooks: Option<Hooks>,
    #[serde(default)]
    pub app: Option<App>,
    #[serde(default)]
    pub bootloader: Option<Bootloader>,
    #[serde(default)]
    pub fleet: Option<Fleet>,
    #[serde(default)]
    pub local_ui: Option<LocalUi>,
    #[serde(default)]
    pub provision: Option<Provision>,
}

/// `ferryd provision`: the first boot of a device flashed from an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// Run once (`sh -c`) after enrollment and the fleet's configuration, before the first
    /// update, with FERRY_SERIAL, FERRY_HARDWARE, FERRY_STATE_DIR, FERRY_CONFIG_ENV and
    /// FERRY_CONFIG_JSON set. It should be idempotent: a power cut after it ran but before
    /// that was recorded runs it again.
    #[serde(default)]
    pub init_command: Option<String>,
    /// Seconds the init command may take; default 600.
    #[serde(default = "default_init_timeout")]
    pub init_timeout: u64,
}

fn default_init_timeout() -> u64 {
    600
}

/// `ferryd local-ui`: the page on the device's own network. Exactly one of `password` and
/// `password_file`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalUi {
    /// Shown as `***` by `ferryd check-config`.
    #[serde(default, serialize_with = "hidden")]
    pub password: Option<String>,
    /// A file holding the password (its first line), e.g. written per device at first boot.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Host names the page answers to besides IP addresses and `localhost`, e.g. a name the
    /// access point's DNS gives the device. A request naming any other host is refused, so a
    /// site whose name an attacker points at the device's address cannot use the page. With
    /// `tls`, the certificate names each of them too; an IP address here (the access point's,
    /// e.g. 192.168.4.1) is named in it as an address.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Serve HTTPS with the device's own certificate (`local_ui::certificate`), made on the
    /// device at provisioning or at the page's first start; `ferryd status` prints its
    /// fingerprint for the technician to compare with the browser's.
    #[serde(default)]
    pub tls: bool,
    /// The page runs as this user once it listens and has read its password and certificate
    /// (it starts as root for those); uploads then go to `ferryd apply-server` through
    /// `apply_socket`, which installs them as root. Needs `apply_socket`.
    #[serde(default)]
    pub user: Option<String>,
    /// The Unix socket of `ferryd apply-server`: the page streams an upload there instead of
    /// installing it itself. Only root and `user` may connect.
    #[serde(default)]
    pub apply_socket: Option<PathBuf>,
}

/// The rules of `[local_ui] user` and `apply_socket` (in the file or on the command line).
pub fn check_local_ui(l: &LocalUi) -> Result<()> {
    if l.user.is_some() && l.apply_socket.is_none() {
        bail!("[local_ui] user is set without apply_socket: a page that is not root cannot install uploads itself; set apply_socket and run `ferryd apply-server`");
    }
    if let Some(u) = &l.user {
        let name = |b: u8| b.is_ascii_alphanumeric() || b"_.-".contains(&b);
        if u.is_empty() || u == "root" || u.len() > 32 || !u.bytes().all(name) {
            bail!("[local_ui] user {u:?} must be a system user's name (not root)");
        }
    }
    if l.apply_socket.as_ref().is_some_and(|p| !p.is_absolute()) {
        bail!("[local_ui] apply_socket must be an absolute path");
    }
    Ok(())
}

fn hidden<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}

impl LocalUi {
    pub fn password(&self) -> Result<String> {
        let p = match (&self.password, &self.password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the local page's password from {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            _ => bail!("[local_ui] needs exactly one of password and password_file"),
        };
        if p.chars().count() < 8 {
            bail!("the local page's password must have at least 8 characters");
        }
        Ok(p)
    }
}

/// Enrollment with a fleet server (`ferry serve --fleet`), which then sees this device's
/// reports at every check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub enrollment_token_file: PathBuf,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub serial_file: Option<PathBuf>,
    #[serde(default)]
    pub serial_env: Option<String>,
    /// A command (`sh -c`) whose first line of output is the serial number.
    #[serde(default)]
    pub serial_command: Option<String>,
    /// Run (with `sh -c`) after the fleet's configuration for this device changed and was
    /// written to `state_dir/config.json` and `config.env`; if it fails, the previous files
    /// are put back and the failure is reported.
    #[serde(default)]
    pub reload_command: Option<String>,
    /// Take configuration nobody signed, when the key document in force names no
    /// configuration keys (a fleet that does not sign configuration yet, or a device
    /// following a branch). Off by default: then such a device applies no configuration and
    /// reports why. Once the key document names configuration keys, only a document they
    /// signed is applied, whatever this says.
    #[serde(default)]
    pub unsigned_config: bool,
    /// Seconds between progress reports while an update runs; default 30.
    #[serde(default = "default_progress_interval")]
    pub progress_interval: u64,
}

fn default_progress_interval() -> u64 {
    30
}

impl Fleet {
    /// This device's serial number from the configured source.
    pub fn serial(&self) -> Result<String> {
        let value = match (&self.serial, &self.serial_file, &self.serial_env, &self.serial_command) {
            (Some(s), None, None, None) => s.clone(),
            (None, None, None, Some(cmd)) => {
                crate::process::first_line(cmd, COMMAND_TIMEOUT).context("reading the serial number")?
            }
            (None, Some(path), None, None) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the serial number from {}", path.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .trim_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string(),
            (None, None, Some(var), None) => {
                std::env::var(var).with_context(|| format!("reading the serial number from ${var}"))?.trim().to_string()
            }
            _ => bail!("[fleet] needs exactly one of serial, serial_file, serial_env and serial_command"),
        };
        if value.is_empty() {
            bail!("the serial number is empty");
        }
        Ok(value)
    }

    pub fn enrollment_token(&self) -> Result<String> {
        let path = &self.enrollment_token_file;
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the enrollment token from {}", path.display()))?;
        Ok(token.trim().to_string())
    }
}

/// How long a serial or hardware command may take.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn sources_hw(c: &Config) -> bool {
    c.hardware.is_some() || c.hardware_file.is_some() || c.hardware_env.is_some() || c.hardware_command.is_some()
}

impl Config {
    /// The same configuration for an image tree rooted at `root` (what `ferry image`
    /// builds): the state directory, current link and key files are read and written under
    /// `root`, where the device will find them at their configured paths.
    pub fn rooted(&self, root: &Path) -> Config {
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut c = self.clone();
        c.state_dir = under(&self.state_dir);
        c.current_link = under(&self.current_link);
        c.trusted_keys = self.trusted_keys.iter().map(|p| under(p)).collect();
        c.root_keys = self.root_keys.iter().map(|p| under(p)).collect();
        c.ca_file = self.ca_file.as_deref().map(under);
        c.content_ca_file = self.content_ca_file.as_deref().map(under);
        c
    }

    /// Reads and checks a configuration file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let c: Config = toml::from_str(text)?;
        if c.server.starts_with("http://") {
            if !c.insecure_http {
                bail!(
                    "server {:?} is plain HTTP: the device's tokens, configuration and identity would cross the network readable by anyone on the path. Use an https:// URL (with ca_file naming the fleet's CA), or set insecure_http = true if a VPN or a proxy on this device encrypts the link",
                    c.server
                );
            }
            if c.ca_file.is_some() {
                bail!("ca_file is set but server {:?} is http://: use an https:// URL", c.server);
            }
        } else if !c.server.starts_with("https://") {
            bail!("server {:?} must be an https:// URL (or http:// with insecure_http = true)", c.server);
        }
        match c.content_url.as_deref() {
            Some(url) if url.starts_with("http://") && c.content_ca_file.is_some() => {
                bail!("content_ca_file is set but content_url {url:?} is http://: use an https:// URL")
            }
            Some(url) if !url.starts_with("http://") && !url.starts_with("https://") => {
                bail!("content_url {url:?} must be an https:// or http:// URL")
            }
            None if c.content_ca_file.is_some() => bail!("content_ca_file is set without a content_url"),
            _ => {}
        }
        match (&c.branch, &c.channel) {
            (Some(b), None) => {
                ferry_store::object::check_branch_name(b)?;
                if c.trusted_keys.is_empty() {
                    bail!("trusted_keys is empty: a device following a branch must trust at least one signing key");
                }
            }
            (None, Some(ch)) => {
                ferry_store::object::check_branch_name(ch)?;
                if c.root_keys.is_empty() {
                    bail!("root_keys is empty: a device following a channel needs the root keys of its image");
                }
                if c.allow_downgrade {
                    bail!("allow_downgrade is for branches; a channel rolls back only by a signed rollback document");
                }
                if !c.trusted_keys.is_empty() {
                    bail!("trusted_keys is for branches; a device following a channel trusts the keys its key documents name");
                }
            }
            (Some(_), Some(_)) => bail!("give either branch or channel, not both"),
            (None, None) => bail!("give the channel (or, for development, the branch) this device follows"),
        }
        let sources =
            [c.hardware.is_some(), c.hardware_file.is_some(), c.hardware_env.is_some(), c.hardware_command.is_some()];
        if sources.iter().filter(|s| **s).count() > 1 {
            bail!("give at most one of hardware, hardware_file, hardware_env and hardware_command");
        }
        if c.channel.is_some() && !sources_hw(&c) {
            bail!("a device following a channel must know its hardware revision: set hardware, hardware_file, hardware_env or hardware_command");
        }
        if c.poll_interval == 0 {
            bail!("poll_interval must be at least 1 second");
        }
        if c.read_timeout == 0 || c.retries == 0 || c.concurrency == 0 || c.batch_bytes == 0 {
            bail!("read_timeout, retries, concurrency and batch_bytes must be at least 1");
        }
        if let Some(h) = &c.health {
            if h.check_timeout == 0 || h.deadline == 0 || h.bootlimit == 0 {
                bail!("[health] check_timeout, deadline and bootlimit must be at least 1");
            }
            if c.bootloader.is_some() && h.bootlimit > ferry_boot::bootenv::MAX_BOOTLIMIT {
                bail!(
                    "[health] bootlimit {} is more than the shipped boot scripts count: with a [bootloader] it must be at most {}",
                    h.bootlimit,
                    ferry_boot::bootenv::MAX_BOOTLIMIT
                );
            }
            if h.quiet_for >= h.deadline {
                bail!("[health] quiet_for ({} s) must be shorter than deadline ({} s)", h.quiet_for, h.deadline);
            }
            if h.commands.is_empty() && h.units.is_empty() && h.urls.is_empty() && !h.require_mark_good {
                bail!("[health] names no check: give commands, units or urls, or require_mark_good = true");
            }
            if let Some(u) = h.urls.iter().find(|u| !u.starts_with("http://")) {
                bail!("[health] url {u:?} must be an http:// URL");
            }
        }
        if let Some(a) = &c.app {
            a.validate(&c)?;
        }
        if let Some(l) = &c.local_ui {
            check_local_ui(l)?;
        }
        if let Some(f) = &c.fleet {
            let sources =
                [f.serial.is_some(), f.serial_file.is_some(), f.serial_env.is_some(), f.serial_command.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                bail!("[fleet] needs exactly one of serial, serial_file, serial_env and serial_command");
            }
            if !sources_hw(&c) {
                bail!("[fleet] needs the hardware revision (hardware, hardware_file, hardware_env or hardware_command) to enroll");
            }
        }
        for p in [&c.state_dir, &c.current_link] {
            if !p.is_absolute() {
                bail!("{} must be an absolute path", p.display());
            }
        }
        Ok(c)
    }

    /// Loads every trusted key (branch mode).
    pub fn keys(&self) -> Result<Vec<PublicKey>> {
        self.trusted_keys.iter().map(|p| PublicKey::load(p).map_err(Into::into)).collect()
    }

    /// The trusted keys as the quorum commits need (branch mode): any one of them.
    pub fn commit_quorum(&self) -> Result<ferry_store::channel::Quorum> {
        Ok(ferry_store::channel::Quorum::any(ferry_store::Signed::Commit, &self.keys()?))
    }

    /// Loads the image's root keys (channel mode).
    /// The paths under `state_dir`.
    pub fn layout(&self) -> crate::layout::Layout {
        crate::layout::Layout::new(&self.state_dir)
    }

    pub fn roots(&self) -> Result<Vec<PublicKey>> {
        self.root_keys.iter().map(|p| PublicKey::load(p).map_err(Into::into)).collect()
    }

    /// What this device follows, for messages: `channel stable` or `branch main`.
    pub fn follows(&self) -> String {
        match (&self.channel, &self.branch) {
            (Some(c), _) => format!("channel {c}"),
            (None, Some(b)) => format!("branch {b}"),
            (None, None) => "nothing".into(),
        }
    }

    /// This device's hardware revision, from the configured source; `None` if none is set.
    pub fn hardware_revision(&self) -> Result<Option<String>> {
        let value = if let Some(h) = &self.hardware {
            h.clone()
        } else if let Some(path) = &self.hardware_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the hardware revision from {}", path.display()))?;
            text.lines().next().unwrap_or("").trim().to_string()
        } else if let Some(var) = &self.hardware_env {
            std::env::var(var).with_context(|| format!("reading the hardware revision from ${var}"))?.trim().to_string()
        } else if let Some(cmd) = &self.hardware_command {
            crate::process::first_line(cmd, COMMAND_TIMEOUT).context("reading the hardware revision")?
        } else {
            return Ok(None);
        };
        if value.is_empty() || value.len() > ferry_store::object::MAX_KEY {
            bail!("hardware revision {value:?} must be 1 to {} bytes", ferry_store::object::MAX_KEY);
        }
        Ok(Some(value))
    }
}
