"""The IETF resumable upload draft, interop version 8, over raw HTTP against gunicorn and
an rq worker: each test follows the draft's text (draft-ietf-httpbis-resumable-upload-12)
and checks the object in S3 byte for byte."""

from __future__ import annotations

import itertools
import json
import socket
from urllib.parse import urlsplit

import pytest
import requests

from tests.conftest import PART_SIZE
from tests.e2e.conftest import (
    MIB,
    TUS,
    Uploads,
    connect,
    payload,
    poll,
    read_response,
    upload_id_of,
    upload_key,
)

pytestmark = pytest.mark.e2e

DRAFT = {"Upload-Draft-Interop-Version": "8"}
PROBLEM = "https://iana.org/assignments/http-problem-types#"
# What each dialect's answers carry that the other's never may.
TUS_FIELDS = {
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "upload-expires",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
}
DRAFT_FIELDS = {"upload-complete", "upload-limit", "upload-draft-interop-version"}
MAX_SIZE = 5 * 1024 * 1024 * MIB  # RINDLE_TUS_MAX_SIZE's default: S3's largest object


def no_tus_fields(response: requests.Response) -> None:
    found = {name.lower() for name in response.headers} & TUS_FIELDS
    assert not found, f"a draft answer carries tus fields {found}"


def limits(response: requests.Response) -> dict[str, int]:
    """The Upload-Limit dictionary (its members are all Integers in the draft)."""
    members = {}
    for member in response.headers["Upload-Limit"].split(","):
        key, _, value = member.strip().partition("=")
        members[key] = int(value)
    return members


def create(stack, complete: bool, data: bytes = b"", **headers: str) -> requests.Response:
    response = requests.post(
        stack.files_url,
        data=data,
        headers={**DRAFT, "Upload-Complete": "?1" if complete else "?0", **headers},
        timeout=60,
    )
    no_tus_fields(response)
    return response


def append(url: str, offset: int, data: bytes, complete: bool, **headers: str):
    response = requests.patch(
        url,
        data=data,
        headers={
            **DRAFT,
            "Upload-Offset": str(offset),
            "Upload-Complete": "?1" if complete else "?0",
            "Content-Type": "application/partial-upload",
            **headers,
        },
        timeout=60,
    )
    no_tus_fields(response)
    return response


def head(url: str) -> requests.Response:
    response = requests.head(url, headers=DRAFT, timeout=30)
    no_tus_fields(response)
    return response


def draft_patch_head(path: str, offset: int, complete: bool, length: int | None) -> bytes:
    """The head of an append over a raw socket; chunked content when ``length`` is None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nUpload-Draft-Interop-Version: 8\r\n"
        f"Upload-Complete: {'?1' if complete else '?0'}\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: application/partial-upload\r\n{framing}\r\n\r\n"
    ).encode()


def test_options_announces_the_limits(module_stack):
    r = requests.options(module_stack.files_url, headers=DRAFT, timeout=10)
    assert r.status_code == 204
    assert limits(r) == {"max-size": MAX_SIZE}
    no_tus_fields(r)


def test_creation_complete_in_one_request(module_stack, uploads: Uploads):
    data = payload(7 * MIB + 3, seed=81)  # two parts
    r = create(
        module_stack,
        True,
        data,
        **{
            "Content-Type": "image/png",
            "Content-Disposition": 'inline; filename="photo.png"',
        },
    )
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    uploads.track(url)
    assert r.headers["Upload-Complete"] == "?1"
    assert r.headers["Upload-Offset"] == str(len(data))
    assert limits(r)["max-size"] == MAX_SIZE
    uploads.assert_stored(url, data)
    obj = module_stack.s3.head_object(
        Bucket=module_stack.bucket, Key=uploads.key(upload_id_of(url))
    )
    assert obj["ContentType"] == "image/png"
    assert 'filename="photo.png"' in obj["ContentDisposition"]

    h = head(url)  # the completed upload, as an offset retrieval sees it
    assert h.status_code == 204
    assert h.headers["Upload-Complete"] == "?1"
    assert h.headers["Upload-Offset"] == h.headers["Upload-Length"] == str(len(data))
    assert h.headers["Cache-Control"] == "no-store"


def test_empty_creation_then_appends_of_any_size(module_stack, uploads: Uploads):
    data = payload(12 * MIB + 5, seed=82)
    r = create(module_stack, False)  # no length known: the last append will tell
    assert r.status_code == 201
    url = r.headers["Location"]
    uploads.track(url)
    assert r.headers["Upload-Complete"] == "?0"
    assert r.headers["Upload-Offset"] == "0"
    created = limits(r)
    # An upload of unknown length holds at most 10,000 parts of its part size.
    assert created["max-size"] == PART_SIZE * 10_000
    assert 0 < created["max-age"] <= 86400

    cuts = [0, 3 * MIB, 3 * MIB + 1, 9 * MIB, len(data)]  # a 1-byte append too
    for start, end in itertools.pairwise(cuts):
        last = end == len(data)
        r = append(url, start, data[start:end], last)
        assert r.status_code == 204, r.text
        assert r.headers["Upload-Complete"] == ("?1" if last else "?0")
        assert r.headers["Upload-Offset"] == str(end)
        if not last:
            h = head(url)
            assert h.status_code == 204
            assert h.headers["Upload-Offset"] == str(end)
            assert h.headers["Upload-Complete"] == "?0"
            assert "Upload-Length" not in h.headers  # the client supplied none yet
            assert limits(h)["max-age"] >= created["max-age"] - 5  # its end never nears
            assert h.headers["Cache-Control"] == "no-store"
    uploads.assert_stored(url, data)
    h = head(url)
    assert h.headers["Upload-Complete"] == "?1"
    assert h.headers["Upload-Length"] == str(len(data))


def test_known_length_then_empty_completing_append(module_stack, uploads: Uploads):
    """A length told up front; the bytes first, the completion with no content."""
    data = payload(6 * MIB, seed=83)
    r = create(module_stack, False, **{"Upload-Length": str(len(data))})
    url = r.headers["Location"]
    uploads.track(url)
    assert append(url, 0, data[: 2 * MIB], False).status_code == 204
    r = append(url, 2 * MIB, data[2 * MIB :], False)
    # The length is reached: rindle completes it, and says so.
    assert r.status_code == 204 and r.headers["Upload-Complete"] == "?1"
    # The client's completing append with no content (its answer lost, or just sent):
    # answered as complete, nothing changes.
    r = append(url, len(data), b"", True)
    assert r.status_code == 204
    assert r.headers["Upload-Complete"] == "?1"
    assert r.headers["Upload-Offset"] == str(len(data))
    uploads.assert_stored(url, data)


def test_interrupted_append_resumed_after_offset_retrieval(module_stack, uploads: Uploads):
    data = payload(13 * MIB + 7, seed=84)
    r = create(module_stack, False, **{"Upload-Length": str(len(data))})
    url = r.headers["Location"]
    uploads.track(url)
    sent = 6 * MIB + 1234  # a full part and some buffered bytes
    sock, path = connect(url, timeout=30)
    sock.sendall(draft_patch_head(path, 0, True, len(data)) + data[:sent])
    sock.shutdown(socket.SHUT_WR)  # the connection drops mid-content
    sock.close()

    # Once the server is done with the cut request (an offset retrieval sooner would end
    # it, as the draft recommends, keeping only what it had read), the offset is all
    # that arrived.
    upload_id = upload_id_of(url)
    writer = f"{upload_key(upload_id)}:writer"
    poll(lambda: module_stack.redis.exists(writer) == 0 or None, 30, "the cut append to end")
    offset = int(head(url).headers["Upload-Offset"])
    assert offset == sent
    h = head(url)
    assert h.headers["Upload-Complete"] == "?0"  # a cut request never completes it
    assert h.headers["Upload-Length"] == str(len(data))
    r = append(url, offset, data[offset:], True)
    assert r.status_code == 204, r.text
    assert r.headers["Upload-Complete"] == "?1"
    uploads.assert_stored(url, data)


def test_interrupted_creation_keeps_what_it_received(module_stack, uploads: Uploads):
    data = payload(8 * MIB, seed=85)
    sent = 5 * MIB + 99
    sock, path = connect(module_stack.files_url, timeout=30)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {urlsplit(module_stack.files_url).netloc}\r\n"
        "Upload-Draft-Interop-Version: 8\r\n"
        f"Upload-Complete: ?1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data[:sent]
    )
    sock.shutdown(socket.SHUT_WR)
    # gunicorn answers (201 with the location) once the request ends, if the socket
    # still takes it; a client that lost it has no location (no 104: see the README).
    try:
        status, headers, _ = read_response(sock)
    except (ConnectionError, OSError):
        pytest.skip("the answer was lost with the connection")
    finally:
        sock.close()
    assert status == 201
    url = headers["location"]
    uploads.track(url)
    assert headers["upload-complete"] == "?0"
    assert headers["upload-offset"] == str(sent)
    r = append(url, sent, data[sent:], True)
    assert r.status_code == 204
    uploads.assert_stored(url, data)


def test_offset_mismatch_is_409_before_the_content_is_read(module_stack, uploads: Uploads):
    size = 100 * MIB
    r = create(module_stack, False, **{"Upload-Length": str(size)})
    url = r.headers["Location"]
    uploads.track(url)
    sock, path = connect(url, timeout=30)
    with sock:
        sock.sendall(draft_patch_head(path, 25, False, size))
        status, headers, body = read_response(sock)  # not one byte of content was sent
    assert status == 409
    assert headers["content-type"] == "application/problem+json"
    assert headers["upload-offset"] == "0"
    assert headers["upload-complete"] == "?0"
    problem = json.loads(body)
    assert problem["type"] == PROBLEM + "mismatching-upload-offset"
    assert problem["expected-offset"] == 0
    assert problem["provided-offset"] == 25
    assert not TUS_FIELDS & set(headers)
    assert int(head(url).headers["Upload-Offset"]) == 0


def test_inconsistent_lengths_are_refused(module_stack, uploads: Uploads):
    # Upload-Length and Content-Length of a completing creation disagree: no upload.
    before = set(module_stack.redis.scan_iter("rindle:upload:*"))
    r = create(module_stack, True, b"12345", **{"Upload-Length": "10"})
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["type"] == PROBLEM + "inconsistent-upload-length"
    assert "Location" not in r.headers
    assert set(module_stack.redis.scan_iter("rindle:upload:*")) == before

    r = create(module_stack, False, b"abc", **{"Upload-Length": "10"})
    url = r.headers["Location"]
    uploads.track(url)
    for response in (
        append(url, 3, b"defg", False, **{"Upload-Length": "11"}),  # another length
        append(url, 3, b"defg", True),  # completes at 7, not 10
        append(url, 3, b"defghijklmnop", False),  # content beyond the length
    ):
        assert response.status_code == 400, response.text
        assert response.json()["type"] == PROBLEM + "inconsistent-upload-length"
        assert response.headers["Upload-Complete"] == "?0"
    assert head(url).headers["Upload-Offset"] == "3"  # nothing was appended
    r = append(url, 3, b"defghij", True)
    assert r.status_code == 204 and r.headers["Upload-Complete"] == "?1"
    uploads.assert_stored(url, b"abcdefghij")


def test_content_beyond_the_length_ends_the_upload(module_stack, uploads: Uploads):
    """Chunked content (no Content-Length) that goes past Upload-Length: the draft has
    the server stop at the length, refuse, and make the upload invalid."""
    data = payload(6 * MIB + 10, seed=86)
    r = create(module_stack, False, **{"Upload-Length": str(len(data))})
    url = r.headers["Location"]
    uploads.track(url)
    sock, path = connect(url, timeout=30)
    with sock:
        sock.sendall(draft_patch_head(path, 0, True, None))
        body = data + b"EXTRA" * 20
        for start in range(0, len(body), MIB):
            chunk = body[start : start + MIB]
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, _headers, answer = read_response(sock)
    assert status == 400
    assert json.loads(answer)["type"] == PROBLEM + "inconsistent-upload-length"
    gone = head(url)
    assert gone.status_code == 410
    assert gone.headers["Content-Type"] == "application/problem+json"


def test_cancellation_ends_a_running_append(module_stack, uploads: Uploads):
    data = payload(20 * MIB, seed=87)
    r = create(module_stack, False, **{"Upload-Length": str(len(data))})
    url = r.headers["Location"]
    upload_id = uploads.track(url)
    sock, path = connect(url, timeout=30)
    sock.sendall(draft_patch_head(path, 0, True, len(data)) + data[: 7 * MIB])
    # The append is running (its multipart upload exists: a part is on its way) and
    # waits for more content.
    poll(
        lambda: module_stack.redis.hget(upload_key(upload_id), "upload_id") or None,
        30,
        "for the append's first part",
    )
    assert module_stack.redis.exists(f"{upload_key(upload_id)}:writer")
    r = requests.delete(url, headers=DRAFT, timeout=30)
    assert r.status_code == 204
    no_tus_fields(r)
    # The running append ended: its connection is answered or closed, not left waiting.
    with sock:
        sock.settimeout(30)
        try:
            status, _headers, _body = read_response(sock)
            assert status >= 400
        except (ConnectionError, OSError):
            pass
    assert not module_stack.redis.exists(f"{upload_key(upload_id)}:writer")
    h = head(url)
    assert h.status_code == 410
    assert h.headers["Content-Type"] == "application/problem+json"
    r = append(url, 0, b"x", False)
    assert r.status_code == 410

    def multipart_aborted() -> bool | None:
        listed = module_stack.s3.list_multipart_uploads(
            Bucket=module_stack.bucket, Prefix=uploads.key(upload_id)
        )
        return not listed.get("Uploads") or None

    poll(multipart_aborted, 60, "for the clean-up job to abort the multipart upload")


def test_limits_refuse_an_upload_too_large(module_stack):
    r = create(module_stack, False, **{"Upload-Length": str(MAX_SIZE + 1)})
    assert r.status_code == 413
    assert limits(r)["max-size"] == MAX_SIZE
    assert "Location" not in r.headers


def test_each_dialect_sees_only_its_own_fields_on_one_upload(module_stack, uploads: Uploads):
    data = payload(3 * MIB, seed=88)
    # Created by a tus client...
    r = requests.post(
        module_stack.files_url, headers={**TUS, "Upload-Length": str(len(data))}, timeout=10
    )
    url = r.headers["Location"]
    uploads.track(url)
    tus_answers = [r]
    tus_answers.append(
        requests.patch(
            url,
            data=data[:MIB],
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=10,
        )
    )
    # ... continued by a draft client ...
    h = head(url)
    assert h.headers["Upload-Offset"] == str(MIB)
    assert h.headers["Upload-Length"] == str(len(data))
    r = append(url, MIB, data[MIB : 2 * MIB], False)
    assert r.status_code == 204
    # ... and finished by the tus client.
    tus_answers.append(requests.head(url, headers=TUS, timeout=10))
    assert tus_answers[-1].headers["Upload-Offset"] == str(2 * MIB)
    tus_answers.append(
        requests.patch(
            url,
            data=data[2 * MIB :],
            headers={
                **TUS,
                "Upload-Offset": str(2 * MIB),
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=10,
        )
    )
    tus_answers.append(requests.options(module_stack.files_url, timeout=10))
    for answer in tus_answers:
        assert answer.status_code < 300, answer.text
        found = {name.lower() for name in answer.headers} & DRAFT_FIELDS
        assert not found, f"a tus answer carries draft fields {found}"
    uploads.assert_stored(url, data)
