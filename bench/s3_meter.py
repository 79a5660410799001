"""What the app writes to S3, counted at a proxy between the app and S3 (issue #19).

``S3Meter`` starts a TCP proxy in a process of its own (so that forwarding a few hundred
MB/s takes no CPU from the bench's clients' GIL) on a free loopback port in front of the S3
endpoint; the stack under test is given ``meter.endpoint`` as its ``AWS_ENDPOINT_URL_S3``.
Bytes are passed on unchanged: SigV4 signs the Host header as the app sent it, and S3
checks the signature against the same header.

The proxy reads the HTTP requests going up (each request's head, then ``Content-Length``
bytes of body) and counts, by operation, the bytes that reach S3 to be stored:

- PutObject and UploadPart: their body bytes;
- CopyObject and UploadPartCopy: the bytes S3 copies (``x-amz-copy-source-range``, or
  the source object's size from a HEAD the proxy sends as the request passes; a copy whose
  source it could not HEAD is counted in ``copy_unsized``).

``counts()`` returns the totals so far; a phase's figure is the difference of two.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import re
import socket
import threading
from collections import Counter
from typing import Any
from urllib.parse import unquote, urlsplit

LOOPBACK = "127.0.0.1"
READ_LIMIT = 1024 * 1024  # pause reading one side while this much waits for the other
_HEAD_END = b"\r\n\r\n"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


def operation(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation of a request, from its method, target and headers."""
    query = urlsplit(target).query
    copy = "x-amz-copy-source" in headers
    if method == "PUT" and "partNumber=" in query and "uploadId=" in query:
        return "upload_part_copy" if copy else "upload_part"
    if method == "PUT":
        return "copy_object" if copy else "put_object"
    return method.lower()


class Counts:
    """Totals of one proxy, changed on its event loop only."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()  # stored bytes by operation
        self.requests: Counter[str] = Counter()
        self.copy_unsized = 0

    def snapshot(self) -> dict[str, Any]:
        stored = ("put_object", "upload_part", "copy_object", "upload_part_copy")
        return {
            "written": sum(self.bytes[op] for op in stored),
            "bytes": dict(self.bytes),
            "requests": dict(self.requests),
            "copy_unsized": self.copy_unsized,
        }


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; ``peer`` is the other one."""

    def __init__(self, meter: _Proxy, upstream: bool) -> None:
        self.meter = meter
        self.upstream = upstream  # True: the client's socket, whose bytes go up to S3
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # read before the peer was connected
        self.head = b""
        self.body_left = 0
        self.op = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=READ_LIMIT)

    def data_received(self, data: bytes) -> None:
        if self.upstream:
            self._parse(data)
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self.peer.transport.write_eof()
        return True  # keep the other direction open

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:  # our socket is full: stop reading the other one
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def _parse(self, data: bytes) -> None:
        """Follow the requests of this connection: heads, then their bodies."""
        view = memoryview(data)
        while view:
            if self.body_left:
                n = min(self.body_left, len(view))
                self.body_left -= n
                self.meter.body_bytes(self.op, n)
                view = view[n:]
                continue
            self.head += bytes(view)
            view = memoryview(b"")
            end = self.head.find(_HEAD_END)
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + len(_HEAD_END) :]
            self.head = b""
            self._request(head.decode("latin-1"))
            view = memoryview(rest)

    def _request(self, head: str) -> None:
        lines = head.split("\r\n")
        method, target = [*lines[0].split(" "), "", ""][:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.op = operation(method, target, headers)
        self.body_left = int(headers.get("content-length") or 0)
        self.meter.request(self.op, headers)


class _Proxy:
    def __init__(self, target: tuple[str, int], head_source: Any) -> None:
        self.target = target
        self.counts = Counts()
        self.head_source = head_source  # (bucket, key) -> size, from a thread

    def body_bytes(self, op: str, n: int) -> None:
        if op in ("put_object", "upload_part"):
            self.counts.bytes[op] += n

    def request(self, op: str, headers: dict[str, str]) -> None:
        self.counts.requests[op] += 1
        if op not in ("copy_object", "upload_part_copy"):
            return
        match = _RANGE.fullmatch(headers.get("x-amz-copy-source-range", ""))
        if match:
            self.counts.bytes[op] += int(match.group(2)) - int(match.group(1)) + 1
            return
        source = unquote(headers["x-amz-copy-source"].split("?", 1)[0]).lstrip("/")
        bucket, _, key = source.partition("/")
        asyncio.get_running_loop().create_task(self._copy_size(op, bucket, key))

    async def _copy_size(self, op: str, bucket: str, key: str) -> None:
        try:
            size = await asyncio.to_thread(self.head_source, bucket, key)
        except Exception:
            self.counts.copy_unsized += 1
        else:
            self.counts.bytes[op] += size

    def client_side(self) -> _Side:
        side = _Side(self, upstream=True)
        asyncio.get_running_loop().create_task(self._connect(side))
        return side

    async def _connect(self, client: _Side) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, server = await loop.create_connection(
                lambda: _Side(self, upstream=False), *self.target
            )
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, server.peer = server, client
        assert server.transport is not None
        for data in client.pending:
            server.transport.write(data)
        client.pending.clear()


def _serve(target: tuple[str, int], control: Any) -> None:
    """The proxy process: tell the parent its port, then forward and count until the
    control pipe closes."""
    from rindle.storage import make_s3_client  # the app's settings; S3 from AWS_* here

    s3 = make_s3_client(8)
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(1024)
    control.send(sock.getsockname()[1])

    def head_source(bucket: str, key: str) -> int:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        proxy = _Proxy(target, head_source)
        server = await loop.create_server(proxy.client_side, sock=sock)
        done = asyncio.Event()

        def answer() -> None:  # a thread: one request per message, until EOF
            try:
                while True:
                    control.recv()
                    future = asyncio.run_coroutine_threadsafe(snapshot(), loop)
                    control.send(future.result(timeout=30))
            except (EOFError, OSError):
                loop.call_soon_threadsafe(done.set)

        async def snapshot() -> dict[str, Any]:
            return proxy.counts.snapshot()

        threading.Thread(target=answer, daemon=True).start()
        async with server:
            await done.wait()

    asyncio.run(main())


class S3Meter:
    """The proxy process in front of ``endpoint`` (http://host:port); use as a context."""

    def __init__(self, endpoint: str) -> None:
        url = urlsplit(endpoint)
        if url.scheme != "http" or url.hostname is None or url.port is None:
            raise ValueError(f"the S3 meter proxies plain http://host:port, not {endpoint!r}")
        self.target = (url.hostname, url.port)
        self.endpoint = ""  # once started
        ctx = mp.get_context("spawn")
        self.control, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(self.target, child), name="s3-meter")

    def __enter__(self) -> S3Meter:
        self.proc.start()
        if not self.control.poll(60):
            self.__exit__()
            raise RuntimeError("the S3 meter did not start")
        self.endpoint = f"http://{LOOPBACK}:{self.control.recv()}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.control.close()
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()

    def counts(self) -> dict[str, Any]:
        self.control.send("counts")
        return self.control.recv()


def written_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The counts of a phase: ``after`` minus ``before``."""
    by_op = {
        op: after["bytes"].get(op, 0) - before["bytes"].get(op, 0)
        for op in after["bytes"]
        if after["bytes"].get(op, 0) != before["bytes"].get(op, 0)
    }
    return {
        "written": after["written"] - before["written"],
        "bytes": by_op,
        "copy_unsized": after["copy_unsized"] - before["copy_unsized"],
    }
