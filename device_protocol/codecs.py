"""Request and response bodies: JSON (every client) and msgpack (our simulated devices)."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from .errors import MalformedBody, UnsupportedMediaType

JSON = "application/json"
MSGPACK = "application/msgpack"


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json` (PROTOCOL.md §2)."""
    return content_type.partition(";")[0].strip().lower()


def decode_body(content_type: str, body: bytes) -> dict[str, Any]:
    """Decode a request body into a dict; an empty body is `{}`."""
    if not body.strip():
        return {}
    kind = media_type(content_type)
    if kind == JSON:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"malformed JSON body: {exc}") from None
    elif kind == MSGPACK:
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException) as exc:
            raise MalformedBody(f"malformed msgpack body: {exc}") from None
    else:
        # The same rule as the proxy's: a body says what it is (PROTOCOL.md §2).
        raise UnsupportedMediaType(f"unsupported content type {kind!r}: send {JSON}")
    if not isinstance(obj, dict):
        raise MalformedBody("request body must be a JSON object")
    return obj


def wants_msgpack(accept: str) -> bool:
    return MSGPACK in accept


def encode(obj: dict[str, Any], msgpack_wanted: bool = False) -> tuple[str, bytes]:
    """Encode a response; returns (content_type, body)."""
    if msgpack_wanted:
        return MSGPACK, msgpack.packb(obj, use_bin_type=True)
    return JSON, orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
