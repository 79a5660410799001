"""tuspy (the Python tus client) against the real stack: gunicorn + rq worker + Redis + S3.

Every upload is checked the way a user would: the completion job makes the object, its
sha256 in S3 is the source's, and every part but the last has the part size (5 MiB here).
"""

from __future__ import annotations

import io
import socket
import struct
from typing import Any
from urllib.parse import urlsplit

import pytest
import tusclient.request
from tusclient import client as tus
from tusclient.uploader import Uploader

from rindle.config import MIN_PART_SIZE
from tests.conftest import PART_SIZE, Stack
from tests.e2e.conftest import (
    MIB,
    Uploads,
    payload,
    poll,
    upload_id_of,
    upload_key,
    with_deadline,
)

pytestmark = pytest.mark.e2e

P = PART_SIZE
UPLOAD_TIMEOUT = 120.0  # seconds for one whole upload on loopback (64 MiB takes ~2 s)

SIZES = {
    "0B": 0,
    "1B": 1,
    "part-1": P - 1,
    "part": P,
    "part+1": P + 1,
    "3parts+123": 3 * P + 123,
    "64MiB": 64 * MIB,
}
CHUNKS = {
    "one-patch": None,  # chunk_size >= size: the whole upload in one PATCH
    "1MiB": 1 * MIB,
    "5MiB": 5 * MIB,
    "8MiB": 8 * MIB,
    "3MiB+7": 3 * MIB + 7,  # does not divide the part size
}


def tus_uploader(stack: Stack, data: bytes, chunk_size: int | None, **kwargs: Any) -> Uploader:
    """A tuspy Uploader for ``data`` (chunk_size None: at least the size, one PATCH)."""
    chunk = chunk_size if chunk_size is not None else max(len(data), 1)
    return tus.TusClient(stack.files_url).uploader(
        file_stream=io.BytesIO(data), chunk_size=chunk, **kwargs
    )


@pytest.fixture
def patches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """(Upload-Offset, body length, status) of every PATCH tuspy sends (a spy, not a mock)."""
    sent: list[tuple[int, int, int]] = []
    real_patch = tusclient.request.requests.patch

    def spy(url: str, data: bytes, headers: dict[str, str], **kwargs: Any) -> Any:
        response = real_patch(url, data=data, headers=headers, **kwargs)
        sent.append((int(headers["upload-offset"]), len(data), response.status_code))
        return response

    monkeypatch.setattr(tusclient.request.requests, "patch", spy)
    return sent


@pytest.mark.parametrize("chunk_size", CHUNKS.values(), ids=CHUNKS.keys())
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_upload(
    module_stack: Stack,
    uploads: Uploads,
    patches: list[tuple[int, int, int]],
    size: int,
    chunk_size: int | None,
) -> None:
    data = payload(size)
    uploader = tus_uploader(module_stack, data, chunk_size, metadata={"filename": "a.bin"})
    with_deadline(uploader.upload, UPLOAD_TIMEOUT, f"tuspy upload of {size} bytes")
    uploads.track(uploader.url)
    assert uploader.offset == size

    # The requests were the ones this case is about: contiguous, of the chunk size.
    chunk = chunk_size or max(size, 1)
    assert [(o, n) for o, n, _ in patches] == [
        (o, min(chunk, size - o)) for o in range(0, size, chunk)
    ]
    assert all(status == 204 for *_, status in patches)
    # A first chunk of 5 MiB or more, shorter than the upload, sets the part size.
    part_size = chunk if MIN_PART_SIZE <= chunk < size else P
    uploads.assert_stored(uploader.url, data, part_size)


@pytest.mark.parametrize(
    "stop_at",
    [2 * MIB + 5, P, 7 * MIB + 3],
    ids=["inside-first-part", "at-part-boundary", "inside-second-part"],
)
def test_resume_with_a_new_uploader(module_stack: Stack, uploads: Uploads, stop_at: int) -> None:
    """Upload part of a file, drop the uploader, finish with a new one for the same URL."""
    data = payload(3 * P + 123, seed=stop_at)

    def upload_some() -> str:
        first = tus_uploader(module_stack, data, MIB + 1)
        first.upload(stop_at=stop_at)
        return first.url  # and the uploader is gone

    url = with_deadline(upload_some, UPLOAD_TIMEOUT, "the first uploader")
    uploads.track(url)
    assert uploads.offset(url) == stop_at

    second = with_deadline(
        lambda: tus_uploader(module_stack, data, 3 * MIB + 7, url=url),
        30,
        "a new uploader asking for the offset",
    )
    assert second.offset == stop_at  # tuspy resumed from the server's offset (HEAD)
    with_deadline(second.upload, UPLOAD_TIMEOUT, "the second uploader")
    assert second.url == url
    uploads.assert_stored(url, data)


def start_partial_patch(stack: Stack, url: str, data: bytes, sent: int) -> socket.socket:
    """PATCH ``data`` at offset 0 over a raw socket: the headers and ``sent`` bytes only.

    Returns once the server is reading the body (it holds the writer lease; when the bytes
    sent cross a part boundary, once that part is committed): a request in flight.
    """
    target = urlsplit(url)
    head = (
        f"PATCH {target.path} HTTP/1.1\r\n"
        f"Host: {target.netloc}\r\n"
        "Tus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\n"
        "Upload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n"
        "\r\n"
    ).encode()
    upload_id = upload_id_of(url)
    sock = socket.create_connection((target.hostname, target.port), timeout=30)
    try:
        sock.sendall(head + data[:sent])
        poll(
            lambda: stack.redis.exists(writer_key(upload_id)) or None,
            30,
            "for the PATCH to hold the lease",
        )
        if sent > P:
            poll(
                lambda: int(stack.redis.hget(upload_key(upload_id), "offset") or 0) >= P or None,
                30,
                "for the first part to be committed mid-request",
            )
    except BaseException:
        sock.close()
        raise
    return sock


def drop(sock: socket.socket, abortive: bool) -> None:
    """Close: an orderly FIN, or with ``abortive`` an RST (SO_LINGER 0)."""
    if abortive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def writer_key(upload_id: str) -> str:
    return f"{upload_key(upload_id)}:writer"


@pytest.mark.parametrize("abortive", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize(
    "sent", [2 * MIB + 11, 7 * MIB + MIB // 2], ids=["before-first-part", "past-a-part"]
)
def test_resume_after_dropped_connection(
    module_stack: Stack, uploads: Uploads, sent: int, abortive: bool
) -> None:
    """The connection drops mid-body; once the server has let go, tuspy resumes from the
    offset HEAD reports."""
    data = payload(3 * P + 123, seed=sent + abortive)
    creator = tus_uploader(module_stack, data, None)
    url = with_deadline(creator.create_url, 30, "creation")
    upload_id = uploads.track(url)

    drop(start_partial_patch(module_stack, url, data, sent), abortive)
    # The server notices, keeps what it received, commits the offset, lets go of the lease.
    poll(
        lambda: None if module_stack.redis.exists(writer_key(upload_id)) else True,
        30,
        "for the lease to be released",
    )

    offset = uploads.offset(url)
    if abortive:  # an RST may cost the bytes still in the server's socket buffer
        assert (P if sent > P else 0) <= offset <= sent
    else:  # an orderly close: everything sent was received, and kept
        assert offset == sent

    resumed = with_deadline(
        lambda: tus_uploader(module_stack, data, 4 * MIB, url=url), 30, "a new uploader"
    )
    assert resumed.offset == offset  # resumed from the offset HEAD reports
    with_deadline(resumed.upload, UPLOAD_TIMEOUT, "the resumed upload")
    uploads.assert_stored(url, data)


@pytest.mark.parametrize("how", ["fin", "rst", "stalled"])
def test_resume_at_once_after_connection_loss(
    module_stack: Stack, uploads: Uploads, how: str
) -> None:
    """A client that reconnects at once: its old PATCH may still be running (or, with a
    connection that went silent without a FIN or RST, hang in a read). tuspy, without
    retries, asks HEAD for the offset and goes on: the server must make the old request
    let go and report what it kept."""
    sent = 7 * MIB + MIB // 2
    data = payload(3 * P + 123, seed=len(how))
    creator = tus_uploader(module_stack, data, None)
    url = with_deadline(creator.create_url, 30, "creation")
    uploads.track(url)

    old = start_partial_patch(module_stack, url, data, sent)
    try:
        if how != "stalled":
            drop(old, abortive=how == "rst")
        resumed = with_deadline(
            lambda: tus_uploader(module_stack, data, 4 * MIB, url=url), 30, "a new uploader"
        )
        assert P <= resumed.offset <= sent  # the part committed mid-request was kept
        with_deadline(resumed.upload, UPLOAD_TIMEOUT, "the resumed upload")
    finally:
        old.close()
    uploads.assert_stored(url, data)
