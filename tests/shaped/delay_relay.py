"""A TCP relay that delays every byte by a fixed time each way: added latency without `netem`.

    python tests/shaped/delay_relay.py LISTEN_HOST:PORT TARGET_HOST:PORT --delay 0.005 [--ready-file F]

Each direction holds at most `--window` bytes in flight (read but not yet written on), so a slow
receiver slows the sender as a real path would, instead of the relay buffering without bound.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
from pathlib import Path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, window: int) -> None:
    loop = asyncio.get_running_loop()
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    queued = asyncio.Condition()
    in_flight = 0

    async def send() -> None:
        nonlocal in_flight
        while True:
            async with queued:
                await queued.wait_for(lambda: bool(queue))
                due, data = queue.popleft()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            async with queued:
                in_flight -= len(data)
                queued.notify_all()

    def has_room() -> bool:
        return in_flight < window

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(64 * 1024)
            async with queued:
                await queued.wait_for(has_room)
                in_flight += len(data)
                queue.append((loop.time() + delay, data))
                queued.notify_all()
            if not data:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


async def _relay(
    target: tuple[str, int], delay: float, window: int, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    reader, writer = client
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, up_writer, delay, window), _pipe(up_reader, writer, delay, window))


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listen", type=_address)
    parser.add_argument("target", type=_address)
    parser.add_argument("--delay", type=float, required=True, help="seconds added in each direction")
    parser.add_argument("--window", type=int, default=4 * 1024 * 1024, help="bytes in flight per direction")
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    server = await asyncio.start_server(lambda r, w: _relay(args.target, args.delay, args.window, (r, w)), *args.listen)
    if args.ready_file:
        args.ready_file.write_text("ready")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
