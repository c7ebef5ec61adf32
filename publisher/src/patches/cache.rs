//! The patch cache on disk: a directory of entries named by the caller, each the BLAKE3 of
//! its body followed by the body, written to a temporary name and renamed, not synced: an
//! entry is checked whenever it is read, and one a crash left torn or empty is removed
//! then (and computed again). Bounded in bytes: past the bound the least recently used entries go. Not what
//! the entries hold or when they are computed (`super`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use super::LOG_TARGET;

/// The cache directory and what it holds.
pub(super) struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Each entry's size and last use.
    entries: Mutex<BTreeMap<String, (u64, SystemTime)>>,
}

impl DiskCache {
    /// Opens (creating) the cache in `dir`, removing what an interrupted write left.
    pub(super) fn open(dir: &Path, max_bytes: u64) -> std::io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        let mut entries = BTreeMap::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            // Temporaries of ferry_durable (`.<name>.tmp.<pid>`) and of older versions (`<name>.<pid>.tmp`).
            if name.contains(".tmp") {
                let _ = fs::remove_file(e.path());
                continue;
            }
            let m = e.metadata()?;
            entries.insert(name, (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        Ok(DiskCache { dir: dir.to_path_buf(), max_bytes, entries: Mutex::new(entries) })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the entry `name` is there (unchecked: [`DiskCache::read`] checks it).
    pub(super) fn contains(&self, name: &str) -> bool {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// The entry `name`, if it is there and whole (a damaged one is removed).
    pub(super) fn read(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.dir.join(name);
        let bytes = fs::read(&path).ok()?;
        let (sum, body) = bytes.split_at(bytes.len().min(32));
        if sum.len() < 32 || blake3::hash(body).as_bytes() != sum {
            tracing::warn!(target: LOG_TARGET, path = %path.display(), "removing a damaged patch cache entry");
            let _ = fs::remove_file(&path);
            self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
            return None;
        }
        let now = SystemTime::now();
        if let Ok(f) = fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(now);
        }
        if let Some(e) = self.entries.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name) {
            e.1 = now;
        }
        Some(body.to_vec())
    }

    /// Writes the entry `name` (whole or not at all), then removes the least recently used
    /// entries while the cache is over its bound.
    pub(super) fn write(&self, name: &str, body: &[u8]) {
        let path = self.dir.join(name);
        let written = write_unsynced(&path, body);
        if let Err(e) = written {
            // The cache is an optimisation: a full disk costs recomputation, not an error.
            tracing::warn!(target: LOG_TARGET, path = %path.display(), error = %e, "could not write a patch cache entry");
            return;
        }
        let mut cache = self.entries.lock().unwrap_or_else(|e| e.into_inner());
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
}

/// Writes an entry (its BLAKE3, then `body`) to a temporary name and renames it to `path`,
/// without syncing: an entry is checked whenever it is read, so one a power cut left torn
/// or empty is removed then and computed again; syncing each of a release's thousands of
/// entries would make the first device wait on the disk.
fn write_unsynced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = ferry_durable::temp_beside(path)?;
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(blake3::hash(body).as_bytes())?;
        f.write_all(body)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_damaged_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = DiskCache::open(dir.path(), 3000).unwrap();
        for i in 0..5u8 {
            p.write(&format!("e{i}"), &[i; 1000]);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        let total: u64 = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(total <= 3000, "cache holds {total} bytes: {names:?}");
        assert!(names.contains(&"e4".to_string()), "the newest entry is kept: {names:?}");
        assert_eq!(p.read("e4").unwrap(), vec![4; 1000]);
        // A damaged entry is not served.
        let path = dir.path().join("e4");
        let mut bytes = fs::read(&path).unwrap();
        bytes[40] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(p.read("e4"), None);
        assert!(!path.exists());
        // Entries are not synced: what a power cut may leave (empty, shorter than its
        // checksum, cut short) is not served either, and is removed.
        for (name, keep) in [("e5", 0), ("e6", 20), ("e7", 500)] {
            p.write(name, &[5; 1000]);
            let whole = fs::read(dir.path().join(name)).unwrap();
            fs::write(dir.path().join(name), &whole[..keep]).unwrap();
            assert_eq!(p.read(name), None, "{name}");
            assert!(!dir.path().join(name).exists(), "{name}");
        }
        // Reopening forgets half-written entries.
        fs::write(dir.path().join("x.1.tmp"), b"half").unwrap();
        drop(p);
        DiskCache::open(dir.path(), 3000).unwrap();
        assert!(!dir.path().join("x.1.tmp").exists());
    }
}
