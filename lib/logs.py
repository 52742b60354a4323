"""Structured logs: one JSON object per line, with the request or job it belongs to."""
from __future__ import annotations

import json
import logging
import sys
import time

# Fields a log call may attach with ``extra=``; they become keys of the JSON line.
CONTEXT_FIELDS = ("request_id", "job_id", "method", "path", "status", "duration_ms", "worker", "user_id")


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str):
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup(role: str, level: int = logging.INFO) -> None:
    """Send every log record of this process to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A quiet run logs nothing per tick: the scheduler's job bookkeeping, HTTP clients' per-request
    # lines and migrations only when something is wrong.
    for noisy in ("alembic", "urllib3", "httpx", "httpcore", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
