"""Which paths are a xain-sdk 0.8 participant's calls, and what the proxy mints and announces."""

from __future__ import annotations

import re

import pytest

from routing_proxy.xain_routes import ID_PREFIX, XainPath, aggregator_url, mint_id, parse


def test_ids_are_url_safe_prefixed_and_fresh() -> None:
    ids = {mint_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"x8-[A-Za-z0-9_-]{20,}", i) for i in ids)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/rendez_vous", XainPath("rendez_vous", "", "")),
        ("GET", "/heartbeat/x8-abc_D", XainPath("heartbeat", "x8-abc_D", "")),
        ("GET", "/start_training/x8-abc", XainPath("start_training", "x8-abc", "")),
        ("GET", "/x8-abc/tok-EN_1", XainPath("download", "x8-abc", "tok-EN_1")),
        ("POST", "/x8-abc/tok", XainPath("upload", "x8-abc", "tok")),
    ],
)
def test_participant_calls(method: str, path: str, expected: XainPath) -> None:
    assert parse(path, method) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/rendez_vous"),  # the SDK only GETs these three
        ("POST", "/heartbeat/x8-abc"),
        ("GET", "/heartbeat/abc"),  # an id the proxy did not mint
        ("GET", "/heartbeat/x8-"),
        ("GET", "/abc/token"),  # the root path is ours only under minted ids
        ("PUT", "/x8-abc/token"),
        ("GET", "/x8-abc/tok/extra"),
        ("GET", "/x8-abc/to%2Fk"),
        ("GET", "/x8-abc/"),
        ("GET", "/heartbeat/x8-" + "a" * 201),
        ("GET", "/rendez_vous/"),
    ],
)
def test_anything_else_is_not_theirs(method: str, path: str) -> None:
    assert parse(path, method) is None


def test_prefix_is_what_the_proxy_mints() -> None:
    assert mint_id().startswith(ID_PREFIX)


@pytest.mark.parametrize(
    ("host", "tls", "url"),
    [
        (b"edge.example:4321", False, "http://edge.example:4321"),
        (b"127.0.0.1:8443", True, "https://127.0.0.1:8443"),
        (b"[::1]:4321", False, "http://[::1]:4321"),
        (None, False, "http://localhost"),
        (b"evil.example/path?x", False, "http://localhost"),  # never a path or query of the client's
        (b"a@b:1", False, "http://localhost"),
    ],
)
def test_aggregator_url_is_the_host_the_participant_reached(host: bytes | None, tls: bool, url: str) -> None:
    assert aggregator_url(host, tls) == url
