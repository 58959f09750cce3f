"""The flat model vector as `.npy` bytes: what xain-sdk 0.8 participants download and upload.

Reading is strict on purpose: only format versions 1.0 and 2.0, a bounded header that is a plain
literal dict with exactly `descr`, `fortran_order` and `shape`, `descr` little-endian float32,
`fortran_order` False, `shape` `(n,)` with n the model's length, no trailing bytes. Nothing here
can unpickle: object arrays are refused at the header, before any data is looked at.
"""

from __future__ import annotations

import ast
import io
import struct
from typing import Any

import numpy as np

from ..errors import UpdateRejected
from .flat_weights import checked_vector

MAGIC = b"\x93NUMPY"
DESCR = "<f4"
# numpy writes about 60 bytes for a 1-D header, padded to 64 (or 128); nothing honest needs more.
MAX_HEADER_BYTES = 1024
# Version -> how the header length is stored after the magic and version bytes.
_LENGTH_FORMATS = {(1, 0): "<H", (2, 0): "<I"}


def flat_vector_from_npy(data: bytes, expected_length: int) -> np.ndarray:
    """The read-only float32 vector in `data`, or UpdateRejected saying what is wrong with it."""
    header, offset = _header(data)
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise UpdateRejected("npy header must be a dict of exactly descr, fortran_order and shape")
    if header["descr"] != DESCR:
        raise UpdateRejected(f"npy dtype {_quote(header['descr'])}, expected {DESCR!r} (little-endian float32)")
    if header["fortran_order"] is not False:
        raise UpdateRejected("npy fortran_order must be False")
    shape = header["shape"]
    if not (isinstance(shape, tuple) and len(shape) == 1 and type(shape[0]) is int and shape[0] == expected_length):
        raise UpdateRejected(f"npy shape {_quote(header['shape'])}, the model needs ({expected_length},)")
    needed = offset + 4 * expected_length
    if len(data) != needed:
        raise UpdateRejected(f"npy body is {len(data)} bytes, a ({expected_length},) float32 array needs {needed}")
    array = np.frombuffer(data, dtype=DESCR, count=expected_length, offset=offset)
    return checked_vector(array, expected_length, "npy")


def npy_from_flat_vector(vector: np.ndarray) -> bytes:
    """`vector` as version 1.0 `.npy` bytes of a little-endian float32 1-D array."""
    array = np.asarray(vector)
    if array.ndim != 1:
        raise ValueError(f"a flat vector is 1-D, got shape {list(array.shape)}")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array.astype(DESCR, copy=False), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _header(data: bytes) -> tuple[Any, int]:
    """(the header's literal value, offset of the array data)."""
    if data[: len(MAGIC)] != MAGIC:
        raise UpdateRejected("not npy data: missing the \\x93NUMPY magic")
    version = tuple(data[len(MAGIC) : len(MAGIC) + 2])
    length_format = _LENGTH_FORMATS.get((version[0], version[1])) if len(version) == 2 else None
    if length_format is None:
        raise UpdateRejected(f"npy format version {'.'.join(map(str, version)) or 'missing'}, expected 1.0 or 2.0")
    start = len(MAGIC) + 2 + struct.calcsize(length_format)
    if len(data) < start:
        raise UpdateRejected("npy data truncated inside its preamble")
    (header_length,) = struct.unpack_from(length_format, data, len(MAGIC) + 2)
    if header_length > MAX_HEADER_BYTES:
        raise UpdateRejected(f"npy header of {header_length} bytes, at most {MAX_HEADER_BYTES} are accepted")
    if len(data) < start + header_length:
        raise UpdateRejected("npy data truncated inside its header")
    raw = data[start : start + header_length]
    try:
        # A bounded ASCII literal: literal_eval builds constants and containers only, never calls.
        value = ast.literal_eval(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UpdateRejected("npy header is not a literal dict") from None
    return value, start + header_length


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
