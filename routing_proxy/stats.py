"""What the proxy counts about its devices' requests: plain ints, bumped on the request path.

No locks and no metric objects here: a request costs a dict increment or two, and the Prometheus
collector (`metrics.py`) reads these at scrape time. A worker process has its own; each serves
its own `/metrics` (docs/OPERATIONS.md).
"""

from __future__ import annotations

from collections import Counter


class ProxyStats:
    """One worker's counts. Every label value comes from a fixed set (endpoints, causes, reasons)."""

    __slots__ = ("answered", "refused", "sessions", "unanswered")

    def __init__(self) -> None:
        # (endpoint, HTTP status) of each leaf answer passed on to a device.
        self.answered: Counter[tuple[str, int]] = Counter()
        # (endpoint, cause) of each device told RETRY because no leaf answered (PROTOCOL.md §8).
        self.unanswered: Counter[tuple[str, str]] = Counter()
        # reason -> requests the proxy itself refused before any leaf saw them.
        self.refused: Counter[str] = Counter()
        # Live /ws sessions (PROTOCOL.md §9): the session relay adds one per session it opens
        # and takes it off when the session ends; 0 until then.
        self.sessions = 0
