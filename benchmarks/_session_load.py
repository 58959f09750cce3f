"""Many light devices in one process, for benchmarks/sessions.py: raw asyncio sockets, no framework.

    python benchmarks/_session_load.py ROLE PROXY_PORT JOB FIRST COUNT SOURCES RATE OUT_DIR NAME RETRY_WAIT

JOB is a job name for sessions, a job id for `http`. ROLE is `idle` (rendezvous, then heartbeats), `push` (sessions that train round 1 and wait for the
`round` 2 push) or `http` (the iOS app's loop: `/task`, `/result`, then `/task` every `retry_wait`
s until round 2's task). A session costs one socket and one small object: the opening handshake is
written by hand and frames are pre-encoded with a zero mask key (RFC 6455 lets the key be any value;
the gateway must unmask whatever it is). Connections are opened at RATE per second from the source
addresses SOURCES (comma-separated 127.0.0.x: each gives ~28k ephemeral ports towards one port).

Counters go to OUT_DIR/NAME.progress.json every second; on SIGTERM the process writes
OUT_DIR/NAME.json (counters, and per device the client-clock times the benchmark measures) and exits.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

HANDSHAKE_PENDING = 500  # connections between connect and their first answer, at most
STEP = 0.01  # every weight moves by this much: any valid WEIGHT_DIFF will do


def ws_frame(payload: bytes) -> bytes:
    """A final, masked text frame; the zero key leaves the payload as it is."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def diff(weights: Any) -> Any:
    if isinstance(weights, dict):
        return {name: diff(value) for name, value in weights.items()}
    if isinstance(weights, list):
        return [diff(w) for w in weights]
    return STEP


class Load:
    """What every device of this process shares: counters, times, the heartbeat schedule."""

    def __init__(self, role: str, port: int, job: str, retry_wait: float) -> None:
        self.role, self.port, self.job = role, port, job
        self.retry_wait = retry_wait
        self.counts: Counter[str] = Counter()
        self.pending = asyncio.Semaphore(HANDSHAKE_PENDING)
        self.heartbeat_due: deque[tuple[float, Session]] = deque()
        self.interval = 30.0
        self.last_ack = 0.0  # client clock of the last result acknowledged (round 1's closing one, at the end)
        self.round2: list[float] = []  # client clock of each device's round-2 `round` frame (or task)
        self.round1_acks = 0
        rendezvous = {"type": "rendezvous", "job_name": job, "capabilities": {"methods": ["xor"]}, "state": {}}
        self.rendezvous = ws_frame(orjson.dumps(rendezvous))
        self.heartbeat = ws_frame(b'{"type":"heartbeat"}')


class Session(asyncio.Protocol):
    """One WebSocket session: the opening handshake by hand, then whole server frames parsed."""

    __slots__ = (
        "buffer",
        "closed",
        "device_id",
        "first_round",
        "got_round2",
        "load",
        "released",
        "transport",
        "upgraded",
    )

    def __init__(self, load: Load, device_id: str) -> None:
        self.load = load
        self.device_id = device_id
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.released = False
        self.closed = False
        self.first_round: int | None = None  # the round this device trains in; the next one is timed
        self.got_round2 = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(  # type: ignore[union-attr]
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.load.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: edgefl.v1.json\r\n"
                f"X-Flare-Device-ID: {self.device_id}\r\nX-Flare-Device-Info: platform=sim\r\n\r\n"
            ).encode()
        )

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.load.pending.release()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.load.counts["refused " + self.buffer[:12].decode(errors="replace")] += 1
                self.release()
                self.transport.close()  # type: ignore[union-attr]
                return
            self.upgraded = True
            del self.buffer[: end + 4]
            self.transport.write(self.load.rendezvous)  # type: ignore[union-attr]
        self.frames()

    def frames(self) -> None:
        buf = self.buffer
        while len(buf) >= 2:
            n, start = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, start = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + n:
                return
            opcode, payload = buf[0] & 0x0F, bytes(buf[start : start + n])
            del buf[: start + n]
            if opcode == 0x8:
                self.load.counts["close frame"] += 1
            elif opcode in (0x1, 0x2):
                self.message(orjson.loads(payload))

    def message(self, message: dict[str, Any]) -> None:
        load, kind = self.load, message["type"]
        load.counts[kind] += 1
        if kind == "accept":
            load.interval = float(message["heartbeat_interval"])
            load.heartbeat_due.append((time.monotonic() + load.interval, self))
            self.release()
        elif kind in ("later", "error"):
            self.release()
        elif kind == "round" and load.role == "push":
            if self.first_round is None:
                self.first_round = message["round"]
                self.send(ws_frame(orjson.dumps({"type": "start_training", "round": message["round"]})))
            elif message["round"] != self.first_round and not self.got_round2:
                self.got_round2 = True
                load.round2.append(time.time())
        elif kind == "task":
            weights = message["task_data"]["data"]
            result = {"kind": "WEIGHT_DIFF", "data": diff(weights), "meta": {"num_samples": 4}}
            end = {"type": "end_training", "task_id": message["task_id"], "result": result, "metrics": {}}
            self.send(ws_frame(orjson.dumps(end)))
        elif kind == "ack" and message["counted"]:
            load.last_ack = max(load.last_ack, time.time())
            load.round1_acks += 1

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.load.counts["closed"] += 1
        self.release()


class Poller(asyncio.Protocol):
    """The iOS app over one keep-alive connection: `/task`, its `/result`, then `/task` every
    `retry_wait` s (as the gateway says) until the next round's task."""

    __slots__ = ("buffer", "device_id", "headers", "load", "trained", "transport")

    def __init__(self, load: Load, device_id: str) -> None:
        self.load = load
        self.device_id = device_id
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.trained = False
        info = quote(json.dumps({"device_id": device_id, "platform": "ios", "app_name": "bench"}))
        self.headers = (
            f"Host: 127.0.0.1:{load.port}\r\nX-Flare-Device-ID: {device_id}\r\n"
            f"X-Flare-Device-Info: {info}\r\nX-Flare-User-Info: {{}}\r\nContent-Type: application/json\r\n"
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.poll()

    def post(self, target: str, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            head = f"POST {target} HTTP/1.1\r\n{self.headers}Content-Length: {len(body)}\r\n\r\n"
            self.transport.write(head.encode() + body)

    def poll(self) -> None:
        self.post(f"/task?job_id={self.load.job}", b"{}")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            self.load.counts["no content-length"] += 1
            self.transport.close()  # type: ignore[union-attr]
            return
        length = int(head[at + 15 :].split(b"\r\n", 1)[0])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        self.answer(head.split(b" ", 2)[1].decode(), orjson.loads(body))

    def answer(self, code: str, reply: dict[str, Any]) -> None:
        load, status = self.load, reply.get("status", "?")
        load.counts[f"{code} {status}"] += 1
        if status == "OK" and "task_data" in reply and not self.trained:
            result = {"kind": "WEIGHT_DIFF", "data": diff(reply["task_data"]["data"]), "meta": {"num_samples": 4}}
            query = f"/result?job_id={load.job}&task_id={quote(reply['task_id'])}&task_name=train"
            self.post(query, orjson.dumps({"result": result, "cookie": reply["cookie"]}))
        elif status == "OK" and "task_data" in reply:
            load.round2.append(time.time())
            self.transport.close()  # type: ignore[union-attr]
        elif status == "OK":  # the result's answer
            self.trained = True
            load.last_ack = max(load.last_ack, time.time())
            load.round1_acks += 1
            # Phones poll out of step with each other and with the round: a random phase.
            asyncio.get_running_loop().call_later(random.uniform(0, load.retry_wait), self.poll)
        elif status in ("RETRY", "NO_TASK"):
            asyncio.get_running_loop().call_later(float(reply.get("retry_wait") or load.retry_wait), self.poll)
        else:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.counts["closed"] += 1


async def heartbeats(load: Load, stop: asyncio.Event) -> None:
    """Each session heartbeats once per interval, in the order they were accepted."""
    while not stop.is_set():
        now = time.monotonic()
        due = load.heartbeat_due
        while due and due[0][0] <= now:
            _, session = due.popleft()
            if not session.closed:
                session.send(load.heartbeat)
                load.counts["heartbeats sent"] += 1
                due.append((now + load.interval, session))
        await asyncio.sleep(0.05)


async def open_all(load: Load, first: int, count: int, sources: list[str], rate: float) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - loop.time()))
        device_id = f"{load.role}-{first + i}"
        factory = (
            (lambda d=device_id: Poller(load, d)) if load.role == "http" else (lambda d=device_id: Session(load, d))
        )
        if load.role != "http":
            await load.pending.acquire()
        try:
            await loop.create_connection(factory, "127.0.0.1", load.port, local_addr=(sources[i % len(sources)], 0))
            load.counts["connected"] += 1
        except OSError as exc:
            load.counts[f"connect failed: {exc.strerror or exc}"] += 1
            if load.role != "http":
                load.pending.release()


def write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


async def main(argv: list[str]) -> None:
    role, port, job, first, count, sources, rate, out, name, retry_wait = argv
    load = Load(role, int(port), job, float(retry_wait))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(open_all(load, int(first), int(count), sources.split(","), float(rate)))]
    if role != "http":
        tasks.append(asyncio.create_task(heartbeats(load, stop)))
    out_dir = Path(out)
    while not stop.is_set():
        progress = {**load.counts, "round1_acks": load.round1_acks, "round2": len(load.round2)}
        write(out_dir / f"{name}.progress.json", progress)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    for task in tasks:
        task.cancel()
    final = {"counts": dict(load.counts), "last_ack": load.last_ack, "round2": load.round2}
    write(out_dir / f"{name}.json", final)


if __name__ == "__main__":
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(sys.argv[1:]))
