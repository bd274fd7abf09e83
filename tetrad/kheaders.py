"""Where BCC's kernel headers come from.

BCC compiles every program with clang against kernel headers, even though tetrad never uses
them for struct layouts (offsets come from BTF).  Headers only have to exist and be coherent.
On a distro kernel, ``/lib/modules/<release>/build`` points at matching headers.  On kernels
without them (custom builds, CONFIG_IKHEADERS off), any installed distro headers are enough.

BCC 0.26 (src/cc/frontends/clang/loader.cc) looks in three places:
  * ``BCC_KERNEL_SOURCE``: ONE tree holding both ``include/linux/kconfig.h`` and the generated
    headers.  Debian splits these between ``linux-headers-<ver>-<flavour>`` (generated headers)
    and ``linux-headers-<ver>-common`` (sources), so neither directory works alone.  Both
    were tried here and each fails to compile.
  * ``/lib/modules/<release>/build`` plus ``source``: BCC's split mode.  It is the only way to
    use Debian's layout, so for split trees we create these two symlinks (this needs root).
  * ``/sys/kernel/kheaders.tar.xz`` (CONFIG_IKHEADERS), which BCC extracts itself.
"""

import glob
import os
import platform
import re

__all__ = ["KernelHeadersError", "ensure"]

KHEADERS_TAR = "/sys/kernel/kheaders.tar.xz"

# uname -m -> Debian kernel flavour suffix of linux-headers-* directories.
_FLAVOURS = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "i686": "686",
    "i386": "686",
    "ppc64le": "powerpc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


class KernelHeadersError(RuntimeError):
    """No kernel headers that BCC could compile against."""


def _source_ok(tree: str) -> bool:
    return os.path.isfile(os.path.join(tree, "include/linux/kconfig.h"))


def _generated_ok(tree: str) -> bool:
    return os.path.isfile(os.path.join(tree, "include/generated/autoconf.h"))


def _tree_release(tree: str) -> str | None:
    """The kernel release a header tree was generated for (its UTS_RELEASE)."""
    try:
        with open(os.path.join(tree, "include/generated/utsrelease.h")) as f:
            m = re.search(r'UTS_RELEASE\s+"([^"]+)"', f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def _describe(tree: str, release: str, how: str) -> str:
    found = _tree_release(tree)
    if found == release:
        return f"matching headers: {how}"
    return f"fallback headers (not the running kernel's): {how} [{found or 'unknown version'}]"


def _split_source(tree: str) -> str | None:
    """The source tree that a Debian-style generated tree pulls in via its Makefile."""
    try:
        with open(os.path.join(tree, "Makefile")) as f:
            m = re.search(r"^include\s+(\S+)/Makefile\s*$", f.read(), re.M)
    except OSError:
        return None
    if m:
        src = m.group(1)
        if not os.path.isabs(src):
            src = os.path.join(tree, src)
        if _source_ok(src):
            return os.path.normpath(src)
    return None


def _version_key(path: str) -> tuple:
    name = os.path.basename(path)
    # Newest version first; for equal versions prefer the plain flavour (shorter name).
    return tuple(int(n) for n in re.findall(r"\d+", name)), -len(name)


def _candidates(usr_src: str, release: str, flavour: str) -> list[str]:
    exact = os.path.join(usr_src, f"linux-headers-{release}")
    found = sorted(glob.glob(os.path.join(usr_src, f"linux-headers-*-{flavour}")),
                   key=_version_key, reverse=True)
    return ([exact] if os.path.isdir(exact) else []) + [p for p in found if p != exact]


def _link(path: str, target: str) -> None:
    """Point symlink `path` at `target`; stale symlinks are replaced, real files never touched."""
    if os.path.islink(path):
        if os.readlink(path) == target:
            return
        os.unlink(path)
    elif os.path.exists(path):
        raise KernelHeadersError(f"{path} exists and is not a symlink; refusing to replace it")
    os.symlink(target, path)


def ensure(modules_dir: str = "/lib/modules", usr_src: str = "/usr/src",
           release: str | None = None, machine: str | None = None) -> str:
    """Make sure BCC can find kernel headers; return a description of the source used.

    Call before any BCC compile.  May set ``os.environ["BCC_KERNEL_SOURCE"]`` or create the
    ``<modules_dir>/<release>/build`` and ``source`` symlinks.  The parameters exist so that
    tests can point it at a scratch tree; BCC itself always reads /lib/modules.
    """
    release = release or os.uname().release
    flavour = _FLAVOURS.get(machine or platform.machine(), machine or platform.machine())
    kdir = os.path.join(modules_dir, release)
    build, source = os.path.join(kdir, "build"), os.path.join(kdir, "source")

    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        if _source_ok(env) and _generated_ok(env):
            return _describe(env, release, f"BCC_KERNEL_SOURCE={env}")
        raise KernelHeadersError(
            f"BCC_KERNEL_SOURCE={env} is not a complete header tree (BCC needs "
            "include/linux/kconfig.h and include/generated/autoconf.h in that one directory)")

    # What BCC would use on its own: build+source (split) or build alone.
    if os.path.isdir(build) and os.path.isdir(source):
        if _source_ok(source) and _generated_ok(build):
            return _describe(build, release, f"{os.path.realpath(build)} via {build}")
    elif _source_ok(build) and _generated_ok(build):
        return _describe(build, release, f"{os.path.realpath(build)} via {build}")

    if os.path.isfile(KHEADERS_TAR):
        return f"matching headers: in-kernel {KHEADERS_TAR} (CONFIG_IKHEADERS)"

    for tree in _candidates(usr_src, release, flavour):
        if not _generated_ok(tree):
            continue
        if _source_ok(tree):
            os.environ["BCC_KERNEL_SOURCE"] = tree
            return _describe(tree, release, f"BCC_KERNEL_SOURCE={tree}")
        src = _split_source(tree)
        if src is None:
            continue
        try:
            os.makedirs(kdir, exist_ok=True)
            _link(build, tree)
            _link(source, src)
        except OSError as e:
            raise KernelHeadersError(
                f"found headers {tree} + {src}, but BCC can only use this split layout through "
                f"{build} and {source} symlinks, which could not be created ({e}); run as root "
                f"or create them: ln -s {tree} {build}; ln -s {src} {source}") from e
        return _describe(tree, release, f"{tree} + {src} (symlinked as {build} and {source})")

    raise KernelHeadersError(
        f"no kernel headers for BCC: {build} is missing, CONFIG_IKHEADERS is off and "
        f"{usr_src} has no linux-headers-*-{flavour}; install them with "
        f"`apt-get install linux-headers-{flavour}` (or linux-headers-{release} if it exists)")
