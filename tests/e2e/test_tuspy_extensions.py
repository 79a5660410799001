"""The tus extensions against the real stack (gunicorn + rq worker + Redis + S3): tuspy for
what it supports (checksum with sha1, metadata, resume from its URL storage, retries), raw
``requests`` for the rest (creation-with-upload, creation-defer-length, every checksum
algorithm, concatenation, termination, expiration), and CORS as a browser sees it.

This module's stack has RINDLE_CORS_ORIGINS set (tuspy sends no Origin: nothing changes for
it). Every upload ends checked in S3 by sha256; what a test leaves unfinished is aborted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import io
import os
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
import tusclient.request
from rq import Queue
from tusclient import client as tus
from tusclient.storage.filestorage import FileStorage

from rindle import tail_path
from tests.conftest import PART_SIZE, Stack
from tests.e2e.conftest import (
    MIB,
    TUS,
    Uploads,
    payload,
    poll,
    upload_id_of,
    upload_key,
    with_deadline,
)
from tests.e2e.test_faults import own_stack

pytestmark = pytest.mark.e2e

P = PART_SIZE
SIZE = 12 * MIB + 12345
OCTETS = "application/offset+octet-stream"
ORIGIN = "https://app.example.com"
UPLOAD_TIMEOUT = 60.0


class TrackedUploads(Uploads):
    """``Uploads`` whose cleanup also ends what a test left unfinished: the open multipart
    upload is aborted and the tail deleted, then every key of the upload goes (the expiry
    index entry and a release flag too)."""

    def cleanup(self) -> None:
        s3, bucket, r = self.stack.s3, self.stack.bucket, self.stack.redis
        for upload_id in self.made:
            record = r.hgetall(upload_key(upload_id))
            if record.get("upload_id"):
                with contextlib.suppress(s3.exceptions.NoSuchUpload):
                    s3.abort_multipart_upload(
                        Bucket=bucket, Key=record["key"], UploadId=record["upload_id"]
                    )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tail_path(upload_id, str(self.stack.tmp_dir)))
            r.delete(f"{upload_key(upload_id)}:release")
            r.zrem("rindle:expiry", upload_id)
        super().cleanup()


@pytest.fixture(scope="module")
def module_stack(redis_server, s3_server, tmp_path_factory) -> Iterator[Stack]:
    """This module's stack: the defaults, plus CORS for ORIGIN."""
    root = tmp_path_factory.mktemp("tuspy-ext")
    with own_stack(
        redis_server, s3_server, root, node="e2e-node", RINDLE_CORS_ORIGINS=ORIGIN
    ) as stack:
        yield stack


@pytest.fixture
def uploads(module_stack: Stack) -> Iterator[TrackedUploads]:
    helper = TrackedUploads(module_stack)
    yield helper
    helper.cleanup()


@pytest.fixture
def patches(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every PATCH tuspy sends: offset, length, Upload-Checksum, status (a spy)."""
    sent: list[dict[str, Any]] = []
    real_patch = tusclient.request.requests.patch

    def spy(url: str, data: bytes, headers: dict[str, str], **kwargs: Any) -> Any:
        response = real_patch(url, data=data, headers=headers, **kwargs)
        sent.append(
            {
                "offset": int(headers["upload-offset"]),
                "length": len(data),
                "checksum": headers.get("upload-checksum"),
                "status": response.status_code,
            }
        )
        return response

    monkeypatch.setattr(tusclient.request.requests, "patch", spy)
    return sent


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        return f"crc32 {b64(zlib.crc32(data).to_bytes(4, 'big'))}"
    return f"{algorithm} {b64(hashlib.new(algorithm, data).digest())}"


def create(stack: Stack, headers: dict[str, str], body: bytes | None = None) -> requests.Response:
    extra = {"Content-Type": OCTETS} if body is not None else {}
    return requests.post(
        stack.files_url, headers={**TUS, **extra, **headers}, data=body, timeout=30
    )


def patch(
    url: str, offset: int, body: bytes, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.patch(
        url,
        headers={**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset), **(headers or {})},
        data=body,
        timeout=30,
    )


def record(stack: Stack, url: str) -> dict[str, str]:
    return stack.redis.hgetall(upload_key(upload_id_of(url)))


def tail_size(stack: Stack, url: str) -> int | None:
    path = tail_path(upload_id_of(url), str(stack.tmp_dir))
    return os.path.getsize(path) if os.path.exists(path) else None


def open_multipart(stack: Stack, key: str) -> list[dict[str, Any]]:
    return stack.s3.list_multipart_uploads(Bucket=stack.bucket, Prefix=key).get("Uploads", [])


# =========================================================================== tuspy


def test_tuspy_checksum_and_metadata(
    module_stack: Stack, uploads: TrackedUploads, patches: list[dict[str, Any]]
) -> None:
    """tuspy with upload_checksum=True (sha1 on every PATCH) and metadata: exact in S3,
    the metadata back on HEAD and on the object (Content-Type, Content-Disposition)."""
    data = payload(SIZE, seed=1)
    chunk = 3 * MIB + 7  # does not divide the part size: PATCHes end inside parts
    metadata = {"filename": "résumé.pdf", "filetype": "application/pdf"}
    uploader = tus.TusClient(module_stack.files_url).uploader(
        file_stream=io.BytesIO(data),
        chunk_size=chunk,
        metadata=metadata,
        upload_checksum=True,
    )
    with_deadline(uploader.upload, UPLOAD_TIMEOUT, "tuspy upload")
    uploads.track(uploader.url)

    assert [(p["offset"], p["length"]) for p in patches] == [
        (o, min(chunk, SIZE - o)) for o in range(0, SIZE, chunk)
    ]
    assert [p["checksum"] for p in patches] == [
        checksum("sha1", data[p["offset"] : p["offset"] + p["length"]]) for p in patches
    ]
    assert all(p["status"] == 204 for p in patches), patches
    uploads.assert_stored(uploader.url, data)

    head = uploads.head(uploader.url)
    sent = dict(pair.split(" ") for pair in head.headers["Upload-Metadata"].split(","))
    assert base64.b64decode(sent["filename"]).decode() == "résumé.pdf"
    assert base64.b64decode(sent["filetype"]) == b"application/pdf"
    obj = module_stack.s3.head_object(
        Bucket=module_stack.bucket, Key=uploads.key(upload_id_of(uploader.url))
    )
    assert obj["ContentType"] == "application/pdf"
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf" in obj["ContentDisposition"]


def test_tuspy_resumes_from_its_url_storage(
    module_stack: Stack, uploads: TrackedUploads, patches: list[dict[str, Any]], tmp_path
) -> None:
    """A first uploader stops half-way (inside the second part); a new uploader for the same
    file finds the URL in tuspy's FileStorage, asks the offset (HEAD) and finishes, both
    with checksums."""
    data = payload(SIZE, seed=2)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    storage_path = tmp_path / "tus-urls.json"
    stop_at = 7 * MIB + 3

    def uploader() -> Any:
        return tus.TusClient(module_stack.files_url).uploader(
            file_path=str(source),
            chunk_size=2 * MIB + 1,
            metadata={"filename": "source.bin"},
            store_url=True,
            url_storage=FileStorage(str(storage_path)),
            upload_checksum=True,
        )

    first = with_deadline(uploader, 30, "the first uploader")
    with_deadline(lambda: first.upload(stop_at=stop_at), UPLOAD_TIMEOUT, "the first half")
    url = first.url
    uploads.track(url)
    assert uploads.offset(url) == stop_at
    assert record(module_stack, url)["state"] == "receiving"

    second = with_deadline(uploader, 30, "a new uploader finding the URL")
    assert second.url == url
    assert second.offset == stop_at  # from the server (HEAD)
    sent_before = len(patches)
    with_deadline(second.upload, UPLOAD_TIMEOUT, "the second half")
    resumed = patches[sent_before:]
    assert resumed[0]["offset"] == stop_at
    assert all(p["status"] == 204 and p["checksum"].startswith("sha1 ") for p in resumed)
    uploads.assert_stored(url, data)


def test_tuspy_retries_a_checksum_mismatch(
    module_stack: Stack, uploads: TrackedUploads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second PATCH arrives with a wrong checksum (as if corrupted on the way): 460,
    nothing of it kept (offset, committed parts and the tail as before); tuspy, with
    retries, asks the offset again and resends the chunk."""
    data = payload(SIZE, seed=3)
    chunk = 3 * MIB + 7  # the second chunk crosses the first part boundary
    seen: list[tuple[int, int]] = []
    after_460: list[tuple[dict[str, str], dict[str, str], int | None]] = []
    real_patch = tusclient.request.requests.patch

    def corrupting(url: str, data: bytes, headers: dict[str, str], **kwargs: Any) -> Any:
        offset = int(headers["upload-offset"])
        if offset == chunk and len(seen) == 1:  # the first try of the second chunk
            headers = {**headers, "upload-checksum": checksum("sha1", data + b"!")}
        response = real_patch(url, data=data, headers=headers, **kwargs)
        seen.append((offset, response.status_code))
        if response.status_code == 460:
            parts = module_stack.redis.hgetall(f"{upload_key(upload_id_of(url))}:parts")
            after_460.append((record(module_stack, url), parts, tail_size(module_stack, url)))
        return response

    monkeypatch.setattr(tusclient.request.requests, "patch", corrupting)
    uploader = tus.TusClient(module_stack.files_url).uploader(
        file_stream=io.BytesIO(data),
        chunk_size=chunk,
        upload_checksum=True,
        retries=2,
        retry_delay=0,
    )
    with_deadline(uploader.upload, UPLOAD_TIMEOUT, "tuspy upload")
    uploads.track(uploader.url)

    assert seen[:3] == [(0, 204), (chunk, 460), (chunk, 204)], seen
    assert [status for _, status in seen[3:]] == [204] * (len(seen) - 3)
    ((kept, parts, tail),) = after_460
    assert int(kept["offset"]) == chunk and int(kept["committed"]) == 0
    assert parts == {}  # the refused body would have filled the first part
    assert tail == chunk  # the first chunk only: nothing of the refused body
    uploads.assert_stored(uploader.url, data)


def test_tuspy_async_uploader_with_checksum(module_stack: Stack, uploads: TrackedUploads) -> None:
    data = payload(6 * MIB + 1, seed=4)
    uploader = tus.TusClient(module_stack.files_url).async_uploader(
        file_stream=io.BytesIO(data), chunk_size=4 * MIB, upload_checksum=True
    )
    with_deadline(lambda: asyncio.run(uploader.upload()), UPLOAD_TIMEOUT, "async upload")
    uploads.assert_stored(uploader.url, data)


# =========================================================================== creation-with-upload


@pytest.mark.parametrize(
    ("first", "with_checksum"),
    [(SIZE, None), (P + 1, "good"), (P + 1, "bad")],
    ids=["whole-file", "part+1-with-checksum", "part+1-bad-checksum"],
)
def test_creation_with_upload(
    module_stack: Stack, uploads: TrackedUploads, first: int, with_checksum: str | None
) -> None:
    """A POST with a body (Content-Type application/offset+octet-stream): 201, and
    Upload-Offset says what was kept; PATCHes go on from there. With a wrong
    Upload-Checksum the upload is still created, with nothing kept (offset 0)."""
    data = payload(SIZE, seed=first)
    headers = {"Upload-Length": str(SIZE)}
    if with_checksum:
        body = data[:first] + (b"?" if with_checksum == "bad" else b"")
        headers["Upload-Checksum"] = checksum("sha256", body)
    r = create(module_stack, headers, data[:first])
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    uploads.track(url)
    kept = 0 if with_checksum == "bad" else first
    assert r.headers["Upload-Offset"] == str(kept)
    assert "Upload-Expires" in r.headers or kept == SIZE
    assert uploads.offset(url) == kept
    if kept < SIZE:
        r = patch(url, kept, data[kept:])
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(SIZE)
    # A first body of 5 MiB or more, shorter than the upload, sets the part size (also
    # when its checksum then failed: nothing of it was kept, the upload was still at 0).
    uploads.assert_stored(url, data, first if first < SIZE else P)


# =========================================================================== creation-defer-length


@pytest.mark.parametrize("size", [2 * P, P + 10], ids=["at-part-end", "mid-part"])
def test_deferred_length_declared_by_an_empty_patch(
    module_stack: Stack, uploads: TrackedUploads, size: int
) -> None:
    """Upload-Defer-Length: 1, every byte without a length, then an empty PATCH with
    Upload-Length. (A length declared with the last bytes, as tus-js-client does it:
    test_tus_js_extensions.py.)"""
    data = payload(size, seed=size)
    r = create(module_stack, {"Upload-Defer-Length": "1"})
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    uploads.track(url)
    head = uploads.head(url)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers

    for start in range(0, size, 4 * MIB):
        end = min(start + 4 * MIB, size)
        r = patch(url, start, data[start:end])
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Offset"] == str(end)
    assert uploads.head(url).headers["Upload-Defer-Length"] == "1"
    assert record(module_stack, url)["state"] == "receiving"
    r = patch(url, size, b"", {"Upload-Length": str(size)})
    assert r.status_code == 204, r.text
    assert r.headers["Upload-Offset"] == str(size)
    uploads.assert_stored(url, data)
    assert "Upload-Defer-Length" not in uploads.head(url).headers


# =========================================================================== checksum


ALGORITHMS = ["sha1", "sha256", "sha512", "md5", "crc32"]


def test_every_checksum_algorithm_and_mismatches(
    module_stack: Stack, uploads: TrackedUploads
) -> None:
    """Five PATCHes, one per algorithm, each first sent with a wrong checksum: 460, and the
    upload as before (offset, committed bytes, parts, tail); then right: 204. Exact."""
    data = payload(SIZE, seed=5)
    r = create(module_stack, {"Upload-Length": str(SIZE)})
    url = r.headers["Location"]
    uploads.track(url)
    step = -(-SIZE // len(ALGORITHMS))  # ~2.4 MiB: some PATCHes cross a part boundary
    parts_key = f"{upload_key(upload_id_of(url))}:parts"
    for algorithm, start in zip(ALGORITHMS, range(0, SIZE, step), strict=True):
        body = data[start : start + step]
        before = (record(module_stack, url), module_stack.redis.hgetall(parts_key))
        tail_before = tail_size(module_stack, url)
        wrong = patch(url, start, body, {"Upload-Checksum": checksum(algorithm, body[::-1])})
        assert wrong.status_code == 460, wrong.text
        assert wrong.json()["error"] == "checksum_mismatch"
        after = (record(module_stack, url), module_stack.redis.hgetall(parts_key))
        assert {k: v for k, v in after[0].items() if k != "expires_at"} == {
            k: v for k, v in before[0].items() if k != "expires_at"
        }, algorithm
        assert after[1] == before[1], algorithm
        assert (tail_size(module_stack, url) or 0) == (tail_before or 0), algorithm
        assert uploads.offset(url) == start

        right = patch(url, start, body, {"Upload-Checksum": checksum(algorithm, body)})
        assert right.status_code == 204, (algorithm, right.text)
        assert right.headers["Upload-Offset"] == str(start + len(body))
    uploads.assert_stored(url, data)


def deferred_upload_with(stack: Stack, uploads: TrackedUploads, data: bytes, sent: int) -> str:
    """A deferred-length upload holding the first ``sent`` bytes of ``data``; its URL."""
    r = create(stack, {"Upload-Defer-Length": "1"})
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    uploads.track(url)
    r = patch(url, 0, data[:sent])
    assert r.status_code == 204, r.text
    return url


def test_checksum_mismatch_keeps_no_declared_length(
    module_stack: Stack, uploads: TrackedUploads
) -> None:
    """The PATCH of a deferred-length upload that declares Upload-Length with the last
    bytes fails its checksum: 460, and nothing of that PATCH is kept, its Upload-Length
    included (HEAD still says Upload-Defer-Length: 1). The retry completes the upload."""
    size = P + 1000
    data = payload(size, seed=9)
    sent = size - 600
    url = deferred_upload_with(module_stack, uploads, data, sent)
    body, declare = data[sent:], {"Upload-Length": str(size)}

    wrong = patch(url, sent, body, {**declare, "Upload-Checksum": checksum("sha1", b"?" + body)})
    assert wrong.status_code == 460, wrong.text
    kept = record(module_stack, url)
    assert int(kept["offset"]) == sent
    assert kept["length"] == "", f"the refused PATCH's Upload-Length was kept: {kept}"
    head = uploads.head(url)
    assert head.headers.get("Upload-Defer-Length") == "1"
    assert "Upload-Length" not in head.headers

    retry = patch(url, sent, body, {**declare, "Upload-Checksum": checksum("sha1", body)})
    assert retry.status_code == 204, retry.text
    uploads.assert_stored(url, data, sent)  # the first PATCH's length is the part size


def test_empty_declaring_patch_retried_after_a_460_completes(
    module_stack: Stack, uploads: TrackedUploads
) -> None:
    """Every byte sent, then an empty PATCH declaring Upload-Length with a wrong checksum:
    460. Its retry (right checksum) answers 204 with Upload-Offset == Upload-Length, so the
    client is done: the upload must then be completed (last bytes shipped, object made),
    not left receiving until it expires."""
    size = P + 1000
    data = payload(size, seed=10)
    url = deferred_upload_with(module_stack, uploads, data, size)
    declare = {"Upload-Length": str(size)}

    wrong = patch(url, size, b"", {**declare, "Upload-Checksum": checksum("sha1", b"?")})
    assert wrong.status_code == 460, wrong.text
    retry = patch(url, size, b"", {**declare, "Upload-Checksum": checksum("sha1", b"")})
    assert retry.status_code == 204, retry.text
    assert retry.headers["Upload-Offset"] == str(size)
    # Offset == length is only ever acknowledged once every byte is in S3 and the upload
    # moved on to assembling (the completion job enqueued).
    state = record(module_stack, url)["state"]
    assert state in ("assembling", "completed"), f"204 at the end, but the upload is {state}"
    uploads.assert_stored(url, data, size)  # the first PATCH's length is the part size


# =========================================================================== concatenation


def test_concatenation(module_stack: Stack, uploads: TrackedUploads) -> None:
    """Partial uploads (their bytes on the POST), one unfinished partial refused, a final
    upload of the finished ones assembled by the worker; PATCH on the final one is 403."""
    sizes = [1000, P + 7, 0, 2000]
    pieces = [payload(n, seed=100 + i) for i, n in enumerate(sizes)]
    urls = []
    for piece in pieces:
        r = create(
            module_stack,
            {"Upload-Length": str(len(piece)), "Upload-Concat": "partial"},
            piece or None,
        )
        assert r.status_code == 201, r.text
        urls.append(r.headers["Location"])
        uploads.track(urls[-1])
        assert uploads.head(urls[-1]).headers["Upload-Concat"] == "partial"
    unfinished = create(module_stack, {"Upload-Length": "10", "Upload-Concat": "partial"})
    uploads.track(unfinished.headers["Location"])

    r = create(
        module_stack,
        {"Upload-Concat": f"final;{' '.join([*urls, unfinished.headers['Location']])}"},
    )
    assert r.status_code == 400 and r.json()["error"] == "partial_not_finished", r.text

    r = create(
        module_stack,
        {
            "Upload-Concat": f"final;{' '.join(urls)}",
            "Upload-Metadata": f"filetype {b64(b'text/plain')}",
        },
    )
    assert r.status_code == 201, r.text
    final_url = r.headers["Location"]
    final_id = uploads.track(final_url)
    refused = patch(final_url, 0, b"x")
    assert refused.status_code == 403 and refused.json()["error"] == "final_upload"

    uploads.wait_completed(final_id)
    head = uploads.head(final_url)
    total = sum(sizes)
    assert head.headers["Upload-Length"] == str(total)
    assert head.headers["Upload-Offset"] == str(total)
    assert head.headers["Upload-Concat"] == f"final;{' '.join(urls)}"
    key = uploads.key(final_id)
    sha, stored = uploads.sha256(key)
    assert (sha, stored) == (hashlib.sha256(b"".join(pieces)).hexdigest(), total)
    assert uploads.part_sizes(key) == [P, total - P]  # small partials: re-streamed
    obj = module_stack.s3.head_object(Bucket=module_stack.bucket, Key=key)
    assert obj["ContentType"] == "text/plain"
    assert not open_multipart(module_stack, key)
    assert patch(final_url, total, b"x").status_code == 403  # still, once completed


# =========================================================================== termination


@pytest.mark.parametrize("override", [False, True], ids=["DELETE", "POST-override-DELETE"])
def test_termination(module_stack: Stack, uploads: TrackedUploads, override: bool) -> None:
    """DELETE (or POST + X-HTTP-Method-Override: DELETE) of an upload with a part in S3 and
    bytes in its tail: 204, then 410; the tail is gone and the worker aborts the multipart
    upload."""
    data = payload(SIZE, seed=6)
    r = create(module_stack, {"Upload-Length": str(SIZE)})
    url = r.headers["Location"]
    upload_id = uploads.track(url)
    # A small first PATCH keeps the configured part size: the second leaves a tail.
    assert patch(url, 0, data[:100_000]).status_code == 204
    assert patch(url, 100_000, data[100_000 : P + 100]).status_code == 204
    key = uploads.key(upload_id)
    assert len(open_multipart(module_stack, key)) == 1
    assert tail_size(module_stack, url) == 100

    if override:
        r = requests.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"}, timeout=10)
    else:
        r = requests.delete(url, headers=TUS, timeout=10)
    assert r.status_code == 204, r.text
    assert uploads.head(url).status_code == 410
    assert patch(url, P + 100, data[P + 100 :]).status_code == 410
    assert requests.delete(url, headers=TUS, timeout=10).status_code == 410
    assert tail_size(module_stack, url) is None
    poll(
        lambda: True if not open_multipart(module_stack, key) else None,
        30,
        "for the clean-up job to abort the multipart upload",
    )
    assert record(module_stack, url)["state"] == "terminated"
    assert not module_stack.s3.list_objects_v2(Bucket=module_stack.bucket, Prefix=key).get(
        "Contents"
    )


# =========================================================================== expiration


def http_date(value: str) -> float:
    parsed = email.utils.parsedate_to_datetime(value)
    assert parsed.tzinfo is not None, value
    return parsed.timestamp()


def test_expiration(module_stack: Stack, uploads: TrackedUploads) -> None:
    """Upload-Expires (an HTTP date, a day ahead) on POST, PATCH and HEAD of an unfinished
    upload, none once it is complete; past its expiry, 410 at once, and the sweep job (run
    by the worker) marks it expired and aborts its multipart upload."""
    data = payload(P + 100, seed=7)
    r = create(module_stack, {"Upload-Length": str(len(data))})
    url = r.headers["Location"]
    upload_id = uploads.track(url)
    now = time.time()
    assert abs(http_date(r.headers["Upload-Expires"]) - (now + 86400)) < 60
    r = patch(url, 0, data[: P + 1])
    assert abs(http_date(r.headers["Upload-Expires"]) - (now + 86400)) < 60
    assert abs(http_date(uploads.head(url).headers["Upload-Expires"]) - (now + 86400)) < 60

    done = create(module_stack, {"Upload-Length": "3"}, b"abc")
    assert done.headers["Upload-Offset"] == "3"
    uploads.track(done.headers["Location"])
    assert "Upload-Expires" not in done.headers  # complete: nothing left to expire
    assert "Upload-Expires" not in uploads.head(done.headers["Location"]).headers

    # A day passes (for this upload): its expiry moves into the past.
    past = time.time() - 1
    module_stack.redis.hset(upload_key(upload_id), "expires_at", past)
    module_stack.redis.zadd("rindle:expiry", {upload_id: past})
    assert uploads.head(url).status_code == 410
    assert patch(url, P + 1, data[P + 1 :]).status_code == 410
    key = uploads.key(upload_id)
    assert len(open_multipart(module_stack, key)) == 1

    queue = Queue(
        module_stack.env.get("RINDLE_QUEUE", "rindle"), connection=jobs_redis(module_stack)
    )
    job = queue.enqueue("rindle.jobs.sweep_expired")
    try:
        result = poll(job.return_value, 30, "for the sweep job")
        assert result["expired"] >= 1, result
    finally:
        job.delete()
        queue.connection.close()
    assert record(module_stack, url)["state"] == "expired"
    assert not open_multipart(module_stack, key)
    assert uploads.head(url).status_code == 410


def jobs_redis(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.env["REDIS_URL"])  # rq needs undecoded replies


def test_options_advertises_the_extensions(module_stack: Stack) -> None:
    r = requests.options(module_stack.files_url, timeout=10)
    assert r.status_code == 204
    assert set(r.headers["Tus-Extension"].split(",")) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "termination",
        "checksum",
        "concatenation",
    }
    assert set(r.headers["Tus-Checksum-Algorithm"].split(",")) == set(ALGORITHMS)


# =========================================================================== CORS


def tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def test_cors_for_a_browser(module_stack: Stack, uploads: TrackedUploads) -> None:
    """What a browser page at ORIGIN does, through gunicorn: preflights, then a creation,
    PATCHes as POST + X-HTTP-Method-Override (as tus-js-client's overridePatchMethod),
    a HEAD and an error it must be able to read; another origin gets no CORS grant."""
    data = payload(P + 5, seed=8)
    origin = {"Origin": ORIGIN}

    def preflight(url: str, method: str, headers: str, who: str = ORIGIN) -> requests.Response:
        return requests.options(
            url,
            headers={
                "Origin": who,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": headers,
            },
            timeout=10,
        )

    create_headers = "tus-resumable, upload-length, upload-metadata, content-type"
    r = preflight(module_stack.files_url, "POST", create_headers)
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in {m.upper() for m in tokens(r.headers["Access-Control-Allow-Methods"])}
    assert tokens(create_headers) <= tokens(r.headers["Access-Control-Allow-Headers"])
    assert int(r.headers["Access-Control-Max-Age"]) > 0

    r = create(
        module_stack,
        {**origin, "Upload-Length": str(len(data)), "Upload-Metadata": f"filename {b64(b'a.bin')}"},
    )
    assert r.status_code == 201
    url = r.headers["Location"]
    uploads.track(url)
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = tokens(r.headers["Access-Control-Expose-Headers"])
    assert {
        "location",
        "upload-offset",
        "upload-length",
        "tus-resumable",
        "upload-expires",
        "upload-metadata",
        "upload-concat",
        "tus-version",
        "tus-extension",
    } <= exposed

    patch_headers = "tus-resumable, upload-offset, content-type, upload-checksum, "
    patch_headers += "x-http-method-override"
    for method in ("PATCH", "POST", "HEAD", "DELETE"):
        r = preflight(url, method, patch_headers)
        assert r.headers["Access-Control-Allow-Origin"] == ORIGIN, method
        allowed = {m.upper() for m in tokens(r.headers["Access-Control-Allow-Methods"])}
        assert method in allowed
        assert tokens(patch_headers) <= tokens(r.headers["Access-Control-Allow-Headers"])

    def override_patch(offset: int, body: bytes) -> requests.Response:
        return requests.post(
            url,
            headers={
                **TUS,
                **origin,
                "X-HTTP-Method-Override": "PATCH",
                "Content-Type": OCTETS,
                "Upload-Offset": str(offset),
                "Upload-Checksum": checksum("md5", body),
            },
            data=body,
            timeout=30,
        )

    r = override_patch(0, data[:P])
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "upload-offset" in tokens(r.headers["Access-Control-Expose-Headers"])

    wrong = override_patch(3, data[3:10])  # a stale offset: the page must read the 409
    assert wrong.status_code == 409
    assert wrong.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert wrong.headers["Upload-Offset"] == str(P)

    head = requests.head(url, headers={**TUS, **origin}, timeout=10)
    assert head.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert head.headers["Upload-Offset"] == str(P)

    # Another origin: no grant (the browser hides the answer from that page).
    other = "https://evil.example.net"
    r = preflight(url, "PATCH", patch_headers, who=other)
    assert "Access-Control-Allow-Origin" not in r.headers
    assert "Access-Control-Allow-Methods" not in r.headers
    r = requests.head(url, headers={**TUS, "Origin": other}, timeout=10)
    assert "Access-Control-Allow-Origin" not in r.headers

    r = override_patch(P, data[P:])
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    uploads.assert_stored(url, data)
