#!/bin/sh
# Prepare a Debian 12 machine to run and test tetrad from this checkout.
# Idempotent: installs only what is missing.  Needs root.
set -eu
cd "$(dirname "$0")/.."

# Debian packages: BCC is only packaged by Debian (python3-bpfcc), not on PyPI.
PKGS="python3-bpfcc bpftool python3-venv python3-pip python3-yaml python3-psutil \
python3-pyroute2 python3-sdnotify python3-pythonjsonlogger python3-prometheus-client util-linux"
# containerd's gRPC API (stubs in tetrad/containers/pb match these versions)
PKGS="$PKGS python3-grpcio python3-protobuf"
# Kubernetes mode (--enable-k8s-api): the official client
PKGS="$PKGS python3-kubernetes"
# The kernel lane's guest image installs the same runtime list (scripts/kernel-lane/build-image.sh).
if [ "${1:-}" = --debian-packages ]; then echo "$PKGS"; exit 0; fi
# The tests' own containers: a real containerd with runc, and busybox-static for their image.
PKGS="$PKGS containerd runc busybox-static"
# The Helm chart is rendered with Helm's template engine (scripts/helm-render).
PKGS="$PKGS golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev"
# The system test boots a Debian tree under a real systemd (tests/test_system_nspawn.py).
PKGS="$PKGS systemd-container debootstrap"
# `make test-kernel`: also what builds and boots the kernel lane's guest.
if [ "${1:-}" = --kernel-lane ]; then PKGS="$PKGS qemu-system-x86 debootstrap e2fsprogs"; fi

[ "$(id -u)" = 0 ] || { echo "bootstrap: run as root (tetrad loads BPF programs)" >&2; exit 1; }

# Kernel headers only when the running kernel has none of its own: BCC needs
# some headers to compile; tetrad takes struct layouts from BTF, not from them.
if [ ! -e "/lib/modules/$(uname -r)/build" ] && [ ! -e /sys/kernel/kheaders.tar.xz ]; then
    PKGS="$PKGS linux-headers-$(dpkg --print-architecture)"
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing$missing"
    # Other checkouts on the machine may be installing too: wait for dpkg's lock.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        $missing >/dev/null
fi

# tracefs: tracepoints are attached through it
if ! grep -q " /sys/kernel/tracing tracefs " /proc/mounts; then
    mount -t tracefs nodev /sys/kernel/tracing
fi

# The virtualenv sees Debian's BCC through --system-site-packages.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.tetrad-installed
if [ ! -e "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
    .venv/bin/pip install -q --disable-pip-version-check --no-build-isolation -e .
    touch "$stamp"
fi
