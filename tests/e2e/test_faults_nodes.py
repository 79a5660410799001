"""Two nodes (two gunicorn stacks sharing Redis and the bucket, each with its own tail
folder): a writer that lost its lease can never commit (fencing), and a resume that
reaches the node without the tail fails loudly and changes nothing (issue #3)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
import requests

from tests.conftest import Stack
from tests.e2e.conftest import MIB, TUS, Uploads, payload, poll, send_up_to, upload_id_of
from tests.e2e.test_faults import (
    PATCH,
    P,
    RawPatch,
    assert_consistent,
    create,
    head_offset,
    record,
    redis_parts,
    s3_parts,
    tail_of,
    tail_size,
    tus_resume,
    ukey,
)

pytestmark = pytest.mark.e2e


def url_on(stack: Stack, upload_id: str) -> str:
    """The same upload, asked of another node."""
    return stack.files_url + upload_id


def snapshot(stack: Stack, upload_id: str) -> tuple[dict[str, str], dict[str, str], object]:
    """Everything shared about an upload: its Redis hash, its parts, its S3 parts."""
    rec = record(stack, upload_id)
    parts = stack.redis.hgetall(f"{ukey(upload_id)}:parts")
    held = s3_parts(stack, rec["key"], rec["upload_id"])
    return rec, parts, held


# =========================================================================== 3. fencing


def test_a_writer_whose_lease_was_taken_can_never_commit(make_stack: Callable[..., Stack]):
    """Node A streams an upload; its lease disappears (as if it expired: A was stuck) and
    a PATCH on node B takes the upload over. When A goes on, it ships a whole part to S3
    but its commit is fenced off: A's client gets 409, the offset never moves for A, and
    B's bytes make the object."""
    a, b = make_stack(), make_stack()
    data = payload(3 * P + 5, seed=301)
    url = create(a, len(data))
    upload_id = upload_id_of(url)
    writer = f"{ukey(upload_id)}:writer"

    patch_a = RawPatch(url, 0, len(data))
    patch_a.send(data[: P + MIB])
    poll(lambda: int(record(a, upload_id)["committed"]) == P or None, 30, "for A's first part")
    token_a = a.redis.get(writer)
    assert token_a
    a.redis.delete(writer)  # A's lease "expired" while A is still at work

    patch_b = RawPatch(url_on(b, upload_id), P, len(data) - P)
    patch_b.send(data[P : P + MIB])
    poll(lambda: a.redis.get(writer) not in (None, token_a) or None, 30, "for B's lease")

    # A finishes its second part: S3 gets it, Redis refuses it.
    patch_a.send(data[P + MIB : 2 * P + MIB])
    status, _, body = patch_a.response()
    patch_a.close()
    assert status == 409, body
    assert json.loads(body)["error"] == "conflict"
    rec = record(a, upload_id)
    assert (int(rec["offset"]), int(rec["committed"])) == (P, P), "A committed after losing"
    assert len(redis_parts(a, upload_id)) == 1

    patch_b.send(data[P + MIB :])
    status, headers, body = patch_b.response()
    patch_b.close()
    assert status == 204, body
    assert headers["upload-offset"] == str(len(data))
    Uploads(b).assert_stored(url_on(b, upload_id), data)


# =========================================================================== 7. misrouted


@pytest.mark.parametrize("sent", [3 * MIB, P + 2 * MIB], ids=["tail-only", "part+tail"])
def test_a_resume_on_the_node_without_the_tail_fails_loudly_and_changes_nothing(
    make_stack: Callable[..., Stack], sent: int
):
    """Bytes acknowledged in node A's tail; the resume reaches node B: 500
    tus_tail_missing (JSON), an ERROR line naming the upload and both nodes, Redis and
    S3 as they were, no tail made on B. The same resume on A then completes exact.
    (A small first PATCH, so that the part size stays P and "part+tail" has a tail.)"""
    a, b = make_stack(), make_stack()
    data = payload(2 * P + 99, seed=700 + sent)
    url = create(a, len(data))
    upload_id = upload_id_of(url)
    send_up_to(url, data, sent)
    before = snapshot(a, upload_id)

    r = requests.patch(
        url_on(b, upload_id),
        data=data[sent:],
        headers={**PATCH, "Upload-Offset": str(sent)},
        timeout=60,
    )
    assert r.status_code == 500
    assert r.json()["error"] == "tus_tail_missing"
    assert "Traceback" not in r.text
    assert snapshot(a, upload_id) == before
    assert not a.redis.exists(f"{ukey(upload_id)}:writer"), "B kept the lease"
    assert tail_of(b, upload_id) is None
    poll(
        lambda: (
            f"tus_tail_missing: upload={upload_id} node=node1 tail_node=node0"
            in b.web.log_tail(200)
            or None
        ),
        10,
        "for the ERROR line on node B",
    )
    assert assert_consistent(a, upload_id, data)["offset"] == sent

    r = requests.patch(
        url, data=data[sent:], headers={**PATCH, "Upload-Offset": str(sent)}, timeout=60
    )
    assert r.status_code == 204, r.text
    Uploads(a).assert_stored(url, data)


def test_a_stale_tail_on_the_wrong_node_is_not_taken_for_the_buffered_bytes(
    make_stack: Callable[..., Stack],
):
    """Node A dies with bytes in its tail that were never acknowledged (the first 2 MiB).
    The client resumes on node B at offset 0, which is allowed (no tail needed there), and
    B commits a part and buffers 1 MiB in its own tail. The next resume reaches A again:
    A still has its old tail, 2 MiB of bytes from offset 0, while Redis says the tail
    holds 1 MiB from offset 5 MiB. A must refuse (tus_tail_missing): taking the first
    1 MiB of its stale file as the buffered bytes puts the wrong bytes in the object,
    silently."""
    a, b = make_stack(RINDLE_LEASE_SECONDS=5), make_stack(RINDLE_LEASE_SECONDS=5)
    data = payload(P + 2 * MIB, seed=702)
    url = create(a, len(data))
    upload_id = upload_id_of(url)

    patch = RawPatch(url, 0, len(data))
    patch.send(data[: 2 * MIB])
    poll(lambda: tail_size(a, upload_id) == 2 * MIB or None, 30, "for 2 MiB of tail on A")
    a.restart_web(kill=True)
    patch.close()
    assert tail_size(a, upload_id) == 2 * MIB  # leftovers: Redis says offset 0

    # The failover: B takes the resume at offset 0, commits a part, buffers 1 MiB (a
    # small PATCH first, so that the part size stays P: see send_up_to).
    assert head_offset(url_on(b, upload_id)) == 0
    send_up_to(url_on(b, upload_id), data, P + MIB)
    assert assert_consistent(b, upload_id, data)["tail"] == MIB
    before = snapshot(a, upload_id)

    # The next resume reaches A again.
    r = requests.patch(
        url,
        data=data[P + MIB :],
        headers={**PATCH, "Upload-Offset": str(P + MIB)},
        timeout=60,
    )
    if r.status_code == 204:
        uploads = Uploads(a)
        uploads.wait_completed(upload_id)
        sha, size = uploads.sha256(uploads.key(upload_id))
        exact = sha == hashlib.sha256(data).hexdigest()
        pytest.fail(
            "node A took its stale tail for the buffered bytes and answered 204; the "
            + (
                "object happened to be exact"
                if exact
                else f"completed object ({size} bytes) differs from the source: its bytes "
                "5..6 MiB are the stale tail's (the source's 0..1 MiB)"
            ),
            pytrace=False,
        )
    assert r.status_code == 500, r.text
    assert r.json()["error"] == "tus_tail_missing"
    assert snapshot(a, upload_id) == before
    # Resuming on B (which holds the tail) completes the upload exact.
    tus_resume(url_on(b, upload_id), data)
    Uploads(b).assert_stored(url_on(b, upload_id), data)


def test_head_on_any_node_reports_the_shared_offset(make_stack: Callable[..., Stack]):
    """HEAD reads Redis only: both nodes agree, whichever holds the tail."""
    a, b = make_stack(), make_stack()
    data = payload(P + 3, seed=703)
    url = create(a, len(data))
    upload_id = upload_id_of(url)
    r = requests.patch(url, data=data[:MIB], headers={**PATCH, "Upload-Offset": "0"}, timeout=30)
    assert r.status_code == 204
    for stack in (a, b):
        r = requests.head(url_on(stack, upload_id), headers=TUS, timeout=10)
        assert (r.status_code, r.headers["Upload-Offset"]) == (200, str(MIB))
