"""Daemon logging (not events): stderr, as text or as JSON lines
(python-json-logger) with `--log-format json`.

When stderr is connected to the journal (systemd's $JOURNAL_STREAM), text
lines start with a syslog priority prefix such as ``<4>`` instead of a
timestamp, so journald records each line's level as its PRIORITY.  Events
go to the journal on their own (tetrad/journal.py), with TETRAD_* fields
that log lines never have.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        from pythonjsonlogger import jsonlogger
        handler.setFormatter(jsonlogger.JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                           "message": "msg"}))
    elif _is_journal_stream(handler.stream):
        handler.setFormatter(_JournalPrefixFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("tetrad")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False


_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class _JournalPrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        # journald reads the prefix of each line: keep multi-line messages at one level
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).split("\n"))


def _is_journal_stream(stream) -> bool:
    """Whether `stream` is the journal stream systemd gave us ($JOURNAL_STREAM
    is "device:inode" of it)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"
