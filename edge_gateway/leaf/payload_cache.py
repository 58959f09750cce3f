"""Each job's task payload, fetched from the server once per model version and built off the loop."""

from __future__ import annotations

import asyncio
import logging
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

    def __init__(self, link: ServerLink, is_current: Callable[[str, int], bool]) -> None:
        self._link = link
        # Whether (job id, model version) is still what devices should get: a fetch that took
        # longer than a round keeps nothing.
        self._is_current = is_current
        self._payloads: dict[str, TaskPayload] = {}
        self._fetching: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def get(self, job_id: str) -> TaskPayload | None:
        return self._payloads.get(job_id)

    def ready(self, view: JobView) -> bool:
        """Whether the payload of the job's current model version is built."""
        payload = self._payloads.get(view.job_id)
        return payload is not None and payload.version == view.model_version

    def drop(self, job_id: str) -> None:
        self._payloads.pop(job_id, None)

    def want(self, view: JobView) -> None:
        """Start fetching the view's model version unless it is built, being fetched, or not needed."""
        key = (view.job_id, view.model_version)
        if (
            view.status is not JobStatus.DONE
            and view.model_version >= 0
            and not self.ready(view)
            and key not in self._fetching
        ):
            self._fetching.add(key)
            task = asyncio.get_running_loop().create_task(self._fetch_model(view))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
                self._payloads[view.job_id] = payload
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
            self._fetching.discard(key)
