"""50 uploads in mixed states, then maintenance: nothing may leak (issue #4).

Completed, terminated, abandoned half-way (still live), expired and never-started uploads
are made through gunicorn and the rq worker; then a maintenance pass runs through the
`flask rindle` CLI, once or twice at the same time. Afterwards: no multipart upload open
unless its upload is live, no tail on disk unless its upload is live, and every Redis key
of an ended upload has a TTL.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from rindle import tail_path
from rindle.keys import EXPIRY_INDEX
from tests.conftest import PART_SIZE
from tests.e2e.conftest import TUS, payload, poll

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def create(stack, length: int) -> str:
    r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": str(length)}, timeout=10)
    assert r.status_code == 201
    return r.headers["Location"]


def send(url: str, offset: int, data: bytes) -> None:
    r = requests.patch(url, data=data, headers={**PATCH, "Upload-Offset": str(offset)}, timeout=60)
    assert r.status_code == 204, r.text


def uid(url: str) -> str:
    return url.rsplit("/", 1)[1]


def expire(stack, upload_id: str) -> None:
    """Travel in time: this upload's last activity is past the expiration."""
    past = time.time() - 1
    stack.redis.hset(f"rindle:upload:{{{upload_id}}}", "expires_at", past)
    stack.redis.zadd(EXPIRY_INDEX, {upload_id: past})


def maintenance_pass(stack) -> subprocess.Popen:
    script = "flask rindle sweep && flask rindle reap-tails && flask rindle abort-orphans --grace 0"
    env = {**stack.env, "FLASK_APP": "app"}
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("passes", [1, 2], ids=["one-pass", "two-passes-at-once"])
def test_mixed_uploads_leave_nothing_behind_after_maintenance(stack, passes):
    half = PART_SIZE + 1000  # one committed part (open multipart upload) and a tail
    data = payload(2 * PART_SIZE, seed=passes)
    groups: dict[str, list[str]] = {
        k: [] for k in ("completed", "terminated", "abandoned", "expired", "new")
    }
    for i in range(10):
        url = create(stack, PART_SIZE + 100 if i % 3 == 0 else 1000)
        size = PART_SIZE + 100 if i % 3 == 0 else 1000
        send(url, 0, data[:size])
        groups["completed"].append(url)
    for name in ("terminated", "abandoned", "expired"):
        for _ in range(10):
            url = create(stack, len(data))
            send(url, 0, data[:half])
            groups[name].append(url)
    for _ in range(10):
        groups["new"].append(create(stack, 1234))
    for url in groups["terminated"]:
        assert requests.delete(url, headers=TUS, timeout=10).status_code == 204
    for url in groups["expired"] + groups["new"][:5]:
        expire(stack, uid(url))
    strays = [tail_path(f"unknown-{uuid.uuid4()}", str(stack.tmp_dir)) for _ in range(3)]
    for path in strays:
        Path(path).write_bytes(b"left by a crashed node")

    def jobs_done() -> bool | None:
        states = [
            stack.redis.hget(f"rindle:upload:{{{uid(u)}}}", "state") for u in groups["completed"]
        ]
        open_keys = open_multipart_keys(stack)
        aborted = all(stack.prefix + uid(u) not in open_keys for u in groups["terminated"])
        return (all(s == "completed" for s in states) and aborted) or None

    poll(jobs_done, 120, "for the worker to complete and abort")

    runs = [maintenance_pass(stack) for _ in range(passes)]
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out

    live = {uid(u) for u in groups["abandoned"]} | {uid(u) for u in groups["new"][5:]}
    live_with_bytes = {uid(u) for u in groups["abandoned"]}
    assert open_multipart_keys(stack) == {stack.prefix + i for i in live_with_bytes}
    tails = set(os.listdir(stack.tmp_dir / "tus"))
    assert tails == {os.path.basename(tail_path(i, str(stack.tmp_dir))) for i in live_with_bytes}
    for url in [u for g in ("completed", "terminated", "expired") for u in groups[g]]:
        keys = stack.redis.keys(f"rindle:upload:{{{uid(url)}}}*")
        assert keys and all(stack.redis.ttl(k) > 0 for k in keys), url
    for url in groups["expired"] + groups["new"][:5] + groups["terminated"]:
        assert requests.head(url, headers=TUS, timeout=10).status_code == 410
    for upload_id in live:
        assert stack.redis.hget(f"rindle:upload:{{{upload_id}}}", "state") in (
            "created",
            "receiving",
        )

    # The live uploads still finish, exact.
    url = groups["abandoned"][0]
    send(url, half, data[half:])
    poll(
        lambda: stack.redis.hget(f"rindle:upload:{{{uid(url)}}}", "state") == "completed" or None,
        60,
        "for the resumed upload",
    )
    body = stack.s3.get_object(Bucket=stack.bucket, Key=stack.prefix + uid(url))["Body"].read()
    assert body == data


def open_multipart_keys(stack) -> set[str]:
    listed = stack.s3.list_multipart_uploads(Bucket=stack.bucket).get("Uploads", [])
    return {u["Key"] for u in listed}
