"""Live progress of a run: a rich bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys

from .stats import Stats

log = logging.getLogger(__name__)

BAR_REFRESH_S = 0.25
LOG_INTERVAL_S = 5.0


async def show_progress(stats: Stats, devices: int) -> None:
    """Report `stats` until cancelled."""
    if sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
        await _bar(stats, devices)
    else:
        while True:
            await asyncio.sleep(LOG_INTERVAL_S)
            log.info("%s", progress_line(stats, devices))


def progress_line(stats: Stats, devices: int) -> str:
    c = stats.counts
    return (
        f"devices done {stats.devices_finished}/{devices}  tasks {c['tasks_received']}  "
        f"results {c['results_accepted']} ok / {c['results_not_counted']} not counted / "
        f"{c['results_refused']} refused  retries {c['retries']}  errors {c['transport_errors']}"
    )


async def _bar(stats: Stats, devices: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # Narrow columns: the whole line fits an 80-column terminal.
    columns = (
        TextColumn("devices"),
        BarColumn(bar_width=10),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[line]}"),
    )
    # Refreshed from this task rather than rich's own thread: the figures change on the loop.
    with Progress(*columns, auto_refresh=False) as bar:
        task = bar.add_task("simulation", total=devices, line="")
        try:
            while True:
                bar.update(task, completed=stats.devices_finished, line=_fields(stats))
                bar.refresh()
                await asyncio.sleep(BAR_REFRESH_S)
        finally:
            bar.update(task, completed=stats.devices_finished, line=_fields(stats))
            bar.refresh()


def _fields(stats: Stats) -> str:
    c = stats.counts
    return (
        f"tasks {c['tasks_received']} results {c['results_accepted'] + c['results_not_counted']} "
        f"retries {c['retries']} errors {c['transport_errors']}"
    )
