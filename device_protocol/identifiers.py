"""Length bounds on the identifiers a device sends (PROTOCOL.md §3, ours).

Real ids are short (a UUID, `<uuid>?<N>`, `NVFlare_Android-<16 hex>`); a bound keeps a client from
making every map, log line, heartbeat and answer that carries an id as large as its headers.
"""

from __future__ import annotations

MAX_ID_LENGTH = 256
# Request fields that name something: a device may not make them longer than MAX_ID_LENGTH.
ID_FIELDS = ("job_id", "job_name", "task_id", "task_name")


def length_problem(what: str, value: str) -> str | None:
    """The 400 message for an identifier over the bound, or None if it is within it."""
    if len(value) > MAX_ID_LENGTH:
        return f"{what} longer than {MAX_ID_LENGTH} characters"
    return None
