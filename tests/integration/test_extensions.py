"""creation-with-upload, creation-defer-length and checksum, against the spec's codes."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from rindle import tail_path
from tests.integration.conftest import PART, TUS, object_bytes, random_bytes, sha256

pytestmark = pytest.mark.integration
OCTETS = {"Content-Type": "application/offset+octet-stream"}


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        digest = zlib.crc32(data).to_bytes(4, "big")
    else:
        digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


def stored(app, s3_client, upload_id: str) -> bytes:
    return object_bytes(s3_client, app.config["RINDLE"].s3_bucket, "uploads/" + upload_id)


def state(app, rdb, s3_client, upload_id: str) -> tuple:
    upload = app.extensions["rindle"].uploads.get(upload_id)
    path = tail_path(upload_id, app.config["RINDLE"].tmp_dir)
    parts = rdb.hgetall(f"rindle:upload:{{{upload_id}}}:parts")
    listed = []
    if upload.s3_upload_id:
        listed = s3_client.list_parts(
            Bucket=app.config["RINDLE"].s3_bucket, Key=upload.key, UploadId=upload.s3_upload_id
        ).get("Parts", [])
    size = os.path.getsize(path) if os.path.exists(path) else None
    return upload.offset, upload.committed, parts, [p["PartNumber"] for p in listed], size


def test_options_lists_the_extensions_and_checksum_algorithms(client):
    r = client.options("/files/")
    extensions = set(r.headers["Tus-Extension"].split(","))
    assert {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "checksum",
        "expiration",
        "termination",
    } <= extensions
    assert {"sha1", "sha256", "md5", "crc32"} <= set(r.headers["Tus-Checksum-Algorithm"].split(","))


# -- creation-with-upload ------------------------------------------------------------


@pytest.mark.parametrize("first", [1000, PART + 1000])
def test_post_may_carry_the_first_bytes(app, tus, rq_burst, s3_client, first):
    data = random_bytes(PART + 5000)
    r = tus.client.post(
        "/files/", data=data[:first], headers={**TUS, **OCTETS, "Upload-Length": str(len(data))}
    )
    assert r.status_code == 201
    assert r.headers["Upload-Offset"] == str(first)
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    assert tus.head(upload_id).headers["Upload-Offset"] == str(first)
    assert tus.patch(upload_id, first, data[first:]).status_code == 204
    rq_burst()
    assert sha256(stored(app, s3_client, upload_id)) == sha256(data)


def test_post_with_the_whole_file_completes_it(app, tus, rq_burst, s3_client):
    data = random_bytes(3000)
    r = tus.client.post(
        "/files/", data=data, headers={**TUS, **OCTETS, "Upload-Length": str(len(data))}
    )
    assert r.status_code == 201 and r.headers["Upload-Offset"] == "3000"
    rq_burst()
    assert stored(app, s3_client, r.headers["Location"].rsplit("/", 1)[1]) == data


def test_post_with_more_bytes_than_its_length_is_413_and_creates_nothing(client, rdb):
    r = client.post("/files/", data=b"x" * 20, headers={**TUS, **OCTETS, "Upload-Length": "10"})
    assert r.status_code == 413
    assert rdb.keys("rindle:upload:*") == []


def test_post_body_without_the_tus_content_type_is_ignored(client):
    r = client.post(
        "/files/", data=b"abc", headers={**TUS, "Upload-Length": "10", "Content-Type": "text/plain"}
    )
    assert r.status_code == 201
    assert "Upload-Offset" not in r.headers


# -- creation-defer-length -----------------------------------------------------------


def test_deferred_length_is_set_by_a_later_patch(app, tus, rq_burst, s3_client):
    data = random_bytes(2 * PART + 777)
    r = tus.client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status_code == 201
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    head = tus.head(upload_id)
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers

    assert tus.patch(upload_id, 0, data[: PART + 100]).status_code == 204
    assert tus.patch(upload_id, PART + 100, data[PART + 100 : 2 * PART]).status_code == 204
    last = tus.patch(upload_id, 2 * PART, data[2 * PART :], **{"Upload-Length": str(len(data))})
    assert last.status_code == 204 and last.headers["Upload-Offset"] == str(len(data))
    head = tus.head(upload_id)
    assert head.headers["Upload-Length"] == str(len(data))
    assert "Upload-Defer-Length" not in head.headers
    rq_burst()
    assert sha256(stored(app, s3_client, upload_id)) == sha256(data)


def test_deferred_length_declared_at_an_exact_part_boundary(app, tus, rq_burst, s3_client):
    data = random_bytes(2 * PART)
    r = tus.client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    assert tus.patch(upload_id, 0, data).status_code == 204
    r = tus.patch(upload_id, len(data), b"", **{"Upload-Length": str(len(data))})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == str(len(data))
    rq_burst()
    assert stored(app, s3_client, upload_id) == data


def test_deferred_length_rules(tus, client):
    r = client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    assert tus.patch(upload_id, 0, b"abcdef").status_code == 204
    smaller = tus.patch(upload_id, 6, b"", **{"Upload-Length": "5"})
    assert smaller.status_code == 400 and smaller.get_json()["error"] == "invalid_length"
    too_big = tus.patch(upload_id, 6, b"", **{"Upload-Length": str(2**40)})
    assert too_big.status_code == 413
    assert tus.patch(upload_id, 6, b"gh", **{"Upload-Length": "10"}).status_code == 204
    twice = tus.patch(upload_id, 8, b"ij", **{"Upload-Length": "12"})
    assert twice.status_code == 400 and twice.get_json()["error"] == "length_already_set"
    assert tus.patch(upload_id, 8, b"ij", **{"Upload-Length": "10"}).status_code == 204


# -- checksum ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512", "md5", "crc32"])
def test_a_matching_checksum_is_accepted(tus, algorithm):
    upload_id = tus.create(100)
    r = tus.patch(upload_id, 0, b"x" * 40, **{"Upload-Checksum": checksum(algorithm, b"x" * 40)})
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "40"


def test_a_mismatch_is_460_and_keeps_nothing_of_that_patch(app, tus, rdb, s3_client):
    data = random_bytes(3 * PART)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data[:1000]).status_code == 204
    before = state(app, rdb, s3_client, upload_id)
    body = data[1000 : 2 * PART + 500]  # would fill two parts
    r = tus.patch(upload_id, 1000, body, **{"Upload-Checksum": checksum("sha256", b"other")})
    assert r.status_code == 460
    assert r.get_json()["error"] == "checksum_mismatch"
    assert state(app, rdb, s3_client, upload_id) == before
    assert tus.head(upload_id).headers["Upload-Offset"] == "1000"


def test_checksummed_patches_spanning_parts_land_exact(app, tus, rq_burst, s3_client, rdb):
    data = random_bytes(3 * PART + 99)
    upload_id = tus.create(len(data))
    offset = 0
    for size in (1000, 2 * PART + 500, PART - 2000):
        chunk = data[offset : offset + size]
        r = tus.patch(upload_id, offset, chunk, **{"Upload-Checksum": checksum("md5", chunk)})
        assert r.status_code == 204, r.get_data(as_text=True)
        offset += size
        assert r.headers["Upload-Offset"] == str(offset)
    rest = data[offset:]
    assert (
        tus.patch(
            upload_id, offset, rest, **{"Upload-Checksum": checksum("crc32", rest)}
        ).status_code
        == 204
    )
    rq_burst()
    assert sha256(stored(app, s3_client, upload_id)) == sha256(data)
    sizes = sorted(
        int(v.split()[0]) for v in rdb.hgetall(f"rindle:upload:{{{upload_id}}}:parts").values()
    )
    assert sizes == [99, PART, PART, PART]


@pytest.mark.parametrize(
    "header, code",
    [
        ("crc64 AAAA", "unsupported_checksum_algorithm"),
        ("sha1", "invalid_checksum"),
        ("sha1 not-base64!", "invalid_checksum"),
        ("sha1 AAAA", "invalid_checksum"),  # base64, but not the 20 bytes of a sha1
    ],
)
def test_bad_checksum_headers_are_400(tus, header, code):
    upload_id = tus.create(10)
    r = tus.patch(upload_id, 0, b"abc", **{"Upload-Checksum": header})
    assert r.status_code == 400 and r.get_json()["error"] == code
    assert tus.head(upload_id).headers["Upload-Offset"] == "0"
