"""Faults: real servers stop mid-operation; nothing is lost and everything recovers by itself.

- the S3 buffer dies during an upload: 503, the same upload succeeds later;
- the WebDAV archive dies while a stacker works: the job goes back to pending with the error kept,
  and completes exactly once when the archive is back;
- the database cuts the app's connections, refuses them, or restarts (a private PostgreSQL server
  started here): requests answer a clean 503 JSON error while it is away and succeed again after,
  without restarting the app.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from astropy.io import fits

from lib.stacking.synthetic import make_session
from tests.apps import ROOT, Deployment
from tests.frames import NIGHT_1, real_frames, small_frame_bytes
from tests.servers import free_port


@pytest.fixture
def s3_site(tmp_path, s3_server):
    d = Deployment(tmp_path / "crowdsky", {
        "CROWDSKY_BUFFER_URL": s3_server.url(),
        "CROWDSKY_BUFFER_USER": s3_server.credentials.user,
        "CROWDSKY_BUFFER_PASSWORD": s3_server.credentials.secret,
    })
    d.start_app()
    yield d
    d.stop_app()
    s3_server.start()


def test_s3_down_during_upload_answers_503_and_the_same_upload_succeeds_later(s3_site, s3_server):
    owner = s3_site.user("patient")
    session = owner.new_session()
    frame = real_frames(NIGHT_1)[0]
    s3_server.kill()
    refused = owner.put_frame(session, frame.name, frame.read_bytes())
    assert refused.status_code == 503, refused.text
    assert "unavailable" in refused.json()["error"]
    assert owner.get(f"/api/v1/sessions/{session}").json()["frames"] == []
    ready = owner.get("/readyz")
    assert ready.status_code == 503 and ready.json()["buffer"] != "ok"

    s3_server.start()
    accepted = owner.put_frame(session, frame.name, frame.read_bytes())
    assert accepted.status_code == 201, accepted.text
    assert len(owner.get(f"/api/v1/sessions/{session}").json()["frames"]) == 1
    assert owner.get("/readyz").status_code == 200


# --- the WebDAV archive stops while a stacker works ------------------------------------------

@pytest.fixture
def webdav_site(tmp_path, webdav_server):
    webdav_server.start()                # no-op unless an earlier test left it stopped
    d = Deployment(tmp_path / "crowdsky", {
        "CROWDSKY_ARCHIVE_URL": webdav_server.url(),
        "CROWDSKY_ARCHIVE_USER": webdav_server.credentials.user,
        "CROWDSKY_ARCHIVE_PASSWORD": webdav_server.credentials.secret,
        "CROWDSKY_RETRY_BACKOFF_SECONDS": "0",
    })
    d.start_app()
    yield d
    d.stop_app()
    webdav_server.start()


def raws_in_buffer(d: Deployment) -> list[Path]:
    return [p for p in (d.data_dir / "buffer").rglob("*") if p.is_file()]


def stack_rows(d: Deployment, job_id: int) -> list[tuple]:
    """(id, kind) of every stack row of *job_id*, read from the database file itself."""
    conn = sqlite3.connect(f"file:{d.data_dir / 'crowdsky.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT id, kind FROM stacks WHERE job_id = ?", (job_id,)).fetchall()
    finally:
        conn.close()


def test_webdav_archive_down_while_stacking_keeps_the_job_and_it_completes_once_later(
        webdav_site, webdav_server, tmp_path):
    d = webdav_site
    owner = d.user("persistent")
    night = make_session(tmp_path / "night", n_frames=12, shape=(512, 768), seed=13)
    session = owner.new_session()
    for path in night.paths:
        assert owner.put_frame(session, path.name, path.read_bytes()).status_code == 201
    job_id = owner.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"][0]["id"]

    def job() -> dict:
        return owner.get(f"/api/v1/jobs/{job_id}").json()

    # A stacker checks the archive as it starts: one started while the archive is down takes no job.
    with webdav_server.stopped():
        early = d.run("stacker.py", "--once", timeout=120)
    assert early.returncode != 0 and "unreachable" in early.stderr, early.stderr[-2000:]
    assert job()["status"] == "pending" and job()["attempts"] == 0

    # The archive dies while a stacker works on the job (before it can write the stack).
    with open(d.data_dir / "stacker.log", "wb") as log:
        stacker = subprocess.Popen([sys.executable, "stacker.py", "--once"], cwd=ROOT, env=d.env,
                                   stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while job()["status"] == "pending" and time.monotonic() < deadline and stacker.poll() is None:
            time.sleep(0.02)
        webdav_server.kill()
        stacker.wait(180)
    stacker_log = (d.data_dir / "stacker.log").read_text(errors="replace")
    assert stacker.returncode == 0, stacker_log[-3000:]
    state = job()
    assert state["status"] == "pending", (state, stacker_log[-3000:])     # not failed: attempts left
    assert state["attempts"] == 1 < state["max_attempts"], state
    assert "WebDAV" in state["error"] and "unreachable" in state["error"], state["error"]
    assert state["stack_id"] is None and stack_rows(d, job_id) == []
    assert owner.get("/api/v1/stacks").json()["stacks"] == []
    assert len(raws_in_buffer(d)) == 12, "the raws must stay until their stack is safe"

    # The archive is back: the next stacker finishes the job, once.
    webdav_server.start()
    again = d.run("stacker.py", "--once")
    assert again.returncode == 0, again.stderr[-2000:]
    state = job()
    assert state["status"] == "done" and state["attempts"] == 2 and state["error"] is None, state
    assert stack_rows(d, job_id) == [(state["stack_id"], "chunk")]
    assert raws_in_buffer(d) == []
    stack = owner.get(f"/api/v1/stacks/{state['stack_id']}").json()
    download = owner.get(stack["fits_url"])
    assert download.status_code == 200
    with fits.open(io.BytesIO(download.content)) as hdul:
        assert hdul[0].header["NCOMBINE"] == stack["frames"] >= 2


# --- the database goes away under the app --------------------------------------------------

DATABASE_DOWN = "database is unavailable"


def assert_database_down(d: Deployment, owner, session: int) -> None:
    """While the database is away: quick 503 JSON answers that name it, and nothing half-stored."""
    stored = raws_in_buffer(d)
    frame = small_frame_bytes(seed=32)
    calls = [("GET", f"/api/v1/sessions/{session}", {}), ("GET", "/api/v1/status", {}),
             ("POST", "/api/v1/sessions", {}), ("GET", "/api/v1/stacks", {}),
             ("POST", f"/api/v1/sessions/{session}/finalize", {}),
             ("PUT", f"/api/v1/sessions/{session}/frames/late.fit",
              {"data": frame, "headers": {"Content-Type": "application/fits"}})]
    for method, path, extra in calls:
        started = time.monotonic()
        response = owner.http.request(method, d.url + path, timeout=30, **extra)
        assert response.status_code == 503, (method, path, response.status_code, response.text[:500])
        assert response.headers["Content-Type"].startswith("application/json"), response.text[:500]
        assert DATABASE_DOWN in response.json()["error"]
        assert response.headers.get("Retry-After")
        assert time.monotonic() - started < 10, f"{method} {path} took too long"
    page = owner.http.get(d.url + "/status", timeout=30)
    assert page.status_code == 503 and page.headers["Content-Type"].startswith("text/html")
    assert DATABASE_DOWN in page.text and "Traceback" not in page.text
    ready = owner.http.get(d.url + "/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["database"] != "ok"
    assert owner.http.get(d.url + "/healthz", timeout=30).status_code == 200
    assert raws_in_buffer(d) == stored


def assert_recovered(d: Deployment, owner, session: int, frames_before: int) -> None:
    """The same app process serves again: the rows written before are there, new writes work."""
    response = owner.get(f"/api/v1/sessions/{session}", timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["frames"]) == frames_before
    assert owner.put_frame(session, "late.fit", small_frame_bytes(seed=32)).status_code == 201
    jobs = owner.post(f"/api/v1/sessions/{session}/finalize", timeout=30).json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["frames"] == frames_before + 1
    assert owner.get("/readyz", timeout=30).status_code == 200
    assert len(raws_in_buffer(d)) == frames_before + 1


@pytest.fixture
def postgres_site(tmp_path, _database_servers):
    """The app on a database of its own on the machine's PostgreSQL server, and an admin connection."""
    server = _database_servers.get("postgresql")
    name = _database_servers.next_name()
    server.create(name)
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_DATABASE_URL": server.url(name)})
    try:
        d.start_app()
        yield d, server.admin, name
    finally:
        d.stop_app()
        server.admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        server.drop(name)


def cut_connections(admin: psycopg.Connection, database: str) -> int:
    rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
    return len(rows)


def test_database_connections_cut_or_refused_answer_503_and_recover(postgres_site):
    d, admin, name = postgres_site
    owner = d.user("unshaken")
    session = owner.new_session()
    assert owner.put_frame(session, "first.fit", small_frame_bytes(seed=31)).status_code == 201

    # Every connection of the app is cut (an administrator, a failover, a proxy restart):
    # the next requests reconnect by themselves.
    assert cut_connections(admin, name) >= 1
    for _ in range(3):
        assert owner.get(f"/api/v1/sessions/{session}").status_code == 200
        assert owner.get("/api/v1/status").status_code == 200

    # The database refuses connections for a while, then takes them again.
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        cut_connections(admin, name)
        assert_database_down(d, owner, session)
    finally:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert_recovered(d, owner, session, frames_before=1)


class PrivatePostgres:
    """A PostgreSQL server of this test's own (Debian's binaries), in a temporary folder on a free
    loopback port, so it can be crashed and restarted without touching the machine's server.
    As root it runs as the ``postgres`` user (the server refuses to run as root)."""

    def __init__(self):
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                       key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
        if not found:
            pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        self.bin = found[-1].parent
        self.as_user = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="crowdsky-pg-"))
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.dir / "server.log"
            raise RuntimeError(f"{tool} failed: {done.stderr[-2000:]}\n"
                               f"{log.read_text(errors='replace')[-2000:] if log.exists() else ''}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        """``immediate``: like a crash, clients are not told; ``fast``: sessions are ended."""
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def test_database_restart_under_the_app_answers_503_then_serves_again(private_postgres, tmp_path):
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_DATABASE_URL": private_postgres.url})
    d.start_app()
    try:
        owner = d.user("weathered")
        session = owner.new_session()
        assert owner.put_frame(session, "first.fit", small_frame_bytes(seed=33)).status_code == 201

        private_postgres.stop("immediate")          # the server crashes: no goodbye to its clients
        assert_database_down(d, owner, session)
        private_postgres.start()                    # crash recovery, same port, same data
        assert_recovered(d, owner, session, frames_before=1)

        private_postgres.stop("fast")               # a clean restart, e.g. a minor-version upgrade
        private_postgres.start()
        assert owner.get("/api/v1/status").status_code == 200
        assert d.app.poll() is None, "the app kept running throughout"
    finally:
        d.stop_app()
    # The outage is in the app's JSON log as an error that names it, without the SQL it ran.
    errors = [json.loads(line) for line in d.log_path.read_text().splitlines()
              if line.startswith("{") and '"level": "error"' in line]
    assert any(e["event"].startswith("database unavailable") for e in errors), errors
    assert not any("SELECT" in e["event"] or "INSERT" in e["event"] for e in errors)
