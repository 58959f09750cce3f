"""Reading the pickled weights xain-sdk 0.6 participants put in object storage, through an allow-list.

The SDK stores `pickle.dumps(weights)` with `weights` type-checked to be one `numpy.ndarray` (its
default protocol: 3 on Python 3.6/3.7, 4 later). A plain pickle load would run whatever callable
an uploader names, so this module never hands the pickle machinery a real callable:

1. Before anything is built, every opcode is checked against the few that pickles of a numeric
   ndarray use under protocols 2-5 (numpy 1.x and 2.x alike): no INST/OBJ/NEWOBJ, no extension
   codes or persistent ids, no list/dict/set building, no out-of-band buffers, no text protocols,
   nothing after STOP.
2. `find_class` answers only the globals those pickles name (`numpy.core.multiarray._reconstruct`
   and `numpy._core...`, `numpy.ndarray`, `numpy.dtype`, `numpy.core.numeric._frombuffer`, and for
   protocol 2's bytes `_codecs.encode` / `__builtin__.bytes`), each with a stand-in of ours that
   checks its arguments and state as plain data. numpy's own `__setstate__` never runs: arrays are
   made with `numpy.frombuffer` once shape, dtype and byte count agree.
3. The result must be one array of a real numeric dtype (bool, int, uint, float); anything else,
   including numpy scalars, object or structured dtypes and subclasses, is refused.

Every refusal is `UpdateRejected`; the input size is bounded by the caller.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections.abc import Callable
from typing import Any, Literal, NoReturn

import numpy as np

from ..errors import UpdateRejected

# Opcodes of `pickle.dumps(ndarray, protocol)` for protocols 2-5 under numpy 1.26 and 2.x
# (tests/xain check every one of them is needed or is a wider form of one that is). Not the
# 4-byte memo opcodes: one array needs a handful of memo slots, and `LONG_BINPUT 2**31` alone
# makes CPython's unpickler allocate and clear a memo table of 2**32 pointers.
ALLOWED_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP",
        "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
        "MARK", "TUPLE", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "BINPUT", "MEMOIZE", "BINGET",
        "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1",
        "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
        "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8",
    }
)  # fmt: skip
# dtype codes numpy pickles builtin real numeric types as.
DTYPE_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
MAX_DIMS = 64  # numpy's own limit


class _Refused(Exception):
    pass


class _Constructor:
    """What `find_class` hands out: calls one checking function, and takes no pickled state."""

    __slots__ = ("_build", "_name")

    def __init__(self, name: str, build: Callable[..., object]) -> None:
        self._name = name
        self._build = build

    def __call__(self, *args: object) -> object:
        return self._build(*args)

    def __setstate__(self, state: object) -> NoReturn:
        raise _Refused(f"state for {self._name}")


class _DtypeStandIn:
    """`numpy.dtype(code, align, copy)` then its pickled state; `.dtype` once both were valid."""

    __slots__ = ("_code", "dtype")

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        if not (type(code) is str and code in DTYPE_CODES and align is False and type(copy) is bool):
            raise _Refused(f"dtype {code!r:.40}")
        self._code = code
        self.dtype: np.dtype[Any] | None = None

    def __setstate__(self, state: object) -> None:
        # (version 3, byte order, no subarray, no names, no fields, elsize -1, alignment -1, flags 0):
        # the only state numpy writes for a builtin numeric dtype.
        if self.dtype is not None or not isinstance(state, tuple) or len(state) != 8:
            raise _Refused("dtype state")
        version, order, *rest = state
        if not (type(version) is int and version == 3 and type(order) is str and order in ("<", ">", "|", "=")):
            raise _Refused("dtype state")
        if any(type(a) is not type(b) or a != b for a, b in zip(rest, _PLAIN_DTYPE_REST, strict=True)):
            raise _Refused("dtype state")
        self.dtype = np.dtype(order.replace("|", "=") + self._code)


_PLAIN_DTYPE_REST = (None, None, None, -1, -1, 0)


class _ArrayStandIn:
    """`_reconstruct(ndarray, (0,), b'b')` then its pickled state; `.array` once both were valid."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) != 5:
            raise _Refused("array state")
        version, shape, dtype, fortran, raw = state
        if not (type(version) is int and version == 1 and type(fortran) is bool):
            raise _Refused("array state")
        self.array = _make_array(raw, dtype, shape, "F" if fortran else "C")


class _NdarrayMarker:
    """Stands for `numpy.ndarray`: only `_reconstruct` accepts it; it cannot be called or given state."""

    __slots__ = ()

    def __setstate__(self, state: object) -> NoReturn:
        raise _Refused("state for numpy.ndarray")


_NDARRAY = _NdarrayMarker()


def _reconstruct(subtype: object, shape: object, code: object) -> _ArrayStandIn:
    if subtype is not _NDARRAY or shape != (0,) or code != b"b":
        raise _Refused("_reconstruct arguments")
    return _ArrayStandIn()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _ArrayStandIn:
    if not isinstance(buffer, bytes | bytearray) or type(order) is not str or order not in ("C", "F"):
        raise _Refused("_frombuffer arguments")
    made = _ArrayStandIn()
    made.array = _make_array(bytes(buffer), dtype, shape, "F" if order == "F" else "C")
    return made


def _latin1(text: object, encoding: object) -> bytes:
    """Protocol 2 writes bytes as `_codecs.encode(<str>, 'latin1')`."""
    if type(text) is not str or encoding != "latin1":
        raise _Refused("_codecs.encode arguments")
    return text.encode("latin1")


def _empty_bytes() -> bytes:
    """Protocol 2 writes an empty bytes as `bytes()`."""
    return b""


def _make_array(raw: object, dtype: object, shape: object, order: Literal["C", "F"]) -> np.ndarray:
    if not (isinstance(dtype, _DtypeStandIn) and dtype.dtype is not None and type(raw) is bytes):
        raise _Refused("array dtype or data")
    if not (type(shape) is tuple and len(shape) <= MAX_DIMS and all(type(n) is int and n >= 0 for n in shape)):
        raise _Refused("array shape")
    if math.prod(shape) * dtype.dtype.itemsize != len(raw):
        raise _Refused(f"array data of {len(raw)} bytes for shape {shape} of {dtype.dtype.str}")
    dims = tuple(int(n) for n in shape)
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(dims, order=order)


_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Constructor("numpy.dtype", _DtypeStandIn),
    ("_codecs", "encode"): _Constructor("_codecs.encode", _latin1),
    ("__builtin__", "bytes"): _Constructor("bytes", _empty_bytes),
    ("builtins", "bytes"): _Constructor("bytes", _empty_bytes),
}
for _core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x names
    _GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _Constructor("_reconstruct", _reconstruct)
    _GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _Constructor("_frombuffer", _frombuffer)


class AllowListUnpickler(pickle.Unpickler):
    """An Unpickler whose globals are the stand-ins above and which refuses persistent ids.

    Use `load_array`, which also checks opcodes first and the result last.
    """

    def find_class(self, module_name: str, global_name: str, /) -> Any:
        found = _GLOBALS.get((module_name, global_name))
        if found is None:
            raise _Refused(f"global {module_name:.60}.{global_name:.60}")
        return found

    def persistent_load(self, pid: Any, /) -> NoReturn:
        raise _Refused("persistent id")


def load_array(data: bytes, max_bytes: int) -> np.ndarray:
    """The one numeric ndarray pickled in `data` (read-only), or UpdateRejected."""
    if len(data) > max_bytes:
        raise UpdateRejected(f"pickle of {len(data)} bytes, at most {max_bytes} are accepted")
    try:
        _check_opcodes(data)
        made = AllowListUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise UpdateRejected(f"pickle refused: {exc}") from None
    except Exception as exc:  # whatever else untrusted bytes make the unpickler raise is a refusal too
        raise UpdateRejected(f"not a pickled numpy array ({type(exc).__name__})") from None
    if not isinstance(made, _ArrayStandIn) or made.array is None:
        raise UpdateRejected(f"pickle holds {type(made).__name__}, expected one numpy array")
    return made.array


def _check_opcodes(data: bytes) -> None:
    if len(data) < 2 or data[0] != pickle.PROTO[0] or not 2 <= data[1] <= 5:
        raise _Refused("not a protocol 2-5 pickle")
    end = 0
    for opcode, _arg, position in pickletools.genops(data):
        if opcode.name not in ALLOWED_OPCODES:
            raise _Refused(f"opcode {opcode.name}")
        end = (position if position is not None else len(data)) + 1  # None only for unseekable files
    if end != len(data):
        raise _Refused("bytes after the pickle's end")
