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
//! installed), an initramfs that loads the virtio and overlay modules, mounts the disk's
//! partition and runs the shipped `boot-integration/prepare-root/ferry-prepare-root`, which
//! mounts the deployment to boot as `/` (read-only, with /var, /etc's overrides and the
//! partition at /sysroot); then it switches to the deployment's init. Every release is a
//! whole root file system: busybox, `ferryd` with its libraries, the init script, the
//! application and the generated payload. The partition, made by `ferry image`, holds
//! Ferry's state under /var/lib/ferry (the release deployed), ferryd's configuration and the
//! root key in etc/, and the bootloader's files. Each boot prints which deployment is its
//! root, and the harness requires it to be the one booted (the current link's, or the one the
//! bootloader chose), read-only. Each boot runs `ferryd boot-check`, starts the application (a script in
//! the release; ferryd restarts it after a switch, and the trial checks the running one is
//! the release on trial), then `fsck`, `status`, the daemon (`ferryd run --json`) until its
//! first check has ended, `fsck`, printing `FERRY-VM` lines on the serial console, and
//! powers off; `FERRYD_TRACE_STEPS` makes the agent print each durable step, so the report
//! says where every cut landed.
//!
//! With `--grub` it boots through the real GRUB instead: an MBR with GRUB's boot.img, a
//! core.img from grub-mkimage, and the shipped `boot-integration/grub/ferry.cfg` choosing the
//! deployment (whose kernel and initramfs it loads from /var/lib/ferry/deploy on the
//! partition) from the environment block ferryd writes with grub-editenv (at
//! /sysroot/boot/grub/grubenv in the running system). A release that never marks itself good, one whose init fails
//! (the kernel panics), and one whose kernel cannot start (the bootloader cannot load it)
//! must each be rolled back by GRUB after `bootlimit` boots.
//! `--uboot` does the same through the real U-Boot: Debian's `qemu-x86` build as the
//! machine's firmware, and the shipped `boot-integration/uboot/boot.cmd` after the board's
//! lines (`boards/qemu-x86.cmd`), with the environment in a raw area of the disk that ferryd
//! writes with fw_setenv.
//!
//! `--arch aarch64` runs the power cuts and the U-Boot run on an aarch64 guest:
//! `qemu-system-aarch64 -M virt -cpu cortex-a57`, Debian's arm64 cloud kernel, busybox and
//! fw_setenv (downloaded from deb.debian.org into `~/.cache/ferry-vm-arm64`, never
//! installed), the aarch64 ferryd from `scripts/cross` (`--guest-ferryd`), and for
//! `--uboot` Debian's `qemu_arm64` U-Boot with `boards/qemu-arm64.cmd`; `arch.rs` holds all
//! that differs (`scripts/vmtest-arm64` runs both).
//!
//! Where things are: `harness` runs one mode over a `rig` (the repository, the server, the
//! disk) built from the `host`'s kernel and tools and the `guest`'s software (its scripts are
//! in `vmtest/guest/`), for the guest architecture `arch` describes (QEMU's machine, console,
//! kernel package, modules, U-Boot build: the one place an aarch64 guest changes); `qemu`
//! boots the device; `powercut` cuts and checks, with `nbd` under
//! the disk, and `report` prints the outcome; `bootloader` holds the GRUB and U-Boot runs.
//! This file only reads the arguments.
//!
//! Usage: `ferry-vmtest [--cuts N] [--seed S] [--report FILE]`, `ferry-vmtest --grub` or
//! `ferry-vmtest --uboot` (the first and the last also with `--arch aarch64 --guest-ferryd
//! FILE`); `FERRY_VM_SOAK=1` makes the default 300 cuts instead of 10. Needs
//! qemu-system-x86_64, busybox-static, grub-pc-bin, u-boot-qemu, u-boot-tools and
//! libubootenv-tool (`scripts/vmtest` installs them); the kernel package is
//! fetched with `apt-get download`. KVM is not used by default (`FERRY_VM_ACCEL=kvm` to try
//! it): nested KVM on this machine hangs the guest.

use std::path::PathBuf;

use clap::Parser;

mod arch;
mod bootloader;
mod cpio;
mod guest;
mod harness;
mod host;
mod nbd;
mod powercut;
mod qemu;
mod report;
mod rig;

use bootloader::Loader;
use harness::Mode;

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
    /// The guest's architecture: x86_64 (the host's), or aarch64 (`qemu-system-aarch64 -M
    /// virt`, Debian's arm64 packages, U-Boot's qemu_arm64 build and boards/qemu-arm64.cmd;
    /// no GRUB run).
    #[arg(long, value_enum, default_value = "x86_64")]
    arch: arch::Name,
    /// The agent the guest runs, for aarch64 (`scripts/cross aarch64-unknown-linux-gnu
    /// --ferryd-only --dev` builds it; default: $FERRY_VM_GUEST_FERRYD). The host's ferryd
    /// still seeds the disk image.
    #[arg(long, value_name = "FILE", env = "FERRY_VM_GUEST_FERRYD")]
    guest_ferryd: Option<PathBuf>,
    /// Size of the release trees, in MiB.
    #[arg(long, default_value_t = 24)]
    tree_mib: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.grub && args.arch != arch::Name::X86_64 {
        eprintln!("error: --grub runs on x86_64 only (GRUB's i386-pc boot)");
        return std::process::ExitCode::from(2);
    }
    arch::choose(args.arch, args.guest_ferryd.clone());
    let mode = if args.grub {
        Mode::Bootloader(Loader::Grub)
    } else if args.uboot {
        Mode::Bootloader(Loader::Uboot)
    } else {
        let soak = std::env::var_os("FERRY_VM_SOAK").is_some();
        Mode::PowerCuts(powercut::Plan {
            cuts: args.cuts.unwrap_or(if soak { 300 } else { 10 }),
            seed: args.seed.unwrap_or_else(|| host::now() as u64 ^ u64::from(std::process::id())),
            report: args.report,
        })
    };
    match harness::run(&mode, args.tree_mib) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
