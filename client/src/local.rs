//! The device's own store: the chunk index, trees and commits in RocksDB, the file objects
//! and staged chunks beside it, and the deployments built from them (paths: [`Layout`]).
//!
//! RocksDB stays behind this type: nothing outside this module sees it. The index is a cache
//! of what the object files hold: a chunk read through it is verified against its id, and a
//! chunk whose object is gone or changed is simply fetched again.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::layout::Layout;

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::object::{object_kind, ObjectKind};
use ferry_store::{Commit, Id, Meta, ReadTrees, Tree};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, IteratorMode, Options, WriteBatch, DB,
};

const CF_INDEX: &str = "chunk_index";
const CF_OBJECTS: &str = "objects";
/// The local RocksDB's block cache, shared by its column families.
const BLOCK_CACHE_BYTES: usize = 2 << 20;
/// Each column family's memtable; a 1 GiB tree's chunk index (about 5 MiB) is flushed in a few files.
const WRITE_BUFFER_BYTES: usize = 2 << 20;

/// Where a chunk's bytes are on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub object: Id,
    pub offset: u64,
    pub len: u32,
}

pub struct Local {
    pub layout: Layout,
    db: DB,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("root", &self.layout.root()).finish()
    }
}

/// The id of a file object: what a deployment's file is, content and metadata together.
pub fn file_object_id(meta: &Meta, chunks: &[ferry_store::ChunkRef]) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry file object v1\0");
    h.update(&meta.mode.to_le_bytes());
    h.update(&meta.uid.to_le_bytes());
    h.update(&meta.gid.to_le_bytes());
    h.update(&(meta.xattrs.len() as u32).to_le_bytes());
    for x in &meta.xattrs {
        h.update(&(x.name.len() as u32).to_le_bytes());
        h.update(&x.name);
        h.update(&(x.value.len() as u32).to_le_bytes());
        h.update(&x.value);
    }
    h.update(&(chunks.len() as u64).to_le_bytes());
    for c in chunks {
        h.update(c.id.as_bytes());
        h.update(&c.len.to_le_bytes());
    }
    Id(*h.finalize().as_bytes())
}

impl Local {
    /// Opens (creating if needed) the state directory, and removes what an interrupted run
    /// left half-done: incomplete deployments and temporary files. Staging is kept.
    pub fn open(root: &Path) -> Result<Local> {
        let layout = Layout::new(root);
        for dir in [layout.objects(), layout.staging(), layout.deploy()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A device is small: keep RocksDB's memory modest. One block cache of
        // BLOCK_CACHE_BYTES for both column families (RocksDB's default is 32 MiB per
        // table factory); the OS page cache keeps the index's files warm anyway.
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let small = |o: &mut Options| {
            o.set_compression_type(DBCompressionType::None);
            o.set_write_buffer_size(WRITE_BUFFER_BYTES);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            o.set_block_based_table_factory(&table);
        };
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_open_files(64);
        small(&mut opts);
        let cfs = [CF_INDEX, CF_OBJECTS].map(|name| {
            let mut o = Options::default();
            small(&mut o);
            ColumnFamilyDescriptor::new(name, o)
        });
        let db_path = layout.db();
        let db = DB::open_cf_descriptors(&opts, &db_path, cfs).map_err(|e| {
            if e.to_string().contains("LOCK") {
                anyhow::anyhow!("{} is in use by another ferryd", db_path.display())
            } else {
                anyhow::anyhow!("opening {}: {e}", db_path.display())
            }
        })?;
        let local = Local { layout, db };
        local.recover()?;
        Ok(local)
    }

    /// Opens the state directory for reading only (no lock, no recovery), e.g. for `status`
    /// while the daemon runs. `None` if no update has run yet.
    pub fn open_read_only(root: &Path) -> Result<Option<Local>> {
        let layout = Layout::new(root);
        let db_path = layout.db();
        // CURRENT is written last when RocksDB creates a database.
        if !db_path.join("CURRENT").exists() {
            return Ok(None);
        }
        let db = DB::open_cf_for_read_only(&Options::default(), &db_path, [CF_INDEX, CF_OBJECTS], false)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", db_path.display()))?;
        Ok(Some(Local { layout, db }))
    }

    fn recover(&self) -> Result<()> {
        // ferry_durable's temporaries in the state directory itself (state.json, trust.json,
        // trial.json, …) that a process died writing; one still alive may be writing now.
        for e in fs::read_dir(self.layout.root())? {
            let e = e?;
            let Some(pid) = ferry_durable::temp_owner(&e.file_name()).and_then(|p| i32::try_from(p).ok()) else {
                continue;
            };
            let dead = pid > 0
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
            if dead && e.file_type()?.is_file() {
                tracing::info!(path = %e.path().display(), "removing what an interrupted write left");
                let _ = fs::remove_file(e.path());
            }
        }
        for (dir, is_tmp) in [
            (self.layout.deploy(), &(|n: &str| n.contains(".tmp-")) as &dyn Fn(&str) -> bool),
            (self.layout.objects(), &|n: &str| n.ends_with(".tmp")),
            (self.layout.staging(), &|n: &str| n.ends_with(".tmp")),
        ] {
            for e in fs::read_dir(&dir)? {
                let e = e?;
                if is_tmp(&e.file_name().to_string_lossy()) {
                    let p = e.path();
                    tracing::info!(path = %p.display(), "removing what an interrupted update left");
                    if e.file_type()?.is_dir() {
                        make_writable(&p);
                        fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                    } else {
                        fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        #[allow(clippy::expect_used)]
        self.db.cf_handle(name).expect("column family opened with the database")
    }

    pub fn object_path(&self, id: &Id) -> PathBuf {
        self.layout.object(id)
    }

    pub fn staging_path(&self, id: &Id) -> PathBuf {
        self.layout.staged(id)
    }

    pub fn deploy_dir(&self) -> PathBuf {
        self.layout.deploy()
    }

    // ---- trees and commits ----------------------------------------------------------

    /// Stores a tree or commit whose bytes the caller has verified against `id`.
    pub fn put_object(&self, id: &Id, bytes: &[u8]) -> Result<()> {
        if Id::of(bytes) != *id {
            bail!("object {id}: bytes do not match the id");
        }
        self.db.put_cf(self.cf(CF_OBJECTS), id.as_bytes(), bytes).context("storing an object")
    }

    fn object_bytes(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_OBJECTS), id.as_bytes()).context("reading an object")? else {
            return Ok(None);
        };
        if Id::of(&bytes) != *id {
            // Damaged on the device: forget it so it is fetched again.
            self.db.delete_cf(self.cf(CF_OBJECTS), id.as_bytes())?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// A stored tree's canonical bytes, verified against its id.
    pub fn tree_bytes(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        Ok(self.object_bytes(id)?.filter(|b| object_kind(b) == Some(ObjectKind::Tree)))
    }

    pub fn has_object(&self, id: &Id) -> Result<bool> {
        Ok(self.db.get_pinned_cf(self.cf(CF_OBJECTS), id.as_bytes())?.is_some())
    }

    pub fn tree(&self, id: &Id) -> Result<Option<Tree>> {
        match self.object_bytes(id)? {
            Some(b) if object_kind(&b) == Some(ObjectKind::Tree) => {
                Ok(Some(Tree::decode(&b).with_context(|| format!("tree {id} stored on the device"))?))
            }
            _ => Ok(None),
        }
    }

    pub fn commit(&self, id: &Id) -> Result<Option<Commit>> {
        match self.object_bytes(id)? {
            Some(b) if object_kind(&b) == Some(ObjectKind::Commit) => {
                Ok(Some(Commit::decode(&b).with_context(|| format!("commit {id} stored on the device"))?))
            }
            _ => Ok(None),
        }
    }

    /// Drops stored trees and commits not in `keep`.
    pub fn retain_objects(&self, keep: &std::collections::HashSet<Id>) -> Result<()> {
        let mut batch = WriteBatch::default();
        for item in self.db.iterator_cf(self.cf(CF_OBJECTS), IteratorMode::Start) {
            let (k, _) = item?;
            if Id::from_slice(&k).is_none_or(|id| !keep.contains(&id)) {
                batch.delete_cf(self.cf(CF_OBJECTS), k);
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    // ---- chunks -----------------------------------------------------------------------

    pub fn location(&self, chunk: &Id) -> Result<Option<Location>> {
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_INDEX), chunk.as_bytes())? else {
            return Ok(None);
        };
        let parse = || -> Option<Location> {
            Some(Location {
                object: Id::from_slice(v.get(..32)?)?,
                offset: u64::from_le_bytes(v.get(32..40)?.try_into().ok()?),
                len: u32::from_le_bytes(v.get(40..44)?.try_into().ok()?),
            })
        };
        Ok(parse())
    }

    /// Records where the chunks of a newly written file object are.
    pub fn index_object(&self, object: &Id, chunks: &[ferry_store::ChunkRef]) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut offset = 0u64;
        for c in chunks {
            let mut v = Vec::with_capacity(44);
            v.extend_from_slice(object.as_bytes());
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&c.len.to_le_bytes());
            batch.put_cf(self.cf(CF_INDEX), c.id.as_bytes(), v);
            offset += u64::from(c.len);
        }
        self.db.write(batch).context("updating the chunk index")
    }

    pub fn forget_chunk(&self, chunk: &Id) -> Result<()> {
        self.db.delete_cf(self.cf(CF_INDEX), chunk.as_bytes()).context("updating the chunk index")
    }

    /// True if the device holds `chunk`'s bytes (in an object or in staging). Cheap: it does
    /// not read or verify them; [`Local::read_chunk`] does.
    pub fn has_chunk(&self, chunk: &Id) -> Result<bool> {
        if self.staging_path(chunk).exists() {
            return Ok(true);
        }
        Ok(match self.location(chunk)? {
            Some(loc) => self.object_path(&loc.object).exists(),
            None => false,
        })
    }

    /// Like [`Local::has_chunk`], but a staged copy is read and verified first, and a damaged
    /// one removed (so the caller fetches it). Staging left by an interrupted update may hold
    /// files whose data a power cut lost (seen in the VM: a chunk file of zeros), and finding
    /// them while the file is built costs one failed attempt per damaged chunk.
    pub fn has_intact_chunk(&self, chunk: &Id, len: u32) -> Result<bool> {
        let staged = self.staging_path(chunk);
        if let Ok(frame) = fs::read(&staged) {
            match ferry_store::chunk::decode_chunk(chunk, &frame, len) {
                Ok(_) => return Ok(true),
                Err(e) => {
                    tracing::warn!(%chunk, error = %e, "discarding a damaged staged chunk");
                    fs::remove_file(&staged).with_context(|| format!("removing {}", staged.display()))?;
                }
            }
        }
        Ok(match self.location(chunk)? {
            Some(loc) => self.object_path(&loc.object).exists(),
            None => false,
        })
    }

    /// A chunk's bytes from the device, verified; `None` if it is not there or not intact
    /// (a damaged copy is forgotten, so the caller fetches it again).
    pub fn read_chunk(&self, chunk: &Id, len: u32) -> Result<Option<Vec<u8>>> {
        let staged = self.staging_path(chunk);
        if let Ok(frame) = fs::read(&staged) {
            match ferry_store::chunk::decode_chunk(chunk, &frame, len) {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(e) => {
                    tracing::warn!(%chunk, error = %e, "discarding a damaged staged chunk");
                    let _ = fs::remove_file(&staged);
                }
            }
        }
        let Some(loc) = self.location(chunk)? else { return Ok(None) };
        let read = || -> std::io::Result<Vec<u8>> {
            let mut f = fs::File::open(self.object_path(&loc.object))?;
            f.seek(SeekFrom::Start(loc.offset))?;
            let mut buf = vec![0u8; loc.len as usize];
            f.read_exact(&mut buf)?;
            Ok(buf)
        };
        match read() {
            Ok(bytes) if loc.len == len && Id::of(&bytes) == *chunk => Ok(Some(bytes)),
            _ => {
                self.forget_chunk(chunk)?;
                Ok(None)
            }
        }
    }

    /// Removes index entries whose object file is gone.
    pub fn prune_index(&self) -> Result<()> {
        let mut batch = WriteBatch::default();
        for item in self.db.iterator_cf(self.cf(CF_INDEX), IteratorMode::Start) {
            let (k, v) = item?;
            let gone = v.get(..32).and_then(Id::from_slice).is_none_or(|o| !self.object_path(&o).exists());
            if gone {
                batch.delete_cf(self.cf(CF_INDEX), k);
            }
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Makes every write so far durable (RocksDB's WAL).
    pub fn sync(&self) -> Result<()> {
        self.db.flush_wal(true).context("syncing the device database")
    }
}

/// The device's trees for planning: a tree the device does not hold is an error here.
impl ReadTrees for Local {
    type Error = anyhow::Error;

    fn tree(&self, id: &Id) -> Result<Tree> {
        Local::tree(self, id)?.ok_or_else(|| anyhow!("tree {id} is missing on the device"))
    }
}

/// Restores owner write permission on a directory tree so it can be removed.
pub fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_removes_what_a_dead_writer_left_and_keeps_a_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let left = dir.path().join(format!(".trial.json.tmp.{dead}"));
        let live = dir.path().join(format!(".state.json.tmp.{}", std::process::id()));
        let other = dir.path().join("notes.tmp.1");
        for p in [&left, &live, &other] {
            fs::write(p, b"x").unwrap();
        }
        drop(Local::open(dir.path()).unwrap());
        assert!(!left.exists(), "a dead process's temporary is removed");
        assert!(live.exists(), "a running process's temporary is kept");
        assert!(other.exists(), "a name that is not ferry_durable's is kept");
    }
}
