"""JSON-lines logs. One record per connection open and close; nothing per message at INFO.

Libraries that log every request or job at INFO (uvicorn's access log, httpx, APScheduler) are
kept at WARNING unless the level is DEBUG.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import orjson

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's terminal-coloured duplicate of msg
}


# one record per request or per job at INFO: warnings and errors only, unless debugging
THIRD_PARTY = ("uvicorn.access", "httpx", "httpcore", "apscheduler")
# one record per frame at DEBUG: warnings and errors only, always
PER_FRAME = ("websockets",)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update((k, v) for k, v in record.__dict__.items() if k not in _RESERVED)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object per line (call once per process).

    A record does not collect what the JSON line never shows: the caller's file, function and
    line, the thread and the process (the logging HOWTO's "Optimization"). A node writes one
    record per connection open and close, so this is on the handshake's path.
    """
    logging._srcfile = None  # the documented switch for caller information
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    for noisy in THIRD_PARTY:
        logging.getLogger(noisy).setLevel(quiet)
    for noisy in PER_FRAME:
        logging.getLogger(noisy).setLevel(logging.WARNING)


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """Attaches fixed context (node, session, …) to every record as top-level fields."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra: Mapping[str, object] = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return msg, kwargs
