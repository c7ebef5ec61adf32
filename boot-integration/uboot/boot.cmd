# Ferry's U-Boot boot script. It follows the board's own lines (see boards/), in one script:
#   cat boards/BOARD.cmd boot.cmd > ferry-boot.cmd
#   mkimage -A arm64 -T script -d ferry-boot.cmd boot.scr     (-A arm for armv7)
# U-Boot's distro boot finds boot.scr and sets devtype, devnum and distro_bootpart.
# It boots the deployment the environment names, and counts boots while a release is on
# trial, as grub/ferry.cfg does for GRUB: each boot with upgrade_available=1 increments
# bootcount; past bootlimit it falls back to ferry_prev and ends the trial. ferryd marks the
# release good by resetting both. It needs only hush, test, setenv and load: no setexpr and
# no CONFIG_BOOTCOUNT_LIMIT. The count is unrolled: 0 to 4 step up by one, an unset count is
# 0, anything else becomes 6, and 6 always falls back (so bootlimit is 1 to 5).
# The same rules are modelled in boot-integration/src/bootenv/mod.rs (model_boot): change both.
# scripts/vmtest --uboot boots it, after boards/qemu-x86.cmd, in QEMU.
#
# Variables written by ferryd through fw_setenv:
#   ferry_deploy       deployment to boot        ferry_prev   deployment to fall back to
#   upgrade_available  1 while on trial          bootcount / bootlimit   as above
# Set by the board's lines, all optional (none of them is saved):
#   ferry_state     Ferry's state directory on the partition distro boot found this script
#                   on (ferryd.toml's state_dir; default /var/lib/ferry, which is also
#                   ferryd's and ferry-prepare-root's): the deployment's files are read from
#                   ${ferry_state}/deploy/${ferry_deploy}/boot/ (set as ferry_boot), and the
#                   kernel gets ferry.deploy= and ferry.state= for the initramfs's
#                   ferry-prepare-root (boot-integration/prepare-root), which mounts that
#                   deployment as /
#   ferry_save      saves the environment (default: saveenv)
#   ferry_load_os   loads the deployment's kernel and starts it, after bootargs is set
#                   (default: the deployment's boot/board.dtb, boot/initrd.img if it has
#                   one, and its kernel: armv7's boot/zImage with bootz if it has one, else
#                   arm64's boot/Image with booti; bootargs must then carry the board's root=
#                   and console)
#   ferry_kernel_cmd  bootz or booti: only that kernel (default: whichever the deployment has)
#   ferry_bootcount "uboot" on a U-Boot built with CONFIG_BOOTCOUNT_LIMIT and
#                   CONFIG_BOOTCOUNT_ENV, which increments bootcount itself: this script then
#                   does not count again. Such a U-Boot runs altbootcmd instead of bootcmd
#                   past bootlimit, so set altbootcmd=run bootcmd there: this script then runs
#                   and falls back. (Without ferry_bootcount=uboot, such a U-Boot and this
#                   script would both count.)

if test -z "${bootlimit}"; then setenv bootlimit 3; fi
if test -z "${bootcount}"; then setenv bootcount 0; fi
setenv ferry_saved

if test "${upgrade_available}" = 1; then
  if test "${ferry_bootcount}" != uboot; then
    if test "${bootcount}" = 0; then setenv bootcount 1
    elif test "${bootcount}" = 1; then setenv bootcount 2
    elif test "${bootcount}" = 2; then setenv bootcount 3
    elif test "${bootcount}" = 3; then setenv bootcount 4
    elif test "${bootcount}" = 4; then setenv bootcount 5
    else setenv bootcount 6
    fi
  fi
  if test ${bootcount} -gt ${bootlimit}; then
    echo "Ferry: ${ferry_deploy} was booted ${bootlimit} times without being marked good; back to ${ferry_prev}"
    if test -n "${ferry_prev}"; then setenv ferry_deploy ${ferry_prev}; fi
    setenv upgrade_available 0
    setenv bootcount 0
  elif test "${bootcount}" = 6; then
    echo "Ferry: ${ferry_deploy} was booted too often without being marked good; back to ${ferry_prev}"
    if test -n "${ferry_prev}"; then setenv ferry_deploy ${ferry_prev}; fi
    setenv upgrade_available 0
    setenv bootcount 0
  fi
  if test -n "${ferry_save}"; then
    if run ferry_save; then setenv ferry_saved 1; fi
  elif saveenv; then
    setenv ferry_saved 1
  fi
fi

if test -z "${ferry_state}"; then setenv ferry_state /var/lib/ferry; fi
setenv ferry_boot ${ferry_state}/deploy/${ferry_deploy}/boot
echo "Ferry: booting ${ferry_deploy}"
setenv bootargs "${bootargs} ferry.deploy=${ferry_deploy} ferry.state=${ferry_state}"
if test -n "${ferry_load_os}"; then
  run ferry_load_os
elif load ${devtype} ${devnum}:${distro_bootpart} ${fdt_addr_r} ${ferry_boot}/board.dtb; then
  # The initramfs first: the kernel's load sets filesize again.
  setenv ferry_initrd -
  if load ${devtype} ${devnum}:${distro_bootpart} ${ramdisk_addr_r} ${ferry_boot}/initrd.img; then
    setenv ferry_initrd ${ramdisk_addr_r}:${filesize}
  fi
  if test "${ferry_kernel_cmd}" != booti && load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} ${ferry_boot}/zImage; then
    bootz ${kernel_addr_r} ${ferry_initrd} ${fdt_addr_r}
  elif test "${ferry_kernel_cmd}" != bootz && load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} ${ferry_boot}/Image; then
    booti ${kernel_addr_r} ${ferry_initrd} ${fdt_addr_r}
  fi
fi
# Still here: the deployment could not be started. On trial, reset: the next boot counts
# (unless this boot's count could not be saved: then resetting would loop for ever).
echo "Ferry: could not start ${ferry_deploy}"
if test "${upgrade_available}" = 1; then
  if test "${ferry_saved}" = 1; then reset; fi
fi
