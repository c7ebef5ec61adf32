//! The fleet's state: devices, their tokens and reports, admin and enrollment tokens, and
//! the audit log, kept in a store of its own (`ferry_store::kv`, RocksDB) that survives
//! restarts and crashes.
//!
//! What it is for: the rules of enrollment, authentication and check-in, independent of
//! HTTP (`fleet_api` maps them to the device and admin APIs). What it is not for: channel
//! documents (the repository holds them; devices verify them) or anything on a device.
//!
//! Tokens are 32 random bytes in hex behind a prefix naming their kind (`fa_` admin, `fe_`
//! enrollment, `fd_` device). Only their BLAKE3 hash is stored, so a copy of the store
//! holds no usable token. Every write is one synced batch: a device's record, its token and
//! the audit entry that explains the change land together or not at all.
//!
//! The enrollment token is in every image, so it is treated as known to anyone: it enrolls
//! new serials (at most [`Settings::enrollments_per_minute`] per enrollment token at once,
//! refilled at as many a minute, and [`ENROLL_ALL_FACTOR`] times that for all together), but it never changes a known device: enrolling a known serial again only
//! records a re-enrollment request (with a token that works nowhere) until an operator
//! approves it ([`Fleet::approve_reenrollment`]). A rollout's statistics count only devices
//! an operator accepted or that enrolled before the rollout started ([`counts_for`]), so
//! devices enrolled during a rollout can neither halt it nor dilute its failures.

use std::path::Path;
use std::sync::Mutex;

use ferry_store::kv::{Kv, Op};
use serde::{Deserialize, Serialize};

const DEVICES: &str = "devices";
const TOKENS: &str = "tokens";
const AUDIT: &str = "audit";
const EVENTS: &str = "events";
/// Configuration levels: `fleet`, `group/<name>`, `device/<serial>` → [`Level`]; and the
/// counter every change bumps, under `version`.
const CONFIG: &str = "config";
/// Staged rollouts, by channel.
const ROLLOUTS: &str = "rollouts";
const TABLES: [&str; 6] = [DEVICES, TOKENS, AUDIT, EVENTS, CONFIG, ROLLOUTS];
const CONFIG_VERSION: &[u8] = b"version";

/// The most keys one configuration level holds.
pub const MAX_CONFIG_KEYS: usize = 256;

/// The longest serial number, hardware revision, or other short string a device sends.
pub const MAX_NAME: usize = 128;
/// The longest free-text field (an error message) a device reports.
pub const MAX_TEXT: usize = ferry_api::device::MAX_REPORT_TEXT;
/// Events kept per device (older ones are dropped).
pub const MAX_EVENTS: usize = 200;

/// What went wrong, in terms the API maps to a status code.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    /// The state changed since the caller looked (e.g. a newer re-enrollment request).
    #[error("{0}")]
    Conflict(String),
    /// Too many requests of a kind: try again after `retry_after` seconds.
    #[error("{what}; try again in {retry_after} s")]
    TooMany { what: String, retry_after: u64 },
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("fleet store record {what} is damaged: {why}")]
    Damaged { what: String, why: String },
}

pub type Result<T, E = FleetError> = std::result::Result<T, E>;

/// One level's values and the configuration version of its last change.
pub use ferry_api::admin::ConfigLevel as Level;
/// A device's merged configuration and, per key, the level it comes from.
pub use ferry_api::admin::MergedConfig as Merged;
pub use ferry_api::admin::{AuditEntry, Event, Rollout, RolloutState, RolloutStatus, TokenKind, TokenRecord};
pub use ferry_api::device::{DeviceState, Report};

/// The prefix naming a token's kind.
fn prefix(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Admin => "fa_",
        TokenKind::Enrollment => "fe_",
        TokenKind::Device => "fd_",
    }
}

/// Refuses reports with oversized fields or control characters, naming the field.
pub fn check_report(report: &Report) -> Result<()> {
    let short = [
        ("current", &report.current),
        ("current_version", &report.current_version),
        ("previous", &report.previous),
        ("channel", &report.channel),
        ("trial", &report.trial),
        ("last_result", &report.last_result),
        ("agent_version", &report.agent_version),
    ];
    for (name, v) in short {
        let max = if name == "channel" { 255 } else { MAX_NAME };
        if v.as_ref().is_some_and(|v| v.len() > max) {
            return Err(FleetError::BadRequest(format!("report field {name} is longer than {max} bytes")));
        }
    }
    // Reports are printed on operators' terminals: no escape sequences.
    let texts = [&report.current, &report.current_version, &report.previous, &report.channel, &report.trial]
        .into_iter()
        .chain([&report.last_result, &report.agent_version, &report.last_error, &report.config_error]);
    if texts.flatten().any(|v| v.chars().any(|c| c.is_control() && c != '\n' && c != '\t')) {
        return Err(FleetError::BadRequest("report fields may not contain control characters".into()));
    }
    for (name, v) in [("last_error", &report.last_error), ("config_error", &report.config_error)] {
        if v.as_ref().is_some_and(|v| v.len() > MAX_TEXT) {
            return Err(FleetError::BadRequest(format!("report field {name} is longer than {MAX_TEXT} bytes")));
        }
    }
    if report.progress.is_some_and(|p| p > 100) {
        return Err(FleetError::BadRequest("report field progress must be 0..=100".into()));
    }
    Ok(())
}

/// A report as a device record holds it: the fields in the order the store has always
/// written them (the API's [`Report`] writes them alphabetically, as devices send them).
mod stored_report {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Report;

    #[derive(Default, Serialize, Deserialize)]
    struct Stored {
        current: Option<String>,
        current_version: Option<String>,
        previous: Option<String>,
        channel: Option<String>,
        trial: Option<String>,
        last_result: Option<String>,
        last_error: Option<String>,
        progress: Option<u8>,
        free_bytes: Option<u64>,
        agent_version: Option<String>,
        uptime: Option<u64>,
        pinned: Option<bool>,
        dev: Option<bool>,
        config_version: Option<u64>,
        config_error: Option<String>,
    }

    pub fn serialize<S: Serializer>(r: &Report, s: S) -> Result<S::Ok, S::Error> {
        let r = r.clone();
        Stored {
            current: r.current,
            current_version: r.current_version,
            previous: r.previous,
            channel: r.channel,
            trial: r.trial,
            last_result: r.last_result,
            last_error: r.last_error,
            progress: r.progress,
            free_bytes: r.free_bytes,
            agent_version: r.agent_version,
            uptime: r.uptime,
            pinned: r.pinned,
            dev: r.dev,
            config_version: r.config_version,
            config_error: r.config_error,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Report, D::Error> {
        let r = Stored::deserialize(d)?;
        Ok(Report {
            agent_version: r.agent_version,
            channel: r.channel,
            config_error: r.config_error,
            config_version: r.config_version,
            current: r.current,
            current_version: r.current_version,
            dev: r.dev,
            free_bytes: r.free_bytes,
            last_error: r.last_error,
            last_result: r.last_result,
            pinned: r.pinned,
            previous: r.previous,
            progress: r.progress,
            trial: r.trial,
            uptime: r.uptime,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub serial: String,
    pub hardware: String,
    pub state: DeviceState,
    pub enrolled: i64,
    /// Hash of the device's current token (hex).
    pub token: String,
    /// Groups in precedence order: a later group's value wins over an earlier one's.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The configuration version at the last change of `groups`.
    #[serde(default)]
    pub groups_version: u64,
    pub last_seen: Option<i64>,
    #[serde(default, with = "stored_report")]
    pub report: Report,
    /// Per channel, the highest document serial this device was given at check-in.
    #[serde(default)]
    pub served: std::collections::BTreeMap<String, u64>,
    /// Per channel, the serial it was given when it last reported a rollback or an aborted
    /// update (kept, so failures spread over time add up for the automatic halt).
    #[serde(default)]
    pub failed: std::collections::BTreeMap<String, u64>,
    /// The operator who accepted the device (or approved its re-enrollment); `None` for a
    /// device accepted automatically (no `--require-approval`).
    #[serde(default)]
    pub accepted_by: Option<String>,
    /// The audit sequence number of its enrollment, which orders it exactly against the
    /// start of a rollout (`None` in records written before it was kept).
    #[serde(default)]
    pub enrolled_seq: Option<u64>,
    /// A later enrollment of this serial, waiting for an operator.
    #[serde(default)]
    pub reenrollment: Option<Reenrollment>,
}

/// An enrollment of a serial the fleet already knows: the device keeps its state and token
/// until an operator approves this one (its token then replaces the device's) or rejects it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reenrollment {
    /// Hash of the token it was given (hex); that token works nowhere until approved.
    pub token: String,
    pub hardware: String,
    pub at: i64,
    /// The name of the enrollment token it used.
    pub enrollment_token: String,
}

impl Reenrollment {
    /// The request's fingerprint: the first 12 hex digits of its token's BLAKE3 hash, which
    /// `ferryd status` shows on the device that holds the token. An operator approves a
    /// request by it, so a newer request (anyone with the enrollment token can make one)
    /// cannot slip in between looking and approving.
    pub fn fingerprint(&self) -> &str {
        self.token.get(..12).unwrap_or(&self.token)
    }
}

impl Device {
    /// The device as the admin API shows it (never its tokens' hashes); `events` only in
    /// the answer about one device.
    pub fn view(&self, events: Option<Vec<Event>>) -> ferry_api::admin::DeviceView {
        ferry_api::admin::DeviceView {
            accepted_by: self.accepted_by.clone(),
            enrolled: self.enrolled,
            events,
            groups: self.groups.clone(),
            hardware: self.hardware.clone(),
            last_seen: self.last_seen,
            reenrollment: self.reenrollment.as_ref().map(|r| ferry_api::admin::ReenrollmentView {
                at: r.at,
                enrollment_token: r.enrollment_token.clone(),
                hardware: r.hardware.clone(),
                request: r.fingerprint().to_string(),
            }),
            report: self.report.clone(),
            serial: self.serial.clone(),
            state: self.state,
        }
    }
}

/// Whom a request comes from, once its token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin(String),
    Device(String),
    /// The operator at the server's own command line (`ferry admin token create --fleet`).
    Local,
    /// The server itself (the automatic halt of a rollout).
    Server,
}

impl Caller {
    pub fn who(&self) -> String {
        match self {
            Caller::Admin(n) => format!("admin:{n}"),
            Caller::Device(s) => format!("device:{s}"),
            Caller::Local => "local".into(),
            Caller::Server => "server".into(),
        }
    }
}

/// Where a configuration value is set; the narrower level wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Fleet,
    Group(String),
    Device(String),
}

impl Scope {
    fn key(&self) -> Vec<u8> {
        match self {
            Scope::Fleet => b"fleet".to_vec(),
            Scope::Group(g) => format!("group/{g}").into_bytes(),
            Scope::Device(d) => format!("device/{d}").into_bytes(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::Fleet => "fleet".into(),
            Scope::Group(g) => format!("group {g}"),
            Scope::Device(d) => format!("device {d}"),
        }
    }
}

/// Checks a configuration key: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at
/// most 128 bytes), so the env-file form needs no quoting of keys.
pub fn check_config_key(k: &str) -> Result<()> {
    let ok = !k.is_empty()
        && k.len() <= MAX_NAME
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !k.as_bytes()[0].is_ascii_digit();
    if !ok {
        return Err(FleetError::BadRequest(format!(
            "configuration key {k:?} must be 1 to {MAX_NAME} letters, digits or `_`, not starting with a digit"
        )));
    }
    Ok(())
}

/// True if a device counts in `r`'s statistics (and so for its automatic halt): an operator
/// accepted it, or it enrolled before the rollout started. Devices enrolled (and accepted
/// automatically) during the rollout take part in it but are not counted, so whoever holds
/// the enrollment token cannot halt a rollout with fake failures or hide real ones among
/// fake successes.
pub fn counts_for(d: &Device, r: &Rollout) -> bool {
    if d.accepted_by.is_some() {
        return true;
    }
    match (d.enrolled_seq, r.started_seq) {
        (Some(e), Some(s)) => e < s,
        (None, _) => true,
        (Some(_), None) => d.enrolled < r.started,
    }
}

/// A device's place in rollouts of `channel`: 0..10000, fixed for the pair.
pub fn bucket(channel: &str, serial: &str) -> u32 {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry rollout v1\0");
    h.update(channel.as_bytes());
    h.update(b"\0");
    h.update(serial.as_bytes());
    let b = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&b.as_bytes()[..8]);
    (u64::from_le_bytes(first) % 10_000) as u32
}

/// Which document a device gets at check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The channel's newest document.
    Head,
    /// The rollout's base document (its id).
    Base(String),
}

/// The channel's newest document as the fleet sees it: id, serial, and each hardware
/// revision's target commit.
#[derive(Debug, Clone)]
pub struct HeadDoc {
    pub id: String,
    pub serial: u64,
    pub targets: std::collections::BTreeMap<String, String>,
}

/// Fleet-wide settings, from `ferry serve`'s options.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Newly enrolled devices wait for `ferry device accept`.
    pub require_approval: bool,
    /// Enrollments one enrollment token may make at once, and per minute after that (a
    /// token bucket); all tokens together, [`ENROLL_ALL_FACTOR`] times as many.
    pub enrollments_per_minute: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { require_approval: false, enrollments_per_minute: ENROLLMENTS_PER_MINUTE }
    }
}

/// The default of [`Settings::enrollments_per_minute`] (`ferry serve
/// --enrollments-per-minute`): 10 at once, then one every 6 s per enrollment token.
pub const ENROLLMENTS_PER_MINUTE: u32 = 10;
/// All enrollment tokens together may make this many times one token's burst and rate.
pub const ENROLL_ALL_FACTOR: u32 = 6;

/// A token bucket holding at most `per_minute` units, refilled at `per_minute` a minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: std::time::Instant,
}

impl Bucket {
    /// Takes one unit if there is one; else the seconds until there will be.
    fn take(&mut self, per_minute: u32) -> std::result::Result<(), u64> {
        let now = std::time::Instant::now();
        let rate = f64::from(per_minute) / 60.0;
        self.level = (self.level + now.duration_since(self.at).as_secs_f64() * rate).min(f64::from(per_minute));
        self.at = now;
        if self.level >= 1.0 {
            self.level -= 1.0;
            return Ok(());
        }
        Err(if rate > 0.0 { ((1.0 - self.level) / rate).ceil().max(1.0) as u64 } else { 60 })
    }
}

/// The enrollment rate limits: one bucket per enrollment token, one for all.
#[derive(Debug, Default)]
struct EnrollLimits {
    per_token: std::collections::HashMap<String, Bucket>,
    all: Option<Bucket>,
}

/// What enrollment gives a device.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    pub token: String,
    pub state: DeviceState,
}

pub struct Fleet {
    kv: Kv,
    settings: Settings,
    /// Enrollment rate limits (in memory: a restart refills them).
    enroll_limits: Mutex<EnrollLimits>,
    /// Serialises read-modify-write sequences (enrollment, audit sequence numbers).
    write: Mutex<()>,
    /// One of these guards each device record: check-ins of different devices run (and
    /// their synced writes group-commit) in parallel. Taken after `write`, never before it.
    stripes: Vec<Mutex<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("path", &self.kv.path()).finish()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| FleetError::Damaged { what: what(), why: e.to_string() })
}

/// Checks a serial number, hardware revision or name a device or admin sends.
pub fn check_name(field: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > MAX_NAME {
        return Err(FleetError::BadRequest(format!("{field} must be 1 to {MAX_NAME} bytes")));
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b)) {
        return Err(FleetError::BadRequest(format!(
            "{field} {v:?} may contain only letters, digits, `.`, `_`, `-` and `:`"
        )));
    }
    Ok(())
}

fn new_token(kind: TokenKind) -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| FleetError::BadRequest(format!("no random bytes: {e}")))?;
    Ok(format!("{}{}", prefix(kind), hex::encode(bytes)))
}

impl Fleet {
    pub fn open(path: &Path, settings: Settings) -> Result<Fleet> {
        Ok(Fleet::over(Kv::open(path, &TABLES)?, settings))
    }

    fn over(kv: Kv, settings: Settings) -> Fleet {
        Fleet {
            kv,
            settings,
            enroll_limits: Mutex::new(EnrollLimits::default()),
            write: Mutex::new(()),
            stripes: (0..64).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The fleet's state as it is now, for reading beside a running `ferry serve` (e.g.
    /// `ferry bundle --fleet` reading rollouts). Every change through it fails.
    pub fn open_read_only(path: &Path) -> Result<Fleet> {
        Ok(Fleet::over(Kv::open_read_only(path, &TABLES)?, Settings::default()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock of one device's record (see `stripes`).
    fn device_lock(&self, serial: &str) -> std::sync::MutexGuard<'_, ()> {
        let h = blake3::hash(serial.as_bytes());
        let i = usize::from(h.as_bytes()[0]) % self.stripes.len();
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The audit entry for `action`, with the next sequence number (caller holds the lock).
    fn audit_op(&self, who: &Caller, action: &str, detail: String) -> Result<Op> {
        let seq = self.next_audit_seq()?;
        let entry = AuditEntry { seq, at: now(), who: who.who(), action: action.into(), detail };
        Ok(Op::Put { table: AUDIT, key: seq.to_be_bytes().to_vec(), value: json(&entry) })
    }

    /// The sequence number the next audit entry gets (caller holds the lock).
    fn next_audit_seq(&self) -> Result<u64> {
        Ok(match self.kv.last(AUDIT)? {
            Some((k, _)) => {
                u64::from_be_bytes(k.try_into().map_err(|_| FleetError::Damaged {
                    what: "audit log".into(),
                    why: "a key is not 8 bytes".into(),
                })?) + 1
            }
            None => 1,
        })
    }

    /// Records an action done elsewhere (a promotion through the admin API) in the audit log.
    pub fn record(&self, who: &Caller, action: &str, detail: String) -> Result<()> {
        let _g = self.lock();
        Ok(self.kv.write(vec![self.audit_op(who, action, detail)?])?)
    }

    /// Creates a token; returns it (the only time it is seen in the clear).
    pub fn create_token(&self, who: &Caller, kind: TokenKind, name: &str) -> Result<String> {
        check_name("token name", name)?;
        if kind == TokenKind::Device {
            return Err(FleetError::BadRequest("device tokens come from enrollment".into()));
        }
        let token = new_token(kind)?;
        let record = TokenRecord { kind, name: name.into(), created: now() };
        let _g = self.lock();
        let audit = self.audit_op(who, "token create", format!("{kind:?} token {name}").to_lowercase())?;
        self.kv.write(vec![Op::Put { table: TOKENS, key: hash(&token).to_vec(), value: json(&record) }, audit])?;
        Ok(token)
    }

    /// Every admin and enrollment token's record (never the tokens themselves).
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut out = Vec::new();
        for (_, v) in self.kv.scan(TOKENS, b"")? {
            let r: TokenRecord = parse(&v, || "token".into())?;
            if r.kind != TokenKind::Device {
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(out)
    }

    /// Revokes every admin or enrollment token named `name`.
    pub fn revoke_token(&self, who: &Caller, name: &str) -> Result<usize> {
        let _g = self.lock();
        let mut ops = Vec::new();
        for (k, v) in self.kv.scan(TOKENS, b"")? {
            let r: TokenRecord = parse(&v, || "token".into())?;
            if r.kind != TokenKind::Device && r.name == name {
                ops.push(Op::Delete { table: TOKENS, key: k });
            }
        }
        if ops.is_empty() {
            return Err(FleetError::NotFound(format!("no admin or enrollment token named {name}")));
        }
        let n = ops.len();
        ops.push(self.audit_op(who, "token revoke", format!("{n} token(s) named {name}"))?);
        self.kv.write(ops)?;
        Ok(n)
    }

    fn token(&self, token: &str) -> Result<Option<TokenRecord>> {
        match self.kv.get(TOKENS, &hash(token))? {
            Some(v) => Ok(Some(parse(&v, || "token".into())?)),
            None => Ok(None),
        }
    }

    /// The admin a token belongs to.
    pub fn admin(&self, token: &str) -> Result<Caller> {
        match self.token(token)? {
            Some(r) if r.kind == TokenKind::Admin => Ok(Caller::Admin(r.name)),
            _ => Err(FleetError::Unauthorized("not a valid admin token".into())),
        }
    }

    /// The device a token belongs to, if it may use the device API.
    pub fn device_for(&self, token: &str) -> Result<Device> {
        let serial = match self.token(token)? {
            Some(r) if r.kind == TokenKind::Device => r.name,
            _ => return Err(FleetError::Unauthorized("not a valid device token; enroll again".into())),
        };
        let device = self.device(&serial)?;
        let hashed = hex::encode(hash(token));
        if device.reenrollment.as_ref().is_some_and(|r| r.token == hashed) {
            return Err(FleetError::Forbidden(format!(
                "device {serial} enrolled again: waiting for an operator to approve the new enrollment"
            )));
        }
        if device.token != hashed {
            return Err(FleetError::Unauthorized("this device token was replaced; enroll again".into()));
        }
        match device.state {
            DeviceState::Accepted => Ok(device),
            DeviceState::Pending => Err(FleetError::Forbidden(format!("device {serial} is waiting for approval"))),
            DeviceState::Revoked => Err(FleetError::Forbidden(format!("device {serial} is revoked"))),
        }
    }

    /// Whom a token belongs to, if it may read the repository under `--fleet`: an admin, or
    /// an accepted device (a pending, revoked or replaced device's token reads nothing).
    pub fn reader(&self, token: &str) -> Result<Caller> {
        match self.token(token)? {
            Some(r) if r.kind == TokenKind::Admin => Ok(Caller::Admin(r.name)),
            Some(r) if r.kind == TokenKind::Device => Ok(Caller::Device(self.device_for(token)?.serial)),
            _ => Err(FleetError::Unauthorized("not a valid device or admin token".into())),
        }
    }

    /// Takes one enrollment from `token_name`'s bucket and the fleet's.
    fn limit_enrollment(&self, token_name: &str) -> Result<()> {
        let per_minute = self.settings.enrollments_per_minute;
        let all_per_minute = per_minute.saturating_mul(ENROLL_ALL_FACTOR);
        let mut limits = self.enroll_limits.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = |per_minute: u32| Bucket { level: f64::from(per_minute), at: std::time::Instant::now() };
        if limits.per_token.len() > 10_000 {
            limits.per_token.clear();
        }
        let mine = *limits.per_token.entry(token_name.to_string()).or_insert_with(|| fresh(per_minute));
        let all = limits.all.unwrap_or_else(|| fresh(all_per_minute));
        let (mut mine_after, mut all_after) = (mine, all);
        let too_many = |what: String, retry_after| FleetError::TooMany { what, retry_after };
        mine_after
            .take(per_minute)
            .map_err(|s| too_many(format!("too many enrollments with enrollment token {token_name}"), s))?;
        all_after.take(all_per_minute).map_err(|s| too_many("too many enrollments".into(), s))?;
        limits.per_token.insert(token_name.to_string(), mine_after);
        limits.all = Some(all_after);
        Ok(())
    }

    pub fn device(&self, serial: &str) -> Result<Device> {
        match self.kv.get(DEVICES, serial.as_bytes())? {
            Some(v) => parse(&v, || format!("device {serial}")),
            None => Err(FleetError::NotFound(format!("no device {serial}"))),
        }
    }

    pub fn devices(&self) -> Result<Vec<Device>> {
        self.kv
            .scan(DEVICES, b"")?
            .iter()
            .map(|(k, v)| parse(v, || format!("device {}", String::from_utf8_lossy(k))))
            .collect()
    }

    /// Enrolls a device with a fleet enrollment token. A serial the fleet knows keeps its
    /// state and token: the enrollment becomes a re-enrollment request (its token works
    /// nowhere, the answer says `pending`) until an operator approves it
    /// ([`Fleet::approve_reenrollment`]); a newer request replaces an older one. A revoked
    /// device is refused. Enrollments are rate-limited per enrollment token and overall.
    pub fn enroll(&self, serial: &str, hardware: &str, enrollment_token: &str) -> Result<Enrolled> {
        check_name("serial", serial)?;
        check_name("hardware", hardware)?;
        let who = match self.token(enrollment_token)? {
            Some(r) if r.kind == TokenKind::Enrollment => r.name,
            _ => return Err(FleetError::Unauthorized("not a valid enrollment token".into())),
        };
        self.limit_enrollment(&who)?;
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let existing = match self.device(serial) {
            Ok(d) => Some(d),
            Err(FleetError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let token = new_token(TokenKind::Device)?;
        let hashed = hex::encode(hash(&token));
        let mut ops = Vec::new();
        // The enrollment's audit entry gets this number: it orders the device against
        // rollouts (`counts_for`).
        let seq = self.next_audit_seq()?;
        let audit = self.audit_op(
            &Caller::Device(serial.into()),
            if existing.is_some() { "enroll again" } else { "enroll" },
            format!("hardware {hardware}, token {who}"),
        )?;
        let (device, whats, state) = match existing {
            Some(d) if d.state == DeviceState::Revoked => {
                return Err(FleetError::Forbidden(format!("device {serial} is revoked")));
            }
            Some(mut d) => {
                // The enrollment token is in every image: a second enrollment of a known
                // serial may be a reflashed board or anyone else. The device keeps its
                // token and state; an operator decides.
                let mut whats = vec![format!(
                    "enrolled again ({hardware}) with enrollment token {who}: waiting for an operator to approve it"
                )];
                if let Some(old) = d.reenrollment.take() {
                    let mut old_hash = [0u8; 32];
                    if hex::decode_to_slice(&old.token, &mut old_hash).is_ok() {
                        ops.push(Op::Delete { table: TOKENS, key: old_hash.to_vec() });
                    }
                    whats.push("(it replaces an earlier request, which no longer works)".into());
                }
                d.reenrollment = Some(Reenrollment {
                    token: hashed,
                    hardware: hardware.into(),
                    at: now(),
                    enrollment_token: who.clone(),
                });
                (d, whats, DeviceState::Pending)
            }
            None => {
                let state = if self.settings.require_approval { DeviceState::Pending } else { DeviceState::Accepted };
                let d = Device {
                    serial: serial.into(),
                    hardware: hardware.into(),
                    state,
                    enrolled: now(),
                    token: hashed,
                    groups: Vec::new(),
                    groups_version: 0,
                    served: Default::default(),
                    failed: Default::default(),
                    last_seen: None,
                    report: Report::default(),
                    accepted_by: None,
                    enrolled_seq: Some(seq),
                    reenrollment: None,
                };
                (d, vec![format!("enrolled ({hardware}) with enrollment token {who}")], state)
            }
        };
        let record = TokenRecord { kind: TokenKind::Device, name: serial.into(), created: now() };
        ops.push(Op::Put { table: TOKENS, key: hash(&token).to_vec(), value: json(&record) });
        ops.push(Op::Put { table: DEVICES, key: serial.as_bytes().to_vec(), value: json(&device) });
        ops.extend(self.event_ops(serial, whats)?);
        ops.push(audit);
        self.kv.write(ops)?;
        Ok(Enrolled { token, state })
    }

    /// Approves a device's re-enrollment request, the one whose [`Reenrollment::fingerprint`]
    /// is `request`: its token replaces the device's (which stops working at once); the
    /// device's state, groups and history stay. Another request (a newer one replaced the
    /// one the operator looked at) is a conflict and changes nothing.
    pub fn approve_reenrollment(&self, who: &Caller, serial: &str, request: &str) -> Result<Device> {
        self.settle_reenrollment(who, serial, Some(request))
    }

    /// Rejects a device's re-enrollment request, whichever it is: its token never works.
    pub fn reject_reenrollment(&self, who: &Caller, serial: &str) -> Result<Device> {
        self.settle_reenrollment(who, serial, None)
    }

    fn settle_reenrollment(&self, who: &Caller, serial: &str, approve: Option<&str>) -> Result<Device> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let mut d = self.device(serial)?;
        let r = d.reenrollment.take().ok_or_else(|| {
            FleetError::NotFound(format!("device {serial} has no re-enrollment waiting for approval"))
        })?;
        if let Some(request) = approve {
            if request.len() < 8 || !r.fingerprint().starts_with(request) {
                return Err(FleetError::Conflict(format!(
                    "device {serial}'s re-enrollment request is {}, not {request:?}: a newer request replaced the one you looked at (or the fingerprint is mistyped); check it against `ferryd status` on the board and approve that one",
                    r.fingerprint()
                )));
            }
        }
        let approve = approve.is_some();
        let (drop_hash, action) = if approve {
            d.hardware = r.hardware.clone();
            d.accepted_by = Some(who.who());
            (std::mem::replace(&mut d.token, r.token), "approve re-enrollment")
        } else {
            (r.token, "reject re-enrollment")
        };
        let mut ops = Vec::new();
        let mut old = [0u8; 32];
        if hex::decode_to_slice(&drop_hash, &mut old).is_ok() {
            ops.push(Op::Delete { table: TOKENS, key: old.to_vec() });
        }
        ops.push(Op::Put { table: DEVICES, key: serial.as_bytes().to_vec(), value: json(&d) });
        ops.push(self.event_op(serial, format!("{action} by {}", who.who()))?);
        ops.push(self.audit_op(who, action, format!("device {serial}"))?);
        self.kv.write(ops)?;
        Ok(d)
    }

    fn event_op(&self, serial: &str, what: String) -> Result<Op> {
        self.event_ops(serial, vec![what])?
            .pop()
            .ok_or_else(|| FleetError::Damaged { what: format!("history of {serial}"), why: "no event".into() })
    }

    /// Ops appending `whats` to a device's history, in order (caller holds the lock).
    fn event_ops(&self, serial: &str, whats: Vec<String>) -> Result<Vec<Op>> {
        if whats.is_empty() {
            return Ok(Vec::new());
        }
        let mut prefix = serial.as_bytes().to_vec();
        prefix.push(0);
        let existing = self.kv.scan(EVENTS, &prefix)?;
        let next = match existing.last() {
            Some((k, _)) => {
                k.get(prefix.len()..).and_then(|s| <[u8; 8]>::try_from(s).ok()).map_or(0, |b| u64::from_be_bytes(b) + 1)
            }
            None => 0,
        };
        // The history keeps the newest MAX_EVENTS: older entries go in the same batch.
        let excess = (existing.len() + whats.len()).saturating_sub(MAX_EVENTS);
        let trims = existing.into_iter().take(excess).map(|(key, _)| Op::Delete { table: EVENTS, key });
        let at = now();
        let puts = whats.into_iter().zip(next..).map(|(what, seq)| {
            let mut key = prefix.clone();
            key.extend_from_slice(&seq.to_be_bytes());
            Op::Put { table: EVENTS, key, value: json(&Event { at, what }) }
        });
        Ok(trims.chain(puts).collect())
    }

    /// A device's history, oldest first (at most [`MAX_EVENTS`]).
    pub fn events(&self, serial: &str) -> Result<Vec<Event>> {
        let mut prefix = serial.as_bytes().to_vec();
        prefix.push(0);
        let all = self.kv.scan(EVENTS, &prefix)?;
        let skip = all.len().saturating_sub(MAX_EVENTS);
        all.iter().skip(skip).map(|(_, v)| parse(v, || format!("event of device {serial}"))).collect()
    }

    /// Records a device's check-in. Changes worth a line in its history (a new current
    /// commit, a new result or error) become events.
    pub fn check_in(&self, device: &Device, report: Report) -> Result<Device> {
        check_report(&report)?;
        let _d = self.device_lock(&device.serial);
        // Re-read under the lock: an operator may have revoked it meanwhile.
        let mut d = self.device(&device.serial)?;
        if d.state != DeviceState::Accepted || d.token != device.token {
            return Err(FleetError::Forbidden(format!("device {} may not check in", d.serial)));
        }
        let mut whats = Vec::new();
        let old = &d.report;
        if report.current != old.current {
            whats.push(format!(
                "now runs {} ({})",
                report.current_version.as_deref().unwrap_or("?"),
                report.current.as_deref().unwrap_or("nothing")
            ));
        }
        if report.last_result != old.last_result || report.last_error != old.last_error {
            if let Some(r) = &report.last_result {
                let what = match &report.last_error {
                    Some(e) => format!("update {r}: {e}"),
                    None => format!("update {r}"),
                };
                if !(r == "up-to-date" && report.last_error.is_none()) {
                    whats.push(what);
                }
            }
        }
        let mut ops = self.event_ops(&d.serial, whats)?;
        // A release that failed its trial: rolled back, refused by its pre-switch hook, or, as
        // a device's first release, kept flagged bad with nothing to go back to.
        if matches!(report.last_result.as_deref(), Some("rolled-back" | "aborted" | "failed"))
            && report.last_result != old.last_result
        {
            if let Some(channel) = &report.channel {
                if let Some(serial) = d.served.get(channel).copied() {
                    d.failed.insert(channel.clone(), serial);
                }
            }
        }
        d.report = report;
        d.last_seen = Some(now());
        ops.push(Op::Put { table: DEVICES, key: d.serial.as_bytes().to_vec(), value: json(&d) });
        self.kv.write(ops)?;
        Ok(d)
    }

    fn set_state(&self, who: &Caller, serial: &str, state: DeviceState, action: &str) -> Result<Device> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let mut d = self.device(serial)?;
        if d.state == DeviceState::Revoked && state == DeviceState::Accepted {
            return Err(FleetError::BadRequest(format!(
                "device {serial} is revoked; a revoked device stays revoked (remove it and enroll it again)"
            )));
        }
        d.state = state;
        let mut ops = Vec::new();
        match state {
            DeviceState::Accepted => d.accepted_by = Some(who.who()),
            DeviceState::Revoked => {
                // A revoked device's pending re-enrollment goes with it.
                if let Some(r) = d.reenrollment.take() {
                    let mut old = [0u8; 32];
                    if hex::decode_to_slice(&r.token, &mut old).is_ok() {
                        ops.push(Op::Delete { table: TOKENS, key: old.to_vec() });
                    }
                }
            }
            DeviceState::Pending => {}
        }
        ops.push(Op::Put { table: DEVICES, key: serial.as_bytes().to_vec(), value: json(&d) });
        ops.push(self.event_op(serial, format!("{action} by {}", who.who()))?);
        ops.push(self.audit_op(who, action, format!("device {serial}"))?);
        self.kv.write(ops)?;
        Ok(d)
    }

    pub fn accept(&self, who: &Caller, serial: &str) -> Result<Device> {
        self.set_state(who, serial, DeviceState::Accepted, "accept")
    }

    /// Revokes a device: its token stops working at once and it cannot enroll again.
    pub fn revoke(&self, who: &Caller, serial: &str) -> Result<Device> {
        self.set_state(who, serial, DeviceState::Revoked, "revoke")
    }

    /// Forgets a device (its record, token and history); it may enroll again.
    pub fn remove(&self, who: &Caller, serial: &str) -> Result<()> {
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let d = self.device(serial)?;
        let mut ops = vec![Op::Delete { table: DEVICES, key: serial.as_bytes().to_vec() }];
        for token in std::iter::once(&d.token).chain(d.reenrollment.as_ref().map(|r| &r.token)) {
            let mut old = [0u8; 32];
            if hex::decode_to_slice(token, &mut old).is_ok() {
                ops.push(Op::Delete { table: TOKENS, key: old.to_vec() });
            }
        }
        let mut prefix = serial.as_bytes().to_vec();
        prefix.push(0);
        for (k, _) in self.kv.scan(EVENTS, &prefix)? {
            ops.push(Op::Delete { table: EVENTS, key: k });
        }
        ops.push(Op::Delete { table: CONFIG, key: Scope::Device(serial.into()).key() });
        ops.push(self.audit_op(who, "remove", format!("device {serial}"))?);
        self.kv.write(ops)?;
        Ok(())
    }

    /// The newest `limit` audit entries, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let all = self.kv.scan(AUDIT, b"")?;
        let skip = all.len().saturating_sub(limit);
        all.iter().skip(skip).map(|(_, v)| parse(v, || "audit entry".into())).collect()
    }

    // ---- configuration ------------------------------------------------------------------

    fn config_version(&self) -> Result<u64> {
        match self.kv.get(CONFIG, CONFIG_VERSION)? {
            Some(v) => Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(|_| FleetError::Damaged {
                what: "configuration version".into(),
                why: "not 8 bytes".into(),
            })?)),
            None => Ok(0),
        }
    }

    /// One level's values (empty if never set).
    pub fn level(&self, scope: &Scope) -> Result<Level> {
        match self.kv.get(CONFIG, &scope.key())? {
            Some(v) => parse(&v, || format!("configuration of {}", scope.describe())),
            None => Ok(Level::default()),
        }
    }

    /// Sets and unsets keys at one level; returns the new configuration version. A device
    /// level needs the device to exist.
    pub fn set_config(&self, who: &Caller, scope: &Scope, set: &[(String, String)], unset: &[String]) -> Result<u64> {
        for (k, v) in set {
            check_config_key(k)?;
            if v.len() > MAX_TEXT || v.chars().any(char::is_control) {
                return Err(FleetError::BadRequest(format!(
                    "value of {k} must be at most {MAX_TEXT} bytes, on one line, without control characters"
                )));
            }
        }
        for k in unset {
            check_config_key(k)?;
        }
        match scope {
            Scope::Group(g) => check_name("group", g)?,
            Scope::Device(d) => check_name("serial", d)?,
            Scope::Fleet => {}
        }
        let _g = self.lock();
        if let Scope::Device(d) = scope {
            self.device(d)?;
        }
        let mut level = self.level(scope)?;
        for (k, v) in set {
            level.values.insert(k.clone(), v.clone());
        }
        for k in unset {
            level.values.remove(k);
        }
        if level.values.len() > MAX_CONFIG_KEYS {
            return Err(FleetError::BadRequest(format!(
                "{} would hold more than {MAX_CONFIG_KEYS} keys",
                scope.describe()
            )));
        }
        let version = self.config_version()? + 1;
        level.version = version;
        let mut detail: Vec<String> = set.iter().map(|(k, _)| format!("set {k}")).collect();
        detail.extend(unset.iter().map(|k| format!("unset {k}")));
        let ops = vec![
            Op::Put { table: CONFIG, key: scope.key(), value: json(&level) },
            Op::Put { table: CONFIG, key: CONFIG_VERSION.to_vec(), value: version.to_be_bytes().to_vec() },
            self.audit_op(who, "config", format!("{}: {}", scope.describe(), detail.join(", ")))?,
        ];
        self.kv.write(ops)?;
        Ok(version)
    }

    /// Sets a device's groups, in precedence order (a later group wins).
    pub fn set_groups(&self, who: &Caller, serial: &str, groups: &[String]) -> Result<Device> {
        for g in groups {
            check_name("group", g)?;
        }
        let mut unique = groups.to_vec();
        unique.sort();
        unique.dedup();
        if unique.len() != groups.len() {
            return Err(FleetError::BadRequest("a group is named twice".into()));
        }
        let _g = self.lock();
        let _d = self.device_lock(serial);
        let mut d = self.device(serial)?;
        let version = self.config_version()? + 1;
        d.groups = groups.to_vec();
        d.groups_version = version;
        let ops = vec![
            Op::Put { table: DEVICES, key: serial.as_bytes().to_vec(), value: json(&d) },
            Op::Put { table: CONFIG, key: CONFIG_VERSION.to_vec(), value: version.to_be_bytes().to_vec() },
            self.audit_op(who, "groups", format!("device {serial}: {}", groups.join(", ")))?,
        ];
        self.kv.write(ops)?;
        Ok(d)
    }

    /// A device's configuration: fleet, then its groups in order, then its own values, the
    /// later winning. Its version is the newest change among them, so it only grows.
    pub fn merged_config(&self, device: &Device) -> Result<Merged> {
        let mut scopes = vec![Scope::Fleet];
        scopes.extend(device.groups.iter().map(|g| Scope::Group(g.clone())));
        scopes.push(Scope::Device(device.serial.clone()));
        let mut m = Merged { version: device.groups_version, ..Default::default() };
        for scope in scopes {
            let level = self.level(&scope)?;
            m.version = m.version.max(level.version);
            for (k, v) in level.values {
                m.sources.insert(k.clone(), scope.describe());
                m.values.insert(k, v);
            }
        }
        Ok(m)
    }

    // ---- rollouts -----------------------------------------------------------------------

    pub fn rollout(&self, channel: &str) -> Result<Option<Rollout>> {
        match self.kv.get(ROLLOUTS, channel.as_bytes())? {
            Some(v) => Ok(Some(parse(&v, || format!("rollout of {channel}"))?)),
            None => Ok(None),
        }
    }

    pub fn rollouts(&self) -> Result<Vec<Rollout>> {
        self.kv.scan(ROLLOUTS, b"")?.iter().map(|(_, v)| parse(v, || "rollout".into())).collect()
    }

    /// Starts a rollout on `channel` whose current document (`base`) stays what everyone
    /// gets until a newer one is promoted. A running or paused rollout must be finished
    /// (at 100%) or aborted first.
    pub fn start_rollout(
        &self,
        who: &Caller,
        channel: &str,
        base: &HeadDoc,
        percent: u8,
        group: Option<String>,
        max_failure_percent: u8,
    ) -> Result<Rollout> {
        if percent > 100 || max_failure_percent > 100 {
            return Err(FleetError::BadRequest("percentages must be 0 to 100".into()));
        }
        if let Some(g) = &group {
            check_name("group", g)?;
        }
        let _g = self.lock();
        if let Some(r) = self.rollout(channel)? {
            if r.state != RolloutState::Aborted && r.percent < 100 {
                return Err(FleetError::BadRequest(format!(
                    "channel {channel} has a rollout at {}% ({:?}); set it to 100 or abort it first",
                    r.percent, r.state
                )));
            }
        }
        let r = Rollout {
            channel: channel.into(),
            base: base.id.clone(),
            base_serial: base.serial,
            percent,
            group,
            state: RolloutState::Running,
            max_failure_percent,
            halt_reason: None,
            started: now(),
            // The start's audit entry gets this number (`counts_for`).
            started_seq: Some(self.next_audit_seq()?),
        };
        let detail = format!("{channel}: {percent}% from serial {}", base.serial);
        self.kv.write(vec![
            Op::Put { table: ROLLOUTS, key: channel.as_bytes().to_vec(), value: json(&r) },
            self.audit_op(who, "rollout start", detail)?,
        ])?;
        Ok(r)
    }

    /// Changes a rollout: `percent`, or its state (`pause`, `resume`, `abort`).
    pub fn change_rollout(&self, who: &Caller, channel: &str, action: &str, percent: Option<u8>) -> Result<Rollout> {
        let _g = self.lock();
        let mut r =
            self.rollout(channel)?.ok_or_else(|| FleetError::NotFound(format!("channel {channel} has no rollout")))?;
        if r.state == RolloutState::Aborted {
            return Err(FleetError::BadRequest(format!("the rollout on {channel} was aborted; start a new one")));
        }
        match (action, percent) {
            ("set-percent", Some(p)) if p <= 100 => {
                if p < r.percent {
                    return Err(FleetError::BadRequest(format!(
                        "the rollout is at {}%; lowering it would take the new release away from devices that have it",
                        r.percent
                    )));
                }
                r.percent = p;
            }
            ("set-percent", _) => {
                return Err(FleetError::BadRequest("set-percent needs a percent from 0 to 100".into()))
            }
            ("pause", _) => r.state = RolloutState::Paused,
            ("resume", _) => {
                r.state = RolloutState::Running;
                r.halt_reason = None;
            }
            ("abort", _) => r.state = RolloutState::Aborted,
            (other, _) => {
                return Err(FleetError::NotFound(format!(
                    "no rollout action {other:?} (set-percent, pause, resume, abort)"
                )))
            }
        }
        let detail = format!("{channel}: {action}{}", percent.map(|p| format!(" {p}%")).unwrap_or_default());
        self.kv.write(vec![
            Op::Put { table: ROLLOUTS, key: channel.as_bytes().to_vec(), value: json(&r) },
            self.audit_op(who, &format!("rollout {action}"), detail)?,
        ])?;
        Ok(r)
    }

    /// Which document `device` gets for `channel` whose newest document is `head`, and
    /// records that it got it. A device that took a failed release may halt the rollout.
    pub fn pick(&self, device: &Device, channel: &str, head: &HeadDoc) -> Result<Pick> {
        let Some(r) = self.rollout(channel)? else {
            return self.record_served(device, channel, head.serial).map(|()| Pick::Head);
        };
        let taken = device.served.get(channel).is_some_and(|s| *s > r.base_serial);
        let eligible = r.group.as_ref().is_none_or(|g| device.groups.contains(g));
        let chosen = bucket(channel, &device.serial) < u32::from(r.percent) * 100;
        let head_wins =
            head.serial <= r.base_serial || taken || (r.state == RolloutState::Running && eligible && chosen);
        if !head_wins {
            return Ok(Pick::Base(r.base));
        }
        self.record_served(device, channel, head.serial)?;
        if taken
            && r.state == RolloutState::Running
            && head.serial > r.base_serial
            && failed(device, channel, r.base_serial)
        {
            self.maybe_halt(channel, head)?;
        }
        Ok(Pick::Head)
    }

    fn record_served(&self, device: &Device, channel: &str, serial: u64) -> Result<()> {
        if device.served.get(channel) == Some(&serial) {
            return Ok(());
        }
        let _d = self.device_lock(&device.serial);
        let mut d = self.device(&device.serial)?;
        d.served.insert(channel.into(), serial);
        Ok(self.kv.write(vec![Op::Put { table: DEVICES, key: d.serial.as_bytes().to_vec(), value: json(&d) }])?)
    }

    /// Counts the devices that took documents newer than the base and how many of them
    /// failed; pauses the rollout when the share is above its limit.
    fn maybe_halt(&self, channel: &str, head: &HeadDoc) -> Result<()> {
        let _g = self.lock();
        let Some(mut r) = self.rollout(channel)? else { return Ok(()) };
        if r.state != RolloutState::Running {
            return Ok(());
        }
        let (mut took, mut bad) = (0usize, Vec::new());
        for d in self.devices()? {
            if counts_for(&d, &r) && took_it(&d, channel, r.base_serial) {
                took += 1;
                if failed(&d, channel, r.base_serial) {
                    bad.push(format!(
                        "{}: {}",
                        d.serial,
                        d.report.last_error.as_deref().or(d.report.last_result.as_deref()).unwrap_or("failed")
                    ));
                }
            }
        }
        if took == 0 || bad.len() * 100 <= took * usize::from(r.max_failure_percent) {
            return Ok(());
        }
        let mut reason = format!(
            "{} of {took} devices that took serial {} failed ({}% > {}%): ",
            bad.len(),
            head.serial,
            bad.len() * 100 / took,
            r.max_failure_percent
        );
        reason += &bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        let mut cut = reason.len().min(MAX_TEXT);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        r.state = RolloutState::Paused;
        r.halt_reason = Some(reason.clone());
        Ok(self.kv.write(vec![
            Op::Put { table: ROLLOUTS, key: channel.as_bytes().to_vec(), value: json(&r) },
            self.audit_op(&Caller::Server, "rollout halt", format!("{channel}: {reason}"))?,
        ])?)
    }
}

impl Fleet {
    pub fn rollout_status(&self, r: Rollout) -> Result<RolloutStatus> {
        let (mut devices, mut eligible, mut took, mut failed_n, mut uncounted) = (0, 0, 0, 0, 0);
        for d in self.devices()? {
            if d.report.channel.as_deref() != Some(r.channel.as_str()) {
                continue;
            }
            if !counts_for(&d, &r) {
                uncounted += 1;
                continue;
            }
            devices += 1;
            if r.group.as_ref().is_none_or(|g| d.groups.contains(g)) {
                eligible += 1;
            }
            if took_it(&d, &r.channel, r.base_serial) {
                took += 1;
                if failed(&d, &r.channel, r.base_serial) {
                    failed_n += 1;
                }
            }
        }
        Ok(RolloutStatus { rollout: r, devices, eligible, took, failed: failed_n, uncounted })
    }
}

/// True if a device that took `head` reports a rollback or a failed update and does not run
/// its target.
fn failed(d: &Device, channel: &str, base_serial: u64) -> bool {
    d.failed.get(channel).is_some_and(|s| *s > base_serial)
}

/// True if a device took a document newer than the rollout's base and can run it: pinned
/// and dev boards take no release and do not count.
fn took_it(d: &Device, channel: &str, base_serial: u64) -> bool {
    d.served.get(channel).is_some_and(|s| *s > base_serial)
        && d.report.pinned != Some(true)
        && d.report.dev != Some(true)
}
