//! `ferry-vmtest`: real power cuts. A device boots in QEMU from a disk built by `ferry
//! image`; it starts updating from `ferry serve` on this machine (QEMU's user network reaches
//! the host's loopback as 10.0.2.2), and the harness kills QEMU (SIGKILL: no shutdown, no
//! sync) at a random moment between the update's start and the end of its trial, or (every
//! other cut) a few milliseconds after a random one of the agent's durable steps. The next boot must
//! come up, `ferryd fsck` must find every deployment complete, the update must then finish,
//! and it must not download a chunk that was durably stored before the cut. The disk under
//! the cut is served over NBD with a volatile write cache (`nbd.rs`): what the guest wrote
//! but did not flush is kept or lost at random at the cut, as a real disk's cache can.
//!
//! Guest: Debian's cloud kernel (extracted from its package into the cache, never
//! installed), an initramfs that loads the virtio modules and switches to the disk, and on
//! the disk busybox, `ferryd` with its libraries, its configuration and the state `ferry
//! image` seeded. Each boot runs `ferryd boot-check`, starts the application (a script in
//! the release; ferryd restarts it after a switch, and the trial checks the running one is
//! the release on trial), then `fsck`, `status`, the daemon (`ferryd run --json`) until its
//! first check has ended, `fsck`, printing `FERRY-VM` lines on the serial console, and
//! powers off; `FERRYD_TRACE_STEPS` makes the agent print each durable step, so the report
//! says where every cut landed.
//!
//! With `--grub` it boots through the real GRUB instead: an MBR with GRUB's boot.img, a
//! core.img from grub-mkimage, and the shipped `boot-integration/grub/ferry.cfg` choosing the
//! deployment (whose kernel and initramfs it loads) from the environment block ferryd
//! writes with grub-editenv. A release that never marks itself good, one whose init fails
//! (the kernel panics), and one whose kernel cannot start (the bootloader cannot load it)
//! must each be rolled back by GRUB after `bootlimit` boots.
//! `--uboot` does the same through the real U-Boot: Debian's `qemu-x86` build as the
//! machine's firmware, and the shipped `boot-integration/uboot/boot.cmd` after the board's
//! lines (`boards/qemu-x86.cmd`), with the environment in a raw area of the disk that ferryd
//! writes with fw_setenv.
//!
//! Usage: `ferry-vmtest [--cuts N] [--seed S] [--report FILE]`, `ferry-vmtest --grub` or
//! `ferry-vmtest --uboot`; `FERRY_VM_SOAK=1` makes the default 300 cuts instead of 10. Needs
//! qemu-system-x86_64, busybox-static, grub-pc-bin, u-boot-qemu, u-boot-tools and
//! libubootenv-tool (`scripts/vmtest` installs them); the kernel package is
//! fetched with `apt-get download`. KVM is not used by default (`FERRY_VM_ACCEL=kvm` to try
//! it): nested KVM on this machine hangs the guest.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ferry_fixtures::rng::Rng;
use ferry_publisher::channels::{self, KeyChange, Promotion};
use ferry_publisher::import::{commit_tree, CommitRequest, NoProgress};
use ferry_store::{ChunkParams, Id, RepoConfig, Repository};
use serde_json::Value;

mod cpio;
mod nbd;

#[derive(Parser)]
#[command(about = "Cuts a QEMU device's power in the middle of updates and checks every next boot")]
struct Args {
    /// Power cuts to make (default 10, or 300 with FERRY_VM_SOAK=1).
    #[arg(long)]
    cuts: Option<u32>,
    /// Seed of the cut times (default: from the clock; printed, to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report (a Markdown table) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Instead of power cuts: boot through the real GRUB (an MBR, core.img from
    /// grub-mkimage, the shipped ferry.cfg) and check that it rolls back a release that
    /// never marks itself good, one whose init fails and one whose kernel cannot start, after
    /// bootlimit boots.
    #[arg(long)]
    grub: bool,
    /// Instead of power cuts: the same through the real U-Boot (Debian's qemu-x86 build, the
    /// shipped boot.cmd after boards/qemu-x86.cmd).
    #[arg(long, conflicts_with = "grub")]
    uboot: bool,
    /// Size of the release trees, in MiB.
    #[arg(long, default_value_t = 24)]
    tree_mib: u64,
}

/// The bootloader of a bootloader run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loader {
    Grub,
    Uboot,
}

impl Loader {
    fn name(self) -> &'static str {
        match self {
            Loader::Grub => "GRUB",
            Loader::Uboot => "U-Boot",
        }
    }
}

/// Debian's U-Boot for QEMU's PC (the 32-bit build: the 64-bit one does not start Linux).
const UBOOT_ROM: &str = "/usr/lib/u-boot/qemu-x86/u-boot.rom";
/// Where boards/qemu-x86.cmd keeps the U-Boot environment on the disk, and its size.
const UBOOT_ENV: (u64, u64) = (0x80000, 0x4000);

const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];

fn cache_dir() -> PathBuf {
    std::env::var_os("FERRY_VM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/ferry-vm")
    })
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian's cloud kernel and its modules, extracted from the package into the cache.
fn kernel() -> Result<(PathBuf, PathBuf)> {
    let dir = cache_dir().join("kernel");
    let find = || -> Option<(PathBuf, PathBuf)> {
        let boot = std::fs::read_dir(dir.join("boot")).ok()?;
        let vmlinuz = boot
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))?;
        let version = vmlinuz.file_name()?.to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        Some((vmlinuz, dir.join("lib/modules").join(version)))
    };
    if let Some(k) = find() {
        return Ok(k);
    }
    eprintln!("fetching Debian's cloud kernel package (once)");
    let deps = run(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .ok_or_else(|| anyhow!("apt-cache names no kernel package for linux-image-cloud-amd64"))?
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
    find().ok_or_else(|| anyhow!("{} holds no vmlinuz", deb.display()))
}

fn which(name: &str) -> Result<PathBuf> {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not installed (scripts/vmtest installs what the harness needs)")
}

/// The initramfs: busybox, the virtio modules, and an init that mounts the disk and
/// switches to it.
fn initramfs(modules: &Path, out: &Path) -> Result<()> {
    let mut a = cpio::Archive::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        a.dir(d);
    }
    let busybox = which("busybox")?;
    let ldd = Command::new("ldd").arg(&busybox).output()?;
    let said = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    if !(said.contains("not a dynamic executable") || said.contains("statically linked")) {
        bail!("{} is not statically linked: install busybox-static", busybox.display());
    }
    a.file("bin/busybox", &std::fs::read(busybox)?, 0o755);
    for m in MODULES {
        let path = find_file(modules, &format!("{m}.ko")).ok_or_else(|| anyhow!("no module {m}.ko"))?;
        a.file(&format!("lib/modules/{m}.ko"), &std::fs::read(path)?, 0o644);
    }
    let init = include_str!("../guest/initramfs-init.sh").replace("@MODULES@", &MODULES.join(" "));
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
fn broken_initramfs(out: &Path) -> Result<()> {
    let mut a = cpio::Archive::default();
    a.dir("bin");
    a.file("bin/busybox", &std::fs::read(which("busybox")?)?, 0o755);
    a.file("init", b"#!/bin/busybox sh\necho FERRY-VM broken-init\nexit 1\n", 0o755);
    std::fs::write(out, a.finish())?;
    Ok(())
}

/// A disk for a bootloader run: an MBR and one Linux partition (`part`, from 1 MiB).
/// For GRUB the MBR holds GRUB's boot.img, and GRUB's core.img (grub-mkimage, with what
/// ferry.cfg needs) fills the sectors before the partition, where boot.img looks for it.
/// For U-Boot (the machine's firmware) the MBR is only a partition table, and the sectors
/// before the partition hold the environment, with release `first` to boot.
fn boot_disk(loader: Loader, part: &Path, out: &Path, first: &str) -> Result<()> {
    let (boot, core) = match loader {
        Loader::Grub => {
            let core = out.with_extension("core");
            run(Command::new("grub-mkimage")
                .args(["-O", "i386-pc", "-o"])
                .arg(&core)
                .args(["-p", "(hd0,msdos1)/boot/grub"])
                .args(["biosdisk", "part_msdos", "ext2", "normal", "configfile", "linux", "loadenv", "test", "echo"])
                .args(["serial", "terminal", "boot", "reboot"]))?;
            (std::fs::read("/usr/lib/grub/i386-pc/boot.img")?, std::fs::read(&core)?)
        }
        Loader::Uboot => (vec![0u8; 440], Vec::new()),
    };
    let part_len = std::fs::metadata(part)?.len();
    if core.len() > 2047 * 512 || boot.len() < 440 {
        bail!("GRUB's core.img ({} bytes) does not fit before the partition", core.len());
    }
    let mut mbr = vec![0u8; 512];
    mbr[..440].copy_from_slice(&boot[..440]);
    // One bootable Linux partition from sector 2048 (CHS fields unused: LBA only).
    let mut entry = vec![0x80, 0xfe, 0xff, 0xff, 0x83, 0xfe, 0xff, 0xff];
    entry.extend_from_slice(&2048u32.to_le_bytes());
    entry.extend_from_slice(&u32::try_from(part_len / 512)?.to_le_bytes());
    mbr[446..462].copy_from_slice(&entry);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = std::fs::File::create(out)?;
    f.write_all(&mbr)?;
    f.write_all(&core)?;
    f.write_all(&vec![0u8; 2048 * 512 - 512 - core.len()])?;
    std::io::copy(&mut std::fs::File::open(part)?, &mut f)?;
    f.sync_all()?;
    drop(f);
    if loader == Loader::Uboot {
        // The factory's environment, written with the same tool ferryd uses on the device.
        let config = out.with_extension("fw_env.config");
        let defenv = out.with_extension("defenv");
        std::fs::write(&config, format!("{} {:#x} {:#x}\n", out.display(), UBOOT_ENV.0, UBOOT_ENV.1))?;
        std::fs::write(&defenv, format!("ferry_deploy={first}\nupgrade_available=0\nbootcount=0\n"))?;
        run(Command::new("fw_setenv").arg("-c").arg(&config).arg("-f").arg(&defenv).args(["bootlimit", "2"]))?;
        let env = run(Command::new("fw_printenv").arg("-c").arg(&config))?;
        if !env.contains(&format!("ferry_deploy={first}")) || !env.contains("bootlimit=2") {
            bail!("the disk's U-Boot environment did not take: {env}");
        }
    }
    Ok(())
}

/// The device's root file system, less Ferry's state (which `ferry image` adds): busybox,
/// ferryd and the libraries it loads, the boot script, the root key.
fn rootfs_overlay(
    dir: &Path,
    ferryd: &Path,
    root_pub: &Path,
    current: &str,
    loader: Option<(Loader, &str)>,
) -> Result<()> {
    for d in ["bin", "sbin", "usr/bin", "etc/ferry", "proc", "sys", "dev", "tmp", "run", "var/lib/ferry"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(which("busybox")?, dir.join("bin/busybox"))?;
    for tool in [
        "sh", "mount", "umount", "ip", "sleep", "cat", "tr", "sync", "poweroff", "echo", "test", "ls", "seq", "tee",
        "grep", "kill", "rm", "mv", "setsid", "dirname",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(tool))?;
    }
    let mut binaries = vec![(ferryd.to_path_buf(), "usr/bin/ferryd")];
    if let Some((Loader::Grub, first)) = loader {
        // GRUB reads its configuration, Ferry's fragment and the environment block from the
        // partition; ferryd writes the block with grub-editenv, as on a device.
        binaries.push((which("grub-editenv")?, "usr/bin/grub-editenv"));
        std::fs::create_dir_all(dir.join("boot/grub"))?;
        std::fs::write(
            dir.join("boot/grub/grub.cfg"),
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=0\nset ferry_cmdline=\"console=ttyS0 quiet panic=-1\"\nsource ${prefix}/ferry.cfg\n",
        )?;
        let fragment = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boot-integration/grub/ferry.cfg");
        std::fs::copy(&fragment, dir.join("boot/grub/ferry.cfg")).with_context(|| format!("{}", fragment.display()))?;
        let env = dir.join("boot/grub/grubenv");
        run(Command::new("grub-editenv").arg(&env).arg("create"))?;
        run(Command::new("grub-editenv").arg(&env).args([
            "set",
            &format!("ferry_deploy={first}"),
            "upgrade_available=0",
            "bootcount=0",
            "bootlimit=2",
        ]))?;
        std::fs::write(dir.join("etc/ferry-vm-mode"), "grub\n")?;
    }
    if let Some((Loader::Uboot, _)) = loader {
        // U-Boot's distro boot finds /boot/boot.scr on the partition: the board's lines, then
        // Ferry's script. ferryd writes the environment (on the raw disk) with fw_setenv.
        binaries.push((which("fw_setenv")?, "usr/bin/fw_setenv"));
        binaries.push((which("fw_printenv")?, "usr/bin/fw_printenv"));
        std::fs::create_dir_all(dir.join("boot"))?;
        std::fs::write(dir.join("etc/fw_env.config"), format!("/dev/vda {:#x} {:#x}\n", UBOOT_ENV.0, UBOOT_ENV.1))?;
        let uboot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boot-integration/uboot");
        let mut script = std::fs::read_to_string(uboot.join("boards/qemu-x86.cmd"))
            .with_context(|| format!("{}/boards/qemu-x86.cmd", uboot.display()))?;
        script.push_str(&std::fs::read_to_string(uboot.join("boot.cmd"))?);
        let cmd = dir.join("boot/ferry-boot.cmd");
        std::fs::write(&cmd, script)?;
        run(Command::new("mkimage")
            .args(["-A", "x86", "-T", "script", "-d"])
            .arg(&cmd)
            .arg(dir.join("boot/boot.scr")))?;
        std::fs::write(dir.join("etc/ferry-vm-mode"), "uboot\n")?;
    }
    for (binary, at) in &binaries {
        std::fs::copy(binary, dir.join(at))?;
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
    std::fs::copy(root_pub, dir.join("etc/ferry/root.pub"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(dir.join("sbin/init"), include_str!("../guest/init.sh"))?;
    std::fs::set_permissions(dir.join("sbin/init"), std::fs::Permissions::from_mode(0o755))?;
    // ferryd's restart_command, starting the application from the current deployment.
    let restart = include_str!("../guest/app-restart.sh").replace("@CURRENT@", current);
    std::fs::write(dir.join("sbin/app-restart"), restart)?;
    std::fs::set_permissions(dir.join("sbin/app-restart"), std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// What one boot printed.
#[derive(Default, Debug)]
struct Boot {
    markers: BTreeMap<String, String>,
    steps: Vec<String>,
    killed: bool,
    /// Seconds from `update-start` to the cut.
    cut_after: Option<f64>,
    /// Seconds from `update-start` to the update's answer, when it finished.
    update_seconds: Option<f64>,
    log: String,
}

/// When a cut falls: a time after the update starts (uniform over the update, so most cuts
/// land in its long phases), or a short delay after the agent reports its `n`th durable step
/// (uniform over the steps: aimed at the moments between one write and the next flush).
#[derive(Clone, Copy)]
enum CutAt {
    Time(Duration),
    Step { n: usize, delay: Duration },
}

/// How a boot starts: QEMU loads the kernel and initramfs itself, or the firmware boots the
/// disk (SeaBIOS and GRUB in the MBR, or U-Boot).
#[derive(Clone, Copy)]
enum Start<'a> {
    Direct {
        kernel: &'a Path,
        initrd: &'a Path,
    },
    /// The firmware boots the disk: SeaBIOS (QEMU's own) or the ROM named.
    Firmware(Option<&'a Path>),
}

/// Boots `disk` (a file); with `cut`, kills QEMU when the cut falls.
fn boot(start: Start<'_>, disk: &Path, cut: Option<CutAt>) -> Result<Boot> {
    boot_drive(start, &format!("file={},format=raw,if=virtio,cache=none", disk.display()), cut)
}

/// Boots from the drive QEMU's `-drive` option names.
fn boot_drive(start: Start<'_>, drive: &str, cut: Option<CutAt>) -> Result<Boot> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", &std::env::var("FERRY_VM_ACCEL").unwrap_or_else(|_| "tcg".into())]).args([
        "-m",
        "768",
        "-smp",
        "1",
        "-nographic",
        "-no-reboot",
    ]);
    match start {
        Start::Direct { kernel, initrd } => {
            cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).args(["-append", "console=ttyS0 quiet panic=-1"]);
        }
        Start::Firmware(Some(rom)) => {
            cmd.arg("-bios").arg(rom);
        }
        Start::Firmware(None) => {}
    }
    let mut child = cmd
        .arg("-drive")
        .arg(drive)
        .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no qemu output"))?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut b = Boot::default();
    let mut started: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(k) = kill_at {
            if now >= k {
                child.kill()?;
                child.wait()?;
                b.killed = true;
                b.cut_after = started.map(|s| s.elapsed().as_secs_f64());
                // What the console had printed by then.
                while let Ok(line) = rx.try_recv() {
                    take(&mut b, &line, started);
                }
                return Ok(b);
            }
        }
        if now > deadline {
            let _ = child.kill();
            bail!("the VM did not finish within 10 minutes; its console:\n{}", b.log);
        }
        let wait = kill_at
            .map_or(Duration::from_millis(200), |k| k.saturating_duration_since(now).min(Duration::from_millis(200)));
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if line.starts_with("FERRY-VM update-start") {
                    started = Some(Instant::now());
                    if let Some(CutAt::Time(d)) = cut {
                        kill_at = Some(Instant::now() + d);
                    }
                }
                let steps = b.steps.len();
                take(&mut b, &line, started);
                if let Some(CutAt::Step { n, delay }) = cut {
                    if kill_at.is_none() && steps < n && b.steps.len() >= n {
                        kill_at = Some(Instant::now() + delay);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("qemu failed ({status}): {err}");
    }
    Ok(b)
}

fn take(b: &mut Boot, line: &str, started: Option<Instant>) {
    b.log.push_str(line);
    b.log.push('\n');
    // The console's escape sequences and kernel messages may share a line with a marker.
    if let Some(step) = line.find("FERRY-STEP ").map(|i| line[i + 11..].trim()) {
        // A line the cut broke off may hold no name.
        if !step.is_empty() {
            b.steps.push(step.to_string());
        }
    }
    if let Some(rest) = line.find("FERRY-VM ").map(|i| line[i + 9..].trim_end()) {
        let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
        if key == "update" || key == "update-failed" {
            b.update_seconds = started.map(|s| s.elapsed().as_secs_f64());
        }
        b.markers.insert(key.to_string(), value.to_string());
    }
}

fn json(b: &Boot, key: &str) -> Result<Value> {
    let v = b.markers.get(key).ok_or_else(|| anyhow!("the boot printed no {key}; its console:\n{}", b.log))?;
    serde_json::from_str(v).with_context(|| format!("{key}: {v}"))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn seconds(at: Option<f64>) -> String {
    at.map_or("  (no cut)".to_string(), |a| format!("at {a:5.2} s"))
}

/// One cut's outcome, for the report.
struct Cut {
    /// Seconds from the update's start to the cut (none: it was not cut).
    at: Option<f64>,
    step: String,
    outcome: Result<String, String>,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<bool> {
    let args = Args::parse();
    let soak = std::env::var_os("FERRY_VM_SOAK").is_some();
    let cuts = args.cuts.unwrap_or(if soak { 300 } else { 10 });
    let seed = args.seed.unwrap_or_else(|| now() as u64 ^ u64::from(std::process::id()));
    which("qemu-system-x86_64")?;
    if args.uboot && !Path::new(UBOOT_ROM).is_file() {
        bail!("{UBOOT_ROM} is missing: install u-boot-qemu (scripts/vmtest installs what the harness needs)");
    }
    let (vmlinuz, modules) = kernel()?;
    let ferryd = ferry_publisher::image::find_ferryd()?;
    let work = cache_dir().join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = campaign(&args, cuts, seed, &vmlinuz, &modules, &ferryd, &work);
    if result.as_ref().is_ok_and(|ok| *ok) {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("the run's files are kept in {}", work.display());
    }
    result
}

fn campaign(
    args: &Args,
    cuts: u32,
    seed: u64,
    vmlinuz: &Path,
    modules: &Path,
    ferryd: &Path,
    work: &Path,
) -> Result<bool> {
    let initrd = work.join("initrd.cpio");
    initramfs(modules, &initrd)?;
    let loader = match (args.grub, args.uboot) {
        (true, _) => Some(Loader::Grub),
        (_, true) => Some(Loader::Uboot),
        _ => None,
    };

    // The repository: keys, releases 1 and 2 for rev-a, channel stable at 1.
    let repo_path = work.join("repo");
    let repo = Repository::init(&repo_path, &RepoConfig::new(ChunkParams::default(), 3))?;
    let (root, ci, chan) = (ferry_fixtures::test_key(10), ferry_fixtures::test_key(1), ferry_fixtures::test_key(11));
    root.save(&work.join("root.key"))?;
    let change = KeyChange {
        roots: Some(vec![root.public()]),
        commit_keys: Some(vec![ci.public()]),
        channel_keys: Some(vec![chan.public()]),
    };
    channels::set_keys(&repo, &[root], change, now())?;
    let mut commits = Vec::new();
    let broken = work.join("broken-initrd.cpio");
    if loader.is_some() {
        broken_initramfs(&broken)?;
    }
    // With a bootloader each release carries its kernel and initramfs (the bootloader loads
    // them from the deployment); release 3's init fails, and release 4's kernel is damaged.
    // Releases after the first reboot to be tried.
    for v in 1..=(if loader.is_some() { 4 } else { 2 }) {
        let tree = work.join(format!("tree-{v}"));
        ferry_fixtures::generate(&ferry_fixtures::TreeSpec { seed: 7, size: args.tree_mib << 20, version: v }, &tree)?;
        std::fs::create_dir_all(tree.join("app"))?;
        // The application: it says once a second that it runs, and which release it is; the
        // trial's health check asks whether the running one is the release on trial.
        std::fs::write(tree.join("app/version"), format!("1.{v}.0\n"))?;
        std::fs::write(
            tree.join("app/run"),
            "cd \"$(dirname \"$0\")\" || exit 1\nversion=\"$(cat version)\"\nwhile :; do echo \"$version\" > /run/app.alive.tmp && mv /run/app.alive.tmp /run/app.alive; sleep 1; done\n",
        )?;
        std::fs::write(tree.join("app/check"), "[ \"$(cat /run/app.alive 2>/dev/null)\" = \"$(cat app/version)\" ]\n")?;
        let mut metadata = BTreeMap::new();
        if loader.is_some() {
            std::fs::create_dir_all(tree.join("boot"))?;
            if v == 4 {
                let mut kernel = std::fs::read(vmlinuz)?;
                // A damaged download would be caught by its hash: this is a release built
                // with a kernel that cannot start (its boot header overwritten).
                kernel[..4096].fill(0x5a);
                std::fs::write(tree.join("boot/vmlinuz"), kernel)?;
            } else {
                std::fs::copy(vmlinuz, tree.join("boot/vmlinuz"))?;
            }
            std::fs::copy(if v == 3 { &broken } else { &initrd }, tree.join("boot/initrd.img"))?;
            if v > 1 {
                metadata.insert("reboot".to_string(), "required".to_string());
            }
        }
        let req = CommitRequest {
            hardware: vec!["rev-a".into()],
            metadata,
            ..CommitRequest::new(tree, "main", format!("1.{v}.0").parse()?, &ci)
        };
        commits.push(commit_tree(&repo, &req, &NoProgress)?.commit.parse::<Id>()?);
    }
    let promote = |commit: Id| -> Result<()> {
        let p = Promotion {
            to: "stable".into(),
            commit: Some(commit),
            from: None,
            hardware: Vec::new(),
            key: &chan,
            expires_in: 30 * 86400,
            rollback: false,
            force: false,
            now: now(),
        };
        channels::promote(&repo, &p)?;
        Ok(())
    };
    promote(commits[0])?;

    // The server, in a runtime of its own.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (atx, arx) = mpsc::channel();
    let (repo2, scratch) = (repo_path.clone(), work.join("serve-scratch"));
    rt.spawn(async move {
        let config = ferry_publisher::serve::ServeConfig::default();
        let r = ferry_publisher::serve::serve_with(
            repo2,
            scratch,
            "127.0.0.1:0".parse().expect("an address"),
            &config,
            move |a| {
                let _ = atx.send(a);
            },
            std::future::pending(),
        )
        .await;
        if let Err(e) = r {
            eprintln!("error: the server stopped: {e:#}");
        }
    });
    let addr = arx.recv_timeout(Duration::from_secs(30)).context("the server did not start")?;

    // The disk: the root file system and Ferry's state with release 1, built by ferry image.
    let overlay = work.join("overlay");
    std::fs::create_dir_all(&overlay)?;
    let root_pub = work.join("root.key.pub");
    let first = commits[0].to_hex();
    let state = if loader.is_some() { "/ferry" } else { "/var/lib/ferry" };
    rootfs_overlay(&overlay, ferryd, &root_pub, &format!("{state}/current"), loader.map(|l| (l, first.as_str())))?;
    let device_config = work.join("ferryd.toml");
    // With a bootloader: the state where its script looks (/ferry/deploy on the partition),
    // a trial that only `mark-good` ends (nothing marks it: the bootloader must roll back),
    // and a reboot that is a power-off (the harness boots again).
    let bootloader = match loader {
        Some(Loader::Grub) => "kind = \"grub\"\ngrubenv = \"/boot/grub/grubenv\"",
        Some(Loader::Uboot) => "kind = \"uboot\"\nfw_config = \"/etc/fw_env.config\"",
        None => "",
    };
    let trial = if loader.is_some() {
        format!("reboot_command = \"sync; poweroff -f\"\n\n[bootloader]\n{bootloader}\n\n[health]\nrequire_mark_good = true\ndeadline = 3600\nbootlimit = 2\n")
    } else {
        "restart_command = \"/sbin/app-restart\"\n\n[health]\ncommands = [\"sh app/check\"]\ndeadline = 120\ninterval = 1\n"
            .to_string()
    };
    std::fs::write(
        &device_config,
        format!(
            "server = \"http://10.0.2.2:{port}\"\nchannel = \"stable\"\nroot_keys = [\"/etc/ferry/root.pub\"]\nstate_dir = \"{state}\"\ncurrent_link = \"{state}/current\"\nhardware = \"rev-a\"\nretries = 2\nread_timeout = 20\nbatch_bytes = 4194304\n{trial}",
            port = addr.port()
        ),
    )?;
    let base = work.join("base.img");
    let part = work.join("part.img");
    let image = ferry_publisher::image::build(
        &repo,
        &ferry_publisher::image::ImageRequest {
            commit: commits[0],
            hardware: "rev-a".into(),
            out: work.join("image"),
            device_config,
            config_path: "/etc/ferry/ferryd.toml".into(),
            overlays: vec![overlay],
            raw: Some((if loader.is_some() { part.clone() } else { base.clone() }, 512 << 20)),
            ferryd: ferryd.to_path_buf(),
        },
    )?;
    if let Some(l) = loader {
        boot_disk(l, &part, &base, &first)?;
    }
    eprintln!("disk image: release {} ({} files), {}", image.version, image.files, base.display());
    if let Some(l) = loader {
        let ok = bootloader_scenarios(l, &base, work, &commits, &promote);
        rt.shutdown_background();
        return ok;
    }
    promote(commits[1])?;
    let (v1, v2) = (commits[0].to_hex(), commits[1].to_hex());

    // Calibration: one update without a cut, for its length and its downloads.
    let disk = work.join("disk.img");
    std::fs::copy(&base, &disk)?;
    let started = Instant::now();
    let start = Start::Direct { kernel: vmlinuz, initrd: &initrd };
    let calm = boot(start, &disk, None)?;
    let full = json(&calm, "update").context("the uncut update")?;
    if full["to"] != v2.as_str()
        || calm.markers.get("fsck-after").map(String::as_str) != Some("ok")
        || calm.markers.get("app-after").map(String::as_str) != Some("1.2.0")
    {
        bail!("the uncut update did not reach release 2 cleanly; console:\n{}", calm.log);
    }
    let window = calm.update_seconds.ok_or_else(|| anyhow!("no update time"))?;
    let calm_steps = calm.steps.len();
    let needed = full["chunks_downloaded"].as_u64().unwrap_or(0);
    eprintln!(
        "uncut boot: {:.1} s in all, update {:.1} s, {} chunks ({} bytes) downloaded; cutting {cuts} times (seed {seed})",
        started.elapsed().as_secs_f64(),
        window,
        needed,
        full["bytes_downloaded"]
    );

    let mut rng = Rng::new(seed);
    let mut results = Vec::new();
    for i in 0..cuts {
        std::fs::copy(&base, &disk)?;
        // Every other cut is aimed at a random durable step, a few milliseconds after it;
        // the others fall at a random time from the update's first request to after its
        // trial (the window plus a margin).
        let aim = if i % 2 == 1 && calm_steps > 0 {
            let n = 1 + rng.below(calm_steps as u64) as usize;
            CutAt::Step { n, delay: Duration::from_secs_f64(rng.next_f64() * 0.03) }
        } else {
            CutAt::Time(Duration::from_secs_f64(rng.next_f64() * window * 1.05))
        };
        // The disk under the cut has a volatile write cache (nbd.rs): at the cut, each write
        // not yet flushed is lost or kept at random.
        let cache = nbd::Disk::open(&disk)?;
        let port = nbd::serve(cache.clone())?;
        let cut = boot_drive(start, &format!("file=nbd://127.0.0.1:{port},format=raw,if=virtio"), Some(aim))?;
        let at = cut.cut_after;
        let aimed = match aim {
            CutAt::Time(_) => "at a random time".to_string(),
            CutAt::Step { n, delay } => format!("{} ms after step {n}", delay.as_millis()),
        };
        cache.cut(|| rng.next_f64() < 0.5)?;
        let lost = *cache.stats.lock().unwrap_or_else(|e| e.into_inner());
        drop(cache);
        let step = match (cut.killed, cut.steps.last()) {
            (false, _) => "not cut: the update finished first".to_string(),
            (true, None) => "before the first durable step".to_string(),
            (true, Some(s)) => format!("after {s} (step {})", cut.steps.len()),
        };
        let step = format!("{step}, aimed {aimed}");
        let step = if cut.killed {
            format!(
                "{step}; {} of {} unflushed writes lost ({} writes, {} flushes)",
                lost.lost_at_cut, lost.pending_at_cut, lost.writes, lost.flushes
            )
        } else {
            step
        };
        let outcome = check_after_cut(start, &disk, &v1, &v2, needed);
        match &outcome {
            Ok(m) => eprintln!("cut {:>3}/{cuts} {}, {step}: survived; {m}", i + 1, seconds(at)),
            Err(e) => eprintln!("cut {:>3}/{cuts} {}, {step}: FAILED: {e}", i + 1, seconds(at)),
        }
        results.push(Cut { at, step, outcome: outcome.map_err(|e| format!("{e:#}")) });
    }
    let survived = results.iter().filter(|r| r.outcome.is_ok()).count();
    let mut report = format!(
        "| cut | at (s) | where it landed | outcome |\n|---|---|---|---|\n{}\n{survived} of {} cuts survived (seed {seed}; update window {window:.1} s; {needed} chunks for a full update).\n",
        results
            .iter()
            .enumerate()
            .map(|(i, r)| format!(
                "| {} | {} | {} | {} |",
                i + 1,
                r.at.map_or("-".to_string(), |a| format!("{a:.2}")),
                r.step,
                match &r.outcome {
                    Ok(m) => format!("ok: {m}"),
                    Err(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
                }
            ))
            .collect::<Vec<_>>()
            .join("\n"),
        results.len()
    );
    let mut by_step: BTreeMap<String, usize> = BTreeMap::new();
    for r in &results {
        let key = r.step.split(['(', ';', ',']).next().unwrap_or(&r.step).trim().to_string();
        *by_step.entry(key).or_default() += 1;
    }
    report.push_str(&format!(
        "Where the cuts landed: {}.\n",
        by_step.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
    ));
    print!("{report}");
    std::io::stdout().flush()?;
    if let Some(path) = &args.report {
        std::fs::write(path, &report)?;
    }
    rt.shutdown_background();
    Ok(survived == results.len())
}

/// Boots the cut disk again and checks what the issue asks: it boots, every deployment is
/// complete, `current` is release 1 or 2, and the update then reaches release 2 without
/// downloading more than what was not durably staged.
fn check_after_cut(start: Start<'_>, disk: &Path, v1: &str, v2: &str, needed: u64) -> Result<String> {
    let b = boot(start, disk, None)?;
    if !b.markers.contains_key("up") {
        bail!("the device did not boot; console:\n{}", b.log);
    }
    match b.markers.get("fsck-before").map(String::as_str) {
        Some("ok") => {}
        other => bail!("fsck after the cut: {}", other.unwrap_or("not run")),
    }
    let before = json(&b, "status-before")?;
    let current = before["current"]["commit"].as_str().unwrap_or("none");
    if current != v1 && current != v2 {
        bail!("after the cut the device runs {current}, neither release 1 nor 2");
    }
    let staged = before["staged_chunks"].as_u64().unwrap_or(0);
    let update = match json(&b, "update") {
        Ok(u) => u,
        Err(_) => {
            bail!("the update after the cut failed: {}", b.markers.get("update-failed").cloned().unwrap_or_default())
        }
    };
    if update["to"] != v2 {
        bail!("the update after the cut went to {}, not release 2", update["to"]);
    }
    match b.markers.get("fsck-after").map(String::as_str) {
        Some("ok") => {}
        other => bail!("fsck after the update: {}", other.unwrap_or("not run")),
    }
    // The application running at the end is release 2's (restarted after the switch).
    match b.markers.get("app-after").map(String::as_str) {
        Some("1.2.0") => {}
        other => bail!("after the update the application running is {:?}, not release 2's", other.unwrap_or("none")),
    }
    let downloaded = update["chunks_downloaded"].as_u64().unwrap_or(0);
    // Staged chunk files whose bytes the cut lost (the agent verifies them, discards them
    // and says so) were not durably stored: they may be downloaded again.
    let damaged = b.log.matches("discarding a damaged staged chunk").count() as u64;
    let durable = staged.saturating_sub(damaged);
    if current == v1 && downloaded + durable.min(needed) > needed {
        bail!(
            "the update downloaded {downloaded} chunks although {durable} of the {needed} it needs were staged intact before the cut"
        );
    }
    Ok(format!(
        "ran {} after the cut, {staged} chunks staged{}, then {downloaded} downloaded",
        if current == v1 { "release 1" } else { "release 2" },
        if damaged > 0 { format!(" ({damaged} of them damaged by the cut)") } else { String::new() }
    ))
}

/// The bootloader runs: from release 1, the device updates to a release and reboots into it;
/// the release never marks itself good (2), its kernel's init fails (3), or its kernel cannot
/// start (4). The harness boots
/// the disk again and again (each power-off or kernel panic ends a boot) until the bootloader
/// itself boots release 1 again, which must happen after exactly `bootlimit` (2) boots of
/// the new release; then the device must run release 1, with the release recorded as bad and
/// the rollback's reason naming the bootloader.
fn bootloader_scenarios(
    loader: Loader,
    base: &Path,
    work: &Path,
    commits: &[Id],
    promote: &dyn Fn(Id) -> Result<()>,
) -> Result<bool> {
    let name = loader.name();
    let start = Start::Firmware(match loader {
        Loader::Grub => None,
        Loader::Uboot => Some(Path::new(UBOOT_ROM)),
    });
    let deploy_of = |b: &Boot| -> Option<String> {
        let cmdline = b.markers.get("cmdline")?;
        cmdline.split_whitespace().find_map(|w| w.strip_prefix("ferry.deploy=")).map(str::to_string)
    };
    let mut all_ok = true;
    for (release, what) in [
        (1usize, "a release that never marks itself good"),
        (2, "a release whose init fails (kernel panic)"),
        (3, "a release whose kernel cannot start"),
    ] {
        let (v1, new) = (commits[0].to_hex(), commits[release].to_hex());
        promote(commits[release])?;
        let disk = work.join(format!("boot-{release}.img"));
        std::fs::copy(base, &disk)?;
        let mut on_new = 0;
        let mut outcome: Result<String> = Err(anyhow!("{name} never went back to release 1 within 8 boots"));
        for n in 1..=8 {
            let b = boot(start, &disk, None)?;
            let deploy = deploy_of(&b);
            // A boot of the new release: its system came up, its init failed, or the
            // bootloader could not start its kernel.
            // (GRUB's terminal wraps long lines: search the console without its white space.)
            let flat: String = b.log.chars().filter(|c| !c.is_whitespace() && !c.is_control()).collect();
            let failed = flat.contains("FERRY-VMbroken-init") || flat.contains(&format!("couldnotstart{new}"));
            if failed || deploy.as_deref() == Some(new.as_str()) {
                on_new += 1;
                continue;
            }
            if n == 1 {
                // The first boot runs release 1 and updates (then powers off to reboot).
                if deploy.as_deref() != Some(v1.as_str()) {
                    outcome = Err(anyhow!("the first boot ran {deploy:?}, not release 1; console:\n{}", b.log));
                    break;
                }
                continue;
            }
            // Back on release 1: the bootloader chose it; the boot check recorded why.
            let status = json(&b, "status-after")?;
            let reason = status["last_rollback"]["reason"].as_str().unwrap_or("");
            let bad = status["bad_commits"].as_array().is_some_and(|a| a.iter().any(|c| c == new.as_str()));
            outcome = if deploy.as_deref() != Some(v1.as_str()) {
                Err(anyhow!("boot {n} ran {deploy:?}; console:\n{}", b.log))
            } else if loader == Loader::Uboot && !flat.contains("withoutbeingmarkedgood") {
                Err(anyhow!("boot {n} ran release 1, but not by boot.cmd's fallback; console:\n{}", b.log))
            } else if on_new != 2 {
                Err(anyhow!("{name} went back after {on_new} boots of the new release, not bootlimit (2)"))
            } else if status["current"]["commit"] != v1.as_str() || !bad || !reason.contains("bootloader fell back") {
                Err(anyhow!("after {name}'s fallback the device is not settled on release 1: {status}"))
            } else {
                Ok(format!(
                    "{on_new} boots of the new release, then {name} booted release 1; the device recorded: {reason}"
                ))
            };
            break;
        }
        match &outcome {
            Ok(m) => println!("{name}, {what}: rolled back. {m}"),
            Err(e) => {
                all_ok = false;
                println!("{name}, {what}: FAILED: {e:#}");
            }
        }
    }
    Ok(all_ok)
}
