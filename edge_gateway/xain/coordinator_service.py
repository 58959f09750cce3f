"""The gRPC service xain-sdk 0.6 participants call, `xain_proto.fl.Coordinator`, with no generated code.

Generated stubs check at import that the protobuf runtime has the major version they were made
with; building the descriptor here instead keeps the listener working with any protobuf 4+.
Field names, numbers and types are the wire contract (docs/XAIN.md); the file name is ours.

    handler = coordinator_handler({"Rendezvous": rendezvous, "Heartbeat": heartbeat, ...})
    server.add_generic_rpc_handlers((handler,))

Each behaviour is `(request, context) -> response` (or a coroutine function under `grpc.aio`),
taking and returning instances of the classes in `MESSAGES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "xain_proto.fl"
SERVICE = f"{PACKAGE}.Coordinator"

# enum RendezvousReply / enum State
ACCEPT, LATER = 0, 1
STANDBY, ROUND, FINISHED, READY, TRAINING = 0, 1, 2, 3, 4

_F = descriptor_pb2.FieldDescriptorProto
# message -> [(field, number, type, enum type or "")]
_MESSAGES: dict[str, list[tuple[str, int, int, str]]] = {
    "RendezvousRequest": [],
    "RendezvousResponse": [("reply", 1, _F.TYPE_ENUM, "RendezvousReply")],
    "HeartbeatRequest": [("state", 1, _F.TYPE_ENUM, "State"), ("round", 2, _F.TYPE_INT32, "")],
    "HeartbeatResponse": [("state", 1, _F.TYPE_ENUM, "State"), ("round", 2, _F.TYPE_INT32, "")],
    "StartTrainingRoundRequest": [],
    "StartTrainingRoundResponse": [("epochs", 1, _F.TYPE_INT32, ""), ("epoch_base", 2, _F.TYPE_INT32, "")],
    "EndTrainingRoundRequest": [
        ("participant_id", 1, _F.TYPE_STRING, ""),
        ("number_samples", 2, _F.TYPE_INT32, ""),
        ("metrics", 3, _F.TYPE_STRING, ""),
    ],
    "EndTrainingRoundResponse": [],
}
_ENUMS = {
    "RendezvousReply": [("ACCEPT", ACCEPT), ("LATER", LATER)],
    "State": [("STANDBY", STANDBY), ("ROUND", ROUND), ("FINISHED", FINISHED), ("READY", READY), ("TRAINING", TRAINING)],
}
# method -> (request message, response message); all unary-unary
METHODS = {
    "Rendezvous": ("RendezvousRequest", "RendezvousResponse"),
    "Heartbeat": ("HeartbeatRequest", "HeartbeatResponse"),
    "StartTrainingRound": ("StartTrainingRoundRequest", "StartTrainingRoundResponse"),
    "EndTrainingRound": ("EndTrainingRoundRequest", "EndTrainingRoundResponse"),
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="edgefl/xain_coordinator.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, enum in fields:
            added = message.field.add(name=field, number=number, type=kind, label=_F.LABEL_OPTIONAL)
            if enum:  # set only for enums: an empty type_name still counts as set
                added.type_name = f".{PACKAGE}.{enum}"
    for name, values in _ENUMS.items():
        enum_type = file.enum_type.add(name=name)
        for value, number in values:
            enum_type.value.add(name=value, number=number)
    service = file.service.add(name="Coordinator")
    for method, (request, response) in METHODS.items():
        service.method.add(name=method, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}")
    return file


def _message_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()  # our own pool: nothing else in the process can clash
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in _MESSAGES
    }


MESSAGES = _message_classes()


def coordinator_handler(behaviours: Mapping[str, Callable[[Any, Any], Any]]) -> grpc.GenericRpcHandler:
    """A generic handler serving `behaviours` (method name -> behaviour) under `SERVICE`."""
    unknown = set(behaviours) - set(METHODS)
    if unknown:
        raise ValueError(f"no such Coordinator methods: {sorted(unknown)}")
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=MESSAGES[METHODS[method][0]].FromString,
            response_serializer=MESSAGES[METHODS[method][1]].SerializeToString,
        )
        for method, behaviour in behaviours.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
