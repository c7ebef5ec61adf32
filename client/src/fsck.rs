//! `ferryd fsck`: every deployment on the device checked against its commit: every file's
//! bytes against its chunk ids, its mode, every symlink's target, every directory.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, Result};
use ferry_store::{EntryKind, Id};

use crate::local::Local;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeviceFsck {
    pub deployments: u64,
    pub files: u64,
    pub problems: Vec<String>,
}

fn check_tree(local: &Local, tree: &Id, dir: &Path, r: &mut DeviceFsck, depth: usize) -> Result<()> {
    if depth > ferry_store::object::MAX_DEPTH {
        anyhow::bail!("tree {tree} is nested deeper than {} directories", ferry_store::object::MAX_DEPTH);
    }
    let tree =
        local.tree(tree)?.ok_or_else(|| anyhow!("tree {tree} for {} is missing on the device", dir.display()))?;
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() && m.mode() & 0o7777 == tree.meta.mode => {}
        Ok(m) => r.problems.push(format!(
            "{}: directory mode {:o}, expected {:o}",
            dir.display(),
            m.mode() & 0o7777,
            tree.meta.mode
        )),
        Err(e) => r.problems.push(format!("{}: {e}", dir.display())),
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    for e in &tree.entries {
        use std::os::unix::ffi::OsStrExt;
        let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
        names.push(e.name.clone());
        match &e.kind {
            EntryKind::Dir { tree } => check_tree(local, tree, &path, r, depth + 1)?,
            EntryKind::Symlink { target, .. } => match fs::read_link(&path) {
                Ok(t) if t.as_os_str().as_bytes() == target.as_slice() => {}
                Ok(t) => r.problems.push(format!(
                    "{}: symlink to {}, expected {}",
                    path.display(),
                    t.display(),
                    String::from_utf8_lossy(target)
                )),
                Err(e) => r.problems.push(format!("{}: {e}", path.display())),
            },
            EntryKind::File { meta, size, chunks } => {
                r.files += 1;
                let check = || -> std::io::Result<Option<String>> {
                    let m = fs::symlink_metadata(&path)?;
                    if !m.is_file() {
                        return Ok(Some("not a regular file".into()));
                    }
                    if m.mode() & 0o7777 != meta.mode {
                        return Ok(Some(format!("mode {:o}, expected {:o}", m.mode() & 0o7777, meta.mode)));
                    }
                    if m.len() != *size {
                        return Ok(Some(format!("{} bytes, expected {size}", m.len())));
                    }
                    let mut f = fs::File::open(&path)?;
                    for c in chunks {
                        let mut buf = vec![0u8; c.len as usize];
                        f.read_exact(&mut buf)?;
                        if Id::of(&buf) != c.id {
                            return Ok(Some(format!("content differs from its commit (chunk {})", c.id)));
                        }
                    }
                    Ok(None)
                };
                match check() {
                    Ok(None) => {}
                    Ok(Some(p)) => r.problems.push(format!("{}: {p}", path.display())),
                    Err(e) => r.problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
    // Files added behind the agent's back.
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            use std::os::unix::ffi::OsStrExt;
            if !names.iter().any(|n| n.as_slice() == e.file_name().as_bytes()) {
                r.problems.push(format!("{}: not part of the commit", e.path().display()));
            }
        }
    }
    Ok(())
}

/// Checks every complete deployment under `deploy/`.
pub fn fsck(local: &Local) -> Result<DeviceFsck> {
    let mut r = DeviceFsck::default();
    for e in fs::read_dir(local.deploy_dir())? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(id) = name.parse::<Id>() else {
            r.problems.push(format!("{}: not a deployment", e.path().display()));
            continue;
        };
        r.deployments += 1;
        match local.commit(&id)? {
            Some(c) => check_tree(local, &c.root, &e.path(), &mut r, 0)?,
            None => r.problems.push(format!("{}: commit {id} is missing on the device", e.path().display())),
        }
    }
    Ok(r)
}
