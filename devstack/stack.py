"""The app's processes as one unit: gunicorn, an rq worker and, if asked, the rq cron clock.

One ``Stack`` serves ``scripts/run`` (``devstack.run``), the tests and the benchmarks, so
that all of them run the app with the same command lines (``devstack.services``), the same
readiness checks and the same process-group handling; each caller only chooses the
environment, the port and where the logs go.

- ``stack_env(settings, **overrides)``: a hermetic environment for the processes (no
  RINDLE_/AWS_/REDIS_ variable of the caller's environment leaks in).
- ``Stack(env, log_dir=..., port=..., clock=...)``: start, restart (gently or by SIGKILL),
  stop, logs.
- ``private_services(root, bucket=...)``: a throwaway redis-server and SeaweedFS for the
  benchmarks (the tests keep theirs for a whole session, ``scripts/run`` has fallbacks).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

from devstack.services import (
    LOOPBACK,
    REPO_ROOT,
    ManagedProcess,
    RedisServer,
    SeaweedS3,
    Service,
    clock_command,
    free_port,
    http_ok,
    procfile_command,
    wait_until,
    web_command,
    worker_command,
)

if TYPE_CHECKING:
    import redis

# Variables of the outer environment that must not leak into the services under test.
HERMETIC_PREFIXES = ("RINDLE_", "AWS_", "REDIS_")


def stack_env(settings: Mapping[str, str], **overrides: str | int | None) -> dict[str, str]:
    """The environment for the app's processes: this process's environment without any
    RINDLE_/AWS_/REDIS_ variable, then ``settings``, then ``overrides`` (None unsets).

    Hermetic, so that a developer's shell (or ~/.aws) cannot change what a test or a
    benchmark measures; this Python's bin dir comes first on PATH (flask, rq, gunicorn).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(HERMETIC_PREFIXES)}
    venv_bin = str(Path(sys.executable).parent)
    env.update(
        PATH=os.pathsep.join([venv_bin, env.get("PATH", os.defpath)]),
        PYTHONUNBUFFERED="1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        RINDLE_PUBLIC="1",  # app.py has no authorize hook: a dev and test stack only
    )
    env.update(settings)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


class Stack(Service):
    """gunicorn (the app) and one rq worker, plus the rq cron clock with ``clock=True``.

    Started from the repo root with ``env``, which must name REDIS_URL, the S3 settings and
    RINDLE_TMP_DIR (created on start: tails are node-local, one dir per stack). Each
    process runs in its own process group and dies with this Python (``ManagedProcess``);
    its output goes to ``log_dir/<gunicorn|worker|clock>.log``, or to this terminal
    without a ``log_dir``. ``worker_env`` runs the worker with other settings than the web
    process (e.g. the web process behind a fault proxy, the worker direct). ``web_args``
    go after gunicorn's usual arguments, and gunicorn takes the last of a repeated option
    (a benchmark's ``--threads 32``). ``procfile=True`` runs the Procfile's own lines
    instead (through ``sh``, with ``PORT``; the web process then binds 0.0.0.0).
    ``worker=False`` starts no worker: a web node of a formation whose worker (and
    clock) run in another ``Stack``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        clock: bool = False,
        worker_env: Mapping[str, str] | None = None,
        web_args: Sequence[str] = (),
        procfile: bool = False,
        worker: bool = True,
    ) -> None:
        self.env = dict(env)
        self.procfile = procfile
        self.web_args = list(web_args)
        self.worker_env = dict(worker_env) if worker_env is not None else self.env
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.files_url = f"{self.url}/files/"
        self.tmp_dir = Path(self.env["RINDLE_TMP_DIR"])
        self.bucket = self.env.get("RINDLE_S3_BUCKET", "")
        self.prefix = self.env.get("RINDLE_S3_PREFIX", "uploads/")
        self.with_clock = clock
        self.with_worker = worker
        self.web: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None
        self.clock: ManagedProcess | None = None

    def processes(self) -> list[ManagedProcess]:
        """The processes started so far (running or not), the web process first."""
        return [p for p in (self.web, self.worker, self.clock) if p is not None]

    def start(self, timeout: float = 60.0) -> Self:
        """Start every process; return once gunicorn answers /healthz and the worker has
        registered in Redis (a test's first job is then picked up at once)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._start_web()
        if self.with_worker:
            self._start_worker()
        if self.with_clock:
            self._start_clock()
        self._wait_web(timeout)
        if self.with_worker:
            self._wait_worker(timeout)
        if self.with_clock:
            self._wait_background(timeout)
        return self

    def restart_web(self, *, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop gunicorn (SIGTERM, or SIGKILL to its group with ``kill=True``: a crash as
        far as the app can tell) and start it again on the same port."""
        if self.web is not None:
            self.web.kill() if kill else self.web.stop(timeout=10)
        self._start_web()
        self._wait_web(timeout)

    def restart_worker(self, *, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop the rq worker (warm shutdown, or SIGKILL with ``kill=True``) and start another."""
        if self.worker is not None:
            self.worker.kill() if kill else self.worker.stop(timeout=10)
        self._start_worker()
        self._wait_worker(timeout)

    def exited(self) -> ManagedProcess | None:
        """A process that has ended (None while all run): a dev stack stops on this."""
        return next((p for p in self.processes() if p.poll() is not None), None)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the web process first (no new work), then the worker and the clock."""
        for proc in self.processes():
            proc.stop(timeout=timeout)

    def logs(self, lines: int = 200) -> str:
        """The end of each process's log, for a failure report."""
        return "\n".join(
            f"--- {p.name} ({p.log_path}) ---\n{p.log_tail(lines)}" for p in self.processes()
        )

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir is not None else None

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str], log: str
    ) -> ManagedProcess:
        return ManagedProcess(name, argv, env=env, cwd=REPO_ROOT, log_path=self._log(log)).start()

    def _start_web(self) -> None:
        if self.procfile:
            env = {**self.env, "PORT": str(self.port)}
            self.web = self._spawn("gunicorn", procfile_command("web"), env, "gunicorn")
            return
        argv = [*web_command(self.port, env=self.env), *self.web_args]
        self.web = self._spawn("gunicorn", argv, self.env, "gunicorn")

    def _start_worker(self) -> None:
        env = self.worker_env
        if self.procfile:
            cmd = procfile_command("worker")
        else:
            cmd = worker_command(env.get("RINDLE_QUEUE", "rindle"))
        self.worker = self._spawn("rq-worker", cmd, env, "worker")

    def _start_clock(self) -> None:
        cmd = procfile_command("clock") if self.procfile else clock_command()
        self.clock = self._spawn("rq-cron", cmd, self.env, "clock")

    def _wait_web(self, timeout: float) -> None:
        assert self.web is not None
        healthz = f"{self.url}/healthz"
        wait_until(
            lambda: http_ok(healthz), timeout=timeout, procs=[self.web], what=f"for {healthz}"
        )

    def _wait_worker(self, timeout: float) -> None:
        from rq import Worker  # the app's dependencies, imported late like in services

        assert self.worker is not None
        pid = self.worker.pid
        conn = _client(self.worker_env)
        try:
            wait_until(
                lambda: any(w.pid == pid for w in Worker.all(connection=conn)),
                timeout=timeout,
                procs=[self.worker],
                what="for the rq worker to register",
            )
        finally:
            conn.close()

    def _wait_background(self, timeout: float) -> None:
        """Until the clock is registered and the worker holds RQ's scheduler lock: what
        ``flask rindle doctor`` looks for."""
        from rq.cron import CronScheduler
        from rq.scheduler import RQScheduler

        assert self.clock is not None
        queue = self.env.get("RINDLE_QUEUE", "rindle")
        conn = _client(self.env)
        try:
            wait_until(
                lambda: (
                    bool(CronScheduler.all(conn, cleanup=False))
                    and bool(conn.exists(RQScheduler.get_locking_key(queue)))
                ),
                timeout=timeout,
                procs=[self.clock, *([self.worker] if self.worker else [])],
                what="for the rq cron clock and RQ's scheduler",
                interval=0.2,
            )
        finally:
            conn.close()

    def __repr__(self) -> str:
        return f"<Stack {self.url} logs={self.log_dir}>"


def _client(env: Mapping[str, str]) -> redis.Redis:
    """A client for ``env``'s Redis built like the app's (TLS, Sentinel), closed with it."""
    from rindle.config import Settings
    from rindle.redis_client import private_client

    return private_client(Settings.from_env(env), decode=False)


@contextlib.contextmanager
def private_services(
    root: str | os.PathLike[str], *, bucket: str
) -> Iterator[tuple[RedisServer, SeaweedS3]]:
    """A throwaway redis-server and SeaweedFS (with ``bucket``), data and logs under
    ``root``; both stopped at the end. What a benchmark needs that a Stack runs against."""
    root = Path(root)
    redis_server = RedisServer(log_path=root / "redis.log")
    s3 = SeaweedS3(root / "seaweedfs", bucket=bucket)
    try:
        redis_server.start()
        s3.start()
        yield redis_server, s3
    finally:
        s3.stop(timeout=0)  # the data is thrown away: no graceful stop needed
        redis_server.stop()
