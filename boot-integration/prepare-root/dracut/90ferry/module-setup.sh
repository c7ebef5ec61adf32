#!/bin/bash
# dracut module: ferry-prepare-root (installed at /usr/lib/ferry/ferry-prepare-root) runs
# before the switch to the root file system and makes the deployment the bootloader chose
# (ferry.deploy=) the new root. Install this directory as /usr/lib/dracut/modules.d/90ferry
# and add it (dracut --add ferry, or add_dracutmodules+=" ferry " in dracut.conf.d).

check() {
  # Only when asked for: a host without Ferry's layout must not get it.
  return 255
}

depends() {
  echo base
}

installkernel() {
  hostonly='' instmods overlay
}

install() {
  inst_multiple mount umount readlink grep mkdir rmdir cat
  inst_script /usr/lib/ferry/ferry-prepare-root /usr/lib/ferry/ferry-prepare-root
  # shellcheck disable=SC2154 # moddir is set by dracut
  inst_hook pre-pivot 50 "$moddir/ferry-pre-pivot.sh"
}
