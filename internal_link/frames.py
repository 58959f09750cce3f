"""The link's wire format: length-prefixed msgpack frames and the messages they carry.

No I/O: bytes in, messages out (ARCHITECTURE.md "The link"). A frame is a 4-byte big-endian
unsigned length `N` followed by `N` bytes of msgpack. Messages are msgpack arrays::

    request   [0, call_id, method, payload]
    response  [1, call_id, None, result]          answered
              [1, call_id, code, text]            failed: an `ErrorCode` value and its text
    hello     [2, server_nonce]                   server -> client, first thing on a connection
    auth      [3, client_nonce, client_proof]     client -> server
    accept    [1, 0, None, server_proof]          server -> client: a response to `HANDSHAKE_ID` (0)
    head      [4, call_id, meta, total]           server -> client: the answer follows as `total` bytes
    data      [5, call_id, chunk]                 the stream's sender -> its receiver: its next bytes
    credit    [6, call_id, nbytes]                receiver -> sender: send up to `nbytes` more of it
    cancel    [7, call_id]                        receiver -> sender: stop sending it
    call head [8, call_id, method, meta, total]   client -> server: a call whose payload follows as
                                                  `total` bytes of `data`

A streamed answer (`streams.py`) is for answers too large to hold whole per request, a streamed
request (`request_streams.py`) for such requests; an empty `data` chunk ends either early
(acknowledging a cancel, or a sender that could not finish).

The proofs are in `proofs.py`; calls use ids from 1 up. After the handshake of a link without TLS,
every frame's body is followed by a `sealing.TAG_SIZE`-byte tag (counted in its length).
Bad bytes from a peer never raise anything but `LinkProtocolError` (`FrameTampered` for a bad tag).
"""

from __future__ import annotations

import reprlib
import struct
from typing import Any

import msgpack

from .errors import WIRE_CODES, FrameTampered, LinkProtocolError
from .sealing import TAG_SIZE, Opener, Sealer

REQUEST = 0
RESPONSE = 1
HELLO = 2
AUTH = 3
STREAM_HEAD = 4
STREAM_DATA = 5
STREAM_CREDIT = 6
STREAM_CANCEL = 7
REQUEST_HEAD = 8

HANDSHAKE_ID = 0
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
NONCE_SIZE = 16

_HEADER = struct.Struct(">I")
_HEADER_SIZE = _HEADER.size
_MAX_ENCODABLE = 2**32 - 1


def encode_frame(obj: Any, sealer: Sealer | None = None) -> tuple[bytes, ...]:
    """Pack `obj` as msgpack (bytes stay `bin`, str stays `str`); return (length header, body),
    or (header, body, tag) with a `sealer`.

    Kept apart so that a writer sends them without copying the body behind the header.
    Raises whatever msgpack raises for an object it cannot pack (`TypeError`, `ValueError`), before
    the sealer counts the frame.
    """
    body = msgpack.packb(obj, use_bin_type=True)
    if sealer is None:
        if len(body) > _MAX_ENCODABLE:
            raise ValueError(f"frame of {len(body)} bytes does not fit a 32-bit length")
        return _HEADER.pack(len(body)), body
    if len(body) + TAG_SIZE > _MAX_ENCODABLE:
        raise ValueError(f"frame of {len(body)} bytes does not fit a 32-bit length")
    return _HEADER.pack(len(body) + TAG_SIZE), body, sealer.tag(body)


class FrameDecoder:
    """Turns a byte stream, split or merged arbitrarily, back into the messages it carries.

    `max_frame` may be raised after construction (e.g. once a peer has authenticated), and an
    `opener` set, which then checks and strips every later frame's tag.
    """

    __slots__ = ("_buffer", "max_frame", "opener")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.opener: Opener | None = None
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes, one: bool = False) -> list[Any]:
        """Consume `data` and return every message completed by it, in order; with `one`, at most
        one, the rest held back for the next call (a handshake step may change how it is read).

        Raises:
            LinkProtocolError: a frame is longer than `max_frame` (detected from its header, before
                its body arrives) or is not exactly one msgpack object.
            FrameTampered: with an `opener`, a frame's tag does not check.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            # Fast path: whole frames in one read are decoded straight from `data`, no copy.
            source = data
        end = len(source)
        pos = 0
        messages: list[Any] = []
        opener = self.opener
        with memoryview(source) as view:
            while end - pos >= _HEADER_SIZE:
                (size,) = _HEADER.unpack_from(source, pos)
                if size > self.max_frame:
                    raise LinkProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
                start = pos + _HEADER_SIZE
                if end - start < size:
                    break
                pos = start + size
                if opener is None:
                    messages.append(_unpack(view[start:pos]))
                else:
                    messages.append(_unpack(_opened(opener, view[start:pos])))
                if one:
                    break
        if source is buffer:
            del buffer[:pos]
        elif pos < end:
            buffer += data[pos:]
        return messages


def _opened(opener: Opener, chunk: memoryview) -> memoryview:
    body = chunk[:-TAG_SIZE]
    if len(chunk) < TAG_SIZE or not opener.check(body, chunk[-TAG_SIZE:]):
        raise FrameTampered("a frame failed its integrity check")
    return body


def _unpack(chunk: memoryview) -> Any:
    try:
        return msgpack.unpackb(chunk, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise LinkProtocolError(f"undecodable frame: {exc}") from None


def message_kind(msg: Any) -> int:
    """Check a decoded message's shape and return its kind (REQUEST, RESPONSE, HELLO, AUTH, STREAM_*,
    REQUEST_HEAD).

    Callers then unpack the list themselves, so a call costs no allocation beyond the message.
    """
    if type(msg) is list and msg and type(msg[0]) is int:
        kind = msg[0]
        n = len(msg)
        if kind == REQUEST:
            if n == 4 and type(msg[1]) is int and type(msg[2]) is str:
                return REQUEST
        elif kind == RESPONSE:
            if n == 4 and type(msg[1]) is int:
                code = msg[2]
                if code is None or (type(code) is int and code in WIRE_CODES and type(msg[3]) is str):
                    return RESPONSE
        elif kind == HELLO and n == 2 and type(msg[1]) is bytes:
            return HELLO
        elif kind == AUTH and n == 3 and type(msg[1]) is bytes and type(msg[2]) is bytes:
            return AUTH
        elif kind == STREAM_DATA:
            if n == 3 and type(msg[1]) is int and type(msg[2]) is bytes:
                return STREAM_DATA
        elif kind == STREAM_HEAD:
            if n == 4 and type(msg[1]) is int and type(msg[3]) is int and msg[3] >= 0:
                return STREAM_HEAD
        elif kind == STREAM_CREDIT:
            if n == 3 and type(msg[1]) is int and type(msg[2]) is int and msg[2] >= 1:
                return STREAM_CREDIT
        elif kind == REQUEST_HEAD:
            if n == 5 and type(msg[1]) is int and type(msg[2]) is str and type(msg[4]) is int and msg[4] >= 1:
                return REQUEST_HEAD
        elif kind == STREAM_CANCEL and n == 2 and type(msg[1]) is int:
            return STREAM_CANCEL
    # reprlib: bounded in length and nesting (a plain repr of a 1,000-deep list raises).
    raise LinkProtocolError(f"malformed message: {reprlib.repr(msg)}")
