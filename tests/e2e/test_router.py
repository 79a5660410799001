"""The random router itself (tests/router.py), against loopback servers that name
themselves: what tests/e2e/test_any_node.py relies on holds (a random node per new
connection, replayable from the seed; a kept-alive connection stays on its node; a node
that refuses is skipped; ``cut_once`` cuts only the request it names)."""

from __future__ import annotations

import contextlib
import socket
import threading
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
