"""A LAN of network namespaces on one machine: each host its own namespace, joined by veth pairs to
one bridge, every link's bandwidth shaped with `tc tbf` in both directions.

    with Lan("efl", rate_mbit=1000) as lan:
        lan.add_host("leaf")                        # 10.77.0.1 in namespace efl-leaf
        lan.run("leaf", ["python", ...])            # argv prefix: ip netns exec efl-leaf ...

The test process stays in the root namespace, which joins the bridge as 10.77.0.254 over an
unshaped link, so it can reach every host (to submit jobs, read status) without using the shaped
paths the test measures. Needs root and iproute2. This kernel has no `netem`: added latency comes
from `delay_relay.py`, not from here.
"""

from __future__ import annotations

import subprocess
from types import TracebackType

SUBNET = "10.77.0"
ROOT_ADDRESS = f"{SUBNET}.254"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _tbf(namespace: str | None, device: str, rate_mbit: float) -> None:
    # A burst of at least 128 KiB: veth hands tbf segments of up to 64 KiB (GSO), and a smaller
    # bucket would drop every one of them. The queue holds 100 ms of traffic at the rate.
    burst = max(int(rate_mbit * 1e6 / 8 / 250), 128 * 1024)
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    command = [*prefix, "tc", "qdisc", "replace", "dev", device, "root", "tbf"]
    command += ["rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "100ms"]
    subprocess.run(command, check=True, capture_output=True, text=True)


class Lan:
    """Namespaces `<prefix>-<host>` on a bridge in `<prefix>-lan`; removed on exit."""

    def __init__(self, prefix: str, rate_mbit: float) -> None:
        if len(prefix) > 6:
            raise ValueError("prefix too long: interface names are at most 15 characters")
        self.prefix = prefix
        self.rate_mbit = rate_mbit
        self.hosts: dict[str, str] = {}  # host -> address
        self._namespaces: list[str] = []
        self._root_link = f"{prefix}root"

    def __enter__(self) -> Lan:
        bridge_ns = self._namespace("lan")
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        # The root namespace's own unshaped port on the bridge.
        subprocess.run(["ip", "link", "del", self._root_link], capture_output=True)  # a killed run's
        _ip("link", "add", self._root_link, "type", "veth", "peer", "name", f"{self.prefix}rootb")
        _ip("link", "set", f"{self.prefix}rootb", "netns", bridge_ns)
        _ip("-n", bridge_ns, "link", "set", f"{self.prefix}rootb", "master", "br0", "up")
        _ip("addr", "add", f"{ROOT_ADDRESS}/24", "dev", self._root_link)
        _ip("link", "set", self._root_link, "up")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        # Deleting a namespace deletes the veth ends in it, and with them their peers.
        subprocess.run(["ip", "link", "del", self._root_link], capture_output=True)
        for namespace in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        self._namespaces.clear()

    def add_host(self, name: str, rate_mbit: float | None = None) -> str:
        """A host on the bridge whose link is shaped to `rate_mbit` (the LAN's rate by default)."""
        index = len(self.hosts) + 1
        address = f"{SUBNET}.{index}"
        namespace = self._namespace(name)
        host_end, bridge_end = f"{self.prefix}{index}h", f"{self.prefix}{index}b"
        bridge_ns = f"{self.prefix}-lan"
        _ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
        _ip("link", "set", host_end, "netns", namespace)
        _ip("link", "set", bridge_end, "netns", bridge_ns)
        _ip("-n", bridge_ns, "link", "set", bridge_end, "master", "br0", "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", host_end)
        _ip("-n", namespace, "link", "set", host_end, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        rate = self.rate_mbit if rate_mbit is None else rate_mbit
        _tbf(namespace, host_end, rate)  # what the host sends
        _tbf(bridge_ns, bridge_end, rate)  # what the host receives
        self.hosts[name] = address
        return address

    def run(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run inside `host`'s namespace (the PID is the command's own: `ip netns exec` execs it)."""
        return ["ip", "netns", "exec", f"{self.prefix}-{host}", *argv]

    def _namespace(self, name: str) -> str:
        namespace = f"{self.prefix}-{name}"
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)  # a leftover of a killed run
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        return namespace
