/* Shared definitions for tetrad's BPF programs.
 *
 * The kernel headers BCC compiles against do not describe the running kernel
 * (on our machines they are Debian's 6.1 headers under a 6.18 kernel), so no
 * program here ever dereferences a kernel struct through a header type.  Every
 * member offset comes from the kernel's BTF, resolved in Python
 * (tetrad/offsets.py) and passed in as an OFF_<struct>__<member> macro.
 */
#ifndef TETRAD_COMMON_H
#define TETRAD_COMMON_H

/* Read a value of the size of `dst` at `base + offset of struct.member`. */
#define READ_MEMBER(dst, base, st, member) \
    bpf_probe_read_kernel(&(dst), sizeof(dst), (const void *)(base) + OFF_##st##__##member)

/* Follow a pointer member: returns the pointer stored in base->member. */
static __always_inline void *read_ptr(const void *addr)
{
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), addr);
    return p;
}
#define PTR_MEMBER(base, st, member) read_ptr((const void *)(base) + OFF_##st##__##member)

/* Record types on the ring buffer; tetrad/sensors/records.py mirrors them. */
enum record_type {
    RECORD_EXEC = 1,
    RECORD_EXIT = 2,
    RECORD_CLONE = 3,
    RECORD_SELFTEST = 4,
};

/* Flags shared with userspace (tetrad/process/flags.py). */
#define FLAG_EXECVE          (1u << 0)
#define FLAG_PROCFS          (1u << 1)
#define FLAG_TRUNC_FILENAME  (1u << 2)
#define FLAG_TRUNC_ARGS      (1u << 3)
#define FLAG_ERROR_FILENAME  (1u << 5)
#define FLAG_ERROR_ARGS      (1u << 6)
#define FLAG_ROOT_CWD        (1u << 8)
#define FLAG_ERROR_CWD       (1u << 9)
#define FLAG_CLONE           (1u << 10)
#define FLAG_ERROR_PATH      (1u << 16)   /* cwd deeper than PATH_MAX_DEPTH */

struct record_header {
    u8  type;
    u8  pad[3];
    u32 size;       /* bytes of the whole record */
    u64 ktime;      /* bpf_ktime_get_ns() when it happened */
};

/* BCC rewrites map accesses (`events.ringbuf_output`, `m.lookup`) only in
 * the main source file, so each program file declares its own ring buffer
 * `events` and loss counters `lost_records` (indexed by record_type), and
 * headers take what they need as arguments. */
#define LOST_SLOTS 8

#endif
