"""Each job's task payload, fetched from the server once per model version and built off the loop.

Only what is still served is kept: one payload per running job (its current version), a finished
job's dropped at once, and all of them together within `max_bytes`. Past that the least recently
served ones are evicted and fetched again only when a device asks for that job (it hears "Model not
ready" if it is not there within the leaf's `quota_hold`); a single payload larger than the whole
budget is still kept, alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from device_protocol.tensors import tensors_from_binary
from internal_link.errors import LinkUnavailable, RemoteError
from internal_link.messages import JobStatus, JobView

from ..uplink import ServerLink
from .task_payload import TaskPayload

log = logging.getLogger(__name__)


class PayloadCache:
    """The latest payload of each job and the fetches under way (one per job and model version)."""

    def __init__(self, link: ServerLink, is_current: Callable[[str, int], bool], max_bytes: int) -> None:
        self._link = link
        # Whether (job id, model version) is still what devices should get: a fetch that took
        # longer than a round keeps nothing.
        self._is_current = is_current
        self.max_bytes = max_bytes
        self.nbytes = 0  # of the payloads held
        self._payloads: OrderedDict[str, TaskPayload] = OrderedDict()  # least recently served first
        self._evicted: set[str] = set()  # jobs fetched again only on a device's demand
        self._fetching: dict[tuple[str, int], asyncio.Event] = {}  # set once the fetch is over
        self._tasks: set[asyncio.Task[Any]] = set()

    def get(self, job_id: str) -> TaskPayload | None:
        payload = self._payloads.get(job_id)
        if payload is not None:
            self._payloads.move_to_end(job_id)
        return payload

    def ready(self, view: JobView) -> bool:
        """Whether the payload of the job's current model version is built."""
        payload = self._payloads.get(view.job_id)
        return payload is not None and payload.version == view.model_version

    def servable(self, view: JobView) -> bool:
        """`ready`, for a device that asks: an evicted payload is fetched again (it is wanted now)."""
        if self.ready(view):
            return True
        self._evicted.discard(view.job_id)
        self.want(view)
        return False

    def fetching(self, view: JobView) -> bool:
        return (view.job_id, view.model_version) in self._fetching

    async def fetched(self, view: JobView, timeout: float) -> None:
        """Wait until the fetch of the view's version is over (built or failed), at most `timeout` s."""
        event = self._fetching.get((view.job_id, view.model_version))
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                pass

    def drop(self, job_id: str) -> None:
        payload = self._payloads.pop(job_id, None)
        if payload is not None:
            self.nbytes -= payload.nbytes
        self._evicted.discard(job_id)

    def want(self, view: JobView) -> None:
        """Start fetching the view's model version unless it is built, being fetched, evicted, or
        not needed; a finished job's payload is dropped (devices hear NO_JOB, PROTOCOL.md §4)."""
        if view.status is JobStatus.DONE:
            self.drop(view.job_id)
            return
        key = (view.job_id, view.model_version)
        if (
            view.model_version >= 0
            and view.job_id not in self._evicted
            and not self.ready(view)
            and key not in self._fetching
        ):
            self._fetching[key] = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._fetch_model(view))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _keep(self, job_id: str, payload: TaskPayload) -> None:
        self.drop(job_id)
        self._payloads[job_id] = payload
        self.nbytes += payload.nbytes
        while self.nbytes > self.max_bytes and len(self._payloads) > 1:
            evicted, old = self._payloads.popitem(last=False)
            self.nbytes -= old.nbytes
            self._evicted.add(evicted)
            log.info("evicted job %s model v%d from the payload cache (%d bytes)", evicted, old.version, old.nbytes)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _fetch_model(self, view: JobView) -> None:
        key = (view.job_id, view.model_version)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            reply = await self._link.call("model", {"job_id": view.job_id, "version": view.model_version}, 60.0)
            fetched = loop.time()
            if view.task_kind == "APP_DEFINED":
                payload = await asyncio.to_thread(
                    TaskPayload.for_program, view.job_id, view.model_version, reply["program"], view.task_meta
                )
            else:
                weights = tensors_from_binary(reply["weights"])
                payload = await asyncio.to_thread(
                    TaskPayload.for_weights, view.job_id, view.model_version, weights, view.task_meta
                )
            if self._is_current(view.job_id, view.model_version):
                self._keep(view.job_id, payload)
                log.info(
                    "job %s model v%d servable: fetched in %.1f ms, task payload built in %.1f ms",
                    view.job_id,
                    view.model_version,
                    (fetched - asked) * 1e3,
                    (loop.time() - fetched) * 1e3,
                )
        except (LinkUnavailable, RemoteError) as exc:
            log.warning("fetching model %s v%d failed: %s", view.job_id, view.model_version, exc)
        finally:
            self._fetching.pop(key).set()
