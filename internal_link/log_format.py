"""`--log-format json`: one JSON object a line, for log collectors; `text` leaves logging as is."""

from __future__ import annotations

import logging

import orjson

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "EDGEFL_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def use_log_format(name: str) -> None:
    """Switch the root logger's handlers (set up by `configure_logging`) to `name`'s format."""
    if name == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
