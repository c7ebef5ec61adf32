#!/bin/sh
# shellcheck disable=SC2317 # the functions run through check, which shellcheck does not follow
# Tests ferry-prepare-root on this machine, as root, without booting: in a mount namespace of
# its own (unshare -m), a tmpfs plays the initramfs (static busybox, the script, /proc) and
# another the partition, and the script runs chrooted there, under busybox sh and under dash
# (with busybox's mount). Checks what the running system would see: the deployment as / and
# read-only, /var and the state directory writable on the partition, /etc overridden by the
# partition's etc/ (overlayfs, and the bind fallback when overlayfs is made unavailable), the
# partition at /sysroot; the fallback to the current link; a refused name; a failure that
# leaves the partition mounted as it was.
# Usage: boot-integration/prepare-root/test.sh   (needs root, unshare, busybox-static, dash)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" = 0 ] || { echo "test.sh: needs root (mount namespaces)" >&2; exit 2; }
busybox=$(command -v busybox)
dash=$(command -v dash)
if [ "${1:-}" != --inside ]; then
  exec unshare -m "$0" --inside
fi
mount --make-rprivate /
t=$(mktemp -d)
trap 'umount -R "$t/i" 2>/dev/null || true; rm -rf "$t"' EXIT
failures=0
check() { # check WHAT COMMAND...: runs COMMAND, reports
  what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}

# A fresh initramfs at $t/i (busybox, dash and its libraries, the script, /proc) with an
# empty partition mounted at $t/i/root.
initramfs() {
  umount -R "$t/i" 2>/dev/null || true
  mkdir -p "$t/i"
  mount -t tmpfs initramfs "$t/i"
  mkdir -p "$t/i/bin" "$t/i/proc" "$t/i/root" "$t/i/dev"
  cp "$busybox" "$t/i/bin/busybox"
  for applet in $("$busybox" --list); do [ "$applet" = busybox ] || ln -sf busybox "$t/i/bin/$applet"; done
  cp "$dash" "$t/i/bin/dash"
  for lib in $(ldd "$dash" | grep -o '/[^ ]*'); do
    mkdir -p "$t/i$(dirname "$lib")"
    cp -L "$lib" "$t/i$lib"
  done
  cp "$here/ferry-prepare-root" "$t/i/bin/"
  mount -t proc proc "$t/i/proc"
  mount -t tmpfs part "$t/i/root"
}

# Runs the script under SHELL with the kernel command line CMDLINE; its output in $t/out.
prepare() {
  echo "$2" >"$t/i/cmdline"
  FERRY_CMDLINE=/cmdline chroot "$t/i" "/bin/$1" /bin/ferry-prepare-root /root >"$t/out" 2>&1
}

# One boot of the usual partition: SHELL CMDLINE [noverlay].
boot() {
  initramfs
  # The partition, as the image holds it: two deployments, var/, etc/ overrides.
  mount -t tmpfs part "$t/i/root"
  p=$t/i/root
  for n in aaa bbb; do
    d=$p/var/lib/ferry/deploy/$n
    mkdir -p "$d/var" "$d/sysroot" "$d/etc/ferry" "$d/proc" "$d/sbin"
    echo "$n" >"$d/release"
    echo "release $n" >"$d/etc/hostname"
    echo "from the release" >"$d/etc/ferry/ferryd.toml"
  done
  mkdir -p "$p/var/lib/ferry/deploy/ccc.tmp-12" "$p/etc/ferry"
  echo "from the partition" >"$p/etc/ferry/ferryd.toml"
  echo "partition-only" >"$p/etc/machine-id"
  ln -s /var/lib/ferry/deploy/bbb "$p/var/lib/ferry/current"
  mkdir -p "$p/boot/grub" && echo env >"$p/boot/grub/grubenv"
  if [ "${3:-}" = noverlay ]; then
    # A kernel without overlayfs: the script's test sees none.
    grep -v overlay /proc/filesystems >"$t/filesystems"
    mount --bind "$t/filesystems" "$t/i/proc/filesystems"
  fi
  prepare "$1" "$2"
}

for sh in sh dash; do
  echo "--- under $sh"
  check "$sh: boots ferry.deploy=aaa" boot "$sh" "quiet ferry.deploy=aaa ro"
  cat "$t/out"
  r=$t/i/root
  check "$sh: / is deployment aaa" grep -qx aaa "$r/release"
  check "$sh: / is read-only" sh -c "! touch '$r/new' 2>/dev/null"
  check "$sh: /var is writable, with the state directory" sh -c "touch '$r/var/lib/ferry/x' && [ -d '$r/var/lib/ferry/deploy/bbb' ]"
  check "$sh: /etc is overridden by the partition's etc/" grep -qx "from the partition" "$r/etc/ferry/ferryd.toml"
  check "$sh: /etc keeps the release's other files" grep -qx "release aaa" "$r/etc/hostname"
  check "$sh: /etc has the partition's own files" grep -qx "partition-only" "$r/etc/machine-id"
  check "$sh: /etc is writable, onto the partition" sh -c "echo new >'$r/etc/added' && grep -qx new '$r/sysroot/etc/added'"
  check "$sh: the partition is at /sysroot, writable" sh -c "touch '$r/sysroot/boot/grub/grubenv'"
  check "$sh: the deployment itself is unchanged" sh -c "[ ! -e '$r/sysroot/var/lib/ferry/deploy/aaa/etc/added' ]"
  check "$sh: every step logged" grep -q "ferry-prepare-root: the deployment aaa is the root file system at /root" "$t/out"

  check "$sh: no ferry.deploy: the current link's target" boot "$sh" "quiet"
  check "$sh: ... which is bbb" grep -qx bbb "$t/i/root/release"
  grep "falling back" "$t/out"

  check "$sh: a missing deployment: the current link's target" boot "$sh" "ferry.deploy=zzz"
  check "$sh: ... which is bbb" grep -qx bbb "$t/i/root/release"
  check "$sh: an incomplete deployment is refused, the current link booted" boot "$sh" "ferry.deploy=ccc.tmp-12"
  check "$sh: ... which is bbb" grep -qx bbb "$t/i/root/release"
  check "$sh: a path is refused" boot "$sh" "ferry.deploy=../../.."
  check "$sh: ... and bbb booted" grep -qx bbb "$t/i/root/release"

  check "$sh: without overlayfs, each etc/ entry is bound" boot "$sh" "ferry.deploy=aaa" noverlay
  check "$sh: ... the file the release has is overridden" grep -qx "from the partition" "$t/i/root/etc/ferry/ferryd.toml"
  check "$sh: ... the release's own /etc stays" grep -qx "release aaa" "$t/i/root/etc/hostname"
  check "$sh: ... one the release lacks is left out, said" grep -q "left out the partition's etc/machine-id" "$t/out"
  cat "$t/out"

  other_state() {
    initramfs
    d=$t/i/root/data/ferry/deploy/aaa
    mkdir -p "$d/var" "$d/sysroot" "$d/data/ferry"
    prepare "$sh" "ferry.deploy=aaa ferry.state=/data/ferry" || return 1
    [ -d "$t/i/root/data/ferry/deploy/aaa" ] && touch "$t/i/root/data/ferry/y" && ! touch "$t/i/root/z" 2>/dev/null
  }
  check "$sh: a state directory outside /var (ferry.state=/data/ferry) is mounted at its path" other_state
  cat "$t/out"
  nothing_to_boot() {
    initramfs
    # A deployment without its mount points, and no current link.
    mkdir -p "$t/i/root/var/lib/ferry/deploy/aaa"
    echo keep >"$t/i/root/marker"
    mount -o remount,ro "$t/i/root"
    ! prepare "$sh" "ferry.deploy=aaa" || return 1
    grep -qx keep "$t/i/root/marker" && ! grep -q ferry-prepare "$t/i/proc/mounts" \
      && grep -q "/root tmpfs ro," "$t/i/proc/mounts"
  }
  check "$sh: a deployment without /sysroot: exits 1, the partition left as it was (read-only)" nothing_to_boot
  cat "$t/out"
done
umount -R "$t/i" 2>/dev/null || true
if [ "$failures" -gt 0 ]; then
  echo "$failures checks FAILED"
  exit 1
fi
echo "all checks passed"
exit 0
