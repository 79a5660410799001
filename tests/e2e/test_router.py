"""The random router itself (tests/router.py), against loopback servers that name
themselves: what tests/e2e/test_any_node.py relies on holds (a random node per new
connection, replayable from the seed; a kept-alive connection stays on its node; a node
that refuses is skipped; ``cut_once`` cuts only the request it names)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.faultproxy import LOOPBACK
from tests.router import Router

MIB = 1024 * 1024


class Named:
    """A TCP server that greets each connection with its name and a newline, then echoes."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(self.name + b"\n")
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        """Stop listening: connects to the port are refused from now on. (shutdown first:
        close alone leaves a socket that a thread blocks in accept() on listening.)"""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture
def servers() -> Iterator[list[Named]]:
    named = [Named(n) for n in ("a", "b", "c")]
    yield named
    for server in named:
        server.close()


def greeting(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed before the greeting")
        data += chunk
    return data.decode().strip()


def landed(router: Router, count: int) -> list[str]:
    """Which server each of ``count`` new connections reached."""
    names = []
    for _ in range(count):
        with socket.create_connection((LOOPBACK, router.port), timeout=5) as sock:
            names.append(greeting(sock))
    return names


def test_each_new_connection_goes_to_a_random_backend_replayable_by_seed(
    servers: list[Named],
):
    ports = [s.port for s in servers]
    with Router(ports, seed=1) as first:
        one = landed(first, 60)
    with Router(ports, seed=1) as again:
        two = landed(again, 60)
    with Router(ports, seed=2) as other:
        three = landed(other, 60)
    assert set(Counter(one)) == {"a", "b", "c"}, Counter(one)
    assert min(Counter(one).values()) >= 10, Counter(one)  # 60 connections, 3 backends
    assert one == two, "the same seed must route the same way"
    assert one != three
    assert sum(first.routed.values()) == 60 and first.routed[servers[0].port] == one.count("a")


def test_a_kept_alive_connection_stays_on_its_backend(servers: list[Named]):
    with (
        Router([s.port for s in servers], seed=3) as router,
        socket.create_connection((LOOPBACK, router.port), timeout=5) as sock,
    ):
        name = greeting(sock)
        for n in range(50):
            sock.sendall(b"x" * n + b"\n")
            got = b""
            while len(got) < n + 1:
                got += sock.recv(65536)
            assert got == b"x" * n + b"\n"
        assert sum(router.routed.values()) == 1
        assert router.routed[{s.name.decode(): s.port for s in servers}[name]] == 1


def test_a_backend_that_refuses_is_skipped_with_failover(servers: list[Named]):
    down = servers[1]
    down.close()  # nothing listens on its port any more
    ports = [s.port for s in servers]
    with Router(ports, seed=4) as router:
        names = landed(router, 30)
    assert set(names) == {"a", "c"}
    assert router.failovers > 0 and router.routed[down.port] == 0

    with Router(ports, seed=4, failover=False) as strict:
        failed = 0
        for _ in range(30):
            try:
                landed(strict, 1)
            except OSError:  # reset by the router, or closed before the greeting
                failed += 1
    assert 0 < failed < 30


def test_cut_once_cuts_only_the_named_request_after_the_given_bytes(servers: list[Named]):
    with Router([s.port for s in servers], seed=5) as router:
        other = socket.create_connection((LOOPBACK, router.port), timeout=5)
        chosen = socket.create_connection((LOOPBACK, router.port), timeout=5)
        greeting(other), greeting(chosen)
        cut = router.cut_once(b"PATCH /files/abc ", MIB)

        # The other connection carries another request and more than a MiB: untouched.
        other.sendall(b"PATCH /files/xyz HTTP/1.1\r\n" + b"o" * (2 * MIB))
        echoed = 0
        while echoed < 2 * MIB:
            echoed += len(other.recv(1 << 20))
        assert not cut.is_set()

        # The chosen one is reset once 1 MiB from the start of its request line went up.
        request = b"PATCH /files/abc HTTP/1.1\r\n"
        chosen.sendall(request + b"c" * (MIB - len(request) - 1))
        with pytest.raises(OSError):
            chosen.sendall(b"c" * (2 * MIB))
            while chosen.recv(1 << 20):
                pass
        assert cut.wait(5)
        echoed_before_cut = router.bytes_up - 2 * MIB - len(b"PATCH /files/xyz HTTP/1.1\r\n")
        assert echoed_before_cut == MIB
        other.close()
        chosen.close()


def test_cut_once_waits_for_the_next_connection_if_the_first_ends_cleanly(
    servers: list[Named],
):
    with Router([s.port for s in servers], seed=6) as router:
        cut = router.cut_once(b"PATCH /files/abc ", MIB)
        with socket.create_connection((LOOPBACK, router.port), timeout=5) as short:
            greeting(short)
            short.sendall(b"PATCH /files/abc HTTP/1.1\r\n" + b"s" * 1000)
            short.shutdown(socket.SHUT_WR)
            while short.recv(65536):
                pass  # echoed back, then closed cleanly: too short to be cut
        assert not cut.is_set()
        with socket.create_connection((LOOPBACK, router.port), timeout=5) as second:
            greeting(second)
            with pytest.raises(OSError):
                second.sendall(b"PATCH /files/abc HTTP/1.1\r\n" + b"t" * (3 * MIB))
                while second.recv(1 << 20):
                    pass
        assert cut.wait(5)


# =========================================================================== Heroku's timeouts


class Silent:
    """An HTTP backend that reads whatever comes and answers only when told (``answer``),
    recording how each of its connections ended."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.received = 0
        self.ends: list[str] = []  # "eof" or "reset", one per connection that ended
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                self.received += len(data)
            self.ends.append("eof")
        except ConnectionResetError:
            self.ends.append("reset")
        except OSError:
            self.ends.append("closed")

    def answer(self, response: bytes = b"HTTP/1.1 204 No Content\r\n\r\n") -> None:
        self.conns[-1].sendall(response)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def patch_head(length: int | None) -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"PATCH /files/abc HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n".encode()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_unanswered_request_gets_503_response_timeout_after_its_last_byte(
    silent: Silent, chunked: bool
):
    """The timer starts when the router has sent the whole request (not its first byte):
    a body that trickles for longer than the timeout is not cut; then, with no answer,
    the client gets Heroku's 503 and a clean close, the backend a reset."""
    with (
        Router([silent.port], seed=7, response_timeout=1.0, idle_timeout=5.0) as router,
        socket.create_connection((LOOPBACK, router.port), timeout=10) as sock,
    ):
        sock.sendall(patch_head(None if chunked else 6 * 1000))
        for _ in range(6):  # 6 x 1000 bytes over 1.8 s: longer than the timeout
            time.sleep(0.3)
            piece = b"b" * 1000
            sock.sendall(b"3e8\r\n" + piece + b"\r\n" if chunked else piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        sent = time.monotonic()
        answer = read_all(sock)
        waited = time.monotonic() - sent
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer[:100]
        assert b"Connection: close" in answer
        assert 0.9 <= waited <= 3.0, waited
        assert router.timeouts == 1 and router.idle_cuts == 0
        deadline = time.monotonic() + 5
        while not silent.ends and time.monotonic() < deadline:
            time.sleep(0.01)
        assert silent.ends == ["reset"]


def test_an_answer_in_time_passes_and_the_next_request_is_timed_afresh(silent: Silent):
    with (
        Router([silent.port], seed=7, response_timeout=1.0, idle_timeout=5.0) as router,
        socket.create_connection((LOOPBACK, router.port), timeout=10) as sock,
    ):
        sock.sendall(patch_head(10) + b"0123456789")
        time.sleep(0.6)
        silent.answer(b"HTTP/1.1 100 Continue\r\n\r\n")  # interim: not the answer
        time.sleep(0.2)
        silent.answer()
        got = b""
        while not got.endswith(b"HTTP/1.1 204 No Content\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, f"closed before the answer: {got!r}"
            got += chunk
        assert got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(1.5)  # longer than the response timeout: nothing awaits an answer
        sock.sendall(b"HEAD /files/abc HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 503 ")
        assert router.timeouts == 1


def test_a_client_silent_mid_body_is_cut_after_the_idle_timeout(silent: Silent):
    """H28: the client stops sending mid-body: both sides are reset idle_timeout after
    its last byte; a client that keeps trickling is never cut."""
    with Router([silent.port], seed=7, response_timeout=1.0, idle_timeout=1.0) as router:
        trickling = socket.create_connection((LOOPBACK, router.port), timeout=10)
        silent_client = socket.create_connection((LOOPBACK, router.port), timeout=10)
        trickling.sendall(patch_head(1 << 20))
        silent_client.sendall(patch_head(1 << 20) + b"s" * 1000)
        stopped = time.monotonic()
        for _ in range(8):  # 2 s of a byte every quarter second
            trickling.sendall(b"t")
            time.sleep(0.25)
        with pytest.raises(OSError):
            silent_client.sendall(b"s")
            read_all(silent_client)
        assert time.monotonic() - stopped >= 1.0
        assert router.idle_cuts == 1 and router.timeouts == 0
        assert router.open_connections == 1  # the trickling one
        assert "reset" in silent.ends
        trickling.close()
        silent_client.close()


def test_timeouts_off_pass_a_slow_answer(silent: Silent):
    with (
        Router([silent.port], seed=7, response_timeout=None, idle_timeout=None) as router,
        socket.create_connection((LOOPBACK, router.port), timeout=10) as sock,
    ):
        sock.sendall(patch_head(3) + b"abc")
        time.sleep(1.5)
        silent.answer()
        assert sock.recv(65536) == b"HTTP/1.1 204 No Content\r\n\r\n"
        assert router.timeouts == router.idle_cuts == 0
