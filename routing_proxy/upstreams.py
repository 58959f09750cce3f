"""The links to the leaves and their health.

A leaf is healthy while its link is connected and its last `"ping"` (every `health_interval`,
with a deadline of `health_timeout`) was answered; a failed ping or a lost connection makes it
unhealthy until a ping succeeds again.

Pings travel on a connection of their own. On the one that carries device calls they would queue
behind every byte already sent: 100 downloads of a 6 MB model are 5 s of a 1 Gbps link, so a
busy leaf would look dead and every download in flight would be answered RETRY, to be asked again.
Apart, a ping answered tells a slow leaf from a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from internal_link.calls import PING
from internal_link.client import LinkClient
from internal_link.errors import LinkError, RemoteError

from .lcp_map import Leaf
from .routing import Router

logger = logging.getLogger(__name__)


class Upstream:
    """One leaf and its link."""

    def __init__(self, leaf: Leaf, client: LinkClient, control: LinkClient) -> None:
        self.leaf = leaf
        self.client = client  # device calls
        self.control = control  # health pings only
        self.ping_ok = False

    @property
    def healthy(self) -> bool:
        return self.ping_ok and self.client.connected


class Upstreams:
    """Every leaf of the lcp map, ranked per device over the healthy ones."""

    def __init__(
        self,
        leaves: list[Leaf],
        *,
        secret: bytes = b"",
        ssl_context: ssl.SSLContext | None = None,
        health_interval: float = 1.0,
        health_timeout: float = 5.0,
    ) -> None:
        self.members = [
            Upstream(
                leaf,
                LinkClient(leaf.host, leaf.port, secret, leaf.name, ssl=ssl_context),
                LinkClient(leaf.host, leaf.port, secret, f"{leaf.name} (health)", ssl=ssl_context),
            )
            for leaf in leaves
        ]
        self.router = Router([leaf.name for leaf in leaves])
        self._ping_ok: set[int] = set()
        self._interval = health_interval
        self._timeout = health_timeout
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect to every leaf and start health-checking them."""
        loop = asyncio.get_running_loop()
        for index, upstream in enumerate(self.members):
            await upstream.client.start()
            await upstream.control.start()
            self._watchers.append(loop.create_task(self._watch(index, upstream)))

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
        await asyncio.gather(*(upstream.client.close() for upstream in self.members))
        await asyncio.gather(*(upstream.control.close() for upstream in self.members))

    def candidates(self, device_id: str) -> list[Upstream]:
        """The healthy leaves for this device, preferred first (PROTOCOL.md §7, ours)."""
        members = self.members
        # A lost link counts at once, without waiting for the next ping.
        return [
            upstream
            for i in self.router.preference(device_id, self._ping_ok)
            if (upstream := members[i]).client.connected
        ]

    def status(self) -> dict[str, Any]:
        return {
            u.leaf.name: {
                "host": u.leaf.host,
                "port": u.leaf.port,
                "connected": u.client.connected,
                "healthy": u.healthy,
            }
            for u in self.members
        }

    async def _watch(self, index: int, upstream: Upstream) -> None:
        client, control = upstream.client, upstream.control
        while True:
            if not (client.connected and control.connected):
                self._set_health(index, upstream, False, "not connected")
                # Probe as soon as the links are back, so its devices return without delay.
                if not (await client.wait_connected(self._interval) and await control.wait_connected(self._interval)):
                    continue
            try:
                await control.call(PING, None, self._timeout)
            except RemoteError as exc:
                # It answers, refusing: a draining leaf still answers what it holds.
                self._set_health(index, upstream, False, f"ping refused: {exc}")
            except LinkError as exc:
                self._set_health(index, upstream, False, f"ping failed: {exc}", stopped_answering=True)
            else:
                self._set_health(index, upstream, True, "")
            await asyncio.sleep(self._interval)

    def _set_health(
        self, index: int, upstream: Upstream, healthy: bool, reason: str, stopped_answering: bool = False
    ) -> None:
        if healthy == upstream.ping_ok:
            return
        upstream.ping_ok = healthy
        if healthy:
            self._ping_ok.add(index)
            logger.info("leaf %s (%s:%s) is healthy", upstream.leaf.name, upstream.leaf.host, upstream.leaf.port)
        else:
            self._ping_ok.discard(index)
            # The requests of a leaf that stopped answering would wait out their whole deadline (a
            # partitioned leaf sends no reset): answer them RETRY now, so their devices go elsewhere.
            failed = upstream.client.fail_pending("leaf stopped answering") if stopped_answering else 0
            logger.warning(
                "leaf %s (%s:%s) is unhealthy: %s; %d requests in flight answered RETRY",
                upstream.leaf.name,
                upstream.leaf.host,
                upstream.leaf.port,
                reason,
                failed,
            )
