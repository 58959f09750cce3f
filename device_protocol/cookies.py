"""HMAC-signed task cookies (PROTOCOL.md §4, ours): a device cannot forge a model version or
selection, nor replay another device's or another task's cookie."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from .errors import CookieInvalid

SIG = "sig"


class CookieSigner:
    """Issues and verifies the cookie `{model_version, device_selection_id, sig}`."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("cookie secret must not be empty")
        self._secret = secret

    def _sign(self, job_id: str, device_id: str, task_id: str, version: int, selection_id: int) -> str:
        text = "\x1f".join((job_id, device_id, task_id, str(version), str(selection_id)))
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, job_id: str, device_id: str, task_id: str, version: int, selection_id: int) -> dict[str, Any]:
        return {
            "model_version": version,
            "device_selection_id": selection_id,
            SIG: self._sign(job_id, device_id, task_id, version, selection_id),
        }

    def verify(self, cookie: Mapping[str, Any] | None, job_id: str, device_id: str, task_id: str) -> tuple[int, int]:
        """Return (model_version, device_selection_id) of an authentic cookie."""
        if not cookie:
            raise CookieInvalid("missing cookie: send back the cookie that came with the task")
        version = cookie.get("model_version")
        selection_id = cookie.get("device_selection_id")
        sig = cookie.get(SIG)
        if type(version) is not int or type(selection_id) is not int or not isinstance(sig, str):
            raise CookieInvalid("malformed cookie: send back the cookie that came with the task")
        expected = self._sign(job_id, device_id, task_id, version, selection_id)
        # As bytes: compare_digest raises TypeError on a str holding anything but ASCII.
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "surrogatepass")):
            raise CookieInvalid("cookie signature does not match this device and task")
        return version, selection_id
