"""`wasmkv dev`'s HTTP endpoint against hostile web pages and clients.

A page the developer opens can make the browser POST to 127.0.0.1 (and, with
DNS rebinding, read the answer); a client can send any headers. Requests are
written byte by byte here, as an attacker would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from wat import versioned

from wasmkv import host, kv


@pytest.fixture
def endpoint() -> Iterator[tuple[host.Host, int]]:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        wasm_host.load(versioned(1), name="p", tenant="acme")
        server = host.serve_calls(wasm_host, "127.0.0.1:0", max_body_bytes=1024, workers=2)
        try:
            yield wasm_host, int(server.server_address[1])
        finally:
            server.shutdown()
            server.server_close()


def raw_request(port: int, request: bytes, *, timeout_s: float = 10) -> bytes:
    """Send `request` as is; the whole answer (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def post(port: int, *headers: str, body: bytes = b"", path: str = "/call/p/call") -> bytes:
    head = [f"POST {path} HTTP/1.1", *headers, f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return raw_request(port, "\r\n".join(head).encode() + body)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_request_like_curls_is_served(endpoint: tuple[host.Host, int]) -> None:
    _, port = endpoint
    answer = post(port, f"Host: 127.0.0.1:{port}", "Content-Type: application/x-www-form-urlencoded")
    assert status(answer) == 200
    assert answer.split(b"\r\n\r\n", 1)[1][:3] == b"v01"
    assert status(post(port, f"Host: localhost:{port}", f"Origin: http://localhost:{port}")) == 200


@pytest.mark.parametrize(
    "host_header",
    ["attacker.example", "attacker.example:{port}", "127.0.0.1", "127.0.0.1:1", "127.0.0.1.evil.example:{port}", ""],
)
def test_a_foreign_host_header_is_refused_before_any_call(endpoint: tuple[host.Host, int], host_header: str) -> None:
    wasm_host, port = endpoint
    answer = post(port, f"Host: {host_header.format(port=port)}")
    assert status(answer) == 403
    assert wasm_host.store.tenant("acme").bucket().get("hits") is None  # the plugin never ran


def test_a_request_without_a_host_header_is_refused(endpoint: tuple[host.Host, int]) -> None:
    _, port = endpoint
    assert status(raw_request(port, b"POST /call/p/call HTTP/1.0\r\nContent-Length: 0\r\n\r\n")) == 403


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "http://evil.example:{port}", "https://127.0.0.1:{port}", "http://127.0.0.1:1"],
)
def test_a_cross_origin_request_is_refused_even_as_a_simple_text_post(
    endpoint: tuple[host.Host, int], origin: str
) -> None:
    wasm_host, port = endpoint
    answer = post(
        port, f"Host: 127.0.0.1:{port}", f"Origin: {origin.format(port=port)}", "Content-Type: text/plain", body=b"x"
    )
    assert status(answer) == 403
    assert wasm_host.store.tenant("acme").bucket().get("hits") is None


def test_a_body_over_the_limit_gets_413_without_being_read(endpoint: tuple[host.Host, int]) -> None:
    _, port = endpoint
    # Announce 400 MiB and send none of it: the answer must come at once, not after reading it.
    started = time.monotonic()
    answer = raw_request(
        port, f"POST /call/p/call HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {400 << 20}\r\n\r\n".encode()
    )
    assert status(answer) == 413
    assert b"max_body_bytes (1024)" in answer
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "headers",
    [
        "Content-Length: abc",
        "Content-Length: -1",
        "Content-Length: 1e3",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 99999999999999999999999",
    ],
)
def test_a_malformed_content_length_is_400(endpoint: tuple[host.Host, int], headers: str) -> None:
    _, port = endpoint
    request = f"POST /call/p/call HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n\r\n"
    assert status(raw_request(port, request.encode())) == 400


def test_a_chunked_body_is_refused_with_411(endpoint: tuple[host.Host, int]) -> None:
    _, port = endpoint
    request = f"POST /call/p/call HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert status(raw_request(port, request.encode())) == 411


def test_a_body_shorter_than_announced_is_400_after_the_socket_timeout_at_most(
    endpoint: tuple[host.Host, int],
) -> None:
    _, port = endpoint
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"POST /call/p/call HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 10\r\n\r\nabc".encode())
        conn.shutdown(socket.SHUT_WR)
        assert status(conn.recv(1024)) == 400


def test_garbage_instead_of_a_request_is_400(endpoint: tuple[host.Host, int]) -> None:
    _, port = endpoint
    # Not even a request line: the answer is an error page without a status line (HTTP/0.9 style).
    answer = raw_request(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert b"Error code: 400" in answer


def test_connections_past_the_worker_pool_get_503_at_once(endpoint: tuple[host.Host, int]) -> None:
    wasm_host, port = endpoint
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # hold both workers
    try:
        time.sleep(0.2)  # let the server hand both to its workers
        started = time.monotonic()
        assert status(post(port, f"Host: 127.0.0.1:{port}")) == 503
        assert time.monotonic() - started < 5
    finally:
        for conn in idle:
            conn.close()
    # Once they leave, calls are served again.
    deadline = time.monotonic() + 10
    while status(post(port, f"Host: 127.0.0.1:{port}")) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wasm_host.store.tenant("acme").bucket().get("hits") == b"1"


def test_many_concurrent_clients_never_take_more_than_the_pool(endpoint: tuple[host.Host, int]) -> None:
    _, port = endpoint
    before = threading.active_count()
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= 2 + 1  # the pool's workers, and no more
    finally:
        for conn in conns:
            conn.close()


def test_listening_beyond_loopback_needs_allow_remote() -> None:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        with pytest.raises(host.HostError, match="use a loopback address, or --allow-remote"):
            host.serve_calls(wasm_host, "0.0.0.0:0")
        server = host.serve_calls(wasm_host, "0.0.0.0:0", allow_remote=True, allowed_hosts=["dev.lan"])
        port = int(server.server_address[1])
        try:
            assert status(post(port, f"Host: dev.lan:{port}", path="/nope")) == 404  # allowed host, no such route
            assert status(post(port, f"Host: 127.0.0.1:{port}")) == 403  # not loopback-bound: loopback names are not
        finally:
            server.shutdown()
            server.server_close()


def test_an_address_that_cannot_be_bound_is_one_clear_error() -> None:
    with (
        kv.KvStore.memory() as store,
        host.Host(store) as wasm_host,
        pytest.raises(host.HostError, match=r"^cannot listen on 127\.0\.0\.1:99999: "),
    ):
        host.serve_calls(wasm_host, "127.0.0.1:99999")


def test_clients_that_trickle_their_request_lose_their_worker_after_the_request_timeout() -> None:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        wasm_host.load(versioned(1), name="p", tenant="acme")
        server = host.serve_calls(wasm_host, "127.0.0.1:0", workers=2, request_timeout_s=1.0)
        port = int(server.server_address[1])
        stop = threading.Event()
        trickled: list[socket.socket] = []

        def trickle() -> None:
            conn = socket.create_connection(("127.0.0.1", port))
            trickled.append(conn)
            try:
                for byte in b"POST /call/p/call HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000:
                    if stop.wait(0.2):
                        return
                    conn.send(bytes([byte]))
            except OSError:
                return  # the server closed it: what this test waits for

        slow = [threading.Thread(target=trickle) for _ in range(2)]
        try:
            for thread in slow:
                thread.start()
            time.sleep(0.3)
            assert status(post(port, f"Host: 127.0.0.1:{port}")) == 503  # both workers held
            deadline = time.monotonic() + 10
            answer = 503
            while answer == 503 and time.monotonic() < deadline:
                time.sleep(0.1)
                answer = status(post(port, f"Host: 127.0.0.1:{port}"))
            assert answer == 200  # freed by the watchdog, though the trickling never stopped
        finally:
            stop.set()
            for thread in slow:
                thread.join()
            for conn in trickled:
                conn.close()
            server.shutdown()
            server.server_close()
