"""What a device may send to the proxy and how long it may take."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What a device may send and how long it may take (seconds)."""

    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 64 * 1024 * 1024  # on `upload_paths`
    upload_paths: frozenset[bytes] = frozenset({b"/result"})
    upload_path_prefixes: tuple[bytes, ...] = ()  # e.g. XAIN participants' `/x8-...` uploads
    # Any other path: a poll's body is a few hundred bytes, and one the size of an upload would
    # only make the leaf parse it into millions of objects before saying what is wrong.
    max_other_body_bytes: int = 1024 * 1024
    head_timeout: float = 15.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    # Request bodies held, all connections together: from a body's head (or, chunked, as it
    # streams) until its answer is written. What does not fit is told to come back (budget.py).
    max_buffered_bytes: int = 512 * 1024 * 1024
    # The same for one connection's bodies (pipelined ones add up): two full uploads.
    max_connection_buffered_bytes: int = 128 * 1024 * 1024
