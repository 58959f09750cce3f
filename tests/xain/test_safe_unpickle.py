"""The allow-list unpickler for xain-sdk 0.6 objects: numeric ndarrays load, nothing else runs.

Each exploit below is first shown to be live (a plain unpickler in a child process does create the
file it names), then shown to be refused by `load_array` with the file left uncreated.
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import io
import pickle
import pickletools
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from device_protocol.errors import UpdateRejected
from device_protocol.xain.safe_unpickle import ALLOWED_OPCODES, AllowListUnpickler, load_array

LIMIT = 1 << 20
NUMERIC = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]


def refused(data: bytes) -> str:
    with pytest.raises(UpdateRejected) as info:
        load_array(data, LIMIT)
    return info.value.message


def text(value: str) -> bytes:
    """BINUNICODE: a string opcode every protocol 2+ pickle may use."""
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# --- what must load -------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("code", NUMERIC)
@pytest.mark.parametrize("order", ["<", ">"])
def test_arrays_of_every_numeric_dtype_load_under_protocols_2_to_5(protocol: int, code: str, order: str) -> None:
    for shape in [(0,), (7,), (2, 3), (), (3, 0, 2)]:
        array = (np.arange(int(np.prod(shape))) % 3).astype(order + code if code not in ("?", "i1", "u1") else code)
        array = array.reshape(shape)
        back = load_array(pickle.dumps(array, protocol=protocol), LIMIT)
        assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


def test_fortran_ordered_and_large_arrays_load() -> None:
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    for protocol in (2, 3, 4, 5):
        assert np.array_equal(load_array(pickle.dumps(fortran, protocol=protocol), LIMIT), fortran)
    big = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)  # FRAME and BINBYTES
    for protocol in (2, 3, 4, 5):
        assert np.array_equal(load_array(pickle.dumps(big, protocol=protocol), 4 * LIMIT), big)


@given(
    hnp.arrays(
        st.sampled_from(NUMERIC).map(np.dtype) | hnp.floating_dtypes(endianness="?"),
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    ),
    st.integers(2, 5),
)
def test_any_numeric_array_round_trips(array: np.ndarray, protocol: int) -> None:
    back = load_array(pickle.dumps(array, protocol=protocol), LIMIT)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array, equal_nan=array.dtype.kind == "f")


def test_every_allowed_opcode_is_used_by_numpy_or_a_wider_form_of_one_that_is() -> None:
    used = set()
    for code in NUMERIC:
        for shape in [(0,), (5,), (2, 3), (), (70_000,)]:
            for protocol in (2, 3, 4, 5):
                data = pickle.dumps(np.ones(shape, code), protocol=protocol)
                used |= {op.name for op, _, _ in pickletools.genops(data)}
    wider_forms = {"BININT2", "LONG1", "BINBYTES8", "BINUNICODE8"}
    assert used <= ALLOWED_OPCODES
    assert ALLOWED_OPCODES - used <= wider_forms


# --- what must not --------------------------------------------------------------------------------


def exploits(target: Path) -> dict[str, bytes]:
    """Pickles that create `target` when loaded by a plain unpickler."""
    path = str(target)
    return {
        "protocol 0 GLOBAL builtins.open": f"cbuiltins\nopen\n(V{path}\nVw\ntR.".encode(),
        "protocol 0 INST builtins.open": f"(V{path}\nVw\nibuiltins\nopen\n.".encode(),
        "protocol 2 GLOBAL builtins.open": b"\x80\x02cbuiltins\nopen\n(" + text(path) + text("w") + b"tR.",
        "protocol 2 GLOBAL os.system": b"\x80\x02cos\nsystem\n" + text(f"touch {path}") + b"\x85R.",
        "protocol 2 GLOBAL builtins.exec": b"\x80\x02cbuiltins\nexec\n" + text(f"open({path!r}, 'w')") + b"\x85R.",
        "protocol 4 STACK_GLOBAL builtins.exec": b"\x80\x04"
        + text("builtins")
        + text("exec")
        + b"\x93"
        + text(f"open({path!r}, 'w')")
        + b"\x85R.",
        "protocol 4 INST builtins.open": b"\x80\x04(" + text(path) + text("w") + b"ibuiltins\nopen\n.",
        "protocol 2 OBJ builtins.open": b"\x80\x02(cbuiltins\nopen\n" + text(path) + text("w") + b"o.",
        "protocol 2 numpy runstring": b"\x80\x02cnumpy.testing._private.utils\nrunstring\n("
        + text(f"open({path!r}, 'w')")
        + b"}tR.",
        "numpy array first, exploit after STOP": pickle.dumps(np.zeros(2, np.float32), protocol=2)
        + f"cbuiltins\nopen\n(V{path}\nVw\ntR.".encode(),
    }


EXPLOIT_NAMES = list(exploits(Path("x")))


@pytest.mark.parametrize("name", EXPLOIT_NAMES)
def test_exploit_is_live_under_a_plain_unpickler(name: str, tmp_path: Path) -> None:
    target = tmp_path / "created"
    payload = exploits(target)[name]
    if name.startswith("numpy array first"):  # a reader that goes on after the first STOP runs the rest
        payload = payload[len(pickle.dumps(np.zeros(2, np.float32), protocol=2)) :]
    child = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=payload,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert target.exists(), child.stderr.decode()[-500:]


@pytest.mark.parametrize("name", EXPLOIT_NAMES)
def test_exploit_is_refused_and_creates_nothing(name: str, tmp_path: Path) -> None:
    target = tmp_path / "created"
    refused(exploits(target)[name])
    assert not target.exists()


@pytest.mark.parametrize("name", [n for n in EXPLOIT_NAMES if n.startswith("protocol 2 GLOBAL") or "STACK_GLOBAL" in n])
def test_find_class_alone_refuses_the_globals_of_exploits(name: str, tmp_path: Path) -> None:
    """The second barrier: with the opcode check skipped, the unpickler still names no real callable."""
    target = tmp_path / "created"
    with pytest.raises(Exception, match=r"global (builtins|os)\."):
        AllowListUnpickler(io.BytesIO(exploits(target)[name])).load()
    assert not target.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("numpy", "frombuffer"),
        ("numpy", "load"),
        ("numpy", "fromfile"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct_"),
        ("numpy.ma.core", "_mareconstruct"),
        ("numpy.matrixlib.defmatrix", "matrix"),
        ("numpy", "recarray"),
        ("builtins", "getattr"),
        ("builtins", "eval"),
        ("__builtin__", "eval"),
        ("copyreg", "_reconstructor"),
        ("subprocess", "Popen"),
        ("posix", "system"),
    ],
)
def test_no_other_global_is_named(module: str, name: str) -> None:
    assert f"global {module}.{name}" in refused(b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (np.float32(1.5), "scalar"),
        (np.int64(3), "scalar"),
        ([np.zeros(2, np.float32)], "EMPTY_LIST"),
        ({"w": np.zeros(2, np.float32)}, "EMPTY_DICT"),
        ((np.zeros(2, np.float32),), "holds tuple"),
        (np.array([1, "a"], dtype=object), "EMPTY_LIST"),
        (np.array([1, 2], dtype=object), "EMPTY_LIST"),  # the objects travel as a list
        (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "EMPTY_DICT"),  # the fields as a dict
        (np.zeros(2, np.complex64), "dtype 'c8'"),
        (np.zeros(2, "U3"), "dtype 'U3'"),
        (np.zeros(2, "M8[s]"), "dtype 'M8'"),
        (np.ma.masked_array([1.0, 2.0]), "_mareconstruct"),
        (np.zeros(2, np.float32).view(np.recarray), "recarray"),
        (b"bytes", "holds bytes"),
        (3, "holds int"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_everything_but_one_numeric_array_is_refused(obj: object, reason: str, protocol: int) -> None:
    message = refused(pickle.dumps(obj, protocol=protocol))
    # The reason differs between protocols for some objects; every refusal names one.
    assert message.startswith(("pickle refused", "pickle holds", "not a pickled numpy array"))
    if protocol == 4:
        assert reason in message


def test_out_of_band_buffers_and_persistent_ids_are_refused() -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(np.zeros(3, np.float32), protocol=5, buffer_callback=buffers.append)
    assert buffers and "NEXT_BUFFER" in refused(data)
    assert "BINPERSID" in refused(b"\x80\x02" + text("id") + b"Q.")
    # And without the opcode check: no persistent id resolves either.
    with pytest.raises(Exception, match="persistent id"):
        AllowListUnpickler(io.BytesIO(b"\x80\x02" + text("id") + b"Q.")).load()


RECONSTRUCT = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
DTYPE_F4 = b"cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
DTYPE_STATE = b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"


def array_pickle(shape: bytes, dtype_state: bytes = DTYPE_STATE, data: bytes = b"\x00" * 8, tail: bytes = b"") -> bytes:
    """A hand-made protocol-2 ndarray pickle: (version 1, shape, dtype, False, data)."""
    return (
        RECONSTRUCT
        + b"(K\x01"
        + shape
        + DTYPE_F4
        + dtype_state
        + b"\x89C"
        + bytes([len(data)])
        + data
        + b"tb"
        + tail
        + b"."
    )


def test_hand_made_array_pickle_loads() -> None:
    assert np.array_equal(load_array(array_pickle(b"K\x02\x85"), LIMIT), np.zeros(2, np.float32))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (array_pickle(b"J\x00\xe8\x76\x48\x85"), "array data of 8 bytes for shape (1215752192,)"),  # no allocation
        (array_pickle(b"K\x03\x85"), "array data of 8 bytes"),
        (array_pickle(b"(K\x02K\x01K\x01K\x01" + b"K\x01" * 70 + b"t"), "array shape"),
        (array_pickle(b"J\xff\xff\xff\xff\x85"), "array shape"),
        (array_pickle(b"K\x02\x85", DTYPE_STATE.replace(b"NNN", b"N" + text("a") + b"\x85N")), "dtype state"),
        (array_pickle(b"K\x02\x85", DTYPE_STATE.replace(b"K\x03", b"K\x04")), "dtype state"),
        (array_pickle(b"K\x02\x85", DTYPE_STATE.replace(b"K\x00t", b"K\x01t")), "dtype state"),
        (array_pickle(b"K\x02\x85", tail=b"(K\x01K\x02\x85N\x89C\x00tb"), "array state"),  # state set twice
        (array_pickle(b"K\x02\x85").replace(b"f4", b"O8"), "dtype 'O8'"),
        (array_pickle(b"K\x02\x85").replace(b"f4", b"V8"), "dtype 'V8'"),
        (RECONSTRUCT.replace(b"C\x01b", b"C\x01c") + b".", "_reconstruct arguments"),
        (b"\x80\x02cnumpy\nndarray\nK\x02\x85R.", "not a pickled numpy array (TypeError)"),
        (b"\x80\x02cnumpy\ndtype\nNN\x86b.", "state for numpy.dtype"),
        (b"\x80\x02cnumpy\nndarray\nNN\x86b.", "state for numpy.ndarray"),
        (b"\x80\x02c_codecs\nencode\n" + text("b") + text("zlib") + b"\x86R.", "_codecs.encode arguments"),
        (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.", "TypeError"),  # bytes(2**30): no allocation
        (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n.", "holds _Constructor"),
        (RECONSTRUCT + b".", "holds _ArrayStandIn"),
        (b"\x80\x02K\x01r\xff\xff\xff\x7f.", "opcode LONG_BINPUT"),  # a 2**32-slot memo table
        (b"\x80\x02K\x01j\xff\xff\xff\x7f.", "opcode LONG_BINGET"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.", "(ValueError)"),  # BINBYTES8 of 4 EiB
        (b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"K\x01.", "(UnpicklingError)"),  # FRAME of 4 EiB
        (b"\x80\x01K\x01.", "protocol 2-5"),
        (b"\x80\x06K\x01.", "protocol 2-5"),
        (b"", "protocol 2-5"),
        (b"\x80\x02K\x01", "not a pickled numpy array (ValueError)"),
        (b"\x80\x02K\x01.junk", "bytes after"),
    ],
)
def test_crafted_pickles_are_refused_with_their_reason(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_input_larger_than_the_bound_is_refused_unread() -> None:
    data = pickle.dumps(np.zeros(1000, np.float32), protocol=4)
    with pytest.raises(UpdateRejected, match="at most 100 are accepted"):
        load_array(data, 100)


python_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.complex_numbers()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(bytearray, st.binary(max_size=4))
    | st.builds(fractions.Fraction, st.integers(), st.integers(1, 9))
    | st.decimals(allow_nan=False)
    | st.datetimes()
    | st.builds(datetime.timedelta, st.integers(0, 9))
    | st.sampled_from([np.float32(1), np.int8(2), np.bool_(True), np.dtype("f4"), np.dtype("O"), ValueError("x")])
    | hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.frozensets(st.integers(), max_size=3)
        | st.builds(slice, inner, inner)
    ),
    max_leaves=6,
)


def _allowed_array(obj: object) -> bool:
    return type(obj) is np.ndarray and obj.dtype.kind in "biuf" and obj.dtype.fields is None


@given(python_objects, st.integers(0, 5))
@example(decimal.Decimal(1), 4)
def test_pickles_of_arbitrary_objects_load_only_if_they_are_a_numeric_array(obj: object, protocol: int) -> None:
    data = pickle.dumps(obj, protocol=protocol)
    try:
        back = load_array(data, LIMIT)
    except UpdateRejected:
        assert not (_allowed_array(obj) and protocol >= 2)
        return
    assert _allowed_array(obj) and protocol >= 2
    assert isinstance(obj, np.ndarray) and np.array_equal(back, obj, equal_nan=True)


VALID = pickle.dumps(np.arange(6, dtype=np.float32).reshape(2, 3), protocol=4)


@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_pickles_are_refused_or_load_a_numeric_array(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for index, value in flips:
        data[index] = value
    try:
        back = load_array(bytes(data), LIMIT)
    except UpdateRejected:
        return
    assert type(back) is np.ndarray and back.dtype.kind in "biuf"


@given(st.binary(max_size=200))
def test_random_bytes_after_a_protocol_header_are_refused_or_load_a_numeric_array(tail: bytes) -> None:
    try:
        back = load_array(b"\x80\x04" + tail, LIMIT)
    except UpdateRejected:
        return
    assert type(back) is np.ndarray and back.dtype.kind in "biuf"
