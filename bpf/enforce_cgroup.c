/* In-kernel prevention by cgroup BPF programs on the cgroup v2 root, for
 * kernels without BPF LSM or bpf_override_return (where a SIGKILL from a
 * tracepoint would come too late: the peer already accepted the connection,
 * the device is already open).  One source, compiled twice:
 *
 *   -DENFORCE_SOCKETS  network policies: connect4/6, sendmsg4/6 and
 *                      sock_create refuse a socket, connect() or sendmsg()
 *                      with EPERM before anything leaves the host
 *                      (tetrad/enforce/sock.py);
 *   -DENFORCE_DEVICES  device policies: a device program refuses opening a
 *                      character or block device for reading or writing
 *                      (tetrad/enforce/devcgroup.py).  It judges devices, not
 *                      paths: tetrad/enforce/devices.py resolves a policy's
 *                      paths to the (type, major, minor) of the nodes present
 *                      when the policy loads and puts them in `devices`, each
 *                      with the bits of the rules that name it.
 *
 * Rules live in the `rules` array, so changing a rule needs no recompilation.
 * A rule applies to every process unless it is scoped: then only to processes
 * whose bit is set in `exec_scope` (by binary, at exec) or `pid_scope` and/or
 * whose cgroup's bit is set in `cgroup_scope` (pods, containers), and/or whose
 * namespaces satisfy the rule's matchNamespaces (`ns_kinds`, `ns_scope`).
 * The scope tracking is shared and written once, here: BCC rewrites map calls
 * only in the file it compiles, not in headers. */
#include "common.h"
#include "lifecycle.h"
#include "ns.h"

#if defined(ENFORCE_SOCKETS) == defined(ENFORCE_DEVICES)
#error "compile with exactly one of -DENFORCE_SOCKETS and -DENFORCE_DEVICES"
#endif

#ifndef MAX_RULES
#define MAX_RULES 16
#endif
#define BINARY_KEY_LEN 256

#define ACTION_DENY    1   /* refuse with EPERM, report */
#define ACTION_MONITOR 2   /* report what would have been refused, allow */
#define ACTION_KILL    3   /* refuse, report, and SIGKILL the caller as the call returns */

#define SCOPE_PROCESS     (1u << 0)  /* only processes in exec_scope or pid_scope */
#define SCOPE_CGROUP      (1u << 1)  /* only cgroups in cgroup_scope */
#define SCOPE_NOT_PROCESS (1u << 2)  /* all but those (matchBinaries NotIn) */

BPF_RINGBUF_OUTPUT(events, RB_PAGES);
BPF_PERCPU_ARRAY(lost_records, u64, LOST_SLOTS);
BPF_HASH(pid_scope, u32, u64, 65536);           /* tgid -> rule bits (matchPIDs), set by userspace */
BPF_HASH(exec_scope, u32, u64, 65536);          /* tgid -> rule bits from the binary it exec'd */
BPF_HASH(cgroup_scope, u64, u64, 16384);        /* cgroup id -> rule bits */
BPF_ARRAY(cgroup_scoped, u32, 1);               /* [0]: some rule is scoped to cgroups */
#define SCOPE_DEPTH 12
struct binary_key {
    char path[BINARY_KEY_LEN];
};
BPF_HASH(binary_scope, struct binary_key, u64, 1024);  /* exec'd path -> rule bits */
BPF_PERCPU_ARRAY(scratch_key, struct binary_key, 1);
BPF_HASH(kill_pending, u32, u8, 4096);          /* tid -> refused by an ACTION_KILL rule */
BPF_ARRAY(ns_in_use, u32, 1);                   /* > 0 while a rule has matchNamespaces */
BPF_ARRAY(ns_kinds, struct ns_kind_rules, NS_KINDS);
BPF_HASH(ns_scope, struct ns_key, u64, 1024);   /* (kind, namespace inode) -> rule bits */

/* A rule scoped to cgroups covers their descendants too (a pod's cgroup: the
 * containers created in it later). */
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

/* Bits of the rules whose matchNamespaces the caller satisfies (all rules
 * when none has any); see ns.h. */
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

/* Which rules' scopes hold the caller, by rule bit. */
struct caller_scope {
    u64 proc;      /* by binary (exec_scope) or pid (pid_scope) */
    u64 cgroup;    /* by cgroup or an ancestor; walked only when a rule asks */
    u64 ns;        /* by namespaces */
};

static __always_inline void caller_scope(u32 tgid, u64 cgid, struct caller_scope *s)
{
    u64 *eb = exec_scope.lookup(&tgid);
    u64 *pb = pid_scope.lookup(&tgid);
    u32 zero = 0;
    u32 *scoped = cgroup_scoped.lookup(&zero);
    s->proc = (eb ? *eb : 0) | (pb ? *pb : 0);
    s->cgroup = scoped && *scoped ? scope_bits(cgid) : 0;
    s->ns = ns_scope_bits();
}

/* 0 for the callers no rule acts on (tetrad itself, init); else the
 * caller's cgroup and the rules whose scopes hold it. */
static __always_inline int judged_caller(u64 pid_tgid, u64 *cgid, struct caller_scope *s)
{
    u32 tgid = pid_tgid >> 32;
    if (tgid == EXEMPT_TGID || tgid == 1)   /* never act on tetrad itself or init */
        return 0;
    *cgid = bpf_get_current_cgroup_id();
    caller_scope(tgid, *cgid, s);
    return 1;
}

static __always_inline void count_lost(u32 record_type)
{
    u32 slot = record_type % LOST_SLOTS;
    u64 *n = lost_records.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Sigkill: the caller is killed as the refused call returns, before it runs
 * another instruction of its own.  A cgroup program cannot send signals, so
 * it marks the thread and the syscall's exit tracepoint sends SIGKILL. */
static __always_inline void kill_on_return(u64 pid_tgid)
{
    u32 tid = (u32)pid_tgid;
    u8 one = 1;
    kill_pending.update(&tid, &one);
}

/* A matching rule's verdict: 1 to allow (monitor), 0 to refuse; a Sigkill
 * rule also marks the caller to be killed as the call returns. */
static __always_inline int rule_verdict(u32 action, u64 pid_tgid)
{
    if (action == ACTION_KILL)
        kill_on_return(pid_tgid);
    return action == ACTION_MONITOR ? 1 : 0;
}

/* Attached by the daemon to the exits of the calls whose refusal the programs
 * below decide (KILL_EXITS of the enforcer), only while a rule kills:
 * otherwise every such call on the host would pay for it. */
int kill_after_refusal(void *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (kill_pending.lookup(&tid)) {
        kill_pending.delete(&tid);
        bpf_send_signal(9);
    }
    return 0;
}

#ifdef ENFORCE_SOCKETS
#define MAX_ADDRS 8
#define MAX_PORTS 8

#define HOOK_CONNECT     (1u << 0)
#define HOOK_SENDMSG     (1u << 1)
#define HOOK_SOCK_CREATE (1u << 2)

#define RECORD_SOCK 16

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define ntohs16(x) __builtin_bswap16(x)   /* x86 and arm64 are little endian */

struct cidr {
    u32 addr[4];      /* network byte order; IPv4 in addr[0] */
    u32 mask[4];      /* the prefix as a mask, made in userspace */
    u32 family;       /* AF_INET or AF_INET6 */
};

struct port_range {
    u16 lo, hi;       /* host byte order, inclusive */
};

struct sock_rule {
    u32 action;       /* 0: empty slot */
    u32 hooks;
    u32 families;     /* bit per address family; 0 = any */
    u32 protocols;    /* bit per IPPROTO_* below 32 (TCP 6, UDP 17); 0 = any */
    u32 types;        /* bit per SOCK_* type; 0 = any */
    u32 scope;
    u32 n_addrs;
    u32 addrs_negate; /* NotDAddr: the rule matches addresses outside all CIDRs */
    u32 n_ports;
    u32 ports_negate;
    struct cidr addrs[MAX_ADDRS];
    struct port_range ports[MAX_PORTS];
};

struct sock_record {
    struct record_header h;
    u32 pid, tid;
    u32 rule;
    u32 hook;
    u32 action;
    u32 family, type, protocol;
    u16 dport, pad;
    u32 daddr[4];
    u64 cgroup_id;
};

BPF_ARRAY(rules, struct sock_rule, MAX_RULES);

/* Rule matching is arithmetic, not comparisons: BPF has no "set if", so each
 * comparison is a branch, and the verifier must follow both sides of every
 * one whose result decides the verdict.  Kernel 6.1's verifier gives up
 * (E2BIG) on the 2^16 paths per rule that the address and port comparisons
 * made; these helpers give one path per rule.  Values are below 2^31. */
/* the empty asm hides the pattern from clang, which would turn it back into a compare */
static __always_inline u32 nonzero(u32 x)
{
    u32 t = x | -x;
    asm volatile("" : "+r"(t));
    return t >> 31;
}

static __always_inline u32 below(u32 a, u32 b)   /* a < b */
{
    u32 t = a - b;
    asm volatile("" : "+r"(t));
    return t >> 31;
}

static __always_inline u32 in_set(u32 set, u32 value)   /* set 0 = any */
{
    return (1 - nonzero(set)) | (below(value, 32) & (set >> (value & 31)));
}

static __always_inline u32 cidr_match(const struct cidr *c, const u32 *addr, u32 family)
{
    u32 diff = ((c->addr[0] ^ addr[0]) & c->mask[0]) | ((c->addr[1] ^ addr[1]) & c->mask[1]) |
               ((c->addr[2] ^ addr[2]) & c->mask[2]) | ((c->addr[3] ^ addr[3]) & c->mask[3]);
    return (1 - nonzero(c->family ^ family)) & (1 - nonzero(diff));
}

/* 1 if rule r (slot idx) applies; `addr` is all zeros when has_addr is 0 (socket creation). */
static __always_inline u32 rule_matches(const struct sock_rule *r, u32 hook, u32 family, u32 type,
                                        u32 protocol, const u32 *addr, u32 has_addr, u32 port,
                                        u64 proc_bits, u64 cgroup_bits, u64 ns_bits, u32 idx)
{
    u32 scope = r->scope;
    u32 in_proc = (proc_bits >> idx) & 1, in_cgroup = (cgroup_bits >> idx) & 1;
    u32 ok = nonzero(r->action) & nonzero(r->hooks & hook) & in_set(r->families, family) &
             in_set(r->protocols, protocol) & in_set(r->types, type);
    ok &= (1 - nonzero(scope & SCOPE_PROCESS)) | in_proc;
    ok &= (1 - nonzero(scope & SCOPE_NOT_PROCESS)) | (1 - in_proc);
    ok &= (1 - nonzero(scope & SCOPE_CGROUP)) | in_cgroup;
    ok &= (ns_bits >> idx) & 1;
    u32 hit = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_ADDRS; i++)
        hit |= below(i, r->n_addrs) & cidr_match(&r->addrs[i], addr, family);
    ok &= (1 - nonzero(r->n_addrs)) | (has_addr & (hit ^ (r->addrs_negate & 1)));
    hit = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_PORTS; i++)
        hit |= below(i, r->n_ports) & (1 - below(port, r->ports[i].lo)) & (1 - below(r->ports[i].hi, port));
    ok &= (1 - nonzero(r->n_ports)) | (has_addr & (hit ^ (r->ports_negate & 1)));
    return ok;
}

/* Returns 1 to allow, 0 to refuse (the caller gets EPERM). */
static __always_inline int decide(u32 hook, u32 family, u32 type, u32 protocol, const u32 *addr,
                                  u32 has_addr, u16 port)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    u64 cgid;
    struct caller_scope s;
    if (!judged_caller(pid_tgid, &cgid, &s))
        return 1;

    /* Every slot is judged, used or not: a loop bound read from a map (the
     * highest slot in use) is more than kernel 6.1's verifier can follow. */
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_RULES; i++) {
        u32 key = i;
        struct sock_rule *r = rules.lookup(&key);
        if (!r || !rule_matches(r, hook, family, type, protocol, addr, has_addr, port, s.proc,
                                s.cgroup, s.ns, i))
            continue;
        struct sock_record *e = events.ringbuf_reserve(sizeof(struct sock_record));
        if (e) {
            __builtin_memset(e, 0, sizeof(*e));
            e->h.type = RECORD_SOCK;
            e->h.size = sizeof(*e);
            e->h.ktime = bpf_ktime_get_ns();
            e->pid = tgid;
            e->tid = (u32)pid_tgid;
            e->rule = i;
            e->hook = hook;
            e->action = r->action;
            e->family = family;
            e->type = type;
            e->protocol = protocol;
            e->dport = port;
            e->cgroup_id = cgid;
            __builtin_memcpy(e->daddr, addr, 16);
            events.ringbuf_submit(e, 0);
        } else {
            count_lost(RECORD_SOCK);
        }
        return rule_verdict(r->action, pid_tgid);
    }
    return 1;
}

static __always_inline int on_addr4(struct bpf_sock_addr *ctx, u32 hook)
{
    u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
    return decide(hook, AF_INET, ctx->type, ctx->protocol, addr, 1, ntohs16((u16)ctx->user_port));
}

static __always_inline int on_addr6(struct bpf_sock_addr *ctx, u32 hook)
{
    u32 w[4];
    w[0] = ctx->user_ip6[0];
    w[1] = ctx->user_ip6[1];
    w[2] = ctx->user_ip6[2];
    w[3] = ctx->user_ip6[3];
    u16 port = ntohs16((u16)ctx->user_port);
    u32 family = AF_INET6;
    /* ::ffff:a.b.c.d is IPv4 reaching us through connect6: judge it as IPv4 */
    if (w[0] == 0 && w[1] == 0 && w[2] == __builtin_bswap32(0x0000ffff)) {
        w[0] = w[3];
        w[2] = w[3] = 0;
        family = AF_INET;
    }
    return decide(hook, family, ctx->type, ctx->protocol, w, 1, port);
}

int connect4(struct bpf_sock_addr *ctx) { return on_addr4(ctx, HOOK_CONNECT); }
int connect6(struct bpf_sock_addr *ctx) { return on_addr6(ctx, HOOK_CONNECT); }
int sendmsg4(struct bpf_sock_addr *ctx) { return on_addr4(ctx, HOOK_SENDMSG); }
int sendmsg6(struct bpf_sock_addr *ctx) { return on_addr6(ctx, HOOK_SENDMSG); }

int sock_create(struct bpf_sock *sk)
{
    u32 none[4] = {};
    return decide(HOOK_SOCK_CREATE, sk->family, sk->type, sk->protocol, none, 0, 0);
}

#endif /* ENFORCE_SOCKETS */

#ifdef ENFORCE_DEVICES
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

BPF_ARRAY(rules, struct dev_rule, MAX_RULES);
BPF_HASH(devices, struct dev_key, u64, 4096);   /* device -> bits of the rules naming it */

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
    u64 cgid;
    struct caller_scope s;
    if (!judged_caller(pid_tgid, &cgid, &s))
        return 1;

#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_RULES; i++) {
        u64 bit = 1ull << i;
        if (!(dev_bits & bit))
            continue;
        u32 key = i;
        struct dev_rule *r = rules.lookup(&key);
        if (!r || !r->action || !(r->access & access))
            continue;
        if ((r->scope & SCOPE_PROCESS) && !(s.proc & bit))
            continue;
        if ((r->scope & SCOPE_NOT_PROCESS) && (s.proc & bit))
            continue;
        if ((r->scope & SCOPE_CGROUP) && !(s.cgroup & bit))
            continue;
        if (!(s.ns & bit))
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
            count_lost(RECORD_DEVICE);
        }
        return rule_verdict(r->action, pid_tgid);
    }
    return 1;
}
#endif /* ENFORCE_DEVICES */

/* Binary scope: set a process's rule bits from the path it exec'd, so that
 * matchBinaries is decided in the kernel before the program's first call. */
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

/* a child forked without exec keeps its parent's binary, so its scope too */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    u32 ppid, tgid;
    if (!forked_process(ctx, &ppid, &tgid))
        return 0;
    u64 *bits = exec_scope.lookup(&ppid);
    if (bits) {
        u64 b = *bits;
        exec_scope.update(&tgid, &b);
    }
    return 0;
}

/* a process's scope ends with it */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();   /* the exiting thread */
    kill_pending.delete(&tid);   /* refused where no exit tracepoint follows (io_uring, a mount) */
    u32 tgid = ended_process(ctx);
    if (tgid) {
        exec_scope.delete(&tgid);
        pid_scope.delete(&tgid);
    }
    return 0;
}
