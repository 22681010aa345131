"""A lean HTTP/1.1 load generator: keep-alive connections, pre-built requests, asyncio.

Why not httpx: on a 2-core machine httpx spent ~6 ms of CPU per request, more than the
server under test, so its figures measured the client. Here each client is one
keep-alive connection that writes a pre-encoded request and reads the answer by its
Content-Length (or chunks): ~0.1 ms a request. Every answer's status is checked and
its body decoded as JSON, so a server answering quickly with errors does not count as
fast. Loopback only: the bench passes 127.0.0.1. ``partial_requests`` opens clients that
send part of a request and go quiet (the slow-client phase).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadStats:
    requests: int
    errors: int
    rps: float  # answers with status 200 per second of wall time
    p50_ms: float
    p99_ms: float
    wall_s: float
    latencies_ms: np.ndarray = field(repr=False)
    first_error: str = ""
    statuses: dict[int, int] = field(default_factory=dict)
    reconnects: int = 0

    @staticmethod
    def pooled(runs: list[LoadStats]) -> LoadStats:
        """Several runs against one server as one: rates over the summed time, pooled latencies."""
        ms = np.concatenate([r.latencies_ms for r in runs])
        wall = sum(r.wall_s for r in runs)
        errors = sum(r.errors for r in runs)
        statuses: dict[int, int] = {}
        for r in runs:
            for status, count in r.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        return LoadStats(
            requests=len(ms),
            errors=errors,
            rps=(len(ms) - errors) / wall,
            p50_ms=float(np.percentile(ms, 50)),
            p99_ms=float(np.percentile(ms, 99)),
            wall_s=wall,
            latencies_ms=ms,
            first_error=next((r.first_error for r in runs if r.first_error), ""),
            statuses=statuses,
            reconnects=sum(r.reconnects for r in runs),
        )


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    """One POST of ``body`` as JSON, keep-alive, as raw bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, b"".join(parts)
            parts.append(chunk[:-2])
    raise RuntimeError(f"answer with neither Content-Length nor chunks: {head!r}")


async def _run(
    host: str, port: int, path: str, bodies: list[bytes], clients: int, duration: float
) -> LoadStats:
    requests = [build_request(host, port, path, body) for body in bodies]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    first_error: list[str] = []
    reconnects = 0
    stop_at = time.perf_counter() + duration

    async def client(k: int) -> None:
        nonlocal reconnects
        reader, writer = await asyncio.open_connection(host, port)
        i = k
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(requests[i % len(requests)])
                try:
                    status, body = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError) as err:
                    if isinstance(err, asyncio.IncompleteReadError) and err.partial:
                        raise  # cut off mid-answer: a real failure
                    # Closed before any byte of the answer (HAProxy closes idle keep-alive
                    # connections when Ray reloads its config): reconnect and send again,
                    # as HTTP clients do; the latency keeps counting from the first send.
                    writer.close()
                    reconnects += 1
                    reader, writer = await asyncio.open_connection(host, port)
                    writer.write(requests[i % len(requests)])
                    status, body = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    json.loads(body)  # a real answer, not just a status line
                elif not first_error:
                    first_error.append(f"{status}: {body[:300]!r}")
                i += clients
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.asarray(latencies) * 1e3
    ok = statuses.get(200, 0)
    return LoadStats(
        requests=len(ms),
        errors=len(ms) - ok,
        rps=ok / wall,
        p50_ms=float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        p99_ms=float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        wall_s=wall,
        latencies_ms=ms,
        first_error=first_error[0] if first_error else "",
        statuses=statuses,
        reconnects=reconnects,
    )


def run_load(
    host: str, port: int, path: str, bodies: list[bytes], clients: int, duration: float
) -> LoadStats:
    """``clients`` connections post ``bodies`` round-robin for ``duration`` s (uvloop if there)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with ray[serve]
        runner = asyncio.run
    return runner(_run(host, port, path, bodies, clients, duration))


def partial_requests(
    host: str, port: int, path: str, count: int, declared: int, sent: int
) -> list[socket.socket]:
    """``count`` connections that each send a POST's headers announcing ``declared`` body
    bytes and the first ``sent`` of them, then nothing (the caller closes them)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode("ascii")
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=10)
            socks.append(sock)
            sock.sendall(head + b'{"sets": [' + b" " * (sent - 10))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def answered(sock: socket.socket) -> bool:
    """Whether anything has come back on ``sock`` yet (without waiting)."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(10)
