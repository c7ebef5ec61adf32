//! `ferry image`: the content of a device's SD-card image, so that a device flashed with it
//! runs a release from its first boot and downloads nothing that release holds.
//!
//! The image tree is built by the device agent itself: `ferry image` writes a full bundle
//! of the commit into `ferryd seed-image`, which installs it the way a device does (every
//! signature checked with the image's own keys, every chunk verified), under the tree's
//! root: the agent's store and chunk index, the file objects, the deployment (hardlinks to
//! the objects), and `current_link` naming the deployment by the device's path. Overlays
//! (the device's keys, enrollment token, units) and the device configuration are copied in
//! first; `--raw` then makes an ext4 file system of the tree with `mkfs.ext4 -d`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use ferry_store::{Id, Repository};

use crate::bundle::{write_bundle, BundleTo};
use crate::import::NoProgress;

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub commit: Id,
    pub hardware: String,
    pub out: PathBuf,
    /// The device's ferryd.toml, copied to `config_path` in the image.
    pub device_config: PathBuf,
    pub config_path: PathBuf,
    pub overlays: Vec<PathBuf>,
    /// An ext4 image file of the tree, and its size in bytes.
    pub raw: Option<(PathBuf, u64)>,
    /// The agent binary that installs the release into the tree.
    pub ferryd: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSummary {
    pub commit: String,
    pub version: String,
    pub hardware: String,
    pub out: PathBuf,
    pub files: u64,
    pub raw: Option<PathBuf>,
    pub raw_bytes: Option<u64>,
    /// Files the device configuration names that neither the overlays nor the release
    /// hold, each with its setting: the device would miss them unless its base system has
    /// them (`/etc/ferry/enrollment-token ([fleet] enrollment_token_file)`).
    pub missing: Vec<String>,
}

/// The files a device configuration names that an image is expected to carry: each with
/// its setting. Paths the kernel or the running system makes (/proc, /sys, /dev, /run) are
/// not the image's.
fn named_files(config: &toml::Value) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut take = |setting: String, v: &toml::Value| {
        if let Some(s) = v.as_str() {
            out.push((setting, PathBuf::from(s)));
        }
    };
    for key in ["ca_file", "content_ca_file", "hardware_file"] {
        if let Some(v) = config.get(key) {
            take(key.to_string(), v);
        }
    }
    for key in ["root_keys", "trusted_keys"] {
        for v in config.get(key).and_then(|v| v.as_array()).into_iter().flatten() {
            take(key.to_string(), v);
        }
    }
    if let Some(fleet) = config.get("fleet") {
        for key in ["enrollment_token_file", "serial_file"] {
            if let Some(v) = fleet.get(key) {
                take(format!("[fleet] {key}"), v);
            }
        }
    }
    out.retain(|(_, p)| p.is_absolute() && !["/proc", "/sys", "/dev", "/run"].iter().any(|r| p.starts_with(r)));
    out
}

/// Whether the commit's tree has `path` (absolute, as the device sees it when the release
/// is its root file system).
fn release_has(repo: &Repository, root: Id, path: &Path) -> Result<bool> {
    let mut tree = root;
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.as_encoded_bytes().to_vec()),
            _ => None,
        })
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(e) = repo.read_tree(&tree)?.entries.into_iter().find(|e| e.name == *part) else { return Ok(false) };
        match e.kind {
            ferry_store::EntryKind::Dir { tree: sub } => tree = sub,
            _ => return Ok(i + 1 == parts.len()),
        }
    }
    Ok(true)
}

/// `ferryd` beside the running `ferry`, else on PATH.
pub fn find_ferryd() -> Result<PathBuf> {
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let beside = dir.join("ferryd");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join("ferryd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("ferryd was found neither beside ferry nor on PATH; give it with --ferryd")
}

/// Parses a size: bytes, or with a K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => bail!("size {s:?}: the suffix must be K, M, G or T"),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| anyhow!("size {s:?} is not a number of bytes (e.g. 512M, 2G)"))?;
    n.checked_mul(mul).ok_or_else(|| anyhow!("size {s:?} is too large"))
}

/// Copies the tree `from` into `to` (directories, files with their modes, symlinks).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(from).with_context(|| format!("reading {}", from.display()))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from)?;
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(&target, to).with_context(|| format!("creating {}", to.display()))?;
    } else if meta.is_dir() {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.permissions().mode()))?;
    } else if meta.is_file() {
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    } else {
        bail!("{} is not a file, directory or symlink; an overlay holds only those", from.display());
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> Result<()> {
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    nix::unistd::syncfs(&d).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Builds the image tree (and the raw file system, if asked).
pub fn build(repo: &Repository, req: &ImageRequest) -> Result<ImageSummary> {
    let commit = repo.read_commit(&req.commit)?;
    if !commit.hardware.is_empty() && !commit.hardware.contains(&req.hardware) {
        bail!(
            "commit {} is built for {}, not for {}; a device would refuse it",
            req.commit.short(),
            commit.hardware.join(", "),
            req.hardware
        );
    }
    if req.out.exists() && std::fs::read_dir(&req.out)?.next().is_some() {
        bail!("{} is not empty: an image is built into a new or empty directory", req.out.display());
    }
    if let Some((raw, size)) = &req.raw {
        if *size < (8 << 20) {
            bail!("--size {size}: an ext4 image needs at least 8 MiB");
        }
        if raw.starts_with(&req.out) {
            bail!("--raw {} must be outside --out {}", raw.display(), req.out.display());
        }
    }
    if !req.config_path.is_absolute() {
        bail!("--config-path {} must be absolute (the device's path)", req.config_path.display());
    }
    std::fs::create_dir_all(&req.out).with_context(|| format!("creating {}", req.out.display()))?;
    let out = req.out.canonicalize()?;
    for o in &req.overlays {
        copy_tree(o, &out).with_context(|| format!("copying overlay {}", o.display()))?;
    }
    let config_in_image = out.join(req.config_path.strip_prefix("/").unwrap_or(&req.config_path));
    if let Some(parent) = config_in_image.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(&req.device_config, &config_in_image)
        .with_context(|| format!("copying {}", req.device_config.display()))?;
    // What the configuration names must be on the device: in an overlay, or in the release.
    let text = std::fs::read_to_string(&req.device_config)
        .with_context(|| format!("reading {}", req.device_config.display()))?;
    let config: toml::Value =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", req.device_config.display()))?;
    let mut missing = Vec::new();
    for (setting, path) in named_files(&config) {
        let in_image = out.join(path.strip_prefix("/").unwrap_or(&path));
        if in_image.symlink_metadata().is_ok() || release_has(repo, commit.root, &path)? {
            continue;
        }
        missing.push(format!("{} ({setting})", path.display()));
    }

    let mut child = Command::new(&req.ferryd)
        .arg("--config")
        .arg(&config_in_image)
        .arg("seed-image")
        .arg("--root")
        .arg(&out)
        .args(["--hardware", &req.hardware, "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", req.ferryd.display()))?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow!("no pipe to ferryd"))?;
    // Its output is read while the bundle is written: a child blocked on a full pipe would
    // never read on.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut out);
            }
            out
        })
    };
    let out_thread = drain(child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>));
    let err_thread = drain(child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>));
    let written = write_bundle(repo, &BundleTo::Commit(req.commit), &[], stdin, &NoProgress);
    let status = child.wait()?;
    let output = std::process::Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    };
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let line = err.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or(err.trim());
        bail!("ferryd seed-image failed: {line}");
    }
    written.context("writing the release into ferryd seed-image")?;
    let seeded: serde_json::Value = serde_json::from_slice(&output.stdout).context("reading ferryd's summary")?;
    sync_tree(&out)?;

    let mut summary = ImageSummary {
        commit: req.commit.to_hex(),
        version: commit.version.to_string(),
        hardware: req.hardware.clone(),
        out: out.clone(),
        files: seeded["files"].as_u64().unwrap_or(0),
        raw: None,
        missing,
        raw_bytes: None,
    };
    if let Some((raw, size)) = &req.raw {
        let tmp = ferry_durable::temp_beside(raw).with_context(|| format!("--raw {}", raw.display()))?;
        let result = (|| -> Result<()> {
            let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.set_len(*size)?;
            drop(f);
            let mkfs = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "ferry", "-d"])
                .arg(&out)
                .arg(&tmp)
                .output()
                .context("running mkfs.ext4 (Debian package e2fsprogs)")?;
            if !mkfs.status.success() {
                bail!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&mkfs.stderr).trim());
            }
            std::fs::File::open(&tmp)?.sync_all()?;
            ferry_durable::rename(&tmp, raw)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        summary.raw = Some(raw.clone());
        summary.raw_bytes = Some(*size);
    }
    std::io::stderr().flush().ok();
    Ok(summary)
}
