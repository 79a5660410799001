"""The app's pre_length hook sees every length that becomes known after the creation
(issue #21, item 11): a quota that pre_create checks cannot be bypassed by deferring the
length, in either dialect. Real Redis and S3."""

from __future__ import annotations

import io

import pytest

from app import create_app
from rindle import Hooks, Refuse, Settings
from tests.integration.conftest import TUS

pytestmark = pytest.mark.integration

QUOTA = 100
V8 = {"Upload-Draft-Interop-Version": "8"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
APPEND = {**V8, "Content-Type": "application/partial-upload"}


class Quota:
    """The app's quota, checked at creation and whenever a length is declared later."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def check(self, length: int | None) -> None:
        if length is not None and length > QUOTA:
            raise Refuse(f"at most {QUOTA} bytes", status=413, code="over_quota")

    def pre_create(self, request, length, metadata) -> None:
        self.check(length)

    def pre_length(self, request, upload, length) -> None:
        self.seen.append((upload.id, length))
        self.check(length)


@pytest.fixture
def quota(app) -> Quota:
    return Quota()


@pytest.fixture
def hooked(app, quota):
    hooks = Hooks(pre_create=quota.pre_create, pre_length=quota.pre_length)
    return create_app(Settings.from_env(), hooks).test_client()


def location_id(response) -> str:
    return response.headers["Location"].rsplit("/", 1)[1]


def test_pre_create_refusal_is_the_answer_to_match(hooked):
    r = hooked.post("/files/", headers={**TUS, "Upload-Length": str(QUOTA + 1)})
    assert r.status_code == 413
    assert r.get_json() == {"error": "over_quota", "message": f"at most {QUOTA} bytes"}


def test_tus_length_declared_by_a_patch_goes_through_pre_length(hooked, quota, rdb):
    r = hooked.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status_code == 201
    upload_id = location_id(r)
    over = hooked.patch(
        f"/files/{upload_id}",
        data=b"x" * 10,
        headers={**PATCH, "Upload-Offset": "0", "Upload-Length": str(QUOTA * 1000)},
    )
    assert over.status_code == 413, over.get_data(as_text=True)
    assert over.get_json() == {"error": "over_quota", "message": f"at most {QUOTA} bytes"}
    assert quota.seen == [(upload_id, QUOTA * 1000)]
    head = hooked.head(f"/files/{upload_id}", headers=TUS)
    assert head.headers["Upload-Offset"] == "0", "no byte of a refused PATCH is kept"
    assert head.headers["Upload-Defer-Length"] == "1", "the refused length is not recorded"
    ok = hooked.patch(
        f"/files/{upload_id}",
        data=b"x" * 10,
        headers={**PATCH, "Upload-Offset": "0", "Upload-Length": "10"},
    )
    assert ok.status_code == 204
    assert quota.seen[-1] == (upload_id, 10)


def test_tus_patch_of_a_known_length_does_not_call_pre_length(hooked, quota):
    r = hooked.post("/files/", headers={**TUS, "Upload-Length": "10"})
    upload_id = location_id(r)
    ok = hooked.patch(
        f"/files/{upload_id}", data=b"x" * 10, headers={**PATCH, "Upload-Offset": "0"}
    )
    assert ok.status_code == 204
    assert quota.seen == []


def draft_upload(client) -> str:
    r = client.post("/files/", headers={**V8, "Upload-Complete": "?0"})
    assert r.status_code == 201, r.get_data(as_text=True)
    return location_id(r)


@pytest.mark.parametrize(
    "declare",
    [
        {"Upload-Length": str(QUOTA * 1000)},  # the length itself
        {"Upload-Complete": "?1"},  # a completing append: offset + its content
    ],
)
def test_draft_length_declared_by_an_append_goes_through_pre_length(hooked, quota, declare):
    upload_id = draft_upload(hooked)
    body = b"x" * (QUOTA + 1)
    headers = {**APPEND, "Upload-Offset": "0", "Upload-Complete": "?0", **declare}
    over = hooked.patch(f"/files/{upload_id}", data=body, headers=headers)
    assert over.status_code == 413, over.get_data(as_text=True)
    problem = over.get_json(force=True)
    assert (problem["error"], problem["detail"]) == ("over_quota", f"at most {QUOTA} bytes")
    length = int(declare.get("Upload-Length", len(body)))
    assert quota.seen == [(upload_id, length)]
    head = hooked.head(f"/files/{upload_id}", headers=V8)
    assert head.headers["Upload-Offset"] == "0"
    assert "Upload-Length" not in head.headers
    ok = hooked.patch(
        f"/files/{upload_id}",
        data=b"x" * 10,
        headers={**APPEND, "Upload-Offset": "0", "Upload-Complete": "?1"},
    )
    assert ok.status_code == 204, ok.get_data(as_text=True)
    assert ok.headers["Upload-Complete"] == "?1"


def test_draft_completing_content_of_unknown_length_goes_through_pre_length(hooked, quota):
    """Chunked content that completes the upload declares its length where it ends: the
    hook decides before the upload completes at that length."""
    upload_id = draft_upload(hooked)
    body = b"x" * (QUOTA + 1)
    over = hooked.patch(
        f"/files/{upload_id}",
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn says of chunked
        headers={
            **APPEND,
            "Upload-Offset": "0",
            "Upload-Complete": "?1",
            "Transfer-Encoding": "chunked",
        },
    )
    assert over.status_code == 413, over.get_data(as_text=True)
    assert over.get_json(force=True)["error"] == "over_quota"
    assert quota.seen == [(upload_id, len(body))]
    head = hooked.head(f"/files/{upload_id}", headers=V8)
    assert head.headers["Upload-Complete"] == "?0", "a refused length completes nothing"
    assert "Upload-Length" not in head.headers
