"""Start the whole rindle stack for development: ``python -m devstack.run``.

- Redis: ``REDIS_URL`` if set, else a private ``redis-server``, else an in-process
  fakeredis server (needs ``fakeredis[lua]``: rq runs Lua scripts).
- S3: an external S3 when ``RINDLE_S3_BUCKET`` is set (with ``AWS_ENDPOINT_URL_S3`` for a
  non-AWS store), else SeaweedFS with its data in ``.rindle-data/seaweedfs``, bucket ``rindle``.
- The app (``devstack.Stack``): gunicorn on 127.0.0.1:$PORT (default 5000), one rq worker
  and the rq cron clock, their output on this terminal; metrics at /metrics (in
  multiprocess mode, in ``.rindle-data/metrics``), rq-dashboard at /rq behind a password;
  ``flask rindle doctor`` runs once everything is up.

Ctrl-C (or SIGTERM) stops everything; if any process dies, everything stops, exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from demo import assets as demo_assets
from devstack.services import (
    LOOPBACK,
    REPO_ROOT,
    RedisServer,
    SeaweedS3,
    ServiceFailed,
    ServiceUnavailable,
    bindable,
    free_port,
)
from devstack.stack import Stack
from rindle.config import redact_url

DEV_ACCESS_KEY = "rindle"
DEV_SECRET_KEY = "rindle-dev-secret"  # a loopback-only dev server; printed at start
DEV_DASHBOARD_PASSWORD = "rindle-dev"  # rq-dashboard of the loopback-only dev stack


class Abort(Exception):
    """A condition the user must fix; its message says how."""


class Shutdown(Exception):
    """Raised by the signal handler to unwind the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def say(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


class FakeRedis:
    """fakeredis's TCP server in a thread of this process: a stand-in when Redis is missing."""

    def __init__(self) -> None:
        from fakeredis import TcpFakeServer

        self.port = free_port()
        self.server = TcpFakeServer((LOOPBACK, self.port), server_type="redis")
        # Handler threads can sit in a blocking command (rq's BLPOP) for minutes after the
        # client is gone: don't join them when closing.
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_redis(cleanup: list[Callable[[], Any]]) -> str:
    """The Redis URL to use, starting a server when none is configured."""
    if url := os.environ.get("REDIS_URL"):
        say(f"Redis: using REDIS_URL={redact_url(url)}")
        return url
    server = RedisServer()
    cleanup.append(server.stop)
    try:
        server.start()
        say(f"Redis: started redis-server at {server.url} (in memory, gone at exit)")
        return server.url
    except ServiceUnavailable as exc:
        say(f"Redis: {exc}")
    if importlib.util.find_spec("fakeredis") is None or importlib.util.find_spec("lupa") is None:
        raise Abort(
            "No Redis: set REDIS_URL, install redis-server "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis), or "
            "pip install 'fakeredis[lua]' for the embedded stand-in."
        )
    fake = FakeRedis()
    cleanup.append(fake.stop)
    say(f"Redis: started the embedded fakeredis stand-in at {fake.url} (in memory; dev only)")
    return fake.url


def start_s3(data_dir: Path, cleanup: list[Callable[[], Any]]) -> dict[str, str]:
    """The S3 variables for the app, starting SeaweedFS when no S3 is configured."""
    bucket = os.environ.get("RINDLE_S3_BUCKET")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3")
    if bucket:
        say(f"S3: using bucket {bucket!r} at {endpoint or 'AWS (no AWS_ENDPOINT_URL_S3)'}")
        return {}
    s3 = SeaweedS3(
        data_dir / "seaweedfs",
        bucket="rindle",
        access_key=DEV_ACCESS_KEY,
        secret_key=DEV_SECRET_KEY,
    )
    cleanup.append(s3.stop)
    s3.start()
    say(
        f"S3: started SeaweedFS at {s3.endpoint} in {s3.startup_seconds:.1f}s "
        f"(bucket {s3.bucket!r}, key {s3.access_key!r}, secret {s3.secret_key!r}, "
        f"data {s3.data_dir}, log {s3.log_path})"
    )
    return s3.env()


def run_doctor(env: dict[str, str]) -> bool:
    """``flask rindle doctor`` on the running stack, its report on this terminal."""
    cmd = [sys.executable, "-m", "flask", "--app", "app:app", "rindle", "doctor"]
    say("flask rindle doctor:")
    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, check=False)
    if done.returncode != 0:
        say("the doctor found problems (see FAIL above); the stack keeps running")
    return done.returncode == 0


def banner(port: int, env: dict[str, str]) -> str:
    files = f"http://{LOOPBACK}:{port}/files/"
    page = f"http://{LOOPBACK}:{port}/"
    if env.get("RINDLE_DEMO") != "1":
        page = "off (RINDLE_DEMO=0)"
    elif not demo_assets.present():
        page += "  (Uppy is not installed: the page says how)"
    endpoint = env.get("AWS_ENDPOINT_URL_S3", "")
    s3_ls = f"--endpoint-url {endpoint} " if endpoint else ""
    bucket, prefix = env.get("RINDLE_S3_BUCKET", "rindle"), env.get("RINDLE_S3_PREFIX", "uploads/")
    user = env.get("RINDLE_DASHBOARD_USER") or "rindle"
    password = env.get("RINDLE_DASHBOARD_PASSWORD", "")
    return f"""
rindle is up.

  Upload page (Uppy):      {page}
  Upload URL (tus 1.0.0):  {files}
  Metrics (Prometheus):    http://{LOOPBACK}:{port}/metrics
  Queue (rq-dashboard):    http://{LOOPBACK}:{port}/rq/  (user {user!r}, password {password!r})

  With tuspy (pip install tuspy):
    python -c "from tusclient.client import TusClient; \\
u = TusClient('{files}').uploader('README.md', chunk_size=5*1024*1024); \\
u.upload(); print(u.url)"

  With curl:
    curl -i -X POST {files} -H 'Tus-Resumable: 1.0.0' -H 'Upload-Length: 5'
    curl -i -X PATCH <Location from above> -H 'Tus-Resumable: 1.0.0' \\
         -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' \\
         --data-binary hello

  Objects land in s3://{bucket}/{prefix}  (aws {s3_ls}s3 ls s3://{bucket}/{prefix})
  Ctrl-C stops everything.
"""


def run(port: int, data_dir: Path) -> int:
    """Start everything, wait for Ctrl-C or a process's death, stop everything."""
    cleanup: list[Callable[[], Any]] = []
    stack: Stack | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise Shutdown(signum)

    def kill_now(signum: int, frame: FrameType | None) -> None:
        say("second signal: killing everything")
        # Only os.killpg here: Popen.wait is not reentrant, and the main thread may be in it.
        for proc in stack.processes() if stack else ():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if not bindable(LOOPBACK, port):
            raise Abort(f"port {port} on {LOOPBACK} is in use: stop what runs there or set PORT")
        if os.environ.get("AWS_ENDPOINT_URL_S3") and not os.environ.get("RINDLE_S3_BUCKET"):
            raise Abort(
                "AWS_ENDPOINT_URL_S3 is set but RINDLE_S3_BUCKET is not: set both to "
                "use that S3, or neither to run a local SeaweedFS."
            )
        # Not stack_env: the developer's own settings (RINDLE_*, AWS_*) are meant to apply.
        env = dict(os.environ)
        env["REDIS_URL"] = start_redis(cleanup)
        env.update(start_s3(data_dir, cleanup))
        env.setdefault("RINDLE_TMP_DIR", str(data_dir / "tmp"))
        env.setdefault("RINDLE_PUBLIC", "1")  # the example app has no authorize hook
        env.setdefault("RINDLE_DEMO", "1")  # the upload page at / (demo/)
        env["PYTHONUNBUFFERED"] = "1"
        # /metrics of both gunicorn workers, and rq-dashboard behind a password.
        env.setdefault("RINDLE_METRICS", "1")
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "metrics"))
        env.setdefault("RINDLE_DASHBOARD_PASSWORD", DEV_DASHBOARD_PASSWORD)
        say(f"tails in {env['RINDLE_TMP_DIR']}")

        stack = Stack(env, port=port, clock=True)  # output to this terminal
        cleanup.append(functools.partial(stack.stop, timeout=15))
        stack.start()
        run_doctor(env)
        print(banner(port, env), flush=True)

        while (proc := stack.exited()) is None:
            time.sleep(0.5)
        say(f"{proc.name} exited with code {proc.poll()}: stopping everything")
        return 1
    except Shutdown as sig:
        say(f"{sig}: stopping")
        return 0
    except Abort as exc:
        say(str(exc))
        return 1
    except ServiceFailed as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, kill_now)
        signal.signal(signal.SIGTERM, kill_now)
        for stop in reversed(cleanup):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                say(f"while stopping: {exc!r}")
        say("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.run", description="Start the whole rindle stack for development."
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT") or 5000),
        help="the app's port on 127.0.0.1 (default: $PORT or 5000)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO_ROOT / ".rindle-data",
        help="where SeaweedFS data and the tails live (default: .rindle-data in the repo)",
    )
    args = parser.parse_args(argv)
    return run(args.port, args.data_dir.resolve())


if __name__ == "__main__":
    sys.exit(main())
