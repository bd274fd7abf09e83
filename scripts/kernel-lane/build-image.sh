#!/bin/sh
# Build the kernel lane's guest: Debian bookworm with Debian's own cloud kernel, its exact
# matching headers, BCC and tetrad's Debian dependencies, from Debian packages only.
#
#   build-image.sh OUTDIR
#
# Writes OUTDIR/rootfs.img (ext4, booted read-only-ish under qemu -snapshot), OUTDIR/vmlinuz,
# OUTDIR/initrd.img and OUTDIR/manifest (kernel release, package versions).  The project is
# NOT in the image: run.py hands it to the guest on a second disk, so the image only changes
# when this script or the package list changes (run.py keys its cache on both).
set -eu
out=$1
here=$(cd "$(dirname "$0")" && pwd)
MIRROR=${KERNEL_LANE_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# tetrad's runtime dependencies, as scripts/bootstrap.sh installs them on a host.
DEPS=$(sh "$here/../bootstrap.sh" --debian-packages)
# In the guest: pytest from Debian (no network there), tools the tests and init use.
EXTRA="python3-pytest procps kmod iproute2 util-linux"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/tetrad-lane-build.XXXXXX")
root=$work/rootfs
cleanup() {
    for m in dev/pts dev sys proc; do umount "$root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "build-image: debootstrap $SUITE from $MIRROR"
debootstrap --variant=minbase --include=python3,linux-image-cloud-amd64 \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

# The kernel the metapackage pulled in decides which headers we need: exactly its release.
release=$(ls "$root/lib/modules")
[ "$(echo "$release" | wc -w)" = 1 ] || { echo "build-image: expected one kernel, got: $release" >&2; exit 1; }

mount -t proc proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
echo "deb $MIRROR $SUITE main" >"$root/etc/apt/sources.list"
echo "build-image: installing headers for $release, BCC and dependencies"
chroot "$root" apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
    "linux-headers-$release" $DEPS $EXTRA >"$work/apt.log" 2>&1 \
    || { tail -30 "$work/apt.log" >&2; exit 1; }
# bootstrap.sh may list a generic headers package for hosts without headers; the guest
# must have the kernel's own: check that they are there and generated for this release.
grep -q "\"$release\"" "$root/usr/src/linux-headers-$release/include/generated/utsrelease.h" \
    || { echo "build-image: linux-headers-$release do not match the kernel" >&2; exit 1; }
chroot "$root" apt-get clean
for m in dev/pts dev sys proc; do umount "$root/$m"; done

# Guest identity and the init that runs the lane (it execs the script on the project disk).
echo tetrad-guest >"$root/etc/hostname"
install -m 755 "$here/guest-init" "$root/sbin/tetrad-lane-init"
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages"

cp "$root/boot/vmlinuz-$release" "$work/vmlinuz"
cp "$root/boot/initrd.img-$release" "$work/initrd.img"
# Room for the tests' temporary files; writes go to qemu's snapshot overlay anyway.
size_mb=$(( $(du -sm "$root" | cut -f1) + 768 ))
mkfs.ext4 -q -L tetrad-guest -d "$root" "$work/rootfs.img" "${size_mb}M"
{
    echo "kernel $release"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $MIRROR $SUITE"
    grep -E '^(linux-image|linux-headers|python3 |python3-bpfcc|bpftool|libbpfcc)' "$work/packages"
} >"$work/manifest"
mkdir -p "$out"
mv "$work/rootfs.img" "$work/vmlinuz" "$work/initrd.img" "$work/manifest" "$work/packages" "$out/"
echo "build-image: done: $release, $(du -sh "$out/rootfs.img" | cut -f1) image"
