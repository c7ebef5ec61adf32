# Board lines for QEMU's x86 PC with Debian's u-boot-qemu (qemu-x86/u-boot.rom), which keeps
# no environment of its own (ENV_IS_NOWHERE). Ferry's variables live in a raw area of the
# boot disk between the MBR and the first partition, as CONFIG_ENV_IS_IN_MMC keeps them on
# many boards: 16 KiB at 512 KiB, with U-Boot's CRC. fw_setenv in Linux finds the same area
# with /etc/fw_env.config: "/dev/vda 0x80000 0x4000". The kernel and initramfs are the
# deployment's boot/vmlinuz and boot/initrd.img (under ${ferry_boot}, which boot.cmd sets
# from ferry_state, default /var/lib/ferry, before it runs ferry_load_os).
# One copy only (`ferryd doctor` warns): a power cut while it is rewritten loses it, and
# U-Boot then boots nothing. A board for the field keeps two copies (U-Boot's
# CONFIG_SYS_REDUNDAND_ENVIRONMENT, two lines in fw_env.config).

virtio dev ${devnum}
setenv ferry_envaddr 0x6000000
# The initramfs goes high, clear of where the kernel decompresses itself.
setenv ramdisk_addr_r 0x20000000
if virtio read ${ferry_envaddr} 0x400 0x20; then env import -c ${ferry_envaddr} 0x4000; fi
setenv ferry_save 'env export -c -s 0x4000 ${ferry_envaddr} ferry_deploy ferry_prev upgrade_available bootcount bootlimit; virtio write ${ferry_envaddr} 0x400 0x20'
setenv ferry_load_os 'if load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} ${ferry_boot}/vmlinuz; then if load ${devtype} ${devnum}:${distro_bootpart} ${ramdisk_addr_r} ${ferry_boot}/initrd.img; then zboot ${kernel_addr_r} 0 ${ramdisk_addr_r} ${filesize}; fi; fi'
setenv bootargs "console=ttyS0 quiet panic=-1"
