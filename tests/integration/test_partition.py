"""A network partition (issue 5): one of four leaves runs in its own network namespace, joined to
the host by a veth pair; its side of the link goes down for 30 s while 1,000 simulated devices
work, then comes back. Packets are dropped silently (no resets), as in a real partition.

The same guarantees as for a crash: devices hear RETRY or lose a connection, never ERROR; the job
finishes; what devices were told counts is what the server counted, once. And the leaf rejoins:
the proxy routes its devices back to it and the server grants it slots again.

Needs root and iproute2 (`ip netns`); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson
import pytest

from edge_gateway.launcher import Stack
from edge_gateway.processes import Child, free_port, spawn, wait_ready_file
from internal_link.messages import JobStatus
from routing_proxy.routing import Router

from .helpers import job_status, wait_for
from .stack_control import rounds_later, wait_proxy_healthy
from .test_faults_under_load import finish, start

PARTITION_SECONDS = 30.0

pytestmark = [pytest.mark.slow]


@dataclass(frozen=True)
class Namespace:
    """A network namespace joined to the host by a veth pair: host_ip <-> ns_ip (a /30)."""

    name: str
    ns_link: str
    host_ip: str
    ns_ip: str

    def exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def set_link(self, up: bool) -> None:
        _ip(*self.exec("ip", "link", "set", self.ns_link, "up" if up else "down"))


def _ip(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _free_subnet() -> int:
    """A third octet of 10.231.x.0/24 no interface of this host uses (other runs may hold some)."""
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    start = os.getpid() % 250
    for step in range(250):
        octet = (start + step) % 250 + 1
        if f" 10.231.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.231.x.0/24 subnet")


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("needs Linux with iproute2 (`ip netns`)")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace and a veth pair")
    pid = os.getpid()
    name, host_link, ns_link = f"efl-{pid}", f"eflh{pid}", f"efln{pid}"
    try:
        _ip("ip", "netns", "add", name)
    except RuntimeError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        octet = _free_subnet()
        ns = Namespace(name, ns_link, f"10.231.{octet}.1", f"10.231.{octet}.2")
        _ip("ip", "link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        _ip("ip", "link", "set", ns_link, "netns", name)
        _ip("ip", "addr", "add", f"{ns.host_ip}/30", "dev", host_link)
        _ip("ip", "link", "set", host_link, "up")
        _ip(*ns.exec("ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns_link))
        _ip(*ns.exec("ip", "link", "set", ns_link, "up"))
        _ip(*ns.exec("ip", "link", "set", "lo", "up"))
        yield ns
    finally:
        # Deleting one end of a veth pair deletes both; the namespace goes last.
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


async def _spawn_in(ns: Namespace, name: str, args: list[str], logs: Path, env: dict[str, str]) -> Child:
    """Like processes.spawn, inside the namespace; `ip netns exec` execs, so the PID is Python's."""
    log_path = logs / f"{name}.log"
    with _append(log_path) as out:
        process = await asyncio.create_subprocess_exec(
            *ns.exec(sys.executable, "-m", *args),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **env},
        )
    return Child(name, process, log_path)


@pytest.fixture
async def split_stack(namespace: Namespace, tmp_path: Path) -> AsyncIterator[Stack]:
    """Server, three leaves and the proxy on the host; leaf-3 in the namespace. The server listens
    on the host end of the veth pair, which the host's own processes reach locally."""
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {"EDGEFL_LINK_SECRET": os.urandom(16).hex()}
    stack = Stack("", "", tmp_path / "lcp_map.json", env)
    try:
        server = await spawn(
            "server",
            [
                "edge_gateway",
                "server",
                "--host",
                namespace.host_ip,
                "--http-port",
                "0",
                "--link-port",
                "0",
                "--data-dir",
                str(tmp_path / "server"),
                "--ready-file",
                str(tmp_path / "server.ready"),
            ],
            logs,
            env,
        )
        stack.children.append(server)
        ports = await wait_ready_file(server, tmp_path / "server.ready")
        link = ports["link_port"]
        # The job API stays on loopback (--api-host's default): only the link faces the namespace.
        stack.api_url = f"http://127.0.0.1:{ports['http_port']}"
        lcp = {}
        for i in range(4):
            name = f"leaf-{i}"
            host = namespace.ns_ip if i == 3 else "127.0.0.1"
            args = [
                "edge_gateway",
                "leaf",
                "--name",
                name,
                "--host",
                host,
                "--port",
                "0",
                "--server",
                f"{namespace.host_ip}:{link}",
                "--data-dir",
                str(tmp_path / name),
                "--ready-file",
                str(tmp_path / f"{name}.ready"),
            ]
            leaf = await (_spawn_in(namespace, name, args, logs, env) if i == 3 else spawn(name, args, logs, env))
            stack.children.append(leaf)
            lcp[name] = {"host": host, "port": (await wait_ready_file(leaf, tmp_path / f"{name}.ready"))["port"]}
        stack.lcp_map.write_bytes(orjson.dumps(lcp))
        port = free_port()
        stack.children.append(
            await spawn("proxy", ["routing_proxy", str(port), str(stack.lcp_map), "--host", "127.0.0.1"], logs, env)
        )
        stack.proxy_url = f"http://127.0.0.1:{port}"
        await wait_proxy_healthy(stack, 4)
        yield stack
    finally:
        await stack.stop()


@pytest.mark.timeout(300)
async def test_leaf_partitioned_for_30_s_then_healed(split_stack: Stack, namespace: Namespace) -> None:
    stack, rounds = split_stack, 40
    job_id, load = await start(stack, "xor_partition", rounds, leaves=4)
    loop = asyncio.get_running_loop()
    try:
        await wait_for(stack.api_url, job_id, lambda s: s["round"] >= 2 and s["reported"] > 0, timeout=90)
        namespace.set_link(up=False)
        cut_at = loop.time()
        try:
            # The proxy's health checks time out: leaf-3's devices move to the other leaves. Its
            # syncs stop: the server stops granting it slots. The job goes on.
            await wait_proxy_healthy(stack, 3, unhealthy="leaf-3", timeout=20)
            await wait_for(stack.api_url, job_id, lambda s: "leaf-3" not in s["leaves"], timeout=20)
            await rounds_later(stack, job_id, 2)
            await asyncio.sleep(max(0.0, cut_at + PARTITION_SECONDS - loop.time()))
        finally:
            namespace.set_link(up=True)
        healed_at = loop.time()
        assert (await job_status(stack.api_url, job_id))["status"] == JobStatus.RUNNING  # the heal is under load too
        await wait_proxy_healthy(stack, 4, timeout=60)
        await wait_for(stack.api_url, job_id, lambda s: "leaf-3" in s["leaves"], timeout=60)
        rejoined_at = loop.time()
        await rounds_later(stack, job_id, 2)
        await finish(stack, job_id, load, rounds)
    finally:
        await load.cancel()
    leaves = list(orjson.loads(stack.lcp_map.read_bytes()))
    router = Router(leaves)
    homed = {d for d, _ in load.transcript.tasks if router.ranking(d)[0] == leaves.index("leaf-3")}
    assert any(d in homed and t > rejoined_at for d, t in load.transcript.tasks)
    # Last, as it is the proxy's part: a task a device got while the partition lasted came from
    # another leaf (leaf-3's answers could not get out), so leaf-3's devices moved.
    moved = [t - cut_at for d, t in load.transcript.tasks if d in homed and cut_at + 1.0 < t < healed_at]
    assert moved, (
        "none of leaf-3's devices got a task from another leaf during the 30 s partition: the proxy "
        "held their requests to the unreachable leaf for its upstream timeout (25 s), then they waited 5 s "
        "(its RETRY has no retry_wait) and the partition was over"
    )
