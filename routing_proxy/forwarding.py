"""The request path: one device request in, one `"feg"` call to its leaf, the leaf's answer out.

The proxy never parses a body; it checks only what it must to route and to protect the link
(ARCHITECTURE.md "Proxy → leaf"). Requests are answered from callbacks, not tasks: a request
costs a future on the link and nothing more (docs/BENCHMARKS.md §1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import parse_qsl

import orjson

from device_protocol.codecs import JSON, MSGPACK, media_type
from device_protocol.identifiers import ID_FIELDS, length_problem
from internal_link.calls import DeviceCall
from internal_link.versions import versions

from .admission import DEVICE_RATE_REASON, AdmissionControl
from .device_auth import DeviceAuthenticator
from .http1 import Reply, Request, Response, UploadRequest, invalid_request
from .leaf_calls import LeafCall, UploadCall, XainLeafCall, XainUploadCall, retry
from .lease_caps import LeaseCaps
from .sessions.hub import SessionHub
from .stats import ProxyStats
from .upstreams import Upstreams
from .xain_routes import aggregator_url, mint_id, parse

logger = logging.getLogger(__name__)

_FLARE_PREFIX = b"x-flare-"
_PASSED_HEADERS = frozenset({b"content-type", b"accept"})
_BODY_TYPES = frozenset({JSON, MSGPACK})

_POST = frozenset({"POST"})
# PROTOCOL.md §1: the API lives at the root; /task takes GET too.
ENDPOINTS: dict[str, frozenset[str]] = {
    "job": _POST,
    "task": frozenset({"GET", "POST"}),
    "result": _POST,
    "selection": _POST,
}
_HEALTH_METHODS = frozenset({"GET", "HEAD"})
NO_LEASE_CAPS = LeaseCaps(per_token=0, per_ip=0)


class Forwarder:
    """The dispatcher of the proxy's HTTP server: FEG endpoints, `/health`, JSON errors."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        upstream_timeout: float,
        device_auth: DeviceAuthenticator | None = None,
        admission: AdmissionControl | None = None,
        lease_caps: LeaseCaps = NO_LEASE_CAPS,
        tls: bool = False,
        stats: ProxyStats,
        sessions: SessionHub | None = None,
        busy: Callable[[], Response] = retry,
    ) -> None:
        self._upstreams = upstreams
        self.stats = stats
        self._sessions = sessions
        self._tls = tls  # whether devices reach this proxy over TLS (for the XAIN aggregator URL)
        self._timeout = upstream_timeout
        self._auth = device_auth
        self._admission = admission
        self._ids_refused = 0  # requests refused for an over-long identifier (shown by /health)
        self._lease_caps = lease_caps
        self._busy = busy  # the answer to an upload a leaf has no room for now

    def __call__(self, request: Request, reply: Reply) -> None:
        path, query_string = request.path, request.query
        try:
            endpoint = path.decode("ascii").lstrip("/")
        except UnicodeDecodeError:
            endpoint = ""
        methods = ENDPOINTS.get(endpoint)
        if methods is None:
            self._other(request, path, endpoint, reply)
        elif request.method not in methods:
            self._refuse(reply, "method_not_allowed", _method_not_allowed(request.method, endpoint, methods))
        else:
            self._forward(request, endpoint, query_string, reply)

    def _forward(self, request: Request, endpoint: str, query_string: bytes, reply: Reply) -> None:
        headers: dict[str, str] = {}
        try:
            for name, value in request.headers.items():
                if name.startswith(_FLARE_PREFIX) or name in _PASSED_HEADERS:
                    headers[name.decode("ascii")] = value.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse(reply, "header_not_utf8", invalid_request(400, "header values must be UTF-8"))
            return
        device_id = headers.get("x-flare-device-id")
        if not device_id:
            self._refuse(reply, "device_id_missing", invalid_request(400, "Device ID missing"))  # PROTOCOL.md §2
            return
        if (problem := length_problem("Device ID", device_id)) is not None:
            self._ids_refused += 1
            reply(invalid_request(400, problem))  # before its id fills any table here or at a leaf
            return
        # Before anything reaches a leaf: who may ask, and whether the gateway takes more now.
        credential = None
        if self._auth is not None:
            verdict = self._auth.admit(device_id, headers.get("x-flare-user-info"))
            if verdict.reason is not None:
                self._refuse(reply, "unauthenticated", invalid_request(403, verdict.reason))
                return
            credential = verdict.credential
        if endpoint == "task":  # the only request that takes a lease
            limit = self._lease_caps.limit(credential, request.client)
            if limit is not None:
                headers.update(limit.headers())  # never from the device: only x-flare-* are passed
        if self._admission is not None:
            if self._admit(self._admission, endpoint, device_id, reply):
                return
            reply = _releasing(self._admission, reply)
        body = request.body
        # Any charset parameter is fine: only the media type counts (PROTOCOL.md §2).
        if (body or type(request) is UploadRequest) and media_type(headers.get("content-type", "")) not in _BODY_TYPES:
            message = "unsupported content type: send application/json or application/msgpack"
            self._refuse(reply, "unsupported_content_type", invalid_request(415, message))
            return
        query: dict[str, str] = {}
        if query_string:
            try:
                text = query_string.decode("utf-8")
            except UnicodeDecodeError:
                self._refuse(reply, "query_not_utf8", invalid_request(400, "the query string must be UTF-8"))
                return
            for key, text_value in _query_pairs(text):
                query.setdefault(key, text_value)
        # Ids in the body are bounded at the leaf, which parses it (device_protocol/feg.py).
        for field in ID_FIELDS:
            if field in query and (problem := length_problem(field, query[field])) is not None:
                self._ids_refused += 1
                reply(invalid_request(400, problem))
                return
        candidates = self._upstreams.candidates(device_id)
        call = DeviceCall(endpoint, query, headers, body, self._timeout)
        if type(request) is UploadRequest:  # a large body, passed on as it arrives
            upload = UploadCall(
                candidates, call, reply, self._timeout, self.stats, request.length, request.attach, self._busy
            )
            upload.next()
            return
        LeafCall(candidates, call, reply, self._timeout, self.stats).next()

    def _refuse(self, reply: Reply, reason: str, response: Response) -> None:
        self.stats.refused[reason] += 1
        reply(response)

    def _admit(self, admission: AdmissionControl, endpoint: str, device_id: str, reply: Reply) -> bool:
        """Whether the request was refused (and answered) by admission control."""
        if endpoint == "result":
            admission.enter()  # uploads are never refused (admission.py), only counted
            return False
        refusal = admission.admit(device_id, asyncio.get_running_loop().time())
        if refusal is None:
            return False
        reason = "device_rate" if refusal.reason == DEVICE_RATE_REASON else "overload"
        self._refuse(reply, reason, Response(200, JSON, refusal.body()))
        return True

    def _other(self, request: Request, path: bytes, endpoint: str, reply: Reply) -> None:
        if endpoint == "ws" and self._sessions is not None:
            self._sessions.open(request, reply)  # PROTOCOL.md §9: live sessions
            return
        xain = parse(path.decode("ascii", "replace"), request.method)
        if xain is None:
            self._not_feg(request, path, endpoint, reply)
        elif self._auth is not None:
            # The SDK sends no headers of its own: a participant cannot prove what a device must.
            message = "device authentication is on and XAIN participants cannot present a token"
            self._refuse(reply, "unauthenticated", invalid_request(403, message))
        elif xain.endpoint == "rendez_vous":
            reply(Response(200, JSON, orjson.dumps({"id": mint_id()})))
        else:
            # Routed by the participant id like a device id: it stays on its leaf while that lives.
            query = {"id": xain.participant, "token": xain.token}
            if xain.endpoint == "start_training":
                query["url"] = aggregator_url(request.headers.get(b"host"), self._tls)
            call = DeviceCall(xain.endpoint, query, {}, request.body, self._timeout)
            candidates = self._upstreams.candidates(xain.participant)
            if type(request) is UploadRequest:
                args = (request.length, request.attach, self._busy)
                XainUploadCall(candidates, call, reply, self._timeout, self.stats, *args).next()
                return
            XainLeafCall(candidates, call, reply, self._timeout, self.stats).next()

    def _not_feg(self, request: Request, path: bytes, endpoint: str, reply: Reply) -> None:
        if endpoint != "health":
            shown = path.decode("utf-8", "replace")[:200]
            message = f"no such endpoint {shown}; use /job, /task, /result or /selection"
            self._refuse(reply, "unknown_endpoint", invalid_request(404, message))
        elif request.method not in _HEALTH_METHODS:
            self._refuse(reply, "method_not_allowed", _method_not_allowed(request.method, endpoint, _HEALTH_METHODS))
        else:
            leaves = self._upstreams.status()
            healthy = sum(leaf["healthy"] for leaf in leaves.values())
            body = {
                "status": "OK" if healthy else "RETRY",
                "healthy": healthy,
                "leaves": leaves,
                "ids_refused": self._ids_refused,  # this worker's
                **versions(),
            }
            # 503 with no healthy leaf: a load balancer or health check must not send devices here.
            reply(Response(200 if healthy else 503, JSON, orjson.dumps(body)))


def _query_pairs(text: str) -> list[tuple[str, str]]:
    """`parse_qsl(text, keep_blank_values=True)`; devices' `job_id=<uuid>` skips its unquoting."""
    if "%" in text or "+" in text:
        return parse_qsl(text, keep_blank_values=True)
    return [(key, value) for key, _, value in (part.partition("=") for part in text.split("&") if part)]


def _releasing(admission: AdmissionControl, reply: Reply) -> Reply:
    def release_then_reply(response: Response) -> None:
        admission.release()
        reply(response)

    return release_then_reply


def _method_not_allowed(method: str, endpoint: str, methods: frozenset[str]) -> Response:
    allow = ", ".join(sorted(methods))
    response = invalid_request(405, f"method {method} not allowed on /{endpoint}; use {allow}")
    response.headers = (("Allow", allow),)
    return response
