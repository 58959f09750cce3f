"""Soak: 10,000 simulated devices for 10 minutes while a leaf is SIGKILLed and restarted every 2 minutes.

    python benchmarks/soak.py [--minutes 10] [--devices 10000] [--per-round 1000] [--leaves 4]
                              [--kill-every 120] [--sample-every 10] [--simulators 2]

Run on demand, not in CI. Starts server + leaves + proxy as benchmarks/scale.py does
(benchmarks/_harness.py), submits a job with more rounds than the soak can finish, and runs
`python -m edge_gateway simulate --trainer synthetic` devices against the proxy. Every
`--kill-every` seconds one leaf (in turn) gets SIGKILL and is started again on the same port.
Every `--sample-every` seconds the RSS of every process is read from /proc. At the end the job is
ended through the job API, the simulators finish, and the accounting is checked: results counted
by the server == the rounds' results (+ the round cut short by the end) == results the devices
were told were counted; the answers other than OK/RETRY are listed.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path

import _harness as h


def rss_mb(pid: int) -> float | None:
    """Resident set size of `pid` in MB, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def environ(pid: int) -> dict[str, str]:
    """The environment of one of our own children (the stack's link secret lives there)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def restart_leaf(
    procs: h.Procs,
    stack: h.Stack,
    i: int,
    run_dir: Path,
    link_port: int,
    port: int,
    env: dict[str, str],
    generation: int,
) -> float:
    """SIGKILL leaf `i`, start it again on the same port; the seconds until it is ready again."""
    old = stack.leaves[i]
    old.popen.send_signal(signal.SIGKILL)
    old.popen.wait(30)
    procs.procs.remove(old)  # stopped: nothing left for Procs to stop
    start = time.monotonic()
    ready = run_dir / f"leaf-{i}.ready"
    ready.unlink(missing_ok=True)
    new = procs.start(
        f"soak.leaf-{i}.{generation}",
        [
            h.PY,
            "-m",
            "edge_gateway",
            "--log-level",
            "warning",
            "leaf",
            "--name",
            f"leaf-{i}",
            "--port",
            str(port),
            "--server",
            f"127.0.0.1:{link_port}",
            "--data-dir",
            str(run_dir / f"leaf-{i}"),
            "--ready-file",
            str(ready),
        ],
        env=env,
    )
    h.wait_file(new, ready)
    stack.leaves[i] = new
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--per-round", type=int, default=1_000)
    parser.add_argument("--leaves", type=int, default=4)
    parser.add_argument("--simulators", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=120.0, help="seconds between leaf kills")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--retry-wait", type=int, default=30, help="the job's retry_wait (s)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("soak-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    soak_s = args.minutes * 60
    # Far more rounds than a soak can close: the job outlives it and is ended on purpose.
    spec = {
        "name": "bench-soak",
        "model": "digits",
        "rounds": 100_000,
        "devices_per_round": args.per_round,
        "retry_wait": args.retry_wait,
        "evaluate": False,
    }
    print(f"machine: {h.machine()}; load {h.loadavg()}; job {json.dumps(spec)}", flush=True)
    run_dir = args.out / "stack"
    samples: list[tuple[float, dict[str, float | None]]] = []
    kills: list[str] = []
    with h.Procs(args.out / "logs") as procs:
        stack = h.start_stack(procs, run_dir, tag="soak", leaves=args.leaves)
        link_port = int(json.loads((run_dir / "server.ready").read_bytes())["link_port"])
        ports = [int(leaf["port"]) for leaf in json.loads((run_dir / "lcp_map.json").read_bytes()).values()]
        env = {"EDGEFL_LINK_SECRET": environ(stack.server.pid)["EDGEFL_LINK_SECRET"]}
        job_id = stack.submit(spec)
        time.sleep(1.0)  # the leaves learn of the job at their next sync
        sims, paths = [], []
        per_sim = args.devices // args.simulators
        for i in range(args.simulators):
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
                        str(per_sim),
                        "--device-prefix",
                        f"soak{i}",
                        "--trainer",
                        "synthetic",
                        "--connections",
                        str(per_sim),
                        # Past the soak: the devices stop when the job is ended, not at a deadline mid-upload.
                        "--duration",
                        str(soak_s + 120),
                        "--report-json",
                        str(paths[-1]),
                    ],
                )
            )
        start = time.monotonic()
        next_sample, next_kill, generation = start, start + args.kill_every, 0
        while (now := time.monotonic()) < start + soak_s:
            if now >= next_sample:
                # By role, not process name: a restarted leaf keeps its column.
                named = {
                    "proxy": stack.proxy,
                    **{f"leaf-{i}": p for i, p in enumerate(stack.leaves)},
                    "server": stack.server,
                    **{f"sim-{i}": s for i, s in enumerate(sims)},
                }
                samples.append((now - start, {name: rss_mb(p.pid) for name, p in named.items()}))
                next_sample += args.sample_every
            if now >= next_kill:
                victim = generation % args.leaves
                generation += 1
                down = restart_leaf(procs, stack, victim, run_dir, link_port, ports[victim], env, generation)
                kills.append(
                    f"{now - start:.0f} s: leaf-{victim} SIGKILL, back on port {ports[victim]} in {down:.1f} s"
                )
                print("  " + kills[-1], flush=True)
                next_kill += args.kill_every
            time.sleep(max(0.0, min(next_sample, next_kill, start + soak_s) - time.monotonic()))
        before_end = stack.job_status(job_id)
        h.http("POST", f"{stack.api_url}/api/jobs/{job_id}/end")
        deadline = time.monotonic() + 180
        while any(s.alive() for s in sims) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)  # leaves flush what they hold at their next sync
        status = stack.job_status(job_id)
    reports = [json.loads(p.read_text()) for p in paths if p.exists()]
    report = {k: sum(r[k] for r in reports) for k, v in reports[0].items() if type(v) is int} if reports else {}
    names = list(samples[0][1]) if samples else []
    print(
        f"\nRSS (MB) every {args.sample_every:.0f} s; {args.devices:,} devices, {args.leaves} leaves, "
        f"leaf killed every {args.kill_every:.0f} s ({len(kills)} kills)"
    )
    print("| t s | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for t, rss in samples:
        print(f"| {t:.0f} | " + " | ".join("–" if rss.get(n) is None else f"{rss[n]:.0f}" for n in names) + " |")
    print("\nleaf kills: " + "; ".join(kills))
    rounds = status["history"]
    in_rounds = sum(r["results"] for r in rounds)
    open_round = status["results_counted"] - in_rounds
    counted_by_devices = report.get("results_accepted", -1)
    print(
        f"\nrounds closed: {len(rounds)} ({before_end['round']} when the soak ended); results counted by the "
        f"server {status['results_counted']:,} = Σ closed rounds {in_rounds:,} + open round {open_round:,} "
        f"(reported {status['reported']:,}); devices told 'counted' {counted_by_devices:,}"
    )
    print(
        f"server: refused {status['refused']}, late {status['late']}, duplicates refused {status['duplicates']}, "
        f"tasks issued {status['tasks_issued']:,}"
    )
    errors = {
        k: report.get(k, 0)
        for k in (
            "results_not_counted",
            "results_refused",
            "results_abandoned",
            "sessions_refused",
            "invalid_replies",
            "transport_errors",
            "training_errors",
        )
    }
    print(
        f"devices: {report.get('requests', 0):,} requests, {report.get('retries', 0):,} RETRY, joined "
        f"{report.get('jobs_joined', 0):,}/{args.devices:,}, finished {report.get('devices_finished', 0):,}; "
        "answers other than OK/RETRY: " + (", ".join(f"{k} {v}" for k, v in errors.items() if v) or "none")
    )
    checks = {
        "results counted == Σ closed rounds + open round": status["results_counted"] == in_rounds + status["reported"],
        "devices' counted == server counted": counted_by_devices == status["results_counted"],
        "every device joined": report.get("jobs_joined") == args.devices,
        "no transport errors / invalid replies": errors["transport_errors"] == 0 and errors["invalid_replies"] == 0,
        "no sessions refused": errors["sessions_refused"] == 0,
    }
    print("checks: " + "; ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in checks.items()))
    print(f"logs and reports: {args.out}")


if __name__ == "__main__":
    main()
