"""Redis faults (issue #3), with the fault proxy between the web process and redis-server
(the rq worker talks to Redis directly): Redis unreachable, lost mid-PATCH, and
transactions whose outcome the app never hears. Requests answer 503 redis_unavailable
with Retry-After; nothing is half-written; once Redis is back the uploads end exact."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from devstack.services import RedisServer, SeaweedS3
from rindle.jobqueue import completion_job_id
from rindle.keys import EXPIRY_INDEX
from tests.conftest import _STACKS, Stack
from tests.e2e.conftest import MIB, TUS, Uploads, payload, poll, send_up_to
from tests.e2e.test_faults import (
    LEASE_SECONDS,
    PATCH,
    P,
    RawPatch,
    assert_consistent,
    create,
    head_offset,
    own_stack,
    record,
    redis_parts,
    rindle_cli,
    tail_size,
    target_of,
    tus_resume,
    ukey,
)
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def redis_proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(target_of(redis_server.url), name="redis") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def redis_stack(
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    redis_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The web process reaches Redis through ``redis_proxy``; the worker directly."""
    with own_stack(
        redis_server,
        s3_server,
        tmp_path_factory.mktemp("redis-stack"),
        REDIS_URL=redis_proxy.rewrite(redis_server.url),
        RINDLE_LEASE_SECONDS=LEASE_SECONDS,
        worker_overrides={"REDIS_URL": redis_server.url},
    ) as stack:
        yield stack


@pytest.fixture
def uploads(
    request: pytest.FixtureRequest, redis_stack: Stack, redis_proxy: FaultProxy
) -> Iterator[Uploads]:
    request.node.stash[_STACKS] = [redis_stack]
    helper = Uploads(redis_stack)
    yield helper
    redis_proxy.heal()
    helper.cleanup()


def lower(headers: object) -> dict[str, str]:
    return {k.lower(): v for k, v in dict(headers).items()}  # type: ignore[call-overload]


def assert_redis_unavailable(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 503, body
    assert int(headers["retry-after"]) > 0
    if body:
        assert json.loads(body)["error"] == "redis_unavailable"
        assert b"Traceback" not in body and b"Error" not in body, body


def shared_state(stack: Stack, upload_id: str) -> tuple[dict[str, str], object, int]:
    return record(stack, upload_id), redis_parts(stack, upload_id), tail_size(stack, upload_id)


def test_redis_unreachable_answers_503_and_half_writes_nothing(
    uploads: Uploads, redis_proxy: FaultProxy
):
    """Redis refuses connections: HEAD, POST and PATCH answer 503 with Retry-After (and a
    JSON redis_unavailable body, no trace of the exception), after redis-py's own retries
    (a few seconds). The upload's hash, parts and tail are untouched; back, it ends exact."""
    stack = uploads.stack
    data = payload(2 * P + 3, seed=501)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    send_up_to(url, data, P + MIB)  # part 1 and 1 MiB buffered
    before = shared_state(stack, upload_id)

    redis_proxy.refuse()
    took = {}
    for method in ("HEAD", "POST", "PATCH"):
        started = time.monotonic()
        if method == "HEAD":
            r = requests.head(url, headers=TUS, timeout=60)
        elif method == "POST":
            r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": "9"}, timeout=60)
        else:
            r = requests.patch(
                url,
                data=data[P + MIB :],
                headers={**PATCH, "Upload-Offset": str(P + MIB)},
                timeout=60,
            )
        took[method] = time.monotonic() - started
        assert_redis_unavailable(r.status_code, lower(r.headers), r.content)
    assert all(t < 20 for t in took.values()), took
    assert shared_state(stack, upload_id) == before
    redis_proxy.heal()

    assert tus_resume(url, data) == [204]
    uploads.assert_stored(url, data)


def test_redis_lost_mid_patch_keeps_the_acknowledged_bytes(
    uploads: Uploads, redis_proxy: FaultProxy
):
    """Redis goes away while a PATCH streams (one part committed): the writer's next
    check-in fails, the PATCH answers 503. Nothing is committed after the fault; once
    Redis is back (and the lease it could not release has expired) the client resumes
    from the offset HEAD reports and the object is exact."""
    stack = uploads.stack
    data = payload(3 * P + 11, seed=502)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    patch = RawPatch(url, 0, len(data))
    patch.send(data[: P + MIB])
    poll(lambda: int(record(stack, upload_id)["committed"]) == P or None, 30, "for a part")
    redis_proxy.refuse()

    def trickle() -> None:  # keep the writer reading (and checking in) until it gives up
        sent = P + MIB
        try:
            while sent < 2 * P - MIB:
                patch.send(data[sent : sent + 256 * 1024])
                sent += 256 * 1024
                time.sleep(0.1)
        except OSError:
            pass

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    status, headers, body = patch.response()
    patch.close()
    sender.join(10)
    assert_redis_unavailable(status, headers, body)
    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"]) == (P, P)
    redis_proxy.heal()

    seen = tus_resume(url, data)
    assert seen[-1] == 204, seen
    uploads.assert_stored(url, data)


def test_an_unanswered_part_commit_costs_a_retry_not_a_byte(
    uploads: Uploads, redis_proxy: FaultProxy
):
    """Redis runs the transaction that commits a part, but its answer is lost (the
    connection drops first): the writer tries again, finds Redis already there, and goes
    on; the upload ends exact."""
    stack = uploads.stack
    data = payload(2 * P + 5, seed=503)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    redis_proxy.drop_reply_once(b"HINCRBY")  # only a part commit adds to "committed"
    r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    assert redis_proxy.triggered.is_set()
    assert r.status_code == 204, r.text  # the retry found the part committed
    after = assert_consistent(stack, upload_id, data)
    assert after["committed"] >= P
    tus_resume(url, data)
    uploads.assert_stored(url, data)


def test_a_lost_expiry_index_update_after_a_commit_destroys_no_byte(
    uploads: Uploads, redis_proxy: FaultProxy
):
    """The commit of a PATCH's tail went through, then the expiry index update after it
    met a dropped connection: bookkeeping after a commit is best effort, so the tail keeps
    the bytes Redis acknowledges (before: it was cut back, and every resume answered
    500 tus_tail_missing until the upload expired)."""
    stack = uploads.stack
    data = payload(P + 3 * MIB, seed=506)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    redis_proxy.drop_reply_once(b"ZADD")
    r = requests.patch(url, data=data[: 3 * MIB], headers={**PATCH, "Upload-Offset": "0"})
    assert redis_proxy.triggered.is_set()
    assert r.status_code == 204, r.text
    assert record(stack, upload_id)["offset"] == str(3 * MIB)
    assert tail_size(stack, upload_id) == 3 * MIB
    assert tus_resume(url, data) == [204]
    uploads.assert_stored(url, data)


def test_an_unanswered_final_commit_still_completes_the_upload(
    uploads: Uploads, redis_proxy: FaultProxy
):
    """Redis runs the transaction that ends the upload (offset = length, state
    assembling), but its answer is lost. The upload is complete as far as Redis (and
    every later HEAD) says, so the completion job must still run and the PATCH, which
    did everything it was asked, should not be told it conflicted."""
    stack = uploads.stack
    data = payload(P + 2 * MIB, seed=504)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    redis_proxy.drop_reply_once(b"assembling")
    r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    assert redis_proxy.triggered.is_set()
    assert record(stack, upload_id)["offset"] == str(len(data))  # Redis did it
    assert r.status_code == 204, (
        f"the PATCH that ended the upload answered {r.status_code} {r.text}; "
        f"state {record(stack, upload_id)['state']!r}, tail left: "
        f"{tail_size(stack, upload_id)} bytes"
    )
    uploads.assert_stored(url, data)


def test_an_unanswered_lease_claim_is_found_on_the_retry(uploads: Uploads, redis_proxy: FaultProxy):
    """Redis takes a PATCH's writer lease (SET NX PX) but the answer is lost: the PATCH
    tries again, finds the lease is its own, and goes on (before: 503, and the lease it
    never knew it got locked the upload, 423, until it expired). Nothing is left held."""
    stack = uploads.stack
    data = payload(MIB, seed=505)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    redis_proxy.drop_reply_once(b"\r\nNX\r\n$2\r\nPX\r\n")  # SET <lease> <token> NX PX <ms>
    r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": "0"}, timeout=60)
    assert redis_proxy.triggered.is_set()
    assert r.status_code == 204, r.text
    assert not stack.redis.exists(f"{ukey(upload_id)}:writer"), "released"
    uploads.assert_stored(url, data)


@pytest.mark.parametrize("repair", ["head", "sweep"])
def test_a_crash_between_the_final_commit_and_the_completion_job_still_completes(
    uploads: Uploads, redis_proxy: FaultProxy, repair: str
):
    """The PATCH that ends an upload commits it (offset = length, state assembling) and
    then enqueues the completion job; the web process dies in between (the enqueue is
    held at the proxy, then gunicorn is SIGKILLed). Every client now sees a finished
    upload (HEAD: offset = length), so nobody will send it again: something must still
    make the object. Either the HEAD of the resuming client, or the maintenance sweep
    (``flask rindle sweep``, what the clock process runs) once the upload has been
    assembling for a while (10 minutes; the test moves the upload's check time to now),
    enqueues the job again. (Before the fix, the sweep did so only after Upload-Expires,
    24 h later, and nothing else did.)"""
    stack = uploads.stack
    data = payload(P + MIB, seed=506)
    url = create(stack, len(data))
    upload_id = uploads.track(url)
    redis_proxy.blackhole_once(completion_job_id(upload_id).encode())
    patch = RawPatch(url, 0, len(data))
    patch.send(data)
    redis_proxy.wait(lambda p: p.triggered.is_set(), 30, "for the enqueue of the job")
    assert record(stack, upload_id)["state"] == "assembling"
    stack.restart_web(kill=True)
    patch.close()
    redis_proxy.heal()

    if repair == "head":
        assert head_offset(url) == len(data)
    else:
        stack.redis.zadd(EXPIRY_INDEX, {upload_id: time.time() - 1})  # the check is due
    said = rindle_cli(stack, "sweep")
    try:
        uploads.wait_completed(upload_id, timeout=20)
    except pytest.fail.Exception:
        rec = record(stack, upload_id)
        pytest.fail(
            f"the upload stays {rec['state']!r} with no completion job, until its expiry "
            f"({rec['expires_at']}, {float(rec['expires_at']) - time.time():.0f} s from now); "
            f"sweep said: {said.strip()}",
            pytrace=False,
        )
    assert head_offset(url) == len(data)  # 423 while the dead writer's lease lives on
    uploads.assert_stored(url, data)
