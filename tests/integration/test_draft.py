"""The IETF draft's dialect in process (real Redis and S3): what the e2e tests leave out,
PUT creation, interop 6's own rules, hooks, CORS, representation metadata."""

from __future__ import annotations

import base64

import pytest

from app import create_app
from rindle import Hooks, Refuse, Settings
from tests.integration.conftest import object_bytes

pytestmark = pytest.mark.integration

V8 = {"Upload-Draft-Interop-Version": "8"}
V6 = {"Upload-Draft-Interop-Version": "6"}


def upload_id(response) -> str:
    return response.headers["Location"].rsplit("/", 1)[1]


def test_put_creates_an_upload_in_one_request(client, rq_burst, s3_client, s3_env):
    r = client.put(
        "/files/",
        data=b"hello draft",
        headers={
            **V8,
            "Upload-Complete": "?1",
            "Content-Type": "text/plain",
            "Content-Disposition": "inline; filename*=UTF-8''r%C3%A9sum%C3%A9.txt",
        },
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.headers["Upload-Complete"] == "?1"
    rq_burst()
    key = "uploads/" + upload_id(r)
    assert object_bytes(s3_client, s3_env["RINDLE_S3_BUCKET"], key) == b"hello draft"
    head = s3_client.head_object(Bucket=s3_env["RINDLE_S3_BUCKET"], Key=key)
    assert head["ContentType"] == "text/plain"
    assert "r%C3%A9sum%C3%A9.txt" in head["ContentDisposition"]


def test_put_without_the_draft_header_is_still_405_for_tus(client):
    r = client.put("/files/", headers={"Tus-Resumable": "1.0.0"})
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"POST", "OPTIONS"}


def test_an_empty_completing_creation_is_an_empty_object(client, rq_burst, s3_client, s3_env):
    r = client.post("/files/", headers={**V8, "Upload-Complete": "?1", "Content-Length": "0"})
    assert r.status_code == 201
    assert r.headers["Upload-Complete"] == "?1"
    assert r.headers["Upload-Offset"] == "0"
    key = "uploads/" + upload_id(r)
    assert object_bytes(s3_client, s3_env["RINDLE_S3_BUCKET"], key) == b""


def test_creation_without_upload_complete_is_refused(client):
    r = client.post("/files/", headers=V8, data=b"x")
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.get_json()["error"] == "missing_header"
    assert "Tus-Resumable" not in r.headers


def test_an_interop_version_not_served_is_refused(client):
    r = client.post(
        "/files/", headers={"Upload-Draft-Interop-Version": "3", "Upload-Complete": "?0"}
    )
    assert r.status_code == 412
    assert r.headers["Content-Type"] == "application/problem+json"
    assert "Tus-Version" not in r.headers


def test_interop_6_answers(client):
    r = client.post("/files/", headers={**V6, "Upload-Complete": "?0", "Upload-Length": "3"})
    assert r.status_code == 201
    assert "expires=" in r.headers["Upload-Limit"] and "max-age" not in r.headers["Upload-Limit"]
    url = f"/files/{upload_id(r)}"
    r = client.patch(
        url,
        data=b"ab",
        headers={
            **V6,
            "Upload-Offset": "0",
            "Upload-Complete": "?0",
            "Content-Type": "application/partial-upload",
        },
    )
    assert r.status_code == 201  # interop 6 acknowledges appends with 201
    assert r.headers["Upload-Offset"] == "2"
    # Offset retrieval must not carry the upload's fields in interop 6.
    assert client.head(url, headers={**V6, "Upload-Offset": "2"}).status_code == 400
    assert client.head(url, headers=V6).headers["Upload-Offset"] == "2"
    assert client.delete(url, headers={**V6, "Upload-Complete": "?0"}).status_code == 400
    assert client.delete(url, headers=V6).status_code == 204
    # An upload that is no longer active is 404 in interop 6 (410 in 8).
    assert client.head(url, headers=V6).status_code == 404
    assert client.head(url, headers=V8).status_code == 410


def test_a_refusing_hook_is_a_problem_document(redis_url, s3_env, tmp_path, monkeypatch):
    for name, value in {**s3_env, "REDIS_URL": redis_url, "RINDLE_TMP_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)

    def authorize(request, action, upload):
        raise Refuse("not signed in", status=401, code="unauthorized")

    client = create_app(Settings.from_env(), Hooks(authorize=authorize)).test_client()
    r = client.post("/files/", headers={**V8, "Upload-Complete": "?0"})
    assert r.status_code == 401
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.get_json()["error"] == "unauthorized"


def test_upload_metadata_from_tus_js_client_is_kept(client):
    """tus-js-client sends Upload-Metadata in the draft's dialect too."""
    name = base64.b64encode(b"a.bin").decode()
    r = client.post(
        "/files/",
        headers={**V6, "Upload-Complete": "?0", "Upload-Metadata": f"filename {name}"},
    )
    tus_head = client.head(f"/files/{upload_id(r)}", headers={"Tus-Resumable": "1.0.0"})
    assert tus_head.headers["Upload-Metadata"] == f"filename {name}"
    assert "Upload-Metadata" not in client.head(f"/files/{upload_id(r)}", headers=V6).headers


def test_cors_lets_a_browser_speak_the_draft(redis_url, s3_env, tmp_path, monkeypatch):
    for name, value in {
        **s3_env,
        "REDIS_URL": redis_url,
        "RINDLE_TMP_DIR": str(tmp_path),
        "RINDLE_PUBLIC": "1",
        "RINDLE_CORS_ORIGINS": "https://app.example.com",
    }.items():
        monkeypatch.setenv(name, value)
    client = create_app(Settings.from_env()).test_client()
    origin = {"Origin": "https://app.example.com"}
    r = client.options(
        "/files/",
        headers={
            **origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "upload-draft-interop-version, upload-complete",
        },
    )
    assert r.status_code < 300
    allowed = r.headers["Access-Control-Allow-Headers"].lower()
    assert "upload-draft-interop-version" in allowed and "upload-complete" in allowed
    assert "PUT" in r.headers["Access-Control-Allow-Methods"]
    r = client.post("/files/", headers={**origin, **V8, "Upload-Complete": "?0"})
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"upload-complete", "upload-limit", "upload-offset", "location"} <= exposed
