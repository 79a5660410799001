"""Hardening (issue #9): odd states and hostile input never lose data (real Redis and S3)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from dataclasses import replace

import pytest

from rindle import tail_path
from rindle.hooks import Refuse
from rindle.keys import EXPIRY_INDEX
from tests.integration.conftest import PART, TUS, Tus, random_bytes
from tests.integration.test_lifecycle import (
    bucket,
    half_upload,
    maintenance,
    make_expired,
    open_multipart,
)

pytestmark = pytest.mark.integration


def state_of(rdb, upload_id: str) -> str:
    return rdb.hget(f"rindle:upload:{{{upload_id}}}", "state")


def test_the_sweep_never_expires_an_upload_whose_writer_is_alive(app, tus, rdb, s3_client):
    """A PATCH that holds the lease but has committed nothing for the expiry period (a
    long checksummed body, a slow resume) is activity: its multipart upload stays."""
    upload_id, _ = half_upload(tus)
    lease = app.extensions["rindle"].lease
    lease.acquire(upload_id, "a-live-writer")
    make_expired(rdb, upload_id)

    counts = maintenance(app).sweep_expired()

    assert counts["expired"] == 0
    assert state_of(rdb, upload_id) == "receiving"
    assert open_multipart(s3_client, bucket(app)) == ["uploads/" + upload_id]
    assert rdb.zscore(EXPIRY_INDEX, upload_id) is not None, "looked at again next time"
    lease.release(upload_id, "a-live-writer")
    assert maintenance(app).sweep_expired()["expired"] == 1
    assert state_of(rdb, upload_id) == "expired"


def test_the_sweep_forgets_index_entries_whose_upload_is_gone(app, rdb):
    rdb.zadd(EXPIRY_INDEX, {"gone-long-ago": time.time() - 100})
    maintenance(app).sweep_expired()
    assert rdb.zscore(EXPIRY_INDEX, "gone-long-ago") is None


def test_the_sweep_reaches_past_the_first_thousand_due_entries(app, tus, rdb, s3_client):
    """A thousand entries that stay due (their writers are alive) must not hide the
    thousand-and-first from the sweep."""
    now = time.time()
    lease = app.extensions["rindle"].lease
    busy = [f"busy-{n}" for n in range(1000)]
    for upload_id in busy:
        rdb.hset(
            f"rindle:upload:{{{upload_id}}}",
            mapping={
                "state": "receiving",
                "length": 10,
                "offset": 0,
                "committed": 0,
                "part_size": 5 << 20,
                "key": "uploads/" + upload_id,
                "created_at": now - 100,
                "expires_at": now - 100,
            },
        )
        lease.acquire(upload_id, "alive")
    rdb.zadd(EXPIRY_INDEX, dict.fromkeys(busy, now - 100))
    upload_id, _ = half_upload(tus)
    make_expired(rdb, upload_id)  # due later than all of them

    counts = maintenance(app).sweep_expired()

    assert counts["expired"] == 1
    assert state_of(rdb, upload_id) == "expired"
    assert open_multipart(s3_client, bucket(app)) == []


def test_an_object_that_never_matches_ends_failed_after_the_retries(app, tus, rdb, s3_client):
    """The object at the key has another size than the upload (here: overwritten before
    the completion ran). The completion is retried; after the last try the upload is
    failed (410) and nothing re-enqueues it any more. The object at the key is not the
    one this upload wrote: it stays (issue #21: deletes prove ownership)."""
    from tests.integration.test_hardening2_storage import give_up_after_one_try

    upload_id = tus.create(5)
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    key = "uploads/" + upload_id
    s3_client.put_object(Bucket=bucket(app), Key=key, Body=b"abc")

    assert give_up_after_one_try(app, upload_id) == "failed (object)"
    assert state_of(rdb, upload_id) == "failed"
    assert tus.head(upload_id).status_code == 410
    assert s3_client.get_object(Bucket=bucket(app), Key=key)["Body"].read() == b"abc"


def test_a_multipart_upload_aborted_outside_rindle_fails_the_upload(app, tus, rdb, s3_client):
    """An S3 lifecycle rule aborted the multipart upload under a live upload: its parts
    are gone for good. The next PATCH answers 410 (not 503 for ever) and the upload is
    failed."""
    upload_id, data = half_upload(tus)
    upload = app.extensions["rindle"].uploads.get(upload_id)
    s3_client.abort_multipart_upload(
        Bucket=bucket(app), Key=upload.key, UploadId=upload.s3_upload_id
    )

    r = tus.patch(upload_id, PART + 1000, data[PART + 1000 :])

    assert r.status_code == 410
    assert r.get_json()["error"] == "gone"
    assert state_of(rdb, upload_id) == "failed"
    assert tus.head(upload_id).status_code == 410


def sha256_header(data: bytes) -> str:
    return "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_checksummed_body_beyond_four_parts_is_refused_before_it_is_read(app, tus, rdb):
    """Such a body is spooled to disk whole before it is checked: it is capped."""
    data = random_bytes(4 * PART + 1)
    upload_id = tus.create(len(data))
    r = tus.patch(upload_id, 0, data, **{"Upload-Checksum": sha256_header(data)})
    assert r.status_code == 413
    assert r.get_json()["error"] == "checksum_body_too_large"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


def test_a_chunked_checksummed_body_beyond_the_cap_keeps_nothing(app, tus, rdb):
    data = random_bytes(4 * PART + 1)
    upload_id = tus.create(len(data))
    r = tus.client.patch(  # a body of unknown length, as a chunked request
        f"/files/{upload_id}",
        input_stream=io.BytesIO(data),
        environ_overrides={"wsgi.input_terminated": True},
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Transfer-Encoding": "chunked",
            "Upload-Checksum": sha256_header(data),
        },
    )
    assert r.status_code == 413
    assert r.get_json()["error"] == "checksum_body_too_large"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"
    tail = tail_path(upload_id, app.config["RINDLE"].tmp_dir)
    assert not os.path.exists(tail) or os.path.getsize(tail) == 0


def test_a_spooled_body_is_shipped_part_by_part_without_rewriting_the_rest(
    app, tus, rq_burst, s3_client, monkeypatch
):
    """Each shipped part used to be dropped by copying the rest of the file forward:
    quadratic in the body. Now the parts go from where they lie, and the rest moves once."""
    from rindle.storage.tail import Tail

    moved = []
    real_drop = Tail.drop_front

    def spy(self, count):
        moved.append(self.size - count)  # bytes copied forward
        real_drop(self, count)

    monkeypatch.setattr(Tail, "drop_front", spy)
    data = random_bytes(4 * PART)
    upload_id = tus.create(len(data) + 10)
    r = tus.patch(
        upload_id,
        0,
        data[: 3 * PART + 7],
        **{"Upload-Checksum": sha256_header(data[: 3 * PART + 7])},
    )
    assert r.status_code == 204
    assert r.headers["Upload-Offset"] == str(3 * PART + 7)
    assert sum(moved) <= PART, f"bytes copied forward: {moved}"


def test_a_patch_is_refused_with_507_when_the_tail_disk_is_short(app, tus):
    app.extensions["rindle"].settings = replace(app.config["RINDLE"], min_free_disk=1 << 62)
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"abc")
    assert r.status_code == 507
    assert r.get_json()["error"] == "insufficient_storage"
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"


def test_cancelling_an_upload_never_deletes_an_object_it_did_not_write(app, s3_client):
    """Two uploads share a key chosen by pre_create (a re-upload of the same file).
    Cancelling the unfinished second one keeps the first one's object; cancelling the
    first one after the second replaced the object keeps the second's."""
    from tests.integration.test_hooks import make_app, rq_burst_for

    hooked = make_app(pre_create=lambda request, length, metadata: "uploads/shared/report.pdf")
    tus = Tus(hooked.test_client())
    first = tus.create(5)
    assert tus.patch(first, 0, b"first").status_code == 204
    rq_burst_for(hooked)
    second = tus.create(6)
    assert tus.patch(second, 0, b"sec").status_code == 204

    assert tus.client.delete(f"/files/{second}", headers=TUS).status_code == 204
    rq_burst_for(hooked)
    key = {"Bucket": bucket(hooked), "Key": "uploads/shared/report.pdf"}
    assert s3_client.get_object(**key)["Body"].read() == b"first"

    third = tus.create(5)
    assert tus.patch(third, 0, b"third").status_code == 204
    rq_burst_for(hooked)
    assert tus.client.delete(f"/files/{first}", headers=TUS).status_code == 204
    rq_burst_for(hooked)
    assert s3_client.get_object(**key)["Body"].read() == b"third"

    assert tus.client.delete(f"/files/{third}", headers=TUS).status_code == 204
    rq_burst_for(hooked)
    assert s3_client.list_objects_v2(Bucket=bucket(hooked)).get("Contents", []) == []


def test_cancelling_a_completed_empty_upload_deletes_its_object(app, tus, rq_burst, s3_client):
    upload_id = tus.create(0)
    assert tus.client.delete(f"/files/{upload_id}", headers=TUS).status_code == 204
    rq_burst()
    assert s3_client.list_objects_v2(Bucket=bucket(app)).get("Contents", []) == []


def test_the_shipped_app_refuses_to_start_open_to_anyone_unless_told(rindle_env):
    from app import create_app
    from rindle import ConfigError, Hooks, Settings

    closed = {k: v for k, v in rindle_env.items() if k != "RINDLE_PUBLIC"}
    with pytest.raises(ConfigError, match="RINDLE_PUBLIC"):
        create_app(Settings.from_env(closed))
    assert create_app(Settings.from_env({**closed, "RINDLE_PUBLIC": "1"}))
    hooks = Hooks(authorize=lambda request, action, upload: None)
    assert create_app(Settings.from_env(closed), hooks=hooks)


def test_healthz_tells_no_internals_when_redis_is_down(rindle_env):
    from app import create_app
    from rindle import Settings

    env = {**rindle_env, "RINDLE_PUBLIC": "1", "REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}
    r = create_app(Settings.from_env(env)).test_client().get("/healthz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "redis_unavailable"}


# -- item 8: concatenation -----------------------------------------------------------


def concat_partial(tus, data: bytes, **headers: str) -> str:
    r = tus.client.post(
        "/files/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial", **headers},
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    assert tus.patch(upload_id, 0, data, **headers).status_code == 204
    return upload_id


def concat_final(client, ids: list[str], **headers: str):
    urls = " ".join(f"/files/{i}" for i in ids)
    return client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{urls}", **headers})


def final_uploads(rdb) -> list[str]:
    return [k for k in rdb.keys("rindle:upload:*") if rdb.hget(k, "concat") == "final"]


def test_a_final_upload_naming_a_partial_twice_is_400(tus, rdb):
    """The same partial twice would assemble its bytes twice: no client means that."""
    one, two = concat_partial(tus, b"abc"), concat_partial(tus, b"def")
    r = tus.client.post(
        "/files/",
        headers={
            **TUS,
            "Upload-Concat": f"final;/files/{one} http://localhost/files/{two} /files/{one}/",
        },
    )
    assert r.status_code == 400
    assert r.get_json()["error"] == "invalid_concat"
    assert final_uploads(rdb) == []


def test_a_final_upload_of_more_partials_than_allowed_is_400(app, rdb, monkeypatch):
    from app import create_app
    from rindle import Settings

    monkeypatch.setenv("RINDLE_TUS_MAX_PARTIALS", "2")
    tus = Tus(create_app(Settings.from_env()).test_client())
    ids = [concat_partial(tus, bytes([65 + n]) * 3) for n in range(3)]
    r = concat_final(tus.client, ids)
    assert r.status_code == 400
    assert r.get_json()["error"] == "invalid_concat"
    assert "at most 2" in r.get_json()["message"]
    assert final_uploads(rdb) == []
    assert concat_final(tus.client, ids[:2]).status_code == 201


def test_a_final_upload_longer_than_tus_max_size_is_413(app, rdb, monkeypatch):
    from app import create_app
    from rindle import Settings

    monkeypatch.setenv("RINDLE_TUS_MAX_SIZE", "1000")
    tus = Tus(create_app(Settings.from_env()).test_client())
    ids = [concat_partial(tus, b"x" * 600), concat_partial(tus, b"y" * 600)]
    r = concat_final(tus.client, ids)
    assert r.status_code == 413
    assert r.get_json()["error"] == "upload_too_large"
    assert final_uploads(rdb) == []


def test_a_refused_final_upload_looks_up_no_partial(app, monkeypatch):
    """authorize("create") runs before any partial is looked up: a client that may not
    upload learns nothing about which upload ids exist."""
    from tests.integration.test_hooks import make_app

    def authorize(request, action, upload):
        if request.headers.get("Authorization") != "Bearer good":
            raise Refuse("who are you?", status=401, code="unauthorized")

    hooked = make_app(authorize=authorize)
    store = hooked.extensions["rindle"].uploads
    looked_up = []
    monkeypatch.setattr(store, "get", lambda upload_id: looked_up.append(upload_id) or None)
    r = concat_final(hooked.test_client(), ["somebodys-partial"])
    assert r.status_code == 401
    assert looked_up == []


def test_a_final_upload_cannot_assemble_someone_elses_partial(app, rdb):
    """Each partial a final names is authorized (action "concat", that partial): the
    app refuses a partial its owner did not upload."""
    from tests.integration.test_hooks import make_app

    owners: dict[str, str] = {}

    def authorize(request, action, upload):
        user = request.headers.get("X-User", "")
        if upload is not None and owners.get(upload.id, user) != user:
            raise Refuse("not yours", status=403, code="forbidden")

    tus = Tus(make_app(authorize=authorize).test_client())
    bobs = concat_partial(tus, b"bob's secret", **{"X-User": "bob"})
    owners[bobs] = "bob"
    alices = concat_partial(tus, b"alice's", **{"X-User": "alice"})
    owners[alices] = "alice"

    r = concat_final(tus.client, [alices, bobs], **{"X-User": "alice"})
    assert r.status_code == 403
    assert r.get_json()["error"] == "forbidden"
    assert final_uploads(rdb) == []
    assert concat_final(tus.client, [alices], **{"X-User": "alice"}).status_code == 201


# -- item 9: downloads cannot run script on anyone's origin ----------------------------


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def completed_upload(app, tus, data: bytes, metadata: str = "") -> str:
    from tests.integration.test_hooks import rq_burst_for

    headers = {"Upload-Metadata": metadata} if metadata else {}
    upload_id = tus.create(len(data), **headers)
    assert tus.patch(upload_id, 0, data).status_code == 204
    rq_burst_for(app)
    return upload_id


DOWNLOADS = [  # filename, filetype, how a browser may treat it
    ("page.html", "text/html", "attachment"),
    ("logo.svg", "image/svg+xml", "attachment"),
    ("app.js", "application/javascript", "attachment"),
    ("cat.png", "image/png", "inline"),
    ("report.pdf", "application/pdf", "inline"),
    ("notes.txt", "text/plain", "inline"),
    ("clip.mp4", "video/mp4", "inline"),
]


@pytest.mark.parametrize("filename, filetype, disposition", DOWNLOADS)
def test_a_streamed_download_cannot_run_script(
    app, rdb, monkeypatch, filename, filetype, disposition
):
    """Stream mode: nosniff and a sandbox CSP always; an attachment unless the type is
    on the inline allow-list; the RFC 6266 file name kept."""
    from app import create_app
    from rindle import Settings

    monkeypatch.setenv("RINDLE_DOWNLOAD", "stream")
    streaming = create_app(Settings.from_env())
    tus = Tus(streaming.test_client())
    data = b"<script>alert(document.cookie)</script>"
    meta = f"filename {b64(filename)},filetype {b64(filetype)}"
    upload_id = completed_upload(streaming, tus, data, meta)

    r = tus.client.get(f"/files/{upload_id}")

    assert r.status_code == 200 and r.data == data
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"] == "sandbox"
    assert r.headers["Content-Type"] == filetype
    assert r.headers["Content-Disposition"] == (
        f"{disposition}; filename=\"{filename}\"; filename*=UTF-8''{filename}"
    )


def test_a_streamed_download_without_metadata_is_an_attachment(app, monkeypatch):
    from app import create_app
    from rindle import Settings

    monkeypatch.setenv("RINDLE_DOWNLOAD", "stream")
    streaming = create_app(Settings.from_env())
    tus = Tus(streaming.test_client())
    upload_id = completed_upload(streaming, tus, b"<html><script>1</script>")
    r = tus.client.get(f"/files/{upload_id}", headers={"Range": "bytes=0-5"})
    assert r.status_code == 206 and r.data == b"<html>"
    assert r.headers["Content-Disposition"] == "attachment"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Security-Policy"] == "sandbox"


@pytest.mark.parametrize(
    "filename, filetype, disposition", [DOWNLOADS[0], DOWNLOADS[1], DOWNLOADS[3]]
)
def test_a_presigned_download_is_sigv4_and_says_how_to_treat_the_file(
    app, tus, filename, filetype, disposition
):
    """Redirect mode: S3 serves the bytes, told by the presigned URL (SigV4, as AWS
    requires in newer regions) which type and disposition to answer with."""
    from urllib.parse import parse_qs, urlsplit

    import requests

    data = b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"
    meta = f"filename {b64(filename)},filetype {b64(filetype)}"
    upload_id = completed_upload(app, tus, data, meta)

    r = tus.client.get(f"/files/{upload_id}")

    assert r.status_code == 302
    query = parse_qs(urlsplit(r.headers["Location"]).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    expected = f"{disposition}; filename=\"{filename}\"; filename*=UTF-8''{filename}"
    assert query["response-content-disposition"] == [expected]
    assert query["response-content-type"] == [filetype]
    served = requests.get(r.headers["Location"], timeout=10)
    assert served.status_code == 200, served.text
    assert served.content == data
    assert served.headers["Content-Disposition"] == expected
    assert served.headers["Content-Type"] == filetype


# -- item 12: small input gaps -------------------------------------------------------

OCTETS = {"Content-Type": "application/offset+octet-stream"}


def chunked(client, method: str, path: str, data: bytes, headers: dict[str, str], te="chunked"):
    """A request whose body has no Content-Length (Transfer-Encoding: ``te``)."""
    return client.open(
        path,
        method=method,
        input_stream=io.BytesIO(data),
        environ_overrides={"wsgi.input_terminated": True},
        headers={**headers, "Transfer-Encoding": te},
    )


def test_transfer_encoding_chunked_is_matched_in_any_case(tus):
    """Header values are case-insensitive: "Chunked" is a body of unknown length too,
    both for creation-with-upload and for closing the connection after an error."""
    r = chunked(
        tus.client, "POST", "/files/", b"hello", {**TUS, **OCTETS, "Upload-Length": "10"}, "Chunked"
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == "5"
    upload_id = r.headers["Location"].rsplit("/", 1)[1]

    wrong = chunked(
        tus.client,
        "PATCH",
        f"/files/{upload_id}",
        b"world",
        {**TUS, **OCTETS, "Upload-Offset": "3"},
        "CHUNKED",
    )
    assert wrong.status_code == 409
    assert wrong.headers["Connection"] == "close"  # the body was left unread


def test_a_chunked_post_beyond_upload_length_keeps_what_fits_and_is_413(app, tus, rq_burst):
    data = random_bytes(30)
    r = chunked(tus.client, "POST", "/files/", data, {**TUS, **OCTETS, "Upload-Length": "10"})
    assert r.status_code == 413
    assert r.get_json()["error"] == "exceeds_upload_length"
    assert r.headers["Upload-Offset"] == "10"
    assert r.headers["Tus-Resumable"] == "1.0.0"
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    assert tus.head(upload_id).headers["Upload-Offset"] == "10"
    rq_burst()
    stored = app.extensions["rindle"].s3.get_object("uploads/" + upload_id)["Body"].read()
    assert stored == data[:10]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("PUT", "/files/", {"POST", "OPTIONS"}),
        ("GET", "/files/", {"POST", "OPTIONS"}),
        ("PUT", "/files/some-id", {"OPTIONS", "HEAD", "PATCH", "DELETE", "GET"}),
        ("POST", "/files/some-id", {"OPTIONS", "HEAD", "PATCH", "DELETE", "GET"}),
    ],
)
def test_an_unsupported_method_answers_json_405_with_allow(client, method, path, allowed):
    r = client.open(path, method=method, headers=TUS)
    assert r.status_code == 405
    assert r.get_json()["error"] == "method_not_allowed"
    assert {m.strip() for m in r.headers["Allow"].split(",")} == allowed
    assert r.headers["Tus-Resumable"] == "1.0.0"


def test_a_405_outside_rindle_is_left_to_the_app(client):
    r = client.post("/healthz")
    assert r.status_code == 405
    assert not r.is_json


def test_method_override_serves_every_method_of_the_endpoint(app, tus, rq_burst):
    """tus: X-HTTP-Method-Override IS the method; HEAD, GET and OPTIONS too, not only
    PATCH and DELETE."""

    def override(method: str, path: str, **headers: str):
        return tus.client.post(path, headers={**TUS, "X-HTTP-Method-Override": method, **headers})

    upload_id = tus.create(5)
    path = f"/files/{upload_id}"
    assert override("GET", path).status_code == 409  # a download: not ready yet
    patched = override("PATCH", path, **OCTETS, **{"Upload-Offset": "0", "Content-Length": "0"})
    assert patched.status_code == 204
    head = override("HEAD", path)
    assert head.status_code == 200 and head.headers["Upload-Length"] == "5"
    assert head.headers["Upload-Offset"] == "0" and head.data == b""
    options = override("options", "/files/")
    assert options.status_code == 204 and options.headers["Tus-Version"] == "1.0.0"
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    rq_burst()
    assert override("GET", path).status_code == 302
    assert override("DELETE", path).status_code == 204
    assert override("HEAD", path).status_code == 410


@pytest.mark.parametrize("key", ["elsewhere/report.pdf", "uploads/", "uploadsX/a"])
def test_a_pre_create_key_outside_the_prefix_is_refused(app, s3_client, rdb, key):
    from tests.integration.test_hooks import make_app

    hooked = make_app(pre_create=lambda request, length, metadata: key)
    r = hooked.test_client().post("/files/", headers={**TUS, "Upload-Length": "0"})
    assert r.status_code == 500
    assert r.get_json()["error"] == "invalid_key"
    assert rdb.keys("rindle:upload:*") == []
    assert s3_client.list_objects_v2(Bucket=bucket(hooked)).get("Contents", []) == []


def test_pre_create_can_build_the_key_from_the_upload_id(app, rq_burst, s3_client):
    from tests.integration.test_hooks import make_app, rq_burst_for

    hooked = make_app(
        pre_create=lambda request, length, metadata, upload_id: f"uploads/u/7/{upload_id}"
    )
    tus = Tus(hooked.test_client())
    upload_id = tus.create(3)
    assert tus.patch(upload_id, 0, b"abc").status_code == 204
    rq_burst_for(hooked)
    obj = s3_client.get_object(Bucket=bucket(hooked), Key=f"uploads/u/7/{upload_id}")
    assert obj["Body"].read() == b"abc"


def test_a_configured_checksum_cap_is_honoured(app, tus):
    app.extensions["rindle"].settings = replace(app.config["RINDLE"], max_checksum_body=1000)
    app.config["RINDLE"] = app.extensions["rindle"].settings
    data = random_bytes(1001)
    upload_id = tus.create(len(data))
    r = tus.patch(upload_id, 0, data, **{"Upload-Checksum": sha256_header(data)})
    assert r.status_code == 413
    assert r.get_json()["error"] == "checksum_body_too_large"
