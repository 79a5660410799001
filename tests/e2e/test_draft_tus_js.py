"""tus-js-client 4.3.1 with ``protocol: 'ietf-draft-05'`` (the IETF draft, interop version
6) against the real stack: 64 MiB in 5 MiB chunks, interrupted and resumed, the object
exact in S3; and next to it a tus 1.0.0 upload, each seeing only its own dialect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.conftest import MIB, Uploads, payload, run_node_script
from tests.e2e.test_draft_http import DRAFT_FIELDS, TUS_FIELDS

pytestmark = pytest.mark.e2e

SIZE = 64 * MIB
CHUNK = 5 * MIB
INTERRUPT_AT = 30 * MIB + 1  # inside the seventh chunk


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("draft-js") / "source.bin"
    path.write_bytes(payload(SIZE, seed=64))
    return path


def run_draft(node: str, stack: Stack, *args: str) -> list[dict[str, Any]]:
    """Run draft.mjs to success; its events."""
    result = run_node_script(node, "draft.mjs", stack.files_url, *args)
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert events and events[-1]["event"] == "done", result.stderr
    assert events[-1]["ok"], f"{events[-1]}\n{result.stderr}"
    assert result.returncode == 0
    return events


def requests_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "request"]


def first_head_after_the_cut(events: list[dict[str, Any]]) -> dict[str, Any]:
    cut = next(i for i, e in enumerate(events) if e["event"] == "aborted")
    return next(e for e in requests_of(events[cut:]) if e["method"] == "HEAD")


def assert_resumed(events: list[dict[str, Any]]) -> None:
    """One interruption; the resume went on from an offset the server acknowledged, not
    from the start, and never asked for bytes the server had acknowledged before."""
    aborted = [i for i, e in enumerate(events) if e["event"] == "aborted"]
    assert len(aborted) == 1, events
    before, after = events[: aborted[0]], events[aborted[0] :]
    acknowledged = max(
        (e["uploadOffset"] or 0 for e in requests_of(before) if e["method"] == "PATCH"),
        default=0,
    )
    assert acknowledged >= 25 * MIB  # five chunks at least were done before the cut
    heads = [e for e in requests_of(after) if e["method"] == "HEAD"]
    assert heads and heads[0]["status"] == 204, after  # offset retrieval, then on
    patches = [e for e in requests_of(after) if e["method"] == "PATCH" and e["status"] == 201]
    assert patches, after
    assert acknowledged <= patches[0]["offset"] <= events[aborted[0]]["after"]
    position = patches[0]["offset"]
    for patch in patches:  # contiguous to the end
        assert patch["offset"] == position, patches
        position = patch["uploadOffset"]
    assert position == SIZE


def assert_draft_fields_only(events: list[dict[str, Any]]) -> None:
    for request in requests_of(events):
        found = set(request["headers"]) & TUS_FIELDS
        assert not found, f"a draft answer to {request['method']} carries {found}"
    assert any("upload-complete" in r["headers"] for r in requests_of(events))


def upload_url(events: list[dict[str, Any]]) -> str:
    return events[-1]["uploadUrl"]


def test_file_in_5mib_chunks_interrupted_and_resumed_from_url_storage(
    node: str, module_stack: Stack, uploads: Uploads, source_file: Path, tmp_path: Path
) -> None:
    events = run_draft(
        node,
        module_stack,
        "--file",
        str(source_file),
        "--chunk-size",
        str(CHUNK),
        "--interrupt-at",
        str(INTERRUPT_AT),
        "--url-storage",
        str(tmp_path / "urls.json"),
    )
    url = upload_url(events)
    uploads.track(url)
    posts = [e for e in requests_of(events) if e["method"] == "POST"]
    assert [p["status"] for p in posts] == [201]  # one upload, resumed, not a new one
    assert_resumed(events)
    assert "upload-length" in first_head_after_the_cut(events)["headers"]
    assert_draft_fields_only(events)
    uploads.assert_stored(url, source_file)


def test_stream_of_unknown_length_interrupted_and_resumed(
    node: str, module_stack: Stack, uploads: Uploads, source_file: Path
) -> None:
    """uploadLengthDeferred with a generic stream: the length comes with the last append
    (Upload-Length and Upload-Complete: ?1)."""
    events = run_draft(
        node,
        module_stack,
        "--file",
        str(source_file),
        "--source",
        "stream",
        "--defer-length",
        "--chunk-size",
        str(CHUNK),
        "--interrupt-at",
        str(INTERRUPT_AT),
    )
    url = upload_url(events)
    uploads.track(url)
    assert_resumed(events)
    assert "upload-length" not in first_head_after_the_cut(events)["headers"]  # not told yet
    assert_draft_fields_only(events)
    uploads.assert_stored(url, source_file)


def test_a_tus_client_sees_no_draft_field(
    node: str, module_stack: Stack, uploads: Uploads, source_file: Path
) -> None:
    events = run_draft(node, module_stack, "--file", str(source_file), "--protocol", "tus-v1")
    url = upload_url(events)
    uploads.track(url)
    for request in requests_of(events):
        assert request["status"] < 300, request
        found = set(request["headers"]) & DRAFT_FIELDS
        assert not found, f"a tus answer to {request['method']} carries {found}"
        assert "tus-resumable" in request["headers"]
    uploads.assert_stored(url, source_file)
