//! What the guest's architecture decides, in one place: QEMU's emulator and machine, the
//! serial console, Debian's kernel package, the modules the initramfs loads, the name of the
//! kernel in a release's `boot/`, and the U-Boot build with its board's lines. The harness
//! boots `GUEST`; an aarch64 guest is another `Arch` (qemu-system-aarch64 `-M virt`,
//! `ttyAMA0`, linux-image-cloud-arm64, `boot/Image`, the `qemu_arm64` U-Boot and a board file
//! of its own), and nothing else in the harness names x86. GRUB runs are x86 (BIOS) only.

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
};

/// The architecture the harness boots.
pub const GUEST: &Arch = &X86_64;
