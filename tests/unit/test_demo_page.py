"""The example app's upload page (demo/): served only with RINDLE_DEMO=1, and what it says
when Uppy's bundle is not installed. In process; nothing here reaches Redis or S3.
(The page at work in a real browser: tests/e2e/test_browser_uppy.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from flask.testing import FlaskClient

from app import create_app
from demo import assets
from rindle import Settings
from rindle.errors import ConfigError


def client_with(tmp_path: Path, **env: str) -> FlaskClient:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",  # never connected to by these requests
            "RINDLE_TMP_DIR": str(tmp_path / "tmp"),
            "RINDLE_PUBLIC": "1",
            **env,
        }
    )
    return create_app(settings).test_client()


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking bundle dir (two small files), in place of demo/node_modules."""
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "uppy.min.js").write_text("globalThis.Uppy = {}")
    (dist / "uppy.min.css").write_text(".uppy-Root {}")
    (dist / "uppy.min.js.map").write_text("{}")
    monkeypatch.setattr(assets, "BUNDLE_DIR", dist)
    return dist


def test_no_page_unless_rindle_demo(tmp_path: Path, bundle: Path) -> None:
    client = client_with(tmp_path)
    assert client.get("/").status_code == 404
    assert client.get("/demo/uppy/uppy.min.js").status_code == 404


def test_the_page_loads_uppy_and_points_it_at_the_tus_endpoint(
    tmp_path: Path, bundle: Path
) -> None:
    client = client_with(tmp_path, RINDLE_DEMO="1")
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-endpoint="/files/"' in html
    assert 'src="/demo/uppy/uppy.min.js"' in html
    assert 'href="/demo/uppy/uppy.min.css"' in html
    assert 'src="/demo/static/demo.js"' in html
    assert "Uppy is not installed" not in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]

    script = client.get("/demo/uppy/uppy.min.js")
    assert script.status_code == 200
    assert script.get_data(as_text=True) == "globalThis.Uppy = {}"
    assert client.get("/demo/static/demo.js").status_code == 200


def test_only_the_two_bundle_files_are_served(tmp_path: Path, bundle: Path) -> None:
    client = client_with(tmp_path, RINDLE_DEMO="1")
    for name in ("uppy.min.js.map", "README.md"):
        response = client.get(f"/demo/uppy/{name}")
        assert response.status_code == 404, name
        assert response.json is not None and response.json["error"] == "not_found"
    assert client.get("/demo/uppy/..%2F..%2Fpackage.json").status_code == 404


def test_without_the_bundle_the_page_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(assets, "BUNDLE_DIR", tmp_path / "nothing-here")
    client = client_with(tmp_path, RINDLE_DEMO="1")
    html = client.get("/").get_data(as_text=True)
    assert "Uppy is not installed" in html
    assert "python3 -m demo.assets" in html
    assert "apt-get install npm" in html
    assert "uppy.min.js" not in html  # no script that would only fail to load
    missing = client.get("/demo/uppy/uppy.min.js")
    assert missing.status_code == 404
    assert missing.json is not None and missing.json["error"] == "uppy_not_installed"


def test_rindle_demo_takes_0_or_1() -> None:
    assert Settings.from_env({"RINDLE_DEMO": "1"}).demo is True
    assert Settings.from_env({}).demo is False
    with pytest.raises(ConfigError, match="RINDLE_DEMO"):
        Settings.from_env({"RINDLE_DEMO": "yes"})
