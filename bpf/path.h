/* Absolute paths of files and sockets' struct sock fields, read through
 * BTF-resolved offsets (OFF_* macros from tetrad/offsets.py). */
#ifndef TETRAD_PATH_H
#define TETRAD_PATH_H

#include "common.h"

#define PATH_DEPTH     32     /* components of a path walked */
#define PATH_NAME_MAX  256    /* one component, NUL included */

struct path_walk {
    void *names[PATH_DEPTH];  /* d_name.name of each component, leaf first */
    u32 n;                    /* kept in memory: an unknown scalar to the verifier, so the
                                 states of successive iterations match and prune */
};

/* A dentry's parent and name pointer, in one read where they lie close
 * together (they do in every kernel we know: d_parent, then d_name). */
#if OFF_dentry__d_name_name > OFF_dentry__d_parent && OFF_dentry__d_name_name - OFF_dentry__d_parent <= 24
#define DENTRY_SPAN_WORDS ((OFF_dentry__d_name_name - OFF_dentry__d_parent) / 8 + 1)
static __always_inline void *dentry_parent_name(void *dentry, void **name)
{
    void *span[DENTRY_SPAN_WORDS] = {};
    bpf_probe_read_kernel(span, sizeof(span), dentry + OFF_dentry__d_parent);
    *name = span[DENTRY_SPAN_WORDS - 1];
    return span[0];
}
#else
static __always_inline void *dentry_parent_name(void *dentry, void **name)
{
    *name = PTR_MEMBER(dentry, dentry, d_name_name);
    return PTR_MEMBER(dentry, dentry, d_parent);
}
#endif

/* A mount's parent, mount point and root dentry, in one read where they lie
 * together (they do in every kernel we know: mnt_parent, mnt_mountpoint,
 * then the vfsmount, whose mnt_root comes first). */
struct mount_link { void *parent; void *mountpoint; void *root; };
#if OFF_mount__mnt_mountpoint == OFF_mount__mnt_parent + 8 && \
    OFF_mount__mnt + OFF_vfsmount__mnt_root == OFF_mount__mnt_parent + 16
static __always_inline void read_mount(struct mount_link *m, void *mnt)
{
    bpf_probe_read_kernel(m, sizeof(*m), mnt + OFF_mount__mnt_parent);
}
#else
static __always_inline void read_mount(struct mount_link *m, void *mnt)
{
    m->parent = PTR_MEMBER(mnt, mount, mnt_parent);
    m->mountpoint = PTR_MEMBER(mnt, mount, mnt_mountpoint);
    m->root = PTR_MEMBER(mnt + OFF_mount__mnt, vfsmount, mnt_root);
}
#endif

/* Collect the components of (dentry, vfsmount) up to the global root, leaf
 * first, crossing mount points.  Returns how many; sets *truncated when the
 * path is deeper than PATH_DEPTH.  A file open costs this walk: one read per
 * component and one per mount. */
static __always_inline u32 collect_path(struct path_walk *w, void *dentry, void *vfsmnt, u32 *truncated)
{
    void *mnt = vfsmnt - OFF_mount__mnt;
    struct mount_link m = {};
    read_mount(&m, mnt);
    volatile u32 *n = &w->n;
    *n = 0;
    for (int i = 0; i < PATH_DEPTH + 8; i++) {
        if (dentry == m.root) {
            if (m.parent == mnt)   /* the global root */
                return *n;
            dentry = m.mountpoint;
            mnt = m.parent;
            read_mount(&m, mnt);
            continue;
        }
        void *name = 0;
        void *parent = dentry_parent_name(dentry, &name);
        if (parent == dentry || !parent)
            return *n;
        u32 at = *n;
        if (at >= PATH_DEPTH) {
            *truncated = 1;
            return at;
        }
        w->names[at & (PATH_DEPTH - 1)] = name;
        *n = at + 1;
        dentry = parent;
    }
    *truncated = 1;
    return *n;
}

/* Write "/a/b/c" for the collected components at buf[*pos...], root first,
 * never past `limit` (buf must have PATH_NAME_MAX + 1 bytes beyond it).
 * `*pos` lives in memory so that the verifier sees an unknown scalar and
 * successive iterations verify alike. */
static __always_inline void write_path(char *buf, volatile u32 *pos, u32 limit, struct path_walk *w, u32 n)
{
    u32 at = *pos;
    if (n == 0 && at < limit) {
        buf[at & 16383] = '/';
        *pos = at + 1;
        return;
    }
    volatile u32 *count = &w->n;
    for (u32 j = 0; j < PATH_DEPTH; j++) {
        u32 total = *count;
        if (j >= total)
            break;
        at = *pos;
        if (at > limit - PATH_NAME_MAX - 1)
            break;
        buf[at & 16383] = '/';
        int len = bpf_probe_read_kernel_str(buf + ((at + 1) & 16383), PATH_NAME_MAX,
                                            w->names[(total - 1 - j) & (PATH_DEPTH - 1)]);
        /* len counts the NUL, which the next '/' overwrites; an error (< 0)
         * moves *pos past `limit` and ends the walk */
        *pos = at + len;
    }
}

#endif
