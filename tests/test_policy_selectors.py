"""Every selector operator and action, evaluated in the kernel by a real
daemon: each test runs a workload whose calls both match and do not match,
so an operator that were ignored (or evaluated wrongly) fails its test."""

from __future__ import annotations

import os
import shutil
import signal
import socket

import pytest

from policytools import (WORKLOAD_PYTHON, int_args, kprobe_events, run_workload, settle,
                         start_with_policies)

HEAD = "apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: {name}\nspec:\n  kprobes:\n"


def hook(message: str, selector: str, call="sys_getpgid", args="    - index: 0\n      type: int\n",
         extra="", syscall=True) -> str:
    return (f"  - call: {call}\n    syscall: {'true' if syscall else 'false'}\n    message: \"{message}\"\n"
            f"    args:\n{args}{extra}    selectors:\n    - " + selector.strip().replace("\n", "\n      ") + "\n")


def match_int(op, *values):
    vals = "".join(f"\n  - \"{v}\"" for v in values)
    return f"matchArgs:\n- index: 0\n  operator: {op}\n  values:{vals}"


INT_VALUES = [4242, 4243, 6000, 50, 4400, 70000]
OTHER_PYTHON_NAME = "otherpython"


def policies(test_pid: int, ports: dict[str, int]) -> dict[str, str]:
    ints = HEAD.format(name="ops-int") + "".join([
        hook("Equal", match_int("Equal", 4242)),
        hook("NotEqual", match_int("NotEqual", 4242)),
        hook("GT", match_int("GT", 5000)),
        hook("GreaterThan", match_int("GreaterThan", 5000)),
        hook("LT", match_int("LessThan", 100)),
        hook("Mask", match_int("Mask", "0x10000")),
        hook("InRange", match_int("InRange", "4300:4500")),
        hook("NotInRange", match_int("NotInRange", "4000:7000")),
        hook("PidIn", f"matchPIDs:\n- operator: In\n  followForks: true\n  values: [{test_pid}]\n"
                      + match_int("Equal", 4242)),
        hook("PidNotIn", f"matchPIDs:\n- operator: NotIn\n  followForks: true\n  values: [{test_pid}]\n"
                         + match_int("Equal", 4242)),
        hook("PidInNoFollow", f"matchPIDs:\n- operator: In\n  followForks: false\n  values: [{test_pid}]\n"
                              + match_int("Equal", 4242)),
        hook("Ret", "matchReturnArgs:\n- operator: Equal\n  values: [\"-3\"]",
             extra="    return: true\n    returnArg:\n      index: 0\n      type: int\n"),
    ])
    real = os.path.realpath(WORKLOAD_PYTHON)
    proc = HEAD.format(name="ops-process") + "".join([
        hook("BinIn", f"matchBinaries:\n- operator: In\n  values: [\"{real}\"]\n" + match_int("Equal", 4242)),
        hook("BinNotIn", f"matchBinaries:\n- operator: NotIn\n  values: [\"{real}\"]\n" + match_int("Equal", 4242)),
        hook("BinPostfix", f"matchBinaries:\n- operator: Postfix\n  values: [\"/{OTHER_PYTHON_NAME}\"]\n"
                           + match_int("Equal", 4242)),
        hook("BinPrefix", "matchBinaries:\n- operator: Prefix\n  values: [\"/usr/bin/\"]\n" + match_int("Equal", 4242)),
        hook("BinNotPrefix", "matchBinaries:\n- operator: NotPrefix\n  values: [\"/usr/bin/\"]\n"
                             + match_int("Equal", 4242)),
        hook("BinNotPostfix", f"matchBinaries:\n- operator: NotPostfix\n  values: [\"/{OTHER_PYTHON_NAME}\"]\n"
                              + match_int("Equal", 4242)),
        hook("ParentNotIn", "matchParentBinaries:\n- operator: NotIn\n  values: [\"/usr/bin/dash\"]\n"
                            + match_int("Equal", 4242)),
        hook("ParentIn", "matchParentBinaries:\n- operator: In\n  values: [\"/usr/bin/dash\"]\n"
                         + match_int("Equal", 4242)),
        hook("NsIn", "matchNamespaces:\n- namespace: Pid\n  operator: In\n  values: [\"host_ns\"]\n"
                     + match_int("Equal", 4242)),
        hook("NsNotIn", "matchNamespaces:\n- namespace: Mnt\n  operator: NotIn\n  values: [\"host_ns\"]\n"
                        + match_int("Equal", 4242)),
        hook("CapIn", "matchCapabilities:\n- type: Effective\n  operator: In\n  values: [\"CAP_SYS_ADMIN\"]\n"
                      + match_int("Equal", 4242)),
        hook("CapNotIn", "matchCapabilities:\n- type: Effective\n  operator: NotIn\n  values: [\"CAP_SYS_ADMIN\"]\n"
                         + match_int("Equal", 4242)),
    ])
    string_arg = "    - index: 0\n      type: string\n"

    def match_str(op, *values):
        vals = "".join(f"\n  - \"{v}\"" for v in values)
        return f"matchArgs:\n- index: 0\n  operator: {op}\n  values:{vals}"

    strings = HEAD.format(name="ops-string") + "".join([
        hook(op, match_str(op, value), call="sys_chdir", args=string_arg)
        for op, value in (("Equal", "/nonexistent/tetrad/exact"), ("NotEqual", "/nonexistent/tetrad/exact"),
                          ("Prefix", "/nonexistent/tetrad/pre"), ("NotPrefix", "/nonexistent/tetrad/"),
                          ("Postfix", ".post"), ("NotPostfix", ".post"))
    ] + [
        hook("NoPost", match_int("Equal", 7001) + "\nmatchActions:\n- action: NoPost"),
        hook("RateLimit", match_int("Equal", 7002) + "\nmatchActions:\n- action: Post\n  rateLimit: 1m"),
        *(hook(f"RateLimit-{scope}", match_int("Equal", 7005) + "\nmatchActions:\n- action: Post\n  rateLimit: 1m"
               f"\n  rateLimitScope: {scope}") for scope in ("thread", "process", "global")),
        hook("Signal", match_int("Equal", 7003) + "\nmatchActions:\n- action: Signal\n  argSig: 10"),
        hook("Sigkill", match_int("Equal", 7004) + "\nmatchActions:\n- action: Sigkill"),
        hook("Post", match_int("Equal", 7001)),   # the NoPost hook's twin: proves 7001 was seen
    ])
    sock_arg = "    - index: 0\n      type: sock\n"

    def sock(op, *values):
        vals = "".join(f"\n  - \"{v}\"" for v in values)
        return f"matchArgs:\n- index: 0\n  operator: {op}\n  values:{vals}" if values else \
            f"matchArgs:\n- index: 0\n  operator: {op}"

    socks = HEAD.format(name="ops-sock") + "".join(
        hook(f"{op}{'-' + '-'.join(map(str, vals)) if vals else ''}", sock(op, *vals), call="tcp_connect",
             args=sock_arg, syscall=False)
        for op, vals in (("DAddr", ("127.0.0.2/32",)), ("NotDAddr", ("127.0.0.2",)),
                         ("SAddr", ("127.0.0.3/32",)), ("NotSAddr", ("127.0.0.3/32",)),
                         ("Family", ("AF_INET",)), ("Protocol", ("IPPROTO_TCP",)),
                         ("DPortPriv", ()), ("NotDPortPriv", ()), ("SPortPriv", ()), ("NotSportPriv", ()),   # Tetragon's spelling
                         ("DPort", (ports["b"],)), ("NotDPort", (ports["b"],)),
                         ("SPort", (ports["client"],)), ("NotSPort", (ports["client"],))))
    return {"ints.yaml": ints, "process.yaml": proc, "strings.yaml": strings, "sock.yaml": socks}


# The policy file each test needs: the daemon loads only those of the selected tests (a
# policy costs ~40 s to compile under the kernel lane's emulation, where a subset runs).
POLICY_OF = {
    "test_integer_operators": "ints.yaml", "test_match_pids_follow_forks": "ints.yaml",
    "test_match_return_args": "ints.yaml",
    "test_match_binaries_and_parent_binaries": "process.yaml",
    "test_match_parent_binaries_through_a_shell": "process.yaml",
    "test_match_namespaces": "process.yaml", "test_match_capabilities": "process.yaml",
    "test_string_operators": "strings.yaml", "test_nopost_and_post": "strings.yaml",
    "test_rate_limit": "strings.yaml", "test_rate_limit_scope": "strings.yaml",
    "test_signal_action": "strings.yaml",
    "test_sigkill_action": "strings.yaml", "test_sock_operators": "sock.yaml",
}
POLICY_NAMES = {"ints.yaml": "ops-int", "process.yaml": "ops-process", "strings.yaml": "ops-string",
                "sock.yaml": "ops-sock"}


def needed_policies(session) -> set[str]:
    """A test of this module missing from POLICY_OF gets every policy."""
    ours = [item.originalname for item in session.items if item.module.__name__ == __name__
            and "d" in getattr(item, "fixturenames", ()) and item.originalname != "test_all_test_policies_loaded"]
    if any(name not in POLICY_OF for name in ours):
        return set(POLICY_NAMES)
    return {POLICY_OF[name] for name in ours}


@pytest.fixture(scope="module")
def listeners():
    """Loopback listeners (a, on 127.0.0.2: b, on a privileged port: priv) and a
    free privileged port for a client, known before the policies are written."""
    socks = {"a": _listener("127.0.0.1"), "b": _listener("127.0.0.2"),
             "priv": _listener("127.0.0.1", _free_privileged_port())}
    ports = {k: s.getsockname()[1] for k, s in socks.items()}
    ports["client"] = _free_privileged_port()
    yield ports
    for s in socks.values():
        s.close()


@pytest.fixture(scope="module")
def d(request, tmp_path_factory, listeners):
    wanted = needed_policies(request.session)
    daemon = start_with_policies(tmp_path_factory.mktemp("selectors"),
                                 {f: text for f, text in policies(os.getpid(), listeners).items()
                                  if f in wanted})
    yield daemon
    daemon.stop()


def test_all_test_policies_loaded(d, request):
    from policytools import status
    states = {p["name"]: p["state"] for p in status(d)["policies"]}
    assert states == {POLICY_NAMES[f]: "loaded" for f in needed_policies(request.session)}, \
        status(d)["policies"]


GETPGID_ALL = """
import os, sys
for v in sys.argv[2:]:
    try:
        os.getpgid(int(v))
    except OSError:
        pass
"""


@pytest.mark.parametrize("op, expected", [
    ("Equal", [4242]),
    ("NotEqual", [4243, 6000, 50, 4400, 70000]),
    ("GT", [6000, 70000]),
    ("GreaterThan", [6000, 70000]),
    ("LT", [50]),
    ("Mask", [70000]),
    ("InRange", [4400]),
    ("NotInRange", [50, 70000]),
])
def test_integer_operators(d, op, expected):
    pid, _, _ = run_workload(GETPGID_ALL, *INT_VALUES)
    events = settle(d)
    assert kprobe_events(events, pid, "Equal"), "no event at all: the hooks did not fire"
    assert int_args(kprobe_events(events, pid, op)) == expected


def test_match_pids_follow_forks(d):
    pid, _, _ = run_workload(GETPGID_ALL, 4242)
    events = settle(d)
    assert int_args(kprobe_events(events, pid, "PidIn")) == [4242]
    assert kprobe_events(events, pid, "PidNotIn") == []
    # the workload is the test's child: without followForks its pid is not In
    assert kprobe_events(events, pid, "PidInNoFollow") == []


def test_match_return_args(d):
    pid, _, _ = run_workload(GETPGID_ALL, 0, 999999)   # 999999: no such process, -ESRCH
    events = settle(d)
    rets = kprobe_events(events, pid, "Ret")
    assert [b["return"]["int_arg"] for b in rets] == [-3]
    assert int_args(rets) == [999999]


def test_match_binaries_and_parent_binaries(d, tmp_path):
    other = tmp_path / OTHER_PYTHON_NAME
    shutil.copy(os.path.realpath(WORKLOAD_PYTHON), other)
    other.chmod(0o755)
    direct, _, _ = run_workload(GETPGID_ALL, 4242)
    copied, _, _ = run_workload(GETPGID_ALL, 4242, python=str(other))
    events = settle(d)
    assert kprobe_events(events, direct, "BinIn") and not kprobe_events(events, copied, "BinIn")
    assert kprobe_events(events, copied, "BinNotIn") and not kprobe_events(events, direct, "BinNotIn")
    assert kprobe_events(events, copied, "BinPostfix") and not kprobe_events(events, direct, "BinPostfix")
    assert kprobe_events(events, direct, "BinPrefix") and not kprobe_events(events, copied, "BinPrefix")
    assert kprobe_events(events, copied, "BinNotPrefix") and not kprobe_events(events, direct, "BinNotPrefix")
    assert kprobe_events(events, direct, "BinNotPostfix") and not kprobe_events(events, copied, "BinNotPostfix")
    # the parent of a direct child is pytest's python; via sh it is dash
    assert not kprobe_events(events, direct, "ParentIn")
    assert kprobe_events(events, direct, "ParentNotIn")


def test_match_parent_binaries_through_a_shell(d):
    import subprocess
    out = subprocess.run(["/usr/bin/dash", "-c", f"{WORKLOAD_PYTHON} -c 'import os; print(os.getpid()); "
                          "\ntry:\n os.getpgid(4242)\nexcept OSError: pass' & wait"],
                         capture_output=True, text=True, check=True)
    pid = int(out.stdout.split()[0])
    events = settle(d)
    assert int_args(kprobe_events(events, pid, "ParentIn")) == [4242]
    assert kprobe_events(events, pid, "ParentNotIn") == []


def test_match_namespaces(d):
    pid, _, _ = run_workload(GETPGID_ALL, 4242)
    events = settle(d)
    assert int_args(kprobe_events(events, pid, "NsIn")) == [4242]
    assert kprobe_events(events, pid, "NsNotIn") == []


def test_match_capabilities(d):
    root, _, _ = run_workload(GETPGID_ALL, 4242)
    unpriv, _, _ = run_workload(GETPGID_ALL, 4242, prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                                            "--clear-groups", "--inh-caps=-all"))
    events = settle(d)
    assert int_args(kprobe_events(events, root, "CapIn")) == [4242]
    assert kprobe_events(events, unpriv, "CapIn") == []
    assert int_args(kprobe_events(events, unpriv, "CapNotIn")) == [4242]
    assert kprobe_events(events, root, "CapNotIn") == []
    assert kprobe_events(events, unpriv, "Equal"), "the unprivileged workload's call was not seen"


CHDIR_ALL = """
import os, sys
for p in sys.argv[2:]:
    try:
        os.chdir(p)
    except OSError:
        pass
"""
PATHS = ["/nonexistent/tetrad/exact", "/nonexistent/tetrad/pre-x", "/nonexistent/tetrad/y.post", "/nonexistent/other"]


@pytest.mark.parametrize("op, expected", [
    ("Equal", [PATHS[0]]),
    ("NotEqual", PATHS[1:]),
    ("Prefix", [PATHS[1]]),
    ("NotPrefix", [PATHS[3]]),
    ("Postfix", [PATHS[2]]),
    ("NotPostfix", [PATHS[0], PATHS[1], PATHS[3]]),
])
def test_string_operators(d, op, expected):
    pid, _, _ = run_workload(CHDIR_ALL, *PATHS)
    events = settle(d)
    got = [b["args"][0]["string_arg"] for b in kprobe_events(events, pid, op)]
    assert got == expected


def test_nopost_and_post(d):
    pid, _, _ = run_workload(GETPGID_ALL, 7001)
    events = settle(d)
    assert int_args(kprobe_events(events, pid, "Post")) == [7001]
    assert kprobe_events(events, pid, "NoPost") == []


def test_rate_limit(d):
    pid, _, _ = run_workload(GETPGID_ALL, *[7002] * 5)
    events = settle(d)
    assert int_args(kprobe_events(events, pid, "RateLimit")) == [7002]


GETPGID_TWO_THREADS = """
import os, sys, threading
def call():
    for _ in range(3):
        try:
            os.getpgid(7005)
        except OSError:
            pass
t = threading.Thread(target=call)
t.start()
t.join()
call()
"""


def test_rate_limit_scope(d):
    """Two threads of one process, then a second process: a thread's limit
    lets each thread through once, a process's each process, a global one
    only the first call."""
    first, _, _ = run_workload(GETPGID_TWO_THREADS)
    second, _, _ = run_workload(GETPGID_TWO_THREADS)
    events = settle(d)

    def count(message):
        return [len(kprobe_events(events, pid, message)) for pid in (first, second)]

    assert count("RateLimit-thread") == [2, 2]
    assert count("RateLimit-process") == [1, 1]
    assert count("RateLimit-global") == [1, 0]


SIGNAL_WORKLOAD = """
import os, signal, sys, time
got = []
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])   # a parent may block it
signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
try:
    os.getpgid(7003)
except OSError:
    pass
for _ in range(100):   # Python runs the handler at its next check, not at once
    if got:
        break
    time.sleep(0.01)
sys.exit(0 if got else 3)
"""


def test_signal_action(d):
    pid, _, rc = run_workload(SIGNAL_WORKLOAD, check=False)
    events = settle(d)
    [body] = kprobe_events(events, pid, "Signal")
    assert body["action"] == "KPROBE_ACTION_SIGNAL"
    assert rc == 0, "the workload did not receive SIGUSR1"


def test_sigkill_action(d):
    pid, _, rc = run_workload(GETPGID_ALL + "\nprint('survived')", 7004, check=False)
    assert rc == -signal.SIGKILL
    events = settle(d)
    [body] = kprobe_events(events, pid, "Sigkill")
    assert body["action"] == "KPROBE_ACTION_SIGKILL"


CONNECT = """
import socket, sys
for spec in sys.argv[2:]:
    host, port, sport = spec.split(":")
    c = socket.socket()
    if int(sport):   # a privileged source port, from another source address
        c.bind(("127.0.0.3", int(sport)))
    c.connect((host, int(port)))
    c.close()
"""


def _listener(host: str, port: int = 0) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(8)
    return s


def _free_privileged_port() -> int:
    for port in range(950, 1020):
        try:
            s = _listener("127.0.0.1", port)
        except OSError:
            continue
        s.close()
        return port
    raise AssertionError("no free privileged port")


def test_sock_operators(d, listeners):
    pa, pb, pp = listeners["a"], listeners["b"], listeners["priv"]
    pid, _, _ = run_workload(CONNECT, f"127.0.0.1:{pa}:0", f"127.0.0.2:{pb}:0",
                             f"127.0.0.1:{pp}:{listeners['client']}")
    events = settle(d)

    def dests(message):
        return [(x["args"][0]["sock_arg"]["daddr"], x["args"][0]["sock_arg"]["dport"])
                for x in kprobe_events(events, pid, message)]

    all3 = [("127.0.0.1", pa), ("127.0.0.2", pb), ("127.0.0.1", pp)]
    assert dests("Family-AF_INET") == all3
    assert dests("Protocol-IPPROTO_TCP") == all3
    assert dests("DAddr-127.0.0.2/32") == [("127.0.0.2", pb)]
    assert dests("NotDAddr-127.0.0.2") == [all3[0], all3[2]]
    assert dests("SAddr-127.0.0.3/32") == [all3[2]]
    assert dests("NotSAddr-127.0.0.3/32") == all3[:2]
    assert dests("DPortPriv") == [all3[2]]
    assert dests("NotDPortPriv") == all3[:2]
    assert dests("SPortPriv") == [all3[2]]
    assert dests("NotSportPriv") == all3[:2]
    assert dests(f"DPort-{pb}") == [all3[1]]
    assert dests(f"NotDPort-{pb}") == [all3[0], all3[2]]
    assert dests(f"SPort-{listeners['client']}") == [all3[2]]
    assert dests(f"NotSPort-{listeners['client']}") == all3[:2]
