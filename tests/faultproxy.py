"""A small fault-injecting TCP proxy for tests: 127.0.0.1:<free port> -> a target.

Put it between a process and a service it talks to (the app and S3, the app and Redis),
then switch faults at runtime, from any thread::

    with FaultProxy(("127.0.0.1", 6379)) as proxy:
        url = proxy.rewrite("redis://127.0.0.1:6379/0")  # -> redis://127.0.0.1:<port>/0
        proxy.reset()              # cut every open connection now (TCP RST both ways)
        proxy.refuse()             # new connections: accepted, then reset at once
        proxy.stall()              # forward nothing (connections stay open), "up"/"down"/both
        proxy.cut_after(1 << 20)   # reset each connection once it carried 1 MiB more
        proxy.throttle(256 * 1024) # a slow link: 256 KiB/s, "up"/"down"/both
        proxy.drop_reply_once(b"EXEC")  # forward a request, swallow its reply, reset
        proxy.blackhole_once(b"RPUSH")  # that request (and its connection) vanish
        proxy.cut_once(b"PATCH /files/abc", 2 << 20)  # reset that request 2 MiB in
        proxy.http_fault("PUT", rb"partNumber=", count=3)  # S3's 503 SlowDown, 3 times
        proxy.http_fault("GET", rb"[.]tails/", share=0.5, action="reset")
        proxy.heal()               # back to passing everything (stalled bytes flow again)

"up" is client -> target, "down" is target -> client. Every switch is applied by the
proxy's one event-loop thread before the method returns, so a test knows the fault is
in place when the call is over (``reset()`` returns once the connections are cut).
Counters (``bytes_up``, ``bytes_down``, ``accepted``, ``resets``, ``held_up``...) let a
test wait for traffic instead of sleeping.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import random
import re
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"
READ_SIZE = 256 * 1024
MAX_BUFFER = 1024 * 1024  # stop reading a side while this much waits for the other
UP, DOWN = "up", "down"
# The start of an HTTP/1.1 request, as a client sends it at the start of a read.
REQUEST_LINE = re.compile(rb"^(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/1\.[01]\r\n")
# What an http_fault answers instead of forwarding: S3's own error documents.
HTTP_ANSWERS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}


def _rst(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer sees ECONNRESET, not a clean EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket
    connected: bool = False
    to_up: bytearray = field(default_factory=bytearray)  # from the client, for the target
    to_down: bytearray = field(default_factory=bytearray)  # from the target, for the client
    client_eof: bool = False  # the client finished sending (half-close forwarded later)
    upstream_eof: bool = False
    up_shut: bool = False  # we shut the upstream's write side (client EOF forwarded)
    down_shut: bool = False
    carried_up: int = 0  # bytes forwarded, counted since the last cut_after()
    carried_down: int = 0
    doomed: bool = False  # reset both sides once the doomed direction is flushed
    swallow_reply: bool = False  # drop_reply_once: reset on the first reply byte
    blackholed: bool = False  # blackhole_once: nothing goes through any more
    closed: bool = False
    cut: _Cut | None = None  # cut_once: the cut this connection carries
    cut_at: int | None = None  # reset once carried_up (+ held) reaches this
    http: _Answering | None = None  # http_fault: this request is answered by the proxy


@dataclass(eq=False)
class _HttpFault:
    """One ``http_fault``: which requests (method, a pattern searched in the request
    target), how many or what share of them, and what they get instead of the target."""

    method: bytes
    pattern: re.Pattern[bytes]
    action: str  # "slowdown", "internal" (answered) or "reset" (connection cut)
    count: int | None  # the next N matching requests; None: no limit
    share: float
    rng: random.Random


@dataclass(eq=False)
class _Answering:
    """A request the proxy answers itself: its head as received so far, then the body
    bytes still to swallow before the connection is closed."""

    action: str
    method: bytes
    head: bytearray = field(default_factory=bytearray)
    replied: bool = False
    remaining: int = 0


@dataclass(eq=False)
class _Cut:
    """One ``cut_once``: the pattern that picks the connection, how far past it to cut,
    and the event set when the cut connection is reset."""

    pattern: bytes
    after: int
    done: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A TCP proxy on ``127.0.0.1:<free port>`` to ``target`` with switchable faults."""

    def __init__(self, target: tuple[str, int], *, name: str = "proxy") -> None:
        self.target = target
        self.name = name
        self.host = LOOPBACK
        self.port = 0
        # Faults (read and written by the loop thread only, through _call).
        self._refuse = False
        self._stall_up = False
        self._stall_down = False
        self._rate: dict[str, float] = {}  # direction -> bytes per second (throttle)
        self._budget: dict[str, float] = {UP: 0.0, DOWN: 0.0}
        self._refilled = time.monotonic()
        self._cut_after: tuple[str, int] | None = None
        self._reply_trigger: bytes | None = None
        self._blackhole_trigger: bytes | None = None
        self._cuts: list[_Cut] = []  # cut_once: armed, no connection picked yet
        self._http_faults: list[_HttpFault] = []
        # Counters (written by the loop thread; ints are safe to read from anywhere).
        self.accepted = 0
        self.refused = 0
        self.resets = 0
        self.bytes_up = 0  # forwarded to the target
        self.bytes_down = 0  # forwarded to the clients
        self.held_up = 0  # received from clients, not (yet) forwarded
        self.held_down = 0
        self.triggered = threading.Event()  # drop_reply_once fired
        self.http_faulted: Counter[str] = Counter()  # http_fault: requests hit, by action
        self._conns: set[_Conn] = set()
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._calls: queue.Queue[tuple[Callable[[], Any], threading.Event, list[Any]]] = (
            queue.Queue()
        )
        self._thread: threading.Thread | None = None
        self._running = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._sel.register(listener, selectors.EVENT_READ, "listen")
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"faultproxy-{self.name}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection and close the listener."""
        if not self._running:
            return
        self._call(self._shutdown)
        assert self._thread is not None
        self._thread.join(5)
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def rewrite(self, url: str) -> str:
        """``url`` with its host:port replaced by the proxy's (scheme, path, query kept)."""
        parts = urlsplit(url)
        netloc = self.address
        if parts.username or parts.password:
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        return urlunsplit(parts._replace(netloc=netloc))

    # ---------------------------------------------------------------- faults

    def heal(self) -> None:
        """Pass everything again: no refusal, no stall, no cut (armed ``cut_once`` cuts
        that picked no connection yet are dropped); held bytes flow on; a black-holed
        connection is reset."""

        def apply() -> None:
            self._refuse = self._stall_up = self._stall_down = False
            self._rate.clear()
            self._cut_after = None
            self._cuts.clear()
            self._http_faults.clear()
            self._reply_trigger = self._blackhole_trigger = None
            for conn in list(self._conns):
                if conn.blackholed:
                    self._kill(conn)

        self._call(apply)

    pass_ = heal

    def reset(self) -> int:
        """Cut every open connection now with a RST; returns how many. One-shot: new
        connections are served as the current mode says."""

        def apply() -> int:
            conns = list(self._conns)
            for conn in conns:
                self._kill(conn)
            return len(conns)

        return int(self._call(apply))

    def refuse(self, reset_open: bool = True) -> None:
        """From now on accept each new connection and reset it at once (the client sees
        ECONNRESET on its first read or write); with ``reset_open`` also cut open ones."""

        def apply() -> None:
            self._refuse = True
            if reset_open:
                for conn in list(self._conns):
                    self._kill(conn)

        self._call(apply)

    def stall(self, direction: str | None = None) -> None:
        """Stop forwarding (``"up"``, ``"down"`` or both): up to 1 MiB per connection is
        read and held (``held_up``, ``held_down``), nothing is written; connections stay
        open; new connections are accepted and stall too."""

        def apply() -> None:
            if direction in (None, UP):
                self._stall_up = True
            if direction in (None, DOWN):
                self._stall_down = True

        self._call(apply)

    def throttle(self, bytes_per_second: float, direction: str | None = None) -> None:
        """Forward at most ``bytes_per_second`` in ``direction`` (both when None), shared
        by all connections: a slow link. Persistent until ``heal()``."""

        def apply() -> None:
            for d in (UP, DOWN) if direction is None else (direction,):
                self._rate[d] = float(bytes_per_second)
                self._budget[d] = 0.0
            self._refilled = time.monotonic()

        self._call(apply)

    def cut_after(self, nbytes: int, direction: str = UP) -> None:
        """Reset each connection (open ones and new ones) once it has forwarded ``nbytes``
        more bytes in ``direction``. Persistent until ``heal()``."""

        def apply() -> None:
            self._cut_after = (direction, nbytes)
            for conn in self._conns:
                conn.carried_up = conn.carried_down = 0

        self._call(apply)

    def drop_reply_once(self, pattern: bytes) -> None:
        """The next time a client sends bytes containing ``pattern``: forward them, wait
        for the target's answer, drop it and reset that connection. The target did the
        work; the client never hears of it (an ambiguous outcome). Fires once; see
        ``triggered``."""

        def apply() -> None:
            self.triggered.clear()
            self._reply_trigger = pattern

        self._call(apply)

    def blackhole_once(self, pattern: bytes) -> None:
        """The next time a client sends bytes containing ``pattern``, that connection
        becomes a black hole: those bytes and all later ones are dropped, nothing comes
        back, the connection stays open (the client waits) until it closes, ``reset()``
        or ``heal()``. The target never sees the request. Fires once; see ``triggered``."""

        def apply() -> None:
            self.triggered.clear()
            self._blackhole_trigger = pattern

        self._call(apply)

    def cut_once(self, pattern: bytes, after: int) -> threading.Event:
        """Reset the next connection whose client sends ``pattern`` (a request line such
        as ``b"PATCH /files/<id> "``) once ``after`` more bytes, counted from the
        pattern's first byte, have gone up: one chosen request dies mid-body, as when a
        mobile client loses its network. On a kept-alive connection the count goes on
        through its later requests; if the connection ends cleanly first, the next one
        that sends ``pattern`` is picked instead. Several cuts may be armed at once (one
        per pattern: each upload its own). Returns an event set when the picked
        connection is reset (by the cut, or earlier by any other fault). Not to be
        combined with ``cut_after``, whose counters it shares."""
        cut = _Cut(pattern, after)

        def apply() -> None:
            self._cuts.append(cut)

        self._call(apply)
        return cut.done

    def http_fault(
        self,
        method: str,
        pattern: bytes = b"",
        *,
        count: int | None = None,
        share: float = 1.0,
        action: str = "slowdown",
        seed: int | None = None,
    ) -> None:
        """HTTP-aware faults for an S3 client (one request at a time per connection, as
        botocore sends them): a request whose method is ``method`` (``"*"``: any) and
        whose target (path and query) matches the regex ``pattern`` is, for the next
        ``count`` such requests (None: until ``heal()``), each with probability
        ``share``, not forwarded: ``"slowdown"`` answers S3's ``503 SlowDown`` XML error,
        ``"internal"`` its ``500 InternalError``, ``"reset"`` cuts the connection. An
        answered request's body is read and dropped, then the connection is closed (the
        answer says ``Connection: close``). ``http_faulted`` counts them by action.
        Several may be armed at once; the first that matches decides."""
        if action not in (*HTTP_ANSWERS, "reset"):
            raise ValueError(f"unknown action {action!r}")
        fault = _HttpFault(
            method.upper().encode(),
            re.compile(pattern),
            action,
            count,
            share,
            random.Random(seed),
        )

        def apply() -> None:
            self._http_faults.append(fault)

        self._call(apply)

    # ---------------------------------------------------------------- observing

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def wait(self, check: Callable[[FaultProxy], bool], timeout: float, what: str) -> None:
        """Poll ``check(self)`` until true; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        while not check(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: timed out after {timeout:.0f}s waiting {what}")
            time.sleep(0.01)

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.name} {self.address} -> {self.target[0]}:{self.target[1]} "
            f"conns={len(self._conns)} up={self.bytes_up} down={self.bytes_down}>"
        )

    # ---------------------------------------------------------------- the loop

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the loop thread and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        done, box = threading.Event(), []
        self._calls.put((fn, done, box))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise RuntimeError(f"{self.name}: the proxy loop did not answer")
        return box[0] if box else None

    def _shutdown(self) -> None:
        for conn in list(self._conns):
            self._kill(conn, count=False)
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._running = False

    def _loop(self) -> None:
        while self._running:
            self._update_interest()
            for key, events in self._sel.select(timeout=0.05):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                else:
                    conn, side = key.data
                    if not conn.closed:
                        self._serve(conn, side, events)
            while True:
                try:
                    fn, done, box = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    box.append(fn())
                finally:
                    done.set()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # BlockingIOError: nothing more to accept
                return
            self.accepted += 1
            if self._refuse:
                self.refused += 1
                _rst(client)
                continue
            client.setblocking(False)
            conn = self._route(client)
            if conn is not None:
                self._conns.add(conn)  # _update_interest registers its sockets

    def _route(self, client: socket.socket) -> _Conn | None:
        """Start the upstream side of a new client's connection (None: the client was
        reset). A router picks the backend here."""
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        err = upstream.connect_ex(self.target)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            _rst(client)
            upstream.close()
            return None
        return _Conn(client, upstream, connected=(err == 0))

    def _update_interest(self) -> None:
        self._refill()
        for conn in list(self._conns):
            if conn.closed:
                continue
            c_ev = 0
            u_ev = 0
            if not conn.connected:
                u_ev = selectors.EVENT_WRITE  # waiting for the connect to finish
            else:
                # A stalled direction still reads (up to MAX_BUFFER, so that held_up and
                # held_down show what waits) but writes nothing.
                if not conn.client_eof and len(conn.to_up) < MAX_BUFFER:
                    c_ev |= selectors.EVENT_READ
                if conn.to_up and not self._stall_up and self._may_send(UP):
                    u_ev |= selectors.EVENT_WRITE
                if not conn.upstream_eof and len(conn.to_down) < MAX_BUFFER:
                    u_ev |= selectors.EVENT_READ
                if conn.to_down and not self._stall_down and self._may_send(DOWN):
                    c_ev |= selectors.EVENT_WRITE
            self._modify(conn.client, c_ev, (conn, "client"))
            self._modify(conn.upstream, u_ev, (conn, "upstream"))

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self._refilled = now - self._refilled, now
        for d, rate in self._rate.items():
            # At most a tenth of a second's worth saved up: no bursts after a pause.
            self._budget[d] = min(rate / 10, self._budget[d] + rate * elapsed)

    def _may_send(self, direction: str) -> bool:
        return direction not in self._rate or self._budget[direction] >= 1

    def _modify(self, sock: socket.socket, events: int, data: Any) -> None:
        # selectors refuses an empty mask: unregister instead, register again later.
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            key = None
        if events == 0:
            if key is not None:
                self._sel.unregister(sock)
        elif key is None:
            self._sel.register(sock, events, data)
        elif key.events != events:
            self._sel.modify(sock, events, data)

    def _serve(self, conn: _Conn, side: str, events: int) -> None:
        try:
            if side == "upstream" and not conn.connected:
                err = conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._kill(conn)  # the target is down: the client sees a reset
                    return
                conn.connected = True
                return
            if events & selectors.EVENT_READ:
                self._read(conn, side)
            if not conn.closed and events & selectors.EVENT_WRITE:
                self._write(conn, side)
        except OSError:
            self._kill(conn)
            return
        if not conn.closed:
            self._finish_half_closes(conn)

    def _read(self, conn: _Conn, side: str) -> None:
        sock = conn.client if side == "client" else conn.upstream
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if side == "client":
            if not data:
                conn.client_eof = True
                if conn.blackholed:
                    self._kill(conn)
                elif conn.http is not None:
                    self._finish_answer(conn)
                return
            if self._blackhole_trigger is not None and self._blackhole_trigger in data:
                self._blackhole_trigger = None
                conn.blackholed = True
                self.triggered.set()
            if conn.blackholed:
                return
            if conn.http is not None or (self._http_faults and self._http_pick(conn, data)):
                self._answer(conn, data)
                return
            if conn.closed:  # http_fault: reset
                return
            if self._reply_trigger is not None and self._reply_trigger in data:
                self._reply_trigger = None
                conn.swallow_reply = True
            if self._cuts and conn.cut is None:
                self._pick_for_cut(conn, data)
            if conn.cut_at is not None:
                allowed = conn.cut_at - (conn.carried_up + len(conn.to_up))
                if len(data) >= allowed:
                    data = data[: max(0, allowed)]
                    conn.doomed = True
            if self._cut_after is not None and self._cut_after[0] == UP:
                allowed = self._cut_after[1] - (conn.carried_up + len(conn.to_up))
                if len(data) >= allowed:
                    data = data[: max(0, allowed)]
                    conn.doomed = True
            conn.to_up += data
            self.held_up += len(data)
        else:
            if not data:
                conn.upstream_eof = True
                return
            if conn.blackholed:
                return
            if conn.swallow_reply:
                self.triggered.set()  # before the RST: whoever sees it sees the flag
                self._kill(conn)
                return
            if self._cut_after is not None and self._cut_after[0] == DOWN:
                allowed = self._cut_after[1] - (conn.carried_down + len(conn.to_down))
                if len(data) >= allowed:
                    data = data[: max(0, allowed)]
                    conn.doomed = True
            conn.to_down += data
            self.held_down += len(data)
        if conn.doomed and not conn.to_up and not conn.to_down:
            self._kill(conn)

    def _http_pick(self, conn: _Conn, data: bytes) -> bool:
        """http_fault: whether the request starting in ``data`` is to be answered here
        (then ``conn.http`` is set); a "reset" resets the connection at once."""
        found = REQUEST_LINE.match(data)
        if found is None:
            return False
        method, target = found.groups()
        for fault in self._http_faults:
            if fault.method not in (b"*", method) or not fault.pattern.search(target):
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._http_faults.remove(fault)
            if fault.rng.random() >= fault.share:
                return False
            self.http_faulted[fault.action] += 1
            if fault.action == "reset":
                self._kill(conn)
                return False
            conn.http = _Answering(fault.action, method)
            return True
        return False

    def _answer(self, conn: _Conn, data: bytes) -> None:
        """Read a request the proxy answers itself: its head, then its body (dropped);
        the answer goes once the head is in, the close once the body is."""
        answering = conn.http
        assert answering is not None
        if answering.replied:
            answering.remaining -= len(data)
        else:
            answering.head += data
            end = answering.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(answering.head[:end]).decode("latin-1").lower()
            length = re.search(r"\r\ncontent-length:\s*(\d+)", head)
            expect = "\r\nexpect: 100-continue" in head
            # With Expect: 100-continue the client sends no body after a final answer.
            body = 0 if expect or length is None else int(length.group(1))
            answering.remaining = body - (len(answering.head) - end - 4)
            answering.replied = True
            answer = self._http_answer(answering)
            conn.to_down += answer
            self.held_down += len(answer)
        self._finish_answer(conn)

    def _http_answer(self, answering: _Answering) -> bytes:
        status, reason, code, message = HTTP_ANSWERS[answering.action]
        request_id = f"{random.getrandbits(64):016X}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
        ).encode()
        if answering.method == b"HEAD":
            body = b""
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        return head + body

    def _finish_answer(self, conn: _Conn) -> None:
        """Close an answered connection once the answer is out and the body is in."""
        answering = conn.http
        if answering is None or not answering.replied or conn.closed:
            return
        if not conn.to_down and (answering.remaining <= 0 or conn.client_eof):
            self._close(conn)

    def _pick_for_cut(self, conn: _Conn, data: bytes) -> None:
        """cut_once: the first armed cut whose pattern ``data`` holds picks ``conn``."""
        for cut in self._cuts:
            index = data.find(cut.pattern)
            if index >= 0:
                self._cuts.remove(cut)
                conn.cut = cut
                conn.cut_at = conn.carried_up + len(conn.to_up) + index + cut.after
                return

    def _write(self, conn: _Conn, side: str) -> None:
        if side == "upstream":
            sock, buf = conn.upstream, conn.to_up
        else:
            sock, buf = conn.client, conn.to_down
        if not buf:
            return
        direction = UP if side == "upstream" else DOWN
        limit = len(buf)
        if direction in self._rate:
            limit = min(limit, int(self._budget[direction]))
            if limit <= 0:
                return
        try:
            sent = sock.send(buf[:limit] if limit < len(buf) else buf)
        except (BlockingIOError, InterruptedError):
            return
        if direction in self._rate:
            self._budget[direction] -= sent
        del buf[:sent]
        if side == "upstream":
            self.bytes_up += sent
            self.held_up -= sent
            conn.carried_up += sent
        else:
            self.bytes_down += sent
            self.held_down -= sent
            conn.carried_down += sent
        if conn.doomed and not conn.to_up and not conn.to_down:
            self._kill(conn)
        elif conn.http is not None and side == "client":
            self._finish_answer(conn)

    def _finish_half_closes(self, conn: _Conn) -> None:
        if conn.client_eof and not conn.to_up and not conn.up_shut and conn.connected:
            conn.up_shut = True
            with contextlib.suppress(OSError):
                conn.upstream.shutdown(socket.SHUT_WR)
        if conn.upstream_eof and not conn.to_down and not conn.down_shut:
            conn.down_shut = True
            with contextlib.suppress(OSError):
                conn.client.shutdown(socket.SHUT_WR)
        if conn.up_shut and conn.down_shut:
            self._close(conn)

    def _unregister(self, conn: _Conn) -> None:
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)

    def _close(self, conn: _Conn) -> None:
        if conn.cut is not None and self._running:
            self._cuts.append(conn.cut)  # ended before the cut: the next one gets it
            conn.cut = None
        conn.closed = True
        self._unregister(conn)
        self._conns.discard(conn)
        self.held_up -= len(conn.to_up)
        self.held_down -= len(conn.to_down)
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                sock.close()

    def _kill(self, conn: _Conn, count: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._unregister(conn)
        self._conns.discard(conn)
        self.held_up -= len(conn.to_up)
        self.held_down -= len(conn.to_down)
        conn.to_up.clear()
        conn.to_down.clear()
        if count:
            self.resets += 1  # before the RST: whoever sees the reset sees the count
        if conn.cut is not None:
            conn.cut.done.set()  # likewise: a client that met the reset sees its cause
        _rst(conn.client)
        _rst(conn.upstream)
