#!/usr/bin/env python3
"""A TCP relay that makes a loopback registry look like one in another region.

    wan-proxy.py LISTEN_PORT UPSTREAM_HOST:PORT [--delay-ms 50] [--mbit 1000]

Every byte the client sends reaches the upstream `--delay-ms` later (so every
request, and every connection's first bytes, waits that long: one round trip of a
distant registry), and the bytes coming back share one link of `--mbit` megabits
per second across all connections. Prints "ready" once listening. Used by
scripts/bench-wan.sh; the relay itself is plain asyncio, no HTTP parsing.
"""

import argparse
import asyncio
import time


class Link:
    """The shared downstream link: a byte may leave when the link is free."""

    def __init__(self, bytes_per_s):
        self.rate = bytes_per_s
        self.free_at = 0.0

    async def send(self, n):
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + n / self.rate
        delay = self.free_at - now
        if delay > 0:
            await asyncio.sleep(delay)


async def delayed_pipe(reader, writer, delay):
    """Client to upstream: each chunk is written `delay` seconds after it came."""
    queue = asyncio.Queue()

    async def pump():
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.ensure_future(pump())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            queue.put_nowait((time.monotonic() + delay, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait(None)
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def capped_pipe(reader, writer, link):
    """Upstream to client, through the shared link."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await link.send(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("upstream")
    ap.add_argument("--delay-ms", type=float, default=50)
    ap.add_argument("--mbit", type=float, default=1000)
    a = ap.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    link = Link(a.mbit * 1e6 / 8)
    delay = a.delay_ms / 1000

    async def serve(cr, cw):
        try:
            ur, uw = await asyncio.open_connection(host, int(port))
        except OSError:
            cw.close()
            return
        await asyncio.gather(delayed_pipe(cr, uw, delay), capped_pipe(ur, cw, link))

    server = await asyncio.start_server(serve, "127.0.0.1", a.port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
