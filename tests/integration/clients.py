"""Scripted devices that send what the real apps send, byte for byte where it matters
(PROTOCOL.md §1-§6): the NVFlare iOS app and the Android app. They train nothing: the diff is
a small step against the sign of each weight, enough to see the global model move."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np
import orjson

STEP = 0.01


def diff_for(weights: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.where(np.asarray(v, np.float32) < 0, STEP, -STEP).astype(np.float32) for name, v in weights.items()
    }


@dataclass
class Transcript:
    statuses: list[tuple[str, str]] = field(default_factory=list)  # (endpoint, status)
    results: list[dict[str, Any]] = field(default_factory=list)  # /result answers

    def count(self, endpoint: str, status: str) -> int:
        return sum(1 for e, s in self.statuses if (e, s) == (endpoint, status))


class IosDevice:
    """The iOS app: JSON device info on /task and /result, cookie dropped after RETRY,
    `et_tensor_diff` uploads with `net.` names, flat data, sizes and strides; retry_wait in seconds."""

    platform = "ios"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, device_id: str, job_name: str) -> None:
        self.session, self.base, self.device_id, self.job_name = session, base_url, device_id, job_name
        self.transcript = Transcript()

    def headers(self, endpoint: str) -> dict[str, str]:
        if endpoint == "job":
            info = f"device_id={self.device_id}&app_name=ExampleApp&app_version=1.0&platform=ios&platform_version=17.5"
        else:
            info = orjson.dumps(
                {
                    "device_id": self.device_id,
                    "app_name": "ExampleApp",
                    "app_version": "1.0",
                    "platform": "ios",
                    "platform_version": "17.5",
                }
            ).decode()
        return {
            "X-Flare-Device-ID": self.device_id,
            "X-Flare-Device-Info": info,
            "X-Flare-User-Info": "{}",
            "Content-Type": "application/json",
        }

    def wait_seconds(self, reply: dict[str, Any]) -> float:
        return float(reply.get("retry_wait", 5))

    def result_payload(self, task_data: dict[str, Any]) -> dict[str, Any]:
        data = {}
        for name, arr in diff_for(task_data["data"]).items():
            strides = [s // arr.itemsize for s in arr.strides]
            data[f"net.{name}"] = {"sizes": list(arr.shape), "strides": strides, "data": arr.ravel().tolist()}
        return {"kind": "et_tensor_diff", "data": data, "meta": {"epochs": 1, "learning_rate": 0.01, "batch_size": 4}}

    async def post(self, endpoint: str, query: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base}/{endpoint}{query}"
        # A stream, not bytes: aiohttp warns about large bytes bodies (a CNN diff is over 1 MB).
        async with self.session.post(url, data=io.BytesIO(orjson.dumps(body)), headers=self.headers(endpoint)) as reply:
            assert reply.status == 200, (endpoint, reply.status, await reply.text())
            assert reply.content_type == "application/json"
            answer = dict(orjson.loads(await reply.read()))
        self.transcript.statuses.append((endpoint, answer["status"]))
        return answer

    async def run(self, max_tasks: int, deadline: float) -> Transcript:
        """job -> task -> result loop until NO_JOB/DONE, `max_tasks` tasks, or the deadline."""
        loop = asyncio.get_running_loop()
        job_id = None
        while job_id is None and loop.time() < deadline:
            reply = await self.post("job", "", {"job_name": self.job_name, "capabilities": {"methods": ["cnn"]}})
            if reply["status"] == "OK":
                assert reply["job_name"] == self.job_name and "config" in reply["job_data"]
                job_id = reply["job_id"]
            else:
                await asyncio.sleep(min(self.wait_seconds(reply), 0.5))
        cookie: dict[str, Any] | None = None
        tasks = 0
        while job_id is not None and tasks < max_tasks and loop.time() < deadline:
            body = {"cookie": cookie} if cookie else {}
            reply = await self.post("task", f"?job_id={quote(job_id)}", body)
            if reply["status"] in ("NO_JOB", "DONE", "ERROR"):
                break
            if reply["status"] == "RETRY":
                cookie = self.cookie_after_retry(cookie)
                await asyncio.sleep(min(self.wait_seconds(reply), 0.3))
                continue
            assert reply["status"] == "OK" and reply["task_name"] == "train" and reply["retry_wait"] == 0
            cookie = reply["cookie"]
            tasks += 1
            query = f"?job_id={quote(job_id)}&task_id={quote(reply['task_id'])}&task_name={reply['task_name']}"
            answer = await self.post(
                "result", query, {"result": self.result_payload(reply["task_data"]), "cookie": cookie}
            )
            self.transcript.results.append(answer)
        return self.transcript

    def cookie_after_retry(self, cookie: dict[str, Any] | None) -> dict[str, Any] | None:
        return None  # iOS drops the cookie after a RETRY (PROTOCOL.md §4)


class AndroidDevice(IosDevice):
    """The Android app: query-string device info with raw spaces on every request,
    `charset=utf-8`, kind `number` without strides, retry_wait read as milliseconds."""

    platform = "android"

    def headers(self, endpoint: str) -> dict[str, str]:
        info = f"device_id={self.device_id}&app_name=NVFlare Android&app_version=1.0.0&platform=android&platform_version=14"
        return {
            "X-Flare-Device-ID": self.device_id,
            "X-Flare-Device-Info": info,
            "X-Flare-User-Info": "user_id=u1&user_name=Jane Doe",
            "Content-Type": "application/json; charset=utf-8",
        }

    def wait_seconds(self, reply: dict[str, Any]) -> float:
        return float(reply.get("retry_wait", 5)) / 1000.0

    def result_payload(self, task_data: dict[str, Any]) -> dict[str, Any]:
        data = {
            f"net.{name}": {"sizes": list(arr.shape), "data": arr.ravel().tolist()}
            for name, arr in diff_for(task_data["data"]).items()
        }
        return {"kind": "number", "data": data, "meta": {}}

    def cookie_after_retry(self, cookie: dict[str, Any] | None) -> dict[str, Any] | None:
        return cookie
