"""Tests for tetrad.exporter, on real files (and a real tiny tmpfs for ENOSPC)."""

import gzip
import io
import json
import logging
import os
import stat
import subprocess
import threading
import time
from contextlib import suppress

import pytest

from tetrad import config as tetrad_config
from tetrad.exporter import (
    MultiExporter,
    RotatingFileExporter,
    StreamExporter,
    build_exporters,
)
from tetrad.journal import JournalExporter

MIB = 1024 * 1024


def event(n: int, pad: int = 60) -> str:
    return json.dumps({"n": n, "pad": "x" * pad}, separators=(",", ":"))


def backups(directory, stem="events", ext=".log"):
    """Backup file names in rotation order (the timestamp in the name sorts)."""
    return sorted(
        name
        for name in os.listdir(directory)
        if name.startswith(stem + "-") and (name.endswith(ext) or name.endswith(ext + ".gz"))
    )


def read_lines(path) -> list[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    assert data == b"" or data.endswith(b"\n"), f"{path} ends in a partial line"
    return data.decode().splitlines()


def read_all(directory, name="events.log") -> list[str]:
    """Every line, oldest first: the backups in order, then the current file."""
    lines = []
    for backup in backups(directory):
        lines += read_lines(directory / backup)
    if (directory / name).exists():
        lines += read_lines(directory / name)
    return lines


def numbers(lines) -> list[int]:
    return [json.loads(line)["n"] for line in lines]


@pytest.fixture
def umask():
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs, to run out of space for real."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, f"cannot mount a tmpfs (the tests run as root): {res.stderr.strip()}"
    yield mnt
    # Lazy, so that a failed test still holding the file cannot block teardown.
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def warnings(caplog, text):
    return [
        r for r in caplog.records if r.name == "tetrad.exporter" and text in r.getMessage()
    ]


# -- permissions -------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o077, 0o000])
@pytest.mark.parametrize("perm", [0o600, 0o640])
def test_modes_ignore_umask(tmp_path, umask, mask, perm):
    umask(mask)
    path = tmp_path / "a" / "b" / "events.log"
    exp = RotatingFileExporter(str(path), max_size_mb=0.001, perm=perm, compress=True)
    for n in range(100):
        exp.write(event(n))
    exp.close()

    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.stat().st_mode) == perm
    names = backups(path.parent)
    assert names and all(name.endswith(".gz") for name in names)
    for name in names:
        assert stat.S_IMODE((path.parent / name).stat().st_mode) == perm


def test_existing_file_mode_corrected_and_appended(tmp_path, umask):
    umask(0)
    path = tmp_path / "events.log"
    path.write_text(event(0) + "\n")
    path.chmod(0o666)
    with RotatingFileExporter(str(path), perm=0o600) as exp:
        exp.write(event(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert numbers(read_lines(path)) == [0, 1]


# -- size rotation -------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_size_rotation_is_exactly_once_and_ordered(tmp_path, compress):
    total = 200_000
    max_size_mb = 0.05
    exp = RotatingFileExporter(
        str(tmp_path / "events.log"), max_size_mb=max_size_mb, max_backups=0, compress=compress
    )
    for n in range(total):
        exp.write(event(n, pad=n % 50))
    exp.close()

    assert numbers(read_all(tmp_path)) == list(range(total))
    names = backups(tmp_path)
    stats = exp.stats()
    assert stats["rotations"] == len(names) > 100
    assert stats["lines_written"] == total
    assert stats["lines_lost"] == stats["write_errors"] == 0
    assert stats["bytes_written"] == sum(len(event(n, pad=n % 50)) + 1 for n in range(total))
    # Compression is complete once close() returns, and leaves nothing else.
    assert all(name.endswith(".gz") == compress for name in names)
    assert sorted(os.listdir(tmp_path)) == sorted(names + ["events.log"])
    limit = int(max_size_mb * MIB)
    for name in names:
        if compress:
            with gzip.open(tmp_path / name, "rb") as f:
                size = len(f.read())
        else:
            size = (tmp_path / name).stat().st_size
        assert 0 < size <= limit


@pytest.mark.parametrize("compress", [False, True])
def test_max_backups_keeps_newest(tmp_path, compress):
    total = 20_000
    exp = RotatingFileExporter(
        str(tmp_path / "events.log"), max_size_mb=0.01, max_backups=3, compress=compress
    )
    for n in range(total):
        exp.write(event(n))
    exp.close()

    assert exp.stats()["rotations"] > 10
    assert len(backups(tmp_path)) == 3
    kept = numbers(read_all(tmp_path))
    # The survivors are the newest lines, without gaps.
    assert kept == list(range(total - len(kept), total))


def test_oversized_line_written_whole_in_its_own_file(tmp_path):
    exp = RotatingFileExporter(str(tmp_path / "events.log"), max_size_mb=0.001, max_backups=0)
    big = event(1, pad=5000)
    exp.write(event(0))
    exp.write(big)
    exp.write(event(2))
    exp.close()

    names = backups(tmp_path)
    assert len(names) == 2
    assert numbers(read_lines(tmp_path / names[0])) == [0]
    assert read_lines(tmp_path / names[1]) == [big]
    assert numbers(read_lines(tmp_path / "events.log")) == [2]


def test_oversized_line_into_empty_file_needs_no_rotation(tmp_path):
    exp = RotatingFileExporter(str(tmp_path / "events.log"), max_size_mb=0.001)
    exp.write(event(0, pad=5000))
    exp.close()
    assert exp.stats()["rotations"] == 0
    assert numbers(read_lines(tmp_path / "events.log")) == [0]


def test_backup_names_strictly_increase(tmp_path):
    # A backup stamped in the future (the wall clock stepped back since) must
    # still sort before the ones we make now, and no name may repeat even
    # when many rotations happen within one millisecond.
    future = tmp_path / "events-2099-01-01T00-00-00.000.log"
    future.write_text(event(-1) + "\n")
    exp = RotatingFileExporter(str(tmp_path / "events.log"), max_size_mb=0.0001, max_backups=0)
    for n in range(200):
        exp.write(event(n))
    exp.close()

    names = backups(tmp_path)
    assert len(names) == exp.stats()["rotations"] + 1 == 200
    assert names[0] == future.name
    assert names[1] == "events-2099-01-01T00-00-00.001.log"
    assert numbers(read_all(tmp_path)) == list(range(-1, 200))


def test_name_without_extension(tmp_path):
    exp = RotatingFileExporter(str(tmp_path / "events"), max_size_mb=0.0001, max_backups=0)
    exp.write(event(0))
    exp.write(event(1))
    exp.close()
    names = backups(tmp_path, ext="")
    assert len(names) == 1 and names[0].startswith("events-20")


def test_leftovers_from_previous_run_are_milled(tmp_path):
    def backup(day, suffix=""):
        return tmp_path / f"events-2020-01-0{day}T00-00-00.000.log{suffix}"

    backup(1).write_text(event(1) + "\n")  # oldest: pruned
    backup(2).write_text(event(2) + "\n")  # uncompressed: gets compressed
    backup(3).write_text(event(3) + "\n")  # .gz complete, unlink was missed
    with gzip.open(backup(3, ".gz"), "wt") as f:
        f.write(event(3) + "\n")
    backup(4).write_text(event(4) + "\n")  # compression was interrupted
    backup(4, ".gz.tmp").write_bytes(b"\x1f\x8b garbage")

    RotatingFileExporter(str(tmp_path / "events.log"), max_backups=3, compress=True).close()

    assert sorted(os.listdir(tmp_path)) == [
        backup(2, ".gz").name,
        backup(3, ".gz").name,
        backup(4, ".gz").name,
        "events.log",
    ]
    assert numbers(read_all(tmp_path)) == [2, 3, 4]


# -- time rotation -------------------------------------------------------------


def test_time_rotation_with_injected_clock(tmp_path):
    now = [100.0]
    exp = RotatingFileExporter(
        str(tmp_path / "events.log"), rotation_interval=10, max_backups=0, clock=lambda: now[0]
    )
    exp.write(event(0))
    now[0] = 105
    exp.write(event(1))
    now[0] = 110.5
    exp.write(event(2))  # the file is 10.5 s old: rotate first
    exp.flush()
    assert exp.stats()["rotations"] == 1

    now[0] = 125
    exp.flush()  # the daemon's periodic flush rotates an idle file too
    assert exp.stats()["rotations"] == 2

    now[0] = 140
    exp.flush()  # nothing to keep: no empty backup, the clock restarts
    exp.write(event(3))
    now[0] = 149
    exp.flush()
    assert exp.stats()["rotations"] == 2
    now[0] = 150
    exp.flush()
    assert exp.stats()["rotations"] == 3
    exp.close()

    groups = [numbers(read_lines(tmp_path / name)) for name in backups(tmp_path)]
    assert groups == [[0, 1], [2], [3]]
    assert read_lines(tmp_path / "events.log") == []


# -- write errors ----------------------------------------------------------------


def fill_until_lost(exp, start=0, limit=20_000):
    """Write numbered lines, flushing often, until some are lost; return next n."""
    n = start
    while exp.stats()["lines_lost"] == 0:
        assert n - start < limit, "the file system never filled up"
        exp.write(event(n))
        n += 1
        if n % 50 == 0:
            exp.flush()
    return n


def write_flushed(exp, start, count):
    for n in range(start, start + count):
        exp.write(event(n))
        if n % 50 == 0:
            exp.flush()
    exp.flush()
    return start + count


@pytest.mark.parametrize("free_space", ["delete_backups", "delete_current_file", "grow_fs"])
def test_enospc_counted_warned_once_and_recovered(tiny_fs, caplog, free_space):
    caplog.set_level(logging.INFO, logger="tetrad.exporter")
    path = tiny_fs / "events.log"
    exp = RotatingFileExporter(str(path), max_size_mb=0.02, max_backups=0)

    n = fill_until_lost(exp)
    n = write_flushed(exp, n, 2000)  # still full: more losses, same warning
    stats = exp.stats()
    assert stats["lines_lost"] > 0 and stats["write_errors"] >= 2
    failing = warnings(caplog, "cannot write events to")
    assert len(failing) == 1
    assert str(path) in failing[0].getMessage()
    assert os.strerror(28) in failing[0].getMessage()  # ENOSPC
    assert not warnings(caplog, "writing events to")

    if free_space == "delete_backups":
        for name in backups(tiny_fs):
            os.unlink(tiny_fs / name)
    elif free_space == "delete_current_file":
        os.unlink(path)  # only freed once the exporter lets go of it
    else:
        subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_fs)], check=True)

    written_before = exp.stats()["lines_written"]
    recovered_from = n
    n = write_flushed(exp, n, 100)  # fits in the least space freed above
    exp.close()

    stats = exp.stats()
    assert stats["lines_written"] > written_before
    assert len(warnings(caplog, "writing events to")) == 1
    assert len(warnings(caplog, "cannot write events to")) == 1
    # Every line offered is either written or counted as lost...
    assert stats["lines_written"] + stats["lines_lost"] == n
    # ...the files hold only whole lines, in order, none twice...
    found = numbers(read_all(tiny_fs))
    assert found == sorted(set(found))
    # ...and once space is back nothing goes missing.
    assert [k for k in found if k >= recovered_from] == list(range(recovered_from, n))
    if free_space == "grow_fs":
        assert len(found) == stats["lines_written"]


def test_missing_directory_is_recreated(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tetrad.exporter")
    logdir = tmp_path / "log"
    exp = RotatingFileExporter(str(logdir / "events.log"), max_size_mb=0.0001, max_backups=0)
    exp.write(event(0))
    exp.flush()
    # Wipe the directory under the exporter; the next rotation cannot rename
    # the file but must open a fresh one, recreating the directory.
    os.unlink(logdir / "events.log")
    os.rmdir(logdir)
    exp.write(event(1))
    exp.write(event(2))
    exp.close()
    assert stat.S_IMODE(logdir.stat().st_mode) == 0o750
    assert numbers(read_all(logdir)) == [1, 2]
    assert len(warnings(caplog, "cannot write events to")) == 1


def test_write_after_close_is_counted_lost(tmp_path):
    exp = RotatingFileExporter(str(tmp_path / "events.log"))
    exp.write(event(0))
    exp.close()
    exp.write(event(1))
    exp.close()  # idempotent
    assert exp.stats()["lines_written"] == 1
    assert exp.stats()["lines_lost"] == 1


@pytest.mark.parametrize(
    "kwargs", [{"max_size_mb": 0}, {"max_backups": -1}, {"rotation_interval": -1}]
)
def test_invalid_settings(tmp_path, kwargs):
    with pytest.raises(ValueError):
        RotatingFileExporter(str(tmp_path / "events.log"), **kwargs)


# -- stream exporter -----------------------------------------------------------


def test_stream_exporter_writes_lines():
    out = io.StringIO()
    exp = StreamExporter(out, name="<test>")
    exp.write(event(0))
    exp.write(event(1))
    exp.flush()
    exp.close()
    assert numbers(out.getvalue().splitlines()) == [0, 1]
    stats = exp.stats()
    assert stats["path"] == "<test>"
    assert stats["lines_written"] == 2
    assert stats["bytes_written"] == len(out.getvalue())


def test_stream_exporter_stops_quietly_on_broken_pipe(caplog):
    caplog.set_level(logging.INFO, logger="tetrad.exporter")
    r, w = os.pipe()
    os.close(r)
    stream = open(w, "w")
    exp = StreamExporter(stream)
    for n in range(10):
        exp.write(event(n))
    exp.flush()  # EPIPE
    for n in range(10, 15):
        exp.write(event(n))
    exp.flush()
    exp.close()
    stream.close()  # the pending data now goes to /dev/null, without error

    stats = exp.stats()
    assert stats["lines_written"] == 0
    assert stats["lines_lost"] == 15
    assert stats["write_errors"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_stream_exporter_broken_pipe_raised_by_write():
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    exp = StreamExporter(Closed())
    exp.write(event(0))
    exp.write(event(1))
    exp.flush()
    assert exp.stats()["lines_lost"] == 2
    assert exp.stats()["write_errors"] == 1


def test_stream_exporter_enospc_warned_once(caplog):
    caplog.set_level(logging.INFO, logger="tetrad.exporter")
    stream = open("/dev/full", "w")
    exp = StreamExporter(stream)
    for n in range(5):
        exp.write(event(n))
        exp.flush()
    stats = exp.stats()
    assert stats["lines_written"] == 0
    assert stats["lines_lost"] == 5
    assert len(warnings(caplog, "cannot write events to /dev/full")) == 1
    exp.close()
    with suppress(OSError):  # the text stream still holds the unwritable data
        stream.close()


# -- fan-out, concurrency, configuration ----------------------------------------


def test_concurrent_stats_and_flush_during_writes(tmp_path):
    total = 100_000
    exp = RotatingFileExporter(
        str(tmp_path / "events.log"), max_size_mb=0.05, max_backups=0, compress=True
    )
    done = threading.Event()
    errors = []

    def poll(action):
        try:
            last = 0
            while not done.is_set():
                stats = action()
                if stats is not None:
                    assert stats["lines_written"] >= last
                    last = stats["lines_written"]
                time.sleep(0.0002)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    pollers = [threading.Thread(target=poll, args=(exp.stats,)) for _ in range(3)]
    pollers.append(threading.Thread(target=poll, args=(exp.flush,)))
    for t in pollers:
        t.start()
    for n in range(total):
        exp.write(event(n))
    done.set()
    for t in pollers:
        t.join()
    exp.close()

    assert errors == []
    assert exp.stats()["lines_written"] == total
    assert numbers(read_all(tmp_path)) == list(range(total))


def test_multi_exporter_fans_out(tmp_path):
    out = io.StringIO()
    multi = MultiExporter([RotatingFileExporter(str(tmp_path / "events.log")), StreamExporter(out)])
    multi.write(event(0))
    multi.flush()
    multi.close()
    assert numbers(read_lines(tmp_path / "events.log")) == [0]
    assert numbers(out.getvalue().splitlines()) == [0]
    assert [s["lines_written"] for s in multi.stats()["exporters"]] == [1, 1]


def load_config(tmp_path, **cli):
    """A real tetrad.config.Config from flags alone (no files, no environment)."""
    return tetrad_config.load(
        cli,
        env={},
        config_file=str(tmp_path / "absent.yaml"),
        dropin_dir=str(tmp_path / "absent.d"),
    )


def test_build_exporters_from_config(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "events.log"
    multi = build_exporters(
        load_config(
            tmp_path,
            **{"export-filename": str(path), "export-file-perm": "640", "export-stdout": "true"},
        )
    )
    # the journal is on by default
    assert [type(e) for e in multi.exporters] == [RotatingFileExporter, StreamExporter,
                                                  JournalExporter]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    multi.close()

    assert build_exporters(load_config(tmp_path, **{"enable-journal": "false"})).exporters == []


def test_build_exporters_time_rotation(tmp_path):
    multi = build_exporters(
        load_config(
            tmp_path,
            **{
                "export-filename": str(tmp_path / "events.log"),
                "export-file-rotation-interval": "1ms",
            },
        )
    )
    multi.write(event(0))
    time.sleep(0.01)
    multi.write(event(1))
    multi.close()
    assert multi.stats()["exporters"][0]["rotations"] == 1
