//! Committing a directory tree: walk, chunk, hash, compress what is new, write trees, sign,
//! publish.
//!
//! The walk records every entry's `lstat`; files are then chunked in parallel (rayon, all
//! cores; a large file's chunks are also hashed and compressed in parallel, in bounded
//! batches, so memory stays flat on multi-GiB files). Only chunks the repository lacks are
//! compressed and written. Before anything becomes visible every path is `lstat`ed again: a
//! tree that changed while it was being read is refused and nothing is committed (chunks
//! already written stay as unreferenced data, invisible to every reader).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use ferry_delta::Chunker;
use ferry_store::{ChunkRef, Commit, Entry, EntryKind, Id, Meta, Repository, SecretKey, Tree, Version, Xattr};
use rayon::prelude::*;

/// What to commit and how to describe it.
#[derive(Debug)]
pub struct CommitRequest<'a> {
    pub tree: PathBuf,
    pub branch: String,
    pub version: Version,
    pub subject: String,
    pub body: String,
    pub metadata: BTreeMap<String, String>,
    pub hardware: Vec<String>,
    pub timestamp: Option<i64>,
    pub key: &'a SecretKey,
    /// Commit a version lower than the branch head's (a deliberate downgrade).
    pub allow_downgrade: bool,
}

impl<'a> CommitRequest<'a> {
    /// A request with no subject, body, metadata, hardware list or timestamp.
    pub fn new(tree: impl Into<PathBuf>, branch: &str, version: Version, key: &'a SecretKey) -> CommitRequest<'a> {
        CommitRequest {
            tree: tree.into(),
            branch: branch.to_string(),
            version,
            subject: String::new(),
            body: String::new(),
            metadata: BTreeMap::new(),
            hardware: Vec::new(),
            timestamp: None,
            key,
            allow_downgrade: false,
        }
    }
}

/// Figures about one commit, printed by `ferry commit`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CommitSummary {
    pub commit: String,
    pub branch: String,
    /// True when the branch already pointed at a commit with this exact content: nothing was
    /// written and the existing commit id is returned (CI re-runs are idempotent).
    pub unchanged: bool,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub new_compressed_bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// Reports progress in bytes read; `set_total` once the walk knows the size.
pub trait Progress: Sync {
    fn set_total(&self, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
}

/// A progress sink that shows nothing.
#[derive(Debug)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// The `lstat` fields that change whenever an entry changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    dev: u64,
    size: u64,
    mode: u32,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            ino: m.ino(),
            dev: m.dev(),
            size: m.size(),
            mode: m.mode(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

enum Node {
    Dir { meta: Meta, children: Vec<(Vec<u8>, Node)> },
    File { meta: Meta, index: usize },
    Symlink { uid: u32, gid: u32, xattrs: Vec<Xattr>, target: Vec<u8> },
}

struct FileJob {
    path: PathBuf,
    stamp: Stamp,
}

struct Walk {
    files: Vec<FileJob>,
    /// Every walked path with its stamp, for the final re-check.
    stamps: Vec<(PathBuf, Stamp)>,
    directories: u64,
    symlinks: u64,
    bytes: u64,
}

fn read_xattrs(path: &Path) -> Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc_enotsup()) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing extended attributes of {}", path.display())),
    };
    let mut out = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)
            .with_context(|| format!("reading extended attribute {name:?} of {}", path.display()))?
        {
            out.push(Xattr { name: name.as_encoded_bytes().to_vec(), value });
        }
    }
    out.sort();
    Ok(out)
}

fn libc_enotsup() -> i32 {
    nix::errno::Errno::EOPNOTSUPP as i32
}

fn meta_of(path: &Path, m: &fs::Metadata) -> Result<Meta> {
    Ok(Meta { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), xattrs: read_xattrs(path)? })
}

fn walk(path: &Path, m: &fs::Metadata, w: &mut Walk, depth: usize) -> Result<Node> {
    if depth > ferry_store::object::MAX_DEPTH {
        bail!("{} is nested deeper than {} directories", path.display(), ferry_store::object::MAX_DEPTH);
    }
    let ft = m.file_type();
    w.stamps.push((path.to_path_buf(), Stamp::of(m)));
    if ft.is_dir() {
        w.directories += 1;
        let mut children = Vec::new();
        let rd = fs::read_dir(path).with_context(|| format!("reading directory {}", path.display()))?;
        for item in rd {
            let item = item.with_context(|| format!("reading directory {}", path.display()))?;
            let child = item.path();
            let cm = fs::symlink_metadata(&child).with_context(|| format!("reading {}", child.display()))?;
            children.push((item.file_name().into_encoded_bytes(), walk(&child, &cm, w, depth + 1)?));
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Node::Dir { meta: meta_of(path, m)?, children })
    } else if ft.is_file() {
        w.bytes += m.size();
        w.files.push(FileJob { path: path.to_path_buf(), stamp: Stamp::of(m) });
        Ok(Node::File { meta: meta_of(path, m)?, index: w.files.len() - 1 })
    } else if ft.is_symlink() {
        w.symlinks += 1;
        let target = fs::read_link(path).with_context(|| format!("reading symlink {}", path.display()))?;
        Ok(Node::Symlink {
            uid: m.uid(),
            gid: m.gid(),
            xattrs: read_xattrs(path)?,
            target: target.into_os_string().into_encoded_bytes(),
        })
    } else {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_block_device() || ft.is_char_device() {
            "a device node"
        } else if ft.is_fifo() {
            "a fifo"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "of an unknown file type"
        };
        bail!("{} is {what}; ferry commits only regular files, directories and symlinks", path.display())
    }
}

/// Chunks stored or being stored by this commit, so two files sharing a new chunk compress
/// it once, and counters for the summary.
struct Sink<'r> {
    repo: &'r Repository,
    written: Mutex<HashSet<Id>>,
    new_chunks: AtomicU64,
    new_bytes: AtomicU64,
    new_compressed: AtomicU64,
}

impl Sink<'_> {
    fn store(&self, bytes: &[u8]) -> Result<ChunkRef> {
        let id = Id::of(bytes);
        let len = bytes.len() as u32;
        if self.repo.has_chunk(&id)? {
            return Ok(ChunkRef { id, len });
        }
        if !self.written.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return Ok(ChunkRef { id, len });
        }
        let compressed = self.repo.compress_chunk(bytes)?;
        self.repo.put_chunk(&id, len, &compressed)?;
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.new_bytes.fetch_add(u64::from(len), Ordering::Relaxed);
        self.new_compressed.fetch_add(compressed.len() as u64, Ordering::Relaxed);
        Ok(ChunkRef { id, len })
    }
}

/// Bytes of one batch of chunks processed in parallel; bounds memory per file.
const BATCH_BYTES: usize = 8 << 20;

fn changed(path: &Path) -> anyhow::Error {
    anyhow!("{} changed while it was being committed; nothing was committed", path.display())
}

fn chunk_file(job: &FileJob, chunker: &Chunker, sink: &Sink<'_>, progress: &dyn Progress) -> Result<Vec<ChunkRef>> {
    let path = &job.path;
    let file = File::options()
        .read(true)
        // O_NONBLOCK: a file swapped for a fifo after the walk must not hang the open.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    if Stamp::of(&file.metadata().with_context(|| format!("reading {}", path.display()))?) != job.stamp {
        return Err(changed(path));
    }
    let mut refs = Vec::new();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0;
    let mut total = 0u64;
    let flush = |batch: &mut Vec<Vec<u8>>, refs: &mut Vec<ChunkRef>| -> Result<()> {
        let stored: Vec<ChunkRef> = batch.par_iter().map(|c| sink.store(c)).collect::<Result<_>>()?;
        refs.extend(stored);
        batch.clear();
        Ok(())
    };
    let counted = CountingReader { inner: &file, progress };
    for chunk in chunker.chunks(counted) {
        let chunk = chunk.with_context(|| format!("reading {}", path.display()))?;
        total += chunk.len() as u64;
        batch_bytes += chunk.len();
        batch.push(chunk);
        if batch_bytes >= BATCH_BYTES {
            flush(&mut batch, &mut refs)?;
            batch_bytes = 0;
        }
    }
    flush(&mut batch, &mut refs)?;
    let after = Stamp::of(&file.metadata().with_context(|| format!("reading {}", path.display()))?);
    if after != job.stamp || total != job.stamp.size {
        return Err(changed(path));
    }
    Ok(refs)
}

struct CountingReader<'a> {
    inner: &'a File,
    progress: &'a dyn Progress,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

fn store_tree(repo: &Repository, node: Node, files: &mut [Option<(u64, Vec<ChunkRef>)>]) -> Result<Id> {
    let Node::Dir { meta, children } = node else {
        bail!("the committed tree's root must be a directory");
    };
    let mut entries = Vec::with_capacity(children.len());
    for (name, child) in children {
        let kind = match child {
            Node::Dir { .. } => EntryKind::Dir { tree: store_tree(repo, child, files)? },
            Node::File { meta, index } => {
                let (size, chunks) = files
                    .get_mut(index)
                    .and_then(Option::take)
                    .ok_or_else(|| anyhow!("internal error: file {index} chunked twice"))?;
                EntryKind::File { meta, size, chunks }
            }
            Node::Symlink { uid, gid, xattrs, target } => EntryKind::Symlink { uid, gid, xattrs, target },
        };
        entries.push(Entry { name, kind });
    }
    let tree = Tree { meta, entries };
    Ok(repo.put_tree(&tree)?)
}

/// Commits `req.tree` onto `req.branch`, signed with `req.key`.
pub fn commit_tree(repo: &Repository, req: &CommitRequest<'_>, progress: &dyn Progress) -> Result<CommitSummary> {
    let started = Instant::now();
    ferry_store::repo::check_branch_name(&req.branch)?;
    let chunker = Chunker::new(repo.chunk_params()).map_err(|e| anyhow!("{}: {e}", repo.path().display()))?;
    // The head the new commit builds on; publishing fails if another writer moves it first.
    let parent = repo.branch(&req.branch)?;
    if let Some(head) = parent {
        let was = repo.read_commit(&head)?.version;
        if was.compare(&req.version) == Some(std::cmp::Ordering::Greater) && !req.allow_downgrade {
            bail!(
                "version {} is lower than {}, the version of {}'s head ({}): devices following the branch do not take a lower version. Give a higher version, or pass --allow-downgrade to commit it anyway",
                req.version,
                was,
                req.branch,
                head.short()
            );
        }
    }
    // A version names one commit (`ferryd deploy 1.4.0` and `ferry promote 1.4.0` must find
    // one thing): a new commit under a version another commit has is refused.
    let same_version = repo.commits_with_version(&req.version)?;

    let root = &req.tree;
    let rm = fs::symlink_metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if !rm.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut w = Walk { files: Vec::new(), stamps: Vec::new(), directories: 0, symlinks: 0, bytes: 0 };
    let node = walk(root, &rm, &mut w, 0)?;
    progress.set_total(w.bytes);

    let sink = Sink {
        repo,
        written: Mutex::new(HashSet::new()),
        new_chunks: AtomicU64::new(0),
        new_bytes: AtomicU64::new(0),
        new_compressed: AtomicU64::new(0),
    };
    let chunked: Vec<Vec<ChunkRef>> =
        w.files.par_iter().map(|job| chunk_file(job, &chunker, &sink, progress)).collect::<Result<_>>()?;
    let chunks: u64 = chunked.iter().map(|c| c.len() as u64).sum();
    let mut files: Vec<Option<(u64, Vec<ChunkRef>)>> =
        w.files.iter().zip(chunked).map(|(job, refs)| Some((job.stamp.size, refs))).collect();

    // Nothing may have changed since the walk: not a file, not a directory's entry list.
    for (path, stamp) in &w.stamps {
        match fs::symlink_metadata(path) {
            Ok(m) if Stamp::of(&m) == *stamp => {}
            _ => return Err(changed(path)),
        }
    }

    let root_tree = store_tree(repo, node, &mut files)?;
    let commit = Commit {
        root: root_tree,
        parent,
        version: req.version.clone(),
        timestamp: req.timestamp,
        subject: req.subject.clone(),
        body: req.body.clone(),
        metadata: req.metadata.clone(),
        hardware: req.hardware.clone(),
    };
    let mut summary = CommitSummary {
        branch: req.branch.clone(),
        files: w.files.len() as u64,
        directories: w.directories,
        symlinks: w.symlinks,
        bytes: w.bytes,
        chunks,
        new_chunks: sink.new_chunks.load(Ordering::Relaxed),
        new_bytes: sink.new_bytes.load(Ordering::Relaxed),
        new_compressed_bytes: sink.new_compressed.load(Ordering::Relaxed),
        ..Default::default()
    };
    let head = parent.map(|p| repo.read_commit(&p).map(|c| (p, c))).transpose()?;
    let id = match head {
        Some((head_id, head)) if head.same_content(&commit) => {
            summary.unchanged = true;
            // After a key rotation the same content is re-signed by the new key, so devices
            // that trust only the new key accept the commit.
            let public = req.key.public();
            let signed = repo
                .signatures(&head_id)?
                .iter()
                .any(|s| s.key == public.to_bytes() && public.verify_commit(&head_id, &s.signature));
            if !signed {
                repo.add_signature(&head_id, &public, &req.key.sign_commit(&head_id))?;
            }
            head_id
        }
        _ => {
            let id = commit.id()?;
            if let Some(other) = same_version.iter().find(|other| **other != id) {
                bail!(
                    "version {} is already commit {}: give this build a new version (builds of one release for several hardware revisions: 1.4.0+rev-a, 1.4.0+rev-b). Its chunks are stored; nothing else changed",
                    req.version,
                    other.short()
                );
            }
            let signature = req.key.sign_commit(&id);
            if !req.key.public().verify_commit(&id, &signature) {
                bail!("signing key produced a signature that does not verify");
            }
            repo.publish_commit(&commit, &[(req.key.public(), signature)], &req.branch, parent)?
        }
    };
    summary.commit = id.to_hex();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.mb_per_s = if summary.seconds > 0.0 { w.bytes as f64 / 1e6 / summary.seconds } else { 0.0 };
    Ok(summary)
}
