//! Where the fleet's state is kept: the embedded store (`ferry_store::kv`, RocksDB in a
//! directory: the default, one process) or a PostgreSQL database that several `ferry serve`
//! replicas share (`--fleet-db postgres://…`).
//!
//! What it is for: the same four operations on either (a key's value, an atomic batch of
//! puts and deletes, a prefix scan in key order, a table's last key), so every rule of
//! `fleet` is written once. What it is not for: meaning (the fleet's modules decide keys and
//! values), or locking between replicas (the callers' business).
//!
//! In PostgreSQL the tables are rows of one table, `ferry_kv (tbl, k, v)`, keyed by
//! `(tbl, k)`; `bytea` compares byte by byte, as RocksDB's keys do, so scans come in the
//! same order. The schema is created or upgraded once, under a transaction-scoped advisory
//! lock, however many replicas start at the same moment; a schema newer than this program
//! is refused. Connections are pooled ([`MAX_CONNECTIONS`]); every wait is bounded (connect,
//! statement, a free connection, a silent network: TCP keepalives and a user timeout), and a
//! failure is [`FleetError::Database`], which the API answers with 503 (and only "try again":
//! the detail goes to the server's log) so devices retry; a broken connection is dropped, and
//! one idle for a while is checked before it is lent, so a restarted database costs no
//! request.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ferry_store::kv::{Kv, Op};

use super::{FleetError, Result};

/// Where the fleet's state is: a directory or a PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL names a database; anything else a directory.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Dir(PathBuf::from(s))
        }
    }

    /// What to call it in messages: the directory, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Dir(p) => p.display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Dir(p.to_path_buf())
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::Dir(p.clone())
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}

/// `url` with any password replaced by `***`: in its user part (`user:password@`) and in a
/// `password=` parameter.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// The open store.
pub enum FleetDb {
    Embedded(Kv),
    Postgres(Box<Pg>),
}

impl std::fmt::Debug for FleetDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl FleetDb {
    /// Opens the store at `at` with `tables` (created if needed).
    pub fn open(at: &Location, tables: &[&'static str]) -> Result<FleetDb> {
        match at {
            Location::Dir(p) => Ok(FleetDb::Embedded(Kv::open(p, tables)?)),
            Location::Postgres(url) => Ok(FleetDb::Postgres(Box::new(Pg::open(url, false)?))),
        }
    }

    /// Opens the store for reading only (beside a running server).
    pub fn open_read_only(at: &Location, tables: &[&'static str]) -> Result<FleetDb> {
        match at {
            Location::Dir(p) => Ok(FleetDb::Embedded(Kv::open_read_only(p, tables)?)),
            Location::Postgres(url) => Ok(FleetDb::Postgres(Box::new(Pg::open(url, true)?))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            FleetDb::Embedded(kv) => kv.path().display().to_string(),
            FleetDb::Postgres(pg) => pg.shown.clone(),
        }
    }

    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            FleetDb::Embedded(kv) => Ok(kv.get(table, key)?),
            FleetDb::Postgres(pg) => pg.get(table, key),
        }
    }

    /// Applies every op or none, durable before it returns.
    pub fn write(&self, ops: Vec<Op>) -> Result<()> {
        match self {
            FleetDb::Embedded(kv) => Ok(kv.write(ops)?),
            FleetDb::Postgres(pg) => pg.write(ops),
        }
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    pub fn scan(&self, table: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            FleetDb::Embedded(kv) => Ok(kv.scan(table, prefix)?),
            FleetDb::Postgres(pg) => pg.scan(table, prefix),
        }
    }

    /// A writer's turn among servers sharing a database, for a read-modify-write section
    /// whose batch carries conditions: on PostgreSQL, writers of every replica queue for it
    /// (first come, first served), so one replica's writers cannot keep another's conditions
    /// failing; it ends when dropped. None on the embedded store (one process, whose callers
    /// hold their own lock), or when not had within 2 s (the conditions still hold).
    pub fn turn(&self) -> Option<Turn<'_>> {
        match self {
            FleetDb::Embedded(_) => None,
            FleetDb::Postgres(pg) => pg.turn(),
        }
    }

    /// The last `(key, value)` of a table, if any.
    pub fn last(&self, table: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        match self {
            FleetDb::Embedded(kv) => Ok(kv.last(table)?),
            FleetDb::Postgres(pg) => pg.last(table),
        }
    }

    /// At most `limit` `(key, value)`s whose key starts with `prefix` and sorts after
    /// `after`, in key order: one indexed read, however long the table.
    pub fn page(
        &self,
        table: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match self {
            FleetDb::Embedded(kv) => Ok(kv.page(table, prefix, after, limit)?),
            FleetDb::Postgres(pg) => pg.page(table, prefix, after, limit),
        }
    }

    /// A counter [`Op::Add`] writes (0 if none).
    pub fn counter(&self, table: &str, key: &[u8]) -> Result<i64> {
        match self {
            FleetDb::Embedded(kv) => Ok(kv.counter(table, key)?),
            FleetDb::Postgres(pg) => match pg.get(table, key)? {
                None => Ok(0),
                Some(v) => ferry_store::kv::counter_value(&v).ok_or_else(|| FleetError::Damaged {
                    what: format!("counter {table}"),
                    why: format!("{} bytes, not 8", v.len()),
                }),
            },
        }
    }
}

/// `--fleet DIR`: a directory that holds an embedded fleet store, or, with `create`, one
/// where a new store may be made. A mistyped directory would otherwise start a second,
/// empty fleet whose devices enroll anew.
pub fn check_embedded(dir: &std::path::Path, create: bool) -> anyhow::Result<()> {
    if create || dir.join("CURRENT").is_file() {
        return Ok(());
    }
    if dir.exists() {
        anyhow::bail!(
            "{} holds no fleet store: give the directory `ferry admin token create --fleet DIR --create-fleet` made, or add --create-fleet to make a new fleet there",
            dir.display()
        );
    }
    anyhow::bail!(
        "no fleet store at {} (a mistyped directory?): add --create-fleet to make a new fleet there",
        dir.display()
    )
}

/// The most connections one server keeps to the database.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest a call waits for a free connection: half a statement's longest run, so a
/// caller queued behind connections that all hang is told so before they time out, and a
/// request's worst wait is this plus one statement (15 s).
const POOL_WAIT: Duration = Duration::from_secs(5);
/// A pooled connection idle this long is checked (a round trip) before it is lent.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// The longest that check takes.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest connecting takes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one statement runs (`statement_timeout`, in milliseconds).
const STATEMENT_TIMEOUT_MS: u32 = 10_000;
/// The schema this program writes, and the advisory lock its migration takes.
/// 2: rollouts keep counters (`rollout_counts`) that every server on the database must keep
/// up to date; a server of schema 1 would not, so it refuses a database of schema 2.
const SCHEMA_VERSION: i32 = 2;
const MIGRATION_LOCK: i64 = 0x6665_7272_7930_0001;
/// The advisory lock a writer's turn holds ([`FleetDb::turn`]).
const TURN_LOCK: i64 = 0x6665_7272_7930_0002;
/// The longest a writer waits for its turn; past it, it goes on without (its conditions
/// still keep the data right: the turn only keeps replicas from starving each other).
const TURN_WAIT_MS: u32 = 2_000;

/// A pool of connections to one database.
pub struct Pg {
    config: postgres::Config,
    shown: String,
    idle: Mutex<Pool>,
    freed: Condvar,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").field("url", &self.shown).finish()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // Closing a connection blocks on the client's own runtime, which may not happen on
        // a thread that drives the server's (the fleet goes with the server's last task):
        // the idle connections are closed on a thread of their own.
        let pool = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        if !pool.clients.is_empty() {
            let closing = std::thread::Builder::new().name("ferry-pg-close".into()).spawn(move || drop(pool));
            if let Err(e) = closing {
                tracing::debug!(error = %e, "could not close the fleet database's connections on a thread");
            }
        }
    }
}

#[derive(Default)]
struct Pool {
    /// Idle connections and since when they are idle.
    clients: Vec<(postgres::Client, Instant)>,
    /// Connections open or being opened (idle or lent).
    open: usize,
}

impl Pg {
    /// Connects to `url` and makes sure the schema is there (creating or upgrading it
    /// once, whichever replica comes first). With `read_only`, every transaction of these
    /// connections is read-only.
    pub fn open(url: &str, read_only: bool) -> Result<Pg> {
        let shown = redact(url);
        let mut config: postgres::Config =
            url.parse().map_err(|e| FleetError::BadRequest(format!("fleet database URL {shown}: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // A database that vanishes without closing the connection (a partition, a host
        // crash) is noticed within about 20 s, not the kernel's minutes.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(3));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(20));
        let mut options = format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}");
        if read_only {
            options.push_str(" -c default_transaction_read_only=on");
        }
        config.options(&options);
        config.application_name("ferry serve");
        let pg = Pg { config, shown, idle: Mutex::new(Pool::default()), freed: Condvar::new() };
        // Connecting runs a runtime of the client's own, which may not start inside the
        // caller's (`ferry serve` opens the fleet from async code): a thread of its own.
        std::thread::scope(|s| s.spawn(|| pg.with(|c| if read_only { check_schema(c) } else { migrate(c) })).join())
            .map_err(|_| FleetError::Database(format!("fleet database {}: the connection thread failed", pg.shown)))??;
        Ok(pg)
    }

    fn unavailable(&self, e: postgres::Error) -> FleetError {
        let detail = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(inner) = src {
                    s.push_str(": ");
                    s.push_str(&inner.to_string());
                    src = inner.source();
                }
                s
            }
        };
        FleetError::Database(format!("fleet database {}: {detail}", self.shown))
    }

    /// Runs `f` on a pooled connection (connecting if none is idle and the pool has room),
    /// waiting at most [`POOL_WAIT`] for one. A connection that broke is not put back.
    fn with<T>(&self, f: impl FnOnce(&mut postgres::Client) -> Result<T, Fail>) -> Result<T> {
        let mut client = self.checkout()?;
        let r = f(&mut client);
        self.give_back(client);
        r.map_err(|e| match e {
            Fail::Db(e) => self.unavailable(e),
            Fail::Refused(why) => FleetError::Database(format!("fleet database {}: {why}", self.shown)),
            Fail::Raced(e) => FleetError::Store(e),
        })
    }

    /// [`Pg::with`] for a read, which is run once more on a new connection when its
    /// connection turned out to be closed (a database restarted since it was last used):
    /// reading twice changes nothing.
    fn read<T>(&self, mut f: impl FnMut(&mut postgres::Client) -> Result<T, Fail>) -> Result<T> {
        let closed = std::cell::Cell::new(false);
        let first = self.with(|c| {
            let r = f(c);
            closed.set(r.is_err() && c.is_closed());
            r
        });
        match first {
            Err(_) if closed.get() => self.with(f),
            r => r,
        }
    }

    /// Puts a lent connection back in the pool, or counts it gone if it broke.
    fn give_back(&self, client: postgres::Client) {
        let mut pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if client.is_closed() {
            pool.open -= 1;
        } else {
            pool.clients.push((client, Instant::now()));
        }
        drop(pool);
        self.freed.notify_one();
    }

    /// A writer's turn: a connection in a transaction holding [`TURN_LOCK`], or None when
    /// the lock was not had within [`TURN_WAIT_MS`] or the database could not be asked.
    fn turn(&self) -> Option<Turn<'_>> {
        let mut client = self.checkout().ok()?;
        // One round trip.
        let taken = client.batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = {TURN_WAIT_MS}; SELECT pg_advisory_xact_lock({TURN_LOCK})"
        ));
        let turn = Turn { pg: self, client: Some(client) };
        match taken {
            Ok(()) => Some(turn),
            Err(e) => {
                tracing::debug!(error = %e, "fleet database: going on without a writer's turn");
                None
            }
        }
    }

    fn checkout(&self) -> Result<postgres::Client> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((mut c, since)) = pool.clients.pop() {
                // The client notices a closed connection only when it uses it: one idle for
                // a while (the database may have restarted) is checked first, outside the lock.
                let fresh = since.elapsed() < IDLE_CHECK;
                drop(pool);
                if !c.is_closed() && (fresh || c.is_valid(CHECK_TIMEOUT).is_ok()) {
                    return Ok(c);
                }
                drop(c);
                pool = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                pool.open -= 1;
                continue;
            }
            if pool.open < MAX_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                return match self.config.connect(postgres::NoTls) {
                    Ok(c) => Ok(c),
                    Err(e) => {
                        self.idle.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
                        self.freed.notify_one();
                        Err(self.unavailable(e))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FleetError::Database(format!(
                    "fleet database {}: all {MAX_CONNECTIONS} connections busy for {} s",
                    self.shown,
                    POOL_WAIT.as_secs()
                )));
            }
            pool = self.freed.wait_timeout(pool, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            let row = c.query_opt("SELECT v FROM ferry_kv WHERE tbl = $1 AND k = $2", &[&table, &key])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// One transaction. An [`Op::Expect`] first takes a transaction-scoped advisory lock
    /// named by its table and key (so two writers expecting the same key, even one that does
    /// not exist yet, take turns: the second reads after the first committed), then reads
    /// and compares; an [`Op::Insert`] is a plain INSERT, which the primary key refuses when
    /// another transaction inserted the key first. Either way, and on a deadlock between two
    /// such batches: `StoreError::KvConflict`, nothing written (the caller reads again).
    fn write(&self, ops: Vec<Op>) -> Result<()> {
        // The conditions first, in one order (table, key), before any row is written: two
        // batches then wait for each other's locks in the same order and never deadlock.
        let (mut expects, changes): (Vec<&Op>, Vec<&Op>) = ops.iter().partition(|op| matches!(op, Op::Expect { .. }));
        expects.sort_by(|a, b| match (a, b) {
            (Op::Expect { table: ta, key: ka, .. }, Op::Expect { table: tb, key: kb, .. }) => (ta, ka).cmp(&(tb, kb)),
            _ => std::cmp::Ordering::Equal,
        });
        self.with(|c| {
            let mut tx = c.transaction()?;
            let turn = tx.prepare("SELECT pg_advisory_xact_lock($1)")?;
            let read = tx.prepare("SELECT v FROM ferry_kv WHERE tbl = $1 AND k = $2")?;
            for op in &expects {
                if let Op::Expect { table, key, value } = op {
                    tx.execute(&turn, &[&key_lock(table, key)]).map_err(|e| raced(e, table, key))?;
                    let now: Option<Vec<u8>> =
                        tx.query_opt(&read, &[table, key]).map_err(|e| raced(e, table, key))?.map(|r| r.get(0));
                    if now != *value {
                        return Err(Fail::Raced(Op::conflict(table, key)));
                    }
                }
            }
            for op in &changes {
                match op {
                    Op::Put { table, key, value } => tx.execute(
                        "INSERT INTO ferry_kv (tbl, k, v) VALUES ($1, $2, $3) ON CONFLICT (tbl, k) DO UPDATE SET v = EXCLUDED.v",
                        &[table, key, value],
                    ),
                    Op::Delete { table, key } => {
                        tx.execute("DELETE FROM ferry_kv WHERE tbl = $1 AND k = $2", &[table, key])
                    }
                    Op::Insert { table, key, value } => {
                        tx.execute("INSERT INTO ferry_kv (tbl, k, v) VALUES ($1, $2, $3)", &[table, key, value])
                    }
                    // In place, so writers adding at once all count (they queue on the row).
                    Op::Add { table, key, delta } => tx.execute(
                        "INSERT INTO ferry_kv (tbl, k, v) VALUES ($1, $2, int8send($3)) ON CONFLICT (tbl, k) DO UPDATE \
                         SET v = int8send(('x' || encode(ferry_kv.v, 'hex'))::bit(64)::bigint + $3)",
                        &[table, key, delta],
                    ),
                    Op::Expect { .. } => continue,
                }
                .map_err(|e| match op {
                    Op::Put { table, key, .. }
                    | Op::Delete { table, key }
                    | Op::Insert { table, key, .. }
                    | Op::Add { table, key, .. }
                    | Op::Expect { table, key, .. } => raced(e, table, key),
                })?;
            }
            tx.commit().map_err(|e| raced(e, "commit", b""))
        })
    }

    fn scan(&self, table: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read(|c| {
            let rows = match successor(prefix) {
                Some(end) => c.query(
                    "SELECT k, v FROM ferry_kv WHERE tbl = $1 AND k >= $2 AND k < $3 ORDER BY k",
                    &[&table, &prefix, &end],
                )?,
                None => {
                    c.query("SELECT k, v FROM ferry_kv WHERE tbl = $1 AND k >= $2 ORDER BY k", &[&table, &prefix])?
                }
            };
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn page(&self, table: &str, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let from = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let strict = after.is_some_and(|a| a >= prefix);
        let op = if strict { ">" } else { ">=" };
        self.read(|c| {
            let rows = match successor(prefix) {
                Some(end) => c.query(
                    &format!("SELECT k, v FROM ferry_kv WHERE tbl = $1 AND k {op} $2 AND k < $3 ORDER BY k LIMIT $4"),
                    &[&table, &from, &end, &limit],
                )?,
                None => c.query(
                    &format!("SELECT k, v FROM ferry_kv WHERE tbl = $1 AND k {op} $2 ORDER BY k LIMIT $3"),
                    &[&table, &from, &limit],
                )?,
            };
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn last(&self, table: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.read(|c| {
            let row = c.query_opt("SELECT k, v FROM ferry_kv WHERE tbl = $1 ORDER BY k DESC LIMIT 1", &[&table])?;
            Ok(row.map(|r| (r.get(0), r.get(1))))
        })
    }
}

/// A statement's error: a race with another writer (a key inserted first, a deadlock
/// between two batches, a serialization failure) is [`Fail::Raced`], which the caller
/// retries after reading again; anything else is the database's error.
fn raced(e: postgres::Error, table: &str, key: &[u8]) -> Fail {
    use postgres::error::SqlState;
    match e.code() {
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
        {
            Fail::Raced(Op::conflict(table, key))
        }
        _ => Fail::Db(e),
    }
}

/// A writer's turn among the servers on one database, held while it lives
/// ([`FleetDb::turn`]): a transaction that holds [`TURN_LOCK`] and writes nothing, ended
/// (and the lock released) when dropped, or by the database when this server dies.
pub struct Turn<'a> {
    pg: &'a Pg,
    client: Option<postgres::Client>,
}

impl std::fmt::Debug for Turn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn").field("database", &self.pg.shown).finish()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(mut client) = self.client.take() {
            if let Err(e) = client.batch_execute("ROLLBACK") {
                tracing::debug!(error = %e, "fleet database: ending a writer's turn");
            }
            self.pg.give_back(client);
        }
    }
}

/// The advisory lock of `table`/`key` (64 bits of their BLAKE3; a collision only makes two
/// unrelated writers take turns).
fn key_lock(table: &str, key: &[u8]) -> i64 {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry kv lock\0");
    h.update(table.as_bytes());
    h.update(b"\0");
    h.update(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    i64::from_le_bytes(first)
}

/// The smallest key greater than every key starting with `prefix`, or None when there is
/// none (an empty prefix, or one of only 0xff bytes).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Creates or upgrades the schema, once: the advisory lock makes replicas starting
/// together take turns, and the version row tells the later ones there is nothing to do.
fn migrate(c: &mut postgres::Client) -> Result<(), Fail> {
    // Already there (the usual start): nothing to create, so a role without the right to
    // create tables can run the server once an administrator's first start made them.
    if let Ok(row) = c.query_one("SELECT max(version) FROM ferry_schema", &[]) {
        let version: Option<i32> = row.get(0);
        match version {
            Some(v) if v == SCHEMA_VERSION => return Ok(()),
            Some(v) if v > SCHEMA_VERSION => return Err(newer_schema(v)),
            _ => {}
        }
    }
    let mut tx = c.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ferry_schema (version integer NOT NULL)")?;
    let version: Option<i32> = tx.query_one("SELECT max(version) FROM ferry_schema", &[])?.get(0);
    let version = version.unwrap_or(0);
    if version < 1 {
        tx.batch_execute(
            "CREATE TABLE ferry_kv (tbl text NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (tbl, k));
             INSERT INTO ferry_schema (version) VALUES (1);",
        )?;
    }
    if version < 2 {
        // Nothing to change in the table: the number keeps servers of schema 1 away.
        tx.batch_execute("INSERT INTO ferry_schema (version) VALUES (2);")?;
    }
    tx.commit()?;
    if version > SCHEMA_VERSION {
        return Err(newer_schema(version));
    }
    Ok(())
}

/// A read-only open creates nothing: the schema must be there, and not newer.
fn check_schema(c: &mut postgres::Client) -> Result<(), Fail> {
    let version: Option<i32> = match c.query_one("SELECT max(version) FROM ferry_schema", &[]) {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(Fail::Refused("it holds no Ferry fleet yet (no ferry_schema table)".into()));
        }
        Err(e) => return Err(e.into()),
    };
    match version {
        Some(v) if v > SCHEMA_VERSION => Err(newer_schema(v)),
        _ => Ok(()),
    }
}

/// A schema this program does not know: a newer ferry wrote it.
fn newer_schema(v: i32) -> Fail {
    Fail::Refused(format!(
        "its schema is version {v}, newer than this ferry's ({SCHEMA_VERSION}): upgrade ferry on every replica"
    ))
}

/// Why a call on a connection failed: the database's error, ours, or a condition of the
/// batch that another writer broke first.
enum Fail {
    Db(postgres::Error),
    Refused(String),
    Raced(ferry_store::StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_where_the_next_prefix_starts() {
        assert_eq!(successor(b"dev/"), Some(b"dev0".to_vec()));
        assert_eq!(successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff, 0xff]), None);
        assert_eq!(successor(b""), None);
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://ferry:s3cret@db.example:5432/fleet"),
            "postgres://ferry:***@db.example:5432/fleet"
        );
        assert_eq!(redact("postgres://ferry@db/fleet"), "postgres://ferry@db/fleet");
        assert_eq!(
            redact("postgres://ferry@db/fleet?sslmode=disable&password=s3cret&x=1"),
            "postgres://ferry@db/fleet?sslmode=disable&password=***&x=1"
        );
        assert_eq!(redact("postgres://a:b@c/d?PASSWORD=e"), "postgres://a:***@c/d?PASSWORD=***");
        assert_eq!(Location::parse("postgresql://x@y/z"), Location::Postgres("postgresql://x@y/z".into()));
        assert_eq!(Location::parse("/var/lib/ferry/fleet"), Location::Dir("/var/lib/ferry/fleet".into()));
    }
}
