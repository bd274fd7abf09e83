#!/bin/sh
# Build (once) the Debian bookworm tree that the system test boots with
# systemd-nspawn, and print its path.  The tree lives outside the checkout
# (CI runs in a fresh clone) and is reused while it exists; it is built in a
# temporary directory and renamed into place, so a half-built tree is never used.
#
# Usage: bookworm-tree.sh [CACHE_DIR]     (default /var/cache/tetrad-test)
set -eu
cache=${1:-/var/cache/tetrad-test}
tree=$cache/bookworm
# Bump when the package list changes, so old caches are rebuilt.
version=3
# tetrad's runtime dependencies, preinstalled so that installing the .deb in
# the test does not download them every run.
deps="python3-bpfcc python3-yaml python3-psutil python3-pyroute2 python3-sdnotify \
python3-pythonjsonlogger python3-prometheus-client bpftool procps"

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ "$(cat "$tree/.tetrad-tree" 2>/dev/null)" = "$version" ]; then
    echo "$tree"
    exit 0
fi
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
tmp=$cache/bookworm.tmp
rm -rf "$tmp" "$tree"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3 \
    bookworm "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
# Not booted: nspawn as a chroot with the host's resolv.conf.
systemd-nspawn -q -D "$tmp" --register=no --keep-unit --resolv-conf=copy-host \
    sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deps && apt-get clean" \
    >"$cache/deps.log" 2>&1 || { tail -n 30 "$cache/deps.log" >&2; exit 1; }
echo "$version" >"$tmp/.tetrad-tree"
mv "$tmp" "$tree"
echo "$tree"
