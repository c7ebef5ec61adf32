//! `ferry admin`, `ferry devices`, `ferry device`, `ferry config`, `ferry rollout` and
//! `ferry audit`: the operator's side of the fleet, spoken over the admin API (`--server`,
//! `--token`) in `ferry_api`'s messages, except the very first admin token, which
//! `ferry admin token create --fleet DIR` writes into the fleet store directly (with the
//! server stopped: the store admits one process), or `--fleet-db URL` into its PostgreSQL
//! database (servers may run). The arguments are in `args`.

mod args;

pub use args::{
    AdminCommand, AuditArgs, ConfigCommand, DeviceCommand, DevicesArgs, RolloutCommand, ScopeArgs, ServerArgs,
    TokenCommand,
};

use anyhow::{anyhow, bail, Context, Result};
use ferry_api::admin::{
    AuditEntry, ConfigChange, ConfigLevel, ConfigVersion, DeviceAction, DeviceActionAnswer, DeviceGroups, DeviceQuery,
    DeviceView, FleetSummary, Groups, MergedConfig, RolloutAction, RolloutRequest, RolloutStatus, SetPercent,
    TokenCreated, TokenKind, TokenRecord, TokenRequest, TokensRevoked,
};
use ferry_api::ErrorBody;
use ferry_publisher::fleet::{Caller, Fleet, Settings};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The most bytes one answer of the admin API may hold: a full page of devices is far below
/// it; a server sending more is refused rather than held in memory.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The most bytes all answers of one command may hold together (every page of a large
/// fleet's device list is far below it).
const MAX_COMMAND_BYTES: usize = 1 << 30;

/// The most pages of devices `ferry devices` (and `ferry config sign`) follows: a million
/// devices at the server's page size; a server naming more is refused.
const MAX_DEVICE_PAGES: usize = 1000;

/// A connection to the admin API for one command: one runtime and one client, so a command
/// that reads many pages reuses its connection.
struct Admin<'a> {
    server: &'a ServerArgs,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// Bytes of the answers received so far.
    received: std::cell::Cell<usize>,
}

impl<'a> Admin<'a> {
    fn new(server: &'a ServerArgs) -> Result<Admin<'a>> {
        let url = reqwest::Url::parse(&server.server).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
        if url.is_none_or(|u| u.host().is_none()) {
            bail!(
                "--server {:?} is not a server's address: give it as http://HOST:PORT or https://HOST:PORT",
                printable(&server.server, 200)
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = ferry_publisher::tls::https_client(server.ca_file.as_deref())?
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Admin { server, rt, client, received: std::cell::Cell::new(0) })
    }

    /// `method` on `/v1/admin/{path}` with `body` as JSON, the answer read as `A`; and the
    /// path (under `/v1/admin/`) of the next page if the answer names one
    /// (`Link: </v1/admin/…>; rel="next"`).
    fn call_paged<A: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(A, Option<String>)> {
        let url = format!("{}/v1/admin/{path}", self.server.server.trim_end_matches('/'));
        self.rt.block_on(async {
            let mut req = match method {
                "POST" => self.client.post(&url),
                _ => self.client.get(&url),
            };
            req = req.bearer_auth(&self.server.token);
            if let Some(b) = body {
                req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(serde_json::to_vec(b)?);
            }
            let mut resp = req.send().await.map_err(|e| unreachable(&url, &e))?;
            let status = resp.status();
            let next =
                resp.headers().get(reqwest::header::LINK).and_then(|v| v.to_str().ok()).and_then(|v| {
                    v.strip_prefix("</v1/admin/")?.split_once(">; rel=\"next\"").map(|(p, _)| p.to_string())
                });
            let mut bytes = Vec::new();
            while let Some(piece) = resp.chunk().await.with_context(|| format!("reading the answer of {url}"))? {
                if bytes.len() + piece.len() > MAX_ANSWER_BYTES {
                    bail!("{url}: the answer is larger than {} MiB; refused", MAX_ANSWER_BYTES >> 20);
                }
                self.received.set(self.received.get() + piece.len());
                if self.received.get() > MAX_COMMAND_BYTES {
                    bail!(
                        "{url}: the server's answers to this command passed {} MiB; refused",
                        MAX_COMMAND_BYTES >> 20
                    );
                }
                bytes.extend_from_slice(&piece);
            }
            if !status.is_success() {
                let detail = serde_json::from_slice::<ErrorBody>(&bytes).map(|e| e.error);
                let detail = detail.unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                bail!("{url}: {status}: {}", printable(&detail, 2000));
            }
            let a = serde_json::from_slice(&bytes).with_context(|| format!("reading the answer of {url}"))?;
            Ok((a, next))
        })
    }
}

/// Whether `c` reorders or hides the text around it on a terminal (the bidirectional
/// controls, zero-width marks): a server's words must not rearrange the line they are in.
fn reorders(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// What to do about a request that got no answer, instead of the HTTP library's chain of
/// causes.
fn unreachable(url: &str, e: &reqwest::Error) -> anyhow::Error {
    use std::error::Error;
    // The innermost cause names what failed (`Connection refused`, a certificate's fault).
    let mut root: &dyn Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if e.is_builder() {
        anyhow!("{url} is not a URL a request can go to: give --server as http://HOST:PORT or https://HOST:PORT")
    } else if e.is_timeout() {
        anyhow!("{url}: no answer within 30 s: is the server overloaded, or is --server the right address?")
    } else if e.is_connect() {
        anyhow!(
            "cannot reach {url}: {root}. Is `ferry serve` running there, and is --server (or FERRY_SERVER) its address? \
             (For HTTPS with a private CA, give --ca-file.)"
        )
    } else {
        anyhow!("{url}: the request failed: {root}")
    }
}

/// A server's words made safe for a terminal: control characters (an escape sequence would
/// be one) shown escaped, and at most `max` characters.
fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(|c| if c.is_control() || reorders(c) { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A blocking call to the admin API: `body` as JSON, the answer read as `A`.
fn call<A: DeserializeOwned>(
    server: &ServerArgs,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<A> {
    Admin::new(server)?.call_paged(method, path, body).map(|(a, _)| a)
}

/// A call without a body.
fn get<A: DeserializeOwned>(server: &ServerArgs, method: &str, path: &str) -> Result<A> {
    call(server, method, path, None::<&()>)
}

/// Prints an answer for `--json` with its keys in alphabetical order, as `ferry` always
/// printed them (it used to hold answers in serde_json's sorted map).
fn print_sorted(v: &impl Serialize) -> Result<()> {
    crate::print_json(&serde_json::to_value(v)?)
}

fn when(t: Option<i64>) -> String {
    t.map_or_else(|| "never".into(), ferry_publisher::show::format_time)
}

fn text(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

pub fn admin(cmd: AdminCommand) -> Result<()> {
    let AdminCommand::Token(cmd) = cmd;
    match cmd {
        TokenCommand::Create { name, enrollment, fleet, create_fleet, fleet_db, server, token, ca_file, json } => {
            let kind = if enrollment { TokenKind::Enrollment } else { TokenKind::Admin };
            // FERRY_FLEET_DB (what `ferry serve` reads) only when nothing else says where
            // to write: a --server with its --token goes through the server as always.
            let fleet_db = match (&fleet_db, &fleet, &server, &token) {
                (None, None, None, None) => match std::env::var("FERRY_FLEET_DB") {
                    Ok(v) if !v.is_empty() => Some(
                        ferry_publisher::cli::serve::postgres_url(&v).map_err(|e| anyhow!("FERRY_FLEET_DB: {e}"))?,
                    ),
                    _ => None,
                },
                _ => fleet_db,
            };
            let created = match (fleet, server, token) {
                (None, _, _) if fleet_db.is_some() => {
                    let url = fleet_db.unwrap_or_default();
                    let at = ferry_publisher::fleet::db::Location::Postgres(url);
                    let f = Fleet::open(&at, Settings::default())
                        .map_err(|e| anyhow!("opening the fleet database {}: {e}", at.describe()))?;
                    f.create_token(&Caller::Local, kind, &name)?
                }
                (Some(dir), _, _) => {
                    ferry_publisher::fleet::db::check_embedded(&dir, create_fleet)?;
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
                    let body = TokenRequest { kind, name: name.clone() };
                    let v: TokenCreated = call(&ServerArgs { server, token, ca_file }, "POST", "tokens", Some(&body))
                        .map_err(|e| match e.downcast_ref::<serde_json::Error>() {
                        Some(_) => anyhow!("the server answered without a token"),
                        None => e,
                    })?;
                    v.token
                }
                _ => bail!("give --fleet DIR (server stopped), --fleet-db URL (or FERRY_FLEET_DB), or --server URL and --token TOKEN"),
            };
            eprintln!("created {} token {name}; it is shown once, keep it safe", kind.as_str());
            if json {
                print_sorted(&serde_json::json!({ "kind": kind.as_str(), "name": name, "token": created }))?;
            } else {
                println!("{created}");
            }
        }
        TokenCommand::List { server, json } => {
            let list: Vec<TokenRecord> = get(&server, "GET", "tokens")?;
            if json {
                print_sorted(&list)?;
            } else {
                let mut rows = vec![["KIND", "NAME", "CREATED"].map(String::from).to_vec()];
                rows.extend(
                    list.iter().map(|t| vec![t.kind.as_str().into(), printable(&t.name, 64), when(Some(t.created))]),
                );
                ferry_publisher::cli::print_table(&rows);
            }
        }
        TokenCommand::Revoke { server, name } => {
            let v: TokensRevoked = get(&server, "POST", &format!("tokens/{name}/revoke"))?;
            eprintln!("revoked {} token(s) named {name}", v.revoked);
        }
    }
    Ok(())
}

/// The devices of the list at `path` (`devices?…`) and, with `all`, of every page after it;
/// and the path of the page after the last read, if more follow. A next page must be a page
/// of the device list, named once; a page holds at most [`DeviceQuery::MAX_LIMIT`] devices,
/// and at most [`MAX_DEVICE_PAGES`] are read (a million devices at the server's page size).
fn device_pages(admin: &Admin, mut path: String, all: bool) -> Result<(Vec<DeviceView>, Option<String>)> {
    let mut list: Vec<DeviceView> = Vec::new();
    let mut seen = std::collections::HashSet::from([path.clone()]);
    loop {
        let (page, next): (Vec<DeviceView>, Option<String>) = admin.call_paged("GET", &path, None::<&()>)?;
        if page.len() > DeviceQuery::MAX_LIMIT {
            bail!("the server answered {} devices in one page (at most {})", page.len(), DeviceQuery::MAX_LIMIT);
        }
        list.extend(page);
        if let Some(n) = &next {
            if !n.starts_with("devices?") {
                bail!("the server named {:?} as the next page of the device list", printable(n, 200));
            }
        }
        match next {
            Some(n) if all => {
                // A server naming a page it already gave, or pages without end, would never
                // end the loop.
                if !seen.insert(n.clone()) {
                    bail!("the server named the page {} twice", printable(&n, 200));
                }
                if seen.len() > MAX_DEVICE_PAGES {
                    bail!(
                        "the server named more than {MAX_DEVICE_PAGES} pages of devices; \
                         read them a page at a time with `ferry devices --limit N --after SERIAL`"
                    );
                }
                path = n;
            }
            next => return Ok((list, next)),
        }
    }
}

pub fn devices(a: DevicesArgs) -> Result<()> {
    let admin = Admin::new(&a.server)?;
    if a.summary {
        let (v, _): (FleetSummary, _) = admin.call_paged("GET", "summary", None::<&()>)?;
        return if a.json { print_sorted(&v) } else { print_summary(&v) };
    }
    let query = DeviceQuery {
        q: a.search.clone(),
        group: a.group.clone(),
        channel: a.channel.clone(),
        version: a.version.clone(),
        hardware: a.hardware.clone(),
        state: a.state.clone(),
        health: a.health.clone(),
        limit: a.limit.map(usize::from),
        after: a.after.clone(),
    };
    let path = query.path();
    // Every page, unless --limit asked for one.
    let (list, next) = device_pages(&admin, path, a.limit.is_none())?;
    let after = next.as_deref().and_then(|n| ferry_api::admin::query_value(n.split_once('?')?.1, "after"));
    // A serial, as the server's rule has it; anything else from a server is not printed.
    if let Some(after) = after.filter(|a| ferry_publisher::fleet::check_name("after", a).is_ok()) {
        eprintln!("more devices follow: add --after {after}");
    }
    if a.json {
        return print_sorted(&list);
    }
    let now = ferry_publisher::fleet::now();
    let mut rows = vec![["SERIAL", "HARDWARE", "STATE", "CHANNEL", "VERSION", "TRIAL", "LAST SEEN", "LAST RESULT"]
        .map(String::from)
        .to_vec()];
    for d in &list {
        let r = &d.report;
        // Pinned and dev-linked devices take no fleet update: the version column says so.
        let mut version = text(&r.current_version).to_string();
        for (flag, name) in [(r.pinned, "pinned"), (r.dev, "dev")] {
            if flag == Some(true) {
                version.push_str(&format!(" ({name})"));
            }
        }
        let result = match (&r.last_result, &r.last_error) {
            (Some(res), Some(e)) => format!("{}: {}", printable(res, 32), printable(e, 120)),
            (None, Some(e)) => printable(e, 120),
            (res, None) => printable(text(res), 32),
        };
        rows.push(vec![
            printable(&d.serial, 64),
            printable(&d.hardware, 32),
            d.state.as_str().into(),
            printable(text(&r.channel), 64),
            printable(&version, 48),
            printable(text(&r.trial), 24),
            ago(d.last_seen, now),
            result,
        ]);
    }
    ferry_publisher::cli::print_table(&rows);
    if list.is_empty() {
        eprintln!("no device matches");
    }
    Ok(())
}

/// How long ago `t` was, for a table: `42s ago`, `5m ago`, `3h ago`, `2d ago`, or `never`.
fn ago(t: Option<i64>, now: i64) -> String {
    let Some(t) = t else { return "never".into() };
    let s = now.saturating_sub(t).max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// `ferry devices --summary`: each count list as `name count` lines under its heading.
fn print_summary(v: &FleetSummary) -> Result<()> {
    println!("{} devices (counted {})", v.devices, when(Some(v.at)));
    for (title, counts) in [
        ("state", &v.state),
        ("health", &v.health),
        ("channel", &v.channel),
        ("version", &v.version),
        ("hardware", &v.hardware),
        ("group", &v.group),
    ] {
        println!("\n{}", title.to_uppercase());
        let mut rows: Vec<Vec<String>> = counts
            .counts
            .iter()
            .map(|c| vec![format!("  {}", printable(c.name.as_deref().unwrap_or("(none)"), 64)), c.devices.to_string()])
            .collect();
        if counts.other > 0 {
            rows.push(vec!["  (others)".into(), counts.other.to_string()]);
        }
        ferry_publisher::cli::print_table(&rows);
    }
    Ok(())
}

pub fn device(cmd: DeviceCommand) -> Result<()> {
    let (server, serial, action) = match cmd {
        DeviceCommand::Show { server, serial, json } => {
            let d: DeviceView = get(&server, "GET", &format!("devices/{serial}"))?;
            if json {
                return print_sorted(&d);
            }
            let r = &d.report;
            println!("device {} ({}), {}", d.serial, d.hardware, d.state.as_str());
            println!("  enrolled  {}\n  last seen {}", when(Some(d.enrolled)), when(d.last_seen));
            println!(
                "  channel {}, running {} ({})",
                printable(text(&r.channel), 255),
                printable(text(&r.current_version), 128),
                printable(text(&r.current), 64)
            );
            if r.pinned == Some(true) {
                println!("  pinned by a developer: takes no fleet update until `ferryd unpin`");
            }
            if r.dev == Some(true) {
                println!("  runs a developer's working copy, not a release (`ferryd dev --off` ends it)");
            }
            println!("  trial {}, last result {}", printable(text(&r.trial), 64), printable(text(&r.last_result), 32));
            if let Some(e) = &r.last_error {
                println!("  last error: {}", printable(e, 2000));
            }
            if let Some(re) = &d.reenrollment {
                println!(
                    "  enrolled again {} ({}, enrollment token {}, request {}): if `ferryd status` on the board shows that fingerprint, `ferry device approve-reenrollment {} --request {}` hands it this device's identity; `reject-reenrollment` refuses it",
                    when(Some(re.at)),
                    printable(&re.hardware, 128),
                    printable(&re.enrollment_token, 128),
                    re.request,
                    d.serial,
                    re.request
                );
            }
            for e in d.events.into_iter().flatten() {
                println!("  {}  {}", when(Some(e.at)), printable(&e.what, 2000));
            }
            return Ok(());
        }
        DeviceCommand::Groups { server, serial, groups } => {
            let v: DeviceGroups = call(&server, "POST", &format!("devices/{serial}/groups"), Some(&Groups { groups }))?;
            eprintln!("device {serial}: groups {}", serde_json::to_string(&v.groups)?);
            return Ok(());
        }
        DeviceCommand::Accept { server, serial } => (server, serial, DeviceAction::Accept),
        DeviceCommand::Revoke { server, serial } => (server, serial, DeviceAction::Revoke),
        DeviceCommand::Remove { server, serial } => (server, serial, DeviceAction::Remove),
        DeviceCommand::ApproveReenrollment { server, serial, request } => {
            let body = ferry_api::admin::Approval { request: request.clone() };
            let path = format!("devices/{serial}/{}", DeviceAction::ApproveReenrollment.as_str());
            let _: DeviceActionAnswer = call(&server, "POST", &path, Some(&body))?;
            eprintln!("device {serial}: re-enrollment {request} approved");
            return Ok(());
        }
        DeviceCommand::RejectReenrollment { server, serial } => (server, serial, DeviceAction::RejectReenrollment),
    };
    let _: DeviceActionAnswer = get(&server, "POST", &format!("devices/{serial}/{}", action.as_str()))?;
    eprintln!("device {serial}: {} done", action.as_str());
    Ok(())
}

pub fn audit(a: AuditArgs) -> Result<()> {
    let entries: Vec<AuditEntry> = get(&a.server, "GET", &format!("audit?limit={}", a.limit))?;
    if a.json {
        return print_sorted(&entries);
    }
    for e in entries {
        println!("{}  {:<22} {:<14} {}", when(Some(e.at)), e.who, e.action, e.detail);
    }
    Ok(())
}

pub fn config(cmd: ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Set { server, scope, pairs } => {
            let mut change = ConfigChange::default();
            for p in &pairs {
                let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("{p:?} is not KEY=VALUE"))?;
                change.set.insert(k.to_string(), v.to_string());
            }
            let v: ConfigVersion = call(&server, "POST", &format!("config/{}", scope.path()), Some(&change))?;
            eprintln!("configuration version {}", v.version);
        }
        ConfigCommand::Unset { server, scope, keys } => {
            let change = ConfigChange { unset: keys, ..ConfigChange::default() };
            let v: ConfigVersion = call(&server, "POST", &format!("config/{}", scope.path()), Some(&change))?;
            eprintln!("configuration version {}", v.version);
        }
        ConfigCommand::Sign { server, devices, sign_keys, expires } => {
            let keys = sign_keys.iter().map(|p| ferry_store::SecretKey::load(p)).collect::<Result<Vec<_>, _>>()?;
            let keys: Vec<&ferry_store::SecretKey> = keys.iter().collect();
            let lifetime =
                ferry_publisher::channels::parse_duration(&expires).map_err(|e| anyhow!("--expires: {e}"))?;
            let admin = Admin::new(&server)?;
            let serials = if devices.is_empty() {
                device_pages(&admin, DeviceQuery::default().path(), true)?.0.into_iter().map(|d| d.serial).collect()
            } else {
                devices
            };
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            for serial in serials {
                // A serial goes into a path: the server's own rule for serials first.
                ferry_publisher::fleet::check_name("serial", &serial)?;
                let (m, _): (MergedConfig, _) =
                    admin.call_paged("GET", &format!("devices/{serial}/config"), None::<&()>)?;
                let Some(envelope) = ferry_publisher::fleet::sign_config(&keys, &serial, &m, now, lifetime)
                    .map_err(|e| anyhow!("device {serial}'s configuration cannot be signed: {e}"))?
                else {
                    eprintln!("{serial}: no configuration yet; nothing signed");
                    continue;
                };
                let upload = ferry_api::admin::ConfigDocumentUpload { document: hex::encode(envelope) };
                let (v, _): (ConfigVersion, _) =
                    admin.call_paged("POST", &format!("devices/{serial}/config-document"), Some(&upload))?;
                println!(
                    "{serial}: configuration version {} signed, expires {}",
                    v.version,
                    ferry_publisher::show::format_time(now.saturating_add(lifetime))
                );
            }
        }
        ConfigCommand::Get { server, scope, key } => match show(&server, &scope)?.values().get(&key) {
            Some(value) => println!("{value}"),
            None => bail!("{key} is not set at {}", scope.path()),
        },
        ConfigCommand::Show { server, scope, json } => {
            let shown = show(&server, &scope)?;
            if json {
                return match &shown {
                    Shown::Level(l) => print_sorted(l),
                    Shown::Merged(m) => print_sorted(m),
                };
            }
            let (version, sources) = match &shown {
                Shown::Level(l) => (l.version, None),
                Shown::Merged(m) => (m.version, Some(&m.sources)),
            };
            println!("# {} (version {version})", scope.path());
            for (k, value) in shown.values() {
                match sources.and_then(|s| s.get(k)) {
                    Some(src) => println!("{k}={value}    # {src}"),
                    None => println!("{k}={value}"),
                }
            }
        }
    }
    Ok(())
}

/// What `ferry config show` and `get` read: one level's values, or (with --device) a
/// device's merged configuration with the level of each key.
enum Shown {
    Level(ConfigLevel),
    Merged(MergedConfig),
}

impl Shown {
    fn values(&self) -> &std::collections::BTreeMap<String, String> {
        match self {
            Shown::Level(l) => &l.values,
            Shown::Merged(m) => &m.values,
        }
    }
}

fn show(server: &ServerArgs, scope: &ScopeArgs) -> Result<Shown> {
    match (&scope.group, &scope.device) {
        (None, Some(d)) => Ok(Shown::Merged(get(server, "GET", &format!("devices/{d}/config"))?)),
        _ => Ok(Shown::Level(get(server, "GET", &format!("config/{}", scope.path()))?)),
    }
}

fn print_rollout(s: &RolloutStatus) {
    let r = &s.rollout;
    println!(
        "{:<12} {:<8} {:>3}%{}  took {} of {} eligible ({} on the channel), {} failed; from serial {}",
        r.channel,
        r.state.as_str(),
        r.percent,
        r.group.as_ref().map(|g| format!(" of group {g}")).unwrap_or_default(),
        s.took,
        s.eligible,
        s.devices,
        s.failed,
        r.base_serial
    );
    if let Some(reason) = &r.halt_reason {
        println!("             halted: {reason}");
    }
}

pub fn rollout(cmd: RolloutCommand) -> Result<()> {
    let (server, channel, action) = match cmd {
        RolloutCommand::Status { server, json } => {
            let list: Vec<RolloutStatus> = get(&server, "GET", "rollouts")?;
            if json {
                return print_sorted(&list);
            }
            for r in &list {
                print_rollout(r);
            }
            return Ok(());
        }
        RolloutCommand::Start { server, channel, percent, group, max_failures } => {
            let body = RolloutRequest { group, max_failure_percent: Some(max_failures), percent: Some(percent) };
            (server, channel, Body::Start(body))
        }
        RolloutCommand::SetPercent { server, channel, percent } => {
            (server, channel, Body::SetPercent(SetPercent { percent }))
        }
        RolloutCommand::Pause { server, channel } => (server, channel, Body::None(RolloutAction::Pause)),
        RolloutCommand::Resume { server, channel } => (server, channel, Body::None(RolloutAction::Resume)),
        RolloutCommand::Abort { server, channel } => (server, channel, Body::None(RolloutAction::Abort)),
    };
    // Channel names may hold `/`: one path segment, escaped.
    let segment = channel.replace('%', "%25").replace('/', "%2F");
    let path = |a: RolloutAction| format!("rollouts/{segment}/{}", a.as_str());
    let status: RolloutStatus = match action {
        Body::Start(b) => call(&server, "POST", &path(RolloutAction::Start), Some(&b))?,
        Body::SetPercent(b) => call(&server, "POST", &path(RolloutAction::SetPercent), Some(&b))?,
        Body::None(a) => get(&server, "POST", &path(a))?,
    };
    print_rollout(&status);
    Ok(())
}

/// A rollout action and the body it sends.
enum Body {
    Start(RolloutRequest),
    SetPercent(SetPercent),
    None(RolloutAction),
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn a_servers_words_cannot_break_or_reorder_a_line() {
        assert_eq!(printable("ok\nSN-EVIL\taccepted", 100), "ok\\nSN-EVIL\\taccepted");
        assert_eq!(printable("1.0\u{202E}lave", 100), "1.0\\u{202e}lave");
        assert_eq!(printable("a\u{2066}b\u{200B}c", 100), "a\\u{2066}b\\u{200b}c");
        assert_eq!(printable("abcdef", 3), "abc…");
    }
}
