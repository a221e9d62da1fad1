"""Closed-loop HTTP load generator, run as a child process of the serving benchmark.

    python -m benchmarks.serving.loadgen < job.json > result.json

Job: ``{"url": ..., "bodies": [[body, ...], ...]}``: client w sends ``bodies[w]`` to
``POST /v1/generate`` one after the other on its own keep-alive connection, all clients at once.
Result: wall seconds, and for each client, in order, every request's latency, completion tokens
and serving memory.

Real clients run elsewhere; in the server's process they would compete with it for the
interpreter lock. And on a small machine the clients' own CPU time competes with the server's:
so requests are written and read with plain asyncio streams (HTTP/1.1, ``Content-Length``
bodies), several times cheaper per request than a general HTTP client. Imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit


class _Connection:
    """One keep-alive HTTP/1.1 connection that posts JSON and reads JSON answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> dict:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        self.writer.write(head.encode() + payload)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        data = await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run(url: str, bodies: Sequence[Sequence[dict]]) -> dict:
    """Send every client's bodies; what each request measured."""
    parts = urlsplit(url)
    done: list[list[tuple[float, int, str | None]]] = [[] for _ in bodies]
    connections = [_Connection(parts.hostname or "127.0.0.1", parts.port or 80) for _ in bodies]

    async def client(own: Sequence[dict], conn: _Connection, out: list) -> None:
        for body in own:
            t = time.perf_counter()
            data = await conn.post("/v1/generate", body)
            out.append((time.perf_counter() - t, data["usage"]["completion_tokens"],
                        data["memory_id"]))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(b, c, d) for b, c, d in zip(bodies, connections, done,
                                                                   strict=True)))
    finally:
        for conn in connections:
            conn.close()
    return {"seconds": time.perf_counter() - start, "workers": done}


def main() -> None:
    job = json.load(sys.stdin)
    json.dump(asyncio.run(run(job["url"], job["bodies"])), sys.stdout)


if __name__ == "__main__":
    main()
