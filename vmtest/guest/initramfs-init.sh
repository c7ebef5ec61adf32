#!/bin/busybox sh
# The initramfs's /init in the VM: loads the modules, waits for the disk, mounts it (its
# first partition when it has one) read-write, runs the shipped ferry-prepare-root on it
# (boot-integration/prepare-root/: the deployment named by ferry.deploy=, or the current
# link's, becomes the root, read-only, with /var, /etc's overrides and /sysroot from the
# partition), and switches to the deployment's /sbin/init. A failure prints a FERRY-VM
# marker and ends this init: the kernel panics and, with panic=-1, the machine resets.
# vmtest/src/guest.rs fills in the module list (the placeholder in the `for` line below)
# with its MODULES, in load order.
# shellcheck shell=dash
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
# shellcheck disable=SC2043 # the list is filled in by the harness
for m in @MODULES@; do insmod /lib/modules/$m.ko || echo "FERRY-VM insmod-failed $m"; done
# shellcheck disable=SC2034 # i only counts the tries
for i in $(seq 50); do [ -e /dev/vda ] && break; sleep 0.1; done
sleep 0.2
root=/dev/vda; [ -e /dev/vda1 ] && root=/dev/vda1
mount -t ext4 -o rw $root /newroot || { echo "FERRY-VM no-root"; poweroff -f; }
if ! ferry-prepare-root /newroot; then
  echo "FERRY-VM prepare-root-failed"
  exit 1
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
