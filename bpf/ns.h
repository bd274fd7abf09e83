/* The namespaces of a task, as the inode numbers /proc/PID/ns/ shows, for
 * matchNamespaces (bpf/policy.c and the cgroup enforcement programs).
 * `which` is tetrad's index (tetrad/policy/program.py NAMESPACE_INDEX):
 * 0 uts, 1 ipc, 2 mnt, 3 pid, 4 pid_for_children, 5 net, 6 time,
 * 7 time_for_children, 8 cgroup, 9 user.  Offsets come from BTF (common.h). */
#ifndef TETRAD_NS_H
#define TETRAD_NS_H

#include "common.h"

static __always_inline u32 read_ns(void *task, u32 which)
{
    if (which == 9) {   /* user */
        void *cred = PTR_MEMBER(task, task_struct, cred);
        void *ns = PTR_MEMBER(cred, cred, user_ns);
        u32 inum = 0;
        READ_MEMBER(inum, ns, user_namespace, ns_inum);
        return inum;
    }
    if (which == 3) {   /* pid: the task's own */
        void *tpid = PTR_MEMBER(task, task_struct, thread_pid);
        u32 level = 0;
        READ_MEMBER(level, tpid, pid, level);
        if (level > 31)
            return 0;
        void *ns = PTR_MEMBER(tpid + OFF_pid__numbers + level * SIZEOF_upid, upid, ns);
        u32 inum = 0;
        READ_MEMBER(inum, ns, pid_namespace, ns_inum);
        return inum;
    }
    void *nsp = PTR_MEMBER(task, task_struct, nsproxy);
    void *ns = 0;
    u32 off = 0;
    switch (which) {
    case 0: ns = PTR_MEMBER(nsp, nsproxy, uts_ns); off = OFF_uts_namespace__ns_inum; break;
    case 1: ns = PTR_MEMBER(nsp, nsproxy, ipc_ns); off = OFF_ipc_namespace__ns_inum; break;
    case 2: ns = PTR_MEMBER(nsp, nsproxy, mnt_ns); off = OFF_mnt_namespace__ns_inum; break;
    case 4: ns = PTR_MEMBER(nsp, nsproxy, pid_ns_for_children); off = OFF_pid_namespace__ns_inum; break;
    case 5: ns = PTR_MEMBER(nsp, nsproxy, net_ns); off = OFF_net__ns_inum; break;
#ifdef OFF_nsproxy__time_ns
    case 6: ns = PTR_MEMBER(nsp, nsproxy, time_ns); off = OFF_time_namespace__ns_inum; break;
    case 7: ns = PTR_MEMBER(nsp, nsproxy, time_ns_for_children); off = OFF_time_namespace__ns_inum; break;
#endif
    case 8: ns = PTR_MEMBER(nsp, nsproxy, cgroup_ns); off = OFF_cgroup_namespace__ns_inum; break;
    }
    u32 inum = 0;
    if (ns)
        bpf_probe_read_kernel(&inum, 4, ns + off);
    return inum;
}

/* matchNamespaces of cgroup enforcement rules (bpf/enforce_*.c) is decided
 * for all rules at once, with bit operations on rule bitmasks: the verifier's
 * walk of their rule loops stays as it was.  Per namespace kind, `ns_kinds`
 * says which rules have an entry on it (need) and which of those are NotIn
 * (neg); `ns_scope` maps (kind, inode) to the rules listing that namespace. */
#define NS_KINDS 10

struct ns_key {
    u32 kind;
    u32 inum;
};

struct ns_kind_rules {
    u64 need;
    u64 neg;
};

#endif /* TETRAD_NS_H */
