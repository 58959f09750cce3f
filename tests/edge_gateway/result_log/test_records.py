"""The record format alone (no files): round trip, any torn tail, any flipped bit."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_gateway.result_log.records import (
    HEADER_SIZE,
    MAGIC,
    Checkpointed,
    Record,
    ResultRecord,
    decode_records,
    encode_record,
    find_next_record,
)

from .records_helpers import same_records

_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    elements=st.floats(width=32, allow_nan=False),
)
_text = st.text(max_size=12)
_results = st.builds(
    ResultRecord,
    job_id=_text,
    version=st.integers(0, 2**40),
    task_id=_text,
    weight=st.floats(allow_nan=False),
    update=st.dictionaries(_text, _arrays, max_size=3),
)
_marks = st.builds(Checkpointed, job_id=_text, version=st.integers(0, 2**40))
_logs = st.lists(st.one_of(_results, _marks), min_size=1, max_size=6)


def _encode_all(records: list[Record]) -> tuple[bytes, list[int]]:
    """The log's bytes and each record's start offset (plus the end)."""
    frames = [encode_record(r) for r in records]
    starts = [0]
    for frame in frames:
        starts.append(starts[-1] + len(frame))
    return b"".join(frames), starts


@given(_logs)
def test_round_trip(records: list[Record]) -> None:
    buf, _ = _encode_all(records)
    decoded = decode_records(buf)
    assert decoded.problem is None
    assert decoded.end == len(buf)
    same_records(decoded.records, records)


@given(_logs, st.data())
def test_any_truncation_keeps_the_whole_records_before_it(records: list[Record], data: st.DataObject) -> None:
    buf, starts = _encode_all(records)
    cut = data.draw(st.integers(0, len(buf) - 1))
    decoded = decode_records(buf[:cut])
    whole = sum(1 for end in starts[1:] if end <= cut)
    same_records(decoded.records, records[:whole])
    assert decoded.end == starts[whole]
    # Cut exactly between records, the shorter log is a valid log; anywhere else it is torn.
    assert (decoded.problem is None) == (cut == starts[whole])
    assert find_next_record(buf[:cut], decoded.end) is None


@given(_logs, st.data())
def test_any_flipped_bit_stops_decoding_at_its_record(records: list[Record], data: st.DataObject) -> None:
    buf, starts = _encode_all(records)
    bit = data.draw(st.integers(0, len(buf) * 8 - 1))
    flipped = bytearray(buf)
    flipped[bit // 8] ^= 1 << (bit % 8)
    damaged = max(i for i, start in enumerate(starts[:-1]) if start <= bit // 8)
    decoded = decode_records(bytes(flipped))
    same_records(decoded.records, records[:damaged])
    assert decoded.end == starts[damaged]
    assert decoded.problem is not None
    # The records after the damaged one are found again.
    if damaged + 1 < len(records):
        assert find_next_record(bytes(flipped), decoded.end) == starts[damaged + 1]


def test_decoding_starts_at_an_offset_and_resumes_after_damage() -> None:
    records: list[Record] = [
        ResultRecord("job", 3, f"t{i}", 2.0, {"w": np.full((2, 2), i, np.float32)}) for i in range(3)
    ]
    buf, starts = _encode_all(records)
    damaged = bytearray(buf)
    damaged[starts[1] + HEADER_SIZE + 5] ^= 0xFF
    first = decode_records(bytes(damaged))
    assert first.problem == "checksum mismatch" and first.end == starts[1]
    resume = find_next_record(bytes(damaged), first.end)
    assert resume == starts[2]
    rest = decode_records(bytes(damaged), resume)
    same_records(rest.records, records[2:])


def test_a_frame_with_a_valid_checksum_but_no_record_inside_is_refused() -> None:
    payload = b"\x93\x01\x02\x03"  # msgpack [1, 2, 3]: a valid payload, not a record
    head = struct.pack("<3sBBI", MAGIC, 1, 1, len(payload))
    frame = head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload
    decoded = decode_records(frame)
    assert decoded.records == [] and decoded.end == 0
    assert decoded.problem is not None and decoded.problem.startswith("bad payload")


def test_an_unknown_dtype_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="unsupported dtype"):
        encode_record(ResultRecord("j", 1, "t", 1.0, {"w": np.zeros(2, np.int64)}))


def test_arrays_of_any_layout_come_back_equal() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    update: dict[str, np.ndarray] = {
        "transposed": base.T,
        "strided": base[:, ::2],
        "big_endian": base.astype(">f4"),
        "f64": base.astype(np.float64),
        "f16": base.astype(np.float16),
        "scalar": np.array(7.5, dtype=np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    (record,) = decode_records(encode_record(ResultRecord("j", 1, "t", 1.0, update))).records
    assert isinstance(record, ResultRecord)
    for name, arr in update.items():
        got = record.update[name]
        assert got.dtype.name == arr.dtype.name and got.shape == arr.shape, name
        assert np.array_equal(got, arr), name
