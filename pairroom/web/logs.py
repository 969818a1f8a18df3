"""Structured logs: one JSON object a line, with the ``extra`` fields (room, conn, code...) as keys, or
readable text lines on a terminal (``--log-format auto``, the default)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
"""Terminal escape sequences: a log line read by a machine carries none (uvicorn and libraries colour
their messages when they think a terminal reads them)."""

SECRET_IN_QUERY = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']+")
"""A token in a logged URL (uvicorn logs each websocket's request target, query string included):
replaced, since whoever reads the logs must not be able to enter the room as that person."""


def _plain(value: object) -> object:
    if not isinstance(value, str):
        return value
    # most fields hold neither: a substring test is a tenth of a regex pass, on every field of every line
    if "\x1b" in value:
        value = ANSI.sub("", value)
    if "token=" in value:
        value = SECRET_IN_QUERY.sub(r"\1[redacted]", value)
    return value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _plain(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _plain(value)
        if record.exc_info:
            entry["exc"] = _plain(self.formatException(record.exc_info))
        return json.dumps(entry, default=lambda value: _plain(str(value)))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={_plain(v)}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        )
        line = f"{record.levelname.lower():7} {record.name}: {_plain(record.getMessage())} {extras}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str, stream: object = None) -> str:
    """``auto``: text for a person at a terminal, JSON for whatever collects the logs otherwise."""
    if fmt != "auto":
        return fmt
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return "text" if callable(isatty) and isatty() else "json"


def configure(level: str = "info", fmt: str = "auto") -> None:
    fmt = resolve_format(fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
