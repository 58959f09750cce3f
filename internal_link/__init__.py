"""The internal link: framed msgpack calls between the routing proxy, the leaves and the server.

Both services import it; it imports nothing of ours but `device_protocol`'s kind of code: no
`routing_proxy`, no `edge_gateway` (tests/test_import_directions.py). Its layers::

    sans-I/O core   frames.py     length-prefixed msgpack frames, message shapes, the auth digest
                    protocol.py   one connection's handshake and call multiplexing: bytes in,
                                  events and bytes out (ServerConnection, ClientConnection)
                    calls.py      the proxy <-> leaf contract (DeviceCall, DeviceAnswer)
                    sessions.py   the proxy <-> leaf calls of live WebSocket sessions, pushes included
                    messages.py   the leaf <-> server messages (pydantic)
                    errors.py     the error tree and the codes that cross the link
    asyncio shell   connection.py the transport, one write per loop turn, write flow control
                    server.py     LinkServer: serves handlers on a port
                    client.py     LinkClient: one link kept up, calls with deadlines
    process set-up  process.py    event loop, logging, stop signals, gc, the link secret

Errors::

    LinkError
    ├── LinkProtocolError   the peer broke the protocol: the connection is dropped
    ├── LinkUnavailable     no answer (not connected, connection lost, deadline passed); `.sent`
    │                       says whether the request may have reached the peer
    ├── CallRefused         raised by a handler: answers the call with an `ErrorCode`
    │   └── BadPayload      a call or answer without its contract's shape (BAD_PAYLOAD)
    └── RemoteError         the peer answered the call with an error; `.code` says which
"""
