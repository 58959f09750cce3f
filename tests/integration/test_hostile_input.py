"""Hostile and broken input against the real stack (server, two leaves, proxy as processes).

For each case: the exact HTTP status and JSON body (or the documented harmless answer), the proxy
and leaves still serving a valid device afterwards, and the aggregate untouched. What
`test_validation.py` already proves is not repeated here; docs/THREAT_MODEL.md maps every case to
the test that proves it. Raw sockets send what aiohttp would refuse to; every loop is bounded in
count and time, and every socket is closed.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import numpy as np
import orjson
import pytest

from device_protocol.tensors import max_result_body_bytes
from edge_gateway.launcher import Stack
from edge_gateway.models.specs import param_shapes

from .helpers import job_status, submit_job, wait_for, wait_leaves_synced
from .test_validation import call, diff, headers, post_result, task_for

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MSGPACK = "application/msgpack"
# The proxy's defaults (routing_proxy/config.py, routing_proxy/http1.py): the limits under test.
BODY_LIMIT = 64 * 1024 * 1024  # a /result's
POLL_BODY_LIMIT = 1024 * 1024  # any other request's
HEAD_LIMIT = 32 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT = 15.0
# The aggregate and the leaves' refusal counters (PROTOCOL.md §4, DESIGN.md "Learning semantics").
COUNTERS = ("model_version", "round", "reported", "results_counted", "refused", "late", "duplicates", "tasks_issued")


# -- raw HTTP -------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self
        return orjson.loads(self.body)


def request(target: bytes, head: bytes = b"", body: bytes = b"", method: bytes = b"POST") -> bytes:
    """One HTTP/1.1 request as bytes: `head` is extra header lines, each ending in CRLF."""
    return (
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: edgefl\r\n"
        + head
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def device(device_id: bytes = b"hostile-1", content_type: bytes = b"application/json") -> bytes:
    return b"X-Flare-Device-ID: " + device_id + b"\r\nContent-Type: " + content_type + b"\r\n"


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return Reply(int(status_line.split(" ", 2)[1]), fields, body)


async def exchange(port: int, data: bytes, timeout: float = 10.0) -> Reply:
    """Send `data` on a new connection and read one answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        return await asyncio.wait_for(read_reply(reader), timeout)
    finally:
        writer.close()


def refused(http_status: int, message: str) -> Callable[[Reply], None]:
    """The check for an exact error answer: `{"status": "INVALID_REQUEST", "message": message}`."""

    def check(reply: Reply) -> None:
        assert reply.status == http_status, (reply, message)
        assert reply.json() == {"status": "INVALID_REQUEST", "message": message}, reply

    return check


def refused_starting(http_status: int, prefix: str) -> Callable[[Reply], None]:
    """As `refused`, for messages that end in a parser's own details (orjson's position, llhttp's reason)."""

    def check(reply: Reply) -> None:
        assert reply.status == http_status, (reply, prefix)
        body = reply.json()
        assert set(body) == {"status", "message"} and body["status"] == "INVALID_REQUEST", reply
        assert body["message"].startswith(prefix), (body, prefix)

    return check


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def port_of(stack: Stack) -> int:
    return int(stack.proxy_url.rsplit(":", 1)[1])


def pid_of(stack: Stack, name: str) -> int:
    return next(child.pid for child in stack.children if child.name == name)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


# -- the job and the valid device that must keep working ------------------------------------------
@pytest.fixture
async def job(stack: Stack) -> str:
    # Rounds stay open (100 results close one) so counters can only move because of what we send.
    job_id = await submit_job(
        stack.api_url,
        name="hostile",
        model="xor",
        rounds=3,
        devices_per_round=100,
        over_selection=0.0,
        retry_wait=1,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job_id, 2)
    return job_id


async def counters(stack: Stack, job_id: str) -> dict[str, Any]:
    status = await job_status(stack.api_url, job_id)
    return {k: status[k] for k in COUNTERS}


async def valid_device_trains(stack: Stack, http: aiohttp.ClientSession, job_id: str, device_id: str) -> None:
    """A well-behaved device gets its task and its result counted, through the same proxy."""
    before = await counters(stack, job_id)
    task = await task_for(http, stack.proxy_url, job_id, headers(device_id))
    reply = await post_result(http, stack.proxy_url, job_id, device_id, task, diff(task))
    assert reply == {"status": "OK", "task_id": task["task_id"], "task_name": "train", "counted": True}
    await wait_for(stack.api_url, job_id, lambda s: s["results_counted"] == before["results_counted"] + 1, timeout=10)


async def assert_untouched(stack: Stack, job_id: str, before: dict[str, Any], **moved: int) -> None:
    """Counters equal `before` except those named in `moved` (by how much), once leaves have synced."""
    expected = {k: v + moved.get(k, 0) for k, v in before.items()}
    await wait_for(stack.api_url, job_id, lambda s: {k: s[k] for k in COUNTERS} == expected, timeout=10)
    await asyncio.sleep(0.6)  # three leaf syncs: nothing more arrives late
    assert await counters(stack, job_id) == expected


# -- HTTP-level hostility: answered before anything reaches the aggregate -------------------------
async def test_broken_requests_get_exact_json_errors(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    port = port_of(stack)
    task = b"/task?job_id=" + job.encode()
    jobs = b"/job"
    result = b"/result?job_id=" + job.encode() + b"&task_id=t&task_name=train"
    dev = device()
    deep_info = b'{"platform": ' + nested(10_000) + b"}"
    cases: list[tuple[str, bytes, Callable[[Reply], None]]] = [
        # Malformed and truncated JSON.
        (
            "truncated JSON",
            request(jobs, dev, b'{"job_name": "hostile", "capabilities": {"meth'),
            refused_starting(400, "malformed JSON body: "),
        ),
        (
            "JSON with a trailing comma",
            request(task, dev, b'{"cookie": {},}'),
            refused_starting(400, "malformed JSON body: "),
        ),
        ("NaN literal", request(jobs, dev, b'{"job_name": NaN}'), refused_starting(400, "malformed JSON body: ")),
        # Nesting 10,000 deep, in the body and in the info headers.
        (
            "body 10,000 deep",
            request(task, dev, nested(10_000)),
            refused_starting(400, "malformed JSON body: depth limit exceeded"),
        ),
        (
            "object 10,000 deep",
            request(task, dev, b'{"cookie": ' * 10_000),
            refused_starting(400, "malformed JSON body: depth limit exceeded"),
        ),
        (
            "device info 10,000 deep",
            request(task, dev + b"X-Flare-Device-Info: " + deep_info + b"\r\n", b"{}"),
            refused(400, "X-Flare-Device-Info is neither a query string nor a JSON object"),
        ),
        (
            "user info 10,000 deep",
            request(task, dev + b"X-Flare-User-Info: " + deep_info + b"\r\n", b"{}"),
            refused(400, "X-Flare-User-Info is neither a query string nor a JSON object"),
        ),
        # orjson reads 1,024 levels but writes 254: this one used to fail inside the leaf (RETRY).
        (
            "device info value 300 deep",
            request(task, dev + b'X-Flare-Device-Info: {"platform": ' + nested(300) + b"}\r\n", b"{}"),
            refused(400, "X-Flare-Device-Info value of 'platform' is nested too deeply"),
        ),
        # Huge numbers.
        (
            "1e400",
            request(jobs, dev, b'{"job_name": 1e400, "capabilities": {"methods": ["a"]}}'),
            refused_starting(400, "malformed JSON body: number is infinity"),
        ),
        (
            "a 400-digit integer",
            request(jobs, dev, b'{"job_name": "x", "n": 1' + b"0" * 400 + b"}"),
            refused_starting(400, "malformed JSON body: number is infinity"),
        ),
        # Strings where numbers belong, and numbers where strings belong.
        (
            "job_name a number",
            request(jobs, dev, b'{"job_name": 5, "capabilities": {"methods": ["a"]}}'),
            refused(400, "invalid job_name type <class 'int'>"),
        ),
        (
            "task_id a number",
            request(b"/result?job_id=j&task_name=train", dev, b'{"task_id": 7, "result": {}}'),
            refused(400, "invalid task_id type <class 'int'>"),
        ),
        ("cookie a string", request(task, dev, b'{"cookie": "{}"}'), refused(400, "invalid cookie type <class 'str'>")),
        (
            "result a list",
            request(result, dev, b'{"result": [1, 2]}'),
            refused(400, "invalid result type <class 'list'>"),
        ),
        (
            "capabilities a string",
            request(jobs, dev, b'{"job_name": "x", "capabilities": "cnn"}'),
            refused(400, "invalid capabilities type <class 'str'>"),
        ),
        # Wrong content types (text/xml is in test_validation.py).
        (
            "no content type",
            request(task, b"X-Flare-Device-ID: hostile-1\r\n", b"{}"),
            refused(415, "unsupported content type: send application/json or application/msgpack"),
        ),
        (
            "form encoded",
            request(task, device(content_type=b"application/x-www-form-urlencoded"), b"job_id=x"),
            refused(415, "unsupported content type: send application/json or application/msgpack"),
        ),
        (
            "JSON sent as msgpack",
            request(task, device(content_type=MSGPACK.encode()), b'{"cookie": {}}'),
            refused_starting(400, "malformed msgpack body: "),
        ),
        (
            "msgpack sent as JSON",
            request(task, dev, msgpack.packb({"cookie": {}})),
            refused_starting(400, "malformed JSON body: "),
        ),
        # A msgpack map key that is not UTF-8 text: used to escape the parser as pydantic's error.
        (
            "msgpack cookie with a bytes key",
            request(
                task, device(content_type=MSGPACK.encode()), msgpack.packb({"cookie": {b"\xff": 1}}, use_bin_type=True)
            ),
            refused(400, "invalid cookie: keys must be strings"),
        ),
        # Headers over the limits.
        (
            "one 100 kB header",
            request(task, dev + b"X-Padding: " + b"a" * 100_000 + b"\r\n", b"{}"),
            refused(431, f"request head larger than {HEAD_LIMIT} bytes"),
        ),
        (
            "500 headers",
            request(task, dev + b"".join(b"X-H%d: v\r\n" % i for i in range(500)), b"{}"),
            refused(431, f"more than {MAX_HEADERS} header fields"),
        ),
        (
            "a 100 kB URL",
            request(b"/task?job_id=" + b"j" * 100_000, dev, b"{}"),
            refused(431, f"request head larger than {HEAD_LIMIT} bytes"),
        ),
        # Non-UTF-8 bytes in headers, query, path and body.
        ("device id not UTF-8", request(task, device(b"\xff\xfe"), b"{}"), refused(400, "header values must be UTF-8")),
        (
            "device info not UTF-8",
            request(task, dev + b"X-Flare-Device-Info: platform=\xc3\x28\r\n", b"{}"),
            refused(400, "header values must be UTF-8"),
        ),
        (
            "raw 0xFF in the query",
            request(b"/task?job_id=\xff", dev, b"{}"),
            refused_starting(400, "malformed HTTP request: "),
        ),
        ("raw 0xFF in the path", request(b"/ta\xffsk", dev, b"{}"), refused_starting(400, "malformed HTTP request: ")),
        (
            "body not UTF-8",
            request(task, dev, b'{"cookie": {"sig": "\xff\xfe"}}'),
            refused_starting(400, "malformed JSON body: "),
        ),
        # HTTP framing tricks (request smuggling) and a TLS hello on the plain port.
        (
            "Content-Length and chunked",
            request(task, dev + b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
            refused_starting(400, "malformed HTTP request: "),
        ),
        (
            "two Content-Lengths",
            request(task, dev + b"Content-Length: 5\r\n", b"{}"),
            refused_starting(400, "malformed HTTP request: "),
        ),
        (
            "negative Content-Length",
            b"POST " + task + b" HTTP/1.1\r\n" + dev + b"Content-Length: -1\r\n\r\n",
            refused_starting(400, "malformed HTTP request: "),
        ),
        (
            "TLS hello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),
            refused_starting(400, "malformed HTTP request: "),
        ),
    ]
    before = await counters(stack, job)
    for name, data, check in cases:
        reply = await exchange(port, data)
        try:
            check(reply)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    # Percent-encoded bytes that are not UTF-8 decode to U+FFFD: an unknown job, harmlessly.
    reply = await exchange(port, request(b"/task?job_id=%FF%FE", dev, b"{}"))
    assert reply.status == 200 and reply.json() == {"status": "NO_JOB", "message": "unknown job '\ufffd\ufffd'"}
    await valid_device_trains(stack, http, job, "valid-after-broken-requests")
    await assert_untouched(stack, job, before, results_counted=1, reported=1, tasks_issued=1)


async def test_bodies_over_the_limit_are_refused_while_streaming(
    stack: Stack, http: aiohttp.ClientSession, job: str
) -> None:
    port = port_of(stack)
    target = b"/result?job_id=" + job.encode() + b"&task_id=t&task_name=train"
    too_large = refused(413, f"request body larger than {BODY_LIMIT} bytes")
    # A Content-Length of twice the limit: refused from the head alone, no body byte sent; with
    # `Expect: 100-continue` the answer is the 413, never a 100 first.
    head = (
        b"POST " + target + b" HTTP/1.1\r\nHost: edgefl\r\n" + device() + b"Content-Length: %d\r\n" % (2 * BODY_LIMIT)
    )
    too_large(await exchange(port, head + b"\r\n"))
    too_large(await exchange(port, head + b"Expect: 100-continue\r\n\r\n"))
    # A poll's body the size of an upload: refused the same way at its own, smaller limit.
    poll = b"POST /task?job_id=" + job.encode() + b" HTTP/1.1\r\nHost: edgefl\r\n" + device()
    refused(413, f"request body larger than {POLL_BODY_LIMIT} bytes")(
        await exchange(port, poll + b"Content-Length: %d\r\n\r\n" % (POLL_BODY_LIMIT + 1))
    )

    # Chunked, with no length announced: refused once the limit is crossed, long before the end.
    reader, writer = await asyncio.open_connection(HOST, port)
    sent = 0
    try:
        writer.write(
            b"POST " + target + b" HTTP/1.1\r\nHost: edgefl\r\n" + device() + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        answer = asyncio.ensure_future(read_reply(reader))
        piece = 1024 * 1024
        chunk = b"%x\r\n" % piece + b" " * piece + b"\r\n"
        while not answer.done() and sent < 2 * BODY_LIMIT:
            writer.write(chunk)
            sent += piece
            drained = asyncio.ensure_future(writer.drain())
            await asyncio.wait([drained, answer], timeout=10, return_when=asyncio.FIRST_COMPLETED)
            if not drained.done():
                drained.cancel()  # the proxy stopped reading: it has answered or will
                break
            if drained.exception() is not None:
                break
        too_large(await asyncio.wait_for(answer, 10))
    finally:
        writer.close()
    assert BODY_LIMIT <= sent < 2 * BODY_LIMIT, sent
    before = await counters(stack, job)
    await valid_device_trains(stack, http, job, "valid-after-big-bodies")
    await assert_untouched(stack, job, before, results_counted=1, reported=1, tasks_issued=1)


async def test_a_result_larger_than_its_model_can_need_is_refused_unparsed(
    stack: Stack, http: aiohttp.ClientSession, job: str
) -> None:
    # Under the proxy's 64 MiB, but far more than the job's model can fill: 3 MB of numbers would be
    # millions of objects in the leaf, for a result that cannot count anyway.
    port = port_of(stack)
    before = await counters(stack, job)
    junk = b'{"junk": [' + b"1.5," * 750_000 + b"1.5]}"
    limit = max_result_body_bytes(sum(math.prod(shape) for shape in param_shapes("xor").values()))
    for job_id in (job.encode(), b"no-such-job"):
        target = b"/result?job_id=" + job_id + b"&task_id=t&task_name=train"
        refused(413, f"result body larger than {limit} bytes, more than this job's model can need")(
            await exchange(port, request(target, device(), junk))
        )
    await valid_device_trains(stack, http, job, "valid-after-junk-result")
    await assert_untouched(stack, job, before, results_counted=1, reported=1, tasks_issued=1)


# -- hostile results: refused with a reason, the aggregate untouched -------------------------------
async def test_hostile_results_never_touch_the_aggregate(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    p = stack.proxy_url
    task = await task_for(http, p, job, headers("victim"))
    thief = await task_for(http, p, job, headers("thief"))
    good = diff(task)
    names = list(good["data"])
    shapes = {name: entry["sizes"] for name, entry in good["data"].items()}
    first = names[0]

    def changed(entry: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """The good result with the first parameter's entry replaced, or with other top-level fields."""
        result = orjson.loads(orjson.dumps(good))
        if entry is not None:
            result["data"][first] = entry
        result.update(fields)
        return result

    def binary(values: np.ndarray) -> dict[str, Any]:
        return {"dtype": "float32", "shape": list(values.shape), "data": values.astype("<f4").tobytes()}

    size = int(np.prod(shapes[first]))
    nan = np.full(shapes[first], 0.01, dtype=np.float32)
    nan.flat[0] = np.nan
    inf = np.full(shapes[first], 0.01, dtype=np.float32)
    inf.flat[0] = -np.inf
    renamed = changed()
    renamed["data"] = {name.replace("net.", "net.renamed_"): entry for name, entry in good["data"].items()}
    stolen = {**task["cookie"]}
    # Each: (who posts, result (bytes: JSON text already), cookie, task id, content type, expected
    # message or its start).
    refusals: list[tuple[str, dict[str, Any] | bytes, Any, str, str, str]] = [
        # Forged cookies: a signature that is not ASCII used to crash the leaf's compare (RETRY).
        (
            "victim",
            good,
            {**task["cookie"], "sig": "é" * 64},
            task["task_id"],
            "json",
            "cookie signature does not match this device and task",
        ),
        (
            "victim",
            good,
            {**task["cookie"], "sig": task["cookie"]["sig"][:10]},
            task["task_id"],
            "json",
            "cookie signature does not match this device and task",
        ),
        (
            "victim",
            good,
            {**task["cookie"], "model_version": str(task["cookie"]["model_version"])},
            task["task_id"],
            "json",
            "malformed cookie: send back the cookie that came with the task",
        ),
        (
            "victim",
            good,
            {k: v for k, v in task["cookie"].items() if k != "sig"},
            task["task_id"],
            "json",
            "malformed cookie: send back the cookie that came with the task",
        ),
        # A future model version (version+1 is in test_validation.py).
        (
            "victim",
            good,
            {**task["cookie"], "model_version": 2**62},
            task["task_id"],
            "json",
            "cookie signature does not match this device and task",
        ),
        # Another device's task: its task id and its cookie, both stolen.
        ("thief", good, stolen, task["task_id"], "json", "cookie signature does not match this device and task"),
        # NaN and Inf: JSON cannot carry them (orjson writes null), msgpack binaries can.
        (
            "victim",
            changed(binary(nan)),
            "same",
            task["task_id"],
            "msgpack",
            f"parameter '{first.removeprefix('net.')}' holds NaN or Inf",
        ),
        (
            "victim",
            changed(binary(inf)),
            "same",
            task["task_id"],
            "msgpack",
            f"parameter '{first.removeprefix('net.')}' holds NaN or Inf",
        ),
        # Past float32's range: finite JSON, Inf once a float32.
        (
            "victim",
            changed({"sizes": shapes[first], "data": [1e39] * size}),
            "same",
            task["task_id"],
            "json",
            f"parameter '{first.removeprefix('net.')}' holds NaN or Inf",
        ),
        # Strings where numbers belong.
        (
            "victim",
            changed({"sizes": shapes[first], "data": ["0.01"] * size}),
            "same",
            task["task_id"],
            "json",
            f"parameter '{first}': tensor data must be a (regular, nested) list of numbers",
        ),
        (
            "victim",
            changed(meta={"num_samples": "5"}),
            "same",
            task["task_id"],
            "json",
            "meta.num_samples must be an integer from 1 to 1000000",
        ),
        (
            "victim",
            changed(meta={"num_samples": 10**12}),
            "same",
            task["task_id"],
            "json",
            "meta.num_samples must be an integer from 1 to 1000000",
        ),
        # Wrong shapes: a binary of the wrong size, and a claim of 90,000 dimensions (seconds of the
        # leaf's CPU to multiply out before the fix, growing with the square; under 1 MiB of JSON).
        (
            "victim",
            changed(binary(np.ones((1, 1), np.float32))),
            "same",
            task["task_id"],
            "msgpack",
            f"parameter '{first.removeprefix('net.')}' has shape [1, 1], model has {shapes[first]}",
        ),
        (
            "victim",
            changed({"sizes": [2**31 - 1] * 90_000, "data": [0.01]}),
            "same",
            task["task_id"],
            "json",
            f"parameter '{first}': sizes must be a list of at most 64 non-negative integers",
        ),
        # Wrong parameter names (missing and extra ones are in test_validation.py).
        ("victim", renamed, "same", task["task_id"], "json", "diff does not match the model: missing parameters "),
        # Kinds that are not a string, and a training error whose reason is 1,000 lists deep.
        ("victim", changed(kind=["et_tensor_diff"]), "same", task["task_id"], "json", "unsupported result kind "),
        # (As text: orjson reads 1,024 levels but writes only 254.)
        (
            "victim",
            b'{"kind": "error", "data": {"error": ' + nested(1_000) + b'}, "meta": {}}',
            "same",
            task["task_id"],
            "json",
            "device reported a training error: [[[[[[[...]]]]]]]",
        ),
    ]
    # Leaves report their counters with each sync: start from a view that includes both tasks.
    await wait_for(stack.api_url, job, lambda s: s["tasks_issued"] == 2, timeout=10)
    before = await counters(stack, job)
    for who, result, cookie, task_id, form, message in refusals:
        sent_cookie = task["cookie"] if cookie == "same" else cookie
        url = f"{p}/result?job_id={job}&task_id={task_id}&task_name=train"
        if form == "msgpack":
            body = msgpack.packb({"result": result, "cookie": sent_cookie}, use_bin_type=True)
            code, reply = await call(http, url, body, headers(who, ctype=MSGPACK))
        else:
            text = result if isinstance(result, bytes) else orjson.dumps(result)
            body = b'{"result": ' + text + b', "cookie": ' + orjson.dumps(sent_cookie) + b"}"
            code, reply = await call(http, url, body, headers(who))
        assert code == 200 and reply["status"] == "ERROR", (message, reply)
        assert reply["message"].startswith(message) and reply["task_id"] == task_id, (message, reply)
    # A msgpack result map with a key that is not UTF-8 never gets past validation.
    body = msgpack.packb({"result": {b"\xff": 1}, "cookie": task["cookie"]}, use_bin_type=True)
    code, reply = await call(
        http,
        f"{p}/result?job_id={job}&task_id={task['task_id']}&task_name=train",
        body,
        headers("victim", ctype=MSGPACK),
    )
    assert (code, reply) == (400, {"status": "INVALID_REQUEST", "message": "invalid result: keys must be strings"})
    await assert_untouched(stack, job, before, refused=len(refusals))

    # The victim's real result still counts, once; the thief's own task is untouched by all this.
    ok = await post_result(http, p, job, "victim", task, good)
    assert ok == {"status": "OK", "task_id": task["task_id"], "task_name": "train", "counted": True}
    ok = await post_result(http, p, job, "thief", thief, diff(thief))
    assert ok == {"status": "OK", "task_id": thief["task_id"], "task_name": "train", "counted": True}
    await assert_untouched(stack, job, before, refused=len(refusals), results_counted=2, reported=2)


async def test_stale_replayed_and_expired_results_are_not_counted(stack: Stack, http: aiohttp.ClientSession) -> None:
    p = stack.proxy_url
    # Two results close a round; a third slot lets one device be late for it. Leases last 2 s.
    job = await submit_job(
        stack.api_url,
        name="hostile-versions",
        model="xor",
        rounds=5,
        devices_per_round=2,
        over_selection=0.5,
        retry_wait=1,
        task_timeout=2.0,
        evaluate=False,
    )
    await wait_leaves_synced(stack.api_url, job, 2)
    await wait_for(stack.api_url, job, lambda s: s["model_version"] == 0, timeout=10)
    tasks = {d: await task_for(http, p, job, headers(d)) for d in ("early-1", "early-2", "straggler")}
    for d in ("early-1", "early-2"):
        assert (await post_result(http, p, job, d, tasks[d], diff(tasks[d])))["status"] == "OK"
    await wait_for(stack.api_url, job, lambda s: s["model_version"] == 1, timeout=10)
    await asyncio.sleep(0.6)  # the leaves' next syncs bring them version 1 too
    before = await counters(stack, job)
    # A result trained on version 0, arriving after version 1 exists: OK (Android must not quit), not counted.
    stale = await post_result(http, p, job, "straggler", tasks["straggler"], diff(tasks["straggler"]))
    assert stale == {
        "status": "OK",
        "task_id": tasks["straggler"]["task_id"],
        "task_name": "train",
        "message": "late result for model version 0: not counted",
        "counted": False,
        "reason": "late",
    }
    # The same, replayed by a device whose result already counted (its OK lost): it hears so.
    replay = await post_result(http, p, job, "early-1", tasks["early-1"], diff(tasks["early-1"]))
    assert replay == {
        "status": "OK",
        "task_id": tasks["early-1"]["task_id"],
        "task_name": "train",
        "message": "duplicate result for this task: counted once",
        "counted": True,
        "reason": "duplicate",
    }
    await assert_untouched(stack, job, before, late=1, duplicates=1)

    # A lease that ran out: the device was silent past task_timeout, so its slot went to others.
    expired = await task_for(http, p, job, headers("sleeper"))
    await asyncio.sleep(2.0 + 0.6)  # the lease, then a few leaf syncs that expire it
    reply = await post_result(http, p, job, "sleeper", expired, diff(expired))
    assert reply == {
        "status": "OK",
        "task_id": expired["task_id"],
        "task_name": "train",
        "message": "late result (lease expired or round closed): not counted",
        "counted": False,
        "reason": "late",
    }
    await assert_untouched(stack, job, before, late=2, duplicates=1, tasks_issued=1)


async def test_device_id_tricks_from_a_phone(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    """`x?N` and `x#i` from a client that is not NVFlare's simulator (PROTOCOL.md §8): one device each."""
    p = stack.proxy_url
    ios = '{"platform": "ios", "app_name": "edge", "app_version": "1.0"}'

    def phone(device_id: str) -> dict[str, str]:
        return headers(device_id, ios)

    before = await counters(stack, job)
    # On /task, `?N` and `#i` are just characters of one device's id: one task, one slot.
    for device_id in ("evil?1000", "evil#0", "evil?5#1"):
        await task_for(http, p, job, phone(device_id))
    code, reply = await call(http, f"{p}/selection?job_id={job}", {}, phone("observer"))
    assert (code, reply["status"]) == (200, "OK")
    # The answering leaf lists its own leases (some of the three, by hashing) and no `evil#1`..`evil#999`.
    assert set(reply["selection"]) <= {"evil?1000", "evil#0", "evil?5#1"}, reply
    # From a phone, `x?N` on /selection is an ordinary id too: no phantom devices, no amplification.
    code, reply = await call(http, f"{p}/selection?job_id={job}", {}, phone("phantom?3"))
    assert (code, reply["status"]) == (200, "OK")
    assert not any(d.startswith("phantom") for d in reply["selection"])
    # Only NVFlare's simulator (`platform=None`, docs/NVFLARE_SIMULATOR.md) announces devices this
    # way (§7 there): they are listed, and take no slot and no task.
    simulator = headers("sim?3", "app_name=flare_mobile&app_version=1.0&platform=None&platform_version=None")
    code, reply = await call(http, f"{p}/selection?job_id={job}", {}, simulator)
    assert (code, reply["status"]) == (200, "OK")
    assert {f"sim#{i}" for i in range(3)} <= set(reply["selection"])
    # Past the per-job cap: refused, with a reason and no server internals; a 7-digit N is no
    # announcement at all (an ordinary id).
    flood = headers("flood?100001", "app_name=flare_mobile&app_version=1.0&platform=None&platform_version=None")
    code, reply = await call(http, f"{p}/selection?job_id={job}", {}, flood)
    assert (code, reply["status"], reply["retry_wait"]) == (200, "RETRY", 1)
    assert reply["message"] == "simulated device group refused: too many devices for this job"
    flood = headers("flood?1000000", "app_name=flare_mobile&app_version=1.0&platform=None&platform_version=None")
    code, reply = await call(http, f"{p}/selection?job_id={job}", {}, flood)
    assert (code, reply["status"]) == (200, "OK") and not any(d.startswith("flood") for d in reply["selection"])
    await assert_untouched(stack, job, before, tasks_issued=3)
    await valid_device_trains(stack, http, job, "valid-after-id-tricks")


# -- slow and idle connections --------------------------------------------------------------------
async def task_latency(http: aiohttp.ClientSession, stack: Stack, job_id: str, devices: list[str]) -> list[float]:
    """Seconds each fresh device takes to get its task through the proxy, one after the other."""
    loop = asyncio.get_running_loop()
    latencies = []
    for device_id in devices:
        started = loop.time()
        await task_for(http, stack.proxy_url, job_id, headers(device_id))
        latencies.append(loop.time() - started)
    return latencies


async def trickle(port: int, payload: bytes, give_up: float) -> tuple[bytes, float]:
    """Send `payload` one byte a second until the proxy answers or closes; return what came back and when."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    received = b""
    try:
        for i in range(len(payload)):
            if loop.time() > give_up:
                break
            writer.write(payload[i : i + 1])
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 1.0)
            except TimeoutError:
                continue
            while chunk and loop.time() < give_up:  # the answer, then the proxy's end of stream
                received += chunk
                chunk = await asyncio.wait_for(reader.read(4096), max(0.1, give_up - loop.time()))
            return received, loop.time()
    except (ConnectionError, TimeoutError):
        return received, loop.time()
    finally:
        writer.close()
    return received, float("inf")  # still open at `give_up`


async def silent(port: int, give_up: float) -> tuple[bytes, float]:
    """Connect and send nothing; return what came back and when the proxy closed the connection."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        received = await asyncio.wait_for(reader.read(4096), give_up - loop.time())
        return received, loop.time()
    except (ConnectionError, TimeoutError):
        return b"", float("inf")
    finally:
        writer.close()


async def test_slowloris_connections_are_cut_and_devices_still_served(
    stack: Stack, http: aiohttp.ClientSession, job: str
) -> None:
    loop = asyncio.get_running_loop()
    port = port_of(stack)
    baseline = await task_latency(http, stack, job, [f"calm-{i}" for i in range(10)])
    payload = b"POST /task?job_id=" + job.encode() + b" HTTP/1.1\r\nHost: edgefl\r\nX-Flare-Device-ID: slow\r\n"
    started = loop.time()
    give_up = started + HEAD_TIMEOUT + 12  # the head deadline, the once-a-second sweep, and slack
    slow = [asyncio.ensure_future(trickle(port, payload, give_up)) for _ in range(1000)]
    mute = [asyncio.ensure_future(silent(port, give_up)) for _ in range(100)]
    try:
        await asyncio.sleep(3)  # all connected and trickling
        assert not any(t.done() for t in slow + mute), "a slow connection ended early"
        during = await task_latency(http, stack, job, [f"busy-{i}" for i in range(20)])
        answers = await asyncio.gather(*slow)
        muted = await asyncio.gather(*mute)
    finally:
        for t in slow + mute:
            t.cancel()
        await asyncio.gather(*slow, *mute, return_exceptions=True)
    # A connection that never sends a byte is closed quietly at the same deadline (nothing to answer).
    assert all(received == b"" and at - started < HEAD_TIMEOUT + 5 for received, at in muted), muted[:3]
    # Every trickler got the proxy's 408 and was closed, soon after the head deadline.
    closed_after = sorted(at - started for _, at in answers)
    timeout_answer = b'{"status":"INVALID_REQUEST","message":"request head not received in time"}'
    assert all(
        received.startswith(b"HTTP/1.1 408 ") and received.endswith(timeout_answer) for received, _ in answers
    ), {received[:200] for received, _ in answers}
    assert closed_after[-1] < HEAD_TIMEOUT + 5, closed_after[-1]
    print(
        f"\nslowloris: /task latency without {statistics.median(baseline) * 1e3:.1f} ms median / "
        f"{max(baseline) * 1e3:.1f} ms max, with 1,000 trickling {statistics.median(during) * 1e3:.1f} ms / "
        f"{max(during) * 1e3:.1f} ms; tricklers closed {closed_after[0]:.1f}-{closed_after[-1]:.1f} s after opening"
    )
    # Normal latency while they trickle: generous bounds for a shared 2-core machine.
    assert statistics.median(during) < 0.5 and max(during) < 3.0, during
    await valid_device_trains(stack, http, job, "valid-after-slowloris")


async def open_idle(
    port: int, count: int, parallel: int = 200
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` keep-alive connections, each having made one request and now idle."""
    gate = asyncio.Semaphore(parallel)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, port)
            opened.append((reader, writer))
            writer.write(b"GET /health HTTP/1.1\r\nHost: edgefl\r\n\r\n")
            reply = await asyncio.wait_for(read_reply(reader), 30)
            assert reply.status == 200 and "connection" not in reply.headers, reply

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 60)
    except BaseException:
        close_all(opened)
        raise
    return opened


def close_all(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_ten_thousand_idle_keepalive_connections(stack: Stack, http: aiohttp.ClientSession, job: str) -> None:
    port = port_of(stack)
    proxy = pid_of(stack, "proxy")
    baseline = await task_latency(http, stack, job, [f"calm-{i}" for i in range(10)])
    rss_before = rss_mib(proxy)
    idle = await open_idle(port, 10_000)
    try:
        fds = len(os.listdir(f"/proc/{proxy}/fd"))
        assert fds >= 10_000, fds  # the proxy really holds them all
        rss_with = rss_mib(proxy)
        during = await task_latency(http, stack, job, [f"busy-{i}" for i in range(20)])
        # Still kept alive, and still answering on the same connections.
        for reader, writer in idle[:: len(idle) // 10]:
            writer.write(b"GET /health HTTP/1.1\r\nHost: edgefl\r\n\r\n")
            assert (await asyncio.wait_for(read_reply(reader), 10)).status == 200
    finally:
        close_all(idle)

    async def released() -> bool:
        return len(os.listdir(f"/proc/{proxy}/fd")) < 1_000

    assert await wait_until(released, 15), "the proxy kept closed connections open"
    print(
        f"\nidle: proxy RSS {rss_before:.1f} MiB before, {rss_with:.1f} MiB with 10,000 idle keep-alive "
        f"connections ({(rss_with - rss_before) * 1024 / 10_000:.1f} KiB each), {rss_mib(proxy):.1f} MiB after; "
        f"/task latency {statistics.median(baseline) * 1e3:.1f} ms median without, "
        f"{statistics.median(during) * 1e3:.1f} ms median / {max(during) * 1e3:.1f} ms max with"
    )
    assert rss_with - rss_before < 100, (rss_before, rss_with)  # bounded: about 10 KiB a connection at most
    assert statistics.median(during) < 0.5 and max(during) < 3.0, during
    await valid_device_trains(stack, http, job, "valid-after-idle")
