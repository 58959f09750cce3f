"""The live sessions of one proxy process: opening them on `GET /ws`, and the push poll per leaf.

A session is checked like an HTTP request before the upgrade (identity, device auth, admission:
a refused device gets its HTTP answer instead, PROTOCOL.md §9), then bound to the leaf that owns
the device for its whole life. Each leaf with sessions here has one `SESSION_PUSHES` call pending
from this process, which the leaf answers as soon as it has something to push; a leaf whose link
drops has its sessions closed with 1012, and their devices reconnect to a live leaf.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from device_protocol.codecs import JSON
from internal_link.errors import LinkError
from internal_link.sessions import MAX_PUSH_WAIT, SESSION_PUSHES, Push, SessionOpen

from ..admission import AdmissionControl
from ..device_auth import DeviceAuthenticator
from ..http1 import Reply, Request, Response, Switch, invalid_request
from ..stats import ProxyStats
from ..upstreams import Upstream, Upstreams
from .handshake import Upgrade, accept, identity_headers
from .relay import SERVICE_RESTART, SessionRelay

logger = logging.getLogger(__name__)

PUSH_WAIT = 20.0  # seconds a leaf may hold a push poll
GOING_AWAY = 1001  # the proxy is draining
_RETRY_BODY = b'{"status":"RETRY"}'


class SessionHub:
    """Every live session of this proxy process, by number, and one push poller per leaf in use."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        timeout: float,
        max_message_bytes: int,
        device_auth: DeviceAuthenticator | None = None,
        admission: AdmissionControl | None = None,
        stats: ProxyStats | None = None,
    ) -> None:
        self.name = uuid.uuid4().hex  # leaves tell this process's sessions from other workers'
        self._upstreams = upstreams
        self._timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._auth = device_auth
        self._admission = admission
        self.sessions: dict[int, SessionRelay] = {}
        self._stats = stats  # its `sessions` gauge follows `self.sessions` (metrics.py)
        self._next_number = 1
        self._pollers: dict[int, asyncio.Task[None]] = {}  # by id() of the upstream

    def open(self, request: Request, reply: Reply) -> None:
        """The dispatcher's `/ws`: a Switch to a new session, or the HTTP answer of a refusal."""
        identity = identity_headers(request)
        if isinstance(identity, Response):
            reply(identity)
            return
        device_id = identity["x-flare-device-id"]
        if self._auth is not None and (reason := self._auth.check(device_id, identity.get("x-flare-user-info"))):
            reply(invalid_request(403, reason))
            return
        if self._admission is not None:
            refusal = self._admission.admit(device_id, asyncio.get_running_loop().time())
            if refusal is not None:
                reply(Response(200, JSON, refusal.body()))
                return
            self._admission.release()  # a session is admitted once, not held in flight
        candidates = self._upstreams.candidates(device_id)
        if not candidates:
            reply(Response(200, JSON, _RETRY_BODY))  # PROTOCOL.md §8: no leaf is RETRY
            return
        upgrade = accept(request, identity, self._max_message_bytes)
        if isinstance(upgrade, Response):
            reply(upgrade)
            return
        reply(Switch(lambda transport: self._start(transport, candidates[0], upgrade)))

    def _start(self, transport: asyncio.Transport, upstream: Upstream, upgrade: Upgrade) -> SessionRelay:
        number = self._next_number
        self._next_number += 1
        opened = SessionOpen(self.name, number, upgrade.identity, upgrade.codec)
        relay = SessionRelay(self.name, number, upstream, upgrade.protocol, opened, self._timeout, self._forget)
        self.sessions[number] = relay
        if self._stats is not None:
            self._stats.sessions = len(self.sessions)
        transport.set_protocol(relay)
        relay.connection_made(transport)
        key = id(upstream)
        if key not in self._pollers:
            self._pollers[key] = asyncio.get_running_loop().create_task(self._poll(upstream), name="session-pushes")
        return relay

    def _forget(self, relay: SessionRelay) -> None:
        self.sessions.pop(relay.number, None)
        if self._stats is not None:
            self._stats.sessions = len(self.sessions)

    async def _poll(self, upstream: Upstream) -> None:
        client = upstream.client
        while True:
            try:
                payload: Any = await client.call(SESSION_PUSHES, [self.name, PUSH_WAIT], MAX_PUSH_WAIT + 5.0)
                pushes = Push.check_all(payload)
            except LinkError as exc:
                # The leaf is gone or broken: its sessions reconnect and reach a live leaf.
                logger.info("leaf %s: session pushes failed (%s); closing its sessions", upstream.leaf.name, exc)
                for relay in [r for r in self.sessions.values() if r.upstream is upstream]:
                    relay.close(SERVICE_RESTART, "gateway unavailable")
                await client.wait_connected(1.0)
                await asyncio.sleep(0.2)
                continue
            for push in pushes:
                pushed_to = self.sessions.get(push.session)
                if pushed_to is not None:
                    pushed_to.send(push.messages, push.close)

    async def close(self) -> None:
        """Draining: every session is closed (1001) and the pollers stop."""
        for relay in list(self.sessions.values()):
            relay.close(GOING_AWAY, "gateway stopping")
        for poller in self._pollers.values():
            poller.cancel()
        await asyncio.gather(*self._pollers.values(), return_exceptions=True)
        self._pollers.clear()
