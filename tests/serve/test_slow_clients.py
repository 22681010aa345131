"""Clients that send part of a request and go quiet cannot freeze the server (issue 15 item 1).

Raw sockets on 127.0.0.1 against the session's app (HAProxy ingress, as `setpipe serve`
runs by default), bounded in number and time: every socket has a timeout and is closed
at the end of its test. The session server gives clients TEST_REQUEST_TIMEOUT_S seconds
to send a request (`setpipe serve --request-timeout`, 30 s by default).

Before the fix, 66 such clients were enough: the replica's 64 request slots all waited
on bodies, and /predict, /health and /ready timed out behind them.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from serve_helpers import TEST_REQUEST_TIMEOUT_S, Server

VALID = {
    "sets": [
        {
            "features": {
                "part_pt": [10.0, 5.0, 2.0],
                "part_eta": [0.1, -0.2, 0.0],
                "part_phi": [0.3, 0.1, -0.1],
                "part_pid": [211, 22, -211],
            },
            "context": {"jet_pt": 400.0},
        }
    ]
}
SLOW_CLIENTS = 200
INGRESS_BUFFER = 16 * 1024  # HAProxy's tune.bufsize under Ray: a body part past it is forwarded


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def send_partial(port: int, declared: int, sent: int) -> socket.socket:
    """A POST /predict announcing ``declared`` body bytes that sends ``sent`` of them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"sets": [' + b" " * (sent - 10))
    return sock


@contextmanager
def partial_clients(port: int, count: int, declared: int, sent: int) -> Iterator[list]:
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(send_partial(port, declared, sent))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def has_answer(sock: socket.socket) -> bool:
    """Whether the server has sent anything on ``sock`` yet (without waiting)."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(10)


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """(status, body) of the answer on ``sock``, waiting at most ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def timed(call: Callable[[], httpx.Response]) -> tuple[int | str, float]:
    """(status or the error's name, seconds) of one request with a 5 s client timeout."""
    t0 = time.perf_counter()
    try:
        status: int | str = call().status_code
    except httpx.TimeoutException as err:
        status = type(err).__name__
    return status, time.perf_counter() - t0


def answers_within_a_second(server: Server) -> dict[str, tuple[int | str, float]]:
    """Status and seconds of /health, /predict and /ready (each must be 200 within 1 s)."""
    with httpx.Client(timeout=5) as http:
        return {
            "health": timed(lambda: http.get(f"{server.url}/health")),
            "predict": timed(lambda: http.post(f"{server.url}/predict", content=json.dumps(VALID))),
            "ready": timed(lambda: http.get(f"{server.url}/ready")),
        }


def test_slow_clients_do_not_block_predict_health_or_ready(server: Server) -> None:
    """200 clients send headers and the start of a body, then go quiet: a valid request to
    each endpoint still answers within a second, while all 200 are still waiting."""
    with partial_clients(port_of(server), SLOW_CLIENTS, declared=10_000, sent=200) as socks:
        time.sleep(0.5)  # every slow request has reached the server
        took = answers_within_a_second(server)
        waiting = sum(not has_answer(sock) for sock in socks)
    assert all(status == 200 and seconds < 1.0 for status, seconds in took.values()), took
    assert waiting == SLOW_CLIENTS  # the checks above ran while none had been cut off yet


def test_a_client_that_stops_sending_is_answered_408_after_the_request_timeout(
    server: Server,
) -> None:
    with partial_clients(port_of(server), 20, declared=10_000, sent=200) as socks:
        t0 = time.perf_counter()
        statuses = [read_answer(sock, TEST_REQUEST_TIMEOUT_S + 5)[0] for sock in socks]
        seconds = time.perf_counter() - t0
    assert statuses == [408] * 20
    assert TEST_REQUEST_TIMEOUT_S - 0.5 < seconds < TEST_REQUEST_TIMEOUT_S + 3


def test_a_body_dripping_past_the_ingress_buffer_is_cut_by_the_replica(server: Server) -> None:
    """More than HAProxy buffers (so it reaches the replica), then a few bytes every 0.5 s:
    never idle long enough for HAProxy, so the replica's body deadline answers 408."""
    sock = send_partial(port_of(server), declared=200_000, sent=4 * INGRESS_BUFFER)
    try:
        t0 = time.perf_counter()
        while not has_answer(sock) and time.perf_counter() - t0 < TEST_REQUEST_TIMEOUT_S + 5:
            sock.sendall(b" " * 100)
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        status, body = read_answer(sock, 5)
    finally:
        sock.close()
    assert status == 408, body
    detail = json.loads(body)["detail"]
    assert re.fullmatch(
        rf"body: not received within {TEST_REQUEST_TIMEOUT_S:g} s \(--request-timeout\); "
        r"\d+ of 200000 bytes arrived",
        detail,
    ), detail
    assert TEST_REQUEST_TIMEOUT_S - 0.5 < seconds < TEST_REQUEST_TIMEOUT_S + 3


def test_health_answers_while_every_replica_slot_waits_on_a_body(server: Server) -> None:
    """70 requests past HAProxy's buffer hold all 64 of the replica's request slots while
    they drip: /health still answers within a second; /predict answers once the body
    deadline has freed the slots."""
    port = port_of(server)
    with partial_clients(port, 70, declared=200_000, sent=4 * INGRESS_BUFFER) as socks:
        time.sleep(1.0)  # all forwarded to the replica
        for sock in socks:
            sock.sendall(b" ")  # not idle: only the replica's deadline can end them
        with httpx.Client(timeout=5) as http:
            health = timed(lambda: http.get(f"{server.url}/health"))
        with httpx.Client(timeout=TEST_REQUEST_TIMEOUT_S + 10) as http:
            t0 = time.perf_counter()
            predict = http.post(f"{server.url}/predict", content=json.dumps(VALID)).status_code
            predict_s = time.perf_counter() - t0
    assert health[0] == 200 and health[1] < 1.0, health
    assert predict == 200 and predict_s < TEST_REQUEST_TIMEOUT_S + 5, (predict, predict_s)


def test_the_running_haproxy_config_bounds_clients_and_answers_health(server: Server) -> None:
    """The config the session's HAProxy runs (its -f file): Ray's 3600 s client timeout is
    gone, requests are buffered within the request timeout, GET /health answered there."""
    import psutil

    configs = [
        argv[argv.index("-f") + 1]
        for proc in psutil.Process().children(recursive=True)
        if proc.name() == "haproxy" and "-f" in (argv := proc.cmdline())
    ]
    assert configs, "no HAProxy under this test session's Ray"
    with open(configs[0]) as file:
        text = file.read()
    ms = f"{round(TEST_REQUEST_TIMEOUT_S * 1000)}ms"
    defaults = text[text.index("\ndefaults\n") : text.index("\nfrontend ")]
    for line in (
        f"timeout client {ms}",
        f"timeout http-request {ms}",
        "option http-buffer-request",
    ):
        assert f"\n    {line}\n" in defaults, line
    assert "3600s" not in text
    assert re.search(
        r"\n    http-request return status 200 content-type application/json string "
        r'"\{\\"status\\":\\"ok\\"\}" if METH_GET \{ path /health \} backend_\S+_server_up\n',
        text,
    )


def test_request_timeout_is_a_serve_option() -> None:
    from setpipe.cli import build_parser
    from setpipe.data.request import Limits

    def parse(*extra: str) -> float | None:
        return build_parser().parse_args(["serve", "models:/m@champion", *extra]).request_timeout

    assert parse("--request-timeout", "2.5") == 2.5
    assert parse() is None and Limits().request_timeout_s == 30.0  # None: the default
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(SystemExit):
            parse("--request-timeout", bad)
