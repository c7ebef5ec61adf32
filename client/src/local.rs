//! The device's own store: the chunk index in one redb file, trees and commits as files,
//! the file objects and staged chunks beside them, and the deployments built from them
//! (paths: [`Layout`]).
//!
//! redb stays behind this type: nothing outside this module sees it. The index is a cache
//! of what the object files hold: a chunk read through it is verified against its id, and a
//! chunk whose object is gone or changed is simply fetched again. Trees and commits are
//! verified against their ids whenever they are read, and one that is damaged is removed
//! and fetched again.
//!
//! Why redb and not RocksDB (which the repository and the fleet use): the device's index is
//! one small table (a 1 GiB tree's is about 5 MiB), and RocksDB's C++ was half of a stripped
//! `ferryd` (about 6 MB of 14 on x86-64, with libstdc++), the whole of its cross-compilation
//! time for each ARM target, and a C++ toolchain in every board's build. redb is pure Rust
//! and crash-safe (copy-on-write pages with checksums; a commit is atomic). It admits one
//! process, so trees and commits are plain files that `ferryd status` reads while the
//! daemon runs.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::layout::Layout;

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::object::{object_kind, ObjectKind};
use ferry_store::{Commit, Id, Meta, ReadTrees, Tree};
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
/// Chunk id → file object id ‖ u64 offset ‖ u32 length (little-endian).
const INDEX: Table = TableDefinition::new("chunk_index");
/// redb's page cache. A device is small; the OS page cache keeps the file warm anyway.
const CACHE_BYTES: usize = 4 << 20;

/// Where a chunk's bytes are on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub object: Id,
    pub offset: u64,
    pub len: u32,
}

pub struct Local {
    pub layout: Layout,
    /// The chunk index; `None` when opened to read only (`status`), which needs no chunks.
    db: Option<Database>,
    /// The file objects an update builds as their chunks arrive ([`Local::begin_direct`]).
    direct: std::sync::Mutex<Option<Direct>>,
}

/// File objects built in place: each object the update lacks is `objects/<id>.part`, and a
/// chunk, once verified, is written straight to every place it has in them, instead of being
/// staged as a file of its own and read back (what cost a fresh install a file per chunk and
/// a second decompression). A `.part` file outlives an interrupted update; its chunks are
/// verified again before they count ([`Local::begin_direct`]): a power cut may have lost any
/// write since the last `syncfs`.
#[derive(Debug, Default)]
struct Direct {
    /// Where each chunk goes: (object, offset).
    places: HashMap<Id, Vec<(Id, u64)>>,
    /// Chunks written (this run, verified as they arrived) or found intact in a `.part` file.
    written: HashSet<Id>,
    /// The object file written last, kept open (chunks of one file tend to arrive together).
    open: Option<(Id, fs::File)>,
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

/// The largest tree or commit the agent accepts (`update::trees`) and so stores; a stored file
/// longer than this is damaged.
pub(crate) const MAX_OBJECT_LEN: u32 = 64 << 20;

impl Local {
    /// Opens (creating if needed) the state directory, and removes what an interrupted run
    /// left half-done: incomplete deployments and temporary files. Staging is kept.
    pub fn open(root: &Path) -> Result<Local> {
        let layout = Layout::new(root);
        for dir in [layout.objects(), layout.metadata(), layout.staging(), layout.deploy()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let db_path = layout.db();
        // Every page's checksum is verified at open (a few MiB read), so a damaged file (an
        // SD card's bit rot, a stray write) is an error here rather than a panic later. The
        // index is a cache of what the object files hold: a damaged one is started afresh,
        // and the next update downloads what the new one lacks.
        let open =
            || redb::Builder::new().set_cache_size(CACHE_BYTES).set_check_integrity_on_open(true).create(&db_path);
        let db = match open() {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => bail!("{} is in use by another ferryd", db_path.display()),
            Err(e) => {
                tracing::warn!(path = %db_path.display(), error = %e, "the chunk index is damaged: starting a new one");
                fs::remove_file(&db_path).with_context(|| format!("removing the damaged {}", db_path.display()))?;
                open().map_err(|e| anyhow!("opening {}: {e}", db_path.display()))?
            }
        };
        let txn = db.begin_write()?;
        txn.open_table(INDEX)?;
        txn.commit().with_context(|| format!("creating the index in {}", db_path.display()))?;
        let db = Some(db);
        // A state directory from before redb: its RocksDB index and trees are no longer read.
        let old = layout.root().join("db");
        if old.join("CURRENT").exists() {
            tracing::warn!(
                path = %old.display(),
                "a chunk index from an earlier ferryd (RocksDB) is no longer read: the next update downloads what the new index lacks; remove the directory to free its space"
            );
        }
        let local = Local { layout, db, direct: Default::default() };
        local.recover()?;
        Ok(local)
    }

    /// Opens the state directory for reading trees and commits only (no lock, no recovery,
    /// no chunk index), e.g. for `status` while the daemon runs. `None` if no update has run
    /// yet.
    pub fn open_read_only(root: &Path) -> Result<Option<Local>> {
        let layout = Layout::new(root);
        if !layout.metadata().exists() {
            return Ok(None);
        }
        Ok(Some(Local { layout, db: None, direct: Default::default() }))
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
            (self.layout.metadata(), &|n: &str| n.ends_with(".tmp")),
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

    /// One atomic change to the index. Not durable by itself: [`Local::sync`] makes every
    /// change so far durable (a power cut before it loses them, never half of one).
    fn write(&self, what: &str, change: impl FnOnce(&WriteTransaction) -> Result<()>) -> Result<()> {
        let Some(db) = &self.db else { bail!("{what}: the device store is open to read only") };
        let mut txn = db.begin_write().with_context(|| what.to_string())?;
        txn.set_durability(Durability::None).with_context(|| what.to_string())?;
        change(&txn).with_context(|| what.to_string())?;
        txn.commit().with_context(|| what.to_string())
    }

    pub fn object_path(&self, id: &Id) -> PathBuf {
        self.layout.object(id)
    }

    pub fn staging_path(&self, id: &Id) -> PathBuf {
        self.layout.staged(id)
    }

    /// Where the object `id` is built ([`Direct`]).
    pub fn part_path(&self, id: &Id) -> PathBuf {
        self.object_path(id).with_extension("part")
    }

    /// Starts building `objects` (each: id, chunks in order) in place, replacing any earlier
    /// plan. The chunks of an existing `.part` file are read and verified: a chunk counts as
    /// written when every place it has holds it intact. Returns how many chunks that is.
    pub fn begin_direct<'a>(
        &self,
        objects: impl IntoIterator<Item = (Id, &'a [ferry_store::ChunkRef])>,
    ) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut d = Direct::default();
        let mut intact: HashSet<(Id, u64)> = HashSet::new();
        let mut buf = Vec::new();
        for (object, chunks) in objects {
            // Read a chunk at a time: a large file is never held whole.
            let part = fs::File::open(self.part_path(&object)).ok();
            let mut offset = 0u64;
            for c in chunks {
                d.places.entry(c.id).or_default().push((object, offset));
                if let Some(f) = &part {
                    buf.resize(c.len as usize, 0);
                    if f.read_exact_at(&mut buf, offset).is_ok() && Id::of(&buf) == c.id {
                        intact.insert((object, offset));
                    }
                }
                offset += u64::from(c.len);
            }
        }
        if !intact.is_empty() {
            for (id, places) in &d.places {
                if places.iter().all(|p| intact.contains(p)) {
                    d.written.insert(*id);
                }
            }
        }
        let found = d.written.len() as u64;
        *self.direct.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
        Ok(found)
    }

    /// Ends building in place (closing the file kept open).
    pub fn end_direct(&self) {
        *self.direct.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Writes a verified chunk to every place it has in the objects being built; false when
    /// it has none (the caller stages it).
    pub fn write_direct(&self, id: &Id, bytes: &[u8]) -> Result<bool> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let mut guard = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = guard.as_mut() else { return Ok(false) };
        let Some(places) = d.places.get(id).cloned() else { return Ok(false) };
        for (object, offset) in places {
            if d.open.as_ref().is_none_or(|(o, _)| *o != object) {
                let path = self.part_path(&object);
                let f = fs::File::options()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                d.open = Some((object, f));
            }
            if let Some((_, f)) = &d.open {
                f.write_all_at(bytes, offset)
                    .with_context(|| format!("writing {}", self.part_path(&object).display()))?;
            }
        }
        d.written.insert(*id);
        Ok(true)
    }

    /// Whether `id` was written in place or staged (not read or verified again).
    pub fn is_staged(&self, id: &Id) -> bool {
        let written =
            self.direct.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|d| d.written.contains(id));
        written || self.staging_path(id).exists()
    }

    /// Whether `id` was written in place (so its regions of `.part` files hold it).
    pub fn written_in_place(&self, id: &Id) -> bool {
        self.direct.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|d| d.written.contains(id))
    }

    pub fn deploy_dir(&self) -> PathBuf {
        self.layout.deploy()
    }

    // ---- trees and commits ----------------------------------------------------------

    fn metadata_path(&self, id: &Id) -> PathBuf {
        self.layout.metadata().join(id.to_string())
    }

    /// Stores a tree or commit whose bytes the caller has verified against `id`: written to
    /// a temporary and renamed, not synced ([`Local::sync`] does, for all of them at once).
    pub fn put_object(&self, id: &Id, bytes: &[u8]) -> Result<()> {
        if Id::of(bytes) != *id {
            bail!("object {id}: bytes do not match the id");
        }
        if self.db.is_none() {
            bail!("storing object {id}: the device store is open to read only");
        }
        let path = self.metadata_path(id);
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes).with_context(|| format!("storing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("storing {}", path.display()))
    }

    fn object_bytes(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        let path = self.metadata_path(id);
        // Read at most one byte more than any object the agent stores: a longer file (or
        // something that is not a file) is damaged, and is not read into memory whole.
        let read = || -> std::io::Result<Option<Vec<u8>>> {
            let f = fs::File::open(&path)?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, u64::from(MAX_OBJECT_LEN) + 1), &mut bytes)?;
            Ok(Some(bytes).filter(|b| b.len() <= MAX_OBJECT_LEN as usize))
        };
        let bytes = match read() {
            Ok(b) => b.filter(|b| Id::of(b) == *id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let Some(bytes) = bytes else {
            // Damaged on the device (a power cut before it was synced): forget it so it is
            // fetched again. A reader (`status`) leaves it to the agent.
            if self.db.is_some() {
                tracing::warn!(object = %id, "discarding a damaged tree or commit");
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            return Ok(None);
        };
        Ok(Some(bytes))
    }

    /// A stored tree's canonical bytes, verified against its id.
    pub fn tree_bytes(&self, id: &Id) -> Result<Option<Vec<u8>>> {
        Ok(self.object_bytes(id)?.filter(|b| object_kind(b) == Some(ObjectKind::Tree)))
    }

    pub fn has_object(&self, id: &Id) -> Result<bool> {
        Ok(self.metadata_path(id).exists())
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
        let dir = self.layout.metadata();
        for e in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name();
            let kept = name.to_str().and_then(|n| n.parse::<Id>().ok()).is_some_and(|id| keep.contains(&id));
            if !kept {
                fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
        Ok(())
    }

    // ---- chunks -----------------------------------------------------------------------

    pub fn location(&self, chunk: &Id) -> Result<Option<Location>> {
        let Some(db) = &self.db else { return Ok(None) };
        let txn = db.begin_read().context("reading the chunk index")?;
        let Some(v) = txn.open_table(INDEX)?.get(chunk.as_bytes().as_slice())?.map(|v| v.value().to_vec()) else {
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
        self.write("updating the chunk index", |txn| {
            let mut table = txn.open_table(INDEX)?;
            let mut offset = 0u64;
            let mut v = [0u8; 44];
            v[..32].copy_from_slice(object.as_bytes());
            for c in chunks {
                v[32..40].copy_from_slice(&offset.to_le_bytes());
                v[40..44].copy_from_slice(&c.len.to_le_bytes());
                table.insert(c.id.as_bytes().as_slice(), v.as_slice())?;
                offset += u64::from(c.len);
            }
            Ok(())
        })
    }

    pub fn forget_chunk(&self, chunk: &Id) -> Result<()> {
        if self.db.is_none() {
            return Ok(());
        }
        self.write("updating the chunk index", |txn| {
            txn.open_table(INDEX)?.remove(chunk.as_bytes().as_slice())?;
            Ok(())
        })
    }

    /// True if the device holds `chunk`'s bytes (in an object or in staging). Cheap: it does
    /// not read or verify them; [`Local::read_chunk`] does.
    pub fn has_chunk(&self, chunk: &Id) -> Result<bool> {
        if self.is_staged(chunk) {
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
        if self.written_in_place(chunk) {
            return Ok(true);
        }
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
        self.write("pruning the chunk index", |txn| {
            txn.open_table(INDEX)?
                .retain(|_, v| v.get(..32).and_then(Id::from_slice).is_some_and(|o| self.object_path(&o).exists()))?;
            Ok(())
        })
    }

    /// Makes every write so far durable: the trees and commits written (one `syncfs` of the
    /// state directory's file system), then the index (an empty commit that redb writes
    /// through).
    pub fn sync(&self) -> Result<()> {
        let Some(db) = &self.db else { return Ok(()) };
        let dir = fs::File::open(self.layout.metadata())?;
        nix::unistd::syncfs(&dir).context("syncing the device's trees and commits")?;
        let mut txn = db.begin_write().context("syncing the chunk index")?;
        txn.set_durability(Durability::Immediate).context("syncing the chunk index")?;
        txn.commit().context("syncing the chunk index")
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

    #[test]
    fn a_second_agent_is_refused_and_a_reader_sees_what_the_agent_stored() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Local::open(dir.path()).unwrap();
        let bytes = b"not a tree, but verified against its id all the same";
        let id = Id::of(bytes);
        agent.put_object(&id, bytes).unwrap();
        let e = Local::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another ferryd"), "{e}");
        let reader = Local::open_read_only(dir.path()).unwrap().unwrap();
        assert!(reader.has_object(&id).unwrap());
        assert!(reader.put_object(&Id::of(b"y"), b"y").unwrap_err().to_string().contains("open to read only"));
        assert!(reader.index_object(&id, &[]).unwrap_err().to_string().contains("open to read only"));
    }

    #[test]
    fn a_damaged_tree_or_commit_is_discarded_so_it_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let local = Local::open(dir.path()).unwrap();
        let bytes = b"some object";
        let id = Id::of(bytes);
        local.put_object(&id, bytes).unwrap();
        assert_eq!(local.object_bytes(&id).unwrap().as_deref(), Some(&bytes[..]));
        // A power cut before the sync left zeros where the bytes were.
        let path = local.layout.metadata().join(id.to_string());
        fs::write(&path, [0u8; 11]).unwrap();
        assert_eq!(local.object_bytes(&id).unwrap(), None);
        assert!(!path.exists(), "the damaged file is removed");
        // Something without end in its place (a damaged file system): read only up to the
        // limit (without it this test never ends), and removed.
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert_eq!(local.object_bytes(&id).unwrap(), None);
        assert!(fs::symlink_metadata(&path).is_err(), "the endless file is removed");
        assert!(local.put_object(&Id::of(b"other"), bytes).is_err(), "bytes that do not match the id are refused");
    }

    #[test]
    fn the_index_survives_a_reopen_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let object = Id::of(b"object");
        let chunks =
            [ferry_store::ChunkRef { id: Id::of(b"a"), len: 10 }, ferry_store::ChunkRef { id: Id::of(b"b"), len: 7 }];
        {
            let local = Local::open(dir.path()).unwrap();
            local.index_object(&object, &chunks).unwrap();
            local.sync().unwrap();
        }
        let local = Local::open(dir.path()).unwrap();
        assert_eq!(local.location(&chunks[1].id).unwrap(), Some(Location { object, offset: 10, len: 7 }));
        local.forget_chunk(&chunks[1].id).unwrap();
        assert_eq!(local.location(&chunks[1].id).unwrap(), None);
        // Its object file is gone: pruning forgets the other chunk too.
        local.prune_index().unwrap();
        assert_eq!(local.location(&chunks[0].id).unwrap(), None);
    }

    #[test]
    fn a_damaged_index_is_started_afresh_and_its_chunks_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let object = Id::of(b"object");
        let chunk = ferry_store::ChunkRef { id: Id::of(b"a"), len: 10 };
        {
            let local = Local::open(dir.path()).unwrap();
            local.index_object(&object, &[chunk]).unwrap();
            local.sync().unwrap();
        }
        // Garbage over the file's pages, as bit rot or a stray write would leave.
        let path = Layout::new(dir.path()).db();
        let mut bytes = fs::read(&path).unwrap();
        for b in bytes.iter_mut().skip(512) {
            *b ^= 0x5a;
        }
        fs::write(&path, &bytes).unwrap();
        let local = Local::open(dir.path()).unwrap();
        assert_eq!(local.location(&chunk.id).unwrap(), None, "a new, empty index");
        local.index_object(&object, &[chunk]).unwrap();
        assert!(local.location(&chunk.id).unwrap().is_some(), "and it works");
        // A file that is not a database at all is treated the same way.
        drop(local);
        fs::write(&path, b"not a database").unwrap();
        assert_eq!(Local::open(dir.path()).unwrap().location(&chunk.id).unwrap(), None);
    }
}
