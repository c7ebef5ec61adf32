# Ferry's U-Boot boot script. It follows the board's own lines (see boards/), in one script:
#   cat boards/BOARD.cmd boot.cmd > ferry-boot.cmd
#   mkimage -A arm64 -T script -d ferry-boot.cmd boot.scr
# It boots the deployment the environment names, and counts boots while a release is on
# trial, as grub/ferry.cfg does for GRUB: each boot with upgrade_available=1 increments
# bootcount; past bootlimit it falls back to ferry_prev and ends the trial. ferryd marks the
# release good by resetting both. It needs only hush, test, setenv and load: no setexpr and
# no CONFIG_BOOTCOUNT_LIMIT (the count is unrolled up to 6, so bootlimit can be 1 to 5).
# The same rules are modelled in boot-integration/src/bootenv/mod.rs (model_boot): change both.
# scripts/vmtest --uboot boots it, after boards/qemu-x86.cmd, in QEMU.
#
# Variables written by ferryd through fw_setenv:
#   ferry_deploy       deployment to boot        ferry_prev   deployment to fall back to
#   upgrade_available  1 while on trial          bootcount / bootlimit   as above
# Set by the board's lines, all optional:
#   ferry_save      saves the environment (default: saveenv)
#   ferry_load_os   loads the deployment's kernel and starts it (default: arm64's booti with
#                   the deployment's boot/Image and boot/board.dtb); bootargs is set first
#   ferry_bootcount "uboot" when U-Boot itself counts (CONFIG_BOOTCOUNT_ENV): then this script
#                   does not count again, and only falls back (leave altbootcmd unset)

if test -z "${bootlimit}"; then setenv bootlimit 3; fi
if test -z "${bootcount}"; then setenv bootcount 0; fi
if test -z "${ferry_save}"; then setenv ferry_save saveenv; fi
if test -z "${ferry_load_os}"; then setenv ferry_load_os 'if load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} /ferry/deploy/${ferry_deploy}/boot/Image; then if load ${devtype} ${devnum}:${distro_bootpart} ${fdt_addr_r} /ferry/deploy/${ferry_deploy}/boot/board.dtb; then booti ${kernel_addr_r} - ${fdt_addr_r}; fi; fi'; fi

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
  fi
  run ferry_save
fi

echo "Ferry: booting ${ferry_deploy}"
setenv bootargs "${bootargs} ferry.deploy=${ferry_deploy}"
run ferry_load_os
# Still here: the deployment could not be started. On trial, reset: the next boot counts.
echo "Ferry: could not start ${ferry_deploy}"
if test "${upgrade_available}" = 1; then reset; fi
