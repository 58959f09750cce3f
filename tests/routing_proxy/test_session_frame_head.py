"""A streamed message's frame head is the head `websockets` writes for the same whole frame."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from routing_proxy.sessions.frame_head import data_frame_head


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 6_300_000])
@pytest.mark.parametrize("binary", [False, True])
def test_the_head_is_the_one_of_the_whole_unmasked_frame(length: int, binary: bool) -> None:
    payload = b"x" * length
    whole = Frame(Opcode.BINARY if binary else Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    head = data_frame_head(length, binary)
    assert head + payload == whole


def test_a_negative_length_is_a_bug() -> None:
    with pytest.raises(ValueError, match="cannot be"):
        data_frame_head(-1, binary=True)
