"""xain-sdk 0.8 participants' paths (docs/XAIN.md): which call a path is, and the ids the proxy mints.

Pure, no I/O. The SDK keeps only `scheme://netloc` of every URL it is given, so its aggregator
calls `/{id}/{token}` share the root with the FEG endpoints: they are told apart by the prefix of
the ids minted here. Ids are URL-safe because the SDK puts them into paths unquoted.
"""

from __future__ import annotations

import re
import secrets
from typing import NamedTuple

ID_PREFIX = "x8-"
UPLOAD_PATH_PREFIX = b"/" + ID_PREFIX.encode()  # the proxy's upload body limit applies under it
_SAFE = r"[A-Za-z0-9_-]{1,200}"
_PATHS = re.compile(
    rf"/(?:(?P<rendezvous>rendez_vous)"
    rf"|(?P<call>heartbeat|start_training)/(?P<cid>{ID_PREFIX}{_SAFE})"
    rf"|(?P<aid>{ID_PREFIX}{_SAFE})/(?P<token>[A-Za-z0-9_-]{{1,1000}}))"
)
_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::[0-9]{1,5})?")


class XainPath(NamedTuple):
    endpoint: str  # "rendez_vous" (answered by the proxy) or one of internal_link's XAIN_ENDPOINTS
    participant: str
    token: str


def parse(path: str, method: str) -> XainPath | None:
    """The participant call `method path` is, or None if it is none (a 404 for the caller)."""
    match = _PATHS.fullmatch(path)
    if match is None:
        return None
    if match["rendezvous"]:
        return XainPath("rendez_vous", "", "") if method == "GET" else None
    if match["call"]:
        return XainPath(match["call"], match["cid"], "") if method == "GET" else None
    if method not in ("GET", "POST"):
        return None
    return XainPath("download" if method == "GET" else "upload", match["aid"], match["token"])


def mint_id() -> str:
    """A new participant id: 128 random bits, URL-safe, recognisable by its prefix."""
    return ID_PREFIX + secrets.token_urlsafe(16)


def aggregator_url(host: bytes | None, tls: bool) -> str:
    """The aggregator URL announced in `start_training`: this proxy, as the participant reached it."""
    text = host.decode("ascii", "replace") if host else ""
    if not _HOST.fullmatch(text):
        text = "localhost"
    return f"{'https' if tls else 'http'}://{text}"
