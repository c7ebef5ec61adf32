//! What the harness takes from the host: its cache directory, its tools (found on `PATH`
//! and run to completion), Debian's cloud kernel (fetched into the cache once) and the
//! clock. Nothing here knows what the guest does with them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::arch::GUEST;

/// Where the kernel and the runs' work directories live: `FERRY_VM_CACHE`, or
/// `~/.cache/ferry-vm`.
pub fn cache_dir() -> PathBuf {
    // An aarch64 guest's: ~/.cache/ferry-vm-arm64, or $FERRY_VM_CACHE/arm64 (arch.rs).
    std::env::var_os("FERRY_VM_CACHE").map(|c| PathBuf::from(c).join(GUEST.cache_subdir)).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache").join(GUEST.cache_name)
    })
}

/// Runs a host tool to its end; its standard output, or its standard error as the error.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a host tool is on `PATH`.
pub fn which(name: &str) -> Result<PathBuf> {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed (scripts/vmtest installs what the harness needs)")
}

/// Debian's cloud kernel and its modules, extracted from the package into the cache.
pub fn kernel() -> Result<(PathBuf, PathBuf)> {
    let dir = cache_dir().join("kernel");
    let find = || -> Option<(PathBuf, PathBuf)> {
        let boot = std::fs::read_dir(dir.join("boot")).ok()?;
        let vmlinuz = boot
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(GUEST.kernel_prefix)))?;
        let version = vmlinuz.file_name()?.to_string_lossy().trim_start_matches(GUEST.kernel_prefix).to_string();
        Some((vmlinuz, dir.join("lib/modules").join(version)))
    };
    if let Some(k) = find() {
        return Ok(k);
    }
    eprintln!("fetching Debian's cloud kernel package (once)");
    // An aarch64 guest's comes from deb.debian.org (arch.rs): this machine's apt has no arm64.
    if crate::arch::fetch_foreign_kernel(&cache_dir(), &dir)? {
        return find().ok_or_else(|| anyhow!("{} holds no {}*", dir.display(), GUEST.kernel_prefix));
    }
    let deps = run(Command::new("apt-cache").args(["depends", GUEST.kernel_package]))?;
    let package = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .ok_or_else(|| anyhow!("apt-cache names no kernel package for {}", GUEST.kernel_package))?
        .to_string();
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs)?;
    run(Command::new("apt-get").args(["download", &package]).current_dir(&debs))?;
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&package)))
        .ok_or_else(|| anyhow!("apt-get download {package} left no package"))?;
    let tmp = cache_dir().join("kernel.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::rename(&tmp, &dir)?;
    find().ok_or_else(|| anyhow!("{} holds no {}*", deb.display(), GUEST.kernel_prefix))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
