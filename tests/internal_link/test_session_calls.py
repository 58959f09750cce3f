"""The proxy <-> leaf session calls refuse any other shape with BAD_PAYLOAD; a reply with a large
last message is a stream of its parts."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from internal_link.calls import BadPayload
from internal_link.sessions import (
    KEEP_OPEN,
    Push,
    PushPoll,
    SessionClosed,
    SessionMessage,
    SessionOpen,
    SessionReply,
    session_reply,
    streamed_session_head,
)
from internal_link.streams import STREAM_THRESHOLD, Streamed


def test_well_formed_calls_pass() -> None:
    assert SessionOpen.check(["h", 1, {"x-flare-device-id": "d"}, "msgpack"]).codec == "msgpack"
    assert SessionMessage.check(["h", 2, b"{}"]).data == b"{}"
    assert SessionClosed.check(["h", 3]).session == 3
    assert PushPoll.check(["h", 20.0]).wait == 20.0
    assert SessionReply.check([[b"a"], 1000]).close == 1000
    assert Push.check_all([[4, [b"a"], 0]]) == [Push(4, [b"a"], 0)]


@pytest.mark.parametrize(
    ("check", "payload"),
    [
        (SessionOpen.check, ["h", 1, {"X-Flare-Device-ID": "d"}, "json"]),  # names must be lower-case
        (SessionOpen.check, ["h", 1, {}, "xml"]),
        (SessionMessage.check, ["h", -1, b""]),
        (SessionMessage.check, ["h", 1, "text"]),
        (SessionClosed.check, ["h"]),
        (PushPoll.check, ["h", 3600]),
        (SessionReply.check, [["text"], 0]),
        (Push.check_all, [[1, [b"a"]]]),
    ],
)
def test_any_other_shape_is_refused(check: Any, payload: Any) -> None:
    with pytest.raises(BadPayload):
        check(payload)


def test_a_large_last_message_is_streamed_from_its_parts_unjoined() -> None:
    shared = bytes(STREAM_THRESHOLD)
    reply = session_reply([b"first"], (b"head", shared, b"tail"), 1000)
    assert isinstance(reply, Streamed)
    assert reply.parts[1] is shared  # the cached payload itself, no copy
    assert reply.nbytes == len(shared) + 8
    head = streamed_session_head(msgpack.unpackb(msgpack.packb(reply.meta, use_bin_type=True)))
    assert head == SessionReply([b"first"], 1000)


def test_a_small_reply_stays_one_frame_as_ever() -> None:
    assert session_reply([], (b"head", b"task", b"tail")) == SessionReply([b"headtasktail"], KEEP_OPEN)


def test_a_malformed_stream_head_is_refused() -> None:
    with pytest.raises(BadPayload):
        streamed_session_head([[b"a"], -1])
