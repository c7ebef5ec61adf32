# Ferry's U-Boot boot script (compile with: mkimage -A arm -T script -d boot.cmd boot.scr).
# Requires CONFIG_BOOTCOUNT_LIMIT with CONFIG_BOOTCOUNT_ENV: U-Boot increments `bootcount`
# while `upgrade_available` is 1 and runs `altbootcmd` once bootcount exceeds `bootlimit`.
# The same rules are modelled in boot-integration/src/bootenv.rs (model_boot): change both.
#
# Variables (written by ferryd through fw_setenv):
#   ferry_deploy       deployment to boot        ferry_prev   deployment to fall back to
#   upgrade_available  1 while on trial          bootcount / bootlimit   as above

setenv altbootcmd 'if test -n "${ferry_prev}"; then setenv ferry_deploy ${ferry_prev}; fi; setenv upgrade_available 0; setenv bootcount 0; saveenv; run ferry_boot'
setenv ferry_boot 'setenv bootargs "${bootargs} ferry.deploy=${ferry_deploy}"; load ${devtype} ${devnum}:${distro_bootpart} ${kernel_addr_r} /ferry/deploy/${ferry_deploy}/boot/Image; load ${devtype} ${devnum}:${distro_bootpart} ${fdt_addr_r} /ferry/deploy/${ferry_deploy}/boot/board.dtb; booti ${kernel_addr_r} - ${fdt_addr_r}'
if test -z "${bootlimit}"; then setenv bootlimit 3; fi
run ferry_boot
