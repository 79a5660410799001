"""Several parts in flight (issue #10): a fast PATCH uploads up to RINDLE_PARTS_IN_FLIGHT
parts at once while its body keeps arriving. S3 may finish them in any order; Redis
commits them in order only, so the offset never has a hole: a part that fails ends the
PATCH with every part before it kept and none after it, and a SIGKILL leaves nothing
that contradicts Redis. The app talks to S3 through a fault proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.services import RedisServer, SeaweedS3
from tests.conftest import Stack
from tests.e2e import test_faults as faults
from tests.e2e.conftest import Uploads, payload, poll
from tests.e2e.test_faults import (
    P,
    RawPatch,
    assert_consistent,
    committed_at_least,
    create,
    kill_web,
    record,
    redis_parts,
    s3_parts,
    stack_behind,
    tus_resume,
)
from tests.e2e.test_faults_s3 import assert_storage_unavailable
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.e2e

IN_FLIGHT = 3
s3_proxy = faults.s3_proxy


@pytest.fixture(scope="module")
def flight_stack(
    redis_server: RedisServer,
    s3_server: SeaweedS3,
    s3_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    with stack_behind(
        redis_server,
        s3_server,
        s3_proxy,
        tmp_path_factory.mktemp("flight-stack"),
        RINDLE_PARTS_IN_FLIGHT=IN_FLIGHT,
        RINDLE_READ_TIMEOUT=10,
    ) as stack:
        yield stack


@pytest.fixture
def flights(
    request: pytest.FixtureRequest, flight_stack: Stack, s3_proxy: FaultProxy
) -> Iterator[Uploads]:
    yield from faults.uploads_behind(request, flight_stack, s3_proxy)


def test_a_failed_middle_part_keeps_the_parts_before_it_and_commits_none_after(
    flights: Uploads, s3_proxy: FaultProxy
):
    """Every attempt to upload part 2 is cut while parts 1 and 3 go up beside it: the
    PATCH answers 503, Redis has part 1 only (part 3 is in S3, but not committed: a
    commit after a hole would make the offset lie), and the client resumes from there."""
    stack = flights.stack
    data = payload(6 * P + 77, seed=1001)
    url = create(stack, len(data))
    upload_id = flights.track(url)
    for _ in range(6):  # more than boto3 tries (three retries, a reconnect)
        s3_proxy.cut_once(b"partNumber=2 HTTP", after=64 * 1024)

    with RawPatch(url, 0, len(data)) as patch:
        patch.send(data[: 3 * P + 11])  # parts 1-3 fill and go up together
        status, headers, body = patch.response()
    assert_storage_unavailable(status, headers, body)
    s3_proxy.heal()  # the cuts left over

    after = assert_consistent(stack, upload_id, data)
    assert (after["offset"], after["committed"], after["parts"]) == (P, P, 1)
    rec = record(stack, upload_id)
    assert sorted(redis_parts(stack, upload_id)) == [1]
    held = s3_parts(stack, rec["key"], rec["upload_id"])
    assert 3 in held, f"part 3 was not uploaded beside part 2 (S3 holds {sorted(held)})"
    assert 2 not in held

    tus_resume(url, data)
    flights.assert_stored(url, data)


def test_sigkill_with_parts_in_flight_leaves_only_what_redis_committed(
    flights: Uploads, s3_proxy: FaultProxy
):
    """S3 is slow (the proxy throttles uploads), so several parts are in flight when the
    web process is SIGKILLed: Redis's parts are 1..n in S3 with the right bytes, the
    offset is theirs, and the upload resumes exact."""
    stack = flights.stack
    data = payload(7 * P + 5, seed=1002)
    url = create(stack, len(data))
    upload_id = flights.track(url)
    s3_proxy.throttle(2 * P, direction="up")  # shared by the parts in flight: seconds each

    patch = RawPatch(url, 0, len(data))
    patch.send(data[: 5 * P])
    poll(lambda: committed_at_least(stack, upload_id, P, 0), 30, "a first part committed")
    kill_web(stack, patch)
    s3_proxy.heal()

    after = assert_consistent(stack, upload_id, data)
    assert after["committed"] >= P
    assert after["offset"] == after["committed"], "a killed PATCH acknowledged no tail"
    tus_resume(url, data)
    flights.assert_stored(url, data)
