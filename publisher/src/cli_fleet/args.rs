//! The arguments of `ferry admin`, `ferry devices`, `ferry device`, `ferry config`,
//! `ferry rollout` and `ferry audit` (clap), as the operator types them. What it is not
//! for: what the commands do (`cli_fleet`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_api::admin::Health;

#[derive(Args)]
pub struct ServerArgs {
    /// The fleet server's base URL, e.g. https://updates.example.com:8443.
    #[arg(long, env = "FERRY_SERVER", value_name = "URL")]
    pub(super) server: String,
    /// An admin token (`ferry admin token create`).
    #[arg(long, env = "FERRY_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub(super) token: String,
    /// The CA (PEM) the server's certificate must chain to, e.g. the fleet's own
    /// (`ferry ca init`); default: the system's roots.
    #[arg(long, env = "FERRY_CA_FILE", value_name = "FILE")]
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Admin and enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it (the only time it is shown). `--enrollment` makes a
    /// fleet enrollment token for provisioning images instead of an admin token.
    Create {
        /// A name for the token, recorded in the audit log as its user.
        #[arg(long)]
        name: String,
        /// An enrollment token (for provisioning images: devices enroll with it) instead
        /// of an admin token.
        #[arg(long)]
        enrollment: bool,
        /// Write into the fleet store directly (the server must be stopped): for the first
        /// admin token.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["server", "token", "fleet_db"])]
        fleet: Option<PathBuf>,
        /// Make a new fleet store in --fleet's directory if it holds none (the first admin
        /// token of a new fleet); without it, a directory with no store is an error.
        #[arg(long, requires = "fleet")]
        create_fleet: bool,
        /// Write into the fleet's PostgreSQL database directly (servers may be running):
        /// for the first admin token of a fleet served with --fleet-db. Without --fleet,
        /// --fleet-db, --server and --token, FERRY_FLEET_DB is used if it is set.
        #[arg(long, value_name = "URL", conflicts_with_all = ["server", "token"], value_parser = ferry_publisher::cli::serve::postgres_url)]
        fleet_db: Option<String>,
        /// Create it through a running server instead, e.g. https://updates.example.com:8443
        /// (with --token).
        #[arg(long, env = "FERRY_SERVER", value_name = "URL")]
        server: Option<String>,
        /// An admin token of that server.
        #[arg(long, env = "FERRY_TOKEN", value_name = "TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The CA (PEM) the server's certificate must chain to, e.g. the fleet's own (`ferry ca
        /// init`); default: the system's roots.
        #[arg(long, env = "FERRY_CA_FILE", value_name = "FILE", conflicts_with_all = ["fleet", "fleet_db"])]
        ca_file: Option<PathBuf>,
        /// Print {"kind", "name", "token"} as JSON on stdout, for scripts (the token is still
        /// shown once only).
        #[arg(long)]
        json: bool,
    },
    /// Lists token names and kinds.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Revokes every admin or enrollment token with this name.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The tokens' name (`ferry admin token list`).
        name: String,
    },
}

#[derive(Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    pub(super) server: ServerArgs,
    /// Only devices whose serial contains this text (any case).
    #[arg(long, value_name = "TEXT")]
    pub(super) search: Option<String>,
    /// Only devices in this group.
    #[arg(long)]
    pub(super) group: Option<String>,
    /// Only devices following this channel.
    #[arg(long)]
    pub(super) channel: Option<String>,
    /// Only devices running this version.
    #[arg(long)]
    pub(super) version: Option<String>,
    /// Only devices of this hardware revision.
    #[arg(long)]
    pub(super) hardware: Option<String>,
    /// Only devices in this state: pending, accepted, revoked (or a trial state).
    #[arg(long)]
    pub(super) state: Option<String>,
    /// Only devices that are: on-trial, rolled-back (their last update went back), failing
    /// (their last update or configuration failed), silent (not seen for a day), pinned, dev
    /// (running a developer's working copy).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(Health::ALL.map(Health::as_str)))]
    pub(super) health: Option<String>,
    /// One page: at most this many of the devices that pass the filters, in serial order (1
    /// to 1000; the server reads at most 20,000 devices for one page, so a rare match may
    /// leave a page short); without it, every page.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(super) limit: Option<u16>,
    /// Start after this serial (where the previous page ended).
    #[arg(long, value_name = "SERIAL")]
    pub(super) after: Option<String>,
    /// Print the fleet's counts instead (by state, health, channel, version, hardware and
    /// group), as the web UI's fleet page shows them.
    #[arg(long, conflicts_with_all = ["search", "group", "channel", "version", "hardware", "state", "health", "limit", "after"])]
    pub(super) summary: bool,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// One device's details and history.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lets a device that enrolled while approval is required check in.
    Accept {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
    },
    /// Revokes a device: its token stops working at once and it cannot enroll again.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
    },
    /// Forgets a device and its history; it may enroll again.
    Remove {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
    },
    /// Approves a known device's new enrollment (`ferry device show` lists it): its new
    /// token replaces the old one, which stops working at once. Only for a board you know
    /// was reflashed or replaced: anyone with the enrollment token can ask.
    ApproveReenrollment {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
        /// The request's fingerprint, as `ferry device show` lists it; check it against
        /// `ferryd status` on the board. A newer request (anyone can make one) is refused.
        #[arg(long, value_name = "FINGERPRINT")]
        request: String,
    },
    /// Rejects a known device's new enrollment: the device keeps its token.
    RejectReenrollment {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
    },
    /// Sets a device's groups, in precedence order: a later group's value wins. No group
    /// clears them.
    Groups {
        #[command(flatten)]
        server: ServerArgs,
        /// The device\'s serial.
        serial: String,
        /// Group names, lowest precedence first.
        groups: Vec<String>,
    },
}

#[derive(Args)]
pub struct ScopeArgs {
    /// The fleet-wide level (the default). (`--fleet` names a fleet store's directory
    /// elsewhere; here the level is --fleet-wide.)
    #[arg(long, conflicts_with_all = ["group", "device"])]
    pub(super) fleet_wide: bool,
    /// A group's level.
    #[arg(long, value_name = "GROUP", conflicts_with = "device")]
    pub(super) group: Option<String>,
    /// One device's level (for `show`: its merged configuration and where each key comes from).
    #[arg(long, value_name = "SERIAL")]
    pub(super) device: Option<String>,
}

impl ScopeArgs {
    pub(super) fn path(&self) -> String {
        match (&self.group, &self.device) {
            (Some(g), _) => format!("group/{g}"),
            (None, Some(d)) => format!("device/{d}"),
            (None, None) => "fleet".into(),
        }
    }
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Sets KEY=VALUE pairs at one level (fleet, group or device); a narrower level wins.
    Set {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Keys and their values, e.g. LOG=debug REGION=eu.
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
    /// Removes keys from one level.
    Unset {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// The keys to remove.
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Prints one key's value at one level (with --device: the device's merged value).
    Get {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// The key to print.
        key: String,
    },
    /// Signs devices' current configuration offline with configuration keys (the operator's,
    /// never on the server) and hands it to the server, which sends it at their check-ins
    /// while it holds no configuration key of its own. Sign again after every change: a
    /// device keeps what it applied until a newer version signed for it comes.
    Sign {
        #[command(flatten)]
        server: ServerArgs,
        /// A device to sign for (repeatable; default: every device).
        #[arg(long = "device", value_name = "SERIAL")]
        devices: Vec<String>,
        /// Secret key file of a configuration key (as many as the configuration threshold).
        #[arg(long = "sign-key", value_name = "FILE", required = true)]
        sign_keys: Vec<std::path::PathBuf>,
        /// How long devices accept the document: e.g. 30d.
        #[arg(long, value_name = "DURATION", default_value = "30d")]
        expires: String,
    },
    /// Shows one level's values (with --device: the merged configuration and each key's level).
    Show {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Starts a staged rollout: the channel's current document stays what everyone gets;
    /// the next one promoted to it goes to PERCENT of the devices (of --group) first.
    Start {
        #[command(flatten)]
        server: ServerArgs,
        /// The channel whose rollout this is.
        channel: String,
        /// The share of the devices (0 to 100) that take the next release first.
        #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
        /// Only devices in this group take part.
        #[arg(long)]
        group: Option<String>,
        /// Pause by itself when more than this share (percent) of the devices that took the
        /// new release roll back or fail.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
        max_failures: u8,
    },
    /// Raises the share of devices that take the new release (it never goes down: lowering
    /// would take it away from devices that have it).
    SetPercent {
        #[command(flatten)]
        server: ServerArgs,
        /// The channel whose rollout this is.
        channel: String,
        /// The new share (0 to 100), at least the current one.
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
    },
    /// No more devices start taking the new release.
    Pause {
        #[command(flatten)]
        server: ServerArgs,
        /// The channel whose rollout this is.
        channel: String,
    },
    /// Continues a paused or halted rollout.
    Resume {
        #[command(flatten)]
        server: ServerArgs,
        /// The channel whose rollout this is.
        channel: String,
    },
    /// Stops for good: devices that took the release keep it (promote the previous commit
    /// with --rollback to move them back); the others stay where they are.
    Abort {
        #[command(flatten)]
        server: ServerArgs,
        /// The channel whose rollout this is.
        channel: String,
    },
    /// Every rollout: state, share, devices that took it and failed, and why it halted.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub(super) server: ServerArgs,
    /// How many of the newest entries.
    #[arg(long, default_value_t = 50)]
    pub(super) limit: usize,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    pub(super) json: bool,
}
