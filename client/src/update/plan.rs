//! What a commit's deployment needs: its directories, symlinks and files (from its trees),
//! the chunks the device lacks, whether they fit, and which travel as patches.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_delta::patch::{self as patch, Patch};
use ferry_store::read::{walk, Walked};
use ferry_store::{ChunkRef, Id, Meta, ReadTrees, Xattr};

use crate::config::Config;
use crate::local::{file_object_id, Local};

use super::Refused;

pub(crate) struct FilePlan {
    pub(crate) path: PathBuf,
    pub(crate) meta: Meta,
    pub(crate) chunks: Vec<ChunkRef>,
    pub(crate) object: Id,
}

pub(crate) struct SymlinkPlan {
    pub(crate) path: PathBuf,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) xattrs: Vec<Xattr>,
    pub(crate) target: Vec<u8>,
}

pub(crate) struct Plan {
    pub(crate) dirs: Vec<(PathBuf, Meta)>,
    pub(crate) symlinks: Vec<SymlinkPlan>,
    pub(crate) files: Vec<FilePlan>,
}

pub(crate) fn os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}

/// The deployment a commit's trees describe, reading them through `trees`: the directories,
/// files and symlinks in the order `store::read::walk` meets them, which is the order
/// `ferry_delta::patch::walk_files` lists files in (what [`plan_fetch`] relies on).
pub(crate) fn plan_with<T: ReadTrees<Error = anyhow::Error> + ?Sized>(root: &Id, trees: &T) -> Result<Plan> {
    let mut p = Plan { dirs: Vec::new(), symlinks: Vec::new(), files: Vec::new() };
    walk(trees, root, |path, walked| {
        let path = PathBuf::from(OsString::from_vec(path.to_vec()));
        match walked {
            Walked::Dir { meta } => p.dirs.push((path, meta)),
            Walked::File { meta, chunks, .. } => {
                let object = file_object_id(&meta, &chunks);
                p.files.push(FilePlan { path, meta, chunks, object });
            }
            Walked::Symlink { uid, gid, xattrs, target } => {
                p.symlinks.push(SymlinkPlan { path, uid, gid, xattrs, target })
            }
        }
        Ok(())
    })?;
    // The lists live through the whole update: give back what doubling over-allocated.
    p.files.shrink_to_fit();
    p.dirs.shrink_to_fit();
    p.symlinks.shrink_to_fit();
    Ok(p)
}

/// What to fetch: patches against files the device holds, and plain chunks.
pub(crate) struct FetchPlan {
    pub(crate) patches: Vec<Patch>,
    pub(crate) plain: Vec<(Id, u32)>,
}

/// Splits `missing` into patches against the current deployment's files (the rule of
/// `ferry_delta::patch::plan_patches`, which the server and `ferry diff` share) and plain
/// chunks. A patch whose reference chunks the device does not hold is fetched plain.
pub(crate) fn plan_fetch(
    config: &Config,
    local: &Local,
    current: Option<Id>,
    new: &Plan,
    missing: &[(Id, u32)],
) -> Result<FetchPlan> {
    let plain_only = || FetchPlan { patches: Vec::new(), plain: missing.to_vec() };
    if !config.patches || missing.is_empty() {
        return Ok(plain_only());
    }
    let Some(old) = current.map(|c| local.commit(&c)).transpose()?.flatten() else { return Ok(plain_only()) };
    let old_files = match patch::walk_files(local, &old.root) {
        Ok(files) => files,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list the current deployment's files; fetching plain chunks");
            return Ok(plain_only());
        }
    };
    let wanted: HashSet<Id> = missing.iter().map(|(id, _)| *id).collect();
    // The new commit's files in walk order: `plan_with` and `walk_files` are the same walk.
    use std::os::unix::ffi::OsStrExt;
    let new_files = new.files.iter().map(|f| (f.path.as_os_str().as_bytes(), f.chunks.as_slice()));
    let planned = patch::plan_patches_by_ref(&old_files, new_files, |id| wanted.contains(id));
    let mut out = FetchPlan { patches: Vec::new(), plain: planned.plain.iter().map(|c| (c.id, c.len)).collect() };
    for p in planned.patches {
        let mut held = true;
        for c in &p.reference {
            held &= local.has_chunk(&c.id)?;
        }
        if held {
            out.patches.push(p);
        } else {
            out.plain.extend(p.target.iter().map(|c| (c.id, c.len)));
        }
    }
    Ok(out)
}

/// The chunks the new deployment needs that the device holds nowhere, neither in a file
/// object it already has nor intact in staging (a damaged staged chunk is removed here, so
/// it is fetched again), each once, in the order the files name them.
pub(crate) fn missing_chunks(local: &Local, p: &Plan) -> Result<Vec<(Id, u32)>> {
    let mut seen: HashSet<Id> = HashSet::new();
    let mut missing = Vec::new();
    for f in p.files.iter().filter(|f| !local.object_path(&f.object).exists()) {
        for c in &f.chunks {
            if !seen.contains(&c.id) && !local.has_intact_chunk(&c.id, c.len)? {
                seen.insert(c.id);
                missing.push((c.id, c.len));
            }
        }
    }
    Ok(missing)
}

/// How many distinct chunks the deployment's files hold.
pub(crate) fn distinct_chunks(p: &Plan) -> u64 {
    p.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.id)).collect::<HashSet<Id>>().len() as u64
}

/// Refuses the update before anything is downloaded if the state directory's file system
/// cannot hold it: the chunks still to download (their uncompressed size bounds the staged
/// frames), the new file objects, and `min_free_bytes` of headroom.
pub(crate) fn check_space(config: &Config, local: &Local, p: &Plan, missing: &[(Id, u32)]) -> Result<()> {
    let mut seen = HashSet::new();
    let objects: u64 = p
        .files
        .iter()
        .filter(|f| seen.insert(f.object) && !local.object_path(&f.object).exists())
        .map(|f| f.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>())
        .sum();
    let staging: u64 = missing.iter().map(|(_, len)| u64::from(*len)).sum();
    let need = objects + staging + config.min_free_bytes;
    let root = local.layout.root();
    let free = crate::layout::free_bytes(root).with_context(|| format!("checking free space on {}", root.display()))?;
    if need > free {
        return Err(Refused(format!(
            "not enough space on {}: the update needs {} MiB ({} MiB of new files, {} MiB to download, {} MiB kept free) and {} MiB are available; nothing was changed",
            root.display(),
            need >> 20,
            objects >> 20,
            staging >> 20,
            config.min_free_bytes >> 20,
            free >> 20
        ))
        .into());
    }
    Ok(())
}
