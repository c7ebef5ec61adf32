#!/bin/busybox sh
# The initramfs's /init in the VM: loads the virtio modules, waits for the disk, mounts it
# (its first partition when it has one) and switches to its /sbin/init.
# vmtest/src/guest.rs fills in the module list (the placeholder in the `for` line below)
# with its MODULES, in load order.
# shellcheck shell=dash
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
# shellcheck disable=SC2043 # the list is filled in by the harness
for m in @MODULES@; do /bin/busybox insmod /lib/modules/$m.ko || echo "FERRY-VM insmod-failed $m"; done
# shellcheck disable=SC2034 # i only counts the tries
for i in $(/bin/busybox seq 50); do [ -e /dev/vda ] && break; /bin/busybox sleep 0.1; done
/bin/busybox sleep 0.2
root=/dev/vda; [ -e /dev/vda1 ] && root=/dev/vda1
/bin/busybox mount -t ext4 -o rw $root /newroot || { echo "FERRY-VM no-root"; /bin/busybox poweroff -f; }
/bin/busybox umount /proc /sys
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /sbin/init
