"""Our runtime-built `xain_proto.fl.Coordinator` messages against bytes xain-proto 0.6 itself writes.

The expected bytes were produced by xain-proto 0.6.0's generated classes (protobuf 3.20.3).
"""

from __future__ import annotations

import pytest

from edge_gateway.xain.coordinator_service import (
    FINISHED,
    LATER,
    MESSAGES,
    METHODS,
    READY,
    coordinator_handler,
)


@pytest.mark.parametrize(
    ("message", "fields", "wire"),
    [
        ("RendezvousRequest", {}, b""),
        ("RendezvousResponse", {"reply": LATER}, b"\x08\x01"),
        ("HeartbeatRequest", {"state": READY, "round": -1}, b"\x08\x03\x10" + b"\xff" * 9 + b"\x01"),
        ("HeartbeatResponse", {"state": FINISHED, "round": 7}, b"\x08\x02\x10\x07"),
        ("StartTrainingRoundResponse", {"epochs": 2, "epoch_base": 10}, b"\x08\x02\x10\n"),
        (
            "EndTrainingRoundRequest",
            {"participant_id": "3f2a", "number_samples": 600, "metrics": "[]"},
            b"\n\x043f2a\x10\xd8\x04\x1a\x02[]",
        ),
        ("EndTrainingRoundResponse", {}, b""),
    ],
)
def test_messages_encode_and_decode_as_xain_proto_does(message: str, fields: dict[str, object], wire: bytes) -> None:
    cls = MESSAGES[message]
    assert cls(**fields).SerializeToString() == wire
    decoded = cls.FromString(wire)
    assert {name: getattr(decoded, name) for name in fields} == fields


def test_every_method_has_its_messages_and_unknown_methods_are_refused() -> None:
    assert set(METHODS) == {"Rendezvous", "Heartbeat", "StartTrainingRound", "EndTrainingRound"}
    assert all(request in MESSAGES and response in MESSAGES for request, response in METHODS.values())
    with pytest.raises(ValueError, match="Rendevous"):
        coordinator_handler({"Rendevous": lambda request, context: None})
