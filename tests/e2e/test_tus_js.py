"""tus-js-client (Node.js) against the real stack: a 64 MiB file from disk, in one PATCH, in
5 MiB chunks, and aborted mid-body then resumed by a new Upload found in the URL storage.

The client lives in tests/e2e/js (tus-js-client pinned in package-lock.json); its
node_modules are installed on first use (``npm ci``) and reused while the lock file is
unchanged. Without node/npm these tests skip, or fail when RINDLE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PART_SIZE, Stack
from tests.e2e.conftest import MIB, Uploads, payload, run_node_script

pytestmark = pytest.mark.e2e

SIZE = 64 * MIB


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tus-js") / "source.bin"
    path.write_bytes(payload(SIZE, seed=42))
    return path


def run_upload(node: str, stack: Stack, *args: str) -> dict[str, Any]:
    """Run upload.mjs; its one line of JSON output."""
    result = run_node_script(node, "upload.mjs", stack.files_url, *args)
    assert result.returncode == 0, f"upload.mjs failed:\n{result.stderr}\n{result.stdout}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_contiguous_to_the_end(patches: list[dict[str, Any]], start: int) -> None:
    """The successful PATCHes cover [start, SIZE) with neither gap nor overlap."""
    done = [p for p in patches if p["status"] == 204]
    position = start
    for patch in done:
        assert patch["offset"] == position, patches
        position += patch["length"]
    assert position == SIZE, patches


@pytest.mark.parametrize("chunk_size", ["Infinity", str(5 * MIB)], ids=["one-patch", "5MiB-chunks"])
def test_upload_from_disk(
    node: str, module_stack: Stack, uploads: Uploads, source_file: Path, chunk_size: str
) -> None:
    out = run_upload(node, module_stack, "--file", str(source_file), "--chunk-size", chunk_size)
    uploads.track(out["uploadUrl"])

    assert out["size"] == SIZE
    expected = 1 if chunk_size == "Infinity" else math.ceil(SIZE / int(chunk_size))
    assert len(out["patches"]) == expected, out["patches"]
    assert_contiguous_to_the_end(out["patches"], 0)
    uploads.assert_stored(out["uploadUrl"], source_file)


def test_abort_then_resume_from_url_storage(
    node: str, module_stack: Stack, uploads: Uploads, source_file: Path, tmp_path: Path
) -> None:
    interrupt_at = 30 * MIB  # past several parts, well before the end
    out = run_upload(
        node,
        module_stack,
        "--file",
        str(source_file),
        "--chunk-size",
        "Infinity",
        "--interrupt-at",
        str(interrupt_at),
        "--url-storage",
        str(tmp_path / "tus-url-storage.json"),
    )
    uploads.track(out["uploadUrl"])

    # The first PATCH carried the whole file and was cut off: no answer.
    first = out["patches"][0]
    assert first == {"offset": 0, "status": None, "length": None}
    assert interrupt_at <= out["abortedAfter"] < SIZE
    # The second Upload found the first in the URL storage and went on with the same URL.
    assert out["resumedUrl"] == out["uploadUrl"]
    resumed = out["patches"][out["firstPatchAfterResume"] :]
    # Its PATCHes may meet the server still winding up the cut request (it keeps what it
    # received, then lets go): those are refused with 409 or 423 and retried. Not a 5xx.
    assert all(p["status"] in (204, 409, 423) for p in resumed), resumed
    successful = [p for p in resumed if p["status"] == 204]
    assert successful, resumed
    # What the server kept of the cut request was not sent again.
    assert PART_SIZE <= successful[0]["offset"] <= out["abortedAfter"], resumed
    assert_contiguous_to_the_end(resumed, successful[0]["offset"])
    uploads.assert_stored(out["uploadUrl"], source_file)
