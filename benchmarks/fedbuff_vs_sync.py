"""Async FedBuff vs sync rounds: wall time to a test accuracy, stragglers in the population (issue 12).

    python benchmarks/fedbuff_vs_sync.py [--repeat 1] [--train-seconds 0] [--concurrency 20]
        [--buffer-size 10] [--transport http] [--target 0.93] [--cap-s 300] [--modes sync async]

One stack (server + 2 leaves + proxy, unpinned) and, per mode, one `python -m edge_gateway simulate`
process: --devices simulated devices training digits for real (PyTorch, the package's own data,
Dirichlet α 0.5 shards), the first --slow-fraction of them --slow-factor times slower. Both modes
get the same concurrency C: sync is `devices_per_round` C with no over-selection (so at most C
devices train at once), async is `concurrency` C and a new version every `buffer_size` results.
Everything else in the two job specs is the same (digits' training defaults, the robustness
defaults, `retry_wait`).

Per mode: the clock starts when the job is accepted (the simulator is started right after), and
stops at the **creation** of the first version whose test accuracy reaches --target (the version's
`closed_at` in the job history, server `time.monotonic()`, which this process reads too), not when
its evaluation finished: the server evaluates each version on the model's test split in a thread,
after the fact. A mode ends at the target, at --max-versions, or at --cap-s; its simulator is then
stopped by PID and its job ended. Modes alternate (sync first on even repeats, async first on odd).

digits computes a task in ~2 ms, so a 10× device is only 20 ms slower; --train-seconds S makes
every training take at least S (a phone's seconds) before the slow factor. Each job's last model is
evaluated here on the test and the train split beside the server's recorded accuracy, to show
which split the figures come from. docs/BENCHMARKS.md §10 has the runs and what they showed.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import _harness as h
import numpy as np

from edge_gateway import models
from edge_gateway.models.demo import training_defaults

POLL_S = 0.5  # job status poll: only when to stop depends on it, not the figures


def job_spec(mode: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "model": "digits",
        **training_defaults("digits"),
        "rounds": args.max_versions,
        "over_selection": 0.0,  # at most C devices training, as in async mode
        "retry_wait": args.retry_wait,
        "task_timeout": 120.0,
        "round_timeout": 300.0,
        "seed": args.seed,
        "evaluate": True,
    }
    if mode == "sync":
        spec["devices_per_round"] = args.concurrency
    else:
        spec.update(
            mode="async",
            concurrency=args.concurrency,
            buffer_size=args.buffer_size,
            max_staleness=args.max_staleness,
        )
    return spec


def first_hit(history: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first evaluated version (in version order) with accuracy ≥ target."""
    for entry in sorted(history, key=lambda e: e["version"]):
        accuracy = entry.get("accuracy")
        if isinstance(accuracy, int | float) and accuracy >= target:
            return entry
    return None


def all_evaluated(history: list[dict[str, Any]]) -> bool:
    return all("accuracy" in e for e in history)


def run_mode(procs: h.Procs, stack: h.Stack, mode: str, rep: int, args: argparse.Namespace) -> dict[str, Any]:
    name = f"fedbuff-bench-{mode}-{rep}"
    spec = job_spec(mode, name, args)
    load0 = h.loadavg()
    job_id = stack.submit(spec)
    t0 = time.monotonic()
    sim = procs.start(
        f"sim-{mode}-{rep}",
        [
            h.PY,
            "-m",
            "edge_gateway",
            "simulate",
            "--url",
            stack.proxy_url,
            "--job",
            name,
            "--devices",
            str(args.devices),
            "--trainer",
            "pytorch",
            "--codec",
            "msgpack",
            "--transport",
            args.transport,
            "--slow-fraction",
            str(args.slow_fraction),
            "--slow-factor",
            str(args.slow_factor),
            "--train-seconds",
            str(args.train_seconds),
            "--seed",
            str(args.seed),
            "--duration",
            str(args.cap_s + 30),
            "--device-prefix",
            f"{mode}{rep}",
        ],
    )
    cpu0 = {k: p.cpu_s() for k, p in stack.procs().items()}
    status: dict[str, Any] = {}
    hit, ended = None, "cap"
    while time.monotonic() - t0 < args.cap_s:
        status = stack.job_status(job_id)
        hit = first_hit(status["history"], args.target)
        if hit is not None:
            ended = "target"
            break
        if status["status"] != "running" and all_evaluated(status["history"]):
            ended = "max versions"
            break
        if not sim.alive():
            ended = f"simulator exited ({sim.popen.returncode})"
            break
        time.sleep(POLL_S)
    sim_cpu = sim.cpu_s()
    cpu = {k: round(p.cpu_s() - cpu0[k], 1) for k, p in stack.procs().items()}
    procs.stop(sim)
    h.http("POST", f"{stack.api_url}/api/jobs/{job_id}/end")
    check = check_accuracy(stack, job_id)
    history = sorted(status.get("history", []), key=lambda e: e["version"])
    upto = [e for e in history if hit is None or e["version"] <= hit["version"]]
    staleness: dict[str, int] = {}
    for e in upto:
        for tau, n in e.get("staleness", {}).items():
            staleness[tau] = staleness.get(tau, 0) + n
    accuracies = [e["accuracy"] for e in history if isinstance(e.get("accuracy"), int | float)]
    return {
        "mode": mode,
        "rep": rep,
        "ended": ended,
        "wall_s": None if hit is None else hit["closed_at"] - t0,
        "version": None if hit is None else hit["version"],
        "accuracy": None if hit is None else hit["accuracy"],
        "results": sum(e["results"] for e in upto),
        "first_version_s": history[0]["closed_at"] - t0 if history else None,  # simulator start-up in it
        "versions_made": len(history),
        "best_accuracy": max(accuracies, default=None),
        "late": status.get("late"),
        "check": check,
        "staleness": staleness,
        "cpu_s": {**cpu, "simulator": round(sim_cpu, 1)},
        "load": f"{load0} → {h.loadavg()}",
    }


def check_accuracy(stack: h.Stack, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The job's last model evaluated here on the digits test and train splits, beside the accuracy
    the server recorded for that version: the figures above are test-split accuracies."""
    _, body = h.http("GET", f"{stack.api_url}/api/jobs/{job_id}/model", timeout=30)
    with np.load(io.BytesIO(body)) as npz:
        weights = {k: npz[k] for k in npz.files}
    version = int(stack.job_status(job_id)["model_version"])
    deadline = time.monotonic() + timeout
    recorded = None
    while recorded is None and time.monotonic() < deadline:
        entry = next((e for e in stack.job_status(job_id)["history"] if e["version"] == version), {})
        recorded = entry.get("accuracy")
        time.sleep(0.2)
    seed = 0  # the split the server evaluates on (evaluation.py: load_dataset's default seed)
    test = models.evaluate("digits", weights, *models.load_dataset("digits", "test", seed=seed))[0]
    train = models.evaluate("digits", weights, *models.load_dataset("digits", "train", seed=seed))[0]
    return {"version": version, "server": recorded, "test": test, "train": train}


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _ratios(rows: list[dict[str, Any]], key: str) -> list[float]:
    """async/sync of `key` per repeat (both modes of a repeat ran back to back on one stack)."""
    out = []
    for rep in sorted({r["rep"] for r in rows}):
        by_mode = {r["mode"]: r[key] for r in rows if r["rep"] == rep}
        if by_mode.get("sync") and by_mode.get("async") is not None:
            out.append(by_mode["async"] / by_mode["sync"])
    return out


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for r in rows:
        r["after_first_s"] = None if r["wall_s"] is None else r["wall_s"] - r["first_version_s"]
    print(
        "\n| rep | mode | ended | **wall s to ≥ target** | of which after the first version | version | accuracy | "
        "results counted | late | staleness τ: results | check: last version, server / test / train accuracy | "
        "CPU s (server, leaves, proxy, sim) | load |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|")
    for r in rows:
        c, k = r["cpu_s"], r["check"]
        leaves = sum(v for name, v in c.items() if name.startswith("leaf"))
        stale = ", ".join(f"{t}: {n}" for t, n in sorted(r["staleness"].items(), key=lambda kv: int(kv[0])))
        print(
            f"| {r['rep']} | {r['mode']} | {r['ended']} | **{_fmt(r['wall_s'], '.1f')}** | "
            f"{_fmt(r['after_first_s'], '.1f')} | {_fmt(r['version'], 'd')} | {_fmt(r['accuracy'], '.4f')} | "
            f"{r['results']} | {r['late']} | {stale or '–'} | v{k['version']}: {_fmt(k['server'], '.4f')} / "
            f"{k['test']:.4f} / {k['train']:.4f} | {c['server']}, {leaves:.1f}, {c['proxy']}, {c['simulator']} | "
            f"{r['load']} |"
        )
    for key, label in (("wall_s", "from the job's start"), ("after_first_s", "after the first version")):
        walls = {m: [r[key] for r in rows if r["mode"] == m and r[key] is not None] for m in ("sync", "async")}
        ratios = _ratios(rows, key)
        print(
            f"\n{label}: median s to ≥ {args.target}: sync {_fmt(h.median(walls['sync']) if walls['sync'] else None, '.1f')}"
            f", async {_fmt(h.median(walls['async']) if walls['async'] else None, '.1f')}; async/sync per repeat: "
            f"{', '.join(f'{x:.2f}' for x in ratios) or '–'}; median {_fmt(h.median(ratios) if ratios else None, '.2f')}"
            " (target ≤ 0.5)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--slow-fraction", type=float, default=0.3)
    parser.add_argument("--slow-factor", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=20, help="C: sync devices_per_round, async concurrency")
    parser.add_argument("--buffer-size", type=int, default=None, help="async (default C/2)")
    parser.add_argument("--max-staleness", type=int, default=10, help="async")
    parser.add_argument(
        "--train-seconds", type=float, default=0.0, help="simulate: the least a training takes, before the slow factor"
    )
    parser.add_argument("--transport", choices=("http", "ws"), default="http")
    parser.add_argument("--retry-wait", type=int, default=1)
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--max-versions", type=int, default=200, help="per mode: sync rounds or async versions")
    parser.add_argument("--cap-s", type=float, default=300.0, help="per mode: wall-time cap")
    parser.add_argument("--modes", nargs="+", choices=("sync", "async"), default=["sync", "async"], help="to explore")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("fedbuff-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    args.buffer_size = args.buffer_size or max(1, args.concurrency // 2)
    print(
        f"machine: {h.machine()}; load {h.loadavg()}; {args.devices} devices ({args.slow_fraction:.0%} "
        f"{args.slow_factor:g}× slower), C {args.concurrency}, async buffer_size {args.buffer_size} max_staleness "
        f"{args.max_staleness}, transport {args.transport}, retry_wait {args.retry_wait} s, target "
        f"{args.target}, caps {args.max_versions} versions / {args.cap_s:.0f} s; sync spec "
        f"{json.dumps(job_spec('sync', 'x', args))}",
        flush=True,
    )
    rows = []
    with h.Procs(args.out / "logs") as procs:
        stack = h.start_stack(procs, args.out / "stack", tag="fedbuff", leaves=2, log_level="info")
        for rep in range(args.repeat):
            for mode in args.modes if rep % 2 == 0 else args.modes[::-1]:
                rows.append(run_mode(procs, stack, mode, rep, args))
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    report(rows, args)


if __name__ == "__main__":
    main()
