"""1,000 updates of a 1M-parameter model into `edge_gateway.fedavg.PartialSum`, against plain numpy.

    python benchmarks/aggregation.py [--updates 1000] [--repeat 3]

Every variant runs in a fresh process pinned to CPU 1 (so its peak RSS is its own and wrk-free);
the updates cycle over a pool of 8 distinct float32 updates (4 MB each, 32 MB: bigger than any cache).
  numpy += f32    `a += b` in float32: what the memory bandwidth allows, the reference
  numpy += f64    `acc64 += upd32`: the float64 accumulation FedAvg needs, in plain numpy
  numpy += w·Δ    `acc64 += upd32 * w`: the weighted form in plain numpy
  PartialSum w=1  `PartialSum.add_update(update, 1.0)`
  PartialSum w=n  `PartialSum.add_update(update, 32.0)` (a device that reports num_samples)
Then, once: 4 leaves' partial sums combined on the server (`add_partial`), the round closed
(`apply_to`), and the next version's task payload built (`TaskPayload`, JSON + msgpack), i.e. the
server- and leaf-side work of "last result → next version servable" (ExecuTorch export excluded).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import _harness as h
import numpy as np

SHAPES = {"fc1.weight": (1000, 784), "fc1.bias": (1000,), "fc2.weight": (215, 1000)}  # 1,000,000 parameters
POOL = 8
VARIANTS = ("numpy_f32", "numpy_f64", "numpy_f64_w", "partial_w1", "partial_wn")
LABELS = {
    "numpy_f32": "numpy `a += b` (float32)",
    "numpy_f64": "numpy `acc64 += upd32`",
    "numpy_f64_w": "numpy `acc64 += upd32 * w`",
    "partial_w1": "PartialSum.add_update, w = 1",
    "partial_wn": "PartialSum.add_update, w = 32",
}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(variant: str, updates: int) -> dict[str, float]:
    """Inside the child process: time `updates` additions; peak RSS over the baseline."""
    from edge_gateway.fedavg import PartialSum

    rng = np.random.default_rng(0)
    pool = [{k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()} for _ in range(POOL)]
    baseline = _rss_mb()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if variant == "numpy_f32":
        acc = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
        step = lambda u: [np.add(acc[k], u[k], out=acc[k]) for k in acc]  # noqa: E731
    elif variant == "numpy_f64":
        acc = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
        step = lambda u: [np.add(acc[k], u[k], out=acc[k]) for k in acc]  # noqa: E731
    elif variant == "numpy_f64_w":
        acc = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}

        def step(u: dict[str, np.ndarray]) -> None:
            for k in acc:
                acc[k] += u[k] * 32.0
    else:
        partial = PartialSum(SHAPES)
        w = 1.0 if variant == "partial_w1" else 32.0
        step = lambda u: partial.add_update(u, w)  # noqa: E731
    step(pool[0])  # first touch of the accumulator's pages is not the steady state
    start = time.perf_counter()
    cpu0 = time.process_time()
    for i in range(updates):
        step(pool[i % POOL])
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak,
        "extra_peak_mb": peak - max(peak0, baseline),
    }


def run_round_close() -> dict[str, float]:
    """Inside the child: combine 4 leaves' partials, close the round, build the next task payload."""
    from edge_gateway.fedavg import PartialSum
    from edge_gateway.leaf.task_payload import TaskPayload

    rng = np.random.default_rng(1)
    weights = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    partials = []
    for _ in range(4):
        p = PartialSum(SHAPES)
        p.add_update({k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}, 8.0)
        partials.append(p)
    out = {}
    t = time.perf_counter()
    total = PartialSum(SHAPES)
    for p in partials:
        total.add_partial(p.sums, p.weight, p.count)
    out["combine_4_partials_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    new = total.apply_to(weights, 1.0)
    out["apply_to_ms"] = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    build = getattr(TaskPayload, "for_weights", TaskPayload)  # the constructor took weights before for_weights
    payload = build("job", 1, new, {"model": "bench"})
    out["task_payload_ms"] = (time.perf_counter() - t) * 1e3
    out["payload_json_mb"] = len(payload.render("t", {"c": 1}, False)[1]) / 1e6
    out["payload_msgpack_mb"] = len(payload.render("t", {"c": 1}, True)[1]) / 1e6
    return out


def child(argv: list[str]) -> dict[str, float]:
    done = subprocess.run(
        ["taskset", "-c", h.SUT_CPU, sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parent,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=VARIANTS + ("round",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "round":
        print(json.dumps(run_round_close()))
        return
    if args.child:
        print(json.dumps(run_variant(args.child, args.updates)))
        return
    print(
        f"machine: {h.machine()}; load {h.loadavg()}; {args.updates} updates of {sum(np.prod(s) for s in SHAPES.values()):,} "
        f"float32 parameters (4 MB each), {args.repeat} interleaved repetitions, pinned to CPU {h.SUT_CPU}",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    loads = []
    for _ in range(args.repeat):
        for v in VARIANTS:
            loads.append(h.loadavg())
            results[v].append(child(["--child", v, "--updates", str(args.updates)]))
    round_close = child(["--child", "round"])
    med = {v: {k: h.median([r[k] for r in rs]) for k in rs[0]} for v, rs in results.items()}
    ref = med["numpy_f32"]["wall_s"]
    update_gb = 4e-3  # GB of float32 update data per update
    print(
        "\n| variant | s for all | ms/update | updates/s | GB/s of updates | ÷ numpy f32 time | CPU s | peak RSS MB | RSS over baseline MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        m = med[v]
        print(
            f"| {LABELS[v]} | {m['wall_s']:.2f} | {m['wall_s'] * 1e3 / args.updates:.2f} | "
            f"{args.updates / m['wall_s']:,.0f} | {args.updates * update_gb / m['wall_s']:.2f} | "
            f"{m['wall_s'] / ref:.2f} | {m['cpu_s']:.2f} | {m['peak_rss_mb']:.0f} | {m['extra_peak_mb']:.0f} |"
        )
    print(f"\nround close (1M params): {json.dumps({k: round(v, 2) for k, v in round_close.items()})}")
    print(f"load average at each child's start: {', '.join(sorted(set(loads)))}")


if __name__ == "__main__":
    main()
