"""The harness itself: a shaped link delivers at its rate, and the relay adds its delay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .lan import Lan
from .stack import REPO, ShapedStack

PROBE = """
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.monotonic()
sock = socket.create_connection((host, port))
first = sock.recv(1)
rtt = time.monotonic() - started
got = len(first)
while got < size:
    chunk = sock.recv(1 << 16)
    if not chunk:
        break
    got += len(chunk)
print('{"bytes": %d, "seconds": %f, "first_byte": %f}' % (got, time.monotonic() - started, rtt))
"""

SERVE = """
import socket, sys
sock = socket.create_server((sys.argv[1], int(sys.argv[2])))
open(sys.argv[4], "w").write("ready")
conn, _ = sock.accept()
conn.sendall(b"x" * int(sys.argv[3]))
conn.close()
"""


async def test_a_20_mbps_link_with_a_40_ms_relay_is_that_slow(tmp_path: Path) -> None:
    size = 5_000_000  # 2 s at 20 Mbps
    with Lan("efll", rate_mbit=1000) as lan:
        sender = lan.add_host("sender")
        lan.add_host("receiver", rate_mbit=20)
        stack = ShapedStack(lan, tmp_path, {})
        try:
            await stack.start(
                "serve",
                "sender",
                [sys.executable, "-c", SERVE, sender, "7000", str(size), str(tmp_path / "s")],
                tmp_path / "s",
            )
            relay = [sys.executable, str(REPO / "tests" / "shaped" / "delay_relay.py"), "127.0.0.1:7001"]
            relay += [f"{sender}:7000", "--delay", "0.040", "--ready-file", str(tmp_path / "r")]
            await stack.start("relay", "receiver", relay, tmp_path / "r")
            out = await stack.run("receiver", [sys.executable, "-c", PROBE, "127.0.0.1", "7001", str(size)], 60)
        finally:
            await stack.stop()
    probe = json.loads(out)
    assert probe["bytes"] == size
    assert probe["first_byte"] >= 0.04  # the server speaks first: one way through the relay
    assert 1.9 <= probe["seconds"] <= 20  # the rate holds: not faster than 20 Mbps
