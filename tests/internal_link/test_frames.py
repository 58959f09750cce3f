import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from internal_link import frames
from internal_link.errors import ErrorCode, LinkProtocolError
from internal_link.frames import AUTH, HELLO, REQUEST, RESPONSE, FrameDecoder


def encode_frame(obj: object) -> bytes:
    header, body = frames.encode_frame(obj)
    assert header == struct.pack(">I", len(body))  # apart, so a writer sends both without a copy
    return header + body


# msgpack-representable values without floats' NaN (NaN != NaN would fail equality, not framing).
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


def test_frame_is_length_then_msgpack() -> None:
    frame = encode_frame([0, 1, "feg", b"\x00\x01"])
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert msgpack.unpackb(frame[4:], raw=False) == [0, 1, "feg", b"\x00\x01"]


def test_bytes_stay_bytes_and_str_stays_str() -> None:
    [msg] = FrameDecoder().feed(encode_frame({"b": b"raw", "s": "text", "nested": [b"x"]}))
    assert msg == {"b": b"raw", "s": "text", "nested": [b"x"]}
    assert type(msg["b"]) is bytes and type(msg["s"]) is str


def test_decoder_keeps_partial_frames() -> None:
    decoder = FrameDecoder()
    data = encode_frame("first") + encode_frame("second")
    assert decoder.feed(data[:3]) == []
    assert decoder.feed(data[3:12]) == ["first"]  # a 10-byte frame and 2 bytes of the next
    assert decoder.buffered == 2
    assert decoder.feed(data[12:]) == ["second"]
    assert decoder.buffered == 0


def test_oversize_frame_is_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(LinkProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", 11))


def test_undecodable_frame() -> None:
    with pytest.raises(LinkProtocolError, match="undecodable"):
        FrameDecoder().feed(struct.pack(">I", 1) + b"\xc1")  # 0xc1 is never used by msgpack


def test_frame_with_trailing_bytes_is_undecodable() -> None:
    body = msgpack.packb(1) + msgpack.packb(2)
    with pytest.raises(LinkProtocolError):
        FrameDecoder().feed(struct.pack(">I", len(body)) + body)


def test_empty_frame_is_undecodable() -> None:
    with pytest.raises(LinkProtocolError):
        FrameDecoder().feed(struct.pack(">I", 0))


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ([REQUEST, 1, "feg", None], REQUEST),
        ([RESPONSE, 1, None, [200, "application/json", b"{}"]], RESPONSE),
        ([RESPONSE, 1, int(ErrorCode.INTERNAL), "boom"], RESPONSE),
        ([HELLO, b"nonce"], HELLO),
        ([AUTH, b"nonce", b"proof"], AUTH),
    ],
)
def test_message_kind(message: list[object], kind: int) -> None:
    assert frames.message_kind(message) == kind


@pytest.mark.parametrize(
    "message",
    [
        None,
        [],
        {},
        [9, 1],
        [REQUEST, "1", "feg", None],
        [REQUEST, 1, b"feg", None],
        [REQUEST, 1, "feg"],
        [RESPONSE, 1, "boom", None],
        [RESPONSE, 1, int(ErrorCode.INTERNAL), None],
        [RESPONSE, 1, int(ErrorCode.UNAVAILABLE), "local only"],
        [RESPONSE, 1, 99, "no such code"],
        [HELLO, "text"],
        [AUTH],
        [AUTH, b"proof"],
        [True, 1, "feg", None],
    ],
)
def test_malformed_messages(message: object) -> None:
    with pytest.raises(LinkProtocolError, match="malformed"):
        frames.message_kind(message)


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(values, min_size=1, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_decodes_to_the_same_messages(messages: list[object], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    decoder = FrameDecoder()
    decoded = [m for piece in pieces for m in decoder.feed(piece)]
    assert decoded == messages
    assert decoder.buffered == 0


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=64))
def test_garbage_never_raises_anything_but_frame_error(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=1024)
    try:
        for message in decoder.feed(data):
            try:
                frames.message_kind(message)
            except LinkProtocolError:
                pass
    except LinkProtocolError:
        pass
