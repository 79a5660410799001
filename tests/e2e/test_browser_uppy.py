"""The upload page (demo/) in a real browser: headless Chromium (Debian's ``chromium``,
driven by Playwright for Python; no browser is downloaded) against the real stack.

A user picks a 20 MiB file in Uppy's Dashboard, presses Upload, pauses mid-upload,
resumes, and gets a link to the finished file; the object in S3 and the download behind
the link hold exactly the file's bytes. Screenshots (paused, finished, or at a failure)
go to ``test-artifacts/browser/`` in the repository.

The pause is made certain, not raced: the page sends 2 MiB PATCHes (``?chunkSize=``), and
the test holds the browser's fourth PATCH (at offset 6 MiB) in Playwright's network
interception, as a stalled network would, until Uppy's Pause button has been pressed.

Needs /usr/bin/chromium, the ``playwright`` package (requirements.txt) and Uppy's bundle
(installed here with npm when missing); without them the test skips, or fails when
RINDLE_REQUIRE_SERVICES=1 (CI: ``.ci/run`` installs chromium and the bundle).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from demo import assets
from devstack.services import REPO_ROOT
from tests.conftest import Stack, tool_missing
from tests.e2e.conftest import COMPLETION_TIMEOUT, MIB, TUS, Uploads, payload, upload_id_of

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own builds are never fetched
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
SIZE = 20 * MIB
CHUNK = 2 * MIB
HOLD_AT = 3 * CHUNK  # the PATCH that starts here waits until the upload is paused
STEP_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        tool_missing("the playwright package is not installed (pip install -r requirements.txt)")
    if not Path(CHROMIUM).exists():
        tool_missing(f"{CHROMIUM} is missing (Debian/Ubuntu: apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def uppy_bundle() -> None:
    """Uppy's bundle in demo/node_modules (npm ci when missing, as scripts/run does)."""
    if assets.installed():
        return
    if shutil.which("npm") is None:
        tool_missing("npm is needed to install Uppy for the upload page (apt-get install npm)")
    try:
        assets.install()
    except assets.InstallFailed as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def page(playwright: Any, uppy_bundle: None) -> Iterator[Any]:
    """A fresh page in headless Chromium."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        yield page
    finally:
        browser.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


@contextlib.contextmanager
def screenshot_on_failure(page: Any) -> Iterator[None]:
    """What the page showed when the test failed: test-artifacts/browser/uppy-failure.png."""
    with contextlib.suppress(FileNotFoundError):
        (ARTIFACTS / "uppy-failure.png").unlink()
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, "uppy-failure.png")
        raise


def wait_for(page: Any, check: Any, timeout: float, what: str) -> None:
    """Let the page run (and Playwright dispatch its events) until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting {what}")
        page.wait_for_timeout(50)


def uppy_file(page: Any) -> dict[str, Any]:
    """The one file in the page's Uppy, as Uppy's state has it."""
    return page.evaluate(
        """() => {
            const [file] = rindleUppy.getFiles()
            return {isPaused: file.isPaused, progress: file.progress,
                    uploadUrl: file.tus && file.tus.uploadUrl}
        }"""
    )


@pytest.mark.parametrize("stack", [{"RINDLE_DEMO": "1"}], indirect=True)
def test_upload_pause_resume_and_download_in_chromium(
    stack: Stack, page: Any, tmp_path: Path
) -> None:
    with screenshot_on_failure(page):
        upload_pause_resume_download(stack, page, tmp_path)


def upload_pause_resume_download(stack: Stack, page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import Error as PlaywrightError

    source = tmp_path / "browser-upload.bin"
    data = payload(SIZE, seed=7)
    source.write_bytes(data)

    problems: list[str] = []  # script errors and CSP violations on the page
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    requests_seen: list[tuple[str, str | None]] = []  # (method, Upload-Offset) to /files/
    page.on(
        "request",
        lambda req: (
            requests_seen.append((req.method, req.headers.get("upload-offset")))
            if "/files/" in req.url
            else None
        ),
    )
    held: list[Any] = []

    def hold_one_patch(route: Any) -> None:
        req = route.request
        if req.method == "PATCH" and req.headers.get("upload-offset") == str(HOLD_AT) and not held:
            held.append(route)  # neither continued nor failed: the browser waits
            return
        route.continue_()

    page.route(re.compile(r".*/files/.*"), hold_one_patch)

    page.goto(f"{stack.url}/?chunkSize={CHUNK}")
    file_input = page.locator('.uppy-Dashboard-input[type="file"]:not([webkitdirectory])')
    file_input.set_input_files(source)
    page.get_by_role("button", name=re.compile(r"^Upload 1 file")).click()

    # Mid-upload: three PATCHes went through, the fourth hangs. Press Pause.
    wait_for(page, lambda: bool(held), STEP_TIMEOUT_MS / 1000, "for the PATCH at 6 MiB")
    page.get_by_role("button", name="Pause", exact=True).click()
    page.wait_for_function("() => rindleUppy.getFiles()[0].isPaused === true")
    with contextlib.suppress(PlaywrightError):  # the browser has dropped it already
        held[0].abort()
    page.get_by_role("button", name="Resume", exact=True).wait_for()

    paused = uppy_file(page)
    assert paused["progress"]["bytesUploaded"] < SIZE
    url = paused["uploadUrl"]
    assert url and url.startswith(stack.files_url), paused
    head = requests.head(url, headers=TUS, timeout=10)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(HOLD_AT)  # the server has 6 of 20 MiB
    assert head.headers["Upload-Length"] == str(SIZE)
    screenshot(page, "uppy-paused.png")

    resumed_from = len(requests_seen)
    page.get_by_role("button", name="Resume", exact=True).click()
    finished = page.locator('#finished li[data-state="ready"] a')
    finished.wait_for(timeout=COMPLETION_TIMEOUT * 1000)
    assert page.locator("#finished li").count() == 1
    assert finished.inner_text() == source.name
    screenshot(page, "uppy-finished.png")

    # Resumed, not started again: one POST in all, and the PATCHes after the resume go on
    # from where the server stood.
    assert [m for m, _ in requests_seen].count("POST") == 1, requests_seen
    patches_after = [int(o) for m, o in requests_seen[resumed_from:] if m == "PATCH" and o]
    assert patches_after and patches_after[0] == HOLD_AT, requests_seen
    assert not problems, problems

    # The link is the upload URL; following it (a redirect to S3) gives the file back.
    assert finished.get_attribute("href") == url
    download = requests.get(url, timeout=60)
    assert download.status_code == 200
    assert download.content == data

    uploads = Uploads(stack)
    uploads.assert_stored(url, source)  # completed, parts as configured, nothing left open
    key = uploads.key(upload_id_of(url))
    assert stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read() == data
