"""A leaf keeping in sync with the server: its reports and the server's job views, the watch that
wakes it the moment a new version is made, and its answers to versions that come due (closing.py).

The jobs table it keeps is the leaf's own (`LeafJob` per job the server lists); what else reacts
to a sync (the live sessions) is told through `after_sync`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from internal_link.errors import ErrorCode, LinkUnavailable, RemoteError
from internal_link.messages import JobView, SyncReply, SyncRequest

from ..uplink import ResultUplink, ServerLink
from .job_state import LeafJob
from .no_shows import NoShowScores
from .payload_cache import PayloadCache

log = logging.getLogger(__name__)

WATCH_WAIT = 20.0  # seconds the server may hold a "watch" call
SYNC_TIMEOUT = 5.0


class ServerSync:
    """Syncs every `sync_interval` seconds, and at once when asked or woken by the server."""

    def __init__(
        self,
        name: str,
        boot: str,
        control: ServerLink,
        jobs: dict[str, LeafJob],
        uplink: ResultUplink,
        payloads: PayloadCache,
        after_sync: Callable[[], None],
        sync_interval: float,
    ) -> None:
        self.name = name
        self.boot = boot
        self._control = control
        self._jobs = jobs
        self._uplink = uplink
        self._payloads = payloads
        self._after_sync = after_sync
        self._sync_interval = sync_interval
        self._no_shows = NoShowScores()  # a device's past, whatever job it was in
        self.server_boot: str | None = None
        self.name_refused = False  # the server said another live leaf has this name (logged once)
        self._synced = asyncio.Event()  # replaced after every sync, so waiters see the next one
        self._wake = asyncio.Event()

    def synced_once(self) -> bool:
        return self.server_boot is not None

    async def sync_soon(self, timeout: float) -> None:
        """Ask for a sync now and wait for the next one to finish, at most `timeout` seconds."""
        self._wake.set()
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            pass

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
            except RemoteError as exc:
                if exc.code is ErrorCode.NAME_TAKEN and not self.name_refused:
                    log.error("leaf %s: the server refuses this leaf: %s", self.name, exc.text)
                self.name_refused = exc.code is ErrorCode.NAME_TAKEN
                log.debug("sync failed: %s", exc)
            except LinkUnavailable as exc:
                log.debug("sync failed: %s", exc)
            except Exception:
                log.exception("sync failed")
            else:
                if self.name_refused:
                    log.info(
                        "leaf %s: the server takes this leaf now (the other one under its name is gone)", self.name
                    )
                self.name_refused = False
            try:
                await asyncio.wait_for(self._wake.wait(), self._sync_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def watch(self) -> None:
        # A new model version is served as soon as the server has it, not up to a sync interval later.
        seen = -1
        while True:
            try:
                seen = await self._control.call("watch", {"seen": seen, "wait": WATCH_WAIT}, WATCH_WAIT + 5.0)
            except (LinkUnavailable, RemoteError) as exc:
                log.debug("watch failed: %s", exc)
                await asyncio.sleep(self._sync_interval)  # the periodic sync still runs
                continue
            self._wake.set()

    async def sync_once(self) -> None:
        jobs = self._jobs
        now = asyncio.get_running_loop().time()
        request = SyncRequest(
            leaf=self.name,
            boot=self.boot,
            jobs={job_id: job.report(now) for job_id, job in jobs.items()},
            server_boot=self.server_boot,
            # Its answer to the versions due (closing.py): built after the views that announced
            # them were applied, so no result promised since is missing from `undelivered`.
            closing={job_id: job.view.model_version for job_id, job in jobs.items() if job.view.closing},
            undelivered=self._uplink.behind(),
            payload_bytes=self._payloads.nbytes,
        )
        reply = SyncReply.model_validate(await self._control.call("sync", request.model_dump(), SYNC_TIMEOUT))
        if reply.boot != self.server_boot:
            if self.server_boot is not None:
                log.warning("server restarted (boot %s): sending again what it had not checkpointed", reply.boot)
                await self._uplink.resend_taken(reply.boot)
                for job in jobs.values():
                    job.groups_version = -1  # the new process counts group versions afresh: fetch
            self.server_boot = reply.boot
            self._wake.set()  # the server holds its rounds until this leaf says it has delivered
        seen = set()
        for view in reply.jobs:
            seen.add(view.job_id)
            self._apply(view)
        for job_id in [j for j in jobs if j not in seen]:
            del jobs[job_id]
            self._payloads.drop(job_id)
        self._uplink.keep_jobs(seen)
        self._after_sync()
        self._synced.set()
        self._synced = asyncio.Event()

    def _apply(self, view: JobView) -> None:
        job = self._jobs.get(view.job_id)
        if job is None:
            job = self._jobs[view.job_id] = LeafJob(
                view=view, waiting_window=2.0 * view.retry_wait + 5.0, no_shows=self._no_shows
            )
            self._wake.set()  # the server lists this leaf on the job once a report names it
            # A device whose OK was answered before this leaf restarted hears "counted once" again.
            job.taken_before(self._uplink.replayed(view.job_id))
        else:
            if view.closing and not (job.view.closing and job.view.model_version == view.model_version):
                self._wake.set()  # the server makes the next version once this leaf answers
            job.apply_view(view)
        self._uplink.release(view.job_id, view.model_version, view.max_staleness if view.mode == "async" else 0)
        self._payloads.want(view)
