#!/bin/sh
# Inside the kernel lane's guest (started by guest-init, PID 1): the kernel-dependent tests
# of this checkout against Debian's distro kernel.  Progress goes to the serial console
# (lines starting "TETRAD-LANE:"), results and logs to /dev/vdc as a tar for run.py.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
project=/lane/project
results=/lane/results
mkdir -p "$results"
say() { echo "TETRAD-LANE: $*"; }

mount -t tracefs nodev /sys/kernel/tracing
mount -t debugfs nodev /sys/kernel/debug
mount -t securityfs nodev /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 nodev /sys/fs/cgroup
ip link set lo up
say "booted $(uname -r) lsm=$(cat /sys/kernel/security/lsm) uptime=$(cut -d' ' -f1 /proc/uptime)s"

cd "$project"
export PYTHONPATH=$project
# The tests' timeouts were written for the host; software emulation is far slower.
export KERNEL_LANE_TIMEOUT_SCALE=${KERNEL_LANE_TIMEOUT_SCALE:-6}
# Every daemon start compiles BPF (~20 s here): tests that accept a running daemon share one.
export KERNEL_LANE_SHARED_DAEMON=1
# What this kernel must offer; tests/test_backends.py fails if detection disagrees.
export KERNEL_LANE_EXPECT_HOOKS=kprobes,kretprobes,fentry,bpf_lsm

python3 -m tetrad probe >"$results/probe.txt" 2>&1
say "probe exit $? after $(cut -d' ' -f1 /proc/uptime)s"
say "struct layouts from this kernel's BTF: task_struct.tgid at $(python3 -c \
    'from tetrad.btf import Btf; print(Btf.load().member_offset("task_struct", "tgid"))')"
sed 's/^/TETRAD-LANE: probe: /' "$results/probe.txt"

# The selection: scripts/kernel-lane/tests.txt (test paths; "-path  reason" deselects).
set --
while read -r entry reason; do
    case "$entry" in
        ''|'#'*) ;;
        -*) set -- "$@" --deselect "${entry#-}" ;;
        *) set -- "$@" "$entry" ;;
    esac
done <scripts/kernel-lane/tests.txt
say "pytest $*"
# Live progress on the console, one line per test; the full log goes back in the results.
{ PYTHONUNBUFFERED=1 python3 -m pytest -v -p no:cacheprovider -rfEs \
      --junitxml="$results/junit.xml" "$@" 2>&1; echo $? >"$results/pytest.rc"; } \
    | tee "$results/pytest.log" \
    | grep --line-buffered -E '::[^ ]* (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)' \
    | sed -u 's/^/TETRAD-LANE: /'
rc=$(cat "$results/pytest.rc")
tail -3 "$results/pytest.log" | sed 's/^/TETRAD-LANE: /'
dmesg >"$results/dmesg.txt" 2>&1
tar -cf /dev/vdc -C "$results" .
sync
say "done pytest-rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s"
