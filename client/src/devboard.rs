//! Dev boards: pointing `current_link` at a developer's working copy (`ferryd dev`) or at a
//! writable copy of the current deployment (`ferryd unlock`), and back.
//!
//! What it is for: the developer's exceptions to "deployments are immutable", without ever
//! making a file of the object store writable: `unlock` copies (new inodes), it never
//! hardlinks. What it is not for: updates (`update`); while a working copy is linked the
//! device is pinned, and an unlocked copy is dropped by the next deployment unless kept.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ferry_store::Id;

use crate::config::Config;
use crate::local::Local;
use crate::state::{self, Dev, State};

/// The commit `current_link` points at, if it is one of our deployments; while a working copy
/// or an unlocked copy is linked, the deployment it replaced.
pub fn current_commit(config: &Config, local: &Local) -> Result<Option<Id>> {
    let Some(target) = ferry_boot::current_target(&config.current_link)? else { return Ok(None) };
    if target.parent() != Some(local.deploy_dir().as_path()) || !target.is_dir() {
        // A working copy or an unlocked copy stands in for the deployment it replaced.
        let state = crate::state::read(config)?;
        return Ok(state.dev.filter(|d| d.link == target).and_then(|d| d.back_to).and_then(|b| b.parse().ok()));
    }
    Ok(target.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
}

/// Points `current_link` at `dir` (a developer's working copy) and pins the device.
pub fn link(config: &Config, dir: &Path) -> Result<()> {
    if !dir.is_absolute() || !dir.is_dir() {
        bail!("{} must be an absolute path to a directory", dir.display());
    }
    let local = Local::open(&config.state_dir)?;
    let before = state::read(config)?;
    let back_to = match &before.dev {
        Some(d) => d.back_to.clone(),
        None => current_commit(config, &local)?.map(|c| c.to_hex()),
    };
    let was_pinned = before.dev.as_ref().map_or(before.pinned, |d| d.was_pinned);
    // Pinned before the switch: a crash in between must not let an update replace the copy.
    state::change(config, |s| {
        s.dev = Some(Dev { link: dir.to_path_buf(), back_to, was_pinned, unlocked: false, keep: false });
        s.pinned = true;
    })?;
    ferry_boot::switch_symlink(&config.current_link, dir)?;
    // An unlocked copy that was current goes only now that nothing points at it.
    drop_unlocked(&before, config)
}

/// Back to the deployment that ran before `dev --link` or `unlock`.
pub fn off(config: &Config) -> Result<String> {
    let state = state::read(config)?;
    let Some(dev) = state.dev.clone() else { bail!("no working copy or unlocked copy is linked") };
    let Some(back) = &dev.back_to else {
        bail!("there is no deployment to go back to: run `ferryd update` or `ferryd deploy`")
    };
    let target = config.layout().deployment(back);
    if !target.is_dir() {
        bail!("deployment {back} is gone; run `ferryd deploy` to install a release");
    }
    ferry_boot::switch_symlink(&config.current_link, &target)?;
    drop_unlocked(&state, config)?;
    state::change(config, |s| {
        s.dev = None;
        s.pinned = dev.was_pinned;
    })?;
    Ok(back.clone())
}

/// A writable copy of the current deployment, linked as current. The next deployment
/// drops it (unless `keep`); the object store is never touched.
pub fn unlock(config: &Config, keep: bool) -> Result<PathBuf> {
    let local = Local::open(&config.state_dir)?;
    if state::read(config)?.dev.is_some() {
        bail!("a working copy or unlocked copy is already linked; `ferryd dev --off` first");
    }
    let Some(current) = current_commit(config, &local)? else {
        bail!("no deployment is current; nothing to unlock");
    };
    let from = local.deploy_dir().join(current.to_hex());
    // A new name each time: an earlier copy kept with --keep stays as it is.
    let unlocked = config.layout().unlocked();
    let to = (0u32..)
        .map(|n| unlocked.join(if n == 0 { current.to_hex() } else { format!("{}-{n}", current.to_hex()) }))
        .find(|p| !p.exists())
        .unwrap_or_else(|| unlocked.join(current.to_hex()));
    let tmp = to.with_extension("tmp");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    copy_tree(&from, &tmp)?;
    ferry_durable::rename(&tmp, &to).with_context(|| format!("completing {}", to.display()))?;
    ferry_boot::switch_symlink(&config.current_link, &to)?;
    state::change(config, |s| {
        s.dev =
            Some(Dev { link: to.clone(), back_to: Some(current.to_hex()), was_pinned: s.pinned, unlocked: true, keep });
    })?;
    Ok(to)
}

/// Removes an unlocked copy that is not to be kept (after the link moved away from it).
pub fn drop_unlocked(state: &State, config: &Config) -> Result<()> {
    if let Some(d) = &state.dev {
        if d.unlocked && !d.keep && d.link.starts_with(config.layout().unlocked()) && d.link.exists() {
            fs::remove_dir_all(&d.link).with_context(|| format!("removing {}", d.link.display()))?;
        }
    }
    Ok(())
}

/// Copies a deployment: directories and files anew (owner-writable), symlinks as they are.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let kind = e.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else {
            // fs::copy writes a new file (never a link to the object), then u+w on the copy.
            fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            let mode = fs::metadata(&dst)?.permissions().mode() | 0o200;
            fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
        }
    }
    let mode = fs::metadata(to)?.permissions().mode() | 0o200;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}
