"""Device authentication (403) and admission control (RETRY) in a running proxy: refused requests
never reach a leaf, admitted ones do, uploads are never refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from internal_link.calls import DeviceCall

from .helpers import Leaf, Proxy

MakeLeaf = Callable[..., Awaitable[Leaf]]
MakeProxy = Callable[..., Awaitable[Proxy]]

TOKEN = "s3cret-Token_1.0~"


async def ask(
    http: aiohttp.ClientSession, proxy: Proxy, device: str, endpoint: str = "task", **headers: str
) -> tuple[int, dict[str, Any] | None]:
    sent = {"X-Flare-Device-ID": device, **{k.replace("_", "-"): v for k, v in headers.items()}}
    body = b"{}" if endpoint == "result" else b""
    async with http.post(
        f"{proxy.url}/{endpoint}?job_id=J", data=body, headers={**sent, "Content-Type": "application/json"}
    ) as reply:
        raw = await reply.read()
        return reply.status, (orjson.loads(raw) if reply.content_type == "application/json" else None)


async def test_token_in_user_info_any_shape(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# devices of the lab\n{TOKEN}\n")
    leaf = await leaves("C11")
    px = await proxy([leaf], auth_tokens_file=tokens)

    assert await ask(http, px, "D1") == (
        403,
        {"status": "INVALID_REQUEST", "message": "auth_token missing from X-Flare-User-Info"},
    )
    assert await ask(http, px, "D1", X_Flare_User_Info="auth_token=wrong") == (
        403,
        {"status": "INVALID_REQUEST", "message": "invalid auth_token"},
    )
    assert leaf.received == []
    # Android's raw query string, iOS's JSON object: both carry the token.
    assert (await ask(http, px, "D1", X_Flare_User_Info=f"user=u&auth_token={TOKEN}"))[0] == 200
    assert (await ask(http, px, "D2", X_Flare_User_Info=orjson.dumps({"auth_token": TOKEN}).decode()))[0] == 200
    assert [headers["x-flare-device-id"] for _, _, headers, _ in leaf.received] == ["D1", "D2"]


async def test_allow_list(leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    allowed = tmp_path / "devices"
    allowed.write_text("phone-1\nphone-2\n")
    leaf = await leaves("C11")
    px = await proxy([leaf], allowed_devices_file=allowed)
    assert await ask(http, px, "phone-3") == (403, {"status": "INVALID_REQUEST", "message": "device not allowed"})
    # A simulator-style group id is not a way around the list.
    assert (await ask(http, px, "phone-1?100", "selection"))[0] == 403
    assert (await ask(http, px, "phone-2"))[0] == 200
    assert len(leaf.received) == 1


async def test_a_device_polling_too_fast_gets_a_jittered_retry(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11")
    px = await proxy([leaf], device_rate=3, device_window=3600, refusal_retry_wait=5)
    for _ in range(3):
        assert (await ask(http, px, "fast"))[0] == 200
    waits = set()
    for _ in range(10):
        status, body = await ask(http, px, "fast")
        assert status == 200 and body is not None
        assert body["status"] == "RETRY" and body["message"] == "too many requests from this device"
        waits.add(body["retry_wait"])
    assert waits <= set(range(5, 11)) and len(waits) > 1  # seconds, spread so refusals scatter
    # Seconds for every client (PROTOCOL.md §4), Android included: never milliseconds.
    _, android = await ask(http, px, "fast", X_Flare_Device_Info="platform=android&app_version=1")
    assert android is not None and 5 <= android["retry_wait"] <= 10
    # Another device is not held up, and an upload from the fast one still goes through.
    assert (await ask(http, px, "calm"))[0] == 200
    assert (await ask(http, px, "fast", "result"))[0] == 200
    assert len(leaf.received) == 5


async def test_overload_turns_into_retry_not_timeouts(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def slow(call: DeviceCall) -> list[Any]:
        await release.wait()
        return [200, "application/json", b'{"status":"OK"}']

    leaf = await leaves("C11", feg=slow)
    px = await proxy([leaf], max_inflight=2)
    held = [asyncio.create_task(ask(http, px, f"held-{i}")) for i in range(2)]
    await asyncio.sleep(0.3)  # both are at the leaf
    status, body = await ask(http, px, "late")
    assert status == 200 and body is not None and body["status"] == "RETRY" and body["message"] == "gateway busy"
    upload = asyncio.create_task(ask(http, px, "held-0", "result"))  # never refused
    await asyncio.sleep(0.3)
    release.set()
    assert [await t for t in held] == [(200, {"status": "OK"})] * 2
    assert await upload == (200, {"status": "OK"})
    # Answered requests are released: the gateway takes polls again.
    assert await ask(http, px, "late") == (200, {"status": "OK"})
    assert len(leaf.received) == 4


async def test_xain_participants_are_refused_when_devices_must_authenticate(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """xain-sdk participants cannot present a token: with device authentication on, none gets in."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    leaf = await leaves("C11")
    px = await proxy([leaf], auth_tokens_file=tokens)
    for path in ("/rendez_vous", "/heartbeat/x8-abc", "/start_training/x8-abc", "/x8-abc/token"):
        async with http.get(f"{px.url}{path}") as reply:
            assert reply.status == 403, path
            assert "XAIN" in orjson.loads(await reply.read())["message"]
    assert leaf.received == []


async def test_the_leaf_hears_whose_credential_a_task_request_came_with(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Issue 11 (Sybil): the token's digest (never the token) and its lease cap go with `/task`,
    whatever the device claims in headers of the same names."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    leaf = await leaves("C11")
    px = await proxy([leaf], auth_tokens_file=tokens, max_leases_per_token=3, max_leases_per_ip=7)
    forged = {"X_Edgefl_Client": "token:someone-else", "X_Edgefl_Client_Leases": "1000"}
    for endpoint in ("task", "job"):
        assert (await ask(http, px, "D1", endpoint, X_Flare_User_Info=f"auth_token={TOKEN}", **forged))[0] == 200
    (_, _, on_task, _), (_, _, on_job, _) = leaf.received
    client = on_task["x-edgefl-client"]
    assert client.startswith("token:") and len(client) == len("token:") + 16 and TOKEN not in client
    assert on_task["x-edgefl-client-leases"] == "3"  # per token, not per address
    assert not any(name.startswith("x-edgefl") for name in on_job)  # only a task takes a lease


async def test_without_device_auth_a_task_counts_against_its_address_when_capped(
    leaves: MakeLeaf, proxy: MakeProxy, http: aiohttp.ClientSession
) -> None:
    leaf = await leaves("C11")
    uncapped = await proxy([leaf])
    capped = await proxy([leaf], max_leases_per_ip=2)
    assert (await ask(http, uncapped, "D1"))[0] == 200
    assert (await ask(http, capped, "D1"))[0] == 200
    (_, _, first, _), (_, _, second, _) = leaf.received
    assert "x-edgefl-client" not in first
    assert (second["x-edgefl-client"], second["x-edgefl-client-leases"]) == ("ip:127.0.0.1", "2")
