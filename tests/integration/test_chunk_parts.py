"""The part size follows the client's chunk size, and shared tails are appended as one
segment per PATCH (issue #19): chunked clients leave nothing buffered between PATCHes
(any node resumes, also in local mode), and no client makes the server write more than
twice its bytes to S3.

Two apps in this process play two web nodes (the same Redis and bucket, each with its
own tmp dir and node id); every S3 byte the apps write is counted at their boto3 client.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from rindle import Settings, tail_path
from rindle.config import MIB
from rindle.storage.shared_tail import TAILS_DIR
from tests.integration.conftest import (
    TUS,
    Tus,
    object_bytes,
    random_bytes,
    run_jobs,
    sha256,
)

pytestmark = pytest.mark.integration

CONFIGURED_PART = 8 * MIB  # the default part size


@pytest.fixture
def node_env(redis_url: str, s3_env: dict[str, str], tmp_path: Path, monkeypatch):
    for name, value in s3_env.items():  # boto3 reads its own variables
        monkeypatch.setenv(name, value)

    def env(name: str, tail_store: str) -> dict[str, str]:
        return {
            **s3_env,
            "REDIS_URL": redis_url,
            "RINDLE_TMP_DIR": str(tmp_path / name),
            "RINDLE_NODE_ID": name,
            "RINDLE_TUS_PART_SIZE": str(CONFIGURED_PART),
            "RINDLE_TAIL_STORE": tail_store,
            "RINDLE_PUBLIC": "1",
        }

    return env


class Written:
    """Bytes the apps send to S3 in PutObject and UploadPart bodies (parts, one-shot
    objects and shared tail segments), counted by their boto3 clients."""

    def __init__(self, apps: list[Flask]) -> None:
        self.bytes = 0
        for app in apps:
            events = app.extensions["rindle"].s3.client.meta.events
            events.register("before-parameter-build.s3.PutObject", self.count)
            events.register("before-parameter-build.s3.UploadPart", self.count)

    def count(self, params: dict, **_: object) -> None:
        self.bytes += int(params["ContentLength"])


def two_nodes(node_env, tail_store: str) -> tuple[Flask, Flask, Written]:
    apps = [create_app(Settings.from_env(node_env(name, tail_store))) for name in ("a", "b")]
    return apps[0], apps[1], Written(apps)


def record(app: Flask, upload_id: str):
    return app.extensions["rindle"].uploads.get(upload_id)


def tail_file(app: Flask, upload_id: str) -> str:
    return tail_path(upload_id, app.config["RINDLE"].tmp_dir)


def shared_tails(app: Flask, s3_client, upload_id: str) -> list[str]:
    settings = app.config["RINDLE"]
    prefix = f"{settings.s3_prefix}{TAILS_DIR}{upload_id}/"
    listed = s3_client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def send_in_chunks(nodes: list[Flask], upload_id: str, data: bytes, sizes: list[int]) -> None:
    """PATCH ``data`` in chunks of ``sizes`` (the last one repeats), to each node in
    turn; every PATCH must be taken whole."""
    offset, turn = 0, 0
    while offset < len(data):
        size = sizes[min(turn, len(sizes) - 1)]
        chunk = data[offset : offset + size]
        r = Tus(nodes[turn % len(nodes)].test_client()).patch(upload_id, offset, chunk)
        assert r.status_code == 204, r.get_data(as_text=True)
        offset += len(chunk)
        assert int(r.headers["Upload-Offset"]) == offset
        turn += 1


def deferred(tus: Tus) -> str:
    r = tus.client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.headers["Location"].split("/files/", 1)[1]


def assert_completed_exact(app: Flask, s3_client, upload_id: str, data: bytes) -> None:
    run_jobs(app)
    upload = record(app, upload_id)
    assert upload.state == "completed"
    body = object_bytes(s3_client, app.config["RINDLE"].s3_bucket, upload.key)
    assert sha256(body) == sha256(data)


def test_5_mib_chunks_leave_no_tail_and_resume_on_another_node_in_local_mode(node_env, s3_client):
    a, b, written = two_nodes(node_env, "local")
    data = random_bytes(4 * 5 * MIB + 1234)
    upload_id = Tus(a.test_client()).create(len(data))

    offset = 0
    for turn in range(4):  # a, b, a, b: each chunk on another node, none refused
        node = (a, b)[turn % 2]
        r = Tus(node.test_client()).patch(upload_id, offset, data[offset : offset + 5 * MIB])
        assert r.status_code == 204, r.get_data(as_text=True)
        offset += 5 * MIB
        upload = record(a, upload_id)
        assert (upload.part_size, upload.committed, upload.offset) == (5 * MIB, offset, offset)
        # Nothing buffered: the tail file is empty (it keeps only where its bytes would
        # start, for a failover that rolls Redis back; the reaper removes it).
        assert os.path.getsize(tail_file(node, upload_id)) == 0
    r = Tus(a.test_client()).patch(upload_id, offset, data[offset:])  # the short last one
    assert r.status_code == 204, r.get_data(as_text=True)

    assert_completed_exact(a, s3_client, upload_id, data)
    assert written.bytes == len(data), "every byte went to S3 once"


def test_a_first_patch_of_the_whole_file_keeps_the_configured_part_size(node_env, s3_client):
    a, _, written = two_nodes(node_env, "local")
    data = random_bytes(2 * CONFIGURED_PART + 10)
    upload_id = Tus(a.test_client()).create(len(data))

    assert Tus(a.test_client()).patch(upload_id, 0, data).status_code == 204

    assert record(a, upload_id).part_size == CONFIGURED_PART
    parts = a.extensions["rindle"].uploads.parts(upload_id)
    assert [size for _, _, size in parts] == [CONFIGURED_PART, CONFIGURED_PART, 10]
    assert_completed_exact(a, s3_client, upload_id, data)
    assert written.bytes == len(data)


def test_a_first_patch_under_5_mib_keeps_the_configured_part_size(node_env, s3_client):
    a, _, _ = two_nodes(node_env, "local")
    data = random_bytes(CONFIGURED_PART + 3 * MIB)
    upload_id = Tus(a.test_client()).create(len(data))

    send_in_chunks([a], upload_id, data, [MIB])

    assert record(a, upload_id).part_size == CONFIGURED_PART
    assert_completed_exact(a, s3_client, upload_id, data)


def test_1_mib_chunks_in_shared_mode_resume_on_another_node_after_each_patch(node_env, s3_client):
    a, b, written = two_nodes(node_env, "s3")
    data = random_bytes(2 * CONFIGURED_PART + 300_000)
    upload_id = Tus(a.test_client()).create(len(data))

    send_in_chunks([a, b], upload_id, data, [MIB])  # every PATCH on the other node

    assert_completed_exact(a, s3_client, upload_id, data)
    # Each byte at most once as a segment, once in its part: at most 2x, never a rewrite.
    assert len(data) < written.bytes <= 2 * len(data)
    run_jobs(a)
    assert shared_tails(a, s3_client, upload_id) == []


def test_segments_hold_only_what_each_patch_added(node_env, s3_client):
    a, b, written = two_nodes(node_env, "s3")
    data = random_bytes(CONFIGURED_PART + 10)
    upload_id = Tus(a.test_client()).create(len(data))

    send_in_chunks([a], upload_id, data[: 3 * MIB], [MIB])

    upload = record(a, upload_id)
    assert [size for _, _, size in upload.tail_segments] == [MIB, MIB, MIB]
    assert written.bytes == 3 * MIB, "no segment rewritten"
    # A node that never saw the upload fetches the three segments, in order.
    os.unlink(tail_file(a, upload_id))
    r = Tus(b.test_client()).patch(upload_id, 3 * MIB, data[3 * MIB :])
    assert r.status_code == 204, r.get_data(as_text=True)
    assert_completed_exact(a, s3_client, upload_id, data)


def test_one_byte_patches_cannot_make_the_server_write_more_than_twice_what_they_send(
    node_env, s3_client
):
    a, _, written = two_nodes(node_env, "s3")
    data = random_bytes(CONFIGURED_PART + 10)
    upload_id = Tus(a.test_client()).create(len(data))
    tus = Tus(a.test_client())
    sent = 0

    for _ in range(20):
        r = tus.patch(upload_id, 0, data[:1])
        sent += 1
        assert r.status_code == 400, r.get_data(as_text=True)
        assert r.get_json()["error"] == "append_too_small"
    assert written.bytes <= 2 * sent
    assert record(a, upload_id).offset == 0, "nothing half-kept"
    assert shared_tails(a, s3_client, upload_id) == []

    # Bodies of 64 KiB are taken; the short last chunk too.
    send_in_chunks([a], upload_id, data, [64 * 1024])
    assert written.bytes <= 2 * len(data)
    assert_completed_exact(a, s3_client, upload_id, data)


def test_a_body_that_ends_early_with_a_few_bytes_keeps_none_of_them_in_shared_mode(
    node_env, s3_client
):
    """A client that announces a large body and sends a few bytes cannot make one S3
    object of them: not acknowledged, the client sends them again."""
    a, _, written = two_nodes(node_env, "s3")
    data = random_bytes(CONFIGURED_PART + 10)
    upload_id = Tus(a.test_client()).create(len(data))
    client = a.test_client()
    r = client.patch(
        f"/files/{upload_id}",
        input_stream=io.BytesIO(data[:100]),  # ends before Content-Length: the client left
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        environ_overrides={"CONTENT_LENGTH": str(MIB)},
    )

    assert r.status_code == 204, r.get_data(as_text=True)
    assert r.headers["Upload-Offset"] == "0"
    assert written.bytes == 0
    send_in_chunks([a], upload_id, data, [MIB])
    assert_completed_exact(a, s3_client, upload_id, data)


@pytest.mark.parametrize("tail_store", ["local", "s3"])
def test_mixed_chunk_sizes_stay_exact(node_env, s3_client, tail_store):
    """6 MiB chunks set the part size; the client then changes to 7 MiB chunks, then 1 MiB
    ones, and ends with a short one: tails come back, and everything stays exact."""
    a, b, _ = two_nodes(node_env, tail_store)
    data = random_bytes(6 * MIB + 2 * 7 * MIB + 3 * MIB + 777)
    upload_id = Tus(a.test_client()).create(len(data))
    nodes = [a] if tail_store == "local" else [a, b]

    send_in_chunks(nodes, upload_id, data, [6 * MIB, 7 * MIB, 7 * MIB, MIB])

    assert record(a, upload_id).part_size == 6 * MIB
    assert_completed_exact(a, s3_client, upload_id, data)


def test_a_deferred_length_upload_follows_only_chunks_that_keep_its_ceiling(node_env, s3_client):
    a, _, _ = two_nodes(node_env, "local")
    tus = Tus(a.test_client())
    small, large = (deferred(tus) for _ in range(2))
    data = random_bytes(10 * MIB)
    assert tus.patch(small, 0, data[: 5 * MIB]).status_code == 204
    assert tus.patch(large, 0, data).status_code == 204

    # 5 MiB parts would hold at most 50 GiB of an upload whose size is not known yet.
    assert record(a, small).part_size == CONFIGURED_PART
    assert record(a, large).part_size == 10 * MIB
    r = tus.patch(large, 10 * MIB, data[:10], **{"Upload-Length": str(10 * MIB + 10)})
    assert r.status_code == 204, r.get_data(as_text=True)
    assert_completed_exact(a, s3_client, large, data + data[:10])
