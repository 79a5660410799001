"""Operating rindle (issue #11): metrics, the doctor, log lines, the queue dashboard.

Each test runs gunicorn (2 workers) and an rq worker as real processes against the real
Redis and S3 of the session, or an S3 of its own where it must be stopped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack import ManagedProcess, SeaweedS3, ServiceUnavailable, clock_command
from devstack.services import REPO_ROOT, wait_until
from tests.conftest import PART_SIZE, _service_missing
from tests.e2e.conftest import COMPLETION_TIMEOUT, TUS, payload, poll

pytestmark = pytest.mark.e2e
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
MIB = 1024 * 1024


def metrics_env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"RINDLE_METRICS": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), **more}


def scrape(url: str) -> dict[str, float]:
    """Sample name with labels -> value, from a fresh connection."""
    with requests.Session() as session:
        r = session.get(f"{url}/metrics", timeout=10, headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def upload(files_url: str, data: bytes, chunk: int, request_id: str = "") -> str:
    """POST, then PATCHes of ``chunk`` bytes, each on a connection of its own."""
    extra = {"X-Request-ID": request_id} if request_id else {}
    r = requests.post(
        files_url, headers={**TUS, **extra, "Upload-Length": str(len(data))}, timeout=10
    )
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    for offset in range(0, len(data), chunk):
        r = requests.patch(
            url,
            data=data[offset : offset + chunk],
            headers={**PATCH, **extra, "Upload-Offset": str(offset), "Connection": "close"},
            timeout=60,
        )
        assert r.status_code == 204, r.text
    return url


def wait_completed(stack, upload_id: str) -> None:
    poll(
        lambda: stack.redis.hget(f"rindle:upload:{{{upload_id}}}", "state") == "completed" or None,
        COMPLETION_TIMEOUT,
        "the upload to be completed",
    )


def flask_rindle(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app:app", "rindle", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


# -- metrics ---------------------------------------------------------------------------


def test_a_scrape_after_an_upload_shows_its_bytes_and_its_completion(make_stack, tmp_path):
    stack = make_stack(**metrics_env(tmp_path))
    data = payload(12 * MIB, seed=11)  # parts of 5, 5 and 2 MiB
    url = upload(stack.files_url, data, 4 * MIB)  # 3 PATCHes
    upload_id = url.rsplit("/", 1)[1]
    wait_completed(stack, upload_id)

    # Any worker may answer a scrape: each must add up both workers' counts.
    for _ in range(6):
        samples = scrape(stack.url)
        assert samples["rindle_received_bytes_total"] == len(data)
        assert samples['rindle_requests_total{method="PATCH",status="204"}'] == 3
        assert samples['rindle_requests_total{method="POST",status="201"}'] == 1
        assert samples["rindle_uploads_created_total"] == 1
        assert samples["rindle_uploads_completed_total"] == 1
        assert samples["rindle_uploads_failed_total"] == 0
        assert samples["rindle_part_upload_seconds_count"] == 3
        assert samples["rindle_patches_in_progress"] == 0
        assert samples['rindle_queue_jobs{state="failed"}'] == 0
        assert samples["rindle_tails"] == 0
    # Both gunicorn workers count in the shared directory (multiprocess mode).
    pids = {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "prom").glob("counter_*.db")}
    children = Path(f"/proc/{stack.web.pid}/task/{stack.web.pid}/children").read_text().split()
    assert len(children) == 2 and set(children) <= pids, (children, pids)


def test_metrics_count_the_tail_on_disk_the_423_and_the_termination(make_stack, tmp_path):
    stack = make_stack(**metrics_env(tmp_path, RINDLE_RELEASE_WAIT="1"))
    r = requests.post(stack.files_url, headers={**TUS, "Upload-Length": str(8 * MIB)}, timeout=10)
    url = r.headers["Location"]
    r = requests.patch(url, data=b"x" * 1000, headers={**PATCH, "Upload-Offset": "0"}, timeout=10)
    assert r.status_code == 204
    samples = scrape(stack.url)
    assert samples["rindle_tails"] == 1
    assert samples["rindle_tail_bytes"] == 1000

    upload_id = url.rsplit("/", 1)[1]
    stack.redis.set(f"rindle:upload:{{{upload_id}}}:writer", "elsewhere/x/1/t", px=60_000)
    r = requests.patch(url, data=b"y", headers={**PATCH, "Upload-Offset": "1000"}, timeout=10)
    assert r.status_code == 423
    stack.redis.delete(f"rindle:upload:{{{upload_id}}}:writer")
    assert requests.delete(url, headers=TUS, timeout=10).status_code == 204

    samples = scrape(stack.url)
    assert samples["rindle_locked_total"] == 1
    assert samples['rindle_release_requests_total{kind="now"}'] == 1
    assert samples["rindle_uploads_terminated_total"] == 1


def test_metrics_are_off_unless_asked_for(stack):
    assert requests.get(f"{stack.url}/metrics", timeout=10).status_code == 404


# -- the doctor ------------------------------------------------------------------------


@pytest.fixture
def own_s3(tmp_path: Path):
    """An S3 server of this test's own, to be stopped by it."""
    s3 = SeaweedS3(tmp_path / "seaweedfs", bucket="doctor")
    try:
        s3.start()
    except ServiceUnavailable as exc:
        _service_missing(exc)
    yield s3
    s3.stop(timeout=0)


def test_the_doctor_passes_on_the_stack_and_names_s3_when_it_is_stopped(
    make_stack, own_s3, tmp_path
):
    stack = make_stack(**own_s3.env(bucket="doctor"), **metrics_env(tmp_path))
    clock = ManagedProcess(
        "rq-cron",
        clock_command(),
        env=stack.env,
        cwd=REPO_ROOT,
        log_path=tmp_path / "clock.log",
    ).start()
    try:
        from rq.cron import CronScheduler
        from rq.scheduler import RQScheduler

        wait_until(
            lambda: (
                CronScheduler.all(stack.redis, cleanup=False)
                and stack.redis.exists(RQScheduler.get_locking_key("rindle"))
            ),
            timeout=60,
            procs=[clock],
            what="for the clock and the scheduler",
            interval=0.2,
        )
        done = flask_rindle(stack.env, "doctor")
        assert done.returncode == 0, done.stdout + done.stderr
        for name in ("redis", "redis eviction", "clock", "s3", "s3 multipart", "tmp dir"):
            assert re.search(rf"^ok\s+{name}:", done.stdout, re.M), done.stdout
        for name in ("sizes", "rq worker", "rq scheduler", "rq cron", "metrics"):
            assert re.search(rf"^ok\s+{name}:", done.stdout, re.M), done.stdout
        assert "FAIL" not in done.stdout
        # The probe left no multipart upload behind.
        assert not own_s3.client().list_multipart_uploads(Bucket="doctor").get("Uploads")

        own_s3.stop(timeout=0)
        done = flask_rindle(stack.env, "doctor")
        assert done.returncode == 1, done.stdout + done.stderr
        line = re.search(r"^FAIL\s+s3: .*$", done.stdout, re.M)
        assert line, done.stdout
        assert own_s3.endpoint.split("//")[1] in line.group(0)  # says which S3
        assert "fix: check AWS_ENDPOINT_URL_S3" in done.stdout
        assert re.search(r"^ok\s+redis:", done.stdout, re.M)  # the rest still checked
    finally:
        clock.stop()


def test_the_doctor_fails_without_a_worker(make_stack, tmp_path):
    stack = make_stack()
    stack.worker.stop(timeout=10)  # a warm shutdown: it deregisters before it exits
    done = flask_rindle(stack.env, "doctor")
    assert done.returncode == 1
    assert re.search(
        r"^FAIL\s+rq worker: no RQ worker listens on queue 'rindle'", done.stdout, re.M
    )
    assert "fix: run `rq worker --with-scheduler" in done.stdout


# -- logs ------------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    bad = [line for line in lines if not line.startswith("{")]
    assert not bad, f"lines that are not JSON: {bad[:5]}"
    return [json.loads(line) for line in lines]


def test_json_log_lines_name_the_request_and_the_upload(make_stack, tmp_path):
    stack = make_stack(RINDLE_LOG_FORMAT="json", RINDLE_READ_CHUNK=str(64 * 1024))
    data = payload(PART_SIZE + 3 * MIB, seed=3)
    url = upload(stack.files_url, data, 4 * MIB, request_id="req-from-client-1")
    upload_id = url.rsplit("/", 1)[1]
    wait_completed(stack, upload_id)
    stack.stop()  # flushes the logs

    entries = json_lines(stack.log_dir / "gunicorn.log")
    summaries = [e for e in entries if e.get("event") == "write"]
    # One line per PATCH, never one per read (each PATCH made 64 reads here).
    assert len(summaries) == 2, summaries
    for entry in summaries:
        assert entry["request_id"] == "req-from-client-1"
        assert entry["upload_id"] == upload_id
        assert entry["outcome"] == "ok"
        assert entry["bytes"] > 0 and entry["duration"] >= 0
    assert [e["bytes"] for e in summaries] == [4 * MIB, len(data) - 4 * MIB]
    assert [e["parts"] for e in summaries] == [0, 2]
    # Every line about the upload names the request and the upload, whoever logs it.
    about = [e for e in entries if upload_id in e["message"]]
    assert len(about) >= 2
    for entry in about:
        assert entry.get("request_id") == "req-from-client-1", entry
        assert entry.get("upload_id") == upload_id, entry

    worker = json_lines(stack.log_dir / "worker.log")
    job_lines = [e for e in worker if e.get("upload_id") == upload_id]
    assert job_lines, "the completion job's lines name the upload"


def test_the_rq_worker_prints_each_line_once(make_stack):
    stack = make_stack()
    data = payload(1000, seed=5)
    url = upload(stack.files_url, data, len(data))
    wait_completed(stack, url.rsplit("/", 1)[1])
    stack.stop()
    lines = (stack.log_dir / "worker.log").read_text().splitlines()
    listening = [line for line in lines if "Listening on" in line]
    assert len(listening) == 1, lines
    done = [line for line in lines if "Job OK" in line]
    assert len(done) == 1, lines


# -- rq-dashboard ------------------------------------------------------------------------


def test_the_queue_dashboard_needs_its_password(make_stack):
    stack = make_stack(RINDLE_DASHBOARD_PASSWORD="s3cret", RINDLE_DASHBOARD_USER="ops")
    data = payload(1000, seed=6)
    url = upload(stack.files_url, data, len(data))
    upload_id = url.rsplit("/", 1)[1]
    wait_completed(stack, upload_id)

    assert requests.get(f"{stack.url}/rq/", timeout=10).status_code == 401
    wrong = requests.get(f"{stack.url}/rq/", auth=("ops", "nope"), timeout=10)
    assert wrong.status_code == 401
    page = requests.get(f"{stack.url}/rq/", auth=("ops", "s3cret"), timeout=10)
    assert page.status_code == 200 and "RQ" in page.text
    queues = requests.get(f"{stack.url}/rq/0/data/queues.json", auth=("ops", "s3cret"), timeout=10)
    assert queues.status_code == 200, queues.text
    assert "rindle" in [q["name"] for q in queues.json()["queues"]]
    workers = requests.get(
        f"{stack.url}/rq/0/data/workers.json", auth=("ops", "s3cret"), timeout=10
    )
    assert workers.status_code == 200 and len(workers.json()["workers"]) == 1
    finished = requests.get(
        f"{stack.url}/rq/0/data/jobs/rindle/finished/8/asc/1.json",
        auth=("ops", "s3cret"),
        timeout=10,
    )
    assert finished.status_code == 200, finished.text
    assert [j["id"] for j in finished.json()["jobs"]] == [f"rindle-complete-{upload_id}"]
    page = requests.get(
        f"{stack.url}/rq/0/view/job/rindle-complete-{upload_id}", auth=("ops", "s3cret"), timeout=10
    )
    assert page.status_code == 200


def test_without_a_password_there_is_no_dashboard(stack):
    assert requests.get(f"{stack.url}/rq/", timeout=10).status_code == 404
