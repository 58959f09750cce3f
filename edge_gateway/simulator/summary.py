"""The table printed at the end of a run."""

from __future__ import annotations

import importlib.util
import sys
from typing import TextIO

from .stats import SimulationReport


def summary_rows(report: SimulationReport) -> list[tuple[str, str]]:
    """(label, value) rows of the summary, in display order."""
    r = report
    rows = [
        ("devices", f"{r.devices} ({r.devices_finished} finished, prefix {r.device_prefix})"),
        ("jobs joined", str(r.jobs_joined)),
        ("tasks received", str(r.tasks_received)),
        ("tasks aborted", str(r.tasks_aborted)),
        ("results accepted", str(r.results_accepted)),
        ("results not counted", str(r.results_not_counted)),
        ("results refused", str(r.results_refused)),
        ("results abandoned", str(r.results_abandoned)),
        ("training errors", str(r.training_errors)),
        ("sessions refused", str(r.sessions_refused)),
        ("retries", str(r.retries)),
        ("transport errors", str(r.transport_errors)),
        ("invalid replies", str(r.invalid_replies)),
        ("requests", str(r.requests)),
        ("wall time", f"{r.wall_time_s:.2f} s" + (" (deadline reached)" if r.timed_out else "")),
        ("requests/s", f"{r.requests_per_s:.1f}"),
    ]
    for endpoint, lat in r.latency_ms.items():
        rows.append((f"/{endpoint} p50 / p99", f"{lat.p50_ms:.1f} / {lat.p99_ms:.1f} ms  (n={lat.count})"))
    return rows


def print_summary(report: SimulationReport, out: TextIO | None = None) -> None:
    """Print the summary to `out` (stdout): a rich table on a terminal, aligned text otherwise."""
    out = out or sys.stdout
    rows = summary_rows(report)
    if out.isatty() and importlib.util.find_spec("rich") is not None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="simulation summary", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label, value in rows:
            table.add_row(label, value)
        Console(file=out).print(table)
        return
    width = max(len(label) for label, _ in rows)
    out.write("".join(f"{label:<{width}}  {value}\n" for label, value in rows))
