"""What the leaf's durable result log costs: appends/s and MB/s, against references in the same run.

    PYTHONPATH=. python benchmarks/result_log.py [--repeat 3] [--dir /tmp]

Results of a cifar10-size update (62,006 float32 parameters, 248 kB) and of a 1M-parameter one
(4 MB), appended by 1, 64 and 512 concurrent asyncio tasks (each appends until the run's records
are used up: 512 records of 248 kB, 64 of 4 MB, so at most that many are in flight), four ways:
  log          `ResultLog.append`: encoded, written and fdatasync'd, group commit (what a device waits for)
  log, no sync the same log with its fdatasync made a no-op: what the durability itself costs
  plain write  each record encoded (same frame) and `os.write`n to one file on the event loop, no sync
  list         each record appended to an in-memory list: the appenders' own overhead
Each row is the median of --repeat runs (interleaved); ratios are against the same row's references.
Files go to a fresh directory under --dir (same disk as the leaf's data would be) and are deleted
after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import _harness as h
import numpy as np

from edge_gateway.result_log import ResultLog, ResultRecord
from edge_gateway.result_log.records import encode_record
from edge_gateway.result_log.segments import SegmentFiles

SIZES = {"248 kB": (62_006, 512), "4 MB": (1_000_000, 64)}  # floats per update, records per run
CONCURRENCY = (1, 64, 512)
VARIANTS = ("log", "log_nosync", "write", "list")
LABELS = {"log": "log", "log_nosync": "log, no sync", "write": "plain write", "list": "list"}


def _records(floats: int, count: int) -> list[ResultRecord]:
    update = {"w": np.random.default_rng(0).standard_normal(floats, dtype=np.float32)}
    return [ResultRecord("bench", 1, f"task-{i}", 1.0, update) for i in range(count)]


async def _drive(
    records: list[ResultRecord], concurrency: int, append: Callable[[ResultRecord], Awaitable[None]]
) -> None:
    queue = iter(records)

    async def appender() -> None:
        for record in queue:
            await append(record)

    await asyncio.gather(*(appender() for _ in range(concurrency)))


async def _run(variant: str, records: list[ResultRecord], concurrency: int, directory: Path) -> dict[str, float]:
    flushes = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    if variant in ("log", "log_nosync"):
        log = ResultLog(directory)
        async for _ in log.replay():
            pass
        await _drive(records, concurrency, log.append)
        flushes = log.flushes
        await log.close()
    elif variant == "write":
        fd = os.open(directory / "plain.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

        async def write(record: ResultRecord) -> None:
            os.write(fd, encode_record(record))

        await _drive(records, concurrency, write)
        os.close(fd)
    else:
        kept: list[ResultRecord] = []

        async def keep(record: ResultRecord) -> None:
            kept.append(record)

        await _drive(records, concurrency, keep)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "flushes": flushes}


def _measure(variant: str, records: list[ResultRecord], concurrency: int, base: Path) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="result-log-bench-", dir=base))
    sync = SegmentFiles._sync
    if variant == "log_nosync":
        SegmentFiles._sync = lambda self: None  # type: ignore[method-assign]
    try:
        return asyncio.run(_run(variant, records, concurrency, directory))
    finally:
        SegmentFiles._sync = sync  # type: ignore[method-assign]
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the log's files go (its disk)")
    args = parser.parse_args()
    base = Path(args.dir)
    print(f"machine: {h.machine()}; load {h.loadavg()}; files under {base}; median of {args.repeat}", flush=True)
    print(
        "\n| update | appenders | in flight | variant | appends/s | MB/s | ms/append | CPU ms/append "
        "| records/flush | ÷ plain write time | ÷ list time |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    began = time.perf_counter()
    for label, (floats, count) in SIZES.items():
        records = _records(floats, count)
        megabytes = count * floats * 4 / 1e6
        for concurrency in CONCURRENCY:
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            for _ in range(args.repeat):
                for variant in VARIANTS:
                    runs[variant].append(_measure(variant, records, concurrency, base))
            med = {v: {k: h.median([r[k] for r in rs]) for k in rs[0]} for v, rs in runs.items()}
            for variant in VARIANTS:
                m = med[variant]
                per_flush = f"{count / m['flushes']:.1f}" if m["flushes"] else "–"
                print(
                    f"| {label} | {concurrency} | {min(concurrency, count)} | {LABELS[variant]} | "
                    f"{count / m['wall_s']:,.0f} | {megabytes / m['wall_s']:,.0f} | {m['wall_s'] * 1e3 / count:.2f} | "
                    f"{m['cpu_s'] * 1e3 / count:.2f} | {per_flush} | {m['wall_s'] / med['write']['wall_s']:.2f} | "
                    f"{m['wall_s'] / med['list']['wall_s']:,.0f} |",
                    flush=True,
                )
    print(f"\ntook {time.perf_counter() - began:.0f} s; load average after: {h.loadavg()}")


if __name__ == "__main__":
    main()
