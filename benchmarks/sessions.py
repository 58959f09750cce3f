"""Live sessions at scale (issue 12): idle sessions' cost, and how fast a round reaches its devices.

    python benchmarks/sessions.py [--phase idle|push|both] [--sessions 50000] [--push-devices 10000]
                                  [--http-devices N] [--clients 4] [--sources 8] [--open-rate 1000]
                                  [--window 60] [--retry-wait 5] [--over-selection 0.2] [--workers N]

Proxy + 2 leaves + server, each its own process (benchmarks/_harness.py), unpinned; the devices are
`--clients` processes of benchmarks/_session_load.py (raw asyncio sockets, pre-encoded frames), their
connections spread over `--sources` addresses 127.0.0.2… and opened at `--open-rate` per second.

idle: `--sessions` sessions rendezvous on a job whose one slot is taken (they stay STANDBY) and
heartbeat every 30 s (the leaves' default, EDGEFL_LEAF_SESSION_HEARTBEAT). Reported: the proxy's
RSS (VmRSS of it and its workers) before and with the sessions, bytes per session, and over a
`--window` (≥ one heartbeat period) the CPU seconds of proxy, each leaf and the server per
heartbeat answered. One process may hold only RLIMIT_NOFILE sockets (its hard limit, which a
process without CAP_SYS_RESOURCE cannot raise): the proxy gets enough workers sharing the port for
each to stay well below it (`--workers`, default from the limit), and the devices enough processes.

push: `--push-devices` sessions on a 2-round job with devices_per_round equal to their number: all
train round 1; the acknowledgement of the last result (the one that closes round 1, client clock)
is the moment round 2 opens, and each session's `round` 2 frame is timed from it: p50/p99/max.
Then `--http-devices` devices (default as many) do the same as the iOS app polls (`/task`, `/result`,
then `/task` every `--retry-wait` s): the delay to each one's round-2 task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any

import _harness as h

HEARTBEAT = 30.0
FD_SPARE = 2000  # descriptors a process keeps for everything but device sockets


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and its live descendants (the proxy's workers)."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total = int(line.split()[1]) * 1024
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(rss_bytes(int(c)) for c in children)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return float("nan") if not s else s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def spread(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 0.5), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values, default=float("nan")), 3),
    }


class Devices:
    """`clients` processes of benchmarks/_session_load.py sharing `count` devices."""

    def __init__(self, procs: h.Procs, run_dir: Path, role: str, stack: h.Stack, job: str, args: Any) -> None:
        self.procs, self.role, self.dir = procs, role, run_dir / f"{role}-devices"
        self.dir.mkdir(parents=True, exist_ok=True)
        count = args.sessions if role == "idle" else args.push_devices if role == "push" else args.http_devices
        self.count = count
        port = stack.proxy_url.rsplit(":", 1)[1]
        sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]
        self.clients = []
        share = -(-count // args.clients)
        for k in range(args.clients):
            first, n = k * share, min(share, count - k * share)
            if n <= 0:
                break
            argv = [h.PY, str(h.HERE / "_session_load.py"), role, port, job, str(first), str(n)]
            argv += [",".join(sources[k :: args.clients] or sources), str(args.open_rate / args.clients)]
            argv += [str(self.dir), f"client-{k}", str(args.retry_wait)]
            self.clients.append(procs.start(f"{role}-client-{k}", argv))

    def progress(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for k, proc in enumerate(self.clients):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
            path = self.dir / f"client-{k}.progress.json"
            for key, value in (json.loads(path.read_bytes()) if path.exists() else {}).items():
                total[key] = total.get(key, 0) + value
        return total

    def wait(self, key: str, want: int, timeout: float) -> dict[str, int]:
        deadline, last = time.monotonic() + timeout, 0.0
        while True:
            counts = self.progress()
            if counts.get(key, 0) >= want:
                return counts
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.role}: {counts.get(key, 0)} of {want} {key} after {timeout:.0f} s: {counts}")
            if time.monotonic() - last > 10:
                last = time.monotonic()
                print(f"  {self.role}: {counts}", flush=True)
            time.sleep(0.5)

    def finish(self) -> list[dict[str, Any]]:
        """Stop the clients (by PID, SIGTERM); their final reports."""
        for proc in self.clients:
            self.procs.stop(proc)
        return [json.loads((self.dir / f"client-{k}.json").read_bytes()) for k in range(len(self.clients))]


def job_spec(name: str, devices: int, rounds: int, retry_wait: int, over_selection: float) -> dict[str, Any]:
    return {
        "name": name,
        "model": "xor",
        "rounds": rounds,
        "devices_per_round": devices,
        "over_selection": over_selection,
        "min_results_fraction": 1.0,
        "task_timeout": 3600.0,  # only the devices close rounds here, never a lease or a deadline
        "round_timeout": 3600.0,
        "retry_wait": retry_wait,
        "evaluate": False,
    }


def submit_synced(stack: h.Stack, spec: dict[str, Any]) -> str:
    job_id = stack.submit(spec)
    deadline = time.monotonic() + 60
    while len(stack.job_status(job_id).get("leaves", [])) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} not on both leaves: {stack.job_status(job_id)}")
        time.sleep(0.2)
    return job_id


def cpu(stack: h.Stack) -> dict[str, float]:
    return {name: p.cpu_s() for name, p in stack.procs().items()}


def answers(counts: dict[str, int]) -> int:
    # A heartbeat is answered `standby`, or `round` by the one session holding the slot.
    return counts.get("standby", 0) + counts.get("round", 0)


def idle_phase(procs: h.Procs, run_dir: Path, stack: h.Stack, args: Any) -> dict[str, Any]:
    submit_synced(stack, job_spec("idle", 1, 1, 30, 0.0))
    time.sleep(2.0)
    rss_before = rss_bytes(stack.proxy.pid)
    started = time.monotonic()
    devices = Devices(procs, run_dir, "idle", stack, "idle", args)
    opened = devices.wait("accept", args.sessions, args.sessions / args.open_rate * 4 + 120)
    open_s = time.monotonic() - started
    h.settle(list(stack.procs().values()), 30.0, threshold=0.5)
    before, beats_before, rss_with = cpu(stack), answers(devices.progress()), rss_bytes(stack.proxy.pid)
    t0 = time.monotonic()
    time.sleep(args.window)
    after, counts = cpu(stack), devices.progress()
    window = time.monotonic() - t0
    rss_after = rss_bytes(stack.proxy.pid)
    answered = answers(counts) - beats_before
    live = counts.get("accept", 0) - counts.get("closed", 0)
    finals = devices.finish()
    return {
        "sessions": args.sessions,
        "open_s": round(open_s, 1),
        "sessions_live_at_end": live,
        "proxy_rss_before_mib": round(rss_before / 2**20, 1),
        "proxy_rss_with_mib": round(max(rss_with, rss_after) / 2**20, 1),
        "bytes_per_session": round((max(rss_with, rss_after) - rss_before) / args.sessions),
        "window_s": round(window, 1),
        "heartbeats_answered": answered,
        "cpu_s": {k: round(after[k] - before[k], 2) for k in after},
        "cpu_us_per_heartbeat": {k: round((after[k] - before[k]) * 1e6 / max(1, answered), 1) for k in after},
        "device_counts": {k: v for k, v in opened.items() if k != "standby"},
        "client_counts": [f["counts"] for f in finals],
    }


def push_side(procs: h.Procs, run_dir: Path, stack: h.Stack, args: Any, role: str) -> dict[str, Any]:
    n = args.push_devices if role == "push" else args.http_devices
    job_id = submit_synced(stack, job_spec(f"push-{role}", n, 2, args.retry_wait, args.over_selection))
    devices = Devices(procs, run_dir, role, stack, f"push-{role}" if role == "push" else job_id, args)
    setup = n / args.open_rate * 4 + 180
    try:
        devices.wait("round1_acks", n, setup)
        devices.wait("round2", n, args.retry_wait * 2 + 120)
    except RuntimeError:
        print(f"  job {job_id}: {json.dumps(stack.job_status(job_id))}", flush=True)
        print("  status: " + h.http("GET", stack.api_url + "/api/status")[1].decode(), flush=True)
        raise
    finals = devices.finish()
    opened = max(f["last_ack"] for f in finals)
    delays = [t - opened for f in finals for t in f["round2"]]
    counts: dict[str, int] = {}
    for f in finals:
        for key, value in f["counts"].items():
            counts[key] = counts.get(key, 0) + value
    return {"devices": n, "job_id": job_id, "round2_delay": spread(delays), "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("idle", "push", "both"), default="both")
    parser.add_argument("--sessions", type=int, default=50_000, help="idle sessions")
    parser.add_argument("--push-devices", type=int, default=10_000, help="standby sessions a round opens for")
    parser.add_argument("--http-devices", type=int, default=None, help="polling devices (default: --push-devices)")
    parser.add_argument("--clients", type=int, default=4, help="device processes")
    parser.add_argument("--sources", type=int, default=8, help="source addresses 127.0.0.2…")
    parser.add_argument("--open-rate", type=float, default=1000.0, help="connections opened per second, in all")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of CPU measured (≥ one heartbeat)")
    parser.add_argument("--retry-wait", type=int, default=5, help="the polling devices' retry_wait (s)")
    parser.add_argument(
        "--over-selection",
        type=float,
        default=0.2,
        help="the push jobs' over_selection (the jobs' default)",
    )
    parser.add_argument("--workers", type=int, default=None, help="proxy workers (default: by RLIMIT_NOFILE)")
    args = parser.parse_args()
    args.http_devices = args.push_devices if args.http_devices is None else args.http_devices
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every process started below
    biggest = max(args.sessions if args.phase != "push" else 0, args.push_devices, args.http_devices)
    per_process = hard - FD_SPARE
    args.workers = args.workers or max(1, math.ceil(biggest * 1.3 / per_process))  # SO_REUSEPORT spreads unevenly
    args.clients = max(args.clients, math.ceil(biggest / per_process))
    run_dir = Path(f"/tmp/edgefl-bench-sessions-{os.getpid()}")
    print(f"{h.machine()}; load {h.loadavg()}; RLIMIT_NOFILE {hard}; proxy workers {args.workers}", flush=True)
    report: dict[str, Any] = {"machine": h.machine(), "nofile": hard, "proxy_workers": args.workers}
    with h.Procs(run_dir / "logs") as procs:
        stack = h.start_stack(
            procs, run_dir, tag="sessions", leaves=2, workers=args.workers,
            leaf_env={"EDGEFL_LEAF_SESSION_HEARTBEAT": str(HEARTBEAT)},
        )  # fmt: skip
        if args.phase in ("idle", "both"):
            report["load_before_idle"] = h.loadavg()
            report["idle"] = idle_phase(procs, run_dir, stack, args)
            print(json.dumps(report["idle"]), flush=True)
            h.settle(list(stack.procs().values()), 60.0)
        if args.phase in ("push", "both"):
            report["load_before_push"] = h.loadavg()
            report["push_sessions"] = push_side(procs, run_dir, stack, args, "push")
            print(json.dumps(report["push_sessions"]), flush=True)
            h.settle(list(stack.procs().values()), 60.0)
            report["push_http"] = push_side(procs, run_dir, stack, args, "http")
            print(json.dumps(report["push_http"]), flush=True)
        report["load_after"] = h.loadavg()
    (run_dir / "result.json").write_text(json.dumps(report, indent=1))
    print("RESULT_JSON " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
