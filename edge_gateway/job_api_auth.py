"""Who may use the job API: a bearer token, and no API beyond loopback without one.

The job API submits and ends jobs and hands out models: on a shared LAN it must not answer
strangers. Only the liveness and version probes (`OPEN_PATHS`) stay open, for health checks that
hold no token; every other route, including ones added later, asks for the token when one is set.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .user_errors import UserError

# `/status` is the status page's shell, no data: its script reads the token from the URL's fragment
# (`/status#token=...`, never sent to the server or its logs) and sends it with every `/api/status`.
OPEN_PATHS = frozenset({"/api/health", "/api/version", "/status"})
TOKEN_ENV = "EDGEFL_API_TOKEN"


@dataclass
class RefusalCount:
    """Requests refused for a missing or wrong token (shown by /api/health)."""

    unauthorized: int = 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface)
        return False


def refuse_exposed_without_token(api_host: str, token: str) -> None:
    """A job API reachable beyond this machine must ask for a token: refuse to start otherwise."""
    if not token and not is_loopback(api_host):
        raise UserError(
            f"the job API would listen on {api_host!r} without a token: set {TOKEN_ENV} (or --api-token-file) "
            "or keep --api-host on loopback"
        )


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped), or a `UserError` saying why not."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the API token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise UserError(f"the API token file {path} is empty")
    return token


def environment_token() -> str:
    """The token a server started with this environment asks for (ServerConfig's order), or ""."""
    return os.environ.get("EDGEFL_SERVER_API_TOKEN") or os.environ.get(TOKEN_ENV, "")


def authorization(token: str) -> dict[str, str]:
    """The header that presents `token` (none for no token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def bearer_auth(token: str, count: RefusalCount) -> Middleware:
    """Middleware: 401 JSON for a request without `Authorization: Bearer <token>` (constant time)."""
    expected = token.encode()

    @web.middleware
    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), expected):
            return await handler(request)
        count.unauthorized += 1
        message = "wrong API token" if presented else "this job API needs a token: Authorization: Bearer <token>"
        return web.Response(
            body=orjson.dumps({"status": "UNAUTHORIZED", "message": message}),
            status=401,
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="edgefl job API"'},
        )

    return authenticated
