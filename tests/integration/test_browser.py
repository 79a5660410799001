"""What browser clients need: CORS, method override, downloads, object attributes."""

from __future__ import annotations

import base64

import pytest
import requests

from app import create_app
from rindle import Settings
from tests.integration.conftest import PART, TUS, Tus, random_bytes

pytestmark = pytest.mark.integration


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


@pytest.fixture
def app_with(app, monkeypatch):
    """The test app with extra settings."""

    def make(**env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return create_app(Settings.from_env())

    return make


def test_cors_preflight_allows_every_tus_header(app_with):
    client = app_with(RINDLE_CORS_ORIGINS="https://app.example.com").test_client()
    r = client.options(
        "/files/abc",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable, upload-offset, content-type, "
            "upload-checksum, upload-concat, x-http-method-override",
        },
    )
    assert r.status_code in (200, 204)
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    for header in ("tus-resumable", "upload-offset", "upload-checksum", "upload-concat"):
        assert header in allowed


def test_cors_exposes_tus_headers_and_refuses_other_origins(app_with):
    client = app_with(RINDLE_CORS_ORIGINS="https://app.example.com").test_client()
    r = client.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Origin": "https://app.example.com"}
    )
    assert r.status_code == 201
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {
        "location",
        "upload-offset",
        "upload-expires",
        "upload-checksum",
        "tus-resumable",
        "upload-metadata",
        "upload-length",
    } <= exposed
    other = client.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Origin": "https://evil.example.com"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_headers_unless_configured(client):
    r = client.post("/files/", headers={**TUS, "Upload-Length": "3", "Origin": "https://x.io"})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_post_with_method_override_is_a_patch(tus):
    upload_id = tus.create(5)
    r = tus.client.post(
        f"/files/{upload_id}",
        data=b"hello",
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "5"
    r = tus.client.post(f"/files/{upload_id}", headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status_code == 204
    assert tus.head(upload_id).status_code == 410


def test_filename_and_filetype_become_object_attributes(app, tus, rq_burst, s3_client):
    meta = f"filename {b64('rapport été.pdf')},filetype {b64('application/pdf')}"
    data = random_bytes(PART + 10)
    upload_id = tus.create(len(data), **{"Upload-Metadata": meta})
    assert tus.patch(upload_id, 0, data).status_code == 204
    rq_burst()
    head = s3_client.head_object(Bucket=app.config["RINDLE"].s3_bucket, Key="uploads/" + upload_id)
    assert head["ContentType"] == "application/pdf"
    assert "filename*=UTF-8''rapport%20%C3%A9t%C3%A9.pdf" in head["ContentDisposition"]


def test_a_bogus_filetype_is_not_passed_on(app, tus, rq_burst, s3_client):
    meta = f"filetype {b64('text/html; x=<script>')}"
    upload_id = tus.create(3, **{"Upload-Metadata": meta})
    assert tus.patch(upload_id, 0, b"abc").status_code == 204
    rq_burst()
    head = s3_client.head_object(Bucket=app.config["RINDLE"].s3_bucket, Key="uploads/" + upload_id)
    assert "script" not in head["ContentType"]


def test_metadata_beyond_the_bound_is_400(client, rdb):
    r = client.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Upload-Metadata": "k " + b64("x" * 4000)}
    )
    assert r.status_code == 400
    assert r.get_json()["error"] == "metadata_too_large"
    assert rdb.keys("rindle:upload:*") == []


def test_get_redirects_to_a_presigned_url_of_the_exact_bytes(tus, rq_burst):
    data = random_bytes(1000)
    upload_id = tus.create(len(data))
    assert tus.client.get(f"/files/{upload_id}").status_code == 409  # not there yet
    assert tus.patch(upload_id, 0, data).status_code == 204
    rq_burst()
    r = tus.client.get(f"/files/{upload_id}")
    assert r.status_code == 302
    assert requests.get(r.headers["Location"], timeout=10).content == data


def test_get_streams_with_range_when_configured(app_with, rq_burst):
    client = app_with(RINDLE_DOWNLOAD="stream").test_client()
    tus = Tus(client)
    data = random_bytes(PART + 500)
    upload_id = tus.create(len(data), **{"Upload-Metadata": f"filetype {b64('image/png')}"})
    assert tus.patch(upload_id, 0, data).status_code == 204
    rq_burst()
    whole = client.get(f"/files/{upload_id}")
    assert whole.status_code == 200 and whole.data == data
    assert whole.headers["Content-Type"] == "image/png"
    part = client.get(f"/files/{upload_id}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    bad = client.get(f"/files/{upload_id}", headers={"Range": f"bytes={len(data) + 10}-"})
    assert bad.status_code == 416
    assert client.get("/files/unknown").status_code == 404
