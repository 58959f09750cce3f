"""The server, a leaf and the proxy refuse to start with the public development secret beyond
loopback: one line on stderr, a non-zero exit, nothing bound. The server's and the leaf's
non-loopback address is 192.0.2.1 (TEST-NET-1, no machine's): were the refusal missing, binding it
fails with another message, so nothing here listens beyond loopback either way. The proxy's leaf
is `leaf.invalid`, a name that never resolves, so nothing is reached either way."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from internal_link.process import DEVELOPMENT_SECRET, public_secret_beyond_loopback

from .test_cli_errors import assert_one_line_error, cli

NOT_OURS = "192.0.2.1"
NO_SECRET = {k: v for k, v in os.environ.items() if k != "EDGEFL_LINK_SECRET"}
PUBLIC_SECRET = {**NO_SECRET, "EDGEFL_LINK_SECRET": DEVELOPMENT_SECRET.decode()}


def server_args(tmp_path: Path) -> list[str]:
    return ["server", "--host", NOT_OURS, "--http-port", "0", "--link-port", "0", "--data-dir", str(tmp_path)]


def leaf_args(tmp_path: Path) -> list[str]:
    return ["leaf", "--host", NOT_OURS, "--port", "0", "--data-dir", str(tmp_path)]


@pytest.mark.parametrize("env", [NO_SECRET, PUBLIC_SECRET], ids=["unset", "set to the public one"])
@pytest.mark.parametrize("args", [server_args, leaf_args], ids=["server", "leaf"])
async def test_public_secret_beyond_loopback_is_refused(
    tmp_path: Path, env: dict[str, str], args: Callable[[Path], list[str]]
) -> None:
    code, _, err = await cli(*args(tmp_path), env=env)
    assert_one_line_error(code, err, "public development link secret", repr(NOT_OURS), "EDGEFL_LINK_SECRET")


async def test_a_real_secret_is_not_refused_for_its_address(tmp_path: Path) -> None:
    code, _, err = await cli(*server_args(tmp_path), env={**NO_SECRET, "EDGEFL_LINK_SECRET": "a-real-one"})
    assert code != 0 and "secret" not in err  # only the address, not ours, is refused


def test_which_hosts_count_as_beyond_loopback() -> None:
    loopback = ["127.0.0.1", "127.8.9.1", "::1", "localhost"]
    assert public_secret_beyond_loopback(DEVELOPMENT_SECRET, loopback) is None
    for host in ("0.0.0.0", "", "::", "192.168.1.20", "server.lan"):
        assert public_secret_beyond_loopback(DEVELOPMENT_SECRET, [*loopback, host]) == host
    assert public_secret_beyond_loopback(b"a-real-one", ["0.0.0.0"]) is None


@pytest.mark.parametrize("env", [NO_SECRET, PUBLIC_SECRET], ids=["unset", "set to the public one"])
async def test_the_proxy_refuses_the_public_secret_towards_a_leaf_beyond_loopback(
    tmp_path: Path, env: dict[str, str]
) -> None:
    lcp_map = tmp_path / "lcp_map.json"
    lcp_map.write_text('{"C11": {"host": "127.0.0.1", "port": 9003}, "C12": {"host": "leaf.invalid", "port": 9003}}')
    code, _, err = await cli("0", str(lcp_map), "--host", "127.0.0.1", module="routing_proxy", env=env)
    assert_one_line_error(code, err, "public development link secret", "'leaf.invalid'", "EDGEFL_LINK_SECRET")
