//! `ferry admin`, `ferry devices`, `ferry device` and `ferry audit`: the operator's side of
//! the fleet, spoken over the admin API (`--server`, `--token`), except the very first admin
//! token, which `ferry admin token create --fleet DIR` writes into the fleet store directly
//! (with the server stopped: the store admits one process).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_publisher::fleet::{Caller, Fleet, Settings, TokenKind};
use serde_json::Value;

#[derive(Args)]
pub struct ServerArgs {
    /// The fleet server's base URL, e.g. http://updates.example.com:8080.
    #[arg(long, env = "FERRY_SERVER", value_name = "URL")]
    server: String,
    /// An admin token (`ferry admin token create`).
    #[arg(long, env = "FERRY_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: String,
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
        #[arg(long)]
        enrollment: bool,
        /// Write into the fleet store directly (the server must be stopped): for the first
        /// admin token.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["server", "token"])]
        fleet: Option<PathBuf>,
        #[arg(long, env = "FERRY_SERVER", value_name = "URL")]
        server: Option<String>,
        #[arg(long, env = "FERRY_TOKEN", value_name = "TOKEN", hide_env_values = true)]
        token: Option<String>,
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
        name: String,
    },
}

#[derive(Args)]
pub struct DevicesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only devices in this group.
    #[arg(long)]
    group: Option<String>,
    /// Only devices following this channel.
    #[arg(long)]
    channel: Option<String>,
    /// Only devices in this state: pending, accepted, revoked (or a trial state).
    #[arg(long)]
    state: Option<String>,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// One device's details and history.
    Show {
        #[command(flatten)]
        server: ServerArgs,
        serial: String,
        /// Print the result as JSON on stdout, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Lets a device that enrolled while approval is required check in.
    Accept {
        #[command(flatten)]
        server: ServerArgs,
        serial: String,
    },
    /// Revokes a device: its token stops working at once and it cannot enroll again.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        serial: String,
    },
    /// Forgets a device and its history; it may enroll again.
    Remove {
        #[command(flatten)]
        server: ServerArgs,
        serial: String,
    },
    /// Approves a known device's new enrollment (`ferry device show` lists it): its new
    /// token replaces the old one, which stops working at once. Only for a board you know
    /// was reflashed or replaced: anyone with the enrollment token can ask.
    ApproveReenrollment {
        #[command(flatten)]
        server: ServerArgs,
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
        serial: String,
    },
    /// Sets a device's groups, in precedence order: a later group's value wins. No group
    /// clears them.
    Groups {
        #[command(flatten)]
        server: ServerArgs,
        serial: String,
        groups: Vec<String>,
    },
}

#[derive(Args)]
pub struct ScopeArgs {
    /// The fleet-wide level (the default).
    #[arg(long, conflicts_with_all = ["group", "device"])]
    fleet: bool,
    /// A group's level.
    #[arg(long, value_name = "GROUP", conflicts_with = "device")]
    group: Option<String>,
    /// One device's level (for `show`: its merged configuration and where each key comes from).
    #[arg(long, value_name = "SERIAL")]
    device: Option<String>,
}

impl ScopeArgs {
    fn path(&self) -> String {
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
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
    /// Removes keys from one level.
    Unset {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Prints one key's value at one level (with --device: the device's merged value).
    Get {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        key: String,
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
        channel: String,
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
        channel: String,
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
    },
    /// No more devices start taking the new release.
    Pause {
        #[command(flatten)]
        server: ServerArgs,
        channel: String,
    },
    /// Continues a paused or halted rollout.
    Resume {
        #[command(flatten)]
        server: ServerArgs,
        channel: String,
    },
    /// Stops for good: devices that took the release keep it (promote the previous commit
    /// with --rollback to move them back); the others stay where they are.
    Abort {
        #[command(flatten)]
        server: ServerArgs,
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
    server: ServerArgs,
    /// How many of the newest entries.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print the result as JSON on stdout, for scripts.
    #[arg(long)]
    json: bool,
}

/// A blocking call to the admin API.
fn call(server: &ServerArgs, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let url = format!("{}/v1/admin/{path}", server.server.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build()?;
        let mut req = match method {
            "POST" => client.post(&url),
            _ => client.get(&url),
        };
        req = req.bearer_auth(&server.token);
        if let Some(b) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(serde_json::to_vec(&b)?);
        }
        let resp = req.send().await.with_context(|| format!("asking {url}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = v.get("error").and_then(Value::as_str).map(str::to_string);
            bail!("{url}: {status}: {}", detail.unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(v)
    })
}

fn when(v: &Value) -> String {
    v.as_i64().map_or_else(|| "never".into(), ferry_publisher::show::format_time)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub fn admin(cmd: AdminCommand) -> Result<()> {
    let AdminCommand::Token(cmd) = cmd;
    match cmd {
        TokenCommand::Create { name, enrollment, fleet, server, token } => {
            let kind = if enrollment { TokenKind::Enrollment } else { TokenKind::Admin };
            let created = match (fleet, server, token) {
                (Some(dir), _, _) => {
                    let f = Fleet::open(&dir, Settings::default()).map_err(|e| match e {
                        ferry_publisher::fleet::FleetError::Store(ferry_store::StoreError::Locked { .. }) => anyhow!(
                            "{} is in use (is `ferry serve --fleet` running?); create tokens through it with --server and --token",
                            dir.display()
                        ),
                        e => anyhow!("opening the fleet store {}: {e}", dir.display()),
                    })?;
                    f.create_token(&Caller::Local, kind, &name)?
                }
                (None, Some(server), Some(token)) => {
                    let body = serde_json::json!({ "name": name, "kind": kind });
                    let v = call(&ServerArgs { server, token }, "POST", "tokens", Some(body))?;
                    v["token"].as_str().ok_or_else(|| anyhow!("the server answered without a token"))?.to_string()
                }
                _ => bail!("give --fleet DIR (server stopped) or --server URL and --token TOKEN"),
            };
            eprintln!(
                "created {} token {name}; it is shown once, keep it safe",
                if enrollment { "enrollment" } else { "admin" }
            );
            println!("{created}");
        }
        TokenCommand::List { server, json } => {
            let v = call(&server, "GET", "tokens", None)?;
            if json {
                crate::print_json(&v)?;
            } else {
                for t in v.as_array().into_iter().flatten() {
                    println!("{:<11} {:<24} created {}", text(&t["kind"]), text(&t["name"]), when(&t["created"]));
                }
            }
        }
        TokenCommand::Revoke { server, name } => {
            let v = call(&server, "POST", &format!("tokens/{name}/revoke"), None)?;
            eprintln!("revoked {} token(s) named {name}", v["revoked"]);
        }
    }
    Ok(())
}

pub fn devices(a: DevicesArgs) -> Result<()> {
    let mut query = Vec::new();
    for (k, v) in [("group", &a.group), ("channel", &a.channel), ("state", &a.state)] {
        if let Some(v) = v {
            query.push(format!("{k}={v}"));
        }
    }
    let path = if query.is_empty() { "devices".to_string() } else { format!("devices?{}", query.join("&")) };
    let v = call(&a.server, "GET", &path, None)?;
    if a.json {
        return crate::print_json(&v);
    }
    println!(
        "{:<20} {:<10} {:<9} {:<10} {:<12} {:<10} {:<24} LAST ERROR",
        "SERIAL", "HARDWARE", "STATE", "CHANNEL", "VERSION", "TRIAL", "LAST SEEN"
    );
    for d in v.as_array().into_iter().flatten() {
        let r = &d["report"];
        println!(
            "{:<20} {:<10} {:<9} {:<10} {:<12} {:<10} {:<24} {}",
            text(&d["serial"]),
            text(&d["hardware"]),
            text(&d["state"]),
            text(&r["channel"]),
            text(&r["current_version"]),
            text(&r["trial"]),
            when(&d["last_seen"]),
            r["last_error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn device(cmd: DeviceCommand) -> Result<()> {
    let (server, serial, action) = match cmd {
        DeviceCommand::Show { server, serial, json } => {
            let v = call(&server, "GET", &format!("devices/{serial}"), None)?;
            if json {
                return crate::print_json(&v);
            }
            let r = &v["report"];
            println!("device {} ({}), {}", text(&v["serial"]), text(&v["hardware"]), text(&v["state"]));
            println!("  enrolled  {}\n  last seen {}", when(&v["enrolled"]), when(&v["last_seen"]));
            println!(
                "  channel {}, running {} ({})",
                text(&r["channel"]),
                text(&r["current_version"]),
                text(&r["current"])
            );
            if let Some(e) = r["last_error"].as_str() {
                println!("  last error: {e}");
            }
            let re = &v["reenrollment"];
            if !re.is_null() {
                println!(
                    "  enrolled again {} ({}, enrollment token {}, request {}): if `ferryd status` on the board shows that fingerprint, `ferry device approve-reenrollment {} --request {}` hands it this device's identity; `reject-reenrollment` refuses it",
                    when(&re["at"]),
                    text(&re["hardware"]),
                    text(&re["enrollment_token"]),
                    text(&re["request"]),
                    text(&v["serial"]),
                    text(&re["request"])
                );
            }
            for e in v["events"].as_array().into_iter().flatten() {
                println!("  {}  {}", when(&e["at"]), text(&e["what"]));
            }
            return Ok(());
        }
        DeviceCommand::Groups { server, serial, groups } => {
            let v = call(
                &server,
                "POST",
                &format!("devices/{serial}/groups"),
                Some(serde_json::json!({ "groups": groups })),
            )?;
            eprintln!("device {serial}: groups {}", v["groups"]);
            return Ok(());
        }
        DeviceCommand::Accept { server, serial } => (server, serial, "accept"),
        DeviceCommand::Revoke { server, serial } => (server, serial, "revoke"),
        DeviceCommand::Remove { server, serial } => (server, serial, "remove"),
        DeviceCommand::ApproveReenrollment { server, serial, request } => {
            let body = serde_json::json!({ "request": request });
            call(&server, "POST", &format!("devices/{serial}/approve-reenrollment"), Some(body))?;
            eprintln!("device {serial}: re-enrollment {request} approved");
            return Ok(());
        }
        DeviceCommand::RejectReenrollment { server, serial } => (server, serial, "reject-reenrollment"),
    };
    call(&server, "POST", &format!("devices/{serial}/{action}"), None)?;
    eprintln!("device {serial}: {action} done");
    Ok(())
}

pub fn audit(a: AuditArgs) -> Result<()> {
    let v = call(&a.server, "GET", &format!("audit?limit={}", a.limit), None)?;
    if a.json {
        return crate::print_json(&v);
    }
    for e in v.as_array().into_iter().flatten() {
        println!("{}  {:<22} {:<14} {}", when(&e["at"]), text(&e["who"]), text(&e["action"]), text(&e["detail"]));
    }
    Ok(())
}

pub fn config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Set { server, scope, pairs } => {
            let mut set = serde_json::Map::new();
            for p in &pairs {
                let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("{p:?} is not KEY=VALUE"))?;
                set.insert(k.to_string(), Value::String(v.to_string()));
            }
            let v =
                call(&server, "POST", &format!("config/{}", scope.path()), Some(serde_json::json!({ "set": set })))?;
            eprintln!("configuration version {}", v["version"]);
        }
        ConfigCommand::Unset { server, scope, keys } => {
            let v =
                call(&server, "POST", &format!("config/{}", scope.path()), Some(serde_json::json!({ "unset": keys })))?;
            eprintln!("configuration version {}", v["version"]);
        }
        ConfigCommand::Get { server, scope, key } => {
            let v = show(&server, &scope)?;
            match v["values"].get(&key).and_then(Value::as_str) {
                Some(value) => println!("{value}"),
                None => bail!("{key} is not set at {}", scope.path()),
            }
        }
        ConfigCommand::Show { server, scope, json } => {
            let v = show(&server, &scope)?;
            if json {
                return crate::print_json(&v);
            }
            println!("# {} (version {})", scope.path(), v["version"]);
            for (k, value) in v["values"].as_object().into_iter().flatten() {
                match v["sources"].get(k).and_then(Value::as_str) {
                    Some(src) => println!("{k}={}    # {src}", value.as_str().unwrap_or_default()),
                    None => println!("{k}={}", value.as_str().unwrap_or_default()),
                }
            }
        }
    }
    Ok(())
}

/// One level's values, or a device's merged configuration with `sources`.
fn show(server: &ServerArgs, scope: &ScopeArgs) -> Result<Value> {
    match (&scope.group, &scope.device) {
        (None, Some(d)) => call(server, "GET", &format!("devices/{d}/config"), None),
        _ => call(server, "GET", &format!("config/{}", scope.path()), None),
    }
}

fn print_rollout(v: &Value) {
    println!(
        "{:<12} {:<8} {:>3}%{}  took {} of {} eligible ({} on the channel), {} failed; from serial {}",
        text(&v["channel"]),
        text(&v["state"]),
        v["percent"],
        v["group"].as_str().map(|g| format!(" of group {g}")).unwrap_or_default(),
        v["took"],
        v["eligible"],
        v["devices"],
        v["failed"],
        v["base_serial"]
    );
    if let Some(r) = v["halt_reason"].as_str() {
        println!("             halted: {r}");
    }
}

pub fn rollout(cmd: RolloutCommand) -> Result<()> {
    let (server, channel, action, body) = match cmd {
        RolloutCommand::Status { server, json } => {
            let v = call(&server, "GET", "rollouts", None)?;
            if json {
                return crate::print_json(&v);
            }
            for r in v.as_array().into_iter().flatten() {
                print_rollout(r);
            }
            return Ok(());
        }
        RolloutCommand::Start { server, channel, percent, group, max_failures } => {
            let body = serde_json::json!({ "percent": percent, "group": group, "max_failure_percent": max_failures });
            (server, channel, "start", Some(body))
        }
        RolloutCommand::SetPercent { server, channel, percent } => {
            (server, channel, "set-percent", Some(serde_json::json!({ "percent": percent })))
        }
        RolloutCommand::Pause { server, channel } => (server, channel, "pause", None),
        RolloutCommand::Resume { server, channel } => (server, channel, "resume", None),
        RolloutCommand::Abort { server, channel } => (server, channel, "abort", None),
    };
    // Channel names may hold `/`: one path segment, escaped.
    let segment = channel.replace('%', "%25").replace('/', "%2F");
    let v = call(&server, "POST", &format!("rollouts/{segment}/{action}"), body)?;
    print_rollout(&v);
    Ok(())
}
