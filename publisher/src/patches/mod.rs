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
//!   followed by the answer, written to a temporary name and renamed, not synced (a
//!   release's thousands of entries would make the first device wait on the disk): an
//!   entry a crash left torn or empty is detected when read, removed and recomputed.
//!   It is bounded in bytes: past the bound the least recently used entries are removed.
//!
//! - No device waits for a slow patch ([`FirstAnswer::Fast`], the default): a patch not
//!   cached at the server's level is answered at once at [`FAST_LEVEL`] (cached too), and
//!   queued for a background worker that computes it at the server's level, one at a time
//!   (one core at most, at the lowest CPU priority), for the next device; a tree answer
//!   likewise. The same worker prepares ahead: when a channel
//!   document or a branch head appears, it queues the patches devices on the commits they
//!   run (the fleet's reports, the channel's previous targets, the release's previous
//!   commits) will plan (`ferry_delta::plan::planned_patches`), after their tree answers,
//!   so even the first device of a release finds them computed.
//!
//! - A second level shared by servers (`ferry serve --patch-store DIR|s3://…`): an answer
//!   missing from the disk cache is looked for in the store (checked against its BLAKE3, as
//!   on disk) before it is computed, and every answer computed is put there too, so each
//!   patch is computed once for every server of a fleet.
//!
//! Its parts: this module computes answers (once per key, in a bounded number of worker
//! slots) and keeps the counters; `cache` is the directory on disk; `allowance` holds the
//! bounds on fresh work ([`Limits`], [`Allowance`], [`Busy`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ferry_delta::patch::{answer, answer_plain, AnswerError, PatchRequest};
use ferry_store::{Id, Repository};

mod allowance;
mod cache;

use allowance::Admission;
pub use allowance::{Allowance, Busy, Limits};
use cache::DiskCache;

/// The target of the patcher's log events, in whichever of its modules they happen: one name
/// in the log (`ferry_publisher::patches`), as before the module was split.
const LOG_TARGET: &str = "ferry_publisher::patches";

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
    /// Items answered at [`FAST_LEVEL`] because the server's level was not cached yet.
    pub fast_answers: u64,
    /// Patches the background worker computed at the server's level (queued by a fast
    /// answer or prepared ahead), and those still queued.
    pub background_computed: u64,
    pub background_queued: u64,
    /// Patches queued ahead of any device, for a new release.
    pub prepared: u64,
    /// Answers found in the shared store (`--patch-store`) and not computed here.
    pub store_hits: u64,
}

/// The patch cache's second level: a directory or bucket every server of a fleet shares.
/// Every wait on it is bounded ([`STORE_WAIT`]), a failure sets it aside for
/// [`STORE_PAUSE`], writes happen in the background, and an entry read from it is checked
/// before it is used or kept: whoever can write the store cannot make a server serve bytes
/// it would not have computed.
struct SharedStore {
    store: Arc<crate::export::Destination>,
    runtime: tokio::runtime::Handle,
    /// Until when the store is set aside after a failure.
    paused: Mutex<Option<std::time::Instant>>,
}

/// The longest a server waits for the shared store on one answer.
const STORE_WAIT: Duration = Duration::from_secs(2);
/// How long the store is left alone after it failed or was slow.
const STORE_PAUSE: Duration = Duration::from_secs(60);

/// The most bytes an answer read from the store may have (a patch answer is bounded by its
/// target, at most `TARGET_MAX`, plus framing).
const MAX_STORED_ANSWER: u64 = 2 * ferry_delta::patch::TARGET_MAX + (1 << 20);

impl SharedStore {
    fn path(name: &str) -> String {
        format!("patch-cache/{name}")
    }

    fn failed(&self, name: &str, what: &str, error: String) {
        tracing::warn!(target: LOG_TARGET, name, error, "{what} the shared patch store; leaving it alone for {} s", STORE_PAUSE.as_secs());
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now() + STORE_PAUSE);
    }

    fn usable(&self) -> bool {
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).is_none_or(|until| std::time::Instant::now() >= until)
    }

    /// The answer `name`, if the store has it whole (its BLAKE3, then the answer) and small
    /// enough; unchecked (the caller checks it against the repository).
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        if !self.usable() {
            return None;
        }
        let path = Self::path(name);
        let store = self.store.clone();
        let got = self.runtime.block_on(async move {
            tokio::time::timeout(STORE_WAIT, async {
                match store.size(&path).await? {
                    Some(n) if n <= MAX_STORED_ANSWER + 32 => store.get(&path).await,
                    Some(n) => Err(anyhow::anyhow!("{path} is {n} bytes, more than an answer can be")),
                    None => Ok(None),
                }
            })
            .await
        });
        let bytes = match got {
            Ok(Ok(Some(b))) => b,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                self.failed(name, "reading", format!("{e:#}"));
                return None;
            }
            Err(_) => {
                self.failed(name, "waiting for", format!("no answer in {} s", STORE_WAIT.as_secs()));
                return None;
            }
        };
        let (sum, body) = (bytes.get(..32)?, bytes.get(32..)?);
        if blake3::hash(body).as_bytes() != sum {
            tracing::warn!(target: LOG_TARGET, name, "a stored patch answer is damaged; computing it");
            return None;
        }
        Some(body.to_vec())
    }

    /// Puts the answer `name` in the background (a failure costs another server a
    /// computation, no more).
    fn write(&self, name: &str, body: &[u8]) {
        if !self.usable() {
            return;
        }
        let mut bytes = Vec::with_capacity(32 + body.len());
        bytes.extend_from_slice(blake3::hash(body).as_bytes());
        bytes.extend_from_slice(body);
        let (store, path, name) = (self.store.clone(), Self::path(name), name.to_string());
        self.runtime.spawn(async move {
            let put = tokio::time::timeout(4 * STORE_WAIT, store.put(&path, bytes, "no-cache")).await;
            let error = match put {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "no answer in time".to_string(),
            };
            tracing::warn!(target: LOG_TARGET, name, error, "writing the shared patch store");
        });
    }
}

/// The zstd level of a first answer when the server's level is not cached: fast enough that
/// no device waits on it (about 10-30x faster than level 19, some percent larger).
pub const FAST_LEVEL: i32 = 3;

/// The most patches waiting for the background worker, and the most chunk ids they may
/// name together (32 MiB of ids); past either, new ones are not queued (a later device
/// asking for them queues them again, and a release's scan tries again).
pub const MAX_QUEUED: usize = 65536;
pub const MAX_QUEUED_IDS: usize = 1 << 20;

/// What [`Patcher::queue`] did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Added,
    /// Cached or queued already.
    Already,
    /// The queue is full.
    Full,
}

/// What a device gets for a patch that is not cached at the server's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstAnswer {
    /// A fast answer at once; the server's level is computed in the background.
    #[default]
    Fast,
    /// The server's level, computed while the device waits (the best bytes for every
    /// device, the first one's wait included).
    Best,
}

/// The background worker's queue: requests by key, each once.
#[derive(Default)]
struct Queue {
    items: VecDeque<PatchRequest>,
    keys: HashSet<Id>,
    /// Chunk ids the queued items name.
    ids: usize,
}

pub struct Patcher {
    level: i32,
    workers: usize,
    slots: Slots,
    cache: DiskCache,
    /// One computation per cache entry at a time (by entry name: a fast answer never waits
    /// for the background worker's best one of the same patch).
    in_flight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    stats: Mutex<PatchStats>,
    admission: Admission,
    first: FirstAnswer,
    prepare: bool,
    store: Option<SharedStore>,
    queue: Mutex<Queue>,
    queued: Condvar,
}

impl std::fmt::Debug for Patcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patcher").field("dir", &self.cache.dir()).field("level", &self.level).finish()
    }
}

impl Patcher {
    /// Opens (creating) the cache in `dir`, removing what an interrupted write left.
    pub fn open(dir: &Path, max_bytes: u64, level: i32, workers: usize) -> std::io::Result<Patcher> {
        let cache = DiskCache::open(dir, max_bytes)?;
        let workers = workers.max(1);
        Ok(Patcher {
            level,
            workers,
            slots: Slots { free: Mutex::new(workers), cv: Condvar::new() },
            cache,
            in_flight: Mutex::new(HashMap::new()),
            stats: Mutex::new(PatchStats::default()),
            admission: Admission::new(Limits::default()),
            first: FirstAnswer::Best,
            prepare: false,
            store: None,
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
        })
    }

    /// The same patcher answering first requests as `first` says (default when opened:
    /// [`FirstAnswer::Best`], the server sets its configuration's).
    pub fn with_first_answer(self, first: FirstAnswer) -> Patcher {
        Patcher { first, ..self }
    }

    /// The same patcher preparing patches for new releases ahead of any device (default
    /// when opened: no; the server sets its configuration's).
    pub fn with_preparation(self, prepare: bool) -> Patcher {
        Patcher { prepare, ..self }
    }

    /// The same patcher with a second level of its cache in `store` (shared by servers),
    /// reached through `runtime` (the server's) from the patcher's blocking threads.
    pub fn with_store(self, store: crate::export::Destination, runtime: tokio::runtime::Handle) -> Patcher {
        Patcher { store: Some(SharedStore { store: Arc::new(store), runtime, paused: Mutex::new(None) }), ..self }
    }

    /// Whether new releases' patches are prepared ahead.
    pub fn prepares(&self) -> bool {
        self.prepare
    }

    /// Whether a background worker has anything to do for this patcher.
    pub fn needs_worker(&self) -> bool {
        self.prepare || (self.first == FirstAnswer::Fast && self.level > FAST_LEVEL)
    }

    /// Queues `item` for the background worker (once, unless its answer at the server's
    /// level is cached).
    pub fn queue(&self, item: PatchRequest) -> Queued {
        let key = item.key();
        if self.cache.contains(&self.entry_name(&key)) {
            return Queued::Already;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.keys.contains(&key) {
            return Queued::Already;
        }
        let ids = item.reference.len() + item.target.len();
        if q.items.len() >= MAX_QUEUED || q.ids + ids > MAX_QUEUED_IDS {
            return Queued::Full;
        }
        q.keys.insert(key);
        q.ids += ids;
        q.items.push_back(item);
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).background_queued = q.items.len() as u64;
        drop(q);
        self.queued.notify_one();
        Queued::Added
    }

    /// Counts patches queued ahead of any device.
    pub fn count_prepared(&self, n: u64) {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).prepared += n;
    }

    /// The background worker's step: waits up to `wait` for a queued patch and computes it
    /// at the server's level (cached for the next device). False when nothing was queued.
    pub fn work_once(&self, repo: &Repository, wait: Duration) -> bool {
        let item = {
            let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let (mut q, _) =
                self.queued.wait_timeout_while(q, wait, |q| q.items.is_empty()).unwrap_or_else(|e| e.into_inner());
            let Some(item) = q.items.pop_front() else { return false };
            q.ids -= item.reference.len() + item.target.len();
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).background_queued = q.items.len() as u64;
            item
        };
        let key = item.key();
        let name = self.entry_name(&key);
        // The worker is one thread: it takes no slot from the devices' requests.
        let how = How { slot: false, shared: Some((repo, &item)) };
        let r = self.cached(
            &name,
            &key,
            &Allowance::unlimited(),
            how,
            || answer(repo, &item, self.level),
            || answer_plain(repo, &item),
        );
        match r {
            Ok(_) => self.stats.lock().unwrap_or_else(|e| e.into_inner()).background_computed += 1,
            Err(e) => tracing::warn!(target: LOG_TARGET, %key, error = %e, "preparing a patch"),
        }
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).keys.remove(&key);
        true
    }

    /// The same patcher with other bounds on fresh work.
    pub fn with_limits(self, limits: Limits) -> Patcher {
        Patcher { admission: self.admission.with_limits(limits), ..self }
    }

    /// Admits one request from `client` (a token's owner; `None` when the server knows no
    /// clients, and then only the per-request bound applies), or says when to try again.
    pub fn admit(&self, client: Option<&str>) -> Result<Allowance, Busy> {
        self.admission.admit(client)
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
        entry_name(key, self.level)
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
        let best = self.entry_name(&key);
        let shared = How { slot: true, shared: Some((repo, item)) };
        if self.first == FirstAnswer::Best || self.level <= FAST_LEVEL {
            return self.cached(
                &best,
                &key,
                allowance,
                shared,
                || answer(repo, item, self.level),
                || answer_plain(repo, item),
            );
        }
        if let Some(hit) = self.lookup(&best, Some((repo, item))) {
            return Ok(hit);
        }
        // Not cached at the server's level: a fast answer now, the best one for the next
        // device computed in the background (only for what the allowance lets this client
        // compute: past it, the answer is plain and nothing is queued).
        let fast = entry_name(&key, FAST_LEVEL);
        let within = allowance.may_compute();
        let how = How { slot: true, shared: None };
        let r =
            self.cached(&fast, &key, allowance, how, || answer(repo, item, FAST_LEVEL), || answer_plain(repo, item));
        if within {
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).fast_answers += 1;
            self.queue(item.clone());
        }
        r
    }

    /// The answer `name` from the disk cache, or else, with `repo` to check it against,
    /// from the shared store (then kept on disk too).
    fn lookup(&self, name: &str, shared: Option<(&Repository, &PatchRequest)>) -> Option<Vec<u8>> {
        if let Some(hit) = self.cache.read(name) {
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).cache_hits += 1;
            return Some(hit);
        }
        let (store, (repo, item)) = (self.store.as_ref()?, shared?);
        let hit = store.read(name)?;
        if let Err(e) = ferry_delta::patch::check_answer(repo, item, &hit) {
            tracing::warn!(target: LOG_TARGET, name, error = %e, "the shared patch store holds a wrong answer; computing it");
            return None;
        }
        self.cache.write(name, &hit);
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).store_hits += 1;
        Some(hit)
    }

    /// A compressed tree answer (`POST /v1/trees` with encoding 1) for the trees under
    /// `new_root` that are not under `old_root`: from the cache, or `compress(level)`
    /// (once, however many ask). `None` when the allowance is spent (the caller refuses,
    /// and the device asks for the trees uncompressed). With a fast first answer, a pair
    /// not cached at the server's level is compressed at [`FAST_LEVEL`]: the device plans
    /// nothing until its trees arrive, and the best answer is the worker's to prepare
    /// ([`Patcher::prepare_trees`]).
    pub fn trees_within<E>(
        &self,
        new_root: &Id,
        old_root: &Id,
        allowance: &Allowance,
        compress: impl FnOnce(i32) -> Result<Vec<u8>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let key = trees_key(new_root, old_root);
        // Tree answers stay on this server (the store's entries are checked as patches).
        let how = How { slot: true, shared: None };
        let best = self.entry_name(&key);
        if self.first == FirstAnswer::Fast && self.level > FAST_LEVEL {
            if let Some(hit) = self.lookup(&best, None) {
                return Ok(Some(hit));
            }
            let fast = entry_name(&key, FAST_LEVEL);
            return self.cached(&fast, &key, allowance, how, || compress(FAST_LEVEL).map(Some), || Ok(None));
        }
        self.cached(&best, &key, allowance, how, || compress(self.level).map(Some), || Ok(None))
    }

    /// Computes and caches the tree answer for `new_root` from `old_root` at the server's
    /// level unless it is cached (the background worker's part of preparing a release).
    pub fn prepare_trees<E>(
        &self,
        new_root: &Id,
        old_root: &Id,
        compress: impl FnOnce(i32) -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        let key = trees_key(new_root, old_root);
        let how = How { slot: false, shared: None };
        let all = Allowance::unlimited();
        self.cached(&self.entry_name(&key), &key, &all, how, || compress(self.level).map(Some), || Ok(None)).map(|_| ())
    }

    /// The cache's rule for any answer named by `key`: a hit is read; otherwise, within
    /// the allowance, `compute` runs once however many ask for the key at the same time,
    /// and its answer is cached; past the allowance, `fallback` answers and nothing is kept.
    fn cached<T: CacheValue, E>(
        &self,
        name: &str,
        key: &Id,
        allowance: &Allowance,
        how: How<'_>,
        compute: impl FnOnce() -> Result<T, E>,
        fallback: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if let Some(hit) = self.lookup(name, how.shared) {
            return Ok(T::from_cache(hit));
        }
        let lock =
            self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_string()).or_default().clone();
        let result = {
            let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = self.cache.read(name) {
                self.stats.lock().unwrap_or_else(|e| e.into_inner()).cache_hits += 1;
                Ok(T::from_cache(hit))
            } else if !allowance.may_compute() {
                self.stats.lock().unwrap_or_else(|e| e.into_inner()).capped += 1;
                tracing::debug!(%key, "allowance spent: answering without computing");
                fallback()
            } else {
                let _slot = how.slot.then(|| self.slots.acquire());
                let started = std::time::Instant::now();
                let r = compute();
                let secs = started.elapsed().as_secs_f64();
                allowance.charge(secs);
                if let Ok(value) = &r {
                    if let Some(body) = value.to_cache() {
                        self.cache.write(name, body);
                        if let (Some(store), Some(_)) = (&self.store, how.shared) {
                            store.write(name, body);
                        }
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
            in_flight.remove(name);
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

/// How [`Patcher::cached`] computes: in one of the request slots (a device's request) or
/// not (the background worker, one thread of its own); and whether the entry is shared
/// through the store (patch answers, checked against this repository).
#[derive(Clone, Copy)]
struct How<'a> {
    slot: bool,
    shared: Option<(&'a Repository, &'a PatchRequest)>,
}

/// The cache key of the tree answer for `new_root` from `old_root`.
fn trees_key(new_root: &Id, old_root: &Id) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry trees v1\0");
    h.update(new_root.as_bytes());
    h.update(old_root.as_bytes());
    Id(*h.finalize().as_bytes())
}

/// A cache entry's name: the key and the level it was computed at.
fn entry_name(key: &Id, level: i32) -> String {
    format!("{}-{}", key.to_hex(), level)
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
    use std::cell::Cell;

    /// A tree answer that only says which level it was compressed at.
    fn at(level: i32, calls: &Cell<Vec<i32>>) -> Result<Vec<u8>, String> {
        let mut c = calls.take();
        c.push(level);
        calls.set(c);
        Ok(format!("level {level}").into_bytes())
    }

    #[test]
    fn a_first_tree_answer_is_fast_and_the_prepared_one_is_the_best() {
        let dir = tempfile::tempdir().unwrap();
        let p = Patcher::open(dir.path(), 1 << 20, 19, 2).unwrap().with_first_answer(FirstAnswer::Fast);
        let (new, old) = (Id::of(b"new root"), Id::of(b"old root"));
        let calls = Cell::new(Vec::new());
        let all = Allowance::unlimited();
        let first = p.trees_within(&new, &old, &all, |l| at(l, &calls)).unwrap();
        assert_eq!(first.as_deref(), Some(&b"level 3"[..]));
        // The fast answer is cached: the next device before the preparation gets it as is.
        let again = p.trees_within(&new, &old, &all, |l| at(l, &calls)).unwrap();
        assert_eq!(again, first);
        assert_eq!(calls.take(), vec![FAST_LEVEL]);
        p.prepare_trees(&new, &old, |l| at(l, &calls)).unwrap();
        p.prepare_trees(&new, &old, |l| at(l, &calls)).unwrap();
        assert_eq!(calls.take(), vec![19], "prepared once, at the server's level");
        let best = p.trees_within(&new, &old, &all, |l| at(l, &calls)).unwrap();
        assert_eq!(best.as_deref(), Some(&b"level 19"[..]));
        assert_eq!(calls.take(), Vec::<i32>::new());
        // Another pair is another entry; with the best answer first, no fast one is made.
        let best_first = Patcher::open(dir.path(), 1 << 20, 19, 2).unwrap();
        let other = best_first.trees_within(&old, &new, &all, |l| at(l, &calls)).unwrap();
        assert_eq!(other.as_deref(), Some(&b"level 19"[..]));
    }
}
