"""The result log's record format, without any file access: records <-> framed bytes.

A frame is a 13-byte header then the payload:

    magic b"eRL" | format 1 (u8) | kind (u8) | payload length (u32 LE) | CRC-32 (u32 LE) | payload

The CRC covers the first 9 header bytes and the payload, so a flipped bit anywhere (the length and
kind included) and a torn tail (a crash mid-append) are both caught. The payload is msgpack: a
result's tensors as `{dtype, shape, data}` binaries (`device_protocol.tensors`), never pickles.
Decoding returns the valid records up to the first bad frame and says where, and why, it stopped.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

from device_protocol.tensors import tensors_from_binary

MAGIC = b"eRL"
FORMAT = 1
_HEADER = struct.Struct("<3sBBII")
HEADER_SIZE = _HEADER.size
_CHECKED = HEADER_SIZE - 4  # the header bytes the CRC covers: all but the CRC itself
MAX_PAYLOAD = 2**32 - 1
# The dtypes `device_protocol.tensors.from_binary` reads back, little-endian.
_DTYPES = {"float32": "<f4", "float64": "<f8", "float16": "<f2"}


class Kind(IntEnum):
    RESULT = 1
    CHECKPOINTED = 2


@dataclass(frozen=True, eq=False)
class ResultRecord:
    """One accepted result: a device's update and weight for a job's model version."""

    job_id: str
    version: int
    task_id: str
    weight: float
    update: Mapping[str, np.ndarray]
    # How screening changed it (edge_gateway/robustness.py): the server adapts its bounds from these.
    clipped: bool = False
    capped: bool = False


@dataclass(frozen=True)
class Checkpointed:
    """The server has checkpointed `job_id` up to `version`: its results up to there are obsolete."""

    job_id: str
    version: int


Record = ResultRecord | Checkpointed


@dataclass(frozen=True)
class Decoded:
    """What a buffer held: the valid records, the offset just past the last of them, and why
    decoding stopped before the end of the buffer (None when it did not)."""

    records: list[Record]
    end: int
    problem: str | None


def encode_record(record: Record) -> bytes:
    """One record as a frame, ready to append."""
    if isinstance(record, ResultRecord):
        body: dict[str, Any] = {
            "j": record.job_id,
            "v": record.version,
            "t": record.task_id,
            "w": float(record.weight),
            "u": {name: _binary(arr) for name, arr in record.update.items()},
            "s": (record.clipped, record.capped),
        }
        kind = Kind.RESULT
    else:
        body = {"j": record.job_id, "v": record.version}
        kind = Kind.CHECKPOINTED
    payload: bytes = msgpack.packb(body, use_bin_type=True)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"record of {len(payload)} bytes is larger than a frame can hold")
    head = _HEADER.pack(MAGIC, FORMAT, kind, len(payload), 0)[:_CHECKED]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def _binary(array: np.ndarray) -> dict[str, Any]:
    """`{dtype, shape, data}` as `tensors.to_binary` makes it, but `data` a view of the array:
    msgpack copies it once into the payload (tobytes would copy a 4 MB update once more)."""
    arr = np.asarray(array)
    if arr.dtype.name not in _DTYPES:
        raise ValueError(f"unsupported dtype {arr.dtype.name}")
    flat = np.ascontiguousarray(arr.astype(_DTYPES[arr.dtype.name], copy=False).reshape(-1))
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": flat.view(np.uint8).data}


def decode_records(buf: bytes | memoryview, start: int = 0) -> Decoded:
    """Decode frames from `start` until the end of `buf` or the first bad frame."""
    view = memoryview(buf)
    records: list[Record] = []
    pos = start
    while pos < len(view):
        record, size, problem = _decode_one(view, pos)
        if record is None:
            return Decoded(records, pos, problem)
        records.append(record)
        pos += size
    return Decoded(records, pos, None)


def find_next_record(buf: bytes, after: int) -> int | None:
    """The offset of the first whole, valid frame that starts after `after`, if any.

    Used past a bad frame to tell a torn tail (nothing valid follows) from a damaged record in
    the middle of a segment (valid ones follow, and are still owed to their devices).
    """
    view = memoryview(buf)
    pos = buf.find(MAGIC, after + 1)
    while pos != -1:
        if _decode_one(view, pos)[0] is not None:
            return pos
        pos = buf.find(MAGIC, pos + 1)
    return None


def _decode_one(view: memoryview, pos: int) -> tuple[Record | None, int, str]:
    """(record, frame size, "") or (None, 0, why it is not a valid frame)."""
    if len(view) - pos < HEADER_SIZE:
        return None, 0, "torn header"
    magic, fmt, kind, length, crc = _HEADER.unpack_from(view, pos)
    if magic != MAGIC or fmt != FORMAT:
        return None, 0, "bad magic or format"
    end = pos + HEADER_SIZE + length
    if end > len(view):
        return None, 0, "torn record"
    payload = view[pos + HEADER_SIZE : end]
    if zlib.crc32(payload, zlib.crc32(view[pos : pos + _CHECKED])) != crc:
        return None, 0, "checksum mismatch"
    try:
        record = _record(kind, msgpack.unpackb(payload, raw=False))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        # A frame whose checksum holds but whose payload does not parse was written by other code.
        return None, 0, f"bad payload: {exc}"
    return record, end - pos, ""


def _record(kind: int, body: Any) -> Record:
    if not isinstance(body, dict):
        raise ValueError("payload is not a map")
    job_id, version = body["j"], body["v"]
    if not isinstance(job_id, str) or type(version) is not int:
        raise ValueError("job id or version of the wrong type")
    if kind == Kind.CHECKPOINTED:
        return Checkpointed(job_id, version)
    if kind != Kind.RESULT:
        raise ValueError(f"unknown record kind {kind}")
    task_id, weight, update = body["t"], body["w"], body["u"]
    if not isinstance(task_id, str) or not isinstance(weight, float) or not isinstance(update, dict):
        raise ValueError("task id, weight or update of the wrong type")
    screened = body.get("s", (False, False))  # records written before screening have none
    if not (isinstance(screened, list | tuple) and len(screened) == 2 and all(type(s) is bool for s in screened)):
        raise ValueError("screening flags of the wrong type")
    return ResultRecord(job_id, version, task_id, weight, tensors_from_binary(update), *screened)
