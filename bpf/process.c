/* Process lifecycle sensor: exec, clone (fork without a new thread) and exit
 * of whole processes, from raw tracepoints only, so it needs neither kprobes
 * nor matching kernel headers.  See bpf/task.h for what each record holds. */
#include "task.h"

/* One ring buffer carries every record; RB_PAGES comes from --rb-size. */
BPF_RINGBUF_OUTPUT(events, RB_PAGES);
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 64
#endif
BPF_PERCPU_ARRAY(since_wakeup, u32, 1);
/* Records the ring buffer had no room for, by record type. */
BPF_PERCPU_ARRAY(lost_records, u64, LOST_SLOTS);

/* One scratch record per CPU: records are too big for the BPF stack. */
BPF_PERCPU_ARRAY(scratch, struct task_record, 1);

/* tgid whose getpgid() call runs the start-up self-test; 0 = off. */
BPF_ARRAY(selftest_tgid, u32, 1);

static __always_inline void submit(struct task_record *r, u32 data_len)
{
    u32 size = task_record_size(r, data_len);
    /* Wake the consumer once per WAKEUP_EVERY records of a CPU, not per
     * record: each wakeup costs the daemon an epoll round trip.  The daemon
     * polls on a short timeout, which bounds the delay of a lone event. */
    u32 zero = 0;
    u64 flags = BPF_RB_NO_WAKEUP;
    u32 *since = since_wakeup.lookup(&zero);
    if (since && ++*since >= WAKEUP_EVERY) {
        *since = 0;
        flags = BPF_RB_FORCE_WAKEUP;
    }
    if (events.ringbuf_output(r, size, flags) != 0) {
        u32 type = r->h.type;
        u64 *n = lost_records.lookup(&type);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

static __always_inline struct task_record *scratch_record(u8 type)
{
    u32 zero = 0;
    struct task_record *r = scratch.lookup(&zero);
    if (!r)
        return 0;
    __builtin_memset(r, 0, offsetof(struct task_record, data));
    r->h.type = type;
    r->h.ktime = bpf_ktime_get_ns();
    return r;
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    void *task = (void *)ctx->args[0];
    void *bprm = (void *)ctx->args[2];
    struct task_record *r = scratch_record(RECORD_EXEC);
    if (!r)
        return 0;
    r->flags = FLAG_EXECVE;
    fill_task_record(r, task);

    u32 off = r->args_len;
    void *filename = PTR_MEMBER(bprm, linux_binprm, filename);
    int n = bpf_probe_read_kernel_str(r->data + (off & DATA_MASK), FILENAME_MAX_LEN, filename);
    if (n <= 0) {
        r->flags |= FLAG_ERROR_FILENAME;
        n = 0;
    } else if (n == FILENAME_MAX_LEN) {
        r->flags |= FLAG_TRUNC_FILENAME;
    }
    r->filename_len = n;
    off += n;
    r->cwd_len = read_cwd(r, task, off);
    off += r->cwd_len;
    submit(r, off);
    return 0;
}

/* sched_process_fork(struct task_struct *parent, struct task_struct *child):
 * only new processes, not new threads. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    void *parent = (void *)ctx->args[0];
    void *child = (void *)ctx->args[1];
    u32 pid = 0, tgid = 0;
    READ_MEMBER(pid, child, task_struct, pid);
    READ_MEMBER(tgid, child, task_struct, tgid);
    if (pid != tgid || is_kernel_thread(child))   /* threads and kthreads are not processes */
        return 0;
    struct task_record *r = scratch_record(RECORD_CLONE);
    if (!r)
        return 0;
    r->flags = FLAG_CLONE;
    r->pid = tgid;
    r->tid = pid;
    READ_MEMBER(r->ppid, parent, task_struct, tgid);
    r->cgroup_id = read_cgroup_id(child);
    read_pid_ns(r, child);
    submit(r, 0);
    return 0;
}

/* sched_process_exit(struct task_struct *p): one record per process, when
 * its last thread exits (signal->live has dropped to zero). */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    void *task = (void *)ctx->args[0];
    void *signal = PTR_MEMBER(task, task_struct, signal);
    int live = 1;
    READ_MEMBER(live, signal, signal_struct, live);
    if (live != 0 || is_kernel_thread(task))
        return 0;
    struct task_record *r = scratch_record(RECORD_EXIT);
    if (!r)
        return 0;
    READ_MEMBER(r->pid, task, task_struct, tgid);
    READ_MEMBER(r->tid, task, task_struct, pid);
    READ_MEMBER(r->exit_code, task, task_struct, exit_code);
    submit(r, 0);
    return 0;
}

/* Start-up self-test: the daemon calls getpgid() and compares this record,
 * read with the same code as exec records, with what /proc says. */
TRACEPOINT_PROBE(syscalls, sys_enter_getpgid)
{
    u32 zero = 0;
    u32 *want = selftest_tgid.lookup(&zero);
    if (!want || *want == 0 || *want != (bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct task_record *r = scratch_record(RECORD_SELFTEST);
    if (!r)
        return 0;
    void *task = (void *)bpf_get_current_task();
    fill_task_record(r, task);
    u32 off = r->args_len;
    r->cwd_len = read_cwd(r, task, off);
    off += r->cwd_len;
    submit(r, off);
    return 0;
}
