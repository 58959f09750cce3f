"""The answers the proxy gives by itself: always JSON, never an HTML page (PROTOCOL.md §3, ours)."""

from __future__ import annotations

import orjson
from aiohttp import web

JSON = "application/json"
INVALID_REQUEST = "INVALID_REQUEST"

# PROTOCOL.md §8: an unreachable upstream is RETRY with no retry_wait, never ERROR or an HTTP error.
_RETRY_BODY = b'{"status":"RETRY"}'


def json_error(http_status: int, status: str, message: str) -> web.Response:
    """`{"status": status, "message": message}` with the given HTTP status."""
    body = orjson.dumps({"status": status, "message": message})
    return web.Response(status=http_status, body=body, content_type=JSON)


def invalid_request(http_status: int, message: str) -> web.Response:
    return json_error(http_status, INVALID_REQUEST, message)


def retry() -> web.Response:
    return web.Response(body=_RETRY_BODY, content_type=JSON)
