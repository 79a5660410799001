"""Application hooks: each signal once with the right upload, and the deciding callbacks."""

from __future__ import annotations

import base64
import html
import json
import secrets
from collections import defaultdict

import pytest
from rq import Queue
from rq.job import Job

from app import create_app
from rindle import Settings, hooks, init_app
from rindle.hooks import Hooks, Refuse
from rindle.keys import EXPIRY_INDEX
from rindle.web import dashboard
from tests.integration.conftest import PART, TUS, Tus, random_bytes, run_jobs

pytestmark = pytest.mark.integration

SIGNALS = {
    "created": hooks.upload_created,
    "progress": hooks.upload_progress,
    "received": hooks.upload_received,
    "completed": hooks.upload_completed,
    "terminated": hooks.upload_terminated,
    "expired": hooks.upload_expired,
    "failed": hooks.upload_failed,
}


@pytest.fixture
def heard(app):
    """Every signal the app's receivers hear: name -> [(upload id, state, offset)]."""
    calls: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    receivers = []
    for name, signal in SIGNALS.items():

        def receiver(sender, upload, name=name):
            assert sender is app
            calls[name].append((upload.id, upload.state, upload.offset))

        receivers.append(receiver)
        signal.connect(receiver, sender=app)
    yield calls
    for signal, receiver in zip(SIGNALS.values(), receivers, strict=True):
        signal.disconnect(receiver)


def test_signals_of_an_upload_from_creation_to_completion(tus, rq_burst, heard):
    data = random_bytes(PART + 10)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data[:1000]).status_code == 204
    assert tus.patch(upload_id, 1000, data[1000:]).status_code == 204
    rq_burst()
    assert heard["created"] == [(upload_id, "created", 0)]
    assert heard["progress"] == [
        (upload_id, "receiving", 1000),
        (upload_id, "assembling", len(data)),
    ]
    assert heard["received"] == [(upload_id, "assembling", len(data))]
    assert heard["completed"] == [(upload_id, "completed", len(data))]
    rq_burst()  # nothing twice
    assert len(heard["completed"]) == 1
    assert not heard["terminated"] and not heard["expired"] and not heard["failed"]


def test_terminated_and_expired_signals(app, tus, rdb, heard):
    gone = tus.create(10)
    assert tus.client.delete(f"/files/{gone}", headers=TUS).status_code == 204
    stale = tus.create(10)
    rdb.hset(f"rindle:upload:{{{stale}}}", "expires_at", 1)
    rdb.zadd(EXPIRY_INDEX, {stale: 1})
    with app.app_context():
        app.extensions["rindle"].maintenance.sweep_expired()
        app.extensions["rindle"].maintenance.sweep_expired()
    assert heard["terminated"] == [(gone, "terminated", 0)]
    assert heard["expired"] == [(stale, "expired", 0)]


def test_failed_signal_when_the_parts_do_not_assemble(tus, rq_burst, rdb, heard):
    data = random_bytes(2 * PART + 1)
    upload_id = tus.create(len(data))
    assert tus.patch(upload_id, 0, data).status_code == 204
    rdb.hdel(f"rindle:upload:{{{upload_id}}}:parts", "1")  # the bookkeeping lost a part
    rq_burst()
    assert [u for u, *_ in heard["failed"]] == [upload_id]
    assert not heard["completed"]
    assert tus.head(upload_id).status_code == 410


def test_on_complete_is_enqueued_once_with_the_upload(app, redis_url, rdb, monkeypatch, rq_burst):
    monkeypatch.setenv("RINDLE_ON_COMPLETE", "tests.integration.hook_targets.record_completion")
    app2 = create_app(Settings.from_env())
    tus = Tus(app2.test_client())
    meta = "filename " + base64.b64encode(b"a.txt").decode() + ",flag"
    upload_id = tus.create(5, **{"Upload-Metadata": meta})
    assert tus.patch(upload_id, 0, b"hello").status_code == 204
    for _ in range(2):
        rq_burst_for(app2)
    calls = [json.loads(c) for c in rdb.lrange("test:on-complete", 0, -1)]
    assert calls == [
        {
            "upload_id": upload_id,
            "key": "uploads/" + upload_id,
            "size": 5,
            "metadata": {"filename": "a.txt", "flag": None},
        }
    ]


def rq_burst_for(app) -> None:
    run_jobs(app)


HOSTILE_NAME = "<img src=x onerror=alert(1)>"


def metadata_header(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def test_the_on_complete_job_carries_no_client_text(app, rdb, monkeypatch):
    """Issue #20: rq-dashboard 0.9.0 renders a job's description unescaped, and RQ builds
    it from the job's arguments: the on-complete job is enqueued with the upload's id
    only, and loads the metadata when it runs. What the dashboard's JSON shows of the
    job, queued and finished, holds none of the client's text."""
    monkeypatch.setenv("RINDLE_ON_COMPLETE", "tests.integration.hook_targets.record_completion")
    hooked = create_app(Settings.from_env())
    dashboard.mount(hooked, "/ops/rq", authorize=lambda: True)
    client = hooked.test_client()
    marker = secrets.token_hex(12)
    upload_id = Tus(client).create(
        5, **{"Upload-Metadata": metadata_header(filename=HOSTILE_NAME, note=marker)}
    )
    assert Tus(client).patch(upload_id, 0, b"hello").status_code == 204
    rindle = hooked.extensions["rindle"]
    with hooked.app_context():  # completed here: the on-complete job stays queued
        assert rindle.assembly.complete(upload_id) == "completed"
    queue = rindle.jobs.queue
    job = Job.fetch(f"rindle-on-complete-{upload_id}", connection=queue.connection)
    client_text = (marker, "onerror", "<img", "img src")
    carried = repr((job.args, job.kwargs, job.description, job.meta))
    assert not [t for t in client_text if t in carried], carried

    def shown() -> str:
        """Every JSON page of the dashboard that lists or shows the job."""
        pages = [f"/ops/rq/0/data/job/{job.id}.json", "/ops/rq/0/data/queues.json"]
        pages += [
            f"/ops/rq/0/data/jobs/{queue.name}/{registry}/100/asc/1.json"
            for registry in ("queued", "started", "finished", "failed")
        ]
        texts = []
        for page in pages:
            r = client.get(page)
            assert r.status_code == 200, page
            texts.append(r.get_data(as_text=True))
            texts.append(json.dumps(r.get_json(), ensure_ascii=False))
        return "\n".join(texts)

    queued = shown()
    assert job.id in queued and '"status": "queued"' in queued
    assert not [t for t in client_text if t in queued]
    rq_burst_for(hooked)
    finished = shown()
    assert '"status": "finished"' in finished
    assert not [t for t in client_text if t in finished]
    # The hook itself still gets the metadata, loaded from the upload's record.
    calls = [json.loads(c) for c in rdb.lrange("test:on-complete", 0, -1)]
    assert calls == [
        {
            "upload_id": upload_id,
            "key": "uploads/" + upload_id,
            "size": 5,
            "metadata": {"filename": HOSTILE_NAME, "note": marker},
        }
    ]


def test_the_on_complete_job_of_an_upload_gone_since_calls_nothing(app, rdb):
    """The job runs when a worker takes it: a record gone by then (its 7 days as a
    tombstone passed) or no longer completed (terminated since) calls no hook."""
    rindle = app.extensions["rindle"]
    hook = "tests.integration.hook_targets.record_completion"
    gone = secrets.token_urlsafe(24)
    rindle.jobs.on_complete(hook, gone)
    terminated = Tus(app.test_client()).create(0)  # completed at once (no bytes)
    assert app.test_client().delete(f"/files/{terminated}", headers=TUS).status_code == 204
    rindle.jobs.on_complete(hook, terminated)
    run_jobs(app)
    assert rdb.lrange("test:on-complete", 0, -1) == []
    queue = rindle.jobs.queue
    results = [
        Job.fetch(f"rindle-on-complete-{u}", connection=queue.connection).return_value()
        for u in (gone, terminated)
    ]
    assert results == ["skipped (unknown)", "skipped (terminated)"]


def test_an_on_complete_job_enqueued_by_an_older_version_still_runs(app, rdb):
    """Older versions enqueued the app's function itself, with the metadata as keyword
    arguments: those jobs still run after an upgrade (the function's signature stays)."""
    connection = app.extensions["rindle"].jobs.queue.connection
    Queue(app.extensions["rindle"].settings.queue, connection=connection).enqueue(
        "tests.integration.hook_targets.record_completion",
        upload_id="old",
        key="uploads/old",
        size=3,
        metadata={"filename": "a.txt"},
    )
    run_jobs(app)
    calls = [json.loads(c) for c in rdb.lrange("test:on-complete", 0, -1)]
    assert calls == [
        {"upload_id": "old", "key": "uploads/old", "size": 3, "metadata": {"filename": "a.txt"}}
    ]


def make_app(**hook_kwargs):
    from flask import Flask

    app = Flask("hooked")
    init_app(app, Settings.from_env(), hooks=Hooks(**hook_kwargs))
    return app


def test_pre_create_refuses_with_its_status_and_message(app, rdb):
    def pre_create(request, length, metadata):
        if metadata.get("filetype") != "image/png":
            raise Refuse("only PNG images", status=422, code="wrong_type")

    client = make_app(pre_create=pre_create).test_client()
    r = client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert r.status_code == 422
    assert r.get_json() == {"error": "wrong_type", "message": "only PNG images"}
    assert rdb.keys("rindle:upload:*") == []
    png = "filetype " + base64.b64encode(b"image/png").decode()
    ok = client.post("/files/", headers={**TUS, "Upload-Length": "10", "Upload-Metadata": png})
    assert ok.status_code == 201


def test_pre_create_chooses_the_object_key(app, rq_burst, s3_client):
    seen = []

    def pre_create(request, length, metadata):
        seen.append((length, metadata))
        return f"uploads/users/42/{metadata['filename']}"

    hooked = make_app(pre_create=pre_create)
    tus = Tus(hooked.test_client())
    name = "filename " + base64.b64encode(b"cat.png").decode()
    upload_id = tus.create(4, **{"Upload-Metadata": name})
    assert tus.patch(upload_id, 0, b"meow").status_code == 204
    rq_burst_for(hooked)
    assert seen == [(4, {"filename": "cat.png"})]
    obj = s3_client.get_object(
        Bucket=hooked.config["RINDLE"].s3_bucket, Key="uploads/users/42/cat.png"
    )
    assert obj["Body"].read() == b"meow"


def test_authorize_sees_every_request_and_can_refuse(app):
    seen = []

    def authorize(request, action, upload):
        seen.append((action, upload.id if upload else None))
        if request.headers.get("Authorization") != "Bearer good":
            raise Refuse("who are you?", status=401, code="unauthorized")

    client = make_app(authorize=authorize).test_client()
    good = {**TUS, "Authorization": "Bearer good"}
    assert client.post("/files/", headers={**TUS, "Upload-Length": "3"}).status_code == 401
    r = client.post("/files/", headers={**good, "Upload-Length": "3"})
    upload_id = r.headers["Location"].rsplit("/", 1)[1]
    patch = {**good, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert client.patch(f"/files/{upload_id}", data=b"abc", headers=patch).status_code == 204
    assert client.head(f"/files/{upload_id}", headers=good).status_code == 200
    assert client.head(f"/files/{upload_id}", headers=TUS).status_code == 401
    assert client.delete(f"/files/{upload_id}", headers=good).status_code == 204
    assert seen == [
        ("create", None),
        ("create", None),
        ("patch", upload_id),
        ("head", upload_id),
        ("head", upload_id),
        ("delete", upload_id),
    ]


def test_authorize_guards_downloads(app, rq_burst):
    """GET /files/<id> asks the hook (action "get", the upload) before it answers."""
    seen = []

    def authorize(request, action, upload):
        seen.append((action, upload.id if upload else None))
        if action == "get" and request.headers.get("Authorization") != "Bearer good":
            raise Refuse("who are you?", status=401, code="unauthorized")

    hooked = make_app(authorize=authorize)
    tus = Tus(hooked.test_client())
    upload_id = tus.create(3)
    assert tus.patch(upload_id, 0, b"abc").status_code == 204
    rq_burst_for(hooked)
    seen.clear()
    refused = tus.client.get(f"/files/{upload_id}")
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "unauthorized"
    assert "Location" not in refused.headers
    allowed = tus.client.get(f"/files/{upload_id}", headers={"Authorization": "Bearer good"})
    assert allowed.status_code == 302
    assert seen == [("get", upload_id), ("get", upload_id)]


def test_authorize_sees_each_partial_of_a_final_upload_as_concat(app, rq_burst):
    """A final upload is a "create" (no upload yet), then one "concat" per partial it
    names, with that partial: the app decides whether this client may use it."""
    seen = []

    def authorize(request, action, upload):
        seen.append((action, upload.id if upload else None))

    hooked = make_app(authorize=authorize)
    tus = Tus(hooked.test_client())
    partials = []
    for data in (b"abc", b"defg"):
        r = tus.client.post(
            "/files/",
            headers={**TUS, "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
        )
        partials.append(r.headers["Location"].rsplit("/", 1)[1])
        assert tus.patch(partials[-1], 0, data).status_code == 204
    rq_burst_for(hooked)
    seen.clear()
    urls = " ".join(f"/files/{p}" for p in partials)
    r = tus.client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{urls}"})
    assert r.status_code == 201
    assert seen == [("create", None), ("concat", partials[0]), ("concat", partials[1])]


def test_the_dashboard_shows_a_failed_hooks_message_as_text_not_markup(app, monkeypatch):
    """rq-dashboard's job page puts ``exc_info`` into the page unescaped: a hook whose
    error names the client's file name must not run that name as script. The dashboard's
    JSON carries every string HTML-escaped."""
    monkeypatch.setenv("RINDLE_ON_COMPLETE", "tests.integration.hook_targets.fail_naming_the_file")
    hooked = create_app(Settings.from_env())
    dashboard.mount(hooked, "/ops/rq", authorize=lambda: True)
    client = hooked.test_client()
    upload_id = Tus(client).create(5, **{"Upload-Metadata": metadata_header(filename=HOSTILE_NAME)})
    assert Tus(client).patch(upload_id, 0, b"hello").status_code == 204
    rindle = hooked.extensions["rindle"]
    with hooked.app_context():
        assert rindle.assembly.complete(upload_id) == "completed"
    rq_burst_for(hooked)
    job = Job.fetch(f"rindle-on-complete-{upload_id}", connection=rindle.jobs.queue.connection)
    assert job.get_status() == "failed" and "onerror" in job.exc_info  # the raw message

    r = client.get(f"/ops/rq/0/data/job/{job.id}.json")

    assert r.status_code == 200
    shown = r.get_json()["exc_info"]
    assert "<img" not in shown and html.escape(HOSTILE_NAME) in shown
