//! What the guest's architecture decides, in one place: QEMU's emulator and machine, the
//! serial console, Debian's kernel package, the modules the initramfs loads, the name of the
//! kernel in a release's `boot/`, and the U-Boot build with its board's lines; for a guest
//! that is not the host's (aarch64), where its busybox, kernel, agent, libraries and
//! fw_setenv come from. The harness boots `GUEST` (x86_64 unless `--arch` chose another).
//! GRUB runs are x86 (BIOS) only.
//!
//! x86_64 takes the host's own busybox, fw_setenv, ferryd and libraries (`ldd`), and the
//! kernel with `apt-get download`. aarch64 runs `qemu-system-aarch64 -M virt -cpu
//! cortex-a57` (the `max` CPU is three times slower under TCG); its guest software comes
//! from Debian's arm64 packages, downloaded from deb.debian.org into the cache
//! (`~/.cache/ferry-vm-arm64/debs`) and unpacked there, never installed (dpkg has no arm64
//! architecture here, so `apt-get download` cannot name them): the cloud kernel, whose
//! vmlinuz is an uncompressed arm64 Image that booti and QEMU's `-kernel` start directly,
//! busybox-static, and libubootenv-tool with its libraries. The agent is the aarch64 build
//! of `scripts/cross` (`--guest-ferryd`; the host's ferryd still seeds the image), and its
//! libraries are listed here from the cross toolchain's (`ldd` cannot read an aarch64
//! binary). The power-cut runs boot the kernel directly (QEMU's `-kernel`) on both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use crate::host::{run, which};

/// A guest architecture.
#[derive(Debug)]
pub struct Arch {
    /// QEMU's system emulator, and the arguments that choose its machine.
    pub qemu: &'static str,
    pub machine: &'static [&'static str],
    /// The serial console the guest prints its markers on, as the kernel names it.
    pub console: &'static str,
    /// Debian's kernel metapackage (the package it depends on is fetched into the cache).
    pub kernel_package: &'static str,
    /// The kernel image in that package's /boot, by the start of its name.
    pub kernel_prefix: &'static str,
    /// The kernel's name in a release's `boot/`, where the bootloader's script loads it.
    pub release_kernel: &'static str,
    /// The kernel modules the initramfs loads, in order: to reach the disk and the network,
    /// and overlayfs for /etc (ferry-prepare-root).
    pub modules: &'static [&'static str],
    /// Debian's U-Boot build for the machine (the firmware of a `--uboot` run), mkimage's
    /// `-A`, and the board's lines in `boot-integration/uboot/boards/`.
    pub uboot_rom: &'static str,
    pub uboot_arch: &'static str,
    pub uboot_board: &'static str,
    /// Where the board's lines keep the U-Boot environment on the disk, and its size (what
    /// the guest's fw_env.config says too).
    pub uboot_env: (u64, u64),
    /// The cache directory's name under ~/.cache (the kernel, the packages, the runs), or
    /// under `FERRY_VM_CACHE` ("" for that directory itself).
    pub cache_name: &'static str,
    pub cache_subdir: &'static str,
    /// Whether the guest's software is the host's (busybox, fw_setenv, ferryd, the libraries
    /// `ldd` names), or Debian's packages for the guest and `--guest-ferryd`.
    pub host_software: bool,
}

/// QEMU's PC with Debian's cloud kernel.
pub const X86_64: Arch = Arch {
    qemu: "qemu-system-x86_64",
    machine: &[],
    console: "ttyS0",
    kernel_package: "linux-image-cloud-amd64",
    kernel_prefix: "vmlinuz-",
    release_kernel: "vmlinuz",
    modules: &[
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "virtio_blk",
        "failover",
        "net_failover",
        "virtio_net",
        "overlay",
    ],
    // The 32-bit build: the 64-bit one does not start Linux.
    uboot_rom: "/usr/lib/u-boot/qemu-x86/u-boot.rom",
    uboot_arch: "x86",
    uboot_board: "qemu-x86.cmd",
    uboot_env: (0x80000, 0x4000),
    cache_name: "ferry-vm",
    cache_subdir: "",
    host_software: true,
};

/// QEMU's arm64 `virt` machine with Debian's arm64 cloud kernel (its vmlinuz is an Image).
pub const AARCH64: Arch = Arch {
    qemu: "qemu-system-aarch64",
    machine: &["-M", "virt", "-cpu", "cortex-a57"],
    console: "ttyAMA0",
    kernel_package: "linux-image-cloud-arm64",
    kernel_prefix: "vmlinuz-",
    release_kernel: "Image",
    modules: &[
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "virtio_blk",
        "failover",
        "net_failover",
        "virtio_net",
        "overlay",
    ],
    uboot_rom: "/usr/lib/u-boot/qemu_arm64/u-boot.bin",
    uboot_arch: "arm64",
    uboot_board: "qemu-arm64.cmd",
    uboot_env: (0x80000, 0x4000),
    cache_name: "ferry-vm-arm64",
    cache_subdir: "arm64",
    host_software: false,
};

/// The architecture `--arch` names.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Name {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

static CHOSEN: OnceLock<(&'static Arch, Option<PathBuf>)> = OnceLock::new();

/// Chooses the run's architecture and, for aarch64, the agent the guest runs; once, before
/// anything reads `GUEST`.
pub fn choose(name: Name, guest_ferryd: Option<PathBuf>) {
    let arch = match name {
        Name::X86_64 => &X86_64,
        Name::Aarch64 => &AARCH64,
    };
    let _ = CHOSEN.set((arch, guest_ferryd));
}

/// The architecture the harness boots: `GUEST.qemu` and so on.
pub static GUEST: Guest = Guest;

/// The chosen `Arch` (x86_64 unless `choose` said otherwise).
pub struct Guest;

impl std::ops::Deref for Guest {
    type Target = Arch;
    fn deref(&self) -> &Arch {
        CHOSEN.get().map_or(&X86_64, |c| c.0)
    }
}

/// Debian's arm64 cloud kernel: the package the harness fetches, one constant (what
/// linux-image-cloud-arm64 named in bookworm-security on 2026-12-07), with its SHA-256.
const ARM64_KERNEL_DEB: Deb = Deb {
    url: "http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-arm64/linux-image-6.1.0-57-cloud-arm64_6.1.192-3_arm64.deb",
    sha256: "51952bf54e96b0bc6263fb51a47b79e206dca0213cd5421162bc55cddbd6e51e",
};
/// busybox-static, and fw_printenv/fw_setenv with their libraries, for arm64.
const ARM64_BUSYBOX_DEB: Deb = Deb {
    url: "http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_arm64.deb",
    sha256: "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5",
};
const ARM64_UBOOTENV_DEBS: &[Deb] = &[
    Deb {
        url: "http://deb.debian.org/debian/pool/main/libu/libubootenv/libubootenv-tool_0.3.2-1_arm64.deb",
        sha256: "7b5f8ddf9c053ac51004d933e2adf036930dbdc6776ae272e57169fd2f8a3a40",
    },
    Deb {
        url: "http://deb.debian.org/debian/pool/main/libu/libubootenv/libubootenv0.1_0.3.2-1_arm64.deb",
        sha256: "f182963ee98d09b311dab2bd5813fdaf5b499cd2cc2d9b62cc9aee57156a3dc8",
    },
    Deb {
        url: "http://deb.debian.org/debian-security/pool/updates/main/z/zlib/zlib1g_1.2.13.dfsg-1+deb12u1_arm64.deb",
        sha256: "61477d8059daf1765683a73099cc17941e1970acb520fd238646dedf99eb16f6",
    },
];
/// A package from Debian's pool, fetched over plain HTTP (as apt does) and trusted only when
/// its SHA-256 is the one written here.
#[derive(Debug, Clone, Copy)]
struct Deb {
    url: &'static str,
    sha256: &'static str,
}

impl Deb {
    fn name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.url)
    }
}
/// The cross toolchain's libraries, which the aarch64 ferryd loads.
const AARCH64_LIBDIR: &str = "/usr/aarch64-linux-gnu/lib";
const AARCH64_LIBS: &[&str] = &["ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1"];

impl Arch {
    /// A statically linked busybox for the guest: the host's (busybox-static), or arm64's
    /// from its package.
    pub fn busybox(&self) -> Result<PathBuf> {
        if self.host_software {
            return which("busybox");
        }
        Ok(unpacked("busybox", &[ARM64_BUSYBOX_DEB])?.join("bin/busybox"))
    }

    /// The agent the guest runs: the host's (`host_ferryd`, which also seeds the image), or
    /// the aarch64 build given with `--guest-ferryd`.
    pub fn guest_ferryd(&self, host_ferryd: &Path) -> Result<PathBuf> {
        if self.host_software {
            return Ok(host_ferryd.to_path_buf());
        }
        let p = CHOSEN.get().and_then(|c| c.1.clone()).ok_or_else(|| {
            anyhow!("--arch aarch64 needs --guest-ferryd (scripts/cross aarch64-unknown-linux-gnu --ferryd-only --dev builds it)")
        })?;
        if !p.is_file() {
            bail!("the guest's ferryd {} is missing", p.display());
        }
        Ok(p)
    }

    /// fw_setenv and fw_printenv for the guest (ferryd's U-Boot backend runs them).
    pub fn fw_tools(&self) -> Result<(PathBuf, PathBuf)> {
        if self.host_software {
            return Ok((which("fw_setenv")?, which("fw_printenv")?));
        }
        let dir = ubootenv()?;
        Ok((dir.join("usr/bin/fw_setenv"), dir.join("usr/bin/fw_printenv")))
    }

    /// For a guest whose software is not the host's, puts the libraries its binaries load on
    /// the root file system `dir`: the cross toolchain's in /lib, and libubootenv's and
    /// zlib's at their packages' multiarch paths. (The host's: `ldd` names them, guest.rs.)
    pub fn install_libraries(&self, dir: &Path) -> Result<()> {
        if self.host_software {
            return Ok(());
        }
        std::fs::create_dir_all(dir.join("lib"))?;
        for l in AARCH64_LIBS {
            let from = Path::new(AARCH64_LIBDIR).join(l);
            let real = from.canonicalize().with_context(|| format!("{}: install libc6-arm64-cross", from.display()))?;
            std::fs::copy(real, dir.join("lib").join(l))?;
        }
        let env = ubootenv()?;
        for sub in ["lib", "usr/lib"] {
            if env.join(sub).is_dir() {
                run(Command::new("cp").arg("-a").arg(env.join(sub)).arg(dir.join(sub).parent().unwrap_or(dir)))?;
            }
        }
        Ok(())
    }
}

/// For a guest whose software is not the host's: fetches Debian's kernel package from
/// deb.debian.org (this machine's apt has no arm64) and unpacks it to `dir`; false for the
/// host's architecture (host.rs then uses `apt-get download`).
pub fn fetch_foreign_kernel(cache: &Path, dir: &Path) -> Result<bool> {
    if GUEST.host_software {
        return Ok(false);
    }
    let deb = arm64_kernel_deb(&cache.join("debs"))?;
    let tmp = cache.join("kernel.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::rename(&tmp, dir)?;
    Ok(true)
}

/// Downloads `deb` into `debs` unless it is there; the file. The download is checked against
/// the pinned SHA-256 before it takes the package's name, so the cache holds only packages
/// that were checked (a mirror or a network that serves other bytes is refused, by name).
fn download(debs: &Path, deb: Deb) -> Result<PathBuf> {
    let f = debs.join(deb.name());
    if !f.is_file() {
        std::fs::create_dir_all(debs)?;
        let tmp = debs.join(format!("{}.tmp", deb.name()));
        let fetched = run(Command::new("curl")
            .args(["-sSfL", "--retry", "2", "--connect-timeout", "20", "--max-time", "900"])
            .args(["--max-filesize", &MAX_DEB_LEN.to_string(), "-o"])
            .arg(&tmp)
            .arg(deb.url))
        .with_context(|| format!("downloading {}", deb.url))
        .and_then(|_| check_download(&tmp, deb, MAX_DEB_LEN));
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &f)?;
    }
    Ok(f)
}

/// The largest package the harness downloads (the kernel's is 21 MB): curl stops a larger
/// one when the server says its size, and [`check_download`] refuses it when it does not.
const MAX_DEB_LEN: u64 = 64 << 20;

/// Refuses a downloaded `file` longer than `max_len` or whose SHA-256 is not `deb`'s pin,
/// reading it a piece at a time.
fn check_download(file: &Path, deb: Deb, max_len: u64) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    if len > max_len {
        bail!("{} is {len} bytes, more than the {max_len} a package may be: refused", deb.url);
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(buf.get(..n).unwrap_or_default());
    }
    let got = hex::encode(digest.finish());
    if got != deb.sha256 {
        bail!("{} has SHA-256 {got}, not the {} vmtest/src/arch.rs pins: refused", deb.url, deb.sha256);
    }
    Ok(())
}

/// The arm64 kernel package, ARM64_KERNEL_DEB, downloaded into `debs` unless it is there.
/// (deb.debian.org serves no listing of its pool directories, and the harness reads no
/// package index: when Debian's security archive drops this version, the error says which
/// constant to change.)
fn arm64_kernel_deb(debs: &Path) -> Result<PathBuf> {
    download(debs, ARM64_KERNEL_DEB).with_context(|| {
        format!(
            "Debian's arm64 cloud kernel {} could not be fetched: if the mirror no longer has it, \
             set ARM64_KERNEL_DEB in vmtest/src/arch.rs to the linux-image-*-cloud-arm64 package \
             linux-image-cloud-arm64 depends on now, with its SHA-256",
            ARM64_KERNEL_DEB.url
        )
    })
}

/// The packages `debs` unpacked together into the cache's `name/` (downloaded first).
fn unpacked(name: &str, debs: &[Deb]) -> Result<PathBuf> {
    let cache = crate::host::cache_dir();
    let dir = cache.join(name);
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = cache.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    for d in debs {
        let deb = download(&cache.join("debs"), *d)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    }
    let _ = std::fs::remove_dir_all(tmp.join("usr/share"));
    std::fs::rename(&tmp, &dir)?;
    Ok(dir)
}

/// libubootenv-tool, libubootenv and zlib for arm64, unpacked.
fn ubootenv() -> Result<PathBuf> {
    unpacked("ubootenv", ARM64_UBOOTENV_DEBS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory of this test's own, removed first.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-vmtest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("a scratch directory");
        d
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn a_download_whose_digest_differs_is_refused_and_not_cached() {
        let dir = scratch("digest");
        let served = dir.join("served");
        std::fs::create_dir_all(&served).unwrap();
        std::fs::write(served.join("pkg_1_arm64.deb"), b"what the mirror served").unwrap();
        let url = leak(format!("file://{}/pkg_1_arm64.deb", served.display()));
        let debs = dir.join("debs");

        let wrong = Deb { url, sha256: leak(sha256_hex(b"what the pin says")) };
        let err = format!("{:#}", download(&debs, wrong).unwrap_err());
        assert!(err.contains("refused") && err.contains("pkg_1_arm64.deb"), "{err}");
        assert!(!debs.join("pkg_1_arm64.deb").exists(), "a refused package stays out of the cache");
        assert!(!debs.join("pkg_1_arm64.deb.tmp").exists());

        let right = Deb { url, sha256: leak(sha256_hex(b"what the mirror served")) };
        let got = download(&debs, right).unwrap();
        assert_eq!(std::fs::read(got).unwrap(), b"what the mirror served");

        // A package longer than the limit is refused before it is hashed, by its size.
        let long = served.join("pkg_1_arm64.deb");
        let err = format!("{:#}", check_download(&long, right, 10).unwrap_err());
        assert!(err.contains("22 bytes, more than the 10"), "{err}");
        check_download(&long, right, 22).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_pinned_package_names_a_deb_and_a_sha256() {
        let all = [ARM64_KERNEL_DEB, ARM64_BUSYBOX_DEB].into_iter().chain(ARM64_UBOOTENV_DEBS.iter().copied());
        for d in all {
            assert!(d.url.starts_with("http://deb.debian.org/") && d.name().ends_with("_arm64.deb"), "{}", d.url);
            assert!(
                d.sha256.len() == 64 && d.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{}",
                d.sha256
            );
        }
    }
}
