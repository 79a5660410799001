"""The upload page (demo/) in a real browser: headless Chromium (Debian's ``chromium``,
driven by Playwright for Python; no browser is downloaded) against the real stack.

A user picks a 20 MiB file in Uppy's Dashboard, presses Upload, pauses mid-upload,
resumes, and gets a link to the finished file; the object in S3 and the download behind
the link hold exactly the file's bytes. A second test reloads the page mid-upload and picks
the file again: the upload goes on where it stopped. Screenshots (paused, finished, or at
a failure) go to ``test-artifacts/browser/`` in the repository.

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
def screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    """What the page showed when the test failed: test-artifacts/browser/<name> (a stale
    one from an earlier run is removed first)."""
    with contextlib.suppress(FileNotFoundError):
        (ARTIFACTS / name).unlink()
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            screenshot(page, name)
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


class UploadPage:
    """The page at / in ``page``, seen from the network: the tus requests it makes, its
    script errors and CSP violations, and one PATCH (at ``HOLD_AT``) held back."""

    def __init__(self, page: Any, stack: Stack) -> None:
        self.page = page
        self.stack = stack
        self.problems: list[str] = []
        self.requests: list[tuple[str, str, str | None]] = []  # method, URL, Upload-Offset
        self.held: list[Any] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self._console)
        page.on("request", self._request)
        page.route(re.compile(r".*/files/.*"), self._hold_one_patch)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.problems.append(message.text)

    def _request(self, request: Any) -> None:
        if "/files/" in request.url:
            self.requests.append(
                (request.method, request.url, request.headers.get("upload-offset"))
            )

    def _hold_one_patch(self, route: Any) -> None:
        request = route.request
        if (
            request.method == "PATCH"
            and request.headers.get("upload-offset") == str(HOLD_AT)
            and not self.held
        ):
            self.held.append(route)  # neither continued nor failed: the browser waits
            return
        route.continue_()

    def open(self) -> None:
        self.page.goto(f"{self.stack.url}/?chunkSize={CHUNK}")

    def upload(self, source: Path) -> None:
        """Pick ``source`` in the Dashboard and press its Upload button."""
        file_input = self.page.locator('.uppy-Dashboard-input[type="file"]:not([webkitdirectory])')
        file_input.set_input_files(source)
        self.page.get_by_role("button", name=re.compile(r"^Upload 1 file")).click()

    def wait_until_held(self) -> str:
        """Wait for the held PATCH (three went through before it); its upload URL."""
        wait_for(self.page, lambda: bool(self.held), STEP_TIMEOUT_MS / 1000, "for the 4th PATCH")
        return self.held[0].request.url

    def drop_held(self) -> None:
        from playwright.sync_api import Error as PlaywrightError

        with contextlib.suppress(PlaywrightError):  # the browser has dropped it already
            self.held[0].abort()

    def server_offset(self, url: str) -> int:
        head = requests.head(url, headers=TUS, timeout=10)
        assert head.status_code == 200
        assert head.headers["Upload-Length"] == str(SIZE)
        return int(head.headers["Upload-Offset"])

    def wait_finished(self, name: str) -> Any:
        """The finished file's link, once the page says the object is ready."""
        finished = self.page.locator('#finished li[data-state="ready"] a')
        finished.wait_for(timeout=COMPLETION_TIMEOUT * 1000)
        assert self.page.locator("#finished li").count() == 1
        assert finished.inner_text() == name
        return finished

    def assert_resumed(self, since: int, url: str) -> None:
        """One upload made in all (one POST), and the first PATCH after request number
        ``since`` went on from where the server stood (6 MiB), to the same URL."""
        assert [r[0] for r in self.requests].count("POST") == 1, self.requests
        patches = [(u, int(o)) for m, u, o in self.requests[since:] if m == "PATCH" and o]
        assert patches and patches[0] == (url, HOLD_AT), self.requests


def assert_downloaded_and_stored(stack: Stack, url: str, source: Path, data: bytes) -> None:
    """The link (the upload URL; a redirect to S3) gives the file back, and the object in
    S3 is the file, byte for byte."""
    download = requests.get(url, timeout=60)
    assert download.status_code == 200
    assert download.content == data
    uploads = Uploads(stack)
    uploads.assert_stored(url, source)  # completed, parts as configured, nothing left open
    key = uploads.key(upload_id_of(url))
    assert stack.s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read() == data


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "browser-upload.bin"
    data = payload(SIZE, seed=7)
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("stack", [{"RINDLE_DEMO": "1"}], indirect=True)
def test_upload_pause_resume_and_download_in_chromium(
    stack: Stack, page: Any, source: tuple[Path, bytes]
) -> None:
    path, data = source
    ui = UploadPage(page, stack)
    with screenshot_on_failure(page, "uppy-failure.png"):
        ui.open()
        ui.upload(path)

        # Mid-upload: three PATCHes went through, the fourth hangs. Press Pause.
        url = ui.wait_until_held()
        page.get_by_role("button", name="Pause", exact=True).click()
        page.wait_for_function("() => rindleUppy.getFiles()[0].isPaused === true")
        ui.drop_held()
        resume = page.get_by_role("button", name="Resume", exact=True)
        resume.wait_for()
        paused = uppy_file(page)
        assert paused["uploadUrl"] == url and url.startswith(stack.files_url), paused
        assert paused["progress"]["bytesUploaded"] < SIZE
        assert ui.server_offset(url) == HOLD_AT  # the server has 6 of the 20 MiB
        screenshot(page, "uppy-paused.png")

        since = len(ui.requests)
        resume.click()
        link = ui.wait_finished(path.name)
        screenshot(page, "uppy-finished.png")

        ui.assert_resumed(since, url)
        assert not ui.problems, ui.problems
        assert link.get_attribute("href") == url
        assert_downloaded_and_stored(stack, url, path, data)


@pytest.mark.parametrize("stack", [{"RINDLE_DEMO": "1"}], indirect=True)
def test_a_reloaded_page_resumes_the_same_file(
    stack: Stack, page: Any, source: tuple[Path, bytes]
) -> None:
    """What the page promises: close it mid-upload, pick the same file again, and the
    upload goes on where it stopped (tus-js-client keeps the upload URL in localStorage)."""
    path, data = source
    ui = UploadPage(page, stack)
    with screenshot_on_failure(page, "uppy-reload-failure.png"):
        ui.open()
        ui.upload(path)
        url = ui.wait_until_held()

        page.reload()  # the held PATCH dies with the old page
        ui.drop_held()
        assert ui.server_offset(url) == HOLD_AT
        since = len(ui.requests)
        ui.upload(path)
        link = ui.wait_finished(path.name)

        ui.assert_resumed(since, url)
        assert not ui.problems, ui.problems
        assert link.get_attribute("href") == url
        assert_downloaded_and_stored(stack, url, path, data)
