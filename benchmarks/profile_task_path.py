"""Where a `/task` request's CPU goes in our proxy and leaf: py-spy samples both under the anchor load.

    python benchmarks/profile_task_path.py                 # RETRY path, c=64, 10 s, pinned like the benchmark
    python benchmarks/profile_task_path.py --job ok        # OK path (task handed out)

py-spy is not a project dependency: install it in a venv of its own (`python3 -m venv /tmp/pyspy &&
/tmp/pyspy/bin/pip install py-spy`) and pass --py-spy /tmp/pyspy/bin/py-spy (or set PYSPY). It runs
on the load generator's CPU (0) in non-blocking mode, so the processes under test are not paused.
Prints, per process, the functions with the most samples on CPU, by self time and inclusive time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import _harness as h
from proxy_throughput import OK_JOB, RETRY_JOB


def _frame(frame: str) -> str:
    """py-spy's "func (path/to/file.py:123)" -> "func (file.py)": all lines of a function together."""
    name, sep, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})" if sep else frame


def top(collapsed: Path, n: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, top self, top inclusive) from py-spy's raw (collapsed stack) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        names = [_frame(f) for f in stack.split(";")]
        own[names[-1]] += k
        for name in set(names):
            incl[name] += k
    return total, own.most_common(n), incl.most_common(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", choices=("retry", "ok"), default="retry")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--py-spy", default=os.environ.get("PYSPY", "py-spy"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgefl-bench") / time.strftime("profile-%Y%m%d-%H%M%S"))
    args = parser.parse_args()
    spec, want = (RETRY_JOB, "RETRY") if args.job == "retry" else (OK_JOB, "OK")
    with h.Procs(args.out / "logs") as procs:
        stack = h.start_stack(procs, args.out / "stack", tag="profile", cpus=h.SUT_CPU)
        job_id = stack.submit(spec)
        path = f"/task?job_id={job_id}"
        h.wait_task_status(stack.proxy_url, path, "OK")
        h.wait_task_status(stack.proxy_url, path, want)
        h.wrk(stack.proxy_url, 16, "2s", {}, pin=True, path=path)  # warm-up
        spies = {}
        for name in ("proxy", "leaf-0", "server"):
            pid = stack.procs()[name].pid
            spies[name] = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    h.LOADGEN_CPU,
                    args.py_spy,
                    "record",
                    "--nonblocking",
                    "-p",
                    str(pid),
                    "-r",
                    str(args.rate),
                    "-d",
                    str(args.seconds + 1),
                    "-f",
                    "raw",
                    "-o",
                    str(args.out / f"{name}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(0.5)
        run = h.wrk(stack.proxy_url, args.conns, f"{args.seconds}s", stack.procs(), pin=True, path=path)
        for spy in spies.values():
            spy.wait(60)
    us = run.us_per_request()
    print(
        f"{args.job} path, c={args.conns}: {run.result['rps']:,.0f} req/s, p99 {run.result['p99_ms']:.1f} ms, "
        f"CPU µs/req " + ", ".join(f"{k} {v:.0f}" for k, v in us.items()) + f"; load {run.loadavg}"
    )
    for name in spies:
        f = args.out / f"{name}.txt"
        if not f.exists():
            print(f"\n{name}: no profile (py-spy failed? try running it as root)")
            continue
        total, own, incl = top(f, args.top)
        busy = total / (args.rate * (args.seconds + 1))
        print(f"\n## {name}: {total} samples on CPU ({busy:.0%} of the time); {us.get(name, 0):.0f} µs/req")
        print("| self % | function | | inclusive % | function |\n|---:|---|---|---:|---|")
        for (fs, ks), (fi, ki) in zip(own, incl):
            print(f"| {100 * ks / total:.1f} | {fs} | | {100 * ki / total:.1f} | {fi} |")
    print(f"\nraw stacks: {args.out}")


if __name__ == "__main__":
    main()
