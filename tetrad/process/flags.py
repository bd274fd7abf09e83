"""Process flags, as bit values shared with bpf/common.h and as the words
Tetragon prints in `process.flags` (in Tetragon's order)."""

EXECVE = 1 << 0
PROCFS = 1 << 1
TRUNC_FILENAME = 1 << 2
TRUNC_ARGS = 1 << 3
MISS = 1 << 4
ERROR_FILENAME = 1 << 5
ERROR_ARGS = 1 << 6
NO_CWD = 1 << 7
ROOT_CWD = 1 << 8
ERROR_CWD = 1 << 9
CLONE = 1 << 10
ERROR_PATH = 1 << 16

_ORDERED = (
    (EXECVE, "execve"),
    (PROCFS, "procFS"),
    (TRUNC_FILENAME, "truncFilename"),
    (TRUNC_ARGS, "truncArgs"),
    (MISS, "miss"),
    (ERROR_FILENAME, "errorFilename"),
    (ERROR_ARGS, "errorArgs"),
    (NO_CWD, "nocwd"),
    (ROOT_CWD, "rootcwd"),
    (ERROR_CWD, "errorCWD"),
    (CLONE, "clone"),
    (ERROR_PATH, "errorPathResolutionCwd"),
)


def to_words(flags: int) -> str:
    return " ".join(word for bit, word in _ORDERED if flags & bit)
