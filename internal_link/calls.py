"""The proxy ↔ leaf calls: what a device asked (`DeviceCall`) and what to answer it (`DeviceAnswer`).

On the path of every device request, so plain named tuples checked by hand, not pydantic models:
they cross the link as msgpack arrays of their fields, in order (ARCHITECTURE.md "Proxy → leaf").
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import CallRefused, ErrorCode
from .request_streams import StreamedRequest
from .streams import STREAM_THRESHOLD, Streamed

FEG = "feg"  # method of a device request
PING = "ping"  # method of the proxy's health check, payload None
PONG = "pong"  # a healthy leaf's answer to PING
XAIN = "xain"  # method of a xain-sdk 0.8 participant's request (docs/XAIN.md), off the FEG path

ENDPOINTS: frozenset[str] = frozenset(("job", "task", "result", "selection"))
# A XAIN call's query holds "id" (the participant), "token" (for the aggregator's two) and "url"
# (scheme://host of the proxy as the participant reached it, for start_training).
XAIN_ENDPOINTS: frozenset[str] = frozenset(("heartbeat", "start_training", "download", "upload"))

# Set by the proxy on a device call (never taken from the device: it forwards only `x-flare-*`,
# `content-type` and `accept`): whose credential the request came with, and how many unreported
# tasks that credential may hold on one leaf (issue 11: Sybil slot capture).
CLIENT_HEADER = "x-edgefl-client"
CLIENT_LEASES_HEADER = "x-edgefl-client-leases"

_new = tuple.__new__  # builds a checked tuple without the named tuple's Python-level __new__


class BadPayload(CallRefused):
    """A call or answer that does not have its contract's shape."""

    def __init__(self, text: str) -> None:
        super().__init__(ErrorCode.BAD_PAYLOAD, text)


class DeviceCall(NamedTuple):
    """One device request, forwarded by the proxy to a leaf as method `FEG`.

    `query` holds the first value of each key; `headers` every `x-flare-*` header plus
    `content-type` and `accept`, names lower-case; `body` the raw request bytes; `wait` the seconds
    the proxy still waits for the answer (what is left of its deadline when it sends). A body
    above `STREAM_THRESHOLD` comes as a streamed request whose meta is the call with an empty body.
    """

    endpoint: str  # one of ENDPOINTS
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    wait: float

    def to_wire(self) -> tuple[Any, ...]:
        return self  # msgpack packs a tuple as the array of its fields

    @classmethod
    def check(cls, payload: Any) -> DeviceCall:
        """The call `payload` (as decoded from the link) carries; raises `BadPayload` otherwise."""
        if (
            type(payload) is list
            and len(payload) == 5
            and type(payload[0]) is str
            and payload[0] in ENDPOINTS
            and _is_text_map(payload[1], lower_case=False)
            and _is_text_map(payload[2], lower_case=True)
            and type(payload[3]) is bytes
            and type(payload[4]) in (float, int)
            and payload[4] >= 0
        ):
            call: DeviceCall = _new(cls, payload)
            return call
        if type(payload) is StreamedRequest:
            return cls.check(_with_body(payload))
        raise BadPayload(f"malformed device call: {_problems(payload)}")

    @classmethod
    def check_xain(cls, payload: Any) -> DeviceCall:
        """The XAIN call `payload` carries (endpoint one of XAIN_ENDPOINTS); raises `BadPayload` otherwise."""
        if type(payload) is StreamedRequest:
            payload = _with_body(payload)
        if type(payload) is list and len(payload) == 5 and type(payload[0]) is str and payload[0] in XAIN_ENDPOINTS:
            call = cls.check(["job", *payload[1:]])
            return call._replace(endpoint=payload[0])
        raise BadPayload(f"malformed xain call: {reprlib.repr(payload)}")


class ClientLimit(NamedTuple):
    """The credential a device call came with (`token:<digest>` or `ip:<address>`) and its lease cap."""

    key: str
    max_leases: int

    def headers(self) -> dict[str, str]:
        return {CLIENT_HEADER: self.key, CLIENT_LEASES_HEADER: str(self.max_leases)}

    @classmethod
    def of(cls, headers: dict[str, str]) -> ClientLimit | None:
        """The limit a call's headers carry; None when the proxy set none (or set it malformed)."""
        key, cap = headers.get(CLIENT_HEADER), headers.get(CLIENT_LEASES_HEADER, "")
        if not key or not (cap.isascii() and cap.isdigit()) or int(cap) < 1:
            return None
        return cls(key, int(cap))


class DeviceAnswer(NamedTuple):
    """A leaf's answer to a `DeviceCall`, written to the device as it is."""

    http_status: int
    content_type: str
    body: bytes

    def to_wire(self) -> tuple[Any, ...]:
        return self

    @classmethod
    def check(cls, payload: Any) -> DeviceAnswer:
        """The answer `payload` carries; raises `BadPayload` otherwise."""
        if type(payload) is list and len(payload) == 3 and _is_head(payload) and type(payload[2]) is bytes:
            answer: DeviceAnswer = _new(cls, payload)
            return answer
        raise BadPayload(f"malformed device answer: {reprlib.repr(payload)}")


def device_answer(http_status: int, content_type: str, parts: tuple[bytes, ...]) -> DeviceAnswer | Streamed:
    """The answer whose body is `parts` joined: one frame up to `STREAM_THRESHOLD` bytes, above it
    a stream (`streams.py`) whose head carries status and content type, the parts sent unjoined."""
    if sum(len(part) for part in parts) > STREAM_THRESHOLD:
        return Streamed([http_status, content_type], parts)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return _new(DeviceAnswer, (http_status, content_type, body))


def answer_bytes(answer: DeviceAnswer | Streamed) -> int:
    """The body bytes of a device answer, whichever way it goes."""
    return answer.nbytes if isinstance(answer, Streamed) else len(answer.body)


def streamed_answer_head(meta: Any) -> tuple[int, str]:
    """A streamed device answer's status and content type; raises `BadPayload` if malformed."""
    if type(meta) is list and len(meta) == 2 and _is_head(meta):
        return meta[0], meta[1]
    raise BadPayload(f"malformed streamed answer head: {reprlib.repr(meta)}")


def _is_head(answer: list[Any]) -> bool:
    """An answer's first two fields are an HTTP status and a content type."""
    return type(answer[0]) is int and 200 <= answer[0] <= 599 and type(answer[1]) is str


def device_call_handler(handle: Callable[[DeviceCall], Any]) -> Callable[[Any], Any]:
    """A link handler for `FEG` that checks the payload and hands `handle` the `DeviceCall`."""

    def handler(payload: Any) -> Any:
        return handle(DeviceCall.check(payload))

    return handler


def xain_call_handler(handle: Callable[[DeviceCall], Any]) -> Callable[[Any], Any]:
    """A link handler for `XAIN` that checks the payload and hands `handle` the `DeviceCall`."""

    def handler(payload: Any) -> Any:
        return handle(DeviceCall.check_xain(payload))

    return handler


def _with_body(request: StreamedRequest) -> Any:
    """A streamed call's fields, its body in place (a meta of another shape is left to be refused)."""
    meta = request.meta
    if type(meta) is list and len(meta) == 5:
        return [*meta[:3], request.body, meta[4]]
    return meta


def _is_text_map(value: Any, lower_case: bool) -> bool:
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str or type(item) is not str or (lower_case and key != key.lower()):
            return False
    return True


def _problems(payload: Any) -> str:
    # Every bad field at once; only on the refusal path, so it may be slow.
    if type(payload) is not list or len(payload) != 5:
        return f"not a list of 5 fields: {reprlib.repr(payload)}"
    endpoint, query, headers, body, wait = payload
    problems = []
    if type(endpoint) is not str or endpoint not in ENDPOINTS:
        problems.append(f"endpoint {reprlib.repr(endpoint)} is none of {sorted(ENDPOINTS)}")
    if not _is_text_map(query, lower_case=False):
        problems.append("query is not a map of text to text")
    if not _is_text_map(headers, lower_case=True):
        problems.append("headers are not a map of lower-case names to text")
    if type(body) is not bytes:
        problems.append(f"body is {type(body).__name__}, not bytes")
    if type(wait) not in (float, int) or not wait >= 0:
        problems.append(f"wait {reprlib.repr(wait)} is not a number of seconds")
    return "; ".join(problems)
