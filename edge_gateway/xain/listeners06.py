"""The two doors a leaf opens for xain-sdk 0.6 participants: the gRPC coordinator and the object endpoint.

They run in the leaf process, not in a forwarding process like the proxy: the SDK knows no
identity but its connection, so the connection has to end where the leases are; and grpcio stays
off the proxy's machine (the `edgefl[xain]` extra). A participant is thus bound to this leaf: it
could not move anyway, as the SDK's heartbeat thread dies with its first failed call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web

from ..leaf.xain_endpoints import XainEndpoints
from .coordinator06 import Coordinator06
from .coordinator_service import coordinator_handler
from .object_store import ObjectStore

GRPC_GRACE = 1.0  # seconds calls in flight get when the leaf stops


class Xain06Listeners:
    def __init__(self, xain: XainEndpoints, sync_soon: Callable[[float], Awaitable[None]]) -> None:
        self.objects = ObjectStore(xain)
        self.coordinator = Coordinator06(xain, self.objects, sync_soon)
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, grpc_port: int, object_port: int) -> tuple[int, int]:
        """Listen on both ports (0 picks one); returns the (gRPC, object) ports bound."""
        self._grpc = grpc.aio.server()
        self._grpc.add_generic_rpc_handlers((coordinator_handler(self.coordinator.behaviours()),))
        try:
            bound_grpc = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
        except RuntimeError:  # grpcio's "Failed to bind": said as the OSError it is
            bound_grpc = 0
        if not bound_grpc:
            raise OSError(f"cannot listen for xain-sdk 0.6 gRPC on {host}:{grpc_port} (in use, or not an address here)")
        await self._grpc.start()
        self._runner = web.AppRunner(self.objects.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, object_port).start()
        return bound_grpc, int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(GRPC_GRACE)
        if self._runner is not None:
            await self._runner.cleanup()
