"""tus-js-client (Node.js) against the real stack: a 64 MiB file from disk, in one PATCH, in
5 MiB chunks, and aborted mid-body then resumed by a new Upload found in the URL storage.

The client lives in tests/e2e/js (tus-js-client pinned in package-lock.json); its
node_modules are installed on first use (``npm ci``) and reused while the lock file is
unchanged. Without node/npm these tests skip, or fail when RINDLE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PART_SIZE, Stack, tool_missing
from tests.e2e.conftest import MIB, Uploads, payload

pytestmark = pytest.mark.e2e

JS_DIR = Path(__file__).resolve().parent / "js"
MIN_NODE_MAJOR = 18  # what tus-js-client 4 supports; developed on Node 20
SIZE = 64 * MIB
NODE_TIMEOUT = 300  # seconds for one run of upload.mjs (64 MiB takes ~2 s)
NPM_TIMEOUT = 600


def _install_stamp() -> str:
    """What the installed node_modules must match: the lock file and node's major version."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((JS_DIR / name).read_bytes())
    return digest.hexdigest()


def ensure_node_modules(npm: str, node_major: int) -> None:
    """``npm ci`` unless node_modules already matches the lock file (under a file lock, so
    concurrent test runs do not install over each other)."""
    stamp_path = JS_DIR / "node_modules" / ".rindle-install-stamp"
    wanted = f"{_install_stamp()} node{node_major}"
    with open(JS_DIR / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp_path.exists() and stamp_path.read_text() == wanted:
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        if result.returncode != 0:
            pytest.fail(
                f"npm ci failed in {JS_DIR} (exit {result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
                pytrace=False,
            )
        stamp_path.write_text(wanted)


def node_program() -> str:
    """The node program, with tus-js-client installed in tests/e2e/js (skip, or fail with
    RINDLE_REQUIRE_SERVICES=1, when Node.js is missing or too old)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        tool_missing("node and npm are needed for the tus-js-client tests (Node.js >= 18)")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    match = re.match(r"v(\d+)\.", version.stdout.strip())
    if not match or int(match.group(1)) < MIN_NODE_MAJOR:
        tool_missing(f"Node.js >= {MIN_NODE_MAJOR} is needed, found {version.stdout.strip()!r}")
    ensure_node_modules(npm, int(match.group(1)))
    return node


@pytest.fixture(scope="module")
def node() -> str:
    return node_program()


@pytest.fixture(scope="module")
def source_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tus-js") / "source.bin"
    path.write_bytes(payload(SIZE, seed=42))
    return path


def run_upload(node: str, stack: Stack, *args: str) -> dict[str, Any]:
    """Run upload.mjs; its one line of JSON output."""
    try:
        result = subprocess.run(
            [node, str(JS_DIR / "upload.mjs"), "--endpoint", stack.files_url, *args],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"upload.mjs did not finish in {NODE_TIMEOUT}s: {exc.stderr!r}")
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
