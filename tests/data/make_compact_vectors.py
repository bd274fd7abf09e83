# Builds compact_vectors.json (run from this directory): Tetragon-format events and
# the line tetra prints for each, derived from Tetragon's encoder and its tests.
import json
P = {"binary": "/usr/bin/curl", "arguments": "cilium.io", "pod": {"namespace": "kube-system", "name": "tetragon"}}
PK = {"binary": "/usr/bin/curl", "pod": {"namespace": "kube-system", "name": "tetragon"}}
BT = {"binary": "/usr/bin/bpftool", "pod": {"namespace": "kube-system", "name": "tetragon"}}
def kp(fn, args=None, proc=PK):
    b = {"process": proc, "function_name": fn}
    if args is not None: b["args"] = args
    return {"process_kprobe": b}
V = []
def v(name, event, expected, **kw):
    V.append({"name": name, "event": event, "expected": expected, **kw})
# From Tetragon's own encoder tests (pkg/encoder/encoder_test.go)
v("exec no pod", {"process_exec": {"process": {"binary": "/usr/bin/curl", "arguments": "cilium.io"}}, "node_name": "my-node"},
  "🚀 process my-node /usr/bin/curl cilium.io")
v("exec pod", {"process_exec": {"process": P}}, "🚀 process kube-system/tetragon /usr/bin/curl cilium.io")
v("exit status", {"process_exit": {"process": P, "status": 1}}, "💥 exit    kube-system/tetragon /usr/bin/curl cilium.io 1")
v("exit signal", {"process_exit": {"process": P, "signal": "SIGKILL"}}, "💥 exit    kube-system/tetragon /usr/bin/curl cilium.io SIGKILL")
v("exit status 0", {"process_exit": {"process": P}}, "💥 exit    kube-system/tetragon /usr/bin/curl cilium.io 0")
v("kprobe unknown", kp("unhandled_function"), "❓ syscall kube-system/tetragon /usr/bin/curl unhandled_function")
v("kprobe unknown keeps prefix", kp("__x64_sys_unlinkat"), "❓ syscall kube-system/tetragon /usr/bin/curl __x64_sys_unlinkat")
v("fd_install no args", kp("fd_install"), "📬 open    kube-system/tetragon /usr/bin/curl ")
v("fd_install", kp("fd_install", [{}, {"file_arg": {"path": "/etc/password"}}]), "📬 open    kube-system/tetragon /usr/bin/curl /etc/password")
v("write no args", kp("__x64_sys_write"), "📝 write   kube-system/tetragon /usr/bin/curl  ")
v("write", kp("__x64_sys_write", [{"file_arg": {"path": "/etc/password"}}, {}, {"size_arg": "1234"}]),
  "📝 write   kube-system/tetragon /usr/bin/curl /etc/password 1234 bytes")
v("read", kp("sys_read", [{"file_arg": {"path": "/etc/shadow"}}, {"bytes_arg": ""}, {"size_arg": 4096}]),
  "📚 read    kube-system/tetragon /usr/bin/curl /etc/shadow 4096 bytes")
v("close no args", kp("__x64_sys_close"), "📪 close   kube-system/tetragon /usr/bin/curl ")
v("close", kp("__x64_sys_close", [{"file_arg": {"path": "/etc/password"}}]), "📪 close   kube-system/tetragon /usr/bin/curl /etc/password")
v("bpf_check no args", kp("bpf_check", None, BT), "🐝 bpf_load kube-system/tetragon /usr/bin/bpftool ")
v("bpf_check", kp("bpf_check", [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_KPROBE", "InsnCnt": 2048, "ProgName": "amazing-program"}}], BT),
  "🐝 bpf_load kube-system/tetragon /usr/bin/bpftool BPF_PROG_TYPE_KPROBE amazing-program instruction count 2048")
v("perf_event_alloc no args", kp("security_perf_event_alloc", None, BT), "🐝 perf_event_alloc kube-system/tetragon /usr/bin/bpftool ")
v("perf_event_alloc", kp("security_perf_event_alloc", [{"perf_event_arg": {"KprobeFunc": "commit_creds", "Type": "PERF_TYPE_TRACEPOINT"}}], BT),
  "🐝 perf_event_alloc kube-system/tetragon /usr/bin/bpftool PERF_TYPE_TRACEPOINT commit_creds")
for fn in ("security_bpf_map_alloc", "security_bpf_map_create"):
    v(fn + " no args", kp(fn, None, BT), "🗺 bpf_map_create kube-system/tetragon /usr/bin/bpftool ")
    v(fn, kp(fn, [{"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 8, "ValueSize": 8, "MaxEntries": 1024, "MapName": "amazing-map"}}], BT),
      "🗺 bpf_map_create kube-system/tetragon /usr/bin/bpftool BPF_MAP_TYPE_HASH amazing-map key size 8 value size 8 max entries 1024")
v("timestamp epoch", {"process_exec": {"process": P}, "time": "1970-01-01T00:00:00Z"},
  "1970-01-01T00:00:00.000000000Z 🚀 process kube-system/tetragon /usr/bin/curl cilium.io", timestamps=True)
v("timestamp missing", {"process_exec": {"process": P}},
  "1970-01-01T00:00:00.000000000Z 🚀 process kube-system/tetragon /usr/bin/curl cilium.io", timestamps=True)
v("timestamp micro", {"process_exec": {"process": P}, "time": "2024-05-01T10:11:12.123456Z"},
  "2024-05-01T10:11:12.123456000Z 🚀 process kube-system/tetragon /usr/bin/curl cilium.io", timestamps=True)
v("timestamp offset to UTC", {"process_exec": {"process": P}, "time": "2024-05-01T12:11:12.5+02:00"},
  "2024-05-01T10:11:12.500000000Z 🚀 process kube-system/tetragon /usr/bin/curl cilium.io", timestamps=True)
# quoting: Go strconv.Quote
v("quote binary escape", {"process_exec": {"process": {"binary": "/usr/bin/\x1b[31mmalicious\x1b[0m", "arguments": "normal-args", "pod": {"namespace": "kube-system", "name": "tetragon"}}}},
  '🚀 process kube-system/tetragon "/usr/bin/\\x1b[31mmalicious\\x1b[0m" normal-args')
v("quote args nul cr", {"process_exec": {"process": {"binary": "/bin/sh", "arguments": "echo \x00null\rbyte", "pod": {"namespace": "default", "name": "pod"}}}},
  '🚀 process default/pod /bin/sh "echo \\x00null\\rbyte"')
v("quote hostname", {"process_exec": {"process": {"binary": "/usr/bin/test", "arguments": "args"}}, "node_name": "host\nwith\nnewlines"},
  '🚀 process "host\\nwith\\nnewlines" /usr/bin/test args')
v("quote args with space and quote", {"process_exec": {"process": {"binary": "/bin/echo", "arguments": "a \"b\" c\\d\t\x7f\u200b\U000e0001 é"}}, "node_name": "n"},
  '🚀 process n /bin/echo "a \\"b\\" c\\\\d\\t\\x7f\\u200b\\U000e0001 é"')
v("no quote unicode printable", {"process_exec": {"process": {"binary": "/bin/日本", "arguments": "ünïcödé"}}, "node_name": "n"},
  "🚀 process n /bin/日本 ünïcödé")
v("quote file arg", kp("fd_install", [{}, {"file_arg": {"path": "/tmp/file\nwith\nnewlines"}}], {"binary": "/usr/bin/cat", "pod": {"namespace": "default", "name": "test"}}),
  '📬 open    default/test /usr/bin/cat "/tmp/file\\nwith\\nnewlines"')
v("openat string arg", kp("sys_openat", [{"int_arg": -100}, {"string_arg": "/etc/bad\nfile"}], {"binary": "/usr/bin/cat", "pod": {"namespace": "default", "name": "test"}}),
  '📬️ openat  default/test /usr/bin/cat "/etc/bad\\nfile"')
v("open string arg", kp("__x64_sys_open", [{"int_arg": -100}, {"string_arg": "/etc/passwd"}]),
  '📬️ open    kube-system/tetragon /usr/bin/curl /etc/passwd')
v("write file quoted", kp("__x64_sys_write", [{"file_arg": {"path": "/var/log/bad\rfile"}}], {"binary": "/usr/bin/write", "pod": {"namespace": "default", "name": "test"}}),
  '📝 write   default/test /usr/bin/write "/var/log/bad\\rfile" ')
v("path truncate", kp("security_path_truncate", [{"path_arg": {"path": "/data/bad\nfile"}}], {"binary": "/usr/bin/truncate", "pod": {"namespace": "default", "name": "test"}}),
  '📝 truncate default/test /usr/bin/truncate "/data/bad\\nfile"')
v("path truncate no args", kp("security_path_truncate"), "❓ security_path_truncate kube-system/tetragon /usr/bin/curl ")
v("file truncate", kp("security_file_truncate", [{"file_arg": {"path": "/data/f"}}]), "📝 truncate kube-system/tetragon /usr/bin/curl /data/f")
v("file_permission write", kp("security_file_permission", [{"file_arg": {"path": "/etc/passwd"}}, {"int_arg": 2}]),
  "📝 write   kube-system/tetragon /usr/bin/curl /etc/passwd")
v("file_permission read", kp("security_file_permission", [{"file_arg": {"path": "/etc/passwd"}}, {"int_arg": 4}]),
  "📚 read    kube-system/tetragon /usr/bin/curl /etc/passwd")
v("file_permission other", kp("security_file_permission", [{"file_arg": {"path": "/etc/passwd"}}, {"int_arg": 8}]),
  "❓ security_file_permission kube-system/tetragon /usr/bin/curl /etc/passwd")
v("file_permission one arg", kp("security_file_permission", [{"file_arg": {"path": "/etc/passwd"}}]),
  "❓ security_file_permission kube-system/tetragon /usr/bin/curl ")
v("mmap rx", kp("security_mmap_file", [{"file_arg": {"path": "/lib/libc.so.6"}}, {"uint_arg": 5}, {"uint_arg": 1}]),
  "📝 mmap-rx kube-system/tetragon /usr/bin/curl /lib/libc.so.6")
v("mmap rwx", kp("security_mmap_file", [{"file_arg": {"path": "/x"}}, {"uint_arg": 7}]),
  "📝 mmap-rwx kube-system/tetragon /usr/bin/curl /x")
v("mmap none", kp("security_mmap_file", [{"file_arg": {"path": "/x"}}, {}]),
  "📝 mmap-   kube-system/tetragon /usr/bin/curl /x")
v("mount", kp("__x64_sys_mount", [{"string_arg": "/dev/sda1"}, {"string_arg": "/mnt/my disk"}]),
  '💾 mount   kube-system/tetragon /usr/bin/curl /dev/sda1 "/mnt/my disk"')
v("pivot_root", kp("__x64_sys_pivot_root", [{"string_arg": "/new"}, {"string_arg": "/new/old"}]),
  "💾 pivot_root kube-system/tetragon /usr/bin/curl /new /new/old")
v("setuid", kp("__x64_sys_setuid", [{"int_arg": 0}]), "🔑 setuid  kube-system/tetragon /usr/bin/curl 0")
v("setuid no args", kp("__x64_sys_setuid"), "🔑 setuid  kube-system/tetragon /usr/bin/curl ")
v("clock_settime", kp("__x64_sys_clock_settime", [{"int_arg": 0}]), "⏰ clock_settime kube-system/tetragon /usr/bin/curl")
v("proc_exec_connector", kp("proc_exec_connector"), "🔧 proc_exec_connector kube-system/tetragon /usr/bin/curl")
v("setns net", kp("__x64_sys_setns", [{"int_arg": 3}, {"int_arg": 0x40000000}]), "🔧 setns   kube-system/tetragon /usr/bin/curl net")
v("setns unknown", kp("__x64_sys_setns", [{"int_arg": 3}, {"int_arg": 5}]), "🔧 setns   kube-system/tetragon /usr/bin/curl ")
SOCK = {"sock_arg": {"family": "AF_INET", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "saddr": "10.0.0.1", "daddr": "1.1.1.1", "sport": 40000, "dport": 443, "cookie": "18446", "state": "TCP_SYN_SENT"}}
v("tcp_connect", kp("tcp_connect", [SOCK]), "🔌 connect kube-system/tetragon /usr/bin/curl tcp 10.0.0.1:40000 -> 1.1.1.1:443")
v("tcp_connect no args", kp("tcp_connect"), "🔌 connect kube-system/tetragon /usr/bin/curl ")
v("tcp_close", kp("tcp_close", [SOCK]), "🧹 close   kube-system/tetragon /usr/bin/curl tcp 10.0.0.1:40000 -> 1.1.1.1:443")
v("tcp_sendmsg", kp("tcp_sendmsg", [SOCK, {"int_arg": 517}]), "📤 sendmsg kube-system/tetragon /usr/bin/curl tcp 10.0.0.1:40000 -> 1.1.1.1:443 bytes 517")
v("tcp_sendmsg no size", kp("tcp_sendmsg", [SOCK]), "📤 sendmsg kube-system/tetragon /usr/bin/curl tcp 10.0.0.1:40000 -> 1.1.1.1:443 bytes 0")
v("tracepoint", {"process_tracepoint": {"process": PK, "subsys": "syscalls", "event": "sys_enter_unlinkat", "policy_name": "p"}},
  "⁉️ tracepoint kube-system/tetragon /usr/bin/curl syscalls sys_enter_unlinkat")
v("raw syscall openat", {"process_tracepoint": {"process": PK, "subsys": "raw_syscalls", "event": "sys_enter",
   "args": [{"long_arg": "257"}, {"size_arg": "18446744073709551516"}, {"size_arg": "140737488347136"}, {"size_arg": "0"}, {"size_arg": "0"}]}},
  "☎  syscall kube-system/tetragon /usr/bin/curl openat(int dfd=18446744073709551516, const char *filename=0x7fffffffe000, int flags=0, umode_t mode=0)")
v("raw syscall id form", {"process_tracepoint": {"process": PK, "subsys": "raw_syscalls", "event": "sys_enter",
   "args": [{"syscall_id": {"id": 60, "abi": "x64"}}, {"size_arg": "3"}]}},
  "☎  syscall kube-system/tetragon /usr/bin/curl exit(int error_code=3)")
v("raw syscall missing args", {"process_tracepoint": {"process": PK, "subsys": "raw_syscalls", "event": "sys_enter",
   "args": [{"long_arg": "0"}]}},
  "☎  syscall kube-system/tetragon /usr/bin/curl read(unsigned int fd=?, char * buf=?, size_t count=?)")
v("raw syscall unknown", {"process_tracepoint": {"process": PK, "subsys": "raw_syscalls", "event": "sys_enter",
   "args": [{"long_arg": "99999"}]}}, "☎  syscall kube-system/tetragon /usr/bin/curl unknown")
v("uprobe", {"process_uprobe": {"process": PK, "path": "/lib/\x1b[31mevil\x1b[0m.so", "symbol": "function_name"}},
  '🕵️ uprobe  kube-system/tetragon /usr/bin/curl "/lib/\\x1b[31mevil\\x1b[0m.so" function_name')
v("uprobe symbol quoted", {"process_uprobe": {"process": PK, "path": "/lib/test.so", "symbol": "func\nname"}},
  '🕵️ uprobe  kube-system/tetragon /usr/bin/curl /lib/test.so "func\\nname"')
v("usdt", {"process_usdt": {"process": PK, "path": "/usr/lib/bad\x00path", "provider": "prov", "name": "probe\tname"}},
  '🕵️ usdt    kube-system/tetragon /usr/bin/curl "/usr/lib/bad\\x00path" prov "probe\\tname"')
v("lsm", {"process_lsm": {"process": PK, "function_name": "file_open", "policy_name": "p"}},
  "🔒 LSM     kube-system/tetragon /usr/bin/curl file_open")
v("loader", {"process_loader": {"process": PK, "path": "/lib/evil\x1b[31m.so", "buildid": "3q2+7w=="}},
  '🧬 loader  kube-system/tetragon /usr/bin/curl deadbeef "/lib/evil\\x1b[31m.so"')
v("loader url-safe unpadded buildid", {"process_loader": {"process": PK, "path": "/lib/x.so", "buildid": "-_8"}},
  "🧬 loader  kube-system/tetragon /usr/bin/curl fbff /lib/x.so")
v("loader no buildid", {"process_loader": {"process": PK, "path": "/lib/x.so"}},
  "🧬 loader  kube-system/tetragon /usr/bin/curl /lib/x.so")
v("throttle start", {"process_throttle": {"type": "THROTTLE_START", "cgroup": "/sys/fs/cgroup\nmalicious"}},
  '🧬 throttle START "/sys/fs/cgroup\\nmalicious"')
v("throttle stop", {"process_throttle": {"type": "THROTTLE_STOP", "cgroup": "pod1"}}, "🧬 throttle STOP  pod1")
v("test", {"test": {}}, "TEST EVENT")
v("rate_limit_info", {"rate_limit_info": {"number_of_dropped_process_events": "42"}, "node_name": "n"}, "🚦 ratelimit 42 events dropped")
EFF22 = ["CAP_%d" % i for i in range(22)]
v("caps trailer", {"process_exec": {"process": {"binary": "/bin/sh", "arguments": "-c id", "cap": {"effective": EFF22}}}, "node_name": "node"},
  "🚀 process node /bin/sh " + '"-c id"' + " " + " " * (120 - len("🚀 process node /bin/sh \"-c id\"".encode()) - len("🛑 CAP_SYS_ADMIN")) + "🛑 CAP_SYS_ADMIN")
v("caps 21 entries no trailer", {"process_exec": {"process": {"binary": "/bin/sh", "cap": {"effective": EFF22[:21]}}}, "node_name": "node"},
  "🚀 process node /bin/sh ")
# colours
v("color exec", {"process_exec": {"process": {"binary": "/bin/ls", "arguments": "-l"}}, "node_name": "node"},
  "\x1b[34m🚀 process\x1b[0m \x1b[32mnode\x1b[0m \x1b[35m/bin/ls\x1b[0m \x1b[36m-l\x1b[0m " + " " * (120 - len("\x1b[34m🚀 process\x1b[0m \x1b[32mnode\x1b[0m \x1b[35m/bin/ls\x1b[0m \x1b[36m-l\x1b[0m".encode()) - 9) + "\x1b[35m\x1b[0m",
  color="always")
v("color exit signal", {"process_exit": {"process": {"binary": "/bin/ls"}, "signal": "SIGKILL"}, "node_name": "node"},
  "\x1b[34m💥 exit   \x1b[0m \x1b[32mnode\x1b[0m \x1b[35m/bin/ls\x1b[0m \x1b[36m\x1b[0m \x1b[31mSIGKILL\x1b[0m " + " " * (120 - len("\x1b[34m💥 exit   \x1b[0m \x1b[32mnode\x1b[0m \x1b[35m/bin/ls\x1b[0m \x1b[36m\x1b[0m \x1b[31mSIGKILL\x1b[0m".encode()) - 9) + "\x1b[35m\x1b[0m",
  color="always")
v("color throttle", {"process_throttle": {"type": "THROTTLE_STOP", "cgroup": "c"}},
  "\x1b[31m🧬 throttle\x1b[0m \x1b[32mSTOP \x1b[0m c", color="always")
# What tetra prints below the line (full output, newline included)
ST = kp("security_bprm_check", [{"file_arg": {"path": "/x"}}])
ST["process_kprobe"]["kernel_stack_trace"] = [{"address": "18446744072635809128", "offset": "104", "symbol": "security_bprm_check"},
                                              {"address": "18446744072636000000", "offset": "0", "symbol": "bad sym"}]
ST["process_kprobe"]["user_stack_trace"] = [{"address": "140000000000", "offset": "4096", "symbol": "main", "module": "/usr/bin/curl"},
                                            {"address": "140000000001", "offset": "16", "module": "/lib/libc.so.6"}]
v("stack traces", ST, "❓ syscall kube-system/tetragon /usr/bin/curl security_bprm_check\n"
  "Kernel:\n   0xffffffffbffffd68: security_bprm_check+0x68\n   0xffffffffc002e700: \"bad sym\"+0x0\n"
  "User:\n   0x2098a67800: main (/usr/bin/curl+0x1000)\n   0x2098a67801: (/lib/libc.so.6+0x10)\n", full=True)
v("stack traces colour", ST, "Kernel:\n\x1b[32m   0xffffffffbffffd68:\x1b[0m\x1b[34m security_bprm_check\x1b[0m+\x1b[33m0x68\n\x1b[0m"
  "\x1b[32m   0xffffffffc002e700:\x1b[0m\x1b[34m \"bad sym\"\x1b[0m+\x1b[33m0x0\n\x1b[0m"
  "User:\n\x1b[32m   0x2098a67800:\x1b[0m\x1b[34m main\x1b[0m\x1b[33m (/usr/bin/curl+0x1000)\n\x1b[0m"
  "\x1b[32m   0x2098a67801:\x1b[0m\x1b[33m (/lib/libc.so.6+0x10)\n\x1b[0m", trailer=True, color="always")
v("stack traces off", ST, "❓ syscall kube-system/tetragon /usr/bin/curl security_bprm_check\n", full=True, stack_traces=False)
IMA = {"process_lsm": {"process": PK, "function_name": "bprm_check_security", "ima_hash": "sha256:abcd",
                       "args": [{"linux_binprm_arg": {"path": "/usr/bin/my tool"}}]}}
v("ima hash", IMA, '🔒 LSM     kube-system/tetragon /usr/bin/curl bprm_check_security\n   "/usr/bin/my tool" sha256:abcd\n', full=True)
IMA2 = {"process_lsm": {"process": PK, "function_name": "file_open", "ima_hash": "sha1:00",
                        "args": [{"file_arg": {"path": "/etc/passwd"}}]}}
v("ima hash file", IMA2, "🔒 LSM     kube-system/tetragon /usr/bin/curl file_open\n   /etc/passwd sha1:00\n", full=True)
v("ima hash off", IMA2, "🔒 LSM     kube-system/tetragon /usr/bin/curl file_open\n", full=True, ima_hash=False)
IMA3 = {"process_lsm": {"process": PK, "function_name": "task_alloc", "ima_hash": "sha1:00", "args": []}}
v("ima hash other hook", IMA3, "🔒 LSM     kube-system/tetragon /usr/bin/curl task_alloc\n", full=True)
# Events recorded from a tetrad daemon on the development machine
REC = [json.loads(l) for l in open("tetrad_recorded_events.jsonl")]
v("recorded tetrad exec", REC[0],
  '🚀 process vm /opt/tetrad/.venv/bin/tetrad "/opt/tetrad/.venv/bin/tetrad probe '
  '--server-address=unix:///tmp/t/run/tetrad.sock"')
v("recorded tetrad exit by signal", REC[1], '💥 exit    vm /bin/sh "-c \\"sleep 30; true\\" mf96361379258" SIGKILL')
v("recorded tetrad exit status", REC[2], '💥 exit    vm /bin/sh "-c \\"exit 3\\" m8232e61ee3cc \\"a b\\" c\\nd" 3')
v("recorded tetrad exit timestamps", REC[2], REC[2]["time"][:-1].ljust(29, "0") + 'Z 💥 exit    vm /bin/sh "-c \\"exit 3\\" m8232e61ee3cc \\"a b\\" c\\nd" 3',
  timestamps=True)
with open("compact_vectors.json", "w") as f:
    json.dump(V, f, indent=1, ensure_ascii=True)
print(len(V))
