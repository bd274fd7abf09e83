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

python3 -m tetrad probe -o json >"$results/probe.json" 2>"$results/probe.err"
python3 -m tetrad probe >"$results/probe.txt" 2>&1
say "probe exit $? after $(cut -d' ' -f1 /proc/uptime)s"
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
python3 -m pytest -v -p no:cacheprovider -rA --junitxml="$results/junit.xml" "$@" \
    >"$results/pytest.log" 2>&1
rc=$?
# Progress for the console: one line per test outcome.
grep -E '(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)( |$)' "$results/pytest.log" | grep '::' \
    | sed 's/^/TETRAD-LANE: /'
tail -3 "$results/pytest.log" | sed 's/^/TETRAD-LANE: /'
dmesg >"$results/dmesg.txt" 2>&1
echo "$rc" >"$results/pytest.rc"
tar -cf /dev/vdc -C "$results" .
sync
say "done pytest-rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)s"
