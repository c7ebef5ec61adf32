//! The guest's software: the initramfs (busybox, the virtio and overlay modules, the shipped
//! `boot-integration/prepare-root/ferry-prepare-root`, `guest/initramfs-init.sh`), the broken
//! one a bad release carries, the root file system every release carries (busybox, ferryd
//! and its libraries, `guest/init.sh` as /sbin/init, `guest/app-restart.sh`, the mount
//! points), and the device's own files on its partition (the root key, the bootloader's
//! files). The scripts in `guest/` are the guest's side of the harness: what they print on
//! the console is what `qemu.rs` reads.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::arch::GUEST;
use crate::bootloader::Loader;
use crate::cpio;
use crate::host::run;

/// The state directory on the device (ferryd.toml's `state_dir`, the default of
/// `ferry-prepare-root` and of the shipped boot scripts): on the partition, and at the same
/// path in the running system (under /var, which is the partition's).
pub const STATE_DIR: &str = "/var/lib/ferry";

/// The shipped early-boot step, run by the initramfs.
const PREPARE_ROOT: &str = include_str!("../../boot-integration/prepare-root/ferry-prepare-root");

/// The initramfs: busybox, the modules, `ferry-prepare-root`, and an init that mounts the
/// disk's partition, makes the deployment to boot its root with `ferry-prepare-root`, and
/// switches to it.
pub fn initramfs(modules: &Path, out: &Path) -> Result<()> {
    let mut a = cpio::Archive::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        a.dir(d);
    }
    let busybox = GUEST.busybox()?;
    let ldd = Command::new("ldd").arg(&busybox).output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    if !(said.contains("not a dynamic executable") || said.contains("statically linked")) {
        bail!("{} is not statically linked: install busybox-static", busybox.display());
    }
    a.file("bin/busybox", &std::fs::read(busybox)?, 0o755);
    for m in GUEST.modules {
        let path = find_file(modules, &format!("{m}.ko")).ok_or_else(|| anyhow!("no module {m}.ko"))?;
        a.file(&format!("lib/modules/{m}.ko"), &std::fs::read(path)?, 0o644);
    }
    a.file("bin/ferry-prepare-root", PREPARE_ROOT.as_bytes(), 0o755);
    let init = include_str!("../guest/initramfs-init.sh").replace("@MODULES@", &GUEST.modules.join(" "));
    a.file("init", init.as_bytes(), 0o755);
    std::fs::write(out, a.finish())?;
    Ok(())
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// An initramfs whose init fails at once: a release whose kernel cannot come up (the
/// kernel panics, and with panic=-1 the machine resets).
pub fn broken_initramfs(out: &Path) -> Result<()> {
    let mut a = cpio::Archive::default();
    a.dir("bin");
    a.file("bin/busybox", &std::fs::read(GUEST.busybox()?)?, 0o755);
    a.file("init", b"#!/bin/busybox sh\necho FERRY-VM broken-init\nexit 1\n", 0o755);
    std::fs::write(out, a.finish())?;
    Ok(())
}

/// The root file system every release carries, added to its tree `dir`: busybox, ferryd and
/// the libraries it loads, the bootloader's tools for ferryd (`Loader::tools`), the boot
/// script (`guest/init.sh` as /sbin/init), the application's restart script for the
/// current link, and the empty mount points `ferry-prepare-root` and the init need.
pub fn release_root(dir: &Path, ferryd: &Path, loader: Option<Loader>) -> Result<()> {
    for d in ["bin", "sbin", "usr/bin", "etc", "proc", "sys", "dev", "tmp", "run", "var", "sysroot"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(GUEST.busybox()?, dir.join("bin/busybox"))?;
    for tool in [
        "sh", "mount", "umount", "ip", "sleep", "cat", "tr", "sync", "poweroff", "echo", "test", "ls", "seq", "tee",
        "grep", "kill", "rm", "mv", "setsid", "dirname",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool))?;
    }
    // The guest's own agent (the aarch64 build on an aarch64 guest: arch.rs).
    let mut binaries = vec![(GUEST.guest_ferryd(ferryd)?, "usr/bin/ferryd")];
    if let Some(l) = loader {
        binaries.extend(l.tools()?);
    }
    for (binary, at) in &binaries {
        std::fs::copy(binary, dir.join(at))?;
        if !GUEST.host_software {
            continue; // its libraries: GUEST.install_libraries, below
        }
        // The shared libraries it loads, at the paths the loader looks for them.
        let ldd = run(Command::new("ldd").arg(binary))?;
        for line in ldd.lines() {
            let path = line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from);
            if let Some(p) = path {
                let dest = dir.join(p.strip_prefix("/")?);
                std::fs::create_dir_all(dest.parent().unwrap_or(dir))?;
                std::fs::copy(p.canonicalize()?, &dest).with_context(|| format!("copying {}", p.display()))?;
            }
        }
    }
    GUEST.install_libraries(dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join("sbin/init"), include_str!("../guest/init.sh"))?;
    std::fs::set_permissions(dir.join("sbin/init"), std::fs::Permissions::from_mode(0o755))?;
    // ferryd's restart_command, starting the application from the current deployment.
    let restart = include_str!("../guest/app-restart.sh").replace("@CURRENT@", &format!("{STATE_DIR}/current"));
    std::fs::write(dir.join("sbin/app-restart"), restart)?;
    std::fs::set_permissions(dir.join("sbin/app-restart"), std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The device's own files on its partition, which `ferry image` adds to Ferry's state: the
/// root key under etc/ (the running system's /etc overrides), and with a loader what it reads
/// from the partition to boot release `first` (`Loader::install`).
pub fn device_overlay(dir: &Path, root_pub: &Path, loader: Option<(Loader, &str)>) -> Result<()> {
    std::fs::create_dir_all(dir.join("etc/ferry"))?;
    std::fs::copy(root_pub, dir.join("etc/ferry/root.pub"))?;
    if let Some((l, first)) = loader {
        l.install(dir, first)?;
    }
    Ok(())
}
