//! Checking a commit out into a directory: the exact tree, every chunk verified as it is read.
//!
//! The tree is written into a temporary sibling of the destination and renamed into place
//! once complete and synced, so an error or a crash never leaves a half-written tree at the
//! destination. Ownership is restored only when running as root (others cannot chown).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_store::{ChunkRef, EntryKind, Id, Meta, Repository, Xattr};
use rayon::prelude::*;

use crate::import::Progress;

/// Figures about one checkout.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckoutSummary {
    pub commit: String,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

struct FileOut {
    path: PathBuf,
    meta: Meta,
    chunks: Vec<ChunkRef>,
}

struct Plan {
    dirs: Vec<(PathBuf, Meta)>,
    files: Vec<FileOut>,
    symlinks: u64,
    bytes: u64,
}

fn set_xattrs(path: &Path, xattrs: &[Xattr]) -> Result<()> {
    for x in xattrs {
        xattr::set(path, os_name(&x.name), &x.value).with_context(|| {
            format!("setting extended attribute {:?} on {}", String::from_utf8_lossy(&x.name), path.display())
        })?;
    }
    Ok(())
}

fn os_name(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates directories and symlinks and lists the files to write.
fn lay_out(
    repo: &Repository,
    tree_id: &Id,
    dir: &Path,
    meta: Option<Meta>,
    plan: &mut Plan,
    depth: usize,
) -> Result<()> {
    if depth > ferry_store::object::MAX_DEPTH {
        return Err(ferry_store::StoreError::TooDeep { tree: *tree_id }.into());
    }
    let tree = repo.read_tree(tree_id).with_context(|| format!("reading tree for {}", dir.display()))?;
    plan.dirs.push((dir.to_path_buf(), meta.unwrap_or_else(|| tree.meta.clone())));
    for e in tree.entries {
        let path = dir.join(os_name(&e.name));
        match e.kind {
            EntryKind::Dir { tree } => {
                fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
                lay_out(repo, &tree, &path, None, plan, depth + 1)?;
            }
            EntryKind::File { meta, size, chunks } => {
                plan.bytes += size;
                plan.files.push(FileOut { path, meta, chunks });
            }
            EntryKind::Symlink { uid, gid, xattrs, target } => {
                symlink(os_name(&target), &path).with_context(|| format!("creating symlink {}", path.display()))?;
                if is_root() {
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                        .with_context(|| format!("setting owner of {}", path.display()))?;
                }
                set_xattrs(&path, &xattrs)?;
                plan.symlinks += 1;
            }
        }
    }
    Ok(())
}

fn write_file(repo: &Repository, f: &FileOut, progress: &dyn Progress) -> Result<()> {
    let mut out = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&f.path)
        .with_context(|| format!("creating {}", f.path.display()))?;
    for c in &f.chunks {
        let bytes = repo.read_chunk(&c.id).with_context(|| format!("reading {}", f.path.display()))?;
        if bytes.len() != c.len as usize {
            bail!("{}: chunk {} is {} bytes, the tree says {}", f.path.display(), c.id, bytes.len(), c.len);
        }
        out.write_all(&bytes).with_context(|| format!("writing {}", f.path.display()))?;
        progress.advance(bytes.len() as u64);
    }
    apply_meta(&f.path, &out, &f.meta)
}

fn apply_meta(path: &Path, file: &File, meta: &Meta) -> Result<()> {
    if is_root() {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))
            .with_context(|| format!("setting owner of {}", path.display()))?;
    }
    set_xattrs(path, &meta.xattrs)?;
    // After chown, which clears set-id bits.
    file.set_permissions(fs::Permissions::from_mode(meta.mode))
        .with_context(|| format!("setting mode of {}", path.display()))
}

/// Checks `rev`'s commit out into `dest`, which must not exist or be an empty directory.
pub fn checkout(repo: &Repository, commit_id: &Id, dest: &Path, progress: &dyn Progress) -> Result<CheckoutSummary> {
    let commit = repo.read_commit(commit_id)?;
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            if fs::read_dir(dest).with_context(|| format!("reading {}", dest.display()))?.next().is_some() {
                bail!("{} is not empty; refusing to check out into it", dest.display());
            }
        }
        Ok(_) => bail!("{} exists and is not a directory", dest.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dest.display())),
    }
    let name = dest.file_name().with_context(|| format!("{} has no final component", dest.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".checkout-{}", std::process::id()));
    let tmp = dest.with_file_name(tmp_name);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = (|| {
        let mut plan = Plan { dirs: Vec::new(), files: Vec::new(), symlinks: 0, bytes: 0 };
        lay_out(repo, &commit.root, &tmp, None, &mut plan, 0)?;
        progress.set_total(plan.bytes);
        plan.files.par_iter().try_for_each(|f| write_file(repo, f, progress))?;
        // Directory metadata last, deepest first, so read-only directories can be filled.
        for (dir, meta) in plan.dirs.iter().rev() {
            let handle = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
            apply_meta(dir, &handle, meta)?;
        }
        let root = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
        nix::unistd::syncfs(&root).with_context(|| format!("syncing {}", tmp.display()))?;
        ferry_durable::rename(&tmp, dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok(CheckoutSummary {
            commit: commit_id.to_hex(),
            files: plan.files.len() as u64,
            directories: plan.dirs.len() as u64,
            symlinks: plan.symlinks,
            bytes: plan.bytes,
        })
    })();
    if result.is_err() {
        // Restore write permission so a partial tree with read-only directories can go.
        let _ = make_writable(&tmp);
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            make_writable(&e.path())?;
        }
    }
    Ok(())
}
