# Board lines for QEMU's arm64 "virt" machine (-M virt -cpu cortex-a57) with Debian's
# u-boot-qemu (qemu_arm64/u-boot.bin, given to QEMU with -bios). That U-Boot keeps its own
# environment in the second CFI flash bank (CONFIG_ENV_IS_IN_FLASH), which QEMU backs with
# nothing unless told, so saveenv fails and the environment is lost at every start. Ferry's
# variables live instead in a raw area of the boot disk between the MBR and the first
# partition, as on x86 (qemu-x86.cmd): 16 KiB at 512 KiB, with U-Boot's CRC, read with
# `virtio read` and `env import -c`, saved with `env export -c -s` and `virtio write`.
# fw_setenv in Linux finds the same area with /etc/fw_env.config: "/dev/vda 0x80000 0x4000".
# The kernel is the deployment's boot/Image under ${ferry_boot}, which boot.cmd sets from
# ferry_state (default /var/lib/ferry) before it runs ferry_load_os (Debian's arm64 vmlinuz is an uncompressed
# Image, which booti starts as it is) and its initramfs boot/initrd.img. This U-Boot sets no
# fdt_addr_r: the device tree is the one QEMU generated, which U-Boot itself runs on
# (fdtcontroladdr), so a deployment's own boot/board.dtb is not used.
# One copy only (`ferryd doctor` warns): see qemu-x86.cmd.
# scripts/vmtest-arm64 boots it (ferry-vmtest --arch aarch64 --uboot).

virtio dev ${devnum}
# Above the kernel (kernel_addr_r 0x40400000) and the initramfs (ramdisk_addr_r 0x44000000),
# below U-Boot itself (relocated near the top of the RAM).
setenv ferry_envaddr 0x50000000
if virtio read ${ferry_envaddr} 0x400 0x20; then env import -c ${ferry_envaddr} 0x4000; fi
setenv ferry_save 'env export -c -s 0x4000 ${ferry_envaddr} ferry_deploy ferry_prev upgrade_available bootcount bootlimit; virtio write ${ferry_envaddr} 0x400 0x20'
setenv ferry_load_os 'if load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} ${ferry_boot}/Image; then if load ${devtype} ${devnum}:${distro_bootpart} ${ramdisk_addr_r} ${ferry_boot}/initrd.img; then booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}; fi; fi'
setenv bootargs "console=ttyAMA0 quiet panic=-1"
