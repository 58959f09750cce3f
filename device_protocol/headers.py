"""The X-Flare-* headers in all the shapes real clients send them (PROTOCOL.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_plus

import orjson

from .errors import InvalidRequest
from .identifiers import length_problem

DEVICE_ID = "x-flare-device-id"
DEVICE_INFO = "x-flare-device-info"
USER_INFO = "x-flare-user-info"

# NVFlare's Python simulator writes str(None) for fields it has no value for.
_ABSENT = "None"


def parse_info(value: str, header: str) -> dict[str, str]:
    """Parse a device-/user-info header: query string, JSON object, or empty.

    Query strings follow `urllib.parse.parse_qs` semantics: `+` is a space, `%XX` is decoded,
    blank values and pieces without `=` are dropped; the first value of a repeated key wins.
    Unknown keys are kept.
    """
    text = value.strip()
    if not text or text == "{}":
        return {}
    if text.startswith("{"):
        return _parse_json_info(text, header)
    info: dict[str, str] = {}
    for piece in text.split("&"):
        name, sep, raw = piece.partition("=")
        if not sep:
            continue
        key = unquote_plus(name)
        val = unquote_plus(raw)
        if key and val and val != _ABSENT and key not in info:
            info[key] = val
    return info


def _parse_json_info(text: str, header: str) -> dict[str, str]:
    # Ours: iOS sends a JSON object string; the incumbent silently dropped it (PROTOCOL.md §2).
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"{header} is neither a query string nor a JSON object") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{header} is neither a query string nor a JSON object")
    info: dict[str, str] = {}
    for key, val in obj.items():
        if val is None or val == "" or val == _ABSENT:
            continue
        try:
            info[str(key)] = val if isinstance(val, str) else orjson.dumps(val).decode()
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
            raise InvalidRequest(f"{header} value of {key[:40]!r} is nested too deeply") from None
    return info


def device_identity(headers: Mapping[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """Return (device_id, device_info, user_info) from lower-cased headers.

    The identity comes from headers only: a body can never override it (PROTOCOL.md §1, ours).
    """
    device_id = headers.get(DEVICE_ID, "").strip()
    if not device_id:
        raise InvalidRequest("Device ID missing")
    if (problem := length_problem("Device ID", device_id)) is not None:
        raise InvalidRequest(problem)
    device_info = parse_info(headers.get(DEVICE_INFO, ""), "X-Flare-Device-Info")
    user_info = parse_info(headers.get(USER_INFO, ""), "X-Flare-User-Info")
    named = device_info.get("device_id")
    if named is not None and named != device_id:
        raise InvalidRequest("Device ID mismatch: X-Flare-Device-ID does not match X-Flare-Device-Info")
    device_info["device_id"] = device_id
    return device_id, device_info, user_info
