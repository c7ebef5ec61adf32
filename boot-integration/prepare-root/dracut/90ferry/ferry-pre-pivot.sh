#!/bin/sh
# dracut pre-pivot hook (sourced by dracut, after the root file system is mounted at
# $NEWROOT and before the switch to it): makes the deployment the bootloader chose
# (ferry.deploy=) the new root with ferry-prepare-root; see its header for the partition's
# layout. A boot without ferry.deploy= and ferry.state= keeps the partition as the root.
# Sourced, so it must not exit: a failure stops the boot with dracut's die.
# shellcheck disable=SC2154 # NEWROOT is set by dracut
if getarg ferry.deploy= >/dev/null || getarg ferry.state= >/dev/null; then
  /usr/lib/ferry/ferry-prepare-root "$NEWROOT" \
    || die "ferry-prepare-root could not mount the deployment as the root file system (its messages are above)"
fi
