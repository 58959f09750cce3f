"""Model download: `/task` OK answers carrying the model, served by one leaf through the proxy (MB/s).

    python benchmarks/download.py [--seconds 10] [--conns 16]

Models: cifar10 as bundled (62,006 parameters) and a synthetic 6 MB one (cifar10 padded to 1,500,000
float32 parameters by benchmarks/_big_model_server.py), each in msgpack (`Accept: application/msgpack`,
raw float32) and JSON (nested lists, what iOS/Android-style clients get). Proxy + leaf + server are
pinned to CPU 1; the client (this process, aiohttp, --conns concurrent devices) to CPU 0.
Each device takes its task once, then asks again for --seconds: a device asking again within its
lease gets the same task (its answer may have been lost), so every answer is a full model served
from the leaf's per-version cache (edge_gateway/leaf/task_payload.py), with only task id and cookie spliced
in. MB/s = response bytes the client received / wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import _harness as h
import aiohttp

JOB = {
    "name": "bench-download",
    "model": "cifar10",
    "rounds": 1,
    "devices_per_round": 100_000,
    "over_selection": 0.0,
    "retry_wait": 5,
    "task_timeout": 3600.0,
    "round_timeout": 3600.0,
    "evaluate": False,
}
MSGPACK = "application/msgpack"


async def download(
    base: str, job_id: str, accept: str | None, conns: int, seconds: float, tag: str, procs: dict[str, h.Proc]
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        devices = [f"dl-{tag}-{i}" for i in range(conns)]
        sizes = []
        for device in devices:  # first asks: each takes a lease (and may wait for the leaf's next sync)
            status, body = await h.ask_task(session, base, job_id, device, accept)
            if status != 200 or (accept is None and not body.startswith(b'{"status":"OK"')):
                raise RuntimeError(f"no task for {device}: {status} {body[:200]!r}")
            sizes.append(len(body))
        received = requests = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def device_loop(device: str) -> None:
            nonlocal received, requests
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                status, body = await h.ask_task(session, base, job_id, device, accept)
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    raise RuntimeError(f"{device}: HTTP {status}")
                received += len(body)
                requests += 1

        before = {k: p.cpu_s() for k, p in procs.items()}
        cpu0, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(device_loop(d) for d in devices))
        wall = time.perf_counter() - start
        cpu = {k: round(p.cpu_s() - before[k], 2) for k, p in procs.items()}
        latencies.sort()
        return {
            "answer_mb": sizes[0] / 1e6,
            "requests": requests,
            "wall_s": wall,
            "mb_per_s": received / 1e6 / wall,
            "req_per_s": requests / wall,
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
            "client_cpu_s": time.process_time() - cpu0,
            "cpu_s": cpu,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--big-params", type=int, default=1_500_000)
    parser.add_argument("--quiet-max", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("download-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    h.pin_self()
    print(
        f"machine: {h.machine()}; load {h.loadavg()}; stack pinned to CPU {h.SUT_CPU}, client on CPU {h.LOADGEN_CPU}",
        flush=True,
    )
    rows = []
    big = [h.PY, str(Path(__file__).parent / "_big_model_server.py"), str(args.big_params)]
    with h.Procs(args.out / "logs") as procs:
        for model, server_cmd in (("cifar10 (62,006 params)", None), (f"synthetic {args.big_params:,} params", big)):
            tag = "big" if server_cmd else "cifar10"
            stack = h.start_stack(procs, args.out / tag, tag=tag, cpus=h.SUT_CPU, server_cmd=server_cmd)
            job_id = stack.submit(JOB)
            h.wait_task_status(stack.proxy_url, f"/task?job_id={job_id}", "OK", timeout=120)
            for codec, accept in (("msgpack", MSGPACK), ("json", None)):
                waited = h.quiet_wait(args.quiet_max, own=procs.procs)
                load = h.loadavg()
                r = asyncio.run(
                    download(stack.proxy_url, job_id, accept, args.conns, args.seconds, f"{tag}-{codec}", stack.procs())
                )
                r.update(
                    model=model,
                    codec=codec,
                    load=load,
                    quiet_wait_s=waited,
                    leaf_mb_per_cpu_s=r["mb_per_s"] * r["wall_s"] / max(r["cpu_s"]["leaf-0"], 1e-9),
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
            procs.stop_all()
    print(
        "\n| model | codec | answer MB | req/s | **MB/s through proxy** | MB per leaf CPU-s | p50 ms | p99 ms | CPU s (proxy, leaf, server) | client CPU s | load |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        c = r["cpu_s"]
        print(
            f"| {r['model']} | {r['codec']} | {r['answer_mb']:.2f} | {r['req_per_s']:,.0f} | {r['mb_per_s']:,.0f} | "
            f"{r['leaf_mb_per_cpu_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{c['proxy']}, {c['leaf-0']}, {c['server']} | {r['client_cpu_s']:.1f} | {r['load']} |"
        )
    print(
        f"\n{args.conns} concurrent devices, {args.seconds:.0f} s per row; target (DESIGN.md): ≥ 200 MB/s from a leaf."
    )


if __name__ == "__main__":
    main()
