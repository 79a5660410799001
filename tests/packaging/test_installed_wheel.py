"""rindle as an installed package, used by an app that lives outside this repository.

A wheel is built from the repository's files (``pip wheel --no-deps --no-build-isolation``)
and installed with ``--no-deps`` into a fresh virtualenv, once for this module. Nothing is
downloaded: the fresh venv sees the dependencies of the running interpreter through a
.pth file, which puts that interpreter's site-packages after the venv's own, so the
installed ``rindle`` comes first and the repository is never on the path. Programs run in
that venv from a directory outside the repository, with PYTHONPATH unset.

The build needs a setuptools that can build wheels without network access: setuptools
>= 70.1, or an older one with the ``wheel`` package. Without it these tests are skipped,
or fail with RINDLE_REQUIRE_SERVICES=1, like the tests whose services are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIRE_SERVICES = os.environ.get("RINDLE_REQUIRE_SERVICES") == "1"
# Variables of the outer environment that must not reach the installed app.
_HERMETIC_PREFIXES = ("RINDLE_", "AWS_", "REDIS_")
_HERMETIC_NAMES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "FLASK_APP")
TIMEOUT = 120

# The app an application outside the repository would write; run as a script, it drives
# one tus creation through Flask's test client and prints what it saw as JSON.
SITE_APP = """\
import json
import sys

from flask import Flask

import rindle

app = Flask(__name__)
rindle.init_app(app)

if __name__ == "__main__":
    response = app.test_client().post(
        "/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "0"}
    )
    print(json.dumps({
        "rindle": rindle.__file__,
        "sys_path": sys.path,
        "status": response.status_code,
        "location": response.headers.get("Location"),
        "body": response.get_data(as_text=True),
    }))
"""


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (RINDLE_REQUIRE_SERVICES=1: a missing tool fails)", pytrace=False)
    pytest.skip(reason)


def _wheel_build_missing() -> str | None:
    """Why this interpreter's setuptools cannot build a wheel offline, or None."""
    try:
        version = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        return "setuptools is not installed: cannot build rindle's wheel"
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) >= (70, 1) or find_spec("wheel") is not None:
        return None
    return (
        f"setuptools {version} builds wheels only with the 'wheel' package, which is not "
        "installed; setuptools >= 70.1 builds them by itself"
    )


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None, why: str = "") -> str:
    """Run ``cmd``; its stdout, or a test failure (``why`` first) that shows everything
    it printed."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{why}{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def _pip_env() -> dict[str, str]:
    """pip without the user's configuration, network or caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def _repo_files() -> list[str]:
    """The repository's files as a clone would have them, plus new files not yet added
    (what ``.gitignore`` leaves out is left out: .venv, caches, data)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    return sorted({name for name in out.decode().split("\0") if name})


def _dependency_dirs() -> list[str]:
    """The site-packages directories of the running interpreter, in path order."""
    candidates = [*sys.path, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    dirs: list[str] = []
    for entry in candidates:
        path = Path(entry)
        is_site = path.name in ("site-packages", "dist-packages") and path.is_dir()
        if is_site and str(path) not in dirs:
            dirs.append(str(path))
    return dirs


@dataclass(frozen=True)
class InstalledRindle:
    wheel: Path
    python: Path  # the fresh venv's interpreter
    site_packages: Path  # the fresh venv's own
    outside: Path  # a working directory outside the repository

    def env(self, **extra: str) -> dict[str, str]:
        """This environment without PYTHONPATH, venv markers or any RINDLE_/AWS_/REDIS_
        variable, plus ``extra``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_HERMETIC_PREFIXES) and k not in _HERMETIC_NAMES
        }
        env.update(
            PYTHONNOUSERSITE="1",
            PYTHONUNBUFFERED="1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,  # a developer's ~/.aws must not change what S3 sees
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        env.update(extra)
        return env

    def run(self, *args: str | Path, env: dict[str, str] | None = None, why: str = "") -> str:
        """Run the venv's python with ``args`` in the directory outside the repository."""
        return _run([self.python, *args], cwd=self.outside, env=env or self.env(), why=why)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledRindle]:
    """rindle's wheel, installed into a fresh venv; everything is deleted afterwards."""
    missing = _wheel_build_missing()
    if missing:
        _unavailable(missing)
    root = tmp_path_factory.mktemp("packaging")
    try:
        yield _install(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _install(root: Path) -> InstalledRindle:
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the repo.
    source = root / "source"
    for name in _repo_files():
        path = REPO_ROOT / name
        if path.is_file():  # a tracked file may be deleted in the work tree
            target = source / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    wheels = root / "wheels"
    pip_env = _pip_env()
    build = ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", wheels, source]
    _run([sys.executable, "-m", "pip", *build], cwd=root, env=pip_env)
    (wheel,) = wheels.glob("rindle-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so that pip sees an empty environment.
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", wheel],
        cwd=root,
        env=pip_env,
    )
    site_packages = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root
        ).strip()
    )
    # Lines of a .pth are appended to sys.path after the venv's site-packages; .pth files
    # inside those directories are not processed (no editable install can leak in).
    (site_packages / "zz_rindle_test_dependencies.pth").write_text(
        "".join(f"{d}\n" for d in _dependency_dirs())
    )
    outside = root / "outside"
    outside.mkdir()
    return InstalledRindle(wheel, python, site_packages, outside)


def _is_within(path: str | Path, parent: Path) -> bool:
    return Path(path).resolve().is_relative_to(parent.resolve())


# --------------------------------------------------------------------------- the wheel


def test_wheel_holds_only_the_rindle_package(installed: InstalledRindle) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert top_level - dist_info == {"rindle"}, f"unexpected top-level entries: {top_level}"
    assert "rindle/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # Every package of the source tree ships (a subpackage needs its __init__.py).
    packages = {
        str(p.parent.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "rindle").rglob("__init__.py")
    }
    assert {f"{p}/__init__.py" for p in packages} <= set(names)
    if (REPO_ROOT / "rindle" / "py.typed").exists():
        assert "rindle/py.typed" in names, "rindle/py.typed exists but is not in the wheel"


def test_declared_ranges_admit_the_pinned_versions() -> None:
    """pyproject.toml's ranges hold the versions pinned in requirements.txt (the tested
    set), and every pinned package is declared somewhere: dependencies or an extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        declared += [Requirement(r) for r in extra]
    declared = [r for r in declared if canonicalize_name(r.name) != "rindle"]

    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # options, paths, blank lines
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            pins[canonicalize_name(req.name)] = specs[0].version

    for req in declared:
        name = canonicalize_name(req.name)
        version = pins.get(name) or metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (
            f"{req} does not admit {req.name} {version}"
            + (" (pinned in requirements.txt)" if name in pins else " (installed)")
        )
    missing = set(pins) - {canonicalize_name(r.name) for r in declared}
    assert not missing, f"pinned in requirements.txt, declared nowhere in pyproject: {missing}"


# --------------------------------------------------------------------------- installed


def test_import_outside_the_repo_uses_the_installed_package(installed: InstalledRindle) -> None:
    out = installed.run(
        "-c", "import json, sys, rindle; print(json.dumps([rindle.__file__, sys.path]))"
    )
    rindle_file, path = json.loads(out)
    assert _is_within(rindle_file, installed.site_packages), rindle_file
    assert not [p for p in path if p and Path(p).resolve() == REPO_ROOT.resolve()], path


def test_app_outside_the_repo_mounts_rindle(
    installed: InstalledRindle,
    redis_url: str,
    s3_env: dict[str, str],
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """A zero-length upload is complete at creation: the 201 needs Redis, and the empty
    object is in S3 before the client hears of it."""
    app_file = installed.outside / "site_app.py"
    app_file.write_text(SITE_APP)
    env = installed.env(
        REDIS_URL=redis_url,
        **s3_env,
        RINDLE_TMP_DIR=str(tmp_path / "rindle-tmp"),
        RINDLE_NODE_ID="packaging-test",
        RINDLE_REAP_INTERVAL="0",  # no reaper thread in a one-shot script
    )
    report = json.loads(installed.run(app_file, env=env).strip().splitlines()[-1])

    assert _is_within(report["rindle"], installed.site_packages), report["rindle"]
    assert not _is_within(report["rindle"], REPO_ROOT / "rindle"), report["rindle"]
    assert report["status"] == 201, report["body"]
    location = report["location"]
    assert location and "/files/" in location, location
    upload_id = location.rstrip("/").rsplit("/", 1)[-1]
    head = s3_client.head_object(
        Bucket=s3_env["RINDLE_S3_BUCKET"], Key=s3_env["RINDLE_S3_PREFIX"] + upload_id
    )
    assert head["ContentLength"] == 0


def test_worker_and_jobs_modules_are_installed(installed: InstalledRindle) -> None:
    """PENDING issue #12: fails until rindle/jobs.py and rindle/worker.py exist (the RQ job
    functions and RindleWorker moving out of workers/ into the package)."""
    installed.run(
        "-c",
        "import rindle.worker, rindle.jobs",
        why="PENDING #12 (rindle/worker.py and rindle/jobs.py not in the package yet): ",
    )
