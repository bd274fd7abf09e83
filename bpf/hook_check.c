/* Hook check: one observation -- this process getting a new file descriptor -- through each
 * mechanism a function hook can be served by, plus a BPF LSM program that denies one file to
 * one process.  tests/test_kernel_hooks.py attaches what tetrad/backends.py chooses and checks
 * that it fires, or that a refused backend really cannot attach; in the kernel lane's guest
 * (Debian's 6.1 kernel) that exercises genuine kprobes, kretprobes, fentry/fexit and BPF LSM.
 *
 *   entry:  fd_install(fd, file)              kprobe / fentry  -> the fd
 *   return: get_unused_fd_flags(flags) -> fd  kretprobe / fexit -> the fd
 *   LSM:    file_open(file)                   -EPERM for inode target[1] opened by tgid target[0]
 *
 * Nothing here is attached at load time: userspace attaches only the chosen backends.
 * Struct members come from BTF (OFF_* macros), as everywhere in bpf/.
 */
#include <uapi/linux/ptrace.h>

#include "common.h"

enum hook_backend {
    HOOK_KPROBE = 1,
    HOOK_KRETPROBE = 2,
    HOOK_FENTRY = 3,
    HOOK_FEXIT = 4,
    HOOK_LSM_DENY = 5,
};

struct hook_event {
    u32 backend;   /* enum hook_backend */
    u32 tgid;
    u64 value;     /* the fd, or the denied inode number */
};

BPF_RINGBUF_OUTPUT(events, 8);
/* [0]: the tgid whose calls are reported, [1]: the inode file_open denies to it */
BPF_ARRAY(target, u64, 2);

static __always_inline u32 watched_tgid(void)
{
    int key = 0;
    u64 *tgid = target.lookup(&key);
    u32 current = bpf_get_current_pid_tgid() >> 32;
    return tgid && *tgid == current ? current : 0;
}

static __always_inline void emit(u32 backend, u32 tgid, u64 value)
{
    struct hook_event e = {.backend = backend, .tgid = tgid, .value = value};
    events.ringbuf_output(&e, sizeof(e), 0);
}

int on_fd_install(struct pt_regs *ctx)
{
    u32 tgid = watched_tgid();
    if (tgid)
        emit(HOOK_KPROBE, tgid, PT_REGS_PARM1(ctx));
    return 0;
}

int on_get_unused_fd_return(struct pt_regs *ctx)
{
    u32 tgid = watched_tgid();
    if (tgid)
        emit(HOOK_KRETPROBE, tgid, (u64)(int)PT_REGS_RC(ctx));
    return 0;
}

KFUNC_PROBE(fd_install, unsigned int fd, struct file *file)
{
    u32 tgid = watched_tgid();
    if (tgid)
        emit(HOOK_FENTRY, tgid, fd);
    return 0;
}

KRETFUNC_PROBE(get_unused_fd_flags, unsigned int flags, int ret)
{
    u32 tgid = watched_tgid();
    if (tgid)
        emit(HOOK_FEXIT, tgid, (u64)ret);
    return 0;
}

LSM_PROBE(file_open, struct file *file, int ret)
{
    if (ret)
        return ret;   /* an earlier LSM already decided */
    u32 tgid = watched_tgid();
    if (!tgid)
        return 0;
    int key = 1;
    u64 *deny = target.lookup(&key);
    void *inode = PTR_MEMBER(file, file, f_inode);
    u64 ino = 0;
    READ_MEMBER(ino, inode, inode, i_ino);
    if (!deny || !inode || ino != *deny)
        return 0;
    emit(HOOK_LSM_DENY, tgid, ino);
    return -1;   /* -EPERM */
}
