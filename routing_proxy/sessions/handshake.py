"""The WebSocket opening handshake of `GET /ws` (RFC 6455 §4.2), done by `websockets`' sans-I/O core
on the request the proxy's own HTTP front-end parsed. No I/O.

The device's identity comes from the `X-Flare-*` headers, or for clients that cannot set headers
(browsers) from the query parameters `device_id`, `device_info`, `user_info` (PROTOCOL.md §9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import parse_qsl

from websockets.exceptions import NegotiationError
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from device_protocol.session_messages import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL, SUBPROTOCOL_CODECS

from ..http1 import Request, Response, invalid_request

_QUERY_IDENTITY = {
    "device_id": "x-flare-device-id",
    "device_info": "x-flare-device-info",
    "user_info": "x-flare-user-info",
}
_SUBPROTOCOLS = [Subprotocol(JSON_SUBPROTOCOL), Subprotocol(MSGPACK_SUBPROTOCOL)]


class Upgrade(NamedTuple):
    """An accepted handshake: the protocol (its 101 queued in `data_to_send`), the codec the
    session speaks, and the device's identity headers (lower-case `x-flare-*` names)."""

    protocol: ServerProtocol
    codec: str
    identity: dict[str, str]


def identity_headers(request: Request) -> dict[str, str] | Response:
    """The device's `x-flare-*` headers, query parameters filling in what headers do not say."""
    identity: dict[str, str] = {}
    try:
        for name, value in request.headers.items():
            if name.startswith(b"x-flare-"):
                identity[name.decode("ascii")] = value.decode("utf-8")
        query = parse_qsl(request.query.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        return invalid_request(400, "header values and the query string must be UTF-8")
    for key, text in query:
        header = _QUERY_IDENTITY.get(key)
        if header is not None:
            identity.setdefault(header, text)
    if not identity.get("x-flare-device-id", "").strip():
        return invalid_request(400, "Device ID missing")  # PROTOCOL.md §2, §9
    return identity


def _select(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    # The client's first choice among ours; none offered means JSON (PROTOCOL.md §9).
    for name in offered:
        if name in _SUBPROTOCOLS:
            return name
    if offered:
        raise NegotiationError(f"no supported subprotocol offered; use {JSON_SUBPROTOCOL} or {MSGPACK_SUBPROTOCOL}")
    return None


def accept(request: Request, identity: dict[str, str], max_message_bytes: int) -> Upgrade | Response:
    """Run the opening handshake on an upgrade request; a refusal is a JSON error to answer instead.

    The request is handed to the core as the bytes it came as (the front-end parsed it already),
    so the core's own parser reads it and then goes on to frames.
    """
    if request.method != "GET":
        return invalid_request(405, "a WebSocket session opens with GET /ws")
    target = request.path + (b"?" + request.query if request.query else b"")
    head = [b"GET ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.items():
        head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    protocol = ServerProtocol(select_subprotocol=_select, max_size=max_message_bytes)
    protocol.receive_data(b"".join(head))
    events = protocol.events_received()
    if len(events) != 1 or not isinstance(events[0], WsRequest):
        return invalid_request(400, f"WebSocket handshake failed: {protocol.handshake_exc}")
    answer = protocol.accept(events[0])
    if answer.status_code != 101:
        reason = protocol.handshake_exc or answer.reason_phrase
        return invalid_request(426 if answer.status_code == 426 else 400, f"WebSocket handshake failed: {reason}")
    protocol.send_response(answer)
    codec = SUBPROTOCOL_CODECS.get(str(protocol.subprotocol), "json")
    return Upgrade(protocol, codec, identity)
