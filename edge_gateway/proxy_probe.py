"""The routing proxy's `/health`, as the status page shows it: fetched on demand, kept a second.

However many pages poll the server, the proxy is asked at most once per `max_age`, one request
at a time, each bounded by `timeout`: a slow or dead proxy never holds up the page.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson


class ProxyProbe:
    def __init__(self, url: str, timeout: float = 1.0, max_age: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_age = max_age
        self._session: aiohttp.ClientSession | None = None
        self._last: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def health(self) -> dict[str, Any]:
        """{"url", "reachable": True, "status", "healthy", "leaves", "edgefl"} or {"url", "reachable": False, "error"}."""
        async with self._lock:  # callers arriving during a fetch share its answer
            if self._last is None or time.monotonic() - self._fetched_at > self._max_age:
                self._last = await self._fetch()
                self._fetched_at = time.monotonic()
            return self._last

    async def _fetch(self) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self.url}/health") as reply:
                body = orjson.loads(await reply.read())
            return {
                "url": self.url,
                "reachable": True,
                "status": str(body["status"]),
                "healthy": int(body["healthy"]),
                "leaves": {str(name): {"healthy": bool(leaf["healthy"])} for name, leaf in body["leaves"].items()},
                "edgefl": str(body.get("edgefl", "unknown")),
            }
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"url": self.url, "reachable": False, "error": str(exc) or type(exc).__name__}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return {"url": self.url, "reachable": False, "error": "its /health is not a routing proxy's"}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
