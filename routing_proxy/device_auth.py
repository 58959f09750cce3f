"""Optional device authentication: a token in X-Flare-User-Info and/or an allow-list of device ids.

Pure (no I/O): `ProxyConfig.device_auth()` reads the files and builds a `DeviceAuthenticator`;
the request path calls `check` once per device request. A refusal is answered HTTP 403 with the
proxy's error shape, `{"status": "INVALID_REQUEST", "message": reason}` (PROTOCOL.md §3, ours:
every error is JSON); the Android SDK maps 403 to its `AuthError`, iOS to a failed request.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import NamedTuple

from device_protocol.errors import InvalidRequest
from device_protocol.headers import parse_info

TOKEN_KEY = "auth_token"  # a user-info key (PROTOCOL.md §2)
# Android sends the user info as a raw, unencoded query string (PROTOCOL.md §2): a token holding
# `+ & = %` or spaces would reach us changed, so such tokens are refused when configured.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")


def parse_lines(text: str) -> list[str]:
    """One entry per line; blank lines and lines starting with `#` are skipped, ends stripped."""
    entries = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


class Admission(NamedTuple):
    """A request's fate: `reason` to refuse it (None: admitted), and the credential it was admitted
    with, `token:<first 16 hex digits of the token's SHA-256>` (None: no token asked for)."""

    reason: str | None
    credential: str | None = None


def _digest(token: str) -> bytes:
    # aiohttp keeps undecodable header bytes as lone surrogates: hash them rather than raise.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class DeviceAuthenticator:
    """Admits a device request when every configured check passes.

    Args:
        tokens: accepted `auth_token` values; empty → no token is asked for.
        allowed_devices: device ids admitted (exactly as in X-Flare-Device-ID); None → any.

    Tokens are kept only as SHA-256 digests and a presented token is looked up by its digest, so
    the time a lookup takes depends on the digest, never on how much of a real token was guessed:
    as good as `hmac.compare_digest` against each token, and O(1) however many tokens there are.
    """

    def __init__(self, tokens: Iterable[str] = (), allowed_devices: Iterable[str] | None = None) -> None:
        tokens = list(tokens)
        bad = [i for i, token in enumerate(tokens, 1) if not _TOKEN_CHARS.fullmatch(token)]
        if bad:
            raise ValueError(
                f"auth token(s) number {bad} hold characters other than A-Z a-z 0-9 . _ ~ -, "
                "which clients do not send intact"
            )
        self._digests = frozenset(_digest(token) for token in tokens)
        self._devices = None if allowed_devices is None else frozenset(allowed_devices)

    def check(self, device_id: str, user_info_header: str | None) -> str | None:
        """None when the request is admitted, else the reason to send back with HTTP 403."""
        return self.admit(device_id, user_info_header).reason

    def admit(self, device_id: str, user_info_header: str | None) -> Admission:
        """Whether the request is admitted, and with which credential (see `Admission`).

        Args:
            device_id: the X-Flare-Device-ID header (the proxy has checked it is non-empty).
            user_info_header: the raw X-Flare-User-Info header, in any shape PROTOCOL.md §2
                allows (query string, JSON object, empty), or None when absent.
        """
        # The leaf strips the id too (device_protocol.headers.device_identity): compare the same id.
        if self._devices is not None and device_id.strip() not in self._devices:
            return Admission("device not allowed")
        if not self._digests:
            return Admission(None)
        try:
            info = parse_info(user_info_header or "", "X-Flare-User-Info")
        except InvalidRequest as exc:
            return Admission(f"{TOKEN_KEY} missing: {exc.message}")
        token = info.get(TOKEN_KEY)
        if token is None:
            return Admission(f"{TOKEN_KEY} missing from X-Flare-User-Info")
        digest = _digest(token)
        if digest not in self._digests:
            return Admission(f"invalid {TOKEN_KEY}")
        # A prefix of the digest names the token on the link and in leaf memory, never the token.
        return Admission(None, f"token:{digest.hex()[:16]}")
