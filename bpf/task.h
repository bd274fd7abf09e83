/* Reading a task's identity (ids, credentials, namespaces, cgroup, argv, cwd)
 * through BTF-resolved offsets.  Shared by the process sensor and its
 * start-up self-test, so the self-test checks exactly the code that serves
 * events. */
#ifndef TETRAD_TASK_H
#define TETRAD_TASK_H

#include "common.h"

#define ARGS_MAX       4096   /* argv bytes kept; longer argv sets truncArgs */
#define FILENAME_MAX_LEN 4096 /* PATH_MAX */
#define NAME_MAX_LEN   256    /* one path component, NUL included */
#define PATH_MAX_DEPTH 48    /* components walked for cwd */

/* The variable part of a record: argv, then filename, then cwd components
 * (leaf first, each NUL terminated).  Writes land at `off & DATA_MASK` and
 * never exceed 4096 bytes, so a buffer of DATA_MASK + 1 + 4096 bytes keeps
 * every access provably in bounds for the verifier. */
#define DATA_MASK      8191
#define RECORD_MASK    16383                  /* a whole record is 16 KiB */
#define DATA_SIZE      (RECORD_MASK + 1 - 168) /* 168: the fixed part */

#define PF_KTHREAD 0x00200000   /* task_struct.flags: a kernel thread */

static __always_inline int is_kernel_thread(void *task)
{
    u32 flags = 0;
    READ_MEMBER(flags, task, task_struct, flags);
    return flags & PF_KTHREAD;
}

struct creds {
    u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
    u32 securebits, pad;
    u64 cap_permitted, cap_effective, cap_inheritable;
};

struct namespaces {
    u32 uts, ipc, mnt, pid, pid_for_children, net, time, time_for_children, cgroup, user;
};

struct task_record {
    struct record_header h;
    u32 pid;        /* tgid */
    u32 tid;
    u32 ppid;       /* real parent's tgid */
    u32 nspid;      /* pid in the task's own pid namespace */
    u32 auid;       /* loginuid */
    u32 flags;
    u64 cgroup_id;  /* cgroup v2 id = inode of the cgroup directory */
    struct creds creds;
    struct namespaces ns;
    u32 args_len;
    u32 filename_len;
    u32 cwd_len;
    u32 exit_code;  /* only for exit records */
    char data[DATA_SIZE];
};

static __always_inline u32 ns_inum(void *ns_struct, u32 ns_common_inum_off)
{
    u32 inum = 0;
    if (ns_struct)
        bpf_probe_read_kernel(&inum, sizeof(inum), ns_struct + ns_common_inum_off);
    return inum;
}

static __always_inline void read_creds(struct task_record *r, void *task)
{
    void *cred = PTR_MEMBER(task, task_struct, cred);
    struct creds *c = &r->creds;
    READ_MEMBER(c->uid, cred, cred, uid);
    READ_MEMBER(c->gid, cred, cred, gid);
    READ_MEMBER(c->euid, cred, cred, euid);
    READ_MEMBER(c->egid, cred, cred, egid);
    READ_MEMBER(c->suid, cred, cred, suid);
    READ_MEMBER(c->sgid, cred, cred, sgid);
    READ_MEMBER(c->fsuid, cred, cred, fsuid);
    READ_MEMBER(c->fsgid, cred, cred, fsgid);
    READ_MEMBER(c->securebits, cred, cred, securebits);
    READ_MEMBER(c->cap_permitted, cred, cred, cap_permitted);
    READ_MEMBER(c->cap_effective, cred, cred, cap_effective);
    READ_MEMBER(c->cap_inheritable, cred, cred, cap_inheritable);
    r->ns.user = ns_inum(PTR_MEMBER(cred, cred, user_ns), OFF_user_namespace__ns_inum);
}

static __always_inline void read_namespaces(struct task_record *r, void *task)
{
    void *nsp = PTR_MEMBER(task, task_struct, nsproxy);
    if (!nsp)   /* exiting task: namespaces already released */
        return;
    r->ns.uts = ns_inum(PTR_MEMBER(nsp, nsproxy, uts_ns), OFF_uts_namespace__ns_inum);
    r->ns.ipc = ns_inum(PTR_MEMBER(nsp, nsproxy, ipc_ns), OFF_ipc_namespace__ns_inum);
    r->ns.mnt = ns_inum(PTR_MEMBER(nsp, nsproxy, mnt_ns), OFF_mnt_namespace__ns_inum);
    r->ns.pid_for_children = ns_inum(PTR_MEMBER(nsp, nsproxy, pid_ns_for_children),
                                     OFF_pid_namespace__ns_inum);
    r->ns.net = ns_inum(PTR_MEMBER(nsp, nsproxy, net_ns), OFF_net__ns_inum);
#ifdef OFF_nsproxy__time_ns
    r->ns.time = ns_inum(PTR_MEMBER(nsp, nsproxy, time_ns), OFF_time_namespace__ns_inum);
    r->ns.time_for_children = ns_inum(PTR_MEMBER(nsp, nsproxy, time_ns_for_children),
                                      OFF_time_namespace__ns_inum);
#endif
    r->ns.cgroup = ns_inum(PTR_MEMBER(nsp, nsproxy, cgroup_ns), OFF_cgroup_namespace__ns_inum);
}

/* The task's own pid namespace and its pid there: thread_pid->numbers[level]. */
static __always_inline void read_pid_ns(struct task_record *r, void *task)
{
    void *pid = PTR_MEMBER(task, task_struct, thread_pid);
    u32 level = 0;
    if (!pid)
        return;
    READ_MEMBER(level, pid, pid, level);
    if (level > 31)
        return;
    void *upid = pid + OFF_pid__numbers + level * SIZEOF_upid;
    READ_MEMBER(r->nspid, upid, upid, nr);
    r->ns.pid = ns_inum(PTR_MEMBER(upid, upid, ns), OFF_pid_namespace__ns_inum);
}

static __always_inline u64 read_cgroup_id(void *task)
{
    u64 id = 0;
    void *css_set = PTR_MEMBER(task, task_struct, cgroups);
    void *cgrp = PTR_MEMBER(css_set, css_set, dfl_cgrp);
    void *kn = PTR_MEMBER(cgrp, cgroup, kn);
    READ_MEMBER(id, kn, kernfs_node, id);
    return id;
}

/* Copy argv (NUL separated, as in /proc/pid/cmdline) to data[0..]. */
static __always_inline u32 read_args(struct task_record *r, void *task)
{
    void *mm = PTR_MEMBER(task, task_struct, mm);
    unsigned long start = 0, end = 0;
    if (!mm) {
        r->flags |= FLAG_ERROR_ARGS;
        return 0;
    }
    READ_MEMBER(start, mm, mm_struct, arg_start);
    READ_MEMBER(end, mm, mm_struct, arg_end);
    if (end <= start)
        return 0;
    u64 len = end - start;
    if (len > ARGS_MAX) {
        len = ARGS_MAX;
        r->flags |= FLAG_TRUNC_ARGS;
    }
    len &= (2 * ARGS_MAX - 1);   /* no-op at runtime; bounds it for the verifier */
    if (bpf_probe_read_user(r->data, len, (void *)start) < 0) {
        r->flags |= FLAG_ERROR_ARGS;
        return 0;
    }
    return len;
}

/* Walk the cwd from its dentry up to the task's root, crossing mounts, and
 * store the components leaf first at data[off..].  Userspace reverses them. */
static __always_inline u32 read_cwd(struct task_record *r, void *task, u32 off)
{
    void *fs = PTR_MEMBER(task, task_struct, fs);
    if (!fs) {
        r->flags |= FLAG_ERROR_CWD;
        return 0;
    }
    void *dentry = PTR_MEMBER(fs, fs_struct, pwd_dentry);
    void *vfsmnt = PTR_MEMBER(fs, fs_struct, pwd_mnt);
    void *root_dentry = PTR_MEMBER(fs, fs_struct, root_dentry);
    void *root_mnt = PTR_MEMBER(fs, fs_struct, root_mnt);
    void *mnt = vfsmnt - OFF_mount__mnt;
    int i;

    /* The write position lives in the record, not in a register: reloaded
     * from memory it is an unknown scalar to the verifier, so the states of
     * successive iterations match and the walk verifies in linear time. */
    volatile u32 *pos = &r->cwd_len;
    *pos = off;
    for (i = 0; i < PATH_MAX_DEPTH; i++) {
        if (dentry == root_dentry && vfsmnt == root_mnt)
            break;
        void *mnt_root = PTR_MEMBER(vfsmnt, vfsmount, mnt_root);
        if (dentry == mnt_root) {
            void *parent_mnt = PTR_MEMBER(mnt, mount, mnt_parent);
            if (parent_mnt == mnt)   /* the global root */
                break;
            dentry = PTR_MEMBER(mnt, mount, mnt_mountpoint);
            mnt = parent_mnt;
            vfsmnt = mnt + OFF_mount__mnt;
            continue;
        }
        void *parent = PTR_MEMBER(dentry, dentry, d_parent);
        if (parent == dentry)
            break;
        u32 at = *pos;
        if (at > DATA_MASK + 1 - NAME_MAX_LEN) {
            r->flags |= FLAG_ERROR_PATH;
            break;
        }
        void *name = PTR_MEMBER(dentry, dentry, d_name_name);
        int n = bpf_probe_read_kernel_str(r->data + (at & DATA_MASK), NAME_MAX_LEN, name);
        if (n <= 0) {
            r->flags |= FLAG_ERROR_CWD;
            break;
        }
        *pos = at + n;
        dentry = parent;
    }
    if (i == PATH_MAX_DEPTH)
        r->flags |= FLAG_ERROR_PATH;
    u32 len = *pos - off;
    if (len == 0)
        r->flags |= FLAG_ROOT_CWD;
    return len;
}

/* Everything but the filename: ids, creds, namespaces, cgroup, argv, cwd. */
static __always_inline void fill_task_record(struct task_record *r, void *task)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    r->pid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    void *parent = PTR_MEMBER(task, task_struct, real_parent);
    READ_MEMBER(r->ppid, parent, task_struct, tgid);
#ifdef OFF_task_struct__loginuid
    READ_MEMBER(r->auid, task, task_struct, loginuid);
#else
    r->auid = 0xffffffff;
#endif
    r->cgroup_id = read_cgroup_id(task);
    read_creds(r, task);
    read_namespaces(r, task);
    read_pid_ns(r, task);
    r->args_len = read_args(r, task);
}

/* Bytes of a record to send: the fixed part and the used data. */
static __always_inline u32 task_record_size(struct task_record *r, u32 data_len)
{
    /* data_len never exceeds DATA_MASK + 1; the mask proves it to the verifier */
    u32 size = (offsetof(struct task_record, data) + data_len) & RECORD_MASK;
    r->h.size = size;
    return size;
}

#endif
