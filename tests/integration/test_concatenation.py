"""The concatenation extension: partial uploads assembled into a final one in S3."""

from __future__ import annotations

import pytest

from tests.integration.conftest import (
    PART,
    TUS,
    object_bytes,
    random_bytes,
    run_jobs,
    sha256,
)

pytestmark = pytest.mark.integration


def partial(tus, data: bytes) -> str:
    r = tus.client.post(
        "/files/", headers={**TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial"}
    )
    assert r.status_code == 201
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    if data:
        assert tus.patch(upload_id, 0, data).status_code == 204
    return upload_id


def final(tus, ids: list[str], absolute: bool = True):
    urls = " ".join(f"http://localhost/files/{i}" if absolute else f"/files/{i}" for i in ids)
    return tus.client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{urls}"})


@pytest.mark.parametrize(
    "sizes",
    [
        [PART + 10, PART, 3000],  # every partial but the last >= 5 MiB: copied inside S3
        [1000, PART + 7, 0, 2000],  # small partials: re-streamed into equal parts
        [2 * PART + 1, 100],
    ],
    ids=["copy", "restream", "two"],
)
def test_final_upload_is_the_partials_in_order(app, tus, rq_burst, s3_client, sizes):
    pieces = [random_bytes(n) for n in sizes]
    ids = [partial(tus, piece) for piece in pieces]
    rq_burst()
    r = final(tus, ids, absolute=len(sizes) != 2)
    assert r.status_code == 201
    final_id = r.headers["Location"].rsplit("/", 1)[1]
    head = tus.head(final_id)
    assert head.headers["Upload-Length"] == str(sum(sizes))
    assert head.headers["Upload-Concat"].startswith("final;")
    assert head.headers["Upload-Concat"].split(";", 1)[1].split() == [
        f"http://localhost/files/{i}" for i in ids
    ]
    rq_burst()
    assert tus.head(final_id).headers["Upload-Offset"] == str(sum(sizes))
    body = object_bytes(s3_client, app.config["RINDLE"].s3_bucket, "uploads/" + final_id)
    assert sha256(body) == sha256(b"".join(pieces))
    assert tus.head(ids[0]).headers["Upload-Concat"] == "partial"


def test_partials_still_assembling_are_waited_for(app, tus, rq_burst, s3_client):
    pieces = [random_bytes(PART), random_bytes(10)]
    ids = [partial(tus, piece) for piece in pieces]  # completion jobs not run yet
    r = final(tus, ids)
    assert r.status_code == 201
    rq_burst()  # runs the partials' completions, and the final's (retried if first)
    final_id = r.headers["Location"].rsplit("/", 1)[1]
    for _ in range(20):
        if app.extensions["rindle"].uploads.get(final_id).state == "completed":
            break
        rq_burst_with_scheduler(app)
    body = object_bytes(s3_client, app.config["RINDLE"].s3_bucket, "uploads/" + final_id)
    assert body == b"".join(pieces)


def rq_burst_with_scheduler(app) -> None:
    import time

    run_jobs(app, with_scheduler=True)
    time.sleep(0.5)


def test_patch_on_a_final_upload_is_403(tus, rq_burst):
    ids = [partial(tus, b"abc")]
    rq_burst()
    final_id = final(tus, ids).headers["Location"].rsplit("/", 1)[1]
    r = tus.patch(final_id, 0, b"x")
    assert r.status_code == 403 and r.get_json()["error"] == "final_upload"


@pytest.mark.parametrize(
    "header, code",
    [
        ("final;", "invalid_concat"),
        ("partial;x", "invalid_concat"),
        ("final;/files/nope", "invalid_concat"),
    ],
)
def test_bad_concatenations_are_400(client, rdb, header, code):
    r = client.post("/files/", headers={**TUS, "Upload-Concat": header})
    assert r.status_code == 400 and r.get_json()["error"] == code
    assert rdb.keys("rindle:upload:*") == []


def test_unfinished_or_plain_uploads_cannot_be_concatenated(tus):
    unfinished = tus.client.post(
        "/files/", headers={**TUS, "Upload-Length": "10", "Upload-Concat": "partial"}
    )
    plain = tus.create(3)
    for upload_id, code in (
        (unfinished.headers["Location"].rsplit("/", 1)[1], "partial_not_finished"),
        (plain, "invalid_concat"),
    ):
        r = final(tus, [upload_id])
        assert r.status_code == 400 and r.get_json()["error"] == code
    r = tus.client.post(
        "/files/", headers={**TUS, "Upload-Length": "3", "Upload-Concat": f"final;/files/{plain}"}
    )
    assert r.status_code == 400
