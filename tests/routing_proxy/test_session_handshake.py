"""The `GET /ws` opening handshake on a parsed request, without sockets."""

from __future__ import annotations

import base64

from routing_proxy.http1 import Request, Response
from routing_proxy.sessions.handshake import Upgrade, accept, identity_headers

KEY = base64.b64encode(b"0123456789abcdef")


def upgrade_request(query: bytes = b"", **extra: bytes) -> Request:
    headers = {
        b"host": b"127.0.0.1",
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-key": KEY,
        b"sec-websocket-version": b"13",
        **{name.replace("_", "-").encode(): value for name, value in extra.items()},
    }
    return Request("GET", b"/ws", query, headers, b"")


def test_the_clients_subprotocol_is_taken_and_101_queued() -> None:
    request = upgrade_request(x_flare_device_id=b"d1", sec_websocket_protocol=b"edgefl.v1.msgpack")
    identity = identity_headers(request)
    assert identity == {"x-flare-device-id": "d1"}
    upgrade = accept(request, identity, 1 << 20)
    assert isinstance(upgrade, Upgrade) and upgrade.codec == "msgpack"
    (written,) = upgrade.protocol.data_to_send()
    assert written.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Protocol: edgefl.v1.msgpack" in written


def test_no_subprotocol_means_json_and_the_identity_may_come_in_the_query() -> None:
    request = upgrade_request(b"device_id=q1&device_info=platform%3Dweb")
    identity = identity_headers(request)
    assert identity == {"x-flare-device-id": "q1", "x-flare-device-info": "platform=web"}
    upgrade = accept(request, identity, 1 << 20)
    assert isinstance(upgrade, Upgrade) and upgrade.codec == "json"


def test_refusals_are_json_errors() -> None:
    missing = identity_headers(upgrade_request())
    assert isinstance(missing, Response) and missing.status == 400 and b"Device ID missing" in missing.body
    unknown = accept(upgrade_request(sec_websocket_protocol=b"chat"), {"x-flare-device-id": "d"}, 1 << 20)
    assert isinstance(unknown, Response) and unknown.status == 400 and b"subprotocol" in unknown.body
    plain = Request("GET", b"/ws", b"", {b"host": b"x"}, b"")
    refused = accept(plain, {"x-flare-device-id": "d"}, 1 << 20)
    assert isinstance(refused, Response) and refused.status in (400, 426) and b"handshake" in refused.body
