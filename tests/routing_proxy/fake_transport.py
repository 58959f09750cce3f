"""A stand-in for the kernel under one `HttpConnection`: bytes in, bytes out, no socket.

The protocol tests drive the connection with exactly the bytes and the timing of their edge cases
(a request split at every byte, a client that stops reading); the real-socket tests stay for
everything between the proxy and the kernel.
"""

from __future__ import annotations

from typing import Any

from routing_proxy.http1 import HttpLimits, HttpServer, Reply, Request, Response
from routing_proxy.http1.connection import HttpConnection


class FakeTransport:
    """What `asyncio.Transport` does for the protocol, in memory.

    Bytes fed while reading is paused wait, like in a kernel buffer, and arrive once it resumes.
    `writes` keeps every buffer the protocol handed over, as it handed it.
    """

    def __init__(self) -> None:
        self.protocol: HttpConnection | None = None
        self.writes: list[bytes] = []
        self.reading = True
        self.unread = b""
        self.eof_written = False
        self.closed = False
        self.aborted = False

    @property
    def sent(self) -> bytes:
        return b"".join(self.writes)

    def connect(self, protocol: HttpConnection) -> None:
        self.protocol = protocol
        protocol.connection_made(self)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        """The client sent `data`."""
        self.unread += data
        self._deliver()

    def client_closes(self) -> None:
        """The client shut its sending side."""
        assert self.protocol is not None
        if not self.protocol.eof_received():
            self.close()

    def _deliver(self) -> None:
        if self.reading and self.unread and not self.closed and self.protocol is not None:
            data, self.unread = self.unread, b""
            self.protocol.data_received(data)

    # asyncio.Transport

    def write(self, data: bytes) -> None:
        assert not self.eof_written and not self.closed, "written after write_eof or close"
        self.writes.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True
        self._deliver()

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def _lose(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            self.protocol.connection_lost(None)


class Dispatched:
    """The dispatcher: records each request with its reply, for the test to answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, Reply]] = []

    def __call__(self, request: Request, reply: Reply) -> None:
        self.calls.append((request, reply))

    @property
    def requests(self) -> list[Request]:
        return [request for request, _ in self.calls]

    def answer(self, index: int, response: Response) -> None:
        self.calls[index][1](response)


def open_connection(server: HttpServer) -> tuple[HttpConnection, FakeTransport]:
    connection = HttpConnection(server)
    transport = FakeTransport()
    transport.connect(connection)
    return connection, transport


BUSY = Response(200, "application/json", b'{"status":"RETRY"}', close=True)


def make_server(limits: HttpLimits | None = None) -> tuple[HttpServer, Dispatched]:
    dispatched = Dispatched()
    return HttpServer(dispatched, limits or HttpLimits(), busy=lambda: BUSY), dispatched


def split_answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """(status, lower-cased headers, body) of each answer in `raw`, interim 100s included."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return found
