#!/usr/bin/env python3
"""The kernel lane: tetrad's kernel-dependent tests on Debian's distro kernel, under qemu.

    scripts/kernel-lane/run.py [--cache-dir DIR] [--rebuild] [--timeout S]

1. The guest image (build-image.sh: Debian bookworm, linux-image-cloud-amd64 with its exact
   headers, BCC, tetrad's Debian dependencies) is cached in DIR/<key>, where the key hashes
   everything the image is made from (build-image.sh, guest-init, the package list).  Absent
   or --rebuild: built from scratch, under a lock so that concurrent lanes build it once.
2. This checkout (tracked and untracked-but-not-ignored files, uncommitted changes included)
   goes to the guest as a raw tar disk; the root disk is used with snapshot=on, so the cached
   image is never written and several lanes can boot it at once.
3. qemu boots with software emulation (KVM is not usable on our machines); the guest runs
   scripts/kernel-lane/guest-run.sh with the selection in tests.txt and writes a results tar
   to a third disk.  The serial console is kept as console.log.
4. Exit status 0 only if the guest booted, pytest ran, nothing failed, errored or skipped.
   Results land in .kernel-lane/ in the checkout.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Other test set-ups of the project cache in /var/cache/tetrad-test too: the lane keeps to
# its own subdirectory, lock included.
DEFAULT_CACHE = "/var/cache/tetrad-test/kernel-lane"
IMAGE_FILES = ("rootfs.img", "vmlinuz", "initrd.img", "manifest")
RESULTS_DISK_MB = 64
PREFIX = "TETRAD-LANE: "


def say(msg: str) -> None:
    print(f"kernel-lane: {msg}", flush=True)


def image_key() -> str:
    """Hash of every input of build-image.sh."""
    h = hashlib.sha256()
    for name in ("build-image.sh", "guest-init"):
        h.update((HERE / name).read_bytes())
    packages = subprocess.run(["sh", str(REPO / "scripts/bootstrap.sh"), "--debian-packages"],
                              check=True, capture_output=True, text=True).stdout
    h.update(packages.encode())
    h.update(os.environ.get("KERNEL_LANE_MIRROR", "").encode())
    return h.hexdigest()[:16]


def ensure_image(cache: Path, rebuild: bool) -> tuple[Path, float]:
    """The cached image directory; built (seconds > 0) when missing."""
    key = image_key()
    image = cache / key
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another lane may be building the same image
        if rebuild and image.exists():
            shutil.rmtree(image)
        if all((image / f).exists() for f in IMAGE_FILES):
            return image, 0.0
        say(f"building guest image {key} in {cache} (cold cache)")
        started = time.monotonic()
        partial = cache / f".{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(["sh", str(HERE / "build-image.sh"), str(partial)], check=True)
        partial.rename(image)
        # Images of older inputs are no use any more (a running lane keeps its open file).
        for old in cache.iterdir():
            if old.is_dir() and old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        return image, time.monotonic() - started


def project_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], check=True, capture_output=True).stdout
    return sorted({p for p in out.decode().split("\0") if p and (REPO / p).is_file()})


def write_project_disk(path: Path) -> int:
    files = project_files()
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in files:
            tar.add(REPO / name, arcname=name, recursive=False)
    size = path.stat().st_size
    with open(path, "ab") as f:   # a block device is a whole number of sectors
        f.write(b"\0" * (-size % 512 + 512 * 16))
    return len(files)


def qemu_command(image: Path, project_disk: Path, results_disk: Path) -> list[str]:
    return [
        # One vCPU: with two, the emulated kernel's live code patching (int3-based
        # text_poke, as attaching a tracepoint or kprobe does) can wedge both vCPUs
        # in the int3 handler under multi-threaded TCG (seen: soft lockups).
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", "2048", "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", "root=/dev/vda rw console=ttyS0 panic=-1 init=/sbin/tetrad-lane-init",
        "-drive", f"file={image / 'rootfs.img'},format=raw,if=virtio,snapshot=on",
        "-drive", f"file={project_disk},format=raw,if=virtio,readonly=on",
        "-drive", f"file={results_disk},format=raw,if=virtio",
    ]


# A guest kernel that prints these does not recover: fail at once, not at the timeout.
LOCKUP_SIGNS = ("BUG: soft lockup", "self-detected stall on CPU", "Kernel panic")


def boot(cmd: list[str], console_log: Path, timeout: float,
         boot_timeout: float) -> tuple[int | None, list[str]]:
    """Run qemu to completion; echo the lane's console lines.  qemu is killed at `timeout`,
    or at `boot_timeout` if the guest has not reached the lane by then (a guest stuck in
    the initramfs' rescue shell would otherwise wait for the full timeout)."""
    lines = []
    started = time.monotonic()
    deadline = started + timeout
    booted = False
    with open(console_log, "w", errors="replace") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        os.set_blocking(proc.stdout.fileno(), False)
        buf = b""
        try:
            while True:
                chunk = proc.stdout.read()
                if chunk:
                    buf += chunk
                    *complete, buf = buf.split(b"\n")
                    for raw in complete:
                        line = raw.decode(errors="replace").rstrip("\r")
                        log.write(line + "\n")
                        lines.append(line)
                        if line.startswith(PREFIX):
                            print("  guest: " + line[len(PREFIX):], flush=True)
                            booted = True
                        elif any(sign in line for sign in LOCKUP_SIGNS):
                            say(f"the guest kernel reports a lockup: {line.strip()} "
                                "(console.log has the traces); stopping qemu now")
                            deadline = 0
                    log.flush()
                elif proc.poll() is not None:
                    break
                else:
                    time.sleep(0.2)
                if not booted and time.monotonic() > started + boot_timeout:
                    deadline = 0   # fall through to the kill below
                if time.monotonic() > deadline:
                    say(f"TIMEOUT after {time.monotonic() - started:.0f}s: stopping qemu "
                        f"(pid {proc.pid})")
                    proc.kill()
                    proc.wait()
                    return None, lines
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, lines


def read_results(results_disk: Path, dest: Path) -> bool:
    with open(results_disk, "rb") as f:
        data = f.read()
    if not data.strip(b"\0"):
        return False
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        if hasattr(tarfile, "data_filter"):   # Python >= 3.11.4: refuse odd members
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return True


def junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in counts:
            counts[k] += int(s.get(k, 0))
    return counts


def selection(path: Path = HERE / "tests.txt") -> tuple[list[str], dict[str, str]]:
    """(pytest paths, {deselected test id: reason}) as guest-run.sh reads tests.txt."""
    paths, deselected = [], {}
    for line in path.read_text().splitlines():
        entry, _, reason = line.strip().partition(" ")
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("-"):
            deselected[entry[1:]] = reason.strip()
        else:
            paths.append(entry)
    return paths, deselected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", default=os.environ.get("KERNEL_LANE_CACHE", DEFAULT_CACHE))
    ap.add_argument("--rebuild", action="store_true", help="rebuild the guest image")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for boot + tests")
    ap.add_argument("--boot-timeout", type=float, default=180,
                    help="seconds for the guest to reach the lane")
    ap.add_argument("--out", default=str(REPO / ".kernel-lane"), help="results directory")
    args = ap.parse_args()
    # Stopped from outside (CI timeout, Ctrl-C): unwind, so that boot() stops qemu.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.monotonic()
    image, build_s = ensure_image(Path(args.cache_dir), args.rebuild)
    say(f"image {image} ({(image / 'manifest').read_text().splitlines()[0]})"
        + (f", built in {build_s:.0f}s" if build_s else ", cached"))

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    problems = []
    with tempfile.TemporaryDirectory(prefix="tetrad-lane-") as tmp:
        project_disk, results_disk = Path(tmp) / "project.tar", Path(tmp) / "results.img"
        n = write_project_disk(project_disk)
        with open(results_disk, "wb") as f:
            f.truncate(RESULTS_DISK_MB << 20)
        say(f"booting Debian's kernel under qemu (TCG) with {n} project files")
        boot_started = time.monotonic()
        rc, lines = boot(qemu_command(image, project_disk, results_disk),
                         out / "console.log", args.timeout, args.boot_timeout)
        boot_s = time.monotonic() - boot_started
        if rc is None:
            problems.append("qemu was stopped at a timeout (see console.log)")
        elif rc != 0:
            problems.append(f"qemu exited with {rc}")
        if not any(line.startswith(PREFIX + "booted") for line in lines):
            problems.append("guest never reached the lane (boot failed: see console.log)")
        got = read_results(results_disk, out / "results")

    if not got:
        problems.append("the guest wrote no results")
    else:
        res = out / "results"
        rc_file = res / "pytest.rc"
        pytest_rc = int(rc_file.read_text()) if rc_file.exists() else None
        if pytest_rc != 0:
            problems.append(f"pytest in the guest exited with {pytest_rc}")
        if (res / "junit.xml").exists():
            c = junit_counts(res / "junit.xml")
            say("guest tests: {tests} run, {failures} failed, {errors} errors, {skipped} skipped"
                .format(**c))
            if c["tests"] == 0:
                problems.append("no test ran in the guest")
            if c["skipped"]:
                problems.append(f"{c['skipped']} test(s) skipped in the guest (the lane skips nothing)")
        else:
            problems.append("no junit.xml from the guest")
    for test, reason in selection()[1].items():
        say(f"deselected on purpose: {test}: {reason}")
    say(f"timings: image {'build ' + format(build_s, '.0f') + 's' if build_s else 'cached'}, "
        f"boot+tests {boot_s:.0f}s, lane total {time.monotonic() - started:.0f}s; logs in {out}")
    if problems:
        for p in problems:
            say("FAILED: " + p)
        log = out / "results" / "pytest.log"
        if log.exists():
            print(log.read_text()[-6000:])
        return 1
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
