"""The `.npy` codec of xain-sdk 0.8 bodies: numpy's own files pass, everything else is UpdateRejected."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from device_protocol.errors import UpdateRejected
from device_protocol.xain.npy_vector import MAX_HEADER_BYTES, flat_vector_from_npy, npy_from_flat_vector

N = 6


def npy(array: np.ndarray, version: tuple[int, int] | None = None, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=allow_pickle)
    return buf.getvalue()


def with_header(header: bytes, data: bytes = b"", version: bytes = b"\x01\x00") -> bytes:
    length = struct.pack("<H" if version == b"\x01\x00" else "<I", len(header))
    return b"\x93NUMPY" + version + length + header + data


VECTOR = np.linspace(-1, 1, N, dtype=np.float32)
GOOD = npy(VECTOR)


def refused(data: bytes, expected_length: int = N) -> str:
    with pytest.raises(UpdateRejected) as info:
        flat_vector_from_npy(data, expected_length)
    return info.value.message


@pytest.mark.parametrize("version", [None, (1, 0), (2, 0)])
def test_numpy_files_round_trip(version: tuple[int, int] | None) -> None:
    vector = flat_vector_from_npy(npy(VECTOR, version), N)
    assert vector.dtype == np.dtype("<f4") and np.array_equal(vector, VECTOR)
    assert np.array_equal(flat_vector_from_npy(npy_from_flat_vector(VECTOR), N), VECTOR)


def test_np_save_output_is_accepted_and_ours_reads_with_np_load() -> None:
    buf = io.BytesIO()
    np.save(buf, VECTOR)
    assert np.array_equal(flat_vector_from_npy(buf.getvalue(), N), VECTOR)
    ours = np.load(io.BytesIO(npy_from_flat_vector(VECTOR.astype(np.float64))), allow_pickle=False)
    assert ours.dtype == np.dtype("<f4") and np.array_equal(ours, VECTOR)


def test_an_empty_model_is_an_empty_vector() -> None:
    assert flat_vector_from_npy(npy(np.zeros(0, np.float32)), 0).shape == (0,)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "magic"),
        (b"PK\x03\x04" + GOOD, "magic"),  # an .npz
        (GOOD[:9], "preamble"),
        (GOOD[:40], "inside its header"),
        (GOOD[:-1], "needs"),
        (GOOD + b"\x00", "needs"),
        (npy(VECTOR.astype(">f4")), "'>f4'"),
        (npy(VECTOR.astype(np.float64)), "'<f8'"),
        (npy(VECTOR.astype(np.float16)), "'<f2'"),
        (npy(np.arange(N, dtype=np.int32)), "'<i4'"),
        (npy(np.array([1, "a", None] * 2, dtype=object), allow_pickle=True), "'|O'"),
        (npy(VECTOR.reshape(2, 3)), "shape (2, 3)"),
        (npy(VECTOR.reshape(1, N)), "shape (1, 6)"),
        (npy(np.asfortranarray(VECTOR.reshape(2, 3))), "fortran_order"),
        (npy(np.zeros(N + 1, np.float32)), "shape (7,)"),
        (npy(np.zeros(N, [("a", "<f4")])), "dtype"),
        (npy(np.array([1, 2, np.nan, 4, 5, 6], np.float32)), "NaN or Inf"),
        (npy(np.array([1, 2, np.inf, 4, 5, 6], np.float32)), "NaN or Inf"),
        (with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (6,)}\n", version=b"\x03\x00"), "version 3.0"),
        (with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (True,)}\n", b"\0" * 4, b"\x01\x00"), "shape"),
        (with_header(b"{'descr': '<f4', 'fortran_order': 0, 'shape': (6,)}\n", b"\0" * 24), "fortran_order"),
        (with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}\n"), "exactly"),
        (with_header(b"['descr', '<f4']\n"), "exactly"),
        (with_header(b"__import__('os').system('true')\n"), "not a literal dict"),
        (with_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (6,)}\xff\n"), "not a literal dict"),
        (with_header(b"(" * 300 + b")" * 300), "not a literal dict"),
        (with_header(b" " * (MAX_HEADER_BYTES + 1)), "header of"),
        (b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1), "header of"),
    ],
)
def test_refusals_say_why(data: bytes, message: str) -> None:
    assert message in refused(data)


def test_huge_shape_header_is_refused_before_any_allocation() -> None:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000000,)}\n"
    assert "shape" in refused(with_header(header), expected_length=10)
    # Even when the caller expects that many values, the body's length gives it away.
    assert "needs" in refused(with_header(header), expected_length=10_000_000_000_000)


def _outcome(data: bytes) -> np.ndarray | None:
    try:
        return flat_vector_from_npy(data, N)
    except UpdateRejected:
        return None


@given(st.binary(max_size=300))
@example(b"\x93NUMPY\x01\x00\x00\x00")
@example(b"\x93NUMPY\x01\x00\x04\x00{}\n\n")
def test_random_bytes_are_refused(data: bytes) -> None:
    assert _outcome(data) is None


@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_files_are_refused_or_read_as_a_vector_of_the_model_length(flips: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD)
    for index, value in flips:
        data[index] = value
    vector = _outcome(bytes(data))
    assert vector is None or (vector.shape == (N,) and vector.dtype == np.dtype("<f4") and np.isfinite(vector).all())


@given(st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8))
def test_truncated_or_spliced_files_are_refused(cut: int, extra: bytes) -> None:
    assert _outcome(GOOD[:cut]) is None
    assert _outcome(GOOD + extra) is None


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
header_values = scalars | st.lists(scalars, max_size=3).map(tuple) | st.lists(scalars, max_size=3)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "descr": st.sampled_from(["<f4", ">f4", "|O", "<f8", "<U4", "|V4"]) | header_values,
            "fortran_order": header_values,
            "shape": st.tuples(st.integers(-2, 10**12)) | header_values,
            "extra": header_values,
        },
    )
)
@example({"descr": "<f4", "fortran_order": False, "shape": (N,)})
@example({"descr": "<f4", "fortran_order": False, "shape": (N, 1)})
@example({"descr": "<f4", "fortran_order": None, "shape": (N,)})
def test_any_literal_header_is_refused_unless_it_is_exactly_the_model_vector(header: dict[str, object]) -> None:
    data = with_header(repr(header).encode("ascii", "backslashreplace") + b"\n", b"\0" * 4 * N)
    vector = _outcome(data)
    exact = header == {"descr": "<f4", "fortran_order": False, "shape": (N,)} and type(header["shape"][0]) is int  # type: ignore[index]
    assert (vector is not None) == exact
