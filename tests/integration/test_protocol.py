"""tus 1.0.0 core protocol answers, in-process against real Redis and S3."""

from __future__ import annotations

import base64
import re

import pytest

from tests.integration.conftest import PART, TUS, object_bytes, random_bytes, sha256

pytestmark = pytest.mark.integration


def test_options_advertises_the_server(client):
    r = client.options("/files/")
    assert r.status_code == 204
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.headers["Tus-Version"] == "1.0.0"
    assert "creation" in r.headers["Tus-Extension"].split(",")
    assert int(r.headers["Tus-Max-Size"]) == 1024 * 1024 * 1024


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"])
def test_missing_or_unsupported_tus_resumable_is_412(client, version):
    headers = {"Upload-Length": "10"}
    if version:
        headers["Tus-Resumable"] = version
    r = client.post("/files/", headers=headers)
    assert r.status_code == 412
    assert r.headers["Tus-Version"] == "1.0.0"
    assert r.get_json()["error"] == "unsupported_version"


def test_create_answers_an_absolute_location_with_an_unguessable_id(client):
    ids = set()
    for _ in range(3):
        r = client.post("/files/", headers={**TUS, "Upload-Length": "10"})
        assert r.status_code == 201
        assert r.headers["Tus-Resumable"] == "1.0.0"
        location = r.headers["Location"]
        assert re.fullmatch(r"http://localhost/files/[A-Za-z0-9_-]{22,}", location)
        ids.add(location.rsplit("/", 1)[1])
    assert len(ids) == 3


def test_location_honours_proxy_headers_when_trusted(redis_url, s3_env, tmp_path, monkeypatch):
    from app import create_app
    from rindle import Settings

    for name, value in {
        **s3_env,
        "REDIS_URL": redis_url,
        "RINDLE_TMP_DIR": str(tmp_path),
        "RINDLE_TRUSTED_PROXIES": "1",
    }.items():
        monkeypatch.setenv(name, value)
    client = create_app(Settings.from_env()).test_client()
    r = client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Length": "1",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "uploads.example.com",
        },
    )
    assert r.headers["Location"].startswith("https://uploads.example.com/files/")


def test_location_ignores_proxy_headers_by_default(client):
    r = client.post(
        "/files/",
        headers={**TUS, "Upload-Length": "1", "X-Forwarded-Host": "evil.example.com"},
    )
    assert r.headers["Location"].startswith("http://localhost/files/")


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_header"),
        ({"Upload-Length": "-1"}, "invalid_header"),
        ({"Upload-Length": "ten"}, "invalid_header"),
        ({"Upload-Length": "10", "Upload-Metadata": "name not-base64!"}, "invalid_metadata"),
        ({"Upload-Length": "10", "Upload-Metadata": "a YQ==,a YQ=="}, "invalid_metadata"),
        ({"Upload-Defer-Length": "1", "Upload-Length": "10"}, "invalid_length"),
        ({"Upload-Defer-Length": "2"}, "invalid_header"),
    ],
)
def test_bad_creation_is_400_and_creates_nothing(client, rdb, headers, code):
    r = client.post("/files/", headers={**TUS, **headers})
    assert r.status_code == 400
    assert r.get_json()["error"] == code
    assert rdb.keys("rindle:upload:*") == []


def test_length_above_the_maximum_is_413(client, rdb):
    r = client.post("/files/", headers={**TUS, "Upload-Length": str(1024**3 + 1)})
    assert r.status_code == 413
    assert r.get_json()["error"] == "upload_too_large"
    assert rdb.keys("rindle:upload:*") == []


def test_head_reports_offset_length_and_metadata(tus):
    meta = "filename " + base64.b64encode(b"report.pdf").decode() + ",private"
    upload_id = tus.create(100, **{"Upload-Metadata": meta})
    tus.patch(upload_id, 0, b"x" * 40)
    r = tus.head(upload_id)
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "40"
    assert r.headers["Upload-Length"] == "100"
    assert r.headers["Upload-Metadata"] == meta
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    assert r.get_data() == b""


def test_unknown_upload_is_404(tus):
    assert tus.head("nope").status_code == 404
    r = tus.patch("nope", 0, b"x")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"


def test_ended_upload_is_410(app, tus):
    upload_id = tus.create(10)
    store = app.extensions["rindle"].uploads
    assert store.set_state(upload_id, "terminated", ("created",))
    assert tus.head(upload_id).status_code == 410
    r = tus.patch(upload_id, 0, b"x")
    assert r.status_code == 410 and r.get_json()["error"] == "gone"


def test_patch_with_wrong_content_type_is_415(tus, rdb):
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"abc", **{"Content-Type": "application/octet-stream"})
    assert r.status_code == 415
    assert r.get_json()["error"] == "unsupported_media_type"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


@pytest.mark.parametrize("offset", ["-1", "abc", "", "1.5"])
def test_malformed_offset_is_400(tus, offset):
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"abc", **{"Upload-Offset": offset})
    assert r.status_code == 400
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


def test_wrong_offset_is_409_and_keeps_the_upload(tus):
    upload_id = tus.create(10)
    assert tus.patch(upload_id, 0, b"abc").status_code == 204
    r = tus.patch(upload_id, 1, b"bcd")
    assert r.status_code == 409
    assert r.get_json()["error"] == "offset_mismatch"
    assert tus.head(upload_id).headers["Upload-Offset"] == "3"


def test_body_beyond_the_length_is_413_before_reading(tus):
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"x" * 11)
    assert r.status_code == 413
    assert r.get_json()["error"] == "exceeds_upload_length"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


def test_a_second_writer_gets_423_while_the_lease_is_held(app, tus):
    upload_id = tus.create(10)
    lease = app.extensions["rindle"].lease
    lease.acquire(upload_id, "another-request")
    r = tus.patch(upload_id, 0, b"abc")
    assert r.status_code == 423
    assert r.get_json()["error"] == "upload_locked"
    lease.release(upload_id, "another-request")
    assert tus.patch(upload_id, 0, b"abc").status_code == 204


def test_zero_length_upload_is_complete_at_creation(app, tus, s3_client):
    upload_id = tus.create(0)
    r = tus.head(upload_id)
    assert (r.headers["Upload-Offset"], r.headers["Upload-Length"]) == ("0", "0")
    upload = app.extensions["rindle"].uploads.get(upload_id)
    assert upload.state == "completed"
    assert object_bytes(s3_client, app.config["RINDLE"].s3_bucket, upload.key) == b""


def test_object_key_is_prefix_plus_id_and_parts_are_equal(app, tus, rq_burst, s3_client, rdb):
    data = random_bytes(3 * PART + 123)
    upload_id = tus.create(len(data))
    offset, chunk = 0, 3 * 1024 * 1024 + 7  # a chunk size that does not divide the part
    while offset < len(data):
        r = tus.patch(upload_id, offset, data[offset : offset + chunk])
        assert r.status_code == 204
        assert int(r.headers["Upload-Offset"]) == min(offset + chunk, len(data))
        offset += chunk
    rq_burst()
    parts = rdb.hgetall(f"rindle:upload:{{{upload_id}}}:parts")
    sizes = [int(parts[str(n)].split()[0]) for n in range(1, len(parts) + 1)]
    assert sizes == [PART, PART, PART, 123]
    key = "uploads/" + upload_id
    assert sha256(object_bytes(s3_client, app.config["RINDLE"].s3_bucket, key)) == sha256(data)


def test_completion_job_is_idempotent(app, tus, rq_burst):
    from rindle.jobs import complete_upload

    data = random_bytes(PART + 1)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data).status_code == 204
    assert app.extensions["rindle"].uploads.get(upload_id).state == "assembling"
    rq_burst()
    assert app.extensions["rindle"].uploads.get(upload_id).state == "completed"
    with app.app_context():
        assert complete_upload(upload_id) == "skipped (completed)"


def test_retried_last_patch_after_completion_is_harmless(tus, rq_burst):
    data = random_bytes(1000)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data).status_code == 204
    rq_burst()
    r = tus.patch(upload_id, 1000, b"")
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "1000"
