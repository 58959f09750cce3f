"""TLS on both sides: devices → proxy (`--ssl-cert/--ssl-key`), proxy → leaves (root CA)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from ..certificates import self_signed
from .helpers import Leaf, Proxy, echoed

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]


async def test_tls_to_devices_and_to_leaves(leaves: MakeLeaf, proxy: MakeProxy, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    leaf_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf_tls.load_cert_chain(cert, key)
    leaf = await leaves("C11", tls=leaf_tls)
    px = await proxy([leaf], ssl_cert=cert, ssl_key=key, root_ca=cert)

    device_tls = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as http:
        url = px.url.replace("http://", "https://")
        async with http.post(f"{url}/task?job_id=J", headers={"X-Flare-Device-ID": "D"}, ssl=device_tls) as reply:
            assert reply.status == 200
            assert echoed(await reply.read())["leaf"] == "C11"


async def test_leaf_with_an_untrusted_certificate_is_never_used(
    leaves: MakeLeaf, proxy: MakeProxy, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca, _ = self_signed(tmp_path / "other")  # the CA the proxy trusts is not the leaf's
    leaf_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf_tls.load_cert_chain(cert, key)
    leaf = await leaves("C11", tls=leaf_tls)
    px = await proxy([leaf], root_ca=other_ca, wait_healthy=False)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{px.url}/task?job_id=J", headers={"X-Flare-Device-ID": "D"}) as reply,
    ):
        assert await reply.json() == {"status": "RETRY"}
    assert leaf.received == []
