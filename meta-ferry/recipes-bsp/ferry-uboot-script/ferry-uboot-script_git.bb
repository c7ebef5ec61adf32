# nooelint: oelint.var.bbclassextend
# (No BBCLASSEXTEND: made for one machine from its board lines; no native or SDK variant.)
SUMMARY = "Ferry's U-Boot boot script for this machine"
DESCRIPTION = "boot.scr made from the machine's board lines followed by Ferry's \
               boot-integration/uboot/boot.cmd: boots the deployment U-Boot's environment names, counts \
               boots while a release is on trial and falls back past bootlimit. Deployed as ferry-boot.scr; \
               the flash layout puts it where U-Boot's distro boot finds boot.scr."
SECTION = "bootloaders"

require recipes-ferry/ferry/ferry-source.inc

inherit deploy kernel-arch

DEPENDS += "u-boot-mkimage-native"

# The machine's board lines (boot-integration/uboot/boards/ shows what they set): the name
# of a file a bbappend of this recipe adds to its files/, set in the machine configuration.
# Without it this recipe is skipped: only the machine knows how its U-Boot saves the
# environment and starts a kernel (bootargs with root= and console= at least).
FERRY_UBOOT_BOARD ??= ""

SRC_URI += "${@'file://' + d.getVar('FERRY_UBOOT_BOARD') if d.getVar('FERRY_UBOOT_BOARD') else ''}"

SKIP_RECIPE[ferry-uboot-script] = "${FERRY_SRCREV_UNSET}${@'' if d.getVar('FERRY_UBOOT_BOARD') else ' set FERRY_UBOOT_BOARD to the machine U-Boot board lines for Ferry (see meta-ferry/README.md)'}"

PACKAGE_ARCH = "${MACHINE_ARCH}"

do_configure[noexec] = "1"

do_compile () {
    cat ${FERRY_UNPACKDIR}/${FERRY_UBOOT_BOARD} ${S}/boot-integration/uboot/boot.cmd > ${B}/ferry-boot.cmd
    uboot-mkimage -C none -A ${UBOOT_ARCH} -T script -d ${B}/ferry-boot.cmd ${B}/ferry-boot.scr
}

# Nothing goes into the root file system: it is a deployment, and U-Boot reads boot.scr
# from the partition that holds the state directory, outside every deployment.
do_install[noexec] = "1"

do_deploy () {
    install -m 0644 ${B}/ferry-boot.scr ${DEPLOYDIR}/ferry-boot.scr
    install -m 0644 ${B}/ferry-boot.cmd ${DEPLOYDIR}/ferry-boot.cmd
}
addtask deploy after do_compile before do_build
