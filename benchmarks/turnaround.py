"""Round turnaround: the last result of a round → the next model version servable (1M parameters).

    python benchmarks/turnaround.py [--rounds 12] [--params 1000000] [--leaves 2] [--devices 4] [--poll-ms 3]

Server (model cifar10 padded to --params float32 parameters by benchmarks/_big_model_server.py),
--leaves leaves and the proxy, pinned to CPU 1; this client on CPU 0. A job of --devices devices per
round (no over-selection, no evaluation). Each round every device takes its task (msgpack), then
posts a msgpack result (a small random diff); the last result closes the round. From the moment its
`OK` arrives, every device polls `/task` through the proxy every --poll-ms until it is handed the
task of the next version: **turnaround** is the time until every device has it (the new version is
servable on every leaf the devices hash to); "first" is the earliest device. Each figure includes
receiving the whole model (4 MB in msgpack) once.

Breakdown per round, from the server's and leaves' INFO logs (wall-clock, 1 ms resolution):
how long the due version waited for the leaves' answers (edge_gateway/closing.py) and the
checkpoint; each
leaf's model fetch and task payload build, and when the leaf started fetching (learned of the new
version) counted from the client's `OK`. The answers each device got while polling are counted by
message too. References measured in the same run: one numpy pass over the model (float32
`a += b`, this process), a `/task` RETRY round trip, and a `/task` OK round trip carrying the model
(a device asking again within its lease gets its task again).
Target (DESIGN.md): ≤ 200 ms, ExecuTorch export excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp
import msgpack
import numpy as np

from edge_gateway.simulator import wire

MSGPACK = "application/msgpack"
POLL_LIMIT_S = 30.0  # a version not servable by then fails the run


class Device:
    """One device's requests; the task it holds."""

    def __init__(self, session: aiohttp.ClientSession, base: str, job_id: str, device_id: str) -> None:
        self.session, self.base, self.job_id, self.id = session, base, job_id, device_id
        self.headers = {**wire.identity_headers(device_id), "Accept": MSGPACK}
        self.task: dict[str, Any] = {}

    async def ask(self) -> dict[str, Any]:
        async with self.session.post(
            f"{self.base}/task", params={"job_id": self.job_id}, data=b"{}", headers=self.headers
        ) as reply:
            body = await reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{self.id}: /task HTTP {reply.status}: {body[:200]!r}")
        return dict(msgpack.unpackb(body, raw=False))

    async def take(self, version: int, interval: float, answers: Counter[str] | None = None) -> float:
        """Poll until handed a task of `version`; the time it was (perf_counter)."""
        deadline = time.perf_counter() + POLL_LIMIT_S
        while True:
            reply = await self.ask()
            got = reply.get("task_data", {}).get("meta", {}).get("model_version") if reply["status"] == "OK" else None
            if got == version:
                self.task = reply
                return time.perf_counter()
            if answers is not None:
                answers[f"{reply['status']} {reply.get('message', f'v{got}')}"] += 1
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.id}: no task of v{version} within {POLL_LIMIT_S:.0f} s; last {reply}")
            await asyncio.sleep(interval)

    def result(self, diff: dict[str, np.ndarray]) -> tuple[dict[str, str], bytes]:
        content_type, body = wire.result_body("msgpack", diff, 1, self.task.get("cookie"))
        return {**wire.identity_headers(self.id), "Content-Type": content_type, "Accept": MSGPACK}, body

    async def report(self, request: tuple[dict[str, str], bytes]) -> None:
        params = {"job_id": self.job_id, "task_id": self.task["task_id"], "task_name": self.task["task_name"]}
        async with self.session.post(f"{self.base}/result", params=params, data=request[1], headers=request[0]) as r:
            reply = msgpack.unpackb(await r.read(), raw=False)
        if r.status != 200 or reply.get("status") != "OK" or "message" in reply:
            raise RuntimeError(f"{self.id}: result not counted: {r.status} {reply}")


async def measure(base: str, job_id: str, args: argparse.Namespace) -> dict[str, Any]:
    interval = args.poll_ms / 1e3
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        devices = [Device(session, base, job_id, f"turnaround-{i}") for i in range(args.devices)]
        for d in devices:
            await d.take(0, 0.05)
        shapes = wire.task_shapes(devices[0].task["task_data"])
        rng = np.random.default_rng(0)
        diff = {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in shapes.items()}
        rounds = []
        for version in range(args.rounds):
            requests = [d.result(diff) for d in devices]  # built before the clock starts
            for d, request in zip(devices[:-1], requests[:-1]):
                await d.report(request)
            sent = time.perf_counter()
            await devices[-1].report(requests[-1])
            ok, ok_wall = time.perf_counter(), time.time()
            answers: Counter[str] = Counter()
            ready = await asyncio.gather(*(d.take(version + 1, interval, answers) for d in devices))
            rounds.append(
                {
                    "version": version + 1,
                    "ok_wall": ok_wall,
                    "last_result_rtt_ms": (ok - sent) * 1e3,
                    "all_ms": (max(ready) - ok) * 1e3,
                    "first_ms": (min(ready) - ok) * 1e3,
                    "answers": dict(answers),
                }
            )
            print(
                json.dumps(
                    {k: round(v, 1) if isinstance(v, float) and k != "ok_wall" else v for k, v in rounds[-1].items()}
                ),
                flush=True,
            )
        refs = await references(devices[0], interval)
    return {"rounds": rounds, "refs": refs}


async def references(device: Device, interval: float) -> dict[str, float]:
    """Round trips through the stack, and one numpy pass over the model, medians of a few."""
    ok_rtt, retry_rtt = [], []
    for i in range(10):
        t = time.perf_counter()
        await device.ask()  # within its lease: the whole task again
        ok_rtt.append(time.perf_counter() - t)
        stranger = Device(device.session, device.base, device.job_id, f"turnaround-ref-{i}")
        t = time.perf_counter()
        await stranger.ask()  # every slot is taken: RETRY
        retry_rtt.append(time.perf_counter() - t)
        await asyncio.sleep(interval)
    params = sum(int(np.prod(s)) for s in wire.task_shapes(device.task["task_data"]).values())
    a, b = np.ones(params, np.float32), np.ones(params, np.float32)
    passes = []
    for _ in range(20):
        t = time.perf_counter()
        np.add(a, b, out=a)
        passes.append(time.perf_counter() - t)
    return {
        "task_ok_rtt_ms": h.median(ok_rtt) * 1e3,
        "task_retry_rtt_ms": h.median(retry_rtt) * 1e3,
        "numpy_pass_ms": h.median(passes) * 1e3,
        "params": params,
    }


# -- the processes' own timings -------------------------------------------------------------------
LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
SERVER_CHECKPOINT = re.compile(
    LOG_TIME + r".*model v(\d+) \(\d+ results\) after ([\d.]+) ms for the leaves, checkpoint written in ([\d.]+) ms"
)
LEAF_READY = re.compile(
    LOG_TIME + r".*model v(\d+) servable: fetched in ([\d.]+) ms, task payload built in ([\d.]+) ms"
)


def _wall(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def breakdown(server_log: Path, leaf_logs: list[Path]) -> dict[int, dict[str, Any]]:
    """Per version: the server's wait for the leaves and checkpoint, ms; per leaf: (learned at,
    fetch ms, build ms), wall-clock."""
    out: dict[int, dict[str, Any]] = {}
    for line in server_log.read_text(errors="replace").splitlines():
        if m := SERVER_CHECKPOINT.match(line):
            entry = out.setdefault(int(m[2]), {"leaves": {}})
            entry["leaves_ms"], entry["checkpoint_ms"] = float(m[3]), float(m[4])
    for log in leaf_logs:
        for line in log.read_text(errors="replace").splitlines():
            if m := LEAF_READY.match(line):
                fetch, build = float(m[3]), float(m[4])
                entry = out.setdefault(int(m[2]), {"leaves": {}})
                entry["leaves"][log.stem] = {
                    "learned_wall": _wall(m[1]) - (fetch + build) / 1e3,
                    "fetch_ms": fetch,
                    "build_ms": build,
                }
    return out


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--leaves", type=int, default=2)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--poll-ms", type=float, default=3.0)
    parser.add_argument(
        "--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("turnaround-%Y%m%d-%H%M%S")
    )
    args = parser.parse_args()
    h.pin_self()
    job = {
        "name": "bench-turnaround",
        "model": "cifar10",
        "rounds": args.rounds + 1,
        "devices_per_round": args.devices,
        "over_selection": 0.0,
        "retry_wait": 1,
        "task_timeout": 600.0,
        "round_timeout": 600.0,
        "evaluate": False,
    }
    print(
        f"machine: {h.machine()}; load {h.loadavg()}; stack pinned to CPU {h.SUT_CPU}, client on CPU "
        f"{h.LOADGEN_CPU}; {args.leaves} leaves; job {json.dumps(job)}",
        flush=True,
    )
    big = [h.PY, str(Path(__file__).parent / "_big_model_server.py"), str(args.params)]
    with h.Procs(args.out / "logs") as procs:
        stack = h.start_stack(
            procs,
            args.out / "stack",
            tag="turnaround",
            leaves=args.leaves,
            cpus=h.SUT_CPU,
            server_cmd=big,
            log_level="info",
        )
        job_id = stack.submit(job)
        load0 = h.loadavg()
        cpu0 = {k: p.cpu_s() for k, p in stack.procs().items()}
        result = asyncio.run(measure(stack.proxy_url, job_id, args))
        cpu = {k: round(p.cpu_s() - cpu0[k], 1) for k, p in stack.procs().items()}
        load1 = h.loadavg()
        status = stack.job_status(job_id)
        logs = (stack.server.log_path, [p.log_path for p in stack.leaves])
    rounds, refs = result["rounds"], result["refs"]
    parts = breakdown(*logs)
    print(
        f"\nload {load0} → {load1}; CPU s over the run: {cpu}; server counted "
        f"{status['results_counted']} results in {status['round']} rounds"
    )
    print(
        "\n| version | **all devices served, ms** | first device, ms | server: leaves' answers + checkpoint, ms | "
        "per leaf: learned after OK / fetch / payload build, ms | answers while polling |"
    )
    print("|---:|---:|---:|---|---|---|")
    for r in rounds:
        p = parts.get(r["version"], {"leaves": {}})
        leaves = "; ".join(
            f"{name.split('.')[-1]}: {(v['learned_wall'] - r['ok_wall']) * 1e3:.0f} / "
            f"{v['fetch_ms']:.0f} / {v['build_ms']:.0f}"
            for name, v in sorted(p["leaves"].items())
        )
        answers = ", ".join(f"{k} ×{n}" for k, n in sorted(r["answers"].items()))
        print(
            f"| {r['version']} | {r['all_ms']:.0f} | {r['first_ms']:.0f} | {p.get('leaves_ms', float('nan')):.0f} + "
            f"{p.get('checkpoint_ms', float('nan')):.0f} | {leaves} | {answers} |"
        )
    every, first = [r["all_ms"] for r in rounds], [r["first_ms"] for r in rounds]
    rtt = [r["last_result_rtt_ms"] for r in rounds]
    from_send = [r["all_ms"] + r["last_result_rtt_ms"] for r in rounds]
    print("\n| turnaround (ms) | median | p90 | max |\n|---|---:|---:|---:|")
    for label, values in (
        ("**every device served, from the last result's `OK`**", every),
        ("first device served, from the `OK`", first),
        ("every device served, from sending the last result", from_send),
        ("the last /result round trip (round close and checkpoint included)", rtt),
    ):
        print(f"| {label} | {h.median(values):.0f} | {_pct(values, 0.9):.0f} | {max(values):.0f} |")
    print(
        f"\nreferences (medians, same run): /task OK with the model {refs['task_ok_rtt_ms']:.1f} ms, /task RETRY "
        f"{refs['task_retry_rtt_ms']:.2f} ms, numpy float32 `a += b` over {refs['params']:,} parameters "
        f"{refs['numpy_pass_ms']:.2f} ms; median turnaround = {h.median(every) / refs['task_ok_rtt_ms']:.1f}× "
        f"the model's round trip, {h.median(every) / refs['numpy_pass_ms']:.0f}× a numpy pass. "
        "Target (DESIGN.md): ≤ 200 ms."
    )


if __name__ == "__main__":
    main()
