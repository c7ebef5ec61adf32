//! The server's side of chunk patches (`POST /v1/patches`, see `ferry_delta::patch`):
//! computing them with bounded CPU and memory, and caching them so that the next device on
//! the same version costs a file read.
//!
//! - CPU: at most `workers` patches are computed at once across all requests (a counting
//!   semaphore); within a request, items are computed ahead of the one being sent by at most
//!   that many, so a response holds a bounded number of answers in memory.
//! - Concurrent requests for the same patch compute it once: the second waits for the first
//!   and reads the cache.
//! - The cache is a directory of files named `<key>-<level>`, each the answer's BLAKE3
//!   followed by the answer, written to a temporary name, synced and renamed, so a crash
//!   leaves whole entries or none, and a damaged entry is detected, removed and recomputed.
//!   It is bounded in bytes: past the bound the least recently used entries are removed.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use ferry_delta::patch::{answer, AnswerError, PatchRequest};
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
            if name.ends_with(".tmp") {
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
        let tmp = self.dir.join(format!("{name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(blake3::hash(body).as_bytes())?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            // The cache is an optimisation: a full disk costs recomputation, not an error.
            tracing::warn!(path = %path.display(), error = %e, "could not write a patch cache entry");
            let _ = fs::remove_file(&tmp);
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
        let key = item.key();
        let name = self.entry_name(&key);
        if let Some(hit) = self.read_cached(&name) {
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).cache_hits += 1;
            return Ok(hit);
        }
        let lock = self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let result = {
            let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = self.read_cached(&name) {
                self.stats.lock().unwrap_or_else(|e| e.into_inner()).cache_hits += 1;
                Ok(hit)
            } else {
                let _slot = self.slots.acquire();
                let started = std::time::Instant::now();
                let r = answer(repo, item, self.level);
                let secs = started.elapsed().as_secs_f64();
                if let Ok(body) = &r {
                    self.write_cached(&name, body);
                    let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
                    st.computed += 1;
                    st.compute_seconds += secs;
                }
                tracing::debug!(%key, seconds = secs, "computed a patch");
                r
            }
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&lock) == 2 {
            in_flight.remove(&key);
        }
        result
    }

    /// Answers `items` in order, computing up to `workers` of them ahead of the one being
    /// sent; `send` gets each answer in request order and returns false to stop.
    pub fn answer_all(
        &self,
        repo: &Repository,
        items: &[PatchRequest],
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
                    let r = self.answer(repo, &items[i]);
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
}
