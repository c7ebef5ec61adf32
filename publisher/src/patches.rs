//! The server's side of chunk patches (`POST /v1/patches`, see `ferry_delta::patch`):
//! computing them with bounded CPU and memory, and caching them so that the next device on
//! the same version costs a file read.
//!
//! - CPU: at most `workers` patches are computed at once across all requests (a counting
//!   semaphore); within a request, items are computed ahead of the one being sent by at most
//!   that many, so a response holds a bounded number of answers in memory.
//! - Concurrent requests for the same patch compute it once: the second waits for the first
//!   and reads the cache.
//! - Fresh work (computing, not reading the cache) is bounded per request and per client
//!   ([`Limits`]): a request may spend [`Limits::request_seconds`] of CPU; a client (a
//!   device or admin token, with `--fleet`) may run [`Limits::client_requests`] patch
//!   requests at once and draws on a bucket of CPU seconds that refills over time. Past
//!   either bound, items not in the cache are answered in the plain form (the target's
//!   stored frames, which cost a read, not a compression) and not cached, so a request
//!   naming thousands of random items costs the server a bounded amount of CPU. Compressed
//!   tree answers (`POST /v1/trees`, encoding 1) are cached here too and draw on the same
//!   allowance.
//! - The cache is a directory of files named `<key>-<level>`, each the answer's BLAKE3
//!   followed by the answer, written to a temporary name, synced and renamed, so a crash
//!   leaves whole entries or none, and a damaged entry is detected, removed and recomputed.
//!   It is bounded in bytes: past the bound the least recently used entries are removed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use ferry_delta::patch::{answer, answer_plain, AnswerError, PatchRequest};
use ferry_store::{Id, Repository};

/// A counting semaphore for blocking threads.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// Counters, for logs and the benchmark.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PatchStats {
    pub computed: u64,
    pub cache_hits: u64,
    /// CPU-bound time spent computing patches, in seconds.
    pub compute_seconds: f64,
    /// Items answered plain because their request's or client's allowance was spent.
    pub capped: u64,
}

/// Bounds on the fresh work (answers computed rather than read from the cache) that
/// requests may cause.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPU seconds of fresh work one request may use; the rest of its items that are not
    /// cached are answered plain.
    pub request_seconds: f64,
    /// Patch requests one client may have running at once; more are refused (429).
    pub client_requests: usize,
    /// A client's bucket of CPU seconds: at most this full (a new client starts full) ...
    pub client_burst_seconds: f64,
    /// ... and refilled at this many seconds per minute.
    pub client_seconds_per_minute: f64,
}

impl Default for Limits {
    /// 30 s per request (some 30 MB of fresh patches at level 19), 2 requests at once per
    /// client (a device sends one at a time), 120 s of burst per client refilled at 10 s a
    /// minute: the first device on a new version gets a large update patched; past that,
    /// what it would have computed comes plain and the next device's requests compute more.
    fn default() -> Limits {
        Limits {
            request_seconds: 30.0,
            client_requests: 2,
            client_burst_seconds: 120.0,
            client_seconds_per_minute: 10.0,
        }
    }
}

/// What one client has running and left.
#[derive(Debug)]
struct ClientUse {
    running: usize,
    /// CPU seconds left in the bucket (negative: in debt for work that overran it).
    bucket: f64,
    refilled: Instant,
}

/// The most clients tracked; past it, idle clients with full buckets are forgotten.
const MAX_CLIENTS: usize = 100_000;

type Clients = Arc<Mutex<HashMap<String, ClientUse>>>;

/// Why a request was not admitted: the client has [`Limits::client_requests`] running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    /// Seconds after which to try again.
    pub retry_after: u64,
}

/// One request's allowance of fresh work, from [`Patcher::admit`]; the client's running
/// count drops when it is dropped.
#[derive(Debug)]
pub struct Allowance {
    clients: Clients,
    limits: Limits,
    client: Option<String>,
    /// CPU seconds the request has left.
    left: Mutex<f64>,
}

impl Allowance {
    /// No bound at all (the in-process tools and tests).
    pub fn unlimited() -> Allowance {
        let limits = Limits {
            request_seconds: f64::INFINITY,
            client_requests: usize::MAX,
            client_burst_seconds: f64::INFINITY,
            client_seconds_per_minute: 0.0,
        };
        Allowance { clients: Clients::default(), limits, client: None, left: Mutex::new(f64::INFINITY) }
    }

    /// True if fresh work may start: the request and its client both have seconds left.
    fn may_compute(&self) -> bool {
        if *self.left.lock().unwrap_or_else(|e| e.into_inner()) <= 0.0 {
            return false;
        }
        let Some(client) = &self.client else { return true };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get_mut(client).is_none_or(|c| refill(c, &self.limits) > 0.0)
    }

    /// Charges `secs` of fresh work to the request and its client.
    fn charge(&self, secs: f64) {
        *self.left.lock().unwrap_or_else(|e| e.into_inner()) -= secs;
        if let Some(client) = &self.client {
            if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
                refill(c, &self.limits);
                c.bucket -= secs;
            }
        }
    }
}

impl Drop for Allowance {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get_mut(client) {
                c.running = c.running.saturating_sub(1);
            }
        }
    }
}

/// Refills a client's bucket for the time since its last refill; returns what it holds.
fn refill(c: &mut ClientUse, limits: &Limits) -> f64 {
    let now = Instant::now();
    let gained = now.duration_since(c.refilled).as_secs_f64() * limits.client_seconds_per_minute / 60.0;
    c.bucket = (c.bucket + gained).min(limits.client_burst_seconds);
    c.refilled = now;
    c.bucket
}

pub struct Patcher {
    level: i32,
    workers: usize,
    slots: Slots,
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes in the cache directory, and each entry's size and last use.
    cache: Mutex<BTreeMap<String, (u64, SystemTime)>>,
    in_flight: Mutex<HashMap<Id, Arc<Mutex<()>>>>,
    stats: Mutex<PatchStats>,
    limits: Limits,
    clients: Clients,
}

impl std::fmt::Debug for Patcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patcher").field("dir", &self.dir).field("level", &self.level).finish()
    }
}

impl Patcher {
    /// Opens (creating) the cache in `dir`, removing what an interrupted write left.
    pub fn open(dir: &Path, max_bytes: u64, level: i32, workers: usize) -> std::io::Result<Patcher> {
        fs::create_dir_all(dir)?;
        let mut cache = BTreeMap::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            // Temporaries of ferry_durable (`.<name>.tmp.<pid>`) and of older versions (`<name>.<pid>.tmp`).
            if name.contains(".tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            let m = e.metadata()?;
            cache.insert(name, (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        let workers = workers.max(1);
        Ok(Patcher {
            level,
            workers,
            slots: Slots { free: Mutex::new(workers), cv: Condvar::new() },
            dir: dir.to_path_buf(),
            max_bytes,
            cache: Mutex::new(cache),
            in_flight: Mutex::new(HashMap::new()),
            stats: Mutex::new(PatchStats::default()),
            limits: Limits::default(),
            clients: Clients::default(),
        })
    }

    /// The same patcher with other bounds on fresh work.
    pub fn with_limits(mut self, limits: Limits) -> Patcher {
        self.limits = limits;
        self
    }

    /// Admits one request from `client` (a token's owner; `None` when the server knows no
    /// clients, and then only the per-request bound applies), or says when to try again.
    pub fn admit(&self, client: Option<&str>) -> Result<Allowance, Busy> {
        let limits = self.limits;
        if let Some(name) = client {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            if clients.len() >= MAX_CLIENTS && !clients.contains_key(name) {
                clients.retain(|_, c| c.running > 0 || refill(c, &limits) < limits.client_burst_seconds);
            }
            let c = clients.entry(name.to_string()).or_insert_with(|| ClientUse {
                running: 0,
                bucket: limits.client_burst_seconds,
                refilled: Instant::now(),
            });
            if c.running >= limits.client_requests {
                return Err(Busy { retry_after: 1 });
            }
            c.running += 1;
        }
        Ok(Allowance {
            clients: self.clients.clone(),
            limits,
            client: client.map(str::to_string),
            left: Mutex::new(limits.request_seconds),
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Compresses `data` with `prefix` at the patch level, within the CPU bound.
    pub fn compress(&self, prefix: &[u8], data: &[u8]) -> std::io::Result<Vec<u8>> {
        let _slot = self.slots.acquire();
        ferry_delta::patch::compress_patch(prefix, data, self.level)
    }

    pub fn stats(&self) -> PatchStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry_name(&self, key: &Id) -> String {
        format!("{}-{}", key.to_hex(), self.level)
    }

    fn read_cached(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.dir.join(name);
        let bytes = fs::read(&path).ok()?;
        let (sum, body) = (bytes.get(..32)?, bytes.get(32..)?);
        if blake3::hash(body).as_bytes() != sum {
            tracing::warn!(path = %path.display(), "removing a damaged patch cache entry");
            let _ = fs::remove_file(&path);
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
            return None;
        }
        let now = SystemTime::now();
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(now);
        }
        if let Some(e) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            e.1 = now;
        }
        Some(body.to_vec())
    }

    fn write_cached(&self, name: &str, body: &[u8]) {
        let path = self.dir.join(name);
        let written = ferry_durable::replace_with(&path, ferry_durable::PUBLIC, |f| {
            f.write_all(blake3::hash(body).as_bytes())?;
            f.write_all(body)
        });
        if let Err(e) = written {
            // The cache is an optimisation: a full disk costs recomputation, not an error.
            tracing::warn!(path = %path.display(), error = %e, "could not write a patch cache entry");
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(name.to_string(), (body.len() as u64 + 32, SystemTime::now()));
        let mut total: u64 = cache.values().map(|(len, _)| len).sum();
        if total > self.max_bytes {
            let mut by_age: Vec<(SystemTime, String, u64)> =
                cache.iter().map(|(n, (len, used))| (*used, n.clone(), *len)).collect();
            by_age.sort();
            for (_, n, len) in by_age {
                if total <= self.max_bytes / 10 * 9 {
                    break;
                }
                let _ = fs::remove_file(self.dir.join(&n));
                cache.remove(&n);
                total -= len;
            }
        }
    }

    /// The answer for one item: from the cache, or computed (once, however many ask).
    pub fn answer(&self, repo: &Repository, item: &PatchRequest) -> Result<Vec<u8>, AnswerError> {
        self.answer_within(repo, item, &Allowance::unlimited())
    }

    /// The answer for one item within `allowance`: from the cache, computed (once, however
    /// many ask), or, when the allowance is spent, plain and not cached.
    pub fn answer_within(
        &self,
        repo: &Repository,
        item: &PatchRequest,
        allowance: &Allowance,
    ) -> Result<Vec<u8>, AnswerError> {
        let key = item.key();
        self.cached(&key, allowance, || answer(repo, item, self.level), || answer_plain(repo, item))
    }

    /// A compressed tree answer (`POST /v1/trees` with encoding 1) for the trees under
    /// `new_root` that are not under `old_root`: from the cache, or `compress(level)`
    /// (once, however many ask). `None` when the allowance is spent (the caller refuses,
    /// and the device asks for the trees uncompressed).
    pub fn trees_within<E>(
        &self,
        new_root: &Id,
        old_root: &Id,
        allowance: &Allowance,
        compress: impl FnOnce(i32) -> Result<Vec<u8>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let mut h = blake3::Hasher::new();
        h.update(b"ferry trees v1\0");
        h.update(new_root.as_bytes());
        h.update(old_root.as_bytes());
        let key = Id(*h.finalize().as_bytes());
        self.cached(&key, allowance, || compress(self.level).map(Some), || Ok(None))
    }

    /// The cache's rule for any answer named by `key`: a hit is read; otherwise, within
    /// the allowance, `compute` runs once however many ask for the key at the same time,
    /// and its answer is cached; past the allowance, `fallback` answers and nothing is kept.
    fn cached<T: CacheValue, E>(
        &self,
        key: &Id,
        allowance: &Allowance,
        compute: impl FnOnce() -> Result<T, E>,
        fallback: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let name = self.entry_name(key);
        if let Some(hit) = self.read_cached(&name) {
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).cache_hits += 1;
            return Ok(T::from_cache(hit));
        }
        let lock = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(*key).or_default().clone();
        let result = {
            let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = self.read_cached(&name) {
                self.stats.lock().unwrap_or_else(|e| e.into_inner()).cache_hits += 1;
                Ok(T::from_cache(hit))
            } else if !allowance.may_compute() {
                self.stats.lock().unwrap_or_else(|e| e.into_inner()).capped += 1;
                tracing::debug!(%key, "allowance spent: answering without computing");
                fallback()
            } else {
                let _slot = self.slots.acquire();
                let started = std::time::Instant::now();
                let r = compute();
                let secs = started.elapsed().as_secs_f64();
                allowance.charge(secs);
                if let Ok(value) = &r {
                    if let Some(body) = value.to_cache() {
                        self.write_cached(&name, body);
                        let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                        st.computed += 1;
                        st.compute_seconds += secs;
                    }
                }
                tracing::debug!(%key, seconds = secs, "computed an answer");
                r
            }
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) == 2 {
            in_flight.remove(key);
        }
        result
    }

    /// Answers `items` in order, computing up to `workers` of them ahead of the one being
    /// sent; `send` gets each answer in request order and returns false to stop.
    pub fn answer_all(
        &self,
        repo: &Repository,
        items: &[PatchRequest],
        send: impl FnMut(&PatchRequest, Result<Vec<u8>, AnswerError>) -> bool,
    ) {
        self.answer_all_within(repo, items, &Allowance::unlimited(), send)
    }

    /// [`Patcher::answer_all`] within one request's allowance.
    pub fn answer_all_within(
        &self,
        repo: &Repository,
        items: &[PatchRequest],
        allowance: &Allowance,
        mut send: impl FnMut(&PatchRequest, Result<Vec<u8>, AnswerError>) -> bool,
    ) {
        struct Progress {
            next_take: usize,
            next_send: usize,
            done: BTreeMap<usize, Result<Vec<u8>, AnswerError>>,
            stop: bool,
        }
        let progress = Mutex::new(Progress { next_take: 0, next_send: 0, done: BTreeMap::new(), stop: false });
        let cv = Condvar::new();
        let ahead = self.workers;
        std::thread::scope(|scope| {
            for _ in 0..self.workers.min(items.len()) {
                scope.spawn(|| loop {
                    let i = {
                        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                        while !p.stop && p.next_take < items.len() && p.next_take >= p.next_send + ahead {
                            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        if p.stop || p.next_take >= items.len() {
                            return;
                        }
                        p.next_take += 1;
                        p.next_take - 1
                    };
                    let r = self.answer_within(repo, &items[i], allowance);
                    progress.lock().unwrap_or_else(|e| e.into_inner()).done.insert(i, r);
                    cv.notify_all();
                });
            }
            for (i, item) in items.iter().enumerate() {
                let r = {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(r) = p.done.remove(&i) {
                            break r;
                        }
                        p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let failed = r.is_err();
                let go_on = send(item, r) && !failed;
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.next_send = i + 1;
                if !go_on {
                    p.stop = true;
                }
                drop(p);
                cv.notify_all();
                if !go_on {
                    break;
                }
            }
        });
    }
}

/// What [`Patcher::cached`] keeps: a patch answer is cached as it is; a tree answer is
/// `Some` when computed (`None` means "not computed", and is never cached).
trait CacheValue: Sized {
    fn from_cache(bytes: Vec<u8>) -> Self;
    fn to_cache(&self) -> Option<&[u8]>;
}

impl CacheValue for Vec<u8> {
    fn from_cache(bytes: Vec<u8>) -> Self {
        bytes
    }
    fn to_cache(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl CacheValue for Option<Vec<u8>> {
    fn from_cache(bytes: Vec<u8>) -> Self {
        Some(bytes)
    }
    fn to_cache(&self) -> Option<&[u8]> {
        self.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_damaged_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = Patcher::open(dir.path(), 3000, 19, 2).unwrap();
        for i in 0..5u8 {
            p.write_cached(&format!("e{i}"), &[i; 1000]);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let total: u64 = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3000, "cache holds {total} bytes: {names:?}");
        assert!(names.contains(&"e4".to_string()), "the newest entry is kept: {names:?}");
        assert_eq!(p.read_cached("e4").unwrap(), vec![4; 1000]);
        // A damaged entry is not served.
        let path = dir.path().join("e4");
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(p.read_cached("e4"), None);
        assert!(!path.exists());
        // Reopening forgets half-written entries.
        fs::write(dir.path().join("x.1.tmp"), b"half").unwrap();
        drop(p);
        Patcher::open(dir.path(), 3000, 19, 2).unwrap();
        assert!(!dir.path().join("x.1.tmp").exists());
    }

    #[test]
    fn a_client_runs_a_bounded_number_of_patch_requests_and_spends_a_bounded_budget() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            request_seconds: 5.0,
            client_requests: 2,
            client_burst_seconds: 3.0,
            client_seconds_per_minute: 0.0,
        };
        let p = Patcher::open(dir.path(), 3000, 19, 2).unwrap().with_limits(limits);
        let (a, b) = (p.admit(Some("device:A")).unwrap(), p.admit(Some("device:A")).unwrap());
        assert_eq!(p.admit(Some("device:A")).unwrap_err(), Busy { retry_after: 1 });
        // Another client, and requests without a client, are not held up.
        let other = p.admit(Some("device:B")).unwrap();
        let _anonymous = p.admit(None).unwrap();
        drop(b);
        let c = p.admit(Some("device:A")).unwrap();
        // A's bucket (3 s) is shared by its requests; B's is its own.
        assert!(a.may_compute() && c.may_compute());
        a.charge(2.0);
        assert!(a.may_compute() && c.may_compute());
        c.charge(1.5);
        assert!(!a.may_compute() && !c.may_compute());
        assert!(other.may_compute());
        // A request's own bound holds whatever its client's bucket.
        other.charge(2.9);
        assert!(other.may_compute());
        let anonymous = p.admit(None).unwrap();
        anonymous.charge(5.0);
        assert!(!anonymous.may_compute());
    }
}
