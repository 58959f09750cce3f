"""The internal link: framed msgpack calls between the routing proxy, the leaves and the server.

Both services import it; it imports nothing of ours but `device_protocol`'s kind of code: no
`routing_proxy`, no `edge_gateway` (tests/test_import_directions.py). Its layers::

    sans-I/O core   frames.py     length-prefixed msgpack frames (sealed or not), message shapes
                    proofs.py     the handshake's proofs of the secret, both ways, and frame keys
                    sealing.py    per-frame integrity tags for links without TLS
                    protocol.py   one connection's handshake and call multiplexing: bytes in,
                                  events and bytes out (ServerConnection, ClientConnection)
                    streams.py    answers too large for one frame: chunks within granted credit
                    request_streams.py  requests too large for one frame, the other way, bounded
                    events.py     what the core returns from the bytes it is fed
                    calls.py      the proxy <-> leaf contract (DeviceCall, DeviceAnswer)
                    sessions.py   the proxy <-> leaf calls of live WebSocket sessions, pushes included
                    messages.py   the leaf <-> server messages (pydantic)
                    errors.py     the error tree and the codes that cross the link
    asyncio shell   connection.py the transport, one write per loop turn, write flow control
                    server.py     LinkServer: serves handlers on a port
                    client.py     LinkClient: one link kept up, calls with deadlines
                    answer_stream.py  a streamed answer as its caller consumes and paces it
                    upload_stream.py  a streamed request's body as its caller writes it
    process set-up  process.py    event loop, logging, stop signals, gc, the link secret
                    tls.py        the TLS contexts of a serving and a connecting end

Errors::

    LinkError
    ├── LinkProtocolError   the peer broke the protocol: the connection is dropped
    │   ├── WrongSecret     its proof of the secret did not verify
    │   └── FrameTampered   a frame failed its integrity check
    ├── LinkUnavailable     no answer (not connected, connection lost, deadline passed); `.sent`
    │                       says whether the request may have reached the peer
    ├── CallRefused         raised by a handler: answers the call with an `ErrorCode`
    │   └── BadPayload      a call or answer without its contract's shape (BAD_PAYLOAD)
    └── RemoteError         the peer answered the call with an error; `.code` says which
"""
