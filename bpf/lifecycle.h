/* Process lifecycle for programs that keep per-process state in maps
 * (scopes, followChildren): which fork makes a new process and which exit
 * ends one.  No map calls here: BCC rewrites those only in the .c file. */
#ifndef TETRAD_LIFECYCLE_H
#define TETRAD_LIFECYCLE_H

#include "common.h"

/* sched_process_fork(parent, child): 1 when the child is a new process (a
 * new thread shares its process's state), with both tgids. */
static __always_inline int forked_process(struct bpf_raw_tracepoint_args *ctx, u32 *parent_tgid,
                                          u32 *child_tgid)
{
    void *parent = (void *)ctx->args[0];
    void *child = (void *)ctx->args[1];
    u32 pid = 0, tgid = 0, ppid = 0;
    READ_MEMBER(pid, child, task_struct, pid);
    READ_MEMBER(tgid, child, task_struct, tgid);
    READ_MEMBER(ppid, parent, task_struct, tgid);
    *parent_tgid = ppid;
    *child_tgid = tgid;
    return pid == tgid;
}

/* sched_process_exit(task): the tgid when the process's last thread exits
 * (signal->live has dropped to zero; its leader may have gone first), else 0. */
static __always_inline u32 ended_process(struct bpf_raw_tracepoint_args *ctx)
{
    void *task = (void *)ctx->args[0];
    void *signal = PTR_MEMBER(task, task_struct, signal);
    int live = 1;
    u32 tgid = 0;
    READ_MEMBER(live, signal, signal_struct, live);
    if (live != 0)
        return 0;
    READ_MEMBER(tgid, task, task_struct, tgid);
    return tgid;
}

#endif
