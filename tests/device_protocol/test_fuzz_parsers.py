"""Fuzzing every parser of `device_protocol` with hypothesis.

The property, parser by parser: whatever arrives (random bytes, random JSON/msgpack structures,
mutated valid inputs, pathological nesting and sizes) the parser either returns a well-formed value
or raises its module's own documented error — never another exception, never a hang — and valid
inputs round-trip. The cases `@example` pins are the ones that used to escape as TypeError,
RecursionError or pydantic's ValidationError, or to take time quadratic in their size
(docs/THREAT_MODEL.md lists them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel, ValidationError

from device_protocol.codecs import JSON, MSGPACK, decode_body, encode
from device_protocol.cookies import CookieSigner
from device_protocol.errors import (
    CookieInvalid,
    InvalidRequest,
    MalformedBody,
    UnsupportedMediaType,
    UpdateRejected,
)
from device_protocol.feg import (
    ENDPOINTS,
    JobRequest,
    ResultRequest,
    SelectionRequest,
    TaskRequest,
    parse_request,
)
from device_protocol.headers import device_identity, parse_info
from device_protocol.tensors import (
    decode_update,
    from_binary,
    from_json_entry,
    tensors_to_binary,
    to_et_tensor_diff,
)
from internal_link import frames
from internal_link.errors import WIRE_CODES, LinkProtocolError
from internal_link.frames import FrameDecoder, message_kind
from internal_link.messages import (
    GroupsReply,
    GroupsRequest,
    JobStatus,
    JobView,
    LeafJobReport,
    ModelRequest,
    RegisterGroup,
    SubmitBatch,
    SubmitReply,
    SyncReply,
    SyncRequest,
)
from internal_link.proofs import CLIENT, SERVER, proof, transcript, verify_proof


def encode_frame(obj: Any) -> bytes:
    return b"".join(frames.encode_frame(obj))


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- shared strategies ----------------------------------------------------------------------------
# What orjson and msgpack both carry: 64-bit integers, finite floats (orjson writes NaN as null).
ints = st.integers(-(2**63), 2**64 - 1)
json_scalars = (
    st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=24
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
# msgpack adds bytes, and bytes map keys (strict_map_key allows str and bytes).
packed_scalars = json_scalars | st.binary(max_size=12) | st.floats()
packed_values = st.recursive(
    packed_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6) | st.binary(max_size=6), c, max_size=4),
    max_leaves=24,
)


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON text nested `depth` lists deep: deeper than every parser's recursion limit."""
    return "[" * depth + leaf + "]" * depth


def deep_value(depth: int) -> list[Any]:
    # Built directly: orjson refuses to read (and write) these depths itself.
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


@st.composite
def mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """A valid input with a few bytes flipped, inserted or deleted, or cut short."""
    data = bytearray(draw(source))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[pos % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def mutated_text(source: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return mutated(source.map(str.encode)).map(lambda b: b.decode("utf-8", "replace"))


# -- headers.py -----------------------------------------------------------------------------------
INFO_KEYS = st.sampled_from(
    ["device_id", "app_name", "app_version", "platform", "platform_version", "user_id", "auth_token"]
) | st.text(max_size=8)
query_infos = st.dictionaries(INFO_KEYS, st.text(max_size=10), max_size=5).map(
    lambda d: "&".join(f"{k}={v}" for k, v in d.items())
)
json_infos = st.dictionaries(INFO_KEYS, json_values, max_size=5).map(lambda d: orjson.dumps(d).decode())
info_headers = st.text(max_size=60) | query_infos | json_infos | mutated_text(query_infos | json_infos)


@FUZZ
@given(info_headers)
@example('{"a": 1e400}')
@example("platform=%FF%FE&app_name=\udcff")
def test_info_header_parses_or_is_invalid_request(value: str) -> None:
    check_info(value)


def check_info(value: str) -> None:
    try:
        info = parse_info(value, "X-Flare-Device-Info")
    except InvalidRequest:
        return
    assert all(type(k) is str and type(v) is str for k, v in info.items())


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=8), st.text(min_size=1, max_size=10).filter(lambda v: v != "None") | ints, max_size=6
    )
)
def test_json_info_round_trips(fields: dict[str, str | int]) -> None:
    # iOS's shape (PROTOCOL.md §2): values come back as given, non-strings as their JSON text.
    expected = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in fields.items()}
    assert parse_info(orjson.dumps(fields).decode(), "h") == expected


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["x-flare-device-id", "x-flare-device-info", "x-flare-user-info", "accept"]),
        info_headers,
        max_size=4,
    )
)
def test_identity_is_the_header_or_invalid_request(headers: dict[str, str]) -> None:
    try:
        device_id, device_info, user_info = device_identity(headers)
    except InvalidRequest:
        return
    assert device_id == headers["x-flare-device-id"].strip() and device_id
    assert device_info["device_id"] == device_id
    assert all(type(v) is str for v in (*device_info.values(), *user_info.values()))


# -- codecs.py ------------------------------------------------------------------------------------
content_types = st.sampled_from(
    [
        JSON,
        f"{JSON}; charset=utf-8",
        "Application/JSON",
        MSGPACK,
        "text/plain",
        "application/x-www-form-urlencoded",
        "",
        ";",
    ]
) | st.text(max_size=30)
json_bodies = json_objects.map(orjson.dumps)
msgpack_bodies = st.dictionaries(st.text(max_size=6), packed_values, max_size=5).map(
    lambda d: msgpack.packb(d, use_bin_type=True)
)
bodies = st.binary(max_size=200) | json_bodies | msgpack_bodies | mutated(json_bodies | msgpack_bodies)


@FUZZ
@given(content_types, bodies)
@example(JSON, b'{"n": 1e400}')
@example(JSON, b'{"n": "\xff\xfe"}')
@example(JSON, b'{"job_id": "\\ud800"}')  # a lone surrogate escape
@example(MSGPACK, b"\xdd\xff\xff\xff\xff")  # an array claiming 4 billion items
@example(MSGPACK, b"\x81\x01\x02")  # an integer map key
@example(MSGPACK, b"\x81\xa1k\xa2\xff\xfe")  # a str that is not UTF-8
def test_decode_body_gives_an_object_or_a_protocol_error(content_type: str, body: bytes) -> None:
    check_body(content_type, body)


def check_body(content_type: str, body: bytes) -> None:
    try:
        obj = decode_body(content_type, body)
    except (MalformedBody, UnsupportedMediaType):
        return
    assert isinstance(obj, dict)


@FUZZ
@given(json_objects, st.booleans())
def test_bodies_round_trip(obj: dict[str, Any], as_msgpack: bool) -> None:
    content_type, body = encode(obj, as_msgpack)
    assert decode_body(content_type, body) == obj


# -- feg.py ---------------------------------------------------------------------------------------
FIELD_NAMES = st.sampled_from(
    ["job_id", "job_name", "capabilities", "task_id", "task_name", "status", "result", "cookie"]
)
field_values = (
    packed_values
    | st.fixed_dictionaries({"methods": packed_values})
    | st.dictionaries(st.binary(max_size=4), packed_values, min_size=1, max_size=2)
)
device_headers = st.fixed_dictionaries(
    {"x-flare-device-id": st.sampled_from(["dev-1", "abc?100", "abc#3", " "]) | st.text(max_size=10)},
    optional={"x-flare-device-info": info_headers, "x-flare-user-info": info_headers},
)


@FUZZ
@given(
    st.sampled_from(ENDPOINTS) | st.text(max_size=8),
    st.dictionaries(FIELD_NAMES | st.text(max_size=6), st.text(max_size=10), max_size=4),
    device_headers,
    st.dictionaries(FIELD_NAMES | st.text(max_size=6) | st.binary(max_size=6), field_values, max_size=5),
)
@example("task", {}, {"x-flare-device-id": "d"}, {"job_id": "j", "cookie": {b"\xff": 1}})
@example(
    "result",
    {"job_id": "j", "task_id": "t", "task_name": "train"},
    {"x-flare-device-id": "d"},
    {"result": {b"\xfe": 1}},
)
def test_parse_request_gives_a_request_or_invalid_request(
    endpoint: str, query: dict[str, str], headers: dict[str, str], body: dict[Any, Any]
) -> None:
    try:
        request = parse_request(endpoint, query, headers, body)
    except InvalidRequest as exc:
        assert exc.message == exc.errors[0]
        return
    assert endpoint in ENDPOINTS
    # The identity comes from the header alone, whatever the body says (PROTOCOL.md §1, ours).
    assert request.identity.device_id == headers["x-flare-device-id"].strip()


names = st.text(min_size=1, max_size=12)


@FUZZ
@given(st.data())
def test_valid_requests_round_trip(data: st.DataObject) -> None:
    endpoint = data.draw(st.sampled_from(ENDPOINTS))
    fields: dict[str, Any] = {"job_id": data.draw(names)}
    if endpoint == "job":
        fields = {"job_name": data.draw(names), "capabilities": {"methods": data.draw(st.lists(names, min_size=1))}}
    elif endpoint == "result":
        fields.update(
            task_id=data.draw(names),
            task_name=data.draw(names),
            status=data.draw(names),
            result=data.draw(json_objects),
        )
    if endpoint in ("task", "result"):
        fields["cookie"] = data.draw(st.none() | json_objects)
    # Any text field may come in the query instead of the body (later wins: the body).
    in_query = data.draw(st.sets(st.sampled_from(sorted(k for k, v in fields.items() if isinstance(v, str)))))
    query = {k: fields[k] for k in in_query}
    body = {k: v for k, v in fields.items() if k not in in_query}
    request = parse_request(endpoint, query, {"x-flare-device-id": "dev-1"}, orjson.loads(orjson.dumps(body)))
    expected = {JobRequest: "job", TaskRequest: "task", ResultRequest: "result", SelectionRequest: "selection"}
    assert expected[type(request)] == endpoint
    parsed = asdict(request)
    if endpoint == "job":
        assert parsed["job_name"] == fields["job_name"] and parsed["methods"] == fields["capabilities"]["methods"]
    else:
        assert {k: parsed[k] for k in fields if k in parsed} == {k: v for k, v in fields.items() if k in parsed}


# -- tensors.py -----------------------------------------------------------------------------------
SHAPES = {"w": (2, 3), "b": (3,)}
dims = st.lists(st.integers(0, 4) | st.sampled_from([-1, 2**31, 2**31 - 1]) | st.floats(0, 3), max_size=5)
binary_entries = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["float32", "float64", "float16", "int8", "object", ""]) | packed_values,
        "shape": dims | packed_values,
        "data": st.binary(max_size=64) | packed_values,
    },
)
json_entries = (
    st.fixed_dictionaries(
        {},
        optional={
            "sizes": dims | json_values,
            "strides": dims | json_values,
            "data": st.lists(st.floats(width=32) | ints, max_size=12) | json_values,
        },
    )
    | json_values
)


@FUZZ
@given(binary_entries | packed_values)
@example({"dtype": ["float32"], "shape": [1], "data": b"\0\0\0\0"})  # an unhashable dtype
def test_from_binary_gives_an_array_or_value_error(entry: Any) -> None:
    check_binary_entry(entry)


def check_binary_entry(entry: Any) -> None:
    started = time.monotonic()
    try:
        arr = from_binary(entry)
    except ValueError:
        pass
    else:
        assert list(arr.shape) == entry["shape"] and arr.dtype.name == entry["dtype"]
    assert time.monotonic() - started < 1.0  # bounded work whatever the shape claims


@FUZZ
@given(json_entries)
@example({"sizes": [2, 2], "strides": [1, 2], "data": [1, 2, 3, 4]})
@example({"sizes": [2], "strides": [5], "data": [1, 2]})
@example({"sizes": [1], "data": ["1.0"]})
def test_from_json_entry_gives_an_array_or_value_error(entry: Any) -> None:
    check_json_entry(entry)


def check_json_entry(entry: Any) -> None:
    started = time.monotonic()
    try:
        arr = from_json_entry(entry)
    except ValueError:
        pass
    else:
        assert arr.dtype == np.float32
    assert time.monotonic() - started < 1.0  # bounded work whatever the sizes claim


@st.composite
def mutated_updates(draw: st.DrawFn) -> dict[str, Any]:
    """A valid update with some part replaced by something random."""
    arrays = draw(valid_arrays())
    result = draw(
        st.sampled_from(
            [
                to_et_tensor_diff(arrays),
                {"kind": "WEIGHT_DIFF", "data": tensors_to_binary(arrays), "meta": {}},
            ]
        )
    )
    target = draw(st.sampled_from(["kind", "meta", "data", "entry", "field"]))
    junk = draw(packed_values | binary_entries | json_entries)
    if target in ("kind", "meta", "data"):
        result[target] = junk
    else:
        name = draw(st.sampled_from(sorted(result["data"])))
        if target == "entry":
            result["data"][name] = junk
        else:
            entry = dict(result["data"][name])
            entry[draw(st.sampled_from(sorted(entry)))] = junk
            result["data"][name] = entry
    return result


@FUZZ
@given(mutated_updates() | json_objects | st.dictionaries(st.sampled_from(["kind", "data", "meta"]), packed_values))
@example({"kind": ["et_tensor_diff"], "data": {}})  # an unhashable kind
@example({"kind": "number", "data": {"w": {"dtype": {"a": 1}, "shape": [2, 3], "data": b""}, "b": [0, 0, 1]}})
@example({"kind": "et_tensor_diff", "data": {"w": [[1e39, 0, 0], [0, 0, 0]], "b": [0, 0, 1]}})  # past float32: Inf
@example({"kind": "et_tensor_diff", "data": {"w": [[1, 2, 3], [4, 5, 6]], "b": [1, 2, 3]}, "meta": {"num_samples": 0}})
def test_decode_update_counts_or_rejects(result: dict[str, Any]) -> None:
    check_update(result)


def check_update(result: dict[str, Any]) -> None:
    try:
        arrays, weight = decode_update(result, SHAPES)
    except UpdateRejected as exc:
        assert len(exc.message) < 1_000  # what the device is told stays short, whatever it sent
        return
    assert {k: a.shape for k, a in arrays.items()} == SHAPES
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays.values())
    assert any(a.any() for a in arrays.values()) and weight >= 1.0


def valid_arrays() -> st.SearchStrategy[dict[str, np.ndarray]]:
    finite = st.floats(-1e6, 1e6, width=32)
    return st.fixed_dictionaries({k: hnp.arrays(np.float32, s, elements=finite) for k, s in SHAPES.items()}).filter(
        lambda arrays: any(a.any() for a in arrays.values())
    )


@FUZZ
@given(valid_arrays(), st.sampled_from(["json", "msgpack"]), st.none() | st.integers(1, 1_000_000))
def test_valid_updates_round_trip_through_the_codecs(
    arrays: dict[str, np.ndarray], form: str, num_samples: int | None
) -> None:
    meta = {} if num_samples is None else {"num_samples": num_samples}
    if form == "json":  # iOS: et_tensor_diff with net. names, flat data, sizes and strides
        content_type, body = encode({"result": to_et_tensor_diff(arrays, meta)})
    else:  # ours: msgpack {dtype, shape, data} tensors
        content_type, body = encode(
            {"result": {"kind": "WEIGHT_DIFF", "data": tensors_to_binary(arrays), "meta": meta}}, msgpack_wanted=True
        )
    update, weight = decode_update(decode_body(content_type, body)["result"], SHAPES)
    assert weight == float(num_samples or 1)
    for name, arr in arrays.items():
        np.testing.assert_array_equal(update[name], arr)


# -- cookies.py -----------------------------------------------------------------------------------
signer = CookieSigner(b"fuzz-secret")
sigs = st.text(max_size=70) | st.sampled_from(["é" * 64, "\x00" * 64]) | packed_values


@FUZZ
@given(
    st.none()
    | packed_values
    | st.fixed_dictionaries(
        {}, optional={"model_version": ints | packed_values, "device_selection_id": ints | packed_values, "sig": sigs}
    )
)
@example({"model_version": 0, "device_selection_id": 1, "sig": "é" * 64})  # compare_digest raised TypeError
def test_arbitrary_cookies_are_refused(cookie: Any) -> None:
    if cookie is not None and not isinstance(cookie, dict):
        cookie = {"cookie": cookie}
    with pytest.raises(CookieInvalid):
        signer.verify(cookie, "job", "dev-1", "task-1")


@FUZZ
@given(names, names, names, st.integers(-1, 2**40), st.integers(0, 2**40), st.data())
def test_issued_cookies_verify_and_any_change_is_refused(
    job: str, device: str, task: str, version: int, selection: int, data: st.DataObject
) -> None:
    cookie = signer.issue(job, device, task, version, selection)
    assert signer.verify(orjson.loads(orjson.dumps(cookie)), job, device, task) == (version, selection)
    # A replayed cookie is authentic: refusing it is the leaf's job (tests/integration).
    change = data.draw(st.sampled_from(["truncate", "flip", "version", "selection", "job", "device", "task", "secret"]))
    forged, context = dict(cookie), [job, device, task]
    if change == "truncate":
        forged["sig"] = cookie["sig"][: data.draw(st.integers(0, len(cookie["sig"]) - 1))]
    elif change == "flip":
        i = data.draw(st.integers(0, len(cookie["sig"]) - 1))
        forged["sig"] = cookie["sig"][:i] + ("0" if cookie["sig"][i] != "0" else "1") + cookie["sig"][i + 1 :]
    elif change in ("version", "selection"):
        key = "model_version" if change == "version" else "device_selection_id"
        forged[key] = data.draw(st.integers(-1, 2**40).filter(lambda v: v != cookie[key]))
    elif change in ("job", "device", "task"):  # another job's, device's or task's cookie
        i = ("job", "device", "task").index(change)
        context[i] = data.draw(names.filter(lambda v: v != context[i]))
    else:
        forged = CookieSigner(b"another-secret").issue(job, device, task, version, selection)
    with pytest.raises(CookieInvalid):
        signer.verify(forged, *context)


# -- frames.py (the link) -------------------------------------------------------------------------
link_messages = st.one_of(
    st.tuples(st.just(frames.REQUEST), st.integers(0, 2**32), st.text(max_size=8), packed_values).map(list),
    st.tuples(st.just(frames.RESPONSE), st.integers(0, 2**32), st.none(), packed_values).map(list),
    st.tuples(st.just(frames.RESPONSE), st.integers(0, 2**32), st.sampled_from(sorted(WIRE_CODES)), st.text()).map(
        list
    ),
    st.tuples(st.just(frames.HELLO), st.binary(max_size=32)).map(list),
    st.tuples(st.just(frames.AUTH), st.binary(max_size=16), st.binary(max_size=32)).map(list),
)
streams = st.lists(link_messages, max_size=4).map(lambda ms: b"".join(encode_frame(m) for m in ms))


@FUZZ
@given(st.binary(max_size=300) | streams | mutated(streams), st.lists(st.integers(0, 400), max_size=6))
@example(b"\x00\x00\x00\x03\xdd\xff\xff", [])
@example(b"\xff\xff\xff\xff", [2])  # a 4 GiB frame is refused from its header
def test_link_stream_gives_messages_or_frame_error(stream: bytes, cuts: list[int]) -> None:
    check_stream(stream, cuts)


def check_stream(stream: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame=4096)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    try:
        for piece in pieces:
            for message in decoder.feed(piece):
                assert message_kind(message) in (frames.REQUEST, frames.RESPONSE, frames.HELLO, frames.AUTH)
    except LinkProtocolError:
        pass
    assert decoder.buffered <= 4 + 4096  # never more than one frame held back


@FUZZ
@given(link_messages, st.lists(st.integers(0, 400), max_size=6))
@example([frames.REQUEST, 0, "", float("nan")], [])
def test_link_messages_round_trip_whatever_the_split(message: list[Any], cuts: list[int]) -> None:
    stream = encode_frame(message)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    decoder = FrameDecoder()
    decoded = [m for a, b in zip([0, *points], [*points, len(stream)], strict=True) for m in decoder.feed(stream[a:b])]
    # Compared as bytes: a NaN in the payload is never == itself.
    assert [encode_frame(m) for m in decoded] == [stream] and message_kind(decoded[0]) == message[0]


@FUZZ
@given(
    st.binary(min_size=1, max_size=32),
    st.binary(min_size=1, max_size=32),
    st.binary(max_size=40),
    st.binary(min_size=16, max_size=16),
)
def test_handshake_accepts_only_the_secret(secret: bytes, other: bytes, garbage: bytes, nonce: bytes) -> None:
    covered = transcript(nonce, nonce[::-1], b"")
    [answer] = FrameDecoder(max_frame=256).feed(
        encode_frame([frames.AUTH, nonce[::-1], proof(secret, CLIENT, covered)])
    )
    assert message_kind(answer) == frames.AUTH
    assert verify_proof(secret, CLIENT, covered, answer[2])
    assert not verify_proof(secret, SERVER, covered, answer[2])  # a client's proof is no server's
    # HMAC pads its key with zero bytes: b"k" and b"k\0" are one key (link secrets are hex text).
    assert verify_proof(other, CLIENT, covered, answer[2]) == (other.rstrip(b"\0") == secret.rstrip(b"\0"))
    assert verify_proof(secret, CLIENT, covered, garbage) == (garbage == answer[2])
    [hello] = FrameDecoder(max_frame=256).feed(encode_frame([frames.HELLO, nonce]))
    assert hello == [frames.HELLO, nonce]


# -- messages.py (leaf <-> server) ----------------------------------------------------------------
counts = st.integers(0, 2**31)
reports = st.builds(
    LeafJobReport,
    selection_id=st.integers(-1, 2**31),
    waiting=counts,
    assigned=counts,
    tasks_issued=counts,
    refused=counts,
    late=counts,
    duplicates=counts,
    over_cap=counts,
    groups_refused=counts,
)
job_views = st.builds(
    JobView,
    job_id=names,
    job_name=names,
    status=st.sampled_from(JobStatus),
    model_version=st.integers(-1, 2**31),
    round=counts,
    selection_id=counts,
    quota=counts,
    free_slots=counts,
    retry_wait=counts,
    task_timeout=st.floats(0, 1e6),
    param_shapes=st.dictionaries(names, st.lists(st.integers(0, 64), max_size=4), max_size=3),
    config=json_objects,
    task_meta=json_objects,
    task_kind=st.sampled_from(["WEIGHTS", "APP_DEFINED"]),
    groups_version=counts,
    platforms=st.none() | st.lists(names, max_size=2),
    device_ids=st.none() | st.lists(names, max_size=2),
)
tensors = st.fixed_dictionaries(
    {"dtype": st.just("float64"), "shape": st.lists(st.integers(0, 3), max_size=2), "data": st.binary(max_size=16)}
)
link_models: st.SearchStrategy[BaseModel] = st.one_of(
    reports,
    job_views,
    st.builds(SyncRequest, leaf=names, boot=names, jobs=st.dictionaries(names, reports, max_size=2)),
    st.builds(SyncReply, boot=names, jobs=st.lists(job_views, max_size=2)),
    st.builds(ModelRequest, job_id=names, version=st.integers(-1, 2**31)),
    st.builds(RegisterGroup, job_id=names, prefix=names, count=counts),
    st.builds(GroupsRequest, job_id=names),
    st.builds(GroupsReply, version=counts, groups=st.dictionaries(names, counts, max_size=3)),
    st.builds(
        SubmitBatch,
        leaf=names,
        job_id=names,
        version=counts,
        task_ids=st.lists(names, max_size=3),
        sum_weight=st.floats(0, 1e9),
        sum_update=st.dictionaries(names, tensors, max_size=2),
    ),
    st.builds(
        SubmitReply,
        accepted=st.booleans(),
        late=st.booleans(),
        duplicates=st.lists(names, max_size=2),
        message=st.text(max_size=10),
    ),
)


@FEW
@given(link_models)
def test_link_models_round_trip_over_msgpack(model: BaseModel) -> None:
    [payload] = FrameDecoder().feed(encode_frame(model.model_dump()))
    assert type(model).model_validate(payload) == model


@FUZZ
@given(link_models, st.data())
def test_link_models_validate_or_raise_validation_error(model: BaseModel, data: st.DataObject) -> None:
    # A peer's payload with one field replaced, dropped or added, or no object at all.
    payload = model.model_dump()
    choice = data.draw(st.sampled_from(["replace", "drop", "add", "whole"]))
    if choice == "whole":
        payload = data.draw(packed_values)
    elif choice == "add":
        payload[data.draw(st.text(max_size=6))] = data.draw(packed_values)
    elif payload:
        key = data.draw(st.sampled_from(sorted(payload)))
        if choice == "drop":
            del payload[key]
        else:
            payload[key] = data.draw(packed_values)
    check_link_model(type(model), payload)


def check_link_model(model: type[BaseModel], payload: Any) -> None:
    try:
        parsed = model.model_validate(payload)
    except ValidationError:
        return
    assert isinstance(parsed, model)


# -- pathological sizes and depths, every parser --------------------------------------------------
# Not hypothesis examples: hypothesis pretty-prints those recursively and a 1,000-deep value breaks it.
PATHOLOGICAL: dict[str, Callable[[], None]] = {
    # orjson reads 1,024 levels but writes only 254: this used to escape as orjson's TypeError.
    "info: JSON value 300 deep": lambda: check_info(f'{{"platform": {nested(300)}}}'),
    "info: JSON value 10,000 deep": lambda: check_info(f'{{"platform": {nested(10_000)}}}'),
    "info: JSON 10,000 deep": lambda: check_info(nested(10_000)),
    "info: 400-digit number": lambda: check_info('{"a": 1' + "0" * 400 + "}"),
    "body: objects 10,000 deep": lambda: check_body(JSON, b'{"a":' * 10_000),
    "body: lists 10,000 deep": lambda: check_body(JSON, nested(10_000).encode()),
    "body: 400-digit number": lambda: check_body(JSON, b'{"n": 1' + b"0" * 400 + b"}"),
    "body: msgpack 10,000 deep": lambda: check_body(MSGPACK, b"\x81\xa1a" + b"\x91" * 10_000 + b"\xc0"),
    # Used to allocate 16 GB of offsets for an empty tensor.
    "tensor: empty with huge strided sizes": lambda: check_json_entry(
        {"sizes": [2**31 - 1, 0], "strides": [0, 1], "data": []}
    ),
    # Used to take time quadratic in the number of dimensions (minutes for a few MB).
    "tensor: 100,000 sizes": lambda: check_json_entry({"sizes": [2**31 - 1] * 100_000, "data": [1.0]}),
    "tensor: 100,000-dim binary shape": lambda: check_binary_entry(
        {"dtype": "float32", "shape": [2**31 - 1] * 100_000, "data": b""}
    ),
    "tensor: data 900 deep": lambda: check_json_entry({"sizes": [1], "data": deep_value(900)}),
    # repr of the reason used to raise RecursionError.
    "update: error reason 1,000 deep": lambda: check_update({"kind": "error", "data": {"error": deep_value(1_000)}}),
    "update: kind 1,000 deep": lambda: check_update({"kind": deep_value(1_000), "data": {}}),
    "update: 100 kB error reason": lambda: check_update({"kind": "error", "data": "x" * 100_000}),
    # The malformed-message preview's repr used to raise RecursionError.
    "link: message 1,000 deep": lambda: check_stream(encode_frame(deep_value(1_000)), []),
    "link: payload 1,000 deep": lambda: check_link_model(
        SyncRequest, {"leaf": "l", "boot": "b", "jobs": deep_value(1_000)}
    ),
}


@pytest.mark.parametrize("case", sorted(PATHOLOGICAL))
def test_pathological_inputs(case: str) -> None:
    PATHOLOGICAL[case]()
