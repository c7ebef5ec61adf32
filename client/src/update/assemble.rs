//! Building a deployment: file objects from verified chunks, hardlinked into
//! `deploy/<id>.tmp-*`, synced and renamed into place; and garbage collection.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use ferry_store::{Id, Meta};

use crate::crash;
use crate::local::{make_writable, Local};

use super::plan::{os, FilePlan, Plan};

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub(crate) fn apply_meta(path: &Path, file: &fs::File, meta: &Meta) -> Result<()> {
    if is_root() {
        std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid))
            .with_context(|| format!("setting owner of {}", path.display()))?;
    }
    for x in &meta.xattrs {
        xattr::set(path, os(&x.name), &x.value).with_context(|| format!("setting xattrs on {}", path.display()))?;
    }
    file.set_permissions(fs::Permissions::from_mode(meta.mode))
        .with_context(|| format!("setting mode of {}", path.display()))
}

/// Completes a file object in `objects/<id>.part`, not synced (the caller makes every
/// object of the update durable in one `syncfs` before any is renamed into place): the
/// chunks written there as they arrived (`Local::write_direct`) stay, the others are read
/// from the device's own chunks, each verified. A chunk missing or damaged on the device is
/// forgotten and reported, so the next attempt downloads it.
fn write_object(local: &Local, f: &FilePlan) -> Result<()> {
    crate::notify::alive();
    use std::os::unix::fs::FileExt;
    let part = local.part_path(&f.object);
    let out = fs::File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&part)
        .with_context(|| format!("creating {}", part.display()))?;
    let mut offset = 0u64;
    for c in &f.chunks {
        if !local.written_in_place(&c.id) {
            let Some(bytes) = local.read_chunk(&c.id, c.len)? else {
                bail!(
                    "chunk {} of {} is missing or damaged on the device; it will be downloaded again",
                    c.id,
                    f.path.display()
                );
            };
            out.write_all_at(&bytes, offset).with_context(|| format!("writing {}", part.display()))?;
        }
        offset += u64::from(c.len);
    }
    out.set_len(offset).with_context(|| format!("writing {}", part.display()))?;
    apply_meta(&part, &out, &f.meta)
}

/// Builds the file objects `todo`: each completed under `.part` in parallel, then all made
/// durable by one `syncfs` (where an fsync per object costs a disk flush per file), then
/// each renamed into place and indexed. A crash before the renames leaves `.part` files,
/// whose chunks the next attempt verifies before it counts them; after it, an object under
/// its final name is whole.
/// Its name is made durable by the deployment's `syncfs`, before anything links to it.
fn build_objects(local: &Local, todo: &[&FilePlan]) -> Result<()> {
    use rayon::prelude::*;
    if todo.is_empty() {
        return Ok(());
    }
    // Opened before the writes: since Linux 5.8, syncfs on it reports a write-back error of
    // any of them (older kernels report none; the objects are then checked where chunks are
    // read from them, and by `ferryd fsck`).
    let objects = fs::File::open(local.layout.objects()).context("opening the objects directory")?;
    todo.par_iter().try_for_each(|f| write_object(local, f))?;
    nix::unistd::syncfs(&objects).context("syncing the new objects")?;
    for f in todo {
        let path = local.object_path(&f.object);
        let part = local.part_path(&f.object);
        fs::rename(&part, &path).with_context(|| format!("renaming {}", part.display()))?;
        local.index_object(&f.object, &f.chunks)?;
        crash::point(crash::Step::ObjectWritten);
    }
    Ok(())
}

/// Builds `deploy/<id>` (if not already complete). Returns (files, files reused).
pub(crate) fn assemble(local: &Local, id: &Id, p: &Plan) -> Result<(u64, u64)> {
    crate::progress::phase(format!("assembling the deployment ({} files)", p.files.len()));
    let final_dir = local.deploy_dir().join(id.to_hex());
    if final_dir.is_dir() {
        return Ok((p.files.len() as u64, p.files.len() as u64));
    }
    let tmp = local.deploy_dir().join(format!("{}.tmp-{}", id.to_hex(), std::process::id()));
    if tmp.exists() {
        make_writable(&tmp);
        fs::remove_dir_all(&tmp)?;
    }
    let mut reused = 0;
    for (rel, _) in &p.dirs {
        let d = tmp.join(rel);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    for l in &p.symlinks {
        let path = tmp.join(&l.path);
        symlink(os(&l.target), &path).with_context(|| format!("creating {}", path.display()))?;
        if is_root() {
            std::os::unix::fs::lchown(&path, Some(l.uid), Some(l.gid))?;
        }
        for x in &l.xattrs {
            xattr::set(&path, os(&x.name), &x.value)?;
        }
    }
    // Objects the device lacks, each built once (two files may share one).
    let mut missing: HashMap<Id, &FilePlan> = HashMap::new();
    for f in &p.files {
        crate::notify::alive();
        if local.object_path(&f.object).exists() {
            reused += 1;
        } else {
            missing.entry(f.object).or_insert(f);
        }
    }
    build_objects(local, &missing.into_values().collect::<Vec<_>>())?;
    local.end_direct();
    for f in &p.files {
        crate::notify::alive();
        let object = local.object_path(&f.object);
        let dest = tmp.join(&f.path);
        fs::hard_link(&object, &dest).with_context(|| format!("linking {} to {}", dest.display(), object.display()))?;
    }
    for (rel, meta) in p.dirs.iter().rev() {
        let d = tmp.join(rel);
        let handle = fs::File::open(&d).with_context(|| format!("opening {}", d.display()))?;
        apply_meta(&d, &handle, meta)?;
    }
    let deploy = fs::File::open(local.deploy_dir())?;
    nix::unistd::syncfs(&deploy).context("syncing the new deployment")?;
    ferry_durable::rename(&tmp, &final_dir).with_context(|| format!("completing {}", final_dir.display()))?;
    crash::point(crash::Step::DeploymentComplete);
    Ok((p.files.len() as u64, reused))
}

/// Removes deployments other than `keep`, objects no deployment links to, staged chunks,
/// index entries of removed objects, and trees and commits of removed deployments.
pub fn collect_garbage(local: &Local, keep: &[Id]) -> Result<()> {
    let keep_names: HashSet<String> = keep.iter().map(|k| k.to_hex()).collect();
    for e in fs::read_dir(local.deploy_dir())? {
        let e = e?;
        if !keep_names.contains(&*e.file_name().to_string_lossy()) {
            crate::notify::alive();
            make_writable(&e.path());
            fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    use std::os::unix::fs::MetadataExt;
    for e in fs::read_dir(local.layout.objects())? {
        let e = e?;
        crate::notify::alive();
        if e.metadata()?.nlink() <= 1 {
            fs::remove_file(e.path())?;
        }
    }
    for e in fs::read_dir(local.layout.staging())? {
        fs::remove_file(e?.path())?;
    }
    local.prune_index()?;
    let mut objects = HashSet::new();
    for id in keep {
        if let Some(c) = local.commit(id)? {
            objects.insert(*id);
            let mut stack = vec![c.root];
            while let Some(t) = stack.pop() {
                if objects.insert(t) {
                    if let Some(tree) = local.tree(&t)? {
                        stack.extend(tree.subtrees());
                    }
                }
            }
        }
    }
    local.retain_objects(&objects)?;
    local.sync()?;
    crash::point(crash::Step::Gc);
    Ok(())
}
