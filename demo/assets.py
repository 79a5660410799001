"""Uppy's prebuilt bundle for the demo page: where it lives and how it gets there.

``npm ci`` in ``demo/`` installs the ``uppy`` package pinned in ``demo/package-lock.json``
into ``demo/node_modules`` (git-ignored); the page serves ``uppy.min.js`` and
``uppy.min.css`` from its ``dist/``. A stamp next to them records the lock file it was
installed from, so a changed pin installs again and an unchanged one costs nothing.

``python -m demo.assets`` installs it (``scripts/run`` and ``.ci/run`` do); standard
library only, so that it runs before the venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
BUNDLE_DIR = DEMO_DIR / "node_modules" / "uppy" / "dist"
BUNDLE_FILES = ("uppy.min.js", "uppy.min.css")
STAMP = DEMO_DIR / "node_modules" / ".rindle-install-stamp"
NPM_TIMEOUT = 600  # seconds; a cold install takes ~10 s


class InstallFailed(RuntimeError):
    """npm is missing or ``npm ci`` failed; the message says which and what to do."""


def _wanted_stamp(directory: Path = DEMO_DIR, suffix: str = "") -> str:
    """The lock file an install in ``directory`` comes from (its package.json and
    package-lock.json), then ``suffix``: what its stamp must say."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest() + suffix


def _stamped(directory: Path, wanted: str, produces: tuple[Path, ...]) -> bool:
    """``directory``'s node_modules was installed as ``wanted`` and holds ``produces``."""
    with contextlib.suppress(OSError):
        stamp = (directory / "node_modules" / STAMP.name).read_text()
        return stamp == wanted and all(path.is_file() for path in produces)
    return False


def npm_ci(
    directory: Path,
    *,
    stamp_suffix: str = "",
    produces: Iterable[Path] = (),
    npm: str | None = None,
) -> bool:
    """``npm ci`` in ``directory`` unless its node_modules has a stamp of the current lock
    file (followed by ``stamp_suffix``) and the files ``produces``; True if it ran. Under a
    file lock (``directory/.npm-install.lock``), so that two runs (tests, ``scripts/run``)
    never install over each other. Raises InstallFailed."""
    directory, produces = Path(directory), tuple(produces)
    wanted = _wanted_stamp(directory, stamp_suffix)
    if _stamped(directory, wanted, produces):
        return False
    npm = npm or shutil.which("npm")
    if npm is None:
        raise InstallFailed("npm is not installed (Debian/Ubuntu: apt-get install npm)")
    with open(directory / ".npm-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stamped(directory, wanted, produces):
            return False
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=directory,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                env={**os.environ, "npm_config_update_notifier": "false"},
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallFailed(f"npm ci in {directory}: {exc}") from None
        if result.returncode != 0:
            raise InstallFailed(
                f"npm ci failed in {directory} (exit {result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
            )
        missing = [path for path in produces if not path.is_file()]
        if missing:
            raise InstallFailed(
                f"npm ci in {directory} did not produce {', '.join(map(str, missing))}"
            )
        (directory / "node_modules" / STAMP.name).write_text(wanted)
        return True


def present() -> bool:
    """True when the bundle's files are there (whichever version): the page can work."""
    return all((BUNDLE_DIR / name).is_file() for name in BUNDLE_FILES)


def installed() -> bool:
    """True when the bundle is there and was installed from the current lock file."""
    return _stamped(DEMO_DIR, _wanted_stamp(), _bundle_paths())


def _bundle_paths() -> tuple[Path, ...]:
    return tuple(BUNDLE_DIR / name for name in BUNDLE_FILES)


def install(npm: str | None = None) -> bool:
    """``npm ci`` in demo/ unless already installed; True if it ran (see ``npm_ci``)."""
    return npm_ci(DEMO_DIR, produces=_bundle_paths(), npm=npm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.assets", description="Install Uppy's bundle for the demo page."
    )
    parser.add_argument(
        "--optional",
        action="store_true",
        help="without npm, or when npm ci fails, say so and exit 0 (scripts/run)",
    )
    args = parser.parse_args(argv)
    try:
        if install():
            print(f"demo: installed Uppy into {BUNDLE_DIR}", file=sys.stderr)
    except InstallFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        if args.optional:
            print("demo: the page at / will say how to install Uppy", file=sys.stderr)
            return 0
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
