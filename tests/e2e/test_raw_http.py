"""Exact protocol cases over raw sockets against gunicorn: what requests cannot express."""

from __future__ import annotations

import socket

import pytest
import requests

from tests.e2e.conftest import TUS, Uploads, connect, payload, read_response

pytestmark = pytest.mark.e2e


def create(stack, length: int) -> str:
    r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": str(length)}, timeout=10)
    assert r.status_code == 201
    return r.headers["Location"]


def test_wrong_offset_is_refused_before_the_body_is_sent(module_stack, uploads: Uploads):
    url = create(module_stack, 100 * 1024 * 1024)
    uploads.track(url)
    sock, path = connect(url)
    with sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 5\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
        )
        status, _headers, body = read_response(sock)  # not one body byte was sent
    assert status == 409
    assert b"offset_mismatch" in body
    assert uploads.offset(url) == 0


def test_chunked_body_beyond_the_length_keeps_what_fits_then_413(module_stack, uploads: Uploads):
    data = payload(6 * 1024 * 1024 + 10, seed=7)
    url = create(module_stack, len(data))
    sock, path = connect(url)
    with sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        for start in range(0, len(data) + 100, 1024 * 1024):
            chunk = (data + b"EXTRA" * 20)[start : start + 1024 * 1024]
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 413
    assert b"exceeds_upload_length" in body
    assert headers["upload-offset"] == str(len(data))
    uploads.assert_stored(url, data)


def test_client_gone_mid_body_keeps_what_arrived(module_stack, uploads: Uploads):
    data = payload(7 * 1024 * 1024 + 3, seed=3)
    url = create(module_stack, len(data))
    sent = 6 * 1024 * 1024 + 1234  # one full part and some tail
    sock, path = connect(url)
    sock.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[:sent]
    )
    sock.shutdown(socket.SHUT_WR)
    sock.close()

    from tests.e2e.conftest import poll

    poll(lambda: uploads.offset(url) == sent or None, 30, "for the kept offset")
    r = requests.patch(
        url,
        data=data[sent:],
        headers={
            **TUS,
            "Upload-Offset": str(sent),
            "Content-Type": "application/offset+octet-stream",
        },
        timeout=30,
    )
    assert r.status_code == 204
    uploads.assert_stored(url, data)
