/* In-kernel prevention for policies that refuse opening device nodes: a
 * cgroup device program on the cgroup v2 root, consulted by the kernel
 * before a character or block device is opened for reading or writing, that
 * refuses with EPERM.  This works on kernels without BPF LSM or
 * bpf_override_return, where Override on an open hook cannot be honoured.
 *
 * The program judges devices, not paths: tetrad/enforce/devices.py resolves a
 * policy's paths to the (type, major, minor) of the nodes present when the
 * policy loads and puts them in `devices`, each with the bits of the rules
 * that name it.  Rules and their process scope work as in enforce_sock.c (the
 * scope maps have the same names and meaning, so tetrad/enforce/sock.py fills
 * both; BCC rewrites map calls only in the main file, hence the copy of the
 * exec/fork/exit tracking below). */
#include "common.h"
#include "ns.h"

#ifndef MAX_RULES
#define MAX_RULES 16
#endif
#define BINARY_KEY_LEN 256

#define ACTION_DENY    1   /* refuse with EPERM, report */
#define ACTION_MONITOR 2   /* report what would have been refused, allow */
#define ACTION_KILL    3   /* refuse, report, and SIGKILL the opener as the call returns */

#define SCOPE_PROCESS     (1u << 0)
#define SCOPE_CGROUP      (1u << 1)
#define SCOPE_NOT_PROCESS (1u << 2)

#define RECORD_DEVICE 17

/* uapi: access_type is (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_* */
#define DEVCG_DEV_MASK 0xffff

struct dev_key {
    u32 type;         /* BPF_DEVCG_DEV_BLOCK 1, BPF_DEVCG_DEV_CHAR 2 */
    u32 major, minor;
};

struct dev_rule {
    u32 action;       /* 0: empty slot */
    u32 access;       /* BPF_DEVCG_ACC_* bits refused (read, write) */
    u32 scope;
    u32 pad;
};

struct dev_record {
    struct record_header h;
    u32 pid, tid;
    u32 rule;
    u32 action;
    u32 access;
    u32 type, major, minor;
    u64 cgroup_id;
};

BPF_RINGBUF_OUTPUT(events, RB_PAGES);
BPF_PERCPU_ARRAY(lost_records, u64, LOST_SLOTS);
BPF_ARRAY(rules, struct dev_rule, MAX_RULES);
BPF_HASH(devices, struct dev_key, u64, 4096);   /* device -> bits of the rules naming it */
BPF_HASH(pid_scope, u32, u64, 65536);
BPF_HASH(exec_scope, u32, u64, 65536);
BPF_HASH(cgroup_scope, u64, u64, 16384);
BPF_ARRAY(cgroup_scoped, u32, 1);               /* [0]: some rule is scoped to cgroups */
#define SCOPE_DEPTH 12
struct binary_key {
    char path[BINARY_KEY_LEN];
};
BPF_HASH(binary_scope, struct binary_key, u64, 1024);
BPF_PERCPU_ARRAY(scratch_key, struct binary_key, 1);
BPF_HASH(kill_pending, u32, u8, 4096);          /* tid -> refused by an ACTION_KILL rule */
BPF_ARRAY(ns_in_use, u32, 1);                   /* > 0 while a rule has matchNamespaces */
BPF_ARRAY(ns_kinds, struct ns_kind_rules, NS_KINDS);
BPF_HASH(ns_scope, struct ns_key, u64, 1024);   /* (kind, namespace inode) -> rule bits */

/* Bits of the rules whose matchNamespaces the caller satisfies (all rules
 * when none has any); as in enforce_sock.c, see ns.h. */
static __always_inline u64 ns_scope_bits(void)
{
    u32 zero = 0;
    u32 *used = ns_in_use.lookup(&zero);
    if (!used || !*used)
        return ~0ull;
    void *task = (void *)bpf_get_current_task();
    u64 ok = ~0ull;
#pragma unroll
    for (u32 k = 0; k < NS_KINDS; k++) {
        u32 kind = k;
        struct ns_kind_rules *kr = ns_kinds.lookup(&kind);
        if (!kr || !kr->need)
            continue;
        struct ns_key key = {.kind = k, .inum = read_ns(task, k)};
        u64 *listed = ns_scope.lookup(&key);
        u64 in = listed ? *listed : 0;
        ok &= ~kr->need | (in ^ kr->neg);
    }
    return ok;
}

/* A rule scoped to cgroups covers their descendants too; as in enforce_sock.c. */
static __always_inline u64 scope_bits(u64 cgid)
{
    u64 *cb = cgroup_scope.lookup(&cgid);
    u64 bits = cb ? *cb : 0;
#pragma clang loop unroll(disable)
    for (int level = 1; level < SCOPE_DEPTH; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id || id == cgid)
            break;
        cb = cgroup_scope.lookup(&id);
        if (cb)
            bits |= *cb;
    }
    return bits;
}

/* Returns 1 to allow, 0 to refuse (the opener gets EPERM). */
int device(struct bpf_cgroup_dev_ctx *ctx)
{
    struct dev_key k = {.type = ctx->access_type & DEVCG_DEV_MASK, .major = ctx->major,
                        .minor = ctx->minor};
    u32 access = ctx->access_type >> 16;
    u64 *named = devices.lookup(&k);
    if (!named)           /* the common case: one lookup, allowed */
        return 1;
    u64 dev_bits = *named;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if (tgid == EXEMPT_TGID || tgid == 1)   /* never act on tetrad itself or init */
        return 1;
    u64 cgid = bpf_get_current_cgroup_id();
    u64 *eb = exec_scope.lookup(&tgid);
    u64 *pb = pid_scope.lookup(&tgid);
    u32 zero = 0;
    u32 *scoped = cgroup_scoped.lookup(&zero);
    u64 proc_bits = (eb ? *eb : 0) | (pb ? *pb : 0);
    u64 cgroup_bits = scoped && *scoped ? scope_bits(cgid) : 0;   /* walked only when a rule asks */
    u64 ns_bits = ns_scope_bits();

#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_RULES; i++) {
        u64 bit = 1ull << i;
        if (!(dev_bits & bit))
            continue;
        u32 key = i;
        struct dev_rule *r = rules.lookup(&key);
        if (!r || !r->action || !(r->access & access))
            continue;
        if ((r->scope & SCOPE_PROCESS) && !(proc_bits & bit))
            continue;
        if ((r->scope & SCOPE_NOT_PROCESS) && (proc_bits & bit))
            continue;
        if ((r->scope & SCOPE_CGROUP) && !(cgroup_bits & bit))
            continue;
        if (!(ns_bits & bit))
            continue;
        struct dev_record *e = events.ringbuf_reserve(sizeof(struct dev_record));
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->h.type = RECORD_DEVICE;
            e->h.size = sizeof(*e);
            e->h.ktime = bpf_ktime_get_ns();
            e->pid = tgid;
            e->tid = (u32)pid_tgid;
            e->rule = i;
            e->action = r->action;
            e->access = access;
            e->type = k.type;
            e->major = k.major;
            e->minor = k.minor;
            e->cgroup_id = cgid;
            events.ringbuf_submit(e, 0);
        } else {
            u32 slot = RECORD_DEVICE % LOST_SLOTS;
            u64 *n = lost_records.lookup(&slot);
            if (n)
                __sync_fetch_and_add(n, 1);
        }
        if (r->action == ACTION_KILL) {
            u32 tid = (u32)pid_tgid;
            u8 one = 1;
            kill_pending.update(&tid, &one);
        }
        return r->action == ACTION_MONITOR ? 1 : 0;
    }
    return 1;
}

/* Sigkill: the caller is killed as the refused call returns, before it runs
 * another instruction of its own.  A cgroup program cannot send signals, so
 * it marks the thread and the syscall's exit tracepoint sends SIGKILL. */
static __always_inline int kill_if_refused(void)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (kill_pending.lookup(&tid)) {
        kill_pending.delete(&tid);
        bpf_send_signal(9);
    }
    return 0;
}

/* Attached to the open calls' exits (DeviceEnforcer.KILL_EXITS) only while a
 * rule kills. */
int kill_after_refusal(void *ctx) { return kill_if_refused(); }

/* Binary scope, as in enforce_sock.c: a process's rule bits from the path it
 * exec'd, so that matchBinaries is decided before its first open. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    void *bprm = (void *)ctx->args[2];
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 zero = 0;
    struct binary_key *key = scratch_key.lookup(&zero);
    if (!key)
        return 0;
    __builtin_memset(key, 0, sizeof(*key));
    void *filename = PTR_MEMBER(bprm, linux_binprm, filename);
    bpf_probe_read_kernel_str(key->path, BINARY_KEY_LEN, filename);
    u64 *bits = binary_scope.lookup(key);
    if (bits) {
        u64 b = *bits;
        exec_scope.update(&tgid, &b);
    } else {
        exec_scope.delete(&tgid);
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *parent = (void *)ctx->args[0];
    void *child = (void *)ctx->args[1];
    u32 ppid = 0, pid = 0, tgid = 0;
    READ_MEMBER(ppid, parent, task_struct, tgid);
    READ_MEMBER(pid, child, task_struct, pid);
    READ_MEMBER(tgid, child, task_struct, tgid);
    if (pid != tgid)
        return 0;
    u64 *bits = exec_scope.lookup(&ppid);
    if (bits) {
        u64 b = *bits;
        exec_scope.update(&tgid, &b);
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    void *task = (void *)ctx->args[0];
    u32 pid = 0, tgid = 0;
    READ_MEMBER(pid, task, task_struct, pid);
    READ_MEMBER(tgid, task, task_struct, tgid);
    kill_pending.delete(&pid);   /* refused where no open follows (a mount of a block device) */
    if (pid == tgid) {
        exec_scope.delete(&tgid);
        pid_scope.delete(&tgid);
    }
    return 0;
}
