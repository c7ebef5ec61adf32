#!/bin/sh
# The device's boot: Ferry's boot check, then an update from the server, with markers.
# This is the VM's /sbin/init, in every release: vmtest/src/guest.rs copies it into each
# release's tree as it is, and the initramfs starts it in the deployment ferry-prepare-root
# mounted as /. The
# markers are `FERRY-VM <key> <value>` lines on the serial console, read by the harness
# (vmtest/src/qemu.rs): up, cmdline, root, etc, boot-check, status-before, fsck-before, update-start,
# update or update-failed, fsck-after, status-after, app-after, done. With
# /etc/ferry-vm-mode (the GRUB and U-Boot runs) it updates only a settled device and powers
# off, leaving rollbacks to the bootloader.
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "FERRY-VM up"
echo "FERRY-VM cmdline $(cat /proc/cmdline)"
# The mount at $1 (its last line in /proc/self/mountinfo): the path of its file system it
# shows, its options, and after the separator its type, source and super options. The
# harness checks that / is a deployment, read-only, and /etc an overlay.
mount_of() {
  found=""
  # shellcheck disable=SC2034 # the first fields are the mount's ids and device
  while read -r id parent dev path at opts rest; do
    [ "$at" = "$1" ] && found="$path $opts ${rest#*- }"
  done </proc/self/mountinfo
  echo "$found"
}
echo "FERRY-VM root $(mount_of /)"
echo "FERRY-VM etc $(mount_of /etc)"
export FERRYD_TRACE_STEPS=1 FERRY_LOG=warn NO_COLOR=1
echo "FERRY-VM boot-check $(ferryd boot-check 2>&1 | tr '\n' ' ')"
# The application, from the current deployment (ferryd restarts it after a switch).
/sbin/app-restart
if [ -e /etc/ferry-vm-mode ]; then
  # Bootloader runs: update only from a settled device; a release on trial (or one just
  # rolled back) is left to the bootloader and the boot check.
  status="$(ferryd status --json | tr -d '\n')"
  echo "FERRY-VM status-before $status"
  case "$status" in
    *'"trial": null'*'"last_rollback": null'*) ferryd update --json 2>&1 | grep -v FERRY-STEP ;;
  esac
  echo "FERRY-VM status-after $(ferryd status --json | tr -d '\n')"
  sync
  echo "FERRY-VM done"
  poweroff -f
fi
if ferryd fsck >/dev/null 2>/tmp/fsck; then echo "FERRY-VM fsck-before ok"; else echo "FERRY-VM fsck-before FAILED $(cat /tmp/fsck | tr '\n' ' ')"; fi
echo "FERRY-VM status-before $(ferryd status --json | tr -d '\n')"
echo "FERRY-VM update-start"
# The agent as a device runs it: the polling daemon, whose first check is the update. Its
# steps reach the console on stderr as they happen; `--json` puts one line per check in a
# file. Once the first check has ended, the daemon is stopped and the boot is judged.
: >/tmp/run
ferryd run --json >>/tmp/run &
daemon=$!
while [ "$(wc -l </tmp/run)" -lt 1 ] && kill -0 $daemon 2>/dev/null; do sleep 0.1; done
if kill $daemon 2>/dev/null; then wait $daemon; else wait $daemon; rc=$?; fi
first="$(head -n 1 /tmp/run)"
case "$first" in
  *'"up_to_date"'*) echo "FERRY-VM update $first" ;;
  *) echo "FERRY-VM update-failed ${first:-the daemon exited with status $rc before its first check ended}" ;;
esac
if ferryd fsck >/dev/null 2>/tmp/fsck; then echo "FERRY-VM fsck-after ok"; else echo "FERRY-VM fsck-after FAILED $(cat /tmp/fsck | tr '\n' ' ')"; fi
echo "FERRY-VM status-after $(ferryd status --json | tr -d '\n')"
echo "FERRY-VM app-after $(cat /run/app.alive)"
sync
echo "FERRY-VM done"
poweroff -f
