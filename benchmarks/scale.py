"""Scale: 10,000 simulated devices against proxy + 4 leaves + server, 1,000 results per round, 3 rounds.

    python benchmarks/scale.py [--devices 10000] [--per-round 1000] [--rounds 3] [--leaves 4]
                               [--simulators 2] [--connections N] [--retry-wait 30]

Everything runs unpinned on this 2-core machine, the devices too: `--simulators` processes of
`python -m edge_gateway simulate --trainer synthetic`, each device with its own keep-alive connection
as a phone has (with the simulator's default pool of 256 connections the first /job of most devices
waits behind the /task holds and /result commits of the first ones in, and the job is over before
they join). The devices follow the iOS app's loop (edge_gateway/simulator): /job, /task until
selected, random diff, /result, and stop when the job is over; a device that has not joined by then
keeps asking /job until the simulator's deadline, so the job's wall time (devices' start → job done)
is taken separately. Reports the wall time, requests/s, p50/p99 per endpoint (the worse of the
simulator processes), CPU per process, and checks the accounting exactly: results the devices were
told were counted == results the server counted == the sum of the rounds' results, every device
joined, nothing refused, abandoned, duplicated or lost to a transport error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _harness as h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--leaves", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--simulators", type=int, default=2, help="simulator processes sharing the devices")
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="keep-alive connections per simulator process (default: one per device, as phones have; "
        "the simulator's own default, 256, queues most devices' first /job behind the others)",
    )
    parser.add_argument("--model", default="digits")
    parser.add_argument("--codec", default="json", choices=("json", "msgpack"))
    parser.add_argument(
        "--retry-wait", type=int, default=30, help="the job's retry_wait (s); 30 is the default and what the apps see"
    )
    parser.add_argument("--max-seconds", type=float, default=300.0, help="the simulator's deadline")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("scale-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    args.connections = args.connections or args.devices // args.simulators
    spec = {
        "name": "bench-scale",
        "model": args.model,
        "rounds": args.rounds,
        "devices_per_round": args.per_round,
        "retry_wait": args.retry_wait,
        "evaluate": False,
    }
    print(f"machine: {h.machine()}; load {h.loadavg()}; job {json.dumps(spec)}", flush=True)
    with h.Procs(args.out / "logs") as procs:
        stack = h.start_stack(procs, args.out / "stack", tag="scale", leaves=args.leaves, workers=args.workers)
        job_id = stack.submit(spec)
        time.sleep(1.0)  # the leaves learn of the job at their next sync (every 0.2 s)
        load0 = h.loadavg()
        cpu0 = {k: p.cpu_s() for k, p in stack.procs().items()}
        start = time.monotonic()
        sims, paths = [], []
        for i in range(args.simulators):  # device ids sim<i>-<n>: disjoint across processes
            paths.append(args.out / f"simulation-{i}.json")
            sims.append(
                procs.start(
                    f"simulator-{i}",
                    [
                        h.PY,
                        "-m",
                        "edge_gateway",
                        "--log-level",
                        "warning",
                        "simulate",
                        "--url",
                        stack.proxy_url,
                        "--job",
                        spec["name"],
                        "--devices",
                        str(args.devices // args.simulators),
                        "--device-prefix",
                        f"sim{i}",
                        "--trainer",
                        "synthetic",
                        "--codec",
                        args.codec,
                        "--duration",
                        str(args.max_seconds),
                        "--connections",
                        str(args.connections),
                        "--report-json",
                        str(paths[-1]),
                    ],
                )
            )
        # Devices that never joined before the job ended keep asking /job (as the iOS app does)
        # until the simulator's deadline: the job's own wall time is taken when it is done.
        job_wall = cpu_job = None
        load1 = "n/a"
        while any(sim.alive() for sim in sims):
            time.sleep(0.5)
            if job_wall is None and stack.job_status(job_id)["status"] == "done":
                job_wall = time.monotonic() - start
                cpu_job = {k: round(p.cpu_s() - cpu0[k], 1) for k, p in stack.procs().items()}
                cpu_job["simulators"] = round(sum(sim.cpu_s() for sim in sims), 1)
                load1 = h.loadavg()
        wall = time.monotonic() - start
        cpu = cpu_job or {k: round(p.cpu_s() - cpu0[k], 1) for k, p in stack.procs().items()}
        status = stack.job_status(job_id)
    reports = [json.loads(p.read_text()) for p in paths]
    report = {k: sum(r[k] for r in reports) for k, v in reports[0].items() if type(v) is int}
    report["requests_per_s"] = sum(r["requests_per_s"] for r in reports)
    # Percentiles do not add up across processes: the worst process's p50 and p99.
    report["latency_ms"] = {
        e: {q: max(r["latency_ms"][e][q] for r in reports if e in r["latency_ms"]) for q in ("p50_ms", "p99_ms")}
        for e in ("job", "task", "result")
        if any(e in r["latency_ms"] for r in reports)
    }
    rounds = status["history"]
    checks = {
        "job done": status["status"] == "done",
        "every device joined": report["jobs_joined"] == args.devices,
        f"{args.rounds} rounds": len(rounds) == args.rounds,
        "each round ≥ per-round results": all(r["results"] >= args.per_round for r in rounds),
        "results counted == Σ round results": status["results_counted"] == sum(r["results"] for r in rounds),
        "devices told 'counted' == server counted": report["results_accepted"] == status["results_counted"],
        "no refused/abandoned results": report["results_refused"] == 0 and report["results_abandoned"] == 0,
        "no transport errors / invalid replies": report["transport_errors"] == 0 and report["invalid_replies"] == 0,
        "no sessions refused": report["sessions_refused"] == 0,
        "server: 0 refused, 0 duplicates": status["refused"] == 0 and status["duplicates"] == 0,
    }
    print(
        f"\n{args.devices:,} devices in {args.simulators} simulator process(es) × {args.connections} connections, {args.leaves} leaves, proxy ×{args.workers}, {args.model}/{args.codec}, "
        f"retry_wait {args.retry_wait} s; load {load0} at start, {load1} when the job was done"
    )
    print(
        f"\njob done {job_wall:.1f} s after the devices started" if job_wall else "\njob NOT done before the deadline"
    )
    print(
        "\n| simulator wall s | requests | req/s | /job p50/p99 ms | /task p50/p99 ms | /result p50/p99 ms | tasks | "
        "results counted (rounds) | not counted (late) | devices joined | CPU s by process (simulator start → job done) |"
    )
    print("|---:|---:|---:|---|---|---|---:|---|---:|---:|---|")
    lat = report["latency_ms"]
    fmt = lambda e: f"{lat[e]['p50_ms']:.1f} / {lat[e]['p99_ms']:.1f}" if e in lat else "–"  # noqa: E731
    print(
        f"| {wall:.1f} | {report['requests']:,} | {report['requests_per_s']:,.0f} | {fmt('job')} | {fmt('task')} | "
        f"{fmt('result')} | {report['tasks_received']:,} | {status['results_counted']:,} "
        f"({' + '.join(str(r['results']) for r in rounds)}) | {report['results_not_counted']} | {report['jobs_joined']:,} | "
        + ", ".join(f"{k} {v}" for k, v in cpu.items())
        + " |"
    )
    print("\nchecks: " + "; ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    print(
        f"\nsimulator reports: {', '.join(map(str, paths))}; rounds: "
        + json.dumps([{k: r[k] for k in ("round", "results", "closed_by")} for r in rounds])
    )


if __name__ == "__main__":
    main()
