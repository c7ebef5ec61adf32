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
//! refilled at as many a minute, and [`ENROLL_ALL_FACTOR`] times that for all together, kept
//! in the store so replicas share them), but it never changes a known device: enrolling a known serial again only
//! records a re-enrollment request (with a token that works nowhere) until an operator
//! approves it ([`Fleet::approve_reenrollment`]). A rollout's statistics count only devices
//! an operator accepted or that enrolled before the rollout started ([`counts_for`]), so
//! devices enrolled during a rollout can neither halt it nor dilute its failures.
//!
//! One module per concern, each adding its methods to [`Fleet`]: `tokens`, `enrollment`
//! (and re-enrollment), `devices` (records, check-ins, history, accept/revoke/remove),
//! `config`, `rollouts`, `sessions` (the web UI's, kept here so every replica knows them) and
//! `audit`. This module holds the store's tables, the errors, and
//! the locks every change takes. The messages of the API are `ferry_api`'s; the records
//! stored are the same types where the two agree.

mod audit;
mod config;
pub mod db;
mod devices;
mod enrollment;
mod rollouts;
mod sessions;
mod tokens;

use std::sync::Mutex;

use ferry_store::kv::Op;

use serde::{Deserialize, Serialize};

pub use config::{check_config_key, sign_config, Scope, CONFIG_LIFETIME};
pub use devices::{check_report, Device, Reenrollment};
pub use enrollment::{ENROLLMENTS_PER_MINUTE, ENROLL_ALL_FACTOR};
pub use ferry_api::admin::RolloutAction;
pub use rollouts::{bucket, counts_for, no_rollout_action, HeadDoc, Pick};
pub use sessions::Session;
pub use tokens::AdminKey;

const DEVICES: &str = "devices";
const TOKENS: &str = "tokens";
const AUDIT: &str = "audit";
const EVENTS: &str = "events";
/// Configuration levels: `fleet`, `group/<name>`, `device/<serial>` → [`Level`]; and the
/// counter every change bumps, under `version`.
const CONFIG: &str = "config";
/// Staged rollouts, by channel.
const ROLLOUTS: &str = "rollouts";
/// Each device's newest check-in report and when it came, apart from its record: a check-in
/// rewrites only this, so an operator's change of the record (a revocation) is never kept
/// from landing by a device checking in over and over through another server.
const REPORTS: &str = "reports";
/// Each device's part in its channel's rollout (`rollouts::Mark`), by serial.
const MARKS: &str = "marks";
/// Per rollout (channel, run): how many counted devices took its release and how many failed.
const ROLLOUT_COUNTS: &str = "rollout_counts";
/// Per rollout: the devices that took its release and failed (the halt's examples).
const ROLLOUT_FAILED: &str = "rollout_failed";
/// Rate limits every server on the store draws on (enrollment's token buckets).
const LIMITS: &str = "limits";
/// The web UI's sessions, by the hash of their cookie (`sessions::Session`).
const SESSIONS: &str = "sessions";
const TABLES: [&str; 12] = [
    DEVICES,
    TOKENS,
    AUDIT,
    EVENTS,
    CONFIG,
    ROLLOUTS,
    REPORTS,
    MARKS,
    ROLLOUT_COUNTS,
    ROLLOUT_FAILED,
    LIMITS,
    SESSIONS,
];
const CONFIG_VERSION: &[u8] = b"version";

/// What an API client is told of a [`FleetError::Database`] (not where or what the database is).
pub const DATABASE_UNAVAILABLE: &str = "the fleet's database is unavailable; try again shortly";

/// Tries of a read-modify-write that other servers keep changing the data of.
const RACE_TRIES: u64 = 16;

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
    /// The fleet's database cannot answer now (PostgreSQL down, unreachable, or all the
    /// pool's connections busy). The detail is for the server's log: an API client is only
    /// told to try again ([`DATABASE_UNAVAILABLE`]).
    #[error("{0}")]
    Database(String),
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
pub use ferry_api::device::{DeviceState, Enrolled, Report};

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

pub struct Fleet {
    db: db::FleetDb,
    settings: Settings,
    /// Taken while an enrollment's rate limits are read and written back (the store's
    /// conditions keep other servers apart; this keeps this server's threads apart).
    enroll_limits: Mutex<()>,
    /// Serialises read-modify-write sequences (enrollment, audit sequence numbers).
    write: Mutex<()>,
    /// Read-modify-writes done again because another server changed what they read.
    races: std::sync::atomic::AtomicU64,
    /// One of these guards each device record: check-ins of different devices run (and
    /// their synced writes group-commit) in parallel. Taken after `write`, never before it.
    stripes: Vec<Mutex<()>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("store", &self.db.describe()).finish()
    }
}

/// The time now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The condition that `table`/`key` still holds `was` (what the caller read) when its
/// batch is written.
fn expect(table: &'static str, key: &[u8], was: Option<Vec<u8>>) -> Op {
    Op::Expect { table, key: key.to_vec(), value: was }
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

/// A writer's section ([`Fleet::lock`]); the shared turn is dropped before the local lock.
struct WriteGuard<'a> {
    _shared: Option<db::Turn<'a>>,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl Fleet {
    /// Opens the fleet's state at `at` (a directory, or a PostgreSQL URL through
    /// [`db::Location::parse`]), creating it if needed.
    pub fn open(at: impl Into<db::Location>, settings: Settings) -> Result<Fleet> {
        Ok(Fleet::over(db::FleetDb::open(&at.into(), &TABLES)?, settings))
    }

    fn over(db: db::FleetDb, settings: Settings) -> Fleet {
        Fleet {
            db,
            settings,
            enroll_limits: Mutex::new(()),
            write: Mutex::new(()),
            races: std::sync::atomic::AtomicU64::new(0),
            stripes: (0..64).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The fleet's state as it is now, for reading beside a running `ferry serve` (e.g.
    /// `ferry bundle --fleet` reading rollouts). Every change through it fails.
    pub fn open_read_only(at: impl Into<db::Location>) -> Result<Fleet> {
        Ok(Fleet::over(db::FleetDb::open_read_only(&at.into(), &TABLES)?, Settings::default()))
    }

    /// Where the state is kept (a directory, or the database's URL without its password).
    pub fn describe(&self) -> String {
        self.db.describe()
    }

    /// The turn of a read-modify-write section: this server's lock, then (on a shared
    /// database) the turn among servers, both held while the guard lives.
    fn lock(&self) -> WriteGuard<'_> {
        let local = self.write.lock().unwrap_or_else(|e| e.into_inner());
        WriteGuard { _shared: self.db.turn(), _local: local }
    }

    /// How many read-modify-writes this handle did again because another server (or, in
    /// the embedded store, another thread) changed what they read first.
    pub fn races(&self) -> u64 {
        self.races.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f`, a read-modify-write whose batch carries conditions on what it read
    /// ([`Op::Expect`], [`Op::Insert`]), again while another writer (a replica on the same
    /// database) changed that first; after [`RACE_TRIES`] tries, unavailable (503: retry).
    fn retrying<T>(&self, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut tries = 0u64;
        loop {
            tries += 1;
            match f() {
                Err(FleetError::Store(ferry_store::StoreError::KvConflict { table, key })) => {
                    self.races.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if tries >= RACE_TRIES {
                        return Err(FleetError::Unavailable(format!(
                            "{what}: {table}/{key} was changed by another server {tries} times in a row; try again"
                        )));
                    }
                    // Apart, so replicas that collided do not collide again at once.
                    let jitter = u64::from(blake3::hash(&now_nanos().to_le_bytes()).as_bytes()[0] % 8);
                    std::thread::sleep(std::time::Duration::from_millis(tries * 2 + jitter));
                }
                r => return r,
            }
        }
    }

    /// The lock of one device's record (see `stripes`).
    fn device_lock(&self, serial: &str) -> std::sync::MutexGuard<'_, ()> {
        let h = blake3::hash(serial.as_bytes());
        let i = usize::from(h.as_bytes()[0]) % self.stripes.len();
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}
