"""The request path: one device request in, one `"feg"` call to its leaf, the leaf's answer out.

The proxy never parses a body; it checks only what it must to route and to protect the link
(ARCHITECTURE.md "Proxy → leaf").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from device_protocol.codecs import JSON, MSGPACK, media_type
from device_protocol.headers import DEVICE_ID
from edge_gateway.rpc import RpcRemoteError, RpcUnavailable

from .responses import invalid_request, retry
from .upstreams import Upstreams

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_FLARE_PREFIX = "x-flare-"
_PASSED_HEADERS = frozenset({"content-type", "accept"})
_BODY_TYPES = frozenset({JSON, MSGPACK})


class Forwarder:
    """Builds the handlers of the FEG endpoints (PROTOCOL.md §1)."""

    def __init__(self, upstreams: Upstreams, *, max_body_bytes: int, upstream_timeout: float) -> None:
        self._upstreams = upstreams
        self._max_body = max_body_bytes
        self._timeout = upstream_timeout

    def handler(self, endpoint: str, methods: frozenset[str]) -> Handler:
        """The handler of `/{endpoint}`, answering 405 to any method not in `methods`."""
        allow = ", ".join(sorted(methods))

        async def handle(request: web.Request) -> web.StreamResponse:
            if request.method not in methods:
                response = invalid_request(405, f"method {request.method} not allowed on /{endpoint}; use {allow}")
                response.headers[hdrs.ALLOW] = allow
                return response
            return await self._forward(request, endpoint)

        return handle

    async def _forward(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        # One pass over the headers; names lower-cased, first value wins (ARCHITECTURE.md).
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            if (key.startswith(_FLARE_PREFIX) or key in _PASSED_HEADERS) and key not in headers:
                headers[key] = value
        device_id = headers.get(DEVICE_ID)
        if not device_id:
            return invalid_request(400, "Device ID missing")  # PROTOCOL.md §2
        if request.body_exists:
            length = request.content_length
            if length is not None and length > self._max_body:
                return self._too_large()
            try:
                # Counts while reading, so a body without Content-Length is cut at the limit too.
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._too_large()
            # Any charset parameter is fine: only the media type counts (PROTOCOL.md §2).
            if body and media_type(headers.get("content-type", "")) not in _BODY_TYPES:
                return invalid_request(415, "unsupported content type: send application/json or application/msgpack")
        else:
            body = b""
        query: dict[str, str] = {}
        if request.query_string:
            for key, value in request.query.items():
                if key not in query:
                    query[key] = value
        return await self._call(device_id, [endpoint, query, headers, body])

    async def _call(self, device_id: str, payload: list[object]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        # Failing over shares one deadline: the device must hear back in time (PROTOCOL.md §6).
        deadline = loop.time() + self._timeout
        for upstream in self._upstreams.candidates(device_id):
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                result = await upstream.client.call("feg", payload, timeout)
            except RpcUnavailable as exc:
                if not exc.sent:
                    continue  # never reached this leaf: the next one in preference order may take it
                # Sent and unanswered: the leaf may have acted on it, so it is not re-sent elsewhere.
                logger.warning("leaf %s: %s", upstream.leaf.name, exc)
                return retry()
            except RpcRemoteError as exc:
                logger.error("leaf %s failed on a request: %s", upstream.leaf.name, exc)
                return retry()
            except UnicodeEncodeError:
                # aiohttp keeps undecodable header bytes as surrogates; the link carries UTF-8 only.
                return invalid_request(400, "header values must be UTF-8")
            try:
                status, content_type, body = result
                if type(status) is int and 200 <= status <= 599 and type(content_type) is str and type(body) is bytes:
                    return web.Response(status=status, body=body, headers={hdrs.CONTENT_TYPE: content_type})
            except (TypeError, ValueError):
                pass
            logger.error("leaf %s answered a malformed result: %.80r", upstream.leaf.name, result)
            return retry()
        return retry()  # no healthy leaf, or out of time (PROTOCOL.md §8)

    def _too_large(self) -> web.StreamResponse:
        response = invalid_request(413, f"request body larger than {self._max_body} bytes")
        # The rest of the body is not worth reading: close once the answer is out.
        response.force_close()
        return response
