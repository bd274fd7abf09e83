"""BPF LSM equivalents of Override on kernel functions and syscalls.

Override on a kprobe (`sys_openat`, `security_file_open`, ...) asks for the call
to fail with argError and never take effect.  bpf_override_return does that on
kernels built with error injection, which Debian's are not.  Where BPF LSM
loads, the same selectors can run in a BPF LSM program on the hook the kernel
asks before doing what the function does, and the hook's error is the call's
error: tetrad/backends.py `choose_override()` decides which serves a hook.

Each equivalent supplies one argument of the function, the one its selectors
compare (a path, or execve's filename), read from the LSM hook's own arguments
by bpf/policy.c (ADAPT_*); `difference` says where its meaning is not the
function's.  The event stays the policy's own hook (process_kprobe, its
function_name, KPROBE_ACTION_OVERRIDE); `tetrad tracingpolicy list` names the
LSM hooks that enforce it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .hooks import syscall_name

# bpf/policy.c ADAPT_*: how an LSM hook's arguments become the function's argument
ADAPT_NONE = 0
ADAPT_FILE = 1            # (struct file *) -> its path
ADAPT_DIR_DENTRY = 2      # (const struct path *dir, struct dentry *) -> the dentry's path
ADAPT_BPRM_FILENAME = 3   # (struct linux_binprm *) -> bprm->filename
ADAPT_OPENED_FILE = 4     # ADAPT_FILE, skipping the kernel's open of a program to execute


@dataclass(frozen=True)
class LsmEquivalent:
    hooks: tuple[tuple[str, int], ...]   # (BPF LSM hook, ADAPT_*)
    arg: int                             # the function's argument index supplied
    arg_class: str                       # what bpf/policy.c reads: "path" or "string"
    difference: str                      # where the meaning differs from the function's

    @property
    def targets(self) -> str:
        return ", ".join(f"lsm:{h}" for h, _ in self.hooks)


_RESOLVED = ("the path is the file the kernel resolved (absolute, symlinks followed), however "
             "the caller named it (relative to its cwd or a dirfd, through a symlink or "
             "/proc/self/cwd), not the string as passed: a Prefix or Equal on an absolute "
             "path holds for every name of that file, and a relative value never matches")
_OPEN = (_RESOLVED + "; the LSM hooks cannot tell which call opens, so an Override on any of "
         "open, openat, openat2, creat refuses every open of a matching file by them all (and "
         "by io_uring), but not the kernel's open of a program to execute (execve has its own "
         "equivalent); an open that finds no file and does not create one is never seen (it "
         "fails with ENOENT anyway); creating a file is refused before it exists "
         "(security_path_mknod), opening an existing one at file_open; a regular file "
         "made by mknod(2) at a matching path is refused too (the kernel asks the same hook)")


def _open(arg: int) -> LsmEquivalent:
    return LsmEquivalent((("path_mknod", ADAPT_DIR_DENTRY), ("file_open", ADAPT_OPENED_FILE)), arg,
                         "path", _OPEN)


def _unlink(arg: int) -> LsmEquivalent:
    return LsmEquivalent((("path_unlink", ADAPT_DIR_DENTRY),), arg, "path",
                         "the path is the entry removed, its directory resolved (absolute, "
                         "symlinks followed), however the caller named it; unlinkat with "
                         "AT_REMOVEDIR removes a directory through security_path_rmdir, which "
                         "this equivalent does not hook")


def _exec(arg: int) -> LsmEquivalent:
    return LsmEquivalent((("bprm_creds_for_exec", ADAPT_BPRM_FILENAME),), arg, "string",
                         "the filename as execve got it (bprm->filename, once per execve); "
                         "execveat with a directory fd and a relative path gives "
                         "/dev/fd/<fd>/<path>, with AT_EMPTY_PATH /dev/fd/<fd>")


# function (syscalls as sys_<name>) -> its equivalent
EQUIVALENTS = {
    "sys_open": _open(0),
    "sys_creat": _open(0),
    "sys_openat": _open(1),
    "sys_openat2": _open(1),
    "security_file_open": LsmEquivalent((("file_open", ADAPT_FILE),), 0, "path",
                                        "none: file_open is security_file_open's BPF LSM hook"),
    "sys_unlink": _unlink(0),
    "sys_unlinkat": _unlink(1),
    "sys_execve": _exec(0),
    "sys_execveat": _exec(1),
}

PATH_TYPES = ("string", "filename", "file", "path")


def function_key(name: str, syscall: bool) -> str:
    """The key of EQUIVALENTS for a kprobe's call ("__x64_sys_openat" + syscall -> "sys_openat")."""
    return "sys_" + syscall_name(name) if syscall else name


def unsupplied(hook, eq: LsmEquivalent) -> list[str]:
    """What of `hook` its LSM equivalent cannot evaluate with the same meaning."""
    where = hook.path
    out = []
    for j, arg in enumerate(hook.args):
        if arg.index != eq.arg:
            out.append(f"{where}.args[{j}]: index {arg.index} (the LSM equivalent supplies only "
                       f"argument {eq.arg})")
        elif arg.type not in PATH_TYPES or arg.return_copy or arg.size_arg_index:
            out.append(f"{where}.args[{j}]: type {arg.type!r} (the LSM equivalent supplies "
                       f"argument {eq.arg} as a {eq.arg_class})")
    if hook.return_arg is not None:
        out.append(f"{where}.returnArg (an LSM hook runs before the call returns)")
    for s, sel in enumerate(hook.selectors):
        if sel.get("matchReturnArgs"):
            out.append(f"{where}.selectors[{s}].matchReturnArgs (an LSM hook runs before the call returns)")
        for m, match in enumerate(sel.get("matchArgs") or ()):
            if match.get("index", 0) != eq.arg:
                out.append(f"{where}.selectors[{s}].matchArgs[{m}]: index {match.get('index', 0)} "
                           f"(the LSM equivalent supplies only argument {eq.arg})")
    return out
