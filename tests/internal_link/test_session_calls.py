"""The proxy <-> leaf session calls refuse any other shape with BAD_PAYLOAD."""

from __future__ import annotations

from typing import Any

import pytest

from internal_link.calls import BadPayload
from internal_link.sessions import Push, PushPoll, SessionClosed, SessionMessage, SessionOpen, SessionReply


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
