"""The fault proxy itself (tests/faultproxy.py), against a loopback echo server and Redis:
the faults the other test_faults_* modules rely on do what they say."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import requests

from tests.faultproxy import FaultProxy

MIB = 1024 * 1024


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A TCP echo server (one thread per connection), on a free loopback port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()
    stop.set()
    listener.close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(echo, name="echo") as p:
        yield p


def roundtrip(proxy: FaultProxy, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the proxy may cut us off: that is the test
                sock.sendall(data)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = bytearray()
        while len(got) < len(data):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        sender.join(timeout)
        return bytes(got)


def test_passes_bytes_both_ways_unchanged(proxy: FaultProxy):
    data = hashlib.shake_256(b"x").digest(8 * MIB)
    assert roundtrip(proxy, data) == data
    assert proxy.bytes_up == proxy.bytes_down == len(data)


def test_reset_cuts_open_connections_with_rst(proxy: FaultProxy):
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    with sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"x")
            sock.recv(1)
    assert roundtrip(proxy, b"again") == b"again"  # one-shot: new connections pass


def test_refuse_resets_new_connections_until_healed(proxy: FaultProxy):
    proxy.refuse()
    # The reset shows at connect, at the first send or at the first receive.
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock,
    ):
        sock.sendall(b"x")
        sock.recv(1)
    assert proxy.refused == 1
    proxy.heal()
    assert roundtrip(proxy, b"back") == b"back"


def test_stall_holds_bytes_and_heal_releases_them(proxy: FaultProxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        proxy.stall()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4)
        assert proxy.bytes_up == 0
        sock.settimeout(5)
        proxy.heal()
        assert sock.recv(4) == b"held"


def test_stall_down_delivers_the_request_but_holds_the_answer(proxy: FaultProxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        proxy.stall("down")
        sock.sendall(b"request")
        proxy.wait(lambda p: p.bytes_up == 7 and p.held_down == 7, 5, "for the echo")
        assert proxy.bytes_down == 0
        proxy.heal()
        assert sock.recv(7) == b"request"


def test_cut_after_resets_each_connection_past_n_bytes(proxy: FaultProxy):
    proxy.cut_after(1 * MIB)
    data = bytes(4 * MIB)
    for _ in range(2):  # persistent: every connection is cut
        with pytest.raises(OSError):
            got = roundtrip(proxy, data)
            if len(got) < len(data):
                raise ConnectionResetError(f"short: {len(got)}")
    proxy.wait(lambda p: p.resets == 2, 5, "for two resets")
    proxy.heal()
    assert roundtrip(proxy, data) == data


def test_drop_reply_once_leaves_the_redis_command_done_and_the_client_in_the_dark(
    redis_url: str,
):
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    with FaultProxy((host, int(port)), name="redis") as proxy:
        client = redis.Redis.from_url(proxy.rewrite(redis_url), retry=None)
        direct = redis.Redis.from_url(redis_url)
        try:
            assert client.set("k", "1")
            proxy.drop_reply_once(b"marker")
            with pytest.raises(redis.ConnectionError):
                client.set("k", "marker")
            assert proxy.triggered.is_set()
            assert direct.get("k") == b"marker"  # Redis did it
            assert client.get("k") == b"marker"  # and the proxy passes again
        finally:
            client.close()
            direct.close()


def test_throttle_slows_the_forwarding_to_the_rate(proxy: FaultProxy):
    proxy.throttle(2 * MIB, "up")
    data = bytes(MIB)
    started = time.monotonic()
    assert roundtrip(proxy, data) == data
    took = time.monotonic() - started
    assert 0.4 < took < 1.5, took
    proxy.heal()
    started = time.monotonic()
    assert roundtrip(proxy, data) == data
    assert time.monotonic() - started < 0.4


def test_blackhole_once_swallows_the_request_and_its_connection(proxy: FaultProxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"before")
        assert sock.recv(6) == b"before"
        proxy.blackhole_once(b"secret")
        sock.sendall(b"the secret")
        proxy.wait(lambda p: p.triggered.is_set(), 5, "for the trigger")
        sock.sendall(b"after")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        assert proxy.bytes_up == 6
        proxy.heal()
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    assert roundtrip(proxy, b"others pass") == b"others pass"


@pytest.fixture
def http_target() -> Iterator[tuple[str, int]]:
    """A keep-alive HTTP/1.1 server: GET answers "ok", PUT the length of its body."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self.answer(b"ok")

        def do_PUT(self) -> None:
            length = int(self.headers["Content-Length"])
            self.answer(str(len(self.rfile.read(length))).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    server.server_close()


def test_http_faults_answer_s3_errors_for_the_chosen_requests(http_target: tuple[str, int]):
    """``http_fault``: the next N requests of a method whose target matches get S3's
    503 SlowDown (a PUT's body is read first), then requests pass again; "internal"
    answers 500 InternalError until healed; "reset" cuts the connection; a share of 0
    lets everything through. Requests that do not match are never touched."""
    with FaultProxy(http_target, name="http") as proxy, requests.Session() as session:
        base = f"http://{proxy.address}"
        assert session.get(f"{base}/a").status_code == 200
        proxy.http_fault("PUT", rb"partNumber=", count=2)
        body = b"x" * (3 * MIB)
        for _ in range(2):
            r = session.put(f"{base}/key?uploadId=u&partNumber=1", data=body, timeout=10)
            assert r.status_code == 503
            assert b"<Code>SlowDown</Code>" in r.content
        r = session.put(f"{base}/key?uploadId=u&partNumber=1", data=body, timeout=10)
        assert (r.status_code, r.text) == (200, str(len(body)))
        assert session.get(f"{base}/key?partNumber=1", timeout=10).status_code == 200

        proxy.http_fault("GET", rb"^/c", action="internal")
        for _ in range(2):
            r = session.get(f"{base}/c", timeout=10)
            assert (r.status_code, b"<Code>InternalError</Code>" in r.content) == (500, True)
        assert session.get(f"{base}/d", timeout=10).status_code == 200
        proxy.heal()
        assert session.get(f"{base}/c", timeout=10).status_code == 200

        proxy.http_fault("*", b"", action="reset", count=1)
        with pytest.raises(requests.ConnectionError):
            session.get(f"{base}/e", timeout=10)
        proxy.http_fault("GET", b"", share=0.0, count=3)
        assert [session.get(f"{base}/f", timeout=10).status_code for _ in range(3)] == [200] * 3
        assert proxy.http_faulted == {"slowdown": 2, "internal": 2, "reset": 1}
