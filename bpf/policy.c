/* One TracingPolicy: a generic program per hook slot, parameterised by BPF
 * maps that tetrad/policy/program.py fills from the policy.
 *
 * Every hook of the policy has a slot n < NHOOKS and two entry points,
 * hook<n>_enter and hook<n>_exit, which userspace attaches to the
 * tracepoints, kprobes or uprobes tetrad/policy/hooks.py chose (an lsmhook
 * slot has BPF LSM programs instead: see LSM_PROGRAMS below; an fentry/fexit
 * slot fhook<n>_*: see FENTRY_STAGES).  What a slot
 * reads (arguments and where they come from), its selectors and actions are
 * map values, so changing a policy's values needs no recompilation.
 * Selectors are evaluated here, in the kernel: an event that does not match
 * costs no ring-buffer record.
 */
#include <uapi/linux/ptrace.h>   /* struct pt_regs: a stable ABI, unlike the kernel structs */
#include "common.h"
#include "lifecycle.h"
#include "path.h"
#include "ns.h"



#define RAW_ARGS        6        /* a function's or syscall's arguments */
#define MAX_ARGS        5        /* traced arguments per hook */
#define POS_RET         5        /* the return value's position among values */
#define POS_BINARY      6        /* matchBinaries' path, borrowed for matching */
#define MAX_SELECTORS   5
#define MAX_MATCH       6        /* matchArgs (5) + matchReturnArgs (1) */
#define MAX_VALUES      4
#define MAX_ACTIONS     3
#define MAX_PID_FILTERS 2
#define MAX_NS_FILTERS  10
#define MAX_CAP_FILTERS 2
#define STR_KEY         256      /* Equal strings and Prefix keys */
#define POSTFIX_KEY     128
#define PREFIX_KEY      252      /* an LPM key holds at most 256 bytes: slot + 252 */
#define FD_PATH_MAX     512
#define STRING_MAX      1024
#define BUF_MAX         4096
#define DATA_LIMIT      16384    /* the arguments' bytes; DATA_MASK + 1 */
#define DATA_MASK       16383
#define DATA_SIZE       (DATA_LIMIT + BUF_MAX + 512)

/* Bound a variable size for the verifier where the compiler would otherwise
 * test one register and pass another to the helper. */
#define BOUND(var, mask) asm volatile("%[v] &= " #mask : [v] "+r"(var))

/* phases */
#define PHASE_ENTER 0
#define PHASE_EXIT  1

/* hook_conf.flags */
#define HOOKF_AT_EXIT         (1u << 0)   /* evaluate and emit at the exit attachment */
#define HOOKF_KPROBE          (1u << 1)   /* ctx is struct pt_regs */
#define HOOKF_SYSCALL_WRAPPER (1u << 2)   /* the real arguments sit behind a pt_regs pointer */
#define HOOKF_FD_GATE         (1u << 3)   /* nothing to do unless raw argument fd_src is a followed fd */
#define HOOKF_PREFIX_GATE     (1u << 4)   /* nothing to do unless the path at gate_pos starts with a
                                             value under PREFIX_GATE_SLOT */

/* emulation modes (tetrad/policy/hooks.py EMU_*) */
#define EMU_NONE        0
#define EMU_FD_INSTALL  1
#define EMU_FILE_OPEN   2
#define EMU_TCP_CONNECT 3
#define EMU_TCP_CLOSE   4
#define EMU_TCP_SENDMSG 5

/* argument classes (tetrad/policy/program.py ARG_*) */
enum {
    ARG_NONE = 0, ARG_S64, ARG_U64, ARG_S32, ARG_U32, ARG_S16, ARG_U16, ARG_S8, ARG_U8,
    ARG_STRING, ARG_CHAR_BUF, ARG_FD, ARG_FILE, ARG_PATH, ARG_SOCK, ARG_SOCKADDR,
};

/* argument flags */
#define ARGF_RETURN_COPY (1u << 0)

/* operators (tetrad/policy/program.py OP_*) */
enum {
    OP_EQ = 1, OP_NEQ, OP_PREFIX, OP_NOT_PREFIX, OP_POSTFIX, OP_NOT_POSTFIX, OP_GT, OP_LT,
    OP_MASK, OP_IN_RANGE, OP_NOT_IN_RANGE, OP_SPORT, OP_NOT_SPORT, OP_SPORT_PRIV,
    OP_NOT_SPORT_PRIV, OP_DPORT, OP_NOT_DPORT, OP_DPORT_PRIV, OP_NOT_DPORT_PRIV, OP_SADDR,
    OP_NOT_SADDR, OP_DADDR, OP_NOT_DADDR, OP_PROTOCOL, OP_FAMILY, OP_IN, OP_NOT_IN,
};

/* actions */
enum {
    ACT_POST = 1, ACT_NOPOST, ACT_FOLLOWFD, ACT_UNFOLLOWFD, ACT_COPYFD, ACT_SIGNAL, ACT_SIGKILL,
    ACT_OVERRIDE,
};

/* Which program chain a stage belongs to (a constant in each program):
 * tracepoints, kprobes/uprobes, or the BPF LSM programs of lsmhook i (RUN_LSM + i). */
#define RUN_TP  0
#define RUN_KP  1
#define RUN_LSM 2
/* fentry/fexit programs of group g (RUN_FENTRY + g): a group is the hooks whose
 * functions share one BTF prototype and one end (see FENTRY_STAGES) */
#define RUN_FENTRY 6   /* RUN_LSM + MAX_LSM_HOOKS */
#define IS_LSM(run) ((run) >= RUN_LSM && (run) < RUN_FENTRY)

struct arg_conf {
    u8 type;        /* ARG_* */
    u8 src;         /* raw argument 0..5, or POS_RET */
    u8 size_src;    /* raw argument holding a char_buf's size, + 1; 0 = none */
    u8 flags;       /* ARGF_* */
};

struct hook_conf {
    u32 flags;
    u32 mode;
    u32 nargs;
    u32 nselectors;
    struct arg_conf args[MAX_ARGS + 1];   /* [POS_RET]: the return argument */
    u16 tp_off[RAW_ARGS];                 /* raw argument i at ctx + tp_off[i] ... */
    u8 tp_size[RAW_ARGS];                 /* ... of this many bytes (0: not read) */
    u8 tp_signed[RAW_ARGS];
    u16 ret_off;                          /* exit tracepoint: the return value */
    u8 ret_size;
    u8 ret_signed;
    u8 fd_src;                            /* HOOKF_FD_GATE: the raw argument holding the fd */
    u8 gate_pos;                          /* HOOKF_PREFIX_GATE: the file or path position ... */
    u8 gate_len;                          /* ... and the bytes of it that decide (the longest value) */
    u8 pad;
};

struct match_conf {
    u8 pos;         /* argument position, POS_RET for matchReturnArgs */
    u8 op;
    u8 nvalues;
    u8 is_signed;
    u32 pad;
    u64 lo[MAX_VALUES];
    u64 hi[MAX_VALUES];   /* InRange upper bounds */
};

struct pid_conf {
    u8 op;          /* OP_IN / OP_NOT_IN */
    u8 follow_forks;
    u8 ns_pid;
    u8 present;
};

struct ns_conf {
    u8 ns;          /* index in tetrad's namespace order */
    u8 op;
    u8 nvalues;
    u8 pad;
    u32 values[MAX_VALUES];
};

struct cap_conf {
    u8 set;         /* 0 effective, 1 inheritable, 2 permitted */
    u8 op;
    u8 pad[6];
    u64 mask;
};

struct action_conf {
    u8 action;
    u8 arg_fd;      /* positions */
    u8 arg_name;
    u8 scope;       /* rate limit: 0 thread, 1 process, 2 global */
    s32 arg;        /* Signal's signal; Override's error (negative errno) */
    u64 rate_ns;
};

struct selector_conf {
    u32 nmatch;
    u32 npids;
    u32 nns;
    u32 ncaps;
    u32 nactions;
    u8 bin_op;       /* matchBinaries: OP_IN .. OP_NOT_POSTFIX, 0 = none */
    u8 pbin_op;      /* matchParentBinaries */
    u8 bin_follow;   /* followChildren: 1 + the section's bit in `followed`, 0 = off */
    u8 pbin_follow;
    struct match_conf match[MAX_MATCH];
    struct pid_conf pids[MAX_PID_FILTERS];
    struct ns_conf ns[MAX_NS_FILTERS];
    struct cap_conf caps[MAX_CAP_FILTERS];
    struct action_conf actions[MAX_ACTIONS];
};

struct sock_info {
    u16 family, type, protocol, sport, dport;
    u8 state, pad;
    u32 mark, priority;
    u8 saddr[16];
    u8 daddr[16];
    u64 cookie;
};

/* The ring-buffer record (tetrad/policy/records.py mirrors it). */
struct policy_record {
    struct record_header h;
    u32 hook;
    u32 pid;
    u32 tid;
    u32 selector;       /* matching selector + 1; 0 when the hook has none */
    u32 action;         /* first action of the matching selector */
    u32 flags;          /* RECF_* */
    s64 ret;
    u32 arg_len[8];     /* bytes of each position in data: arguments, POS_RET */
    char data[DATA_SIZE];
};
#define RECORD_FIXED (offsetof(struct policy_record, data))
#define RECF_TRUNCATED (1u << 0)
#define RECF_CONF1     (1u << 1)   /* judged by configuration 1 (see `hooks`) */

/* The str_prefix slot of a hook's prefix gate: past every selector's slots
 * (tetrad/policy/program.py PREFIX_GATE_SLOT) */
#define PREFIX_GATE_SLOT(hook) (0x10000 + (hook))

struct eq_key { u32 slot; char s[STR_KEY]; };
struct prefix_key { u32 prefixlen; u32 slot; char s[PREFIX_KEY]; };
struct postfix_key { u32 prefixlen; u32 slot; char s[POSTFIX_KEY]; };
struct fd_path { u32 len; char path[FD_PATH_MAX]; };

struct scratch {
    u32 slot;                       /* set by the entry point before its tail call */
    u32 conf;                       /* and where its configuration is: slot + NHOOKS * configuration */
    u32 phase;
    u32 next;                       /* the position or selector a stage works on */
    struct policy_record rec;
    u64 raw[8];                     /* RAW_ARGS used; 8 for masked indexing */
    /* per position (0..4 arguments, POS_RET, POS_BINARY): integer value,
     * where its bytes are in rec.data, and how many */
    u64 val[8];
    u32 off[8];
    u32 len[8];
    u32 pos;                        /* write position in rec.data */
    u32 drop;
    s32 verdict;                    /* an LSM program's return: 0, or Override's error */
    struct path_walk walk;
    u32 walked;                     /* position + 1 whose path is in walk (the prefix gate's) */
    u32 walk_truncated;
    struct eq_key eq_key;
    struct prefix_key prefix_key;
    struct postfix_key postfix_key;
    struct fd_path fd_path;
};

struct saved_key { u64 pid_tgid; u32 slot; u32 pad; };
struct saved_args { u64 raw[RAW_ARGS]; };
struct fd_key { u32 tgid; u32 fd; };
struct pid_key { u32 slot; u32 pid; };
struct addr_key { u32 prefixlen; u32 slot; u8 family; u8 addr[16]; };
struct rate_key { u32 slot; u32 scope; u64 hash; };

BPF_RINGBUF_OUTPUT(events, RB_PAGES);
BPF_PERCPU_ARRAY(lost_records, u64, 1);
BPF_PERCPU_ARRAY(scratch_map, struct scratch, 1);
/* Two configurations of the policy (hook i's at i and NHOOKS + i, their
 * selectors and values keyed alike): the daemon writes the one not in force,
 * then switches settings[0], so that a change of values needs no new programs
 * and each event is judged by one configuration, old or new. */
BPF_ARRAY(hooks, struct hook_conf, NHOOKS * 2);
BPF_ARRAY(selectors, struct selector_conf, NHOOKS * 2 * MAX_SELECTORS);
BPF_ARRAY(settings, u32, 3);   /* [0] 0: disabled, else the configuration in force + 1;
                                * [1] the daemon's own tgid, [2] scoped */
/* A scoped policy (namespaced, podSelector, containerSelector) applies only to
 * processes whose cgroup v2, or one of its ancestors, is here: its containers
 * and pods, kept current by the daemon (tetrad/policy/scope.py).  A pod's
 * cgroup covers the containers created in it later from their first
 * instruction.  Empty: the policy applies to nothing. */
BPF_HASH(scope_cgroups, u64, u8, 16384);
#define SCOPE_DEPTH 12   /* ancestor levels looked at: kubelet's pods sit at 3 to 6 */

static __always_inline int in_scope(void)
{
    u64 cgid = bpf_get_current_cgroup_id();
    if (scope_cgroups.lookup(&cgid))
        return 1;
    for (int level = 1; level < SCOPE_DEPTH; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id || id == cgid)   /* past the task's own level */
            return 0;
        if (scope_cgroups.lookup(&id))
            return 1;
    }
    return 0;
}
/* arguments saved at entry for the exit; LRU, since an exit can be missed
 * (a hook attached between a thread's entry and exit, exit_group, execve) */
BPF_TABLE("lru_hash", struct saved_key, struct saved_args, saved, 16384);
/* Entries of `saved` per hook slot: counted up as an entry saves one, down as
 * its exit takes it back.  Most exits of a hook attached at both ends find
 * the count 0 and skip the lookup (reads of fds that are not followed: their
 * entries saved nothing).  An entry never taken back (the LRU dropped it, its
 * exit did not run) leaves the count high: lookups again, never a missed exit. */
BPF_ARRAY(saved_count, u64, NHOOKS);
BPF_TABLE("lru_hash", struct fd_key, struct fd_path, fd_paths, 8192);
BPF_HASH(str_eq, struct eq_key, u8, 1024);
BPF_LPM_TRIE(str_prefix, struct prefix_key, u8, 1024);
BPF_LPM_TRIE(str_postfix, struct postfix_key, u8, 1024);
BPF_HASH(pid_set, struct pid_key, u8, 1024);
BPF_LPM_TRIE(addr_trie, struct addr_key, u8, 1024);
BPF_TABLE("lru_hash", struct rate_key, u64, rate_last, 8192);

/* A syscall tracepoint's first argument (sys_enter_*) or return value
 * (sys_exit_*) is 8 bytes at offset 16 of its ctx.  A program that reads
 * there directly, not through a helper, attaches only to tracepoints that
 * long (the kernel checks): the sys_exit_* ones, and the sys_enter_* ones of
 * syscalls with arguments (hook<n>_sysenter). */
#define SYSCALL_CTX_FIELD 16

static __always_inline u64 sign_extend(u64 v, u32 size, u32 is_signed)
{
    switch (size) {
    case 1: return is_signed ? (u64)(s64)(s8)v : (u8)v;
    case 2: return is_signed ? (u64)(s64)(s16)v : (u16)v;
    case 4: return is_signed ? (u64)(s64)(s32)v : (u32)v;
    default: return v;
    }
}

static __always_inline u64 read_ctx_field(void *ctx, u32 off, u32 size, u32 is_signed)
{
    u64 v = 0;
    switch (size) {
    case 1: bpf_probe_read_kernel(&v, 1, ctx + off); break;
    case 2: bpf_probe_read_kernel(&v, 2, ctx + off); break;
    case 4: bpf_probe_read_kernel(&v, 4, ctx + off); break;
    case 8: bpf_probe_read_kernel(&v, 8, ctx + off); break;
    default: return 0;
    }
    return sign_extend(v, size, is_signed);
}

/* A syscall's arguments from the struct pt_regs its entry function (__x64_sys_*) gets. */
static __always_inline void read_syscall_regs(void *regs, u64 *raw)
{
    bpf_probe_read_kernel(&raw[0], 8, regs + offsetof(struct pt_regs, di));
    bpf_probe_read_kernel(&raw[1], 8, regs + offsetof(struct pt_regs, si));
    bpf_probe_read_kernel(&raw[2], 8, regs + offsetof(struct pt_regs, dx));
    bpf_probe_read_kernel(&raw[3], 8, regs + offsetof(struct pt_regs, r10));
    bpf_probe_read_kernel(&raw[4], 8, regs + offsetof(struct pt_regs, r8));
    bpf_probe_read_kernel(&raw[5], 8, regs + offsetof(struct pt_regs, r9));
}

/* An Override on a kernel function or syscall that a BPF LSM hook serves
 * instead (tetrad/policy/overrides.py): the LSM program turns its hook's
 * arguments into the one value the function's selectors read, in raw[0]. */
#define ADAPT_NONE          0   /* an lsmhook: the hook's own arguments */
#define ADAPT_FILE          1   /* (struct file *): raw[0] = &file->f_path */
#define ADAPT_DIR_DENTRY    2   /* (const struct path *dir, struct dentry *): raw[0] = the dentry's path */
#define ADAPT_BPRM_FILENAME 3   /* (struct linux_binprm *): raw[0] = bprm->filename, as execve got it */
#define ADAPT_OPENED_FILE   4   /* ADAPT_FILE, but not the kernel's open of a program to execute */
#define FMODE_EXEC_BIT      0x20

/* 0 when this call of the LSM hook is not one the function would have seen */
static __always_inline int adapt_lsm_args(u32 adapt, u64 *raw)
{
    switch (adapt) {
    case ADAPT_OPENED_FILE: {
        /* exec's open: __FMODE_EXEC in the open flags (FMODE_EXEC in f_mode on some kernels) */
        u32 mode = 0, flags = 0;
        READ_MEMBER(mode, (void *)raw[0], file, f_mode);
        READ_MEMBER(flags, (void *)raw[0], file, f_flags);
        if ((mode | flags) & FMODE_EXEC_BIT)
            return 0;
        raw[0] += OFF_file__f_path_mnt - OFF_path__mnt;
        break;
    }
    case ADAPT_FILE:
        raw[0] += OFF_file__f_path_mnt - OFF_path__mnt;
        break;
    case ADAPT_DIR_DENTRY: {
        /* the dentry is in its directory's mount: (dir->mnt, dentry) is its
         * struct path, built in raw[6..7], which no argument uses */
        void *mnt = PTR_MEMBER((void *)raw[0], path, mnt);
        raw[6 + OFF_path__mnt / 8] = (u64)mnt;
        raw[6 + OFF_path__dentry / 8] = raw[1];
        raw[0] = (u64)&raw[6];
        break;
    }
    case ADAPT_BPRM_FILENAME:
        raw[0] = (u64)PTR_MEMBER((void *)raw[0], linux_binprm, filename);
        break;
    }
    return 1;
}

static __always_inline void read_raw_args(void *ctx, struct hook_conf *hc, u64 *raw, int run)
{
    /* fentry/fexit: ctx is the arguments, a u64 slot each, of which userspace
     * put the meaningful bytes (from BTF) in tp_off/tp_size like a tracepoint's */
    if (run >= RUN_FENTRY) {
        if (hc->flags & HOOKF_SYSCALL_WRAPPER) {
            read_syscall_regs(read_ptr(ctx), raw);
            return;
        }
        for (int i = 0; i < RAW_ARGS; i++)
            raw[i] = read_ctx_field(ctx, hc->tp_off[i], hc->tp_size[i], hc->tp_signed[i]);
        return;
    }
    if (IS_LSM(run)) {
        /* ctx: the hook's arguments, 8 bytes each; through a helper, since a
         * direct read past the hook's own arguments fails to verify */
        for (int i = 0; i < RAW_ARGS; i++)
            bpf_probe_read_kernel(&raw[i], 8, ctx + i * 8);
        return;
    }
    if (hc->flags & HOOKF_KPROBE) {
        struct pt_regs *regs = ctx;
        if (hc->flags & HOOKF_SYSCALL_WRAPPER) {
            read_syscall_regs((void *)PT_REGS_PARM1(regs), raw);
        } else {
            raw[0] = PT_REGS_PARM1(regs);
            raw[1] = PT_REGS_PARM2(regs);
            raw[2] = PT_REGS_PARM3(regs);
            raw[3] = PT_REGS_PARM4(regs);
            raw[4] = PT_REGS_PARM5(regs);
            raw[5] = PT_REGS_PARM6(regs);
        }
        return;
    }
    for (int i = 0; i < RAW_ARGS; i++)
        raw[i] = read_ctx_field(ctx, hc->tp_off[i], hc->tp_size[i], hc->tp_signed[i]);
}

/* The struct file behind fd `fd` of the current task (every open of a
 * file costs this lookup under an fd_install equivalent). */
static __always_inline void *file_of_fd(u64 fd)
{
    void *task = (void *)bpf_get_current_task();
    void *files = PTR_MEMBER(task, task_struct, files);
#if OFF_fdtable__max_fds == 0 && OFF_fdtable__fd == 8 && OFF_files_struct__fdtab == OFF_files_struct__fdt + 8
    /* fdt and the fdtable embedded right after it in one read: a process
     * with at most 64 fds uses the embedded one */
    struct { void *fdt; u32 max_fds; u32 pad; void **fd; } t = {};
    bpf_probe_read_kernel(&t, sizeof(t), files + OFF_files_struct__fdt);
    if (t.fdt != files + OFF_files_struct__fdtab)
        bpf_probe_read_kernel(&t.max_fds, 16, t.fdt);   /* max_fds and fd in one read */
    u32 max = t.max_fds;
    void **fds = t.fd;
#elif OFF_fdtable__max_fds == 0 && OFF_fdtable__fd == 8
    void *fdt = PTR_MEMBER(files, files_struct, fdt);
    struct { u32 max_fds; u32 pad; void **fd; } t = {};   /* both in one read */
    bpf_probe_read_kernel(&t, sizeof(t), fdt);
    u32 max = t.max_fds;
    void **fds = t.fd;
#else
    void *fdt = PTR_MEMBER(files, files_struct, fdt);
    u32 max = 0;
    READ_MEMBER(max, fdt, fdtable, max_fds);
    void **fds = PTR_MEMBER(fdt, fdtable, fd);
#endif
    if (fd >= max)
        return 0;
    return read_ptr(&fds[fd]);
}

static __always_inline void *sock_of_fd(u64 fd)
{
    void *file = file_of_fd(fd);
    void *socket = PTR_MEMBER(file, file, private_data);
    return PTR_MEMBER(socket, socket, sk);
}

static __always_inline u16 sock_protocol(void *sk)
{
    u16 proto = 0;
    READ_MEMBER(proto, sk, sock, sk_protocol);
    return proto;
}

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT    2
#define TCP_FIN_WAIT1   4
#define TCP_CLOSE       7
#define TCP_CLOSE_WAIT  8
#define TCP_LAST_ACK    9
#define IPPROTO_TCP_NUM 6
#define EINPROGRESS_NUM 115

/* Turn what a tracepoint equivalent saw into the kernel function's arguments;
 * 0 when this occurrence is not one the function would have seen. */
static __always_inline int emulate(u32 mode, u64 *raw, s64 ret)
{
    switch (mode) {
    case EMU_FD_INSTALL:
        if (ret < 0)
            return 0;
        raw[0] = ret;
        raw[1] = (u64)file_of_fd(ret);
        return raw[1] != 0;
    case EMU_FILE_OPEN:
        if (ret < 0)
            return 0;
        raw[0] = (u64)file_of_fd(ret);
        return raw[0] != 0;
    case EMU_TCP_CONNECT: {
        if (ret != 0 && ret != -EINPROGRESS_NUM)
            return 0;
        void *sk = sock_of_fd(raw[0]);
        if (!sk || sock_protocol(sk) != IPPROTO_TCP_NUM)
            return 0;
        raw[0] = (u64)sk;
        return 1;
    }
    case EMU_TCP_CLOSE: {
        /* raw: skaddr, oldstate, newstate, protocol */
        if (raw[3] != IPPROTO_TCP_NUM)
            return 0;
        u64 from = raw[1], to = raw[2];
        return (from == TCP_ESTABLISHED && to == TCP_FIN_WAIT1) ||
               (from == TCP_CLOSE_WAIT && to == TCP_LAST_ACK) ||
               (to == TCP_CLOSE && (from == TCP_SYN_SENT || from == TCP_ESTABLISHED ||
                                    from == TCP_CLOSE_WAIT));
    }
    case EMU_TCP_SENDMSG:
        /* raw: sk, protocol, bytes */
        if (raw[1] != IPPROTO_TCP_NUM || (s64)raw[2] <= 0)
            return 0;
        raw[1] = 0;
        return 1;
    }
    return 1;
}

static __always_inline void read_sock(struct sock_info *si, void *sk)
{
    READ_MEMBER(si->family, sk, sock, __sk_common_skc_family);
    READ_MEMBER(si->type, sk, sock, sk_type);
    si->protocol = sock_protocol(sk);
    READ_MEMBER(si->sport, sk, sock, __sk_common_skc_num);
    u16 dport = 0;
    READ_MEMBER(dport, sk, sock, __sk_common_skc_dport);
    si->dport = (dport >> 8) | (dport << 8);
    READ_MEMBER(si->state, sk, sock, __sk_common_skc_state);
    READ_MEMBER(si->mark, sk, sock, sk_mark);
    READ_MEMBER(si->priority, sk, sock, sk_priority);
    READ_MEMBER(si->cookie, sk, sock, __sk_common_skc_cookie);
    if (si->family == 10) {   /* AF_INET6 */
        bpf_probe_read_kernel(si->saddr, 16, sk + OFF_sock____sk_common_skc_v6_rcv_saddr);
        bpf_probe_read_kernel(si->daddr, 16, sk + OFF_sock____sk_common_skc_v6_daddr);
    } else {
        bpf_probe_read_kernel(si->saddr, 4, sk + OFF_sock____sk_common_skc_rcv_saddr);
        bpf_probe_read_kernel(si->daddr, 4, sk + OFF_sock____sk_common_skc_daddr);
    }
}

/* struct sockaddr from user (or kernel) memory: family, port, address. */
static __always_inline void read_sockaddr(struct sock_info *si, void *addr)
{
    u8 raw[24] = {};
    if (bpf_probe_read_user(raw, sizeof(raw), addr) < 0)
        bpf_probe_read_kernel(raw, sizeof(raw), addr);
    si->family = raw[0] | (raw[1] << 8);
    si->sport = (raw[2] << 8) | raw[3];
    if (si->family == 10)
        __builtin_memcpy(si->saddr, raw + 8, 16);
    else
        __builtin_memcpy(si->saddr, raw + 4, 4);
}

/* Collect a path (dentry, vfsmount) into s->walk. */
static __always_inline void walk_path(struct scratch *s, void *dentry, void *vfsmnt)
{
    u32 truncated = 0;
    collect_path(&s->walk, dentry, vfsmnt, &truncated);
    s->walk_truncated = truncated;
    s->walked = 0;
}

/* Append the path in s->walk to the record's data, up to `limit`. */
static __always_inline void append_walk(struct scratch *s, u32 limit)
{
    write_path(s->rec.data, &s->pos, limit, &s->walk, s->walk.n);
    if (s->walk_truncated)
        s->rec.flags |= RECF_TRUNCATED;
}

/* Collect the path of an ARG_FILE (a struct file) or ARG_PATH (a struct path). */
static __always_inline void walk_file_path(struct scratch *s, void *v, u32 type)
{
    /* a file's f_path is a struct path */
    void *path = v + (type == ARG_FILE ? OFF_file__f_path_mnt - OFF_path__mnt : 0);
#if OFF_path__mnt == 0 && OFF_path__dentry == 8
    void *mnt_dentry[2] = {};   /* both in one read */
    bpf_probe_read_kernel(mnt_dentry, sizeof(mnt_dentry), path);
    walk_path(s, mnt_dentry[1], mnt_dentry[0]);
#else
    walk_path(s, PTR_MEMBER(path, path, dentry), PTR_MEMBER(path, path, mnt));
#endif
}

/* Read the value at position `p` into the record. */
static __always_inline void read_value(struct scratch *s, struct arg_conf *ac, u32 p, u64 v, s64 ret)
{
    struct policy_record *r = &s->rec;
    u32 start = s->pos;
    s->off[p & 7] = start;
    switch (ac->type) {
    case ARG_S64: case ARG_U64: break;
    case ARG_S32: v = (u64)(s64)(s32)v; break;
    case ARG_U32: v = (u32)v; break;
    case ARG_S16: v = (u64)(s64)(s16)v; break;
    case ARG_U16: v = (u16)v; break;
    case ARG_S8: v = (u64)(s64)(s8)v; break;
    case ARG_U8: v = (u8)v; break;
    }
    s->val[p & 7] = v;
    if (start > DATA_LIMIT - 64) {
        r->flags |= RECF_TRUNCATED;
        s->len[p & 7] = 0;
        return;
    }
    char *dst = r->data + (start & DATA_MASK);
    switch (ac->type) {
    case ARG_NONE:
        break;
    case ARG_STRING: {
        int n = bpf_probe_read_user_str(dst, STRING_MAX, (void *)v);
        if (n < 0)
            n = bpf_probe_read_kernel_str(dst, STRING_MAX, (void *)v);
        if (n > 0)
            s->pos = start + n - 1;
        break;
    }
    case ARG_CHAR_BUF: {
        s64 size = 0;
        if (ac->flags & ARGF_RETURN_COPY)
            size = ret;
        else if (ac->size_src)
            size = s->raw[(ac->size_src - 1) & 7];
        if (size <= 0)
            break;
        if (size > BUF_MAX) {
            size = BUF_MAX;
            r->flags |= RECF_TRUNCATED;
        }
        if (start + size > DATA_LIMIT) {
            r->flags |= RECF_TRUNCATED;
            break;
        }
        u64 n = size;
        BOUND(n, 8191);
        if (bpf_probe_read_user(dst, n, (void *)v) < 0 && bpf_probe_read_kernel(dst, n, (void *)v) < 0)
            break;
        s->pos = start + size;
        break;
    }
    case ARG_FD: {
        struct fd_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = (u32)v};
        struct fd_path *fp = fd_paths.lookup(&key);
        if (!fp) {
            s->drop = 1;   /* as Tetragon: an fd argument needs a followed fd */
            break;
        }
        u32 len = fp->len;
        BOUND(len, 511);
        bpf_probe_read_kernel(dst, len, fp->path);
        s->pos = start + len;
        break;
    }
    case ARG_FILE:
    case ARG_PATH:
        if (!v)
            break;
        /* the prefix gate walked this path already */
        if (s->walked != p + 1)
            walk_file_path(s, (void *)v, ac->type);
        append_walk(s, DATA_LIMIT);
        break;
    case ARG_SOCK:
    case ARG_SOCKADDR: {
        struct sock_info *si = (struct sock_info *)dst;
        __builtin_memset(si, 0, sizeof(*si));
        if (v && ac->type == ARG_SOCK)
            read_sock(si, (void *)v);
        else if (v)
            read_sockaddr(si, (void *)v);
        s->pos = start + sizeof(*si);
        break;
    }
    default:   /* integers: their 8 bytes */
        __builtin_memcpy(dst, &v, 8);
        s->pos = start + 8;
    }
    s->len[p & 7] = s->pos - start;
    if (p <= POS_RET)
        r->arg_len[p & 7] = s->pos - start;
}

/* ---- selectors ----------------------------------------------------------- */

static __always_inline int match_string(struct scratch *s, u32 slot, u32 op, u32 p)
{
    u32 off = s->off[p & 7], len = s->len[p & 7];
    char *src = s->rec.data + (off & DATA_MASK);
    int found = 0;
    if (op == OP_EQ || op == OP_NEQ || op == OP_IN || op == OP_NOT_IN) {
        __builtin_memset(&s->eq_key, 0, sizeof(s->eq_key));
        s->eq_key.slot = slot;
        if (len < STR_KEY) {
            u32 n = len;
            BOUND(n, 255);
            bpf_probe_read_kernel(s->eq_key.s, n, src);
            found = str_eq.lookup(&s->eq_key) != 0;
        }
        return (op == OP_EQ || op == OP_IN) ? found : !found;
    }
    if (op == OP_PREFIX || op == OP_NOT_PREFIX) {
        u32 n = len < PREFIX_KEY ? len : PREFIX_KEY;
        s->prefix_key.slot = slot;
        s->prefix_key.prefixlen = 32 + n * 8;
        BOUND(n, 255);
        bpf_probe_read_kernel(s->prefix_key.s, n, src);
        found = str_prefix.lookup(&s->prefix_key) != 0;
        return op == OP_PREFIX ? found : !found;
    }
    /* Postfix: the reversed tail against reversed values */
    u32 n = len < POSTFIX_KEY - 1 ? len : POSTFIX_KEY - 1;
    s->postfix_key.slot = slot;
    s->postfix_key.prefixlen = 32 + n * 8;
    /* no data-dependent exit: bytes past n are ignored by the LPM lookup,
     * and a loop without branches verifies in linear time */
    u32 last = off + len - 1;
    for (u32 i = 0; i < POSTFIX_KEY - 1; i++)
        s->postfix_key.s[i] = s->rec.data[(last - i) & DATA_MASK];
    found = str_postfix.lookup(&s->postfix_key) != 0;
    return op == OP_POSTFIX ? found : !found;
}

static __always_inline int any_value(struct match_conf *m, u64 v, u32 op)
{
    for (int i = 0; i < MAX_VALUES; i++) {
        if (i >= m->nvalues)
            break;
        u64 lo = m->lo[i], hi = m->hi[i];
        switch (op) {
        case OP_EQ: case OP_NEQ: if (v == lo) return 1; break;
        case OP_MASK: if (v & lo) return 1; break;
        case OP_GT: if (m->is_signed ? (s64)v > (s64)lo : v > lo) return 1; break;
        case OP_LT: if (m->is_signed ? (s64)v < (s64)lo : v < lo) return 1; break;
        case OP_IN_RANGE: case OP_NOT_IN_RANGE:
            if (m->is_signed ? ((s64)v >= (s64)lo && (s64)v <= (s64)hi) : (v >= lo && v <= hi))
                return 1;
            break;
        }
    }
    return 0;
}

static __always_inline int match_addr(struct scratch *s, u32 slot, struct sock_info *si, int dst)
{
    struct addr_key k = {};
    k.slot = slot;
    k.family = si->family == 10 ? 6 : 4;
    u32 bits = si->family == 10 ? 128 : 32;
    k.prefixlen = 32 + 8 + bits;
    __builtin_memcpy(k.addr, dst ? si->daddr : si->saddr, 16);
    return addr_trie.lookup(&k) != 0;
}

static __always_inline int match_sock(struct scratch *s, struct match_conf *m, u32 slot)
{
    struct sock_info *si = (struct sock_info *)(s->rec.data + (s->off[m->pos & 7] & DATA_MASK));
    switch (m->op) {
    case OP_SPORT: return any_value(m, si->sport, OP_EQ);
    case OP_NOT_SPORT: return !any_value(m, si->sport, OP_EQ);
    case OP_SPORT_PRIV: return si->sport < 1024;
    case OP_NOT_SPORT_PRIV: return si->sport >= 1024;
    case OP_DPORT: return any_value(m, si->dport, OP_EQ);
    case OP_NOT_DPORT: return !any_value(m, si->dport, OP_EQ);
    case OP_DPORT_PRIV: return si->dport < 1024;
    case OP_NOT_DPORT_PRIV: return si->dport >= 1024;
    case OP_SADDR: return match_addr(s, slot, si, 0);
    case OP_NOT_SADDR: return !match_addr(s, slot, si, 0);
    case OP_DADDR: return match_addr(s, slot, si, 1);
    case OP_NOT_DADDR: return !match_addr(s, slot, si, 1);
    case OP_PROTOCOL: return any_value(m, si->protocol, OP_EQ);
    case OP_FAMILY: return any_value(m, si->family, OP_EQ);
    }
    return 0;
}

static __always_inline int match_arg(struct scratch *s, struct hook_conf *hc, struct match_conf *m, u32 slot)
{
    u32 p = m->pos;
    if (p > POS_RET)
        return 0;
    u8 type = hc->args[p].type;
    if (type == ARG_SOCK || type == ARG_SOCKADDR)
        return match_sock(s, m, slot);
    if (type == ARG_STRING || type == ARG_CHAR_BUF || type == ARG_FD || type == ARG_FILE || type == ARG_PATH)
        return match_string(s, slot, m->op, p);
    u64 v = s->val[p];
    switch (m->op) {
    case OP_NEQ: case OP_NOT_IN_RANGE:
        return !any_value(m, v, m->op);
    default:
        return any_value(m, v, m->op);
    }
}

/* tgid, or with ns_pid the pid in the task's own pid namespace (0 in the
 * initial one) */
static __always_inline u32 task_pid(void *task, u32 ns_pid)
{
    u32 pid = 0;
    if (!ns_pid) {
        READ_MEMBER(pid, task, task_struct, tgid);
        return pid;
    }
    void *tpid = PTR_MEMBER(task, task_struct, thread_pid);
    u32 level = 0;
    READ_MEMBER(level, tpid, pid, level);
    if (level < 1 || level > 31)
        return 0;   /* as Tetragon: no namespace pid outside a pid namespace */
    READ_MEMBER(pid, tpid + OFF_pid__numbers + level * SIZEOF_upid, upid, nr);
    return pid;
}

static __always_inline int match_pids(struct pid_conf *pc, u32 slot)
{
    void *task = (void *)bpf_get_current_task();
    int found = 0;
    /* as Tetragon: a namespace-pid rule never matches a process outside a
     * pid namespace, whatever its operator */
    if (pc->ns_pid && !task_pid(task, 1))
        return 0;
    for (int depth = 0; depth < 8; depth++) {
        struct pid_key k = {.slot = slot, .pid = task_pid(task, pc->ns_pid)};
        if (k.pid == 0)
            break;
        if (pid_set.lookup(&k)) {
            found = 1;
            break;
        }
        if (!pc->follow_forks)
            break;
        task = PTR_MEMBER(task, task_struct, real_parent);
        if (!task)
            break;
    }
    return pc->op == OP_IN ? found : !found;
}

static __always_inline int match_ns(struct ns_conf *nc)
{
    u32 inum = read_ns((void *)bpf_get_current_task(), nc->ns);
    int found = 0;
    for (int i = 0; i < MAX_VALUES; i++)
        if (i < nc->nvalues && nc->values[i] == inum)
            found = 1;
    return nc->op == OP_IN ? found : !found;
}

static __always_inline int match_caps(struct cap_conf *cc)
{
    void *cred = PTR_MEMBER((void *)bpf_get_current_task(), task_struct, cred);
    u64 caps = 0;
    if (cc->set == 0)
        READ_MEMBER(caps, cred, cred, cap_effective);
    else if (cc->set == 1)
        READ_MEMBER(caps, cred, cred, cap_inheritable);
    else
        READ_MEMBER(caps, cred, cred, cap_permitted);
    int found = (caps & cc->mask) != 0;
    return cc->op == OP_IN ? found : !found;
}

/* The executable of `task` as a path, written after the arguments as
 * position POS_BINARY (not part of the record sent). */
static __always_inline void binary_path(struct scratch *s, void *task)
{
    void *mm = PTR_MEMBER(task, task_struct, mm);
    void *exe = mm ? PTR_MEMBER(mm, mm_struct, exe_file) : 0;
    u32 end = s->pos;
    s->off[POS_BINARY] = end;
    if (exe) {
        walk_path(s, PTR_MEMBER(exe, file, f_path_dentry), PTR_MEMBER(exe, file, f_path_mnt));
        append_walk(s, DATA_LIMIT);
    }
    s->len[POS_BINARY] = s->pos - end;
    s->pos = end;
}

/* matchBinaries, matchParentBinaries */
static __always_inline int match_binary(struct scratch *s, void *task, u32 op, u32 slot)
{
    binary_path(s, task);
    return match_string(s, slot, op, POS_BINARY);
}

#ifdef FOLLOW_CHILDREN
/* matchBinaries / matchParentBinaries with followChildren: a process is in a
 * section's set when the binary it exec'd is, or when it descends from one
 * that is.  Decided at exec and inherited at fork (the programs at the end of
 * this file), seeded for running processes by the daemon, so that a selector
 * needs one lookup instead of a path walk per ancestor. */
#define MAX_FOLLOW 64
struct follow_conf {
    u32 slot;        /* the section's string-set slot (str_eq) */
    u32 pad;
};
BPF_ARRAY(follow_sections, struct follow_conf, MAX_FOLLOW);
BPF_ARRAY(follow_count, u32, 1);
BPF_HASH(followed, u32, u64, 32768);          /* tgid -> bits of the sections it is in */
BPF_PERCPU_ARRAY(follow_scratch, struct scratch, 1);   /* not scratch_map: exec may come between stages */

static __always_inline int match_followed(void *task, u32 follow, u32 op)
{
    u32 tgid = 0;
    READ_MEMBER(tgid, task, task_struct, tgid);
    u64 *bits = followed.lookup(&tgid);
    int found = bits ? (*bits >> ((follow - 1) & 63)) & 1 : 0;
    return op == OP_IN ? found : !found;
}
#endif

/* matchPIDs, matchBinaries, matchParentBinaries, matchNamespaces, matchCapabilities */
static __always_inline int match_process(struct scratch *s, struct selector_conf *sc, u32 base)
{
    for (int i = 0; i < MAX_PID_FILTERS; i++) {
        if (i >= sc->npids)
            break;
        if (!match_pids(&sc->pids[i], base * MAX_PID_FILTERS + i))
            return 0;
    }
    void *task = (void *)bpf_get_current_task();
#ifdef FOLLOW_CHILDREN
    if (sc->bin_follow) {
        if (!match_followed(task, sc->bin_follow, sc->bin_op))
            return 0;
    } else
#endif
    if (sc->bin_op && !match_binary(s, task, sc->bin_op, base * 8 + 6))
        return 0;
    if (sc->pbin_op) {
        void *parent = PTR_MEMBER(task, task_struct, real_parent);
#ifdef FOLLOW_CHILDREN
        if (sc->pbin_follow) {
            if (!match_followed(parent, sc->pbin_follow, sc->pbin_op))
                return 0;
        } else
#endif
        if (!match_binary(s, parent, sc->pbin_op, base * 8 + 7))
            return 0;
    }
    for (int i = 0; i < MAX_NS_FILTERS; i++) {
        if (i >= sc->nns)
            break;
        if (!match_ns(&sc->ns[i]))
            return 0;
    }
    for (int i = 0; i < MAX_CAP_FILTERS; i++) {
        if (i >= sc->ncaps)
            break;
        if (!match_caps(&sc->caps[i]))
            return 0;
    }
    return 1;
}

/* ---- actions ------------------------------------------------------------- */

static __always_inline int rate_limited(struct scratch *s, struct action_conf *ac, u32 slot)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct rate_key k = {.slot = slot};
    k.scope = ac->scope == 0 ? (u32)pid_tgid : ac->scope == 1 ? pid_tgid >> 32 : 0;
    u64 h = 14695981039346656037ULL;
    for (int i = 0; i <= MAX_ARGS; i++)
        h = (h ^ s->val[i] ^ s->len[i]) * 1099511628211ULL;
    k.hash = h;
    u64 now = bpf_ktime_get_ns();
    u64 *last = rate_last.lookup(&k);
    if (last && now - *last < ac->rate_ns)
        return 1;
    rate_last.update(&k, &now);
    return 0;
}

static __always_inline void follow_fd(struct scratch *s, struct action_conf *ac)
{
    u32 p = ac->arg_name & 7;
    struct fd_key key = {.tgid = bpf_get_current_pid_tgid() >> 32, .fd = (u32)s->val[ac->arg_fd & 7]};
    struct fd_path *fp = &s->fd_path;
    u32 len = s->len[p];
    if (len > FD_PATH_MAX - 1)
        len = FD_PATH_MAX - 1;
    BOUND(len, 511);
    fp->len = len;
    bpf_probe_read_kernel(fp->path, len, s->rec.data + (s->off[p] & DATA_MASK));
    fd_paths.update(&key, fp);
}

/* Returns 1 when the event is to be posted. */
static __always_inline int run_actions(struct scratch *s, struct selector_conf *sc, u32 slot)
{
    int post = 1;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    for (int a = 0; a < MAX_ACTIONS; a++) {
        if (a >= sc->nactions)
            break;
        struct action_conf *ac = &sc->actions[a];
        if (a == 0)
            s->rec.action = ac->action;
        switch (ac->action) {
        case ACT_POST:
            if (ac->rate_ns && rate_limited(s, ac, slot * MAX_ACTIONS + a))
                post = 0;
            break;
        case ACT_NOPOST:
            post = 0;
            break;
        case ACT_FOLLOWFD:
            follow_fd(s, ac);
            break;
        case ACT_UNFOLLOWFD: {
            /* as Tetragon's guide shows it (Tetragon up to 0.10): an fd that
             * was not followed fails the action, and a failed action ends
             * the selector's actions without an event */
            struct fd_key key = {.tgid = tgid, .fd = (u32)s->val[ac->arg_fd & 7]};
            if (fd_paths.delete(&key) != 0)
                return 0;
            break;
        }
        case ACT_COPYFD: {
            struct fd_key from = {.tgid = tgid, .fd = (u32)s->val[ac->arg_fd & 7]};
            struct fd_key to = {.tgid = tgid, .fd = (u32)s->val[ac->arg_name & 7]};
            struct fd_path *fp = fd_paths.lookup(&from);
            if (fp)
                fd_paths.update(&to, fp);
            break;
        }
        case ACT_SIGNAL:
        case ACT_SIGKILL:
            if (tgid == 1) {   /* never signal init: report only, without the action */
                if (a == 0)
                    s->rec.action = ACT_POST;
                break;
            }
            bpf_send_signal(ac->action == ACT_SIGKILL ? 9 : ac->arg);
            break;
        case ACT_OVERRIDE:
            if (tgid == 1) {   /* never deny PID 1 (tetrad itself never gets here): report only */
                if (a == 0)
                    s->rec.action = ACT_POST;
                break;
            }
            s->verdict = ac->arg;
            break;
        }
    }
    return post;
}

/* ---- the hook, in stages ------------------------------------------------ */
/* Evaluation is split into programs chained by tail calls (START, one ARG
 * per position, one SELECT per selector, then REST of that selector) so that
 * each is verified alone and small; the state between them is the per-CPU
 * scratch.  Each program type (tracepoint, kprobe) has its own four stages,
 * and each lsmhook its own four (a BPF LSM program tail-calls only programs
 * verified against its own hook). */
#define STAGE_START  0
#define STAGE_ARG    1
#define STAGE_SELECT 2
#define STAGE_REST   3
/* A program array belongs to one program type: tracepoint programs chain
 * through tp_runners, kprobe/uprobe programs through kp_runners. */
BPF_PROG_ARRAY(tp_runners, 4);
BPF_PROG_ARRAY(kp_runners, 4);

#define MAX_LSM_HOOKS 4
#ifdef LSM_HOOK_0
BPF_PROG_ARRAY(lsm_runners0, 4);
#endif
#ifdef LSM_HOOK_1
BPF_PROG_ARRAY(lsm_runners1, 4);
#endif
#ifdef LSM_HOOK_2
BPF_PROG_ARRAY(lsm_runners2, 4);
#endif
#ifdef LSM_HOOK_3
BPF_PROG_ARRAY(lsm_runners3, 4);
#endif
/* fentry/fexit: a program array per group (FENTRY_GROUPS of them), since a
 * tracing program tail-calls only programs verified against the same function
 * prototype */
#define MAX_FENTRY_GROUPS 4
#if FENTRY_GROUPS > 0
BPF_PROG_ARRAY(fentry_runners0, 4);
#endif
#if FENTRY_GROUPS > 1
BPF_PROG_ARRAY(fentry_runners1, 4);
#endif
#if FENTRY_GROUPS > 2
BPF_PROG_ARRAY(fentry_runners2, 4);
#endif
#if FENTRY_GROUPS > 3
BPF_PROG_ARRAY(fentry_runners3, 4);
#endif

/* lsmhook i's ADAPT_* (LSM_ADAPT_i); `run` is a constant in each program */
static __always_inline u32 lsm_adapt(int run)
{
    switch (run) {
#ifdef LSM_HOOK_0
    case RUN_LSM + 0: return LSM_ADAPT_0;
#endif
#ifdef LSM_HOOK_1
    case RUN_LSM + 1: return LSM_ADAPT_1;
#endif
#ifdef LSM_HOOK_2
    case RUN_LSM + 2: return LSM_ADAPT_2;
#endif
#ifdef LSM_HOOK_3
    case RUN_LSM + 3: return LSM_ADAPT_3;
#endif
    }
    return ADAPT_NONE;
}

/* `run` is a constant in each program, so only one of the arrays is used */
static __always_inline void next_stage(void *ctx, int run, u32 stage)
{
    switch (run) {
    case RUN_TP: tp_runners.call(ctx, stage); break;
    case RUN_KP: kp_runners.call(ctx, stage); break;
#ifdef LSM_HOOK_0
    case RUN_LSM + 0: lsm_runners0.call(ctx, stage); break;
#endif
#ifdef LSM_HOOK_1
    case RUN_LSM + 1: lsm_runners1.call(ctx, stage); break;
#endif
#ifdef LSM_HOOK_2
    case RUN_LSM + 2: lsm_runners2.call(ctx, stage); break;
#endif
#ifdef LSM_HOOK_3
    case RUN_LSM + 3: lsm_runners3.call(ctx, stage); break;
#endif
#if FENTRY_GROUPS > 0
    case RUN_FENTRY + 0: fentry_runners0.call(ctx, stage); break;
#endif
#if FENTRY_GROUPS > 1
    case RUN_FENTRY + 1: fentry_runners1.call(ctx, stage); break;
#endif
#if FENTRY_GROUPS > 2
    case RUN_FENTRY + 2: fentry_runners2.call(ctx, stage); break;
#endif
#if FENTRY_GROUPS > 3
    case RUN_FENTRY + 3: fentry_runners3.call(ctx, stage); break;
#endif
    }
}

static __always_inline struct scratch *get_scratch(void)
{
    u32 zero = 0;
    return scratch_map.lookup(&zero);
}

static __always_inline void emit(struct scratch *s)
{
    struct policy_record *r = &s->rec;
    u32 size = (RECORD_FIXED + s->pos) & (DATA_MASK * 2 + 1);
    if (size > sizeof(*r))
        size = sizeof(*r);
    r->h.size = size;
    r->h.ktime = bpf_ktime_get_ns();   /* here: most hook runs end without a record */
    if (events.ringbuf_output(r, size, 0) != 0) {
        u32 zero = 0;
        u64 *n = lost_records.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

/* The prefix gate: each selector of the hook needs the file or path at
 * gate_pos to start with one of its Prefix values, and the union of those
 * values is under PREFIX_GATE_SLOT.  So a path that starts with none of
 * them matches no selector, and the path's first gate_len bytes say so: the
 * walk up to the root, but the names of the first components only, and no
 * other argument, record or stage (most files opened are not followed). */
static __always_inline int prefix_gate_passes(struct scratch *s, struct hook_conf *hc, u32 conf)
{
    u32 p = hc->gate_pos;
    if (p >= MAX_ARGS)
        return 1;
    struct arg_conf *ac = &hc->args[p];
    u32 src = ac->src;
    BOUND(src, 7);
    void *v = (void *)s->raw[src];
    s->pos = 0;
    if (v) {
        walk_file_path(s, v, ac->type);
        s->walked = p + 1;   /* for the argument's stage, if it comes to that */
        /* writes components while fewer than gate_len bytes are written */
        append_walk(s, hc->gate_len + PATH_NAME_MAX);
    }
    u32 n = s->pos < PREFIX_KEY ? s->pos : PREFIX_KEY;
    s->prefix_key.slot = PREFIX_GATE_SLOT(conf);
    s->prefix_key.prefixlen = 32 + n * 8;
    BOUND(n, 255);
    bpf_probe_read_kernel(s->prefix_key.s, n, s->rec.data);
    return str_prefix.lookup(&s->prefix_key) != 0;
}

static __always_inline int stage_start(void *ctx, int run)
{
    struct scratch *s = get_scratch();
    if (!s)
        return 0;
    u32 slot = s->slot, conf = s->conf;
    struct hook_conf *hc = hooks.lookup(&conf);
    if (!hc)
        return 0;
    /* here, not in each hook's entry point: one copy of the walk per program type;
     * the exit of a hook attached at both ends was decided at its entry (nothing
     * was saved for a process out of scope) */
    u32 two = 2;
    u32 *scoped = settings.lookup(&two);
    if (scoped && *scoped && (s->phase == PHASE_ENTER || !(hc->flags & HOOKF_AT_EXIT)) && !in_scope())
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    s64 ret = 0;
    struct saved_key sk = {.pid_tgid = pid_tgid, .slot = slot};
    if (s->phase == PHASE_ENTER) {
        read_raw_args(ctx, hc, s->raw, run);
        if (IS_LSM(run) && !adapt_lsm_args(lsm_adapt(run), s->raw))
            return 0;
        if (hc->flags & HOOKF_AT_EXIT) {
            /* counted only when new: an entry left by a missed exit is overwritten,
             * and counting it again would keep the count above zero for good */
            if (saved.insert(&sk, (struct saved_args *)s->raw) == 0) {
                u64 *count = saved_count.lookup(&slot);
                if (count)
                    __sync_fetch_and_add(count, 1);
            } else {
                saved.update(&sk, (struct saved_args *)s->raw);
            }
            return 0;
        }
    } else {
        /* only a hook attached at both ends saved anything at entry */
        struct saved_args *sa = (hc->flags & HOOKF_AT_EXIT) ? saved.lookup(&sk) : 0;
        if (sa) {
            __builtin_memcpy(s->raw, sa->raw, sizeof(sa->raw));
            u64 *count = saved_count.lookup(&slot);
            if (saved.delete(&sk) == 0 && count)
                __sync_fetch_and_add(count, -1);
        } else if (run >= RUN_FENTRY) {
            read_raw_args(ctx, hc, s->raw, run);   /* fexit sees the arguments too */
        } else if (hc->mode == EMU_FD_INSTALL || hc->mode == EMU_FILE_OPEN) {
            __builtin_memset(s->raw, 0, sizeof(s->raw));
        } else {
            return 0;   /* entered before the hook was attached */
        }
        if (run == RUN_KP)
            ret = PT_REGS_RC((struct pt_regs *)ctx);
        else if (run == RUN_TP && hc->ret_off == SYSCALL_CTX_FIELD && hc->ret_size == 8)
            ret = *(s64 *)(ctx + SYSCALL_CTX_FIELD);   /* an exit is a sys_exit_* tracepoint */
        else
            ret = read_ctx_field(ctx, hc->ret_off, hc->ret_size, hc->ret_signed);
    }
    if (hc->mode != EMU_NONE && !emulate(hc->mode, s->raw, ret))
        return 0;
    s->walked = 0;
    if ((hc->flags & HOOKF_PREFIX_GATE) && !prefix_gate_passes(s, hc, conf))   /* values per configuration */
        return 0;

    struct policy_record *r = &s->rec;
    __builtin_memset(r, 0, RECORD_FIXED);
    r->h.type = RECORD_POLICY;
    r->hook = slot;
    r->flags = conf >= NHOOKS ? RECF_CONF1 : 0;
    r->pid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    r->ret = ret;
    r->action = ACT_POST;
    s->pos = 0;
    s->drop = 0;
    s->verdict = 0;
    s->next = 0;
    s->val[POS_RET] = ret;
    next_stage(ctx, run, STAGE_ARG);
    return 0;
}

/* Read position s->next, then go on to the next one, or to the selectors. */
static __always_inline int stage_arg(void *ctx, int run)
{
    struct scratch *s = get_scratch();
    if (!s)
        return 0;
    u32 conf = s->conf;
    struct hook_conf *hc = hooks.lookup(&conf);
    if (!hc)
        return 0;
    u32 p = s->next;
    BOUND(p, 7);
    if (p > POS_RET)
        return 0;
    struct arg_conf *ac = &hc->args[p];
    if ((p < POS_RET && p < hc->nargs) || (p == POS_RET && ac->type != ARG_NONE)) {
        u32 src = ac->src;
        BOUND(src, 7);
        u64 v = p == POS_RET ? (u64)s->rec.ret : s->raw[src];
        read_value(s, ac, p, v, s->rec.ret);
        if (s->drop)
            return 0;
    }
    /* on to the next configured position: the arguments, then the return value */
    u32 next = p + 1 < hc->nargs ? p + 1 : POS_RET;
    if (p < POS_RET && (next < POS_RET || hc->args[POS_RET].type != ARG_NONE)) {
        s->next = next;
        next_stage(ctx, run, STAGE_ARG);
        return 0;
    }
    if (!hc->nselectors) {
        emit(s);
        return 0;
    }
    s->next = 0;
    next_stage(ctx, run, STAGE_SELECT);
    return 0;
}

/* The matchArgs/matchReturnArgs of selector s->next. */
static __always_inline int stage_select(void *ctx, int run)
{
    struct scratch *s = get_scratch();
    if (!s)
        return 0;
    u32 conf = s->conf;
    struct hook_conf *hc = hooks.lookup(&conf);
    u32 k = s->next;
    if (!hc || k >= MAX_SELECTORS || k >= hc->nselectors)
        return 0;   /* no selector matched: no event */
    u32 idx = conf * MAX_SELECTORS + k;
    struct selector_conf *sc = selectors.lookup(&idx);
    if (!sc)
        return 0;
    int ok = 1;
    for (int m = 0; m < MAX_MATCH; m++) {
        if (m >= sc->nmatch)
            break;
        if (!match_arg(s, hc, &sc->match[m], idx * 8 + m)) {
            ok = 0;
            break;
        }
    }
    if (ok) {
        next_stage(ctx, run, STAGE_REST);
        return 0;
    }
    s->next = k + 1;
    next_stage(ctx, run, STAGE_SELECT);
    return 0;
}

/* The process filters of selector s->next; on a match its actions and the event. */
static __always_inline int stage_rest(void *ctx, int run)
{
    struct scratch *s = get_scratch();
    if (!s)
        return 0;
    u32 conf = s->conf;
    u32 k = s->next;
    if (k >= MAX_SELECTORS)
        return 0;
    u32 idx = conf * MAX_SELECTORS + k;
    struct selector_conf *sc = selectors.lookup(&idx);
    if (!sc)
        return 0;
    if (match_process(s, sc, idx)) {
        s->rec.selector = k + 1;
        if (run_actions(s, sc, idx))
            emit(s);
        return IS_LSM(run) ? s->verdict : 0;   /* fentry/fexit programs must return 0 */
    }
    s->next = k + 1;
    next_stage(ctx, run, STAGE_SELECT);
    return 0;
}

/* A policy none of whose hooks is a tracepoint (kprobe, uprobe) is compiled with
 * WITHOUT_TP (WITHOUT_KP): each chain left out is a copy of the stages less to
 * compile, which under the kernel lane's emulation is most of a policy's load time. */
#ifndef WITHOUT_TP
int tp_start(void *ctx) { return stage_start(ctx, RUN_TP); }
int tp_arg(void *ctx) { return stage_arg(ctx, RUN_TP); }
int tp_select(void *ctx) { return stage_select(ctx, RUN_TP); }
int tp_rest(void *ctx) { return stage_rest(ctx, RUN_TP); }
#endif
#ifndef WITHOUT_KP
int kp_start(struct pt_regs *ctx) { return stage_start(ctx, RUN_KP); }
int kp_arg(struct pt_regs *ctx) { return stage_arg(ctx, RUN_KP); }
int kp_select(struct pt_regs *ctx) { return stage_select(ctx, RUN_KP); }
int kp_rest(struct pt_regs *ctx) { return stage_rest(ctx, RUN_KP); }
#endif

/* Raw argument i (0..5) of the hooked call, read alone, as read_raw_args
 * reads them all.  `run` is a constant in each program: a tracepoint program
 * must not hold the pt_regs reads, which its verifier refuses; `syscall_ctx`
 * (a constant too) says that ctx is a syscall tracepoint's with arguments. */
static __always_inline u64 read_raw_arg(void *ctx, struct hook_conf *hc, u32 i, int run, int syscall_ctx)
{
    u64 v = 0;
    if (i >= RAW_ARGS)
        return 0;
    if (IS_LSM(run)) {
        bpf_probe_read_kernel(&v, 8, ctx + i * 8);
        return v;
    }
    u32 off = i == 0 ? offsetof(struct pt_regs, di) : i == 1 ? offsetof(struct pt_regs, si) :
              i == 2 ? offsetof(struct pt_regs, dx) : i == 3 ? offsetof(struct pt_regs, r10) :
              i == 4 ? offsetof(struct pt_regs, r8) : offsetof(struct pt_regs, r9);
    if (run >= RUN_FENTRY) {
        if (!(hc->flags & HOOKF_SYSCALL_WRAPPER))
            return read_ctx_field(ctx, hc->tp_off[i], hc->tp_size[i], hc->tp_signed[i]);
        bpf_probe_read_kernel(&v, 8, read_ptr(ctx) + off);
        return v;
    }
    if (run == RUN_TP && syscall_ctx && hc->tp_off[i] == SYSCALL_CTX_FIELD && hc->tp_size[i] == 8)
        return *(u64 *)(ctx + SYSCALL_CTX_FIELD);
    if (run == RUN_TP)
        return read_ctx_field(ctx, hc->tp_off[i], hc->tp_size[i], hc->tp_signed[i]);
    struct pt_regs *regs = ctx;
    if (hc->flags & HOOKF_SYSCALL_WRAPPER) {
        bpf_probe_read_kernel(&v, 8, (void *)PT_REGS_PARM1(regs) + off);
        return v;
    }
    u64 parms[RAW_ARGS] = {PT_REGS_PARM1(regs), PT_REGS_PARM2(regs), PT_REGS_PARM3(regs),
                           PT_REGS_PARM4(regs), PT_REGS_PARM5(regs), PT_REGS_PARM6(regs)};
    return parms[i];
}

/* Most calls of a hooked syscall produce nothing: a read or close of an fd
 * that is not followed, the exit of a call whose entry saved nothing, a
 * failed open under an fd_install or security_file_open equivalent.  Each is
 * decided here with one map lookup or none, before the tail calls, the
 * scratch set-up and the argument reads of the stages. */
static __always_inline int nothing_to_do(void *ctx, struct hook_conf *hc, u32 slot, u32 phase,
                                         u64 pid_tgid, int run, int syscall_ctx)
{
    /* the gate: at entry, or at the exit of a hook attached there alone (fexit) */
    if ((phase == PHASE_ENTER || !(hc->flags & HOOKF_AT_EXIT)) && (hc->flags & HOOKF_FD_GATE)) {
        struct fd_key fk = {.tgid = pid_tgid >> 32,
                            .fd = (u32)read_raw_arg(ctx, hc, hc->fd_src, run, syscall_ctx)};
        return !fd_paths.lookup(&fk);
    }
    if (phase == PHASE_EXIT && (hc->flags & HOOKF_AT_EXIT)) {
        u64 *count = saved_count.lookup(&slot);
        if (count && *count == 0)
            return 1;
        struct saved_key sk = {.pid_tgid = pid_tgid, .slot = slot};
        return !saved.lookup(&sk);
    }
    if (phase == PHASE_EXIT && run == RUN_TP && syscall_ctx &&
        (hc->mode == EMU_FD_INSTALL || hc->mode == EMU_FILE_OPEN))
        return (s64)*(u64 *)(ctx + SYSCALL_CTX_FIELD) < 0;   /* as emulate() decides */
    return 0;
}

static __always_inline int dispatch(void *ctx, u32 slot, u32 phase, int run, int syscall_ctx)
{
    u32 zero = 0, one = 1;
    u32 *enabled = settings.lookup(&zero);
    u32 *self = settings.lookup(&one);
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!enabled || !*enabled || !self || *self == (pid_tgid >> 32))
        return 0;
    u32 conf = *enabled == 2 ? slot + NHOOKS : slot;   /* read once: the event's configuration */
    struct hook_conf *hc = hooks.lookup(&conf);
    if (!hc || nothing_to_do(ctx, hc, slot, phase, pid_tgid, run, syscall_ctx))
        return 0;
    struct scratch *s = get_scratch();
    if (!s)
        return 0;
    s->slot = slot;
    s->conf = conf;
    s->phase = phase;
    next_stage(ctx, run, STAGE_START);
    return 0;   /* reached only if the tail call failed: allow */
}

/* fentry/fexit: slot n of group FENTRY_GROUP_n (userspace defines it for every slot
 * of a policy with fentry hooks, MAX_FENTRY_GROUPS for the others: their fhook<n>_*
 * reach no program array and are never loaded).  Loaded as fentry or fexit
 * programs of the slot's function (tetrad/policy/fentry.py). */
#if FENTRY_GROUPS > 0
#define FENTRY_HOOK(n) \
    int fhook##n##_enter(u64 *ctx) { return dispatch(ctx, n, PHASE_ENTER, RUN_FENTRY + FENTRY_GROUP_##n, 0); } \
    int fhook##n##_exit(u64 *ctx) { return dispatch(ctx, n, PHASE_EXIT, RUN_FENTRY + FENTRY_GROUP_##n, 0); }
#else
#define FENTRY_HOOK(n)
#endif

#ifndef WITHOUT_TP
#define TP_HOOK(n) \
    int hook##n##_enter(void *ctx) { return dispatch(ctx, n, PHASE_ENTER, RUN_TP, 0); } \
    int hook##n##_sysenter(void *ctx) { return dispatch(ctx, n, PHASE_ENTER, RUN_TP, 1); } \
    int hook##n##_exit(void *ctx) { return dispatch(ctx, n, PHASE_EXIT, RUN_TP, 1); }
#else
#define TP_HOOK(n)
#endif
#ifndef WITHOUT_KP
#define KP_HOOK(n) \
    int khook##n##_enter(struct pt_regs *ctx) { return dispatch(ctx, n, PHASE_ENTER, RUN_KP, 0); } \
    int khook##n##_exit(struct pt_regs *ctx) { return dispatch(ctx, n, PHASE_EXIT, RUN_KP, 0); }
#else
#define KP_HOOK(n)
#endif

/* Each slot's entry points: hook<n>_* for tracepoints (hook<n>_sysenter on a
 * sys_enter_* tracepoint of a syscall with arguments, hook<n>_exit only ever
 * on sys_exit_* ones), khook<n>_* for kprobes and uprobes, fhook<n>_* for
 * fentry/fexit. */
#define HOOK(n) TP_HOOK(n) KP_HOOK(n) FENTRY_HOOK(n)

HOOK(0)
#if NHOOKS > 1
HOOK(1)
#endif
#if NHOOKS > 2
HOOK(2)
#endif
#if NHOOKS > 3
HOOK(3)
#endif
#if NHOOKS > 4
HOOK(4)
#endif
#if NHOOKS > 5
HOOK(5)
#endif
#if NHOOKS > 6
HOOK(6)
#endif
#if NHOOKS > 7
HOOK(7)
#endif
#if NHOOKS > 8
HOOK(8)
#endif
#if NHOOKS > 9
HOOK(9)
#endif
#if NHOOKS > 10
HOOK(10)
#endif
#if NHOOKS > 11
HOOK(11)
#endif
#if NHOOKS > 12
HOOK(12)
#endif
#if NHOOKS > 13
HOOK(13)
#endif
#if NHOOKS > 14
HOOK(14)
#endif
#if NHOOKS > 15
HOOK(15)
#endif

/* fentry/fexit group g: the four stages, loaded (tetrad/policy/fentry.py) as
 * programs of the group's first function, whose prototype every hook of the
 * group shares, at the group's end (fentry or fexit). */
#define FENTRY_STAGES(g) \
    int feS##g(u64 *ctx) { return stage_start(ctx, RUN_FENTRY + g); } \
    int feA##g(u64 *ctx) { return stage_arg(ctx, RUN_FENTRY + g); } \
    int feL##g(u64 *ctx) { return stage_select(ctx, RUN_FENTRY + g); } \
    int feR##g(u64 *ctx) { return stage_rest(ctx, RUN_FENTRY + g); }

#if FENTRY_GROUPS > 0
FENTRY_STAGES(0)
#endif
#if FENTRY_GROUPS > 1
FENTRY_STAGES(1)
#endif
#if FENTRY_GROUPS > 2
FENTRY_STAGES(2)
#endif
#if FENTRY_GROUPS > 3
FENTRY_STAGES(3)
#endif

/* BPF LSM: lsmhook i (< MAX_LSM_HOOKS) is hook slot LSM_SLOT_i on LSM hook LSM_HOOK_i,
 * its arguments adapted by LSM_ADAPT_i (an lsmhook, or the LSM equivalent of a
 * function's Override: one slot may then have several LSM hooks).
 * A BPF LSM program is verified against one hook, which BCC takes from the
 * function's name after its first five characters: "lsEa_file_open" is the
 * entry point of lsmhook a on file_open, "lsSa_"/"lsAa_"/"lsLa_"/"lsRa_" its
 * stages.  The chain's last program returns the verdict: 0 or Override's error. */
#define NAME_(prefix, hook) prefix##hook
#define NAME(prefix, hook) NAME_(prefix, hook)
#define LSM_PROGRAMS(i, L, slot, hook) \
    int NAME(lsE##L##_, hook)(u64 *ctx) { return dispatch(ctx, slot, PHASE_ENTER, RUN_LSM + i, 0); } \
    int NAME(lsS##L##_, hook)(u64 *ctx) { return stage_start(ctx, RUN_LSM + i); } \
    int NAME(lsA##L##_, hook)(u64 *ctx) { return stage_arg(ctx, RUN_LSM + i); } \
    int NAME(lsL##L##_, hook)(u64 *ctx) { return stage_select(ctx, RUN_LSM + i); } \
    int NAME(lsR##L##_, hook)(u64 *ctx) { return stage_rest(ctx, RUN_LSM + i); }

#ifdef LSM_HOOK_0
LSM_PROGRAMS(0, a, LSM_SLOT_0, LSM_HOOK_0)
#endif
#ifdef LSM_HOOK_1
LSM_PROGRAMS(1, b, LSM_SLOT_1, LSM_HOOK_1)
#endif
#ifdef LSM_HOOK_2
LSM_PROGRAMS(2, c, LSM_SLOT_2, LSM_HOOK_2)
#endif
#ifdef LSM_HOOK_3
LSM_PROGRAMS(3, d, LSM_SLOT_3, LSM_HOOK_3)
#endif

#ifdef FOLLOW_CHILDREN
/* followChildren bookkeeping, attached only to policies that use it. */

/* At exec: the process keeps the sections it inherited and gains those
 * listing its new binary (operators In/NotIn: the set is the same).  The
 * path walk and the lookups are two programs: one would be too large for the
 * verifier. */
BPF_PROG_ARRAY(follow_stages, 1);

int follow_exec(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0;
    struct scratch *s = follow_scratch.lookup(&zero);
    if (!s)
        return 0;
    s->pos = 0;
    binary_path(s, (void *)bpf_get_current_task());
    follow_stages.call(ctx, 0);
    return 0;
}

int follow_match(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0;
    struct scratch *s = follow_scratch.lookup(&zero);
    u32 *count = follow_count.lookup(&zero);
    if (!s || !count)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 *had = followed.lookup(&tgid);
    /* the bits are gathered in map memory, which the verifier does not track:
     * in a register each iteration's outcome would be a state of its own and
     * 64 iterations would never prune */
    volatile u64 *bits = &s->val[POS_BINARY];
    *bits = had ? *had : 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < MAX_FOLLOW; i++) {
        if (i >= *count)
            break;
        u32 k = i;
        struct follow_conf *fc = follow_sections.lookup(&k);
        if (fc && match_string(s, fc->slot, OP_IN, POS_BINARY))
            *bits |= 1ull << i;
    }
    u64 b = *bits;
    if (b)
        followed.update(&tgid, &b);
    return 0;
}

/* At fork: a new process is in its parent's sections (threads share theirs). */
int follow_fork(struct bpf_raw_tracepoint_args *ctx)
{
    u32 ppid, tgid;
    if (!forked_process(ctx, &ppid, &tgid))
        return 0;
    u64 *bits = followed.lookup(&ppid);
    if (bits) {
        u64 b = *bits;
        followed.update(&tgid, &b);
    }
    return 0;
}

int follow_exit(struct bpf_raw_tracepoint_args *ctx)
{
    u32 tgid = ended_process(ctx);
    if (tgid)
        followed.delete(&tgid);
    return 0;
}
#endif
