"""A random router for tests: 127.0.0.1:<free port> -> one of several web nodes.

Heroku's router (and many load balancers) picks a backend at random for every new
connection and keeps a kept-alive connection on the backend it chose. rindle must work
behind that, so the multi-node tests put this in front of their nodes::

    with Router([node.port for node in nodes], seed=8) as router:
        requests.post(router.files_url, ...)   # lands on a random node
        router.cut_once(b"PATCH /files/<id> ", 3 << 20)  # that PATCH dies 3 MiB in
        router.routed                          # Counter: backend port -> connections

It is a ``FaultProxy`` (every fault of tests/faultproxy.py works here too, on all
backends at once) whose connections each go to a backend chosen by a seeded RNG, so a
failing run can be replayed with the same choices (given the same order of connections).
A client that keeps its connection alive stays on one node: only an interruption (a cut,
a restart of that node) makes it reconnect, and then it lands anywhere.

With ``failover`` (the default), a connection whose backend refuses it (a node that is
restarting) goes to another backend, as a load balancer retries a failed connect; the
client notices nothing. Without it, the client's connection is reset. A node that has
stopped accepting but whose socket still listens (gunicorn between SIGTERM and the
moment its processes close it) does not refuse: the kernel completes the connect, and
the connection is reset when the node exits. The client sees that, as it would behind a
real load balancer.

Heroku's two timeouts are on by default, with Heroku's values (pass ``None`` to turn one
off, or a few seconds to meet it quickly in a test)::

    Router(ports, seed=1, response_timeout=3, idle_timeout=3)

- ``response_timeout`` (30 s, Heroku's H12 "Request timeout"): once the router has sent
  the whole request (head and body, by ``Content-Length`` or chunked framing) to the
  backend, the backend's first response byte must arrive within this many seconds, else
  the router answers the client ``503`` (Heroku's error page, ``Connection: close``) and
  closes both sides: the backend sees its connection reset when it answers at last.
  Counted in ``timeouts``.
- ``idle_timeout`` (55 s, Heroku's rolling window, H28 for a client that stops sending mid
  request, H15 for a backend that stops mid response): a connection on which no byte went
  either way for this long is reset on both sides, except while a request waits for its
  first response byte (``response_timeout`` governs then). An idle kept-alive connection
  between requests is cut the same way (Heroku's own keep-alive limit is 90 s). Counted
  in ``idle_cuts``.

The router reads the request framing only to know where each request ends; bytes that do
not look like HTTP/1.1 (the echo servers of tests/e2e/test_router.py) are passed on and
timed by ``idle_timeout`` alone.
"""

from __future__ import annotations

import contextlib
import errno
import random
import re
import socket
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.faultproxy import LOOPBACK, FaultProxy, _Conn, _rst

Backend = tuple[str, int]
_CONNECTING = (0, errno.EINPROGRESS, errno.EWOULDBLOCK)
HEROKU_RESPONSE_TIMEOUT = 30.0  # H12
HEROKU_IDLE_TIMEOUT = 55.0  # H15, H28
_MAX_HEAD = 64 * 1024  # a longer "head" is not HTTP: stop framing that connection
_REQUEST_LINE = re.compile(rb"[A-Z]+ \S+ HTTP/1\.[01]\r\n")
_INTERIM = re.compile(rb"HTTP/1\.[01] 1\d\d ")  # 100 Continue is not the answer
_H12_BODY = (
    b"<!DOCTYPE html><html><head><title>Application Error</title></head><body>"
    b"An error occurred in the application and your page could not be served.</body></html>"
)
H12_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Type: text/html; charset=utf-8\r\nCache-Control: no-cache, no-store\r\n"
    b"Content-Length: " + str(len(_H12_BODY)).encode() + b"\r\n\r\n" + _H12_BODY
)


class _Framing:
    """Where each HTTP/1.1 request a client sends starts and ends, as positions in the
    client's byte stream (what the router needs to start Heroku's response timer).
    Anything that does not parse makes the connection ``opaque``: no more framing."""

    def __init__(self) -> None:
        self.seen = 0  # bytes of the client's stream fed so far
        self.state = "start"  # start, head, body, size, chunk, trailer, opaque
        self.buf = bytearray()  # the head, or the current chunk-size or trailer line
        self.left = 0  # body or chunk bytes still to come (chunk: with its CRLF)
        self.starts: deque[int] = deque()  # first byte of each request, not yet forwarded
        self.ends: deque[int] = deque()  # one past its last byte, not yet forwarded

    def feed(self, data: bytes) -> None:
        i = 0
        while i < len(data) and self.state != "opaque":
            if self.state == "start":
                if data[i : i + 1] in (b"\r", b"\n"):  # stray CRLF between requests
                    i += 1
                    continue
                self.starts.append(self.seen + i)
                self.state, self.buf = "head", bytearray()
            if self.state == "head":
                searched = max(0, len(self.buf) - 3)
                self.buf += data[i:]
                found = self.buf.find(b"\r\n\r\n", searched)
                if found < 0:
                    if len(self.buf) > _MAX_HEAD:
                        self.state = "opaque"
                    i = len(data)
                    break
                used = found + 4 - (len(self.buf) - (len(data) - i))
                i += used
                self._head(bytes(self.buf[: found + 4]), self.seen + i)
            elif self.state in ("body", "chunk"):
                take = min(self.left, len(data) - i)
                i += take
                self.left -= take
                if self.left == 0:
                    if self.state == "body":
                        self._end(self.seen + i)
                    else:
                        self.state, self.buf = "size", bytearray()
            else:  # size, trailer: one line at a time
                newline = data.find(b"\n", i)
                stop = len(data) if newline < 0 else newline + 1
                self.buf += data[i:stop]
                i = stop
                if newline >= 0:
                    self._line(bytes(self.buf).strip(), self.seen + i)
                    self.buf = bytearray()
                elif len(self.buf) > _MAX_HEAD:
                    self.state = "opaque"
        self.seen += len(data)

    def _head(self, head: bytes, end: int) -> None:
        if not _REQUEST_LINE.match(head):
            self.state = "opaque"
            return
        length, chunked = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            self.state, self.buf = "size", bytearray()
        elif length:
            self.state, self.left = "body", length
        else:
            self._end(end)

    def _line(self, line: bytes, end: int) -> None:
        if self.state == "trailer":
            if not line:  # the empty line after the trailers ends the request
                self._end(end)
            return
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            self.state = "opaque"
            return
        if size == 0:
            self.state = "trailer"
        else:
            self.state, self.left = "chunk", size + 2  # the chunk and its CRLF

    def _end(self, end: int) -> None:
        self.ends.append(end)
        self.state = "start"


@dataclass(eq=False)
class _Routed(_Conn):
    backend: Backend = ("", 0)  # where this connection goes (or is being connected)
    untried: list[Backend] = field(default_factory=list)  # failover candidates, in order
    framing: _Framing = field(default_factory=_Framing)
    forwarded: int = 0  # bytes of the client's stream sent to the backend
    answered: bool = False  # a final response byte came since the request went out
    awaiting: float | None = None  # monotonic deadline of the first response byte (H12)
    active: float = field(default_factory=time.monotonic)  # last byte either way


class Router(FaultProxy):
    """A TCP proxy that sends each new connection to a random backend (see the module)."""

    def __init__(
        self,
        backends: Sequence[int | Backend],
        *,
        seed: int,
        name: str = "router",
        failover: bool = True,
        response_timeout: float | None = HEROKU_RESPONSE_TIMEOUT,
        idle_timeout: float | None = HEROKU_IDLE_TIMEOUT,
    ) -> None:
        nodes = [(LOOPBACK, b) if isinstance(b, int) else (b[0], b[1]) for b in backends]
        if not nodes:
            raise ValueError("a router needs at least one backend")
        super().__init__(nodes[0], name=name)
        self.backends = nodes
        self.failover = failover
        self.rng = random.Random(seed)
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        # Counters (written by the loop thread).
        self.routed: Counter[int] = Counter()  # backend port -> connections established
        self.failovers = 0  # connects refused by a backend and sent to another
        self.timeouts = 0  # requests answered 503 by the router (H12)
        self.idle_cuts = 0  # connections reset for silence (H15, H28)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def files_url(self) -> str:
        return f"{self.url}/files/"

    def open_to(self, port: int) -> int:
        """How many connections are open to the backend on ``port`` right now."""
        return int(
            self._call(
                lambda: sum(
                    1 for c in self._conns if isinstance(c, _Routed) and c.backend[1] == port
                )
            )
        )

    def __repr__(self) -> str:
        ports = ",".join(str(port) for _, port in self.backends)
        return f"<Router {self.name} {self.address} -> [{ports}] routed={dict(self.routed)}>"

    # ---------------------------------------------------------------- the loop

    def _route(self, client: socket.socket) -> _Conn | None:
        # The first is the random choice; the others are the failover order.
        order = self.rng.sample(self.backends, len(self.backends))
        untried = order if self.failover else order[:1]
        opened = self._open_next(untried)
        if opened is None:
            _rst(client)
            return None
        upstream, backend, err = opened
        conn = _Routed(client, upstream, backend=backend, untried=untried)
        if err == 0:
            self._connected(conn)
        return conn

    def _open_next(self, untried: list[Backend]) -> tuple[socket.socket, Backend, int] | None:
        """Start a connect to the next backend of ``untried`` that does not refuse at
        once (popping the ones tried): (socket, backend, 0 or EINPROGRESS); None when
        every one refused."""
        while untried:
            backend = untried.pop(0)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            err = upstream.connect_ex(backend)
            if err in _CONNECTING:
                return upstream, backend, err
            upstream.close()
            if untried:
                self.failovers += 1
        return None

    def _connected(self, conn: _Routed) -> None:
        conn.connected = True
        conn.active = time.monotonic()
        self.routed[conn.backend[1]] += 1

    # ------------------------------------------------- Heroku's timeouts

    def _update_interest(self) -> None:
        # Called by the loop at least every 50 ms: the timers' resolution.
        self._enforce_timeouts()
        super()._update_interest()

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns):
            if conn.closed or not isinstance(conn, _Routed) or not conn.connected:
                continue
            if conn.awaiting is not None:
                if now >= conn.awaiting:
                    self._answer_503(conn)
            elif self.idle_timeout is not None and now - conn.active >= self.idle_timeout:
                self.idle_cuts += 1  # before the RST: whoever sees it sees the count
                self._kill(conn, count=False)

    def _answer_503(self, conn: _Routed) -> None:
        """H12: the client gets the router's 503 and a clean close; the backend a reset
        (it meets it when it answers at last)."""
        self.timeouts += 1
        self._unregister(conn)
        self._conns.discard(conn)
        conn.closed = True
        self.held_up -= len(conn.to_up)
        self.held_down -= len(conn.to_down)
        conn.to_up.clear()
        conn.to_down.clear()
        if conn.cut is not None:
            conn.cut.done.set()
        _rst(conn.upstream)
        client = conn.client
        with contextlib.suppress(OSError):
            client.setblocking(True)
            client.settimeout(1.0)  # a few hundred bytes into an idle socket: no wait
            client.sendall(H12_RESPONSE)
            client.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            client.close()

    def _read(self, conn: _Conn, side: str) -> None:
        if not isinstance(conn, _Routed):
            super()._read(conn, side)
            return
        buf = conn.to_up if side == "client" else conn.to_down
        before = len(buf)
        super()._read(conn, side)
        if conn.closed:
            return
        new = bytes(buf[before:])
        if side == "client":
            if new:
                conn.active = time.monotonic()
                conn.framing.feed(new)
            return
        if new:
            conn.active = time.monotonic()
            if not _INTERIM.match(new):
                conn.answered = True
                conn.awaiting = None
        if conn.upstream_eof:  # closed without (more of) an answer: nothing to time
            conn.awaiting = None

    def _write(self, conn: _Conn, side: str) -> None:
        if not isinstance(conn, _Routed):
            super()._write(conn, side)
            return
        buf = conn.to_up if side == "upstream" else conn.to_down
        before = len(buf)
        super()._write(conn, side)
        if conn.closed or len(buf) == before:
            return
        conn.active = time.monotonic()  # a client reading a long answer slowly is not idle
        if side == "upstream":
            conn.forwarded += before - len(buf)
            self._timed(conn)

    def _timed(self, conn: _Routed) -> None:
        """Start the response timer of each request that is now wholly with the backend."""
        framing = conn.framing
        while framing.starts and framing.starts[0] < conn.forwarded:
            framing.starts.popleft()
            conn.answered = False  # a new request went out: its answer is still to come
        while framing.ends and framing.ends[0] <= conn.forwarded:
            framing.ends.popleft()
            # The whole request is with the backend now; an answer that came while it
            # went (an early 4xx) or a backend that closed needs no timer.
            if self.response_timeout is not None and not conn.answered and not conn.upstream_eof:
                conn.awaiting = time.monotonic() + self.response_timeout

    def _serve(self, conn: _Conn, side: str, events: int) -> None:
        if side == "upstream" and not conn.connected:
            assert isinstance(conn, _Routed)
            err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err:
                self._connected(conn)
                return
            # The backend refused (it is restarting): the next one, if any.
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.upstream)
            conn.upstream.close()
            if conn.untried:
                self.failovers += 1
            opened = self._open_next(conn.untried)
            if opened is None:
                self._kill(conn)
                return
            conn.upstream, conn.backend, err = opened
            if err == 0:
                self._connected(conn)
            return
        super()._serve(conn, side, events)
