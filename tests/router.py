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
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.faultproxy import LOOPBACK, FaultProxy, _Conn, _rst

Backend = tuple[str, int]
_CONNECTING = (0, errno.EINPROGRESS, errno.EWOULDBLOCK)


@dataclass(eq=False)
class _Routed(_Conn):
    backend: Backend = ("", 0)  # where this connection goes (or is being connected)
    untried: list[Backend] = field(default_factory=list)  # failover candidates, in order


class Router(FaultProxy):
    """A TCP proxy that sends each new connection to a random backend (see the module)."""

    def __init__(
        self,
        backends: Sequence[int | Backend],
        *,
        seed: int,
        name: str = "router",
        failover: bool = True,
    ) -> None:
        nodes = [(LOOPBACK, b) if isinstance(b, int) else (b[0], b[1]) for b in backends]
        if not nodes:
            raise ValueError("a router needs at least one backend")
        super().__init__(nodes[0], name=name)
        self.backends = nodes
        self.failover = failover
        self.rng = random.Random(seed)
        # Counters (written by the loop thread).
        self.routed: Counter[int] = Counter()  # backend port -> connections established
        self.failovers = 0  # connects refused by a backend and sent to another

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
        self.routed[conn.backend[1]] += 1

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
