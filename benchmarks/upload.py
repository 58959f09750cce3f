"""Result upload: `/result` bodies accepted and aggregated per second, through the proxy into one leaf.

    python benchmarks/upload.py [--results 800] [--msgpack-results 3000] [--conns 16] [--modes log,memory]

The update is a cifar10-size diff (62,006 float32 parameters), sent two ways:
  json     the iOS app's upload: `et_tensor_diff`, `net.`-prefixed names, sizes/strides/flat data
           (float32 shortest form, ~0.8 MB per body; PROTOCOL.md §5)
  msgpack  our simulated devices' binary form: `{dtype, shape, data}` tensors (248 kB per body)
Proxy + leaf + server are pinned to CPU 1, the client (this process) to CPU 0. First every device
takes a task (and its cookie), untimed; then --conns devices at a time post their results, timed.
A result counts when its answer is `OK` without a "not counted" message: the leaf answers once the
result is in its write-ahead log on disk (fdatasync'd), and delivers it to the server in the
background; the job's `reported` count is checked against it once delivered. Each mode runs on its
own stack in the same run: `log` (as in service) and `memory` (EDGEFL_LEAF_RESULT_LOG=false: the same
path with results kept in memory only), so the two rows show what the log costs. The reference is numpy adding the same arrays
on the same core: `a += b` (float32) and the float64 accumulation FedAvg does (`acc64 += b`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp
import msgpack
import numpy as np
import orjson

from device_protocol.tensors import NAME_PREFIX, tensors_to_binary
from edge_gateway.models.specs import param_shapes

JOB = {
    "name": "bench-upload",
    "model": "cifar10",
    "rounds": 1,
    "devices_per_round": 100_000,
    "over_selection": 0.0,
    "retry_wait": 5,
    "task_timeout": 3600.0,
    "round_timeout": 3600.0,
    "evaluate": False,
}


def diff_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: (rng.standard_normal(s) * 0.01).astype(np.float32) for k, s in param_shapes("cifar10").items()}


def result_part(codec: str, diff: dict[str, np.ndarray]) -> bytes:
    """The `result` value, encoded once: every device uploads the same update."""
    meta = {"epochs": 1, "learning_rate": 0.01, "batch_size": 4, "num_samples": 32}
    if codec == "msgpack":
        return msgpack.packb({"kind": "WEIGHT_DIFF", "data": tensors_to_binary(diff), "meta": meta}, use_bin_type=True)
    data = {
        NAME_PREFIX + k: {"sizes": list(a.shape), "strides": [s // 4 for s in a.strides], "data": a.ravel()}
        for k, a in diff.items()
    }
    # orjson writes float32 arrays in float32's shortest form, as a phone's JSON encoder does.
    return orjson.dumps({"kind": "et_tensor_diff", "data": data, "meta": meta}, option=orjson.OPT_SERIALIZE_NUMPY)


def body(codec: str, result: bytes, cookie: dict) -> bytes:
    if codec == "msgpack":  # a map of 2: result (pre-packed), cookie
        return b"\x82" + msgpack.packb("result") + result + msgpack.packb("cookie") + msgpack.packb(cookie)
    return b'{"result":' + result + b',"cookie":' + orjson.dumps(cookie) + b"}"


async def upload(base: str, job_id: str, codec: str, n: int, conns: int, procs: dict[str, h.Proc]) -> dict[str, Any]:
    result = result_part(codec, diff_arrays())
    content_type = "application/msgpack" if codec == "msgpack" else "application/json"
    connector = aiohttp.TCPConnector(limit=max(conns, 64))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        sem = asyncio.Semaphore(64)

        async def take(i: int) -> tuple[str, dict, bytes]:
            device = f"up-{codec}-{os.getpid()}-{i}"
            async with sem:
                for _ in range(50):
                    _status, raw = await h.ask_task(session, base, job_id, device)
                    task = json.loads(raw)
                    if task.get("status") == "OK":
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise RuntimeError(f"{device}: no task: {raw[:200]!r}")
            params = {"job_id": job_id, "task_id": task["task_id"], "task_name": task["task_name"]}
            return device, params, body(codec, result, task["cookie"])

        prepared = await asyncio.gather(*(take(i) for i in range(n)))
        outcomes: dict[str, int] = {}
        latencies: list[float] = []
        queue = list(prepared)

        async def device_loop() -> None:
            while queue:
                device, params, data = queue.pop()
                t = time.perf_counter()
                async with session.post(
                    f"{base}/result", params=params, data=data, headers=h.device_headers(device, content_type)
                ) as reply:
                    answer = json.loads(await reply.read())
                latencies.append(time.perf_counter() - t)
                key = f"{reply.status} {answer.get('status')} {answer.get('message', '')}".strip()
                outcomes[key] = outcomes.get(key, 0) + 1

        before = {k: p.cpu_s() for k, p in procs.items()}
        cpu0, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(device_loop() for _ in range(conns)))
        wall = time.perf_counter() - start
        cpu = {k: round(p.cpu_s() - before[k], 2) for k, p in procs.items()}
    latencies.sort()
    total = sum(len(p[2]) for p in prepared)
    return {
        "body_mb": len(prepared[0][2]) / 1e6,
        "results": n,
        "wall_s": wall,
        "mb_per_s": total / 1e6 / wall,
        "results_per_s": n / wall,
        "p50_ms": latencies[n // 2] * 1e3,
        "p99_ms": latencies[int(n * 0.99)] * 1e3,
        "outcomes": outcomes,
        "accepted": outcomes.get("200 OK", 0),
        "client_cpu_s": time.process_time() - cpu0,
        "cpu_s": cpu,
    }


def numpy_reference(seconds: float = 2.0) -> dict[str, float]:
    """MB/s of update data numpy adds on the server core: float32 `a += b`, float64 `acc += b`."""
    os.sched_setaffinity(0, {int(h.SUT_CPU)})
    try:
        diff = diff_arrays()
        nbytes = sum(a.nbytes for a in diff.values())
        out = {}
        for name, dtype in (("numpy_f32", np.float32), ("numpy_f64", np.float64)):
            acc = {k: np.zeros(a.shape, dtype) for k, a in diff.items()}
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                for k, a in diff.items():
                    np.add(acc[k], a, out=acc[k])
                n += 1
            out[name] = nbytes * n / 1e6 / (time.perf_counter() - start)
        return out
    finally:
        h.pin_self()


def delivered(stack: h.Stack, job_id: str, reported0: int, accepted: int, timeout: float = 30.0) -> int:
    """How many results the server holds once the leaf has delivered what it acknowledged (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        counted = int(stack.job_status(job_id)["reported"]) - reported0
        if counted >= accepted or time.monotonic() > deadline:
            return counted
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=int, default=800, help="JSON results")
    parser.add_argument("--msgpack-results", type=int, default=3000, help="msgpack results")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--quiet-max", type=float, default=30.0)
    parser.add_argument("--modes", default="log,memory", help="log: the result log on disk; memory: without it")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("upload-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    h.pin_self()
    print(
        f"machine: {h.machine()}; load {h.loadavg()}; stack pinned to CPU {h.SUT_CPU}, client on CPU {h.LOADGEN_CPU}",
        flush=True,
    )
    rows = []
    for mode in args.modes.split(","):
        leaf_env = {"EDGEFL_LEAF_RESULT_LOG": "false"} if mode == "memory" else {}
        with h.Procs(args.out / mode / "logs") as procs:
            stack = h.start_stack(
                procs, args.out / mode / "stack", tag=f"upload-{mode}", cpus=h.SUT_CPU, leaf_env=leaf_env
            )
            job_id = stack.submit(JOB)
            h.wait_task_status(stack.proxy_url, f"/task?job_id={job_id}", "OK", timeout=120)
            for codec in ("json", "msgpack"):
                reported0 = stack.job_status(job_id)["reported"]
                waited = h.quiet_wait(args.quiet_max, own=procs.procs)
                load = h.loadavg()
                n = args.results if codec == "json" else args.msgpack_results
                r = asyncio.run(upload(stack.proxy_url, job_id, codec, n, args.conns, stack.procs()))
                cpu = r["cpu_s"]  # during the timed uploads only
                r.update(
                    mode=mode,
                    codec=codec,
                    load=load,
                    quiet_wait_s=waited,
                    server_counted=delivered(stack, job_id, reported0, r["accepted"]),
                    leaf_mb_per_cpu_s=r["mb_per_s"] * r["wall_s"] / max(cpu["leaf-0"], 1e-9),
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
    ref = numpy_reference()
    print(
        f"\nnumpy on the same arrays (CPU {h.SUT_CPU}): float32 a += b {ref['numpy_f32']:,.0f} MB/s, "
        f"float64 acc += b {ref['numpy_f64']:,.0f} MB/s (MB of float32 update data)"
    )
    print(
        "\n| mode | codec | body MB | results | results/s | **MB/s through proxy** | MB per leaf CPU-s | ÷ numpy f32 += | "
        "÷ numpy f64 += | p50 ms | p99 ms | accepted / counted by server | CPU s (proxy, leaf, server) | load |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        c = r["cpu_s"]
        # Compare like with like: the float32 payload bytes each result carries (248 kB), not JSON text.
        payload_mb_s = r["results_per_s"] * 62_006 * 4 / 1e6
        print(
            f"| {r['mode']} | {r['codec']} | {r['body_mb']:.2f} | {r['results']} | {r['results_per_s']:,.0f} | {r['mb_per_s']:,.0f} | "
            f"{r['leaf_mb_per_cpu_s']:,.0f} | {payload_mb_s / ref['numpy_f32']:.3f} | {payload_mb_s / ref['numpy_f64']:.3f} | "
            f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['accepted']} / {r['server_counted']} | "
            f"{c['proxy']}, {c['leaf-0']}, {c['server']} | {r['load']} |"
        )
    print(
        "\n÷ numpy: float32 bytes of updates aggregated per second through the stack ÷ numpy's on the same arrays. "
        "Targets (DESIGN.md): JSON ≥ 50 MB/s per leaf core; msgpack ≥ 50 % of numpy `a += b`; "
        "with the log ≥ 90 % of the results/s without it."
    )


if __name__ == "__main__":
    main()
