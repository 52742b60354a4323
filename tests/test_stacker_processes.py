"""Stackers as real processes: one killed mid-job, and one working remotely through the worker API."""
from __future__ import annotations

import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from astropy.io import fits

from lib.stacking.synthetic import make_session
from tests.apps import ROOT, Deployment


def upload_synthetic(d: Deployment, user, tmp_path, n_frames: int, shape=(256, 384)) -> dict:
    """Upload a synthetic night and finalize it; returns the one job."""
    night = make_session(tmp_path / "night", n_frames=n_frames, shape=shape, seed=3)
    session = user.new_session()
    for path in night.paths:
        assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
    jobs = user.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"]
    assert len(jobs) == 1
    return jobs[0]


def buffer_files(d: Deployment) -> list:
    return [p for p in (d.data_dir / "buffer").rglob("*") if p.is_file()]


@pytest.fixture
def short_lease_site(tmp_path):
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_LEASE_SECONDS": "2", "CROWDSKY_RETRY_BACKOFF_SECONDS": "0"})
    d.start_app()
    yield d
    d.stop_app()


def test_a_stacker_killed_mid_job_is_replaced_and_the_job_completes_once(short_lease_site, tmp_path):
    d = short_lease_site
    user = d.user("steady")
    job = upload_synthetic(d, user, tmp_path, n_frames=16, shape=(512, 768))

    doomed = subprocess.Popen([sys.executable, "stacker.py", "--once"], cwd=ROOT, env=d.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = user.get(f"/api/v1/jobs/{job['id']}").json()
        if state["status"] == "running" and state["progress"] > 0:
            break
        time.sleep(0.05)
    assert state["status"] == "running", state
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    # what the killed stacker leaves: its job folder (raws fetched from the buffer) under DATA_DIR
    work = d.data_dir / "work" / socket.gethostname()
    assert [p.name for p in work.glob(f"job{job['id']}-{doomed.pid}-*")], list(work.iterdir())

    time.sleep(2.5)                                     # the lease runs out
    janitor = d.run("janitor.py", "--once")
    assert janitor.returncode == 0, janitor.stderr
    assert user.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "pending"

    replacement = d.run("stacker.py", "--once")
    assert replacement.returncode == 0, replacement.stderr[-2000:]
    state = user.get(f"/api/v1/jobs/{job['id']}").json()
    assert state["status"] == "done" and state["attempts"] == 2, state

    stacks = user.get("/api/v1/stacks").json()["stacks"]
    assert len(stacks) == 1 and stacks[0]["frames"] + stacks[0]["frames_rejected"] == 16
    assert buffer_files(d) == [], "the raws of a stacked chunk must leave the buffer"
    archived = sorted(p.name for p in (d.data_dir / "archive").rglob("*") if p.is_file())
    assert archived == ["preview.png", "stack.fits"]
    # the next stacker removed the killed one's leftovers: its job folder, and its stacking scratch
    assert list(work.iterdir()) == []
    assert not list(Path(tempfile.gettempdir()).glob(f"crowdsky-stack-{doomed.pid}-*"))


def test_remote_stacker_with_only_a_url_and_a_worker_token(tmp_path, deployment):
    d = deployment
    user = d.user("faraway")
    job = upload_synthetic(d, user, tmp_path, n_frames=5)
    token = d.run("ingest_app.py", "worker-token", "add", "observatory-box").stdout.strip()
    assert len(token) > 30

    # The worker token is no user token, and a user token is no worker token.
    as_user = requests.get(d.url + "/api/v1/status", headers={"Authorization": f"Bearer {token}"})
    assert as_user.status_code == 401
    assert user.post("/api/v1/worker/claim", json={}).status_code == 401

    # A claim handed back (a stacker stopping) leaves the job pending, its attempt not counted.
    worker = requests.Session()
    worker.headers["Authorization"] = f"Bearer {token}"
    claimed = worker.post(d.url + "/api/v1/worker/claim", json={"worker": "test"}).json()
    assert claimed["job"]["id"] == job["id"]
    assert worker.post(f"{d.url}/api/v1/worker/jobs/{job['id']}/release", json={"lease": claimed["lease"]}).json() \
        == {"status": "pending"}
    assert worker.post(f"{d.url}/api/v1/worker/jobs/{job['id']}/release",
                       json={"lease": claimed["lease"]}).status_code == 409
    assert user.get(f"/api/v1/jobs/{job['id']}").json()["attempts"] == 0

    # A machine with nothing but the app's URL and the token: no database, no storage settings.
    remote_env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSKY_")}
    remote_env.update(CROWDSKY_DATA_DIR=str(tmp_path / "elsewhere"), CROWDSKY_API_URL=d.url,
                      CROWDSKY_WORKER_TOKEN=token)
    remote = subprocess.run([sys.executable, "stacker.py", "--once"], cwd=ROOT, env=remote_env,
                            capture_output=True, text=True, timeout=300)
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert not (tmp_path / "elsewhere" / "crowdsky.db").exists()

    state = user.get(f"/api/v1/jobs/{job['id']}").json()
    assert state["status"] == "done", state
    stack = user.get(f"/api/v1/stacks/{state['stack_id']}").json()
    with fits.open(io.BytesIO(user.get(stack["fits_url"]).content)) as hdul:
        assert hdul[0].header["NCOMBINE"] == stack["frames"] >= 2
    assert buffer_files(d) == []

    revoked = d.run("ingest_app.py", "worker-token", "revoke", "observatory-box")
    assert "revoked 1" in revoked.stdout
    again = requests.post(d.url + "/api/v1/worker/claim", json={}, headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 401


def test_a_chunk_that_cannot_be_stacked_fails_clearly_and_can_be_retried_or_deleted(tmp_path, deployment):
    d = deployment
    user = d.user("cloudy")
    night = make_session(tmp_path / "blank", n_frames=4, blank=True, seed=5)
    session = user.new_session()
    for path in night.paths:
        assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
    job = user.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"][0]

    assert d.run("stacker.py", "--once").returncode == 0
    state = user.get(f"/api/v1/jobs/{job['id']}").json()
    assert state["status"] == "failed" and state["attempts"] == 1   # no point in trying again by itself
    assert "star" in state["error"].lower(), state["error"]

    other = d.user("nosy")
    assert other.post(f"/api/v1/jobs/{job['id']}/retry").status_code == 404
    assert other.http.delete(f"{d.url}/api/v1/jobs/{job['id']}").status_code == 404

    assert user.post(f"/api/v1/jobs/{job['id']}/retry").json()["status"] == "pending"
    assert d.run("stacker.py", "--once").returncode == 0
    assert user.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "failed"
    assert len(buffer_files(d)) == 4

    assert user.http.delete(f"{d.url}/api/v1/jobs/{job['id']}").status_code == 200
    assert buffer_files(d) == []
    assert user.get(f"/api/v1/jobs/{job['id']}").status_code == 404


class _FlakyProxy(http.server.ThreadingHTTPServer):
    """A reverse proxy on loopback in front of the app that answers the first POST .../complete
    with 503 after reading its body (as a balancer does while the app restarts) and passes every
    other request through, each input a remote stacker downloads after a pause (a slow link: the
    download then lasts seconds whatever the machine's speed, so a person watching sees its
    progress). Keeps the body length of each /complete it sees."""

    INPUT_DELAY_S = 0.3

    daemon_threads = True

    def __init__(self, upstream: str):
        self.upstream, self.complete_bodies = upstream, []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _relay(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "POST" and self.path.endswith("/complete"):
            self.server.complete_bodies.append(len(body))
            if len(self.server.complete_bodies) == 1:
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                return
        if self.command == "GET" and "/inputs/" in self.path:
            time.sleep(self.server.INPUT_DELAY_S)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        answer = requests.request(self.command, self.server.upstream + self.path, data=body, headers=headers)
        self.send_response(answer.status_code)
        for name in ("Content-Type",):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PUT = do_DELETE = _relay


def test_a_remote_stacker_retries_complete_with_the_whole_stack_and_reports_progress_as_it_goes(tmp_path, deployment):
    d = deployment
    user = d.user("patient")
    job = upload_synthetic(d, user, tmp_path, n_frames=16, shape=(512, 768))
    token = d.run("ingest_app.py", "worker-token", "add", "behind-a-balancer").stdout.strip()
    proxy = _FlakyProxy(d.url)
    try:
        remote_env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSKY_")}
        remote_env.update(CROWDSKY_DATA_DIR=str(tmp_path / "elsewhere"), CROWDSKY_API_URL=proxy.url,
                          CROWDSKY_WORKER_TOKEN=token)
        remote = subprocess.Popen([sys.executable, "stacker.py", "--once"], cwd=ROOT, env=remote_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        progress = []
        while remote.poll() is None:       # what a person watching the job sees while it stacks
            state = user.get(f"/api/v1/jobs/{job['id']}").json()
            if state["status"] == "running":
                progress.append(state["progress"])
            time.sleep(0.1)
        out, err = remote.communicate()
        assert remote.returncode == 0, err[-3000:]
    finally:
        proxy.shutdown()
        proxy.server_close()

    # the second try carried the same, whole stack (the first try's files were not read empty)
    assert len(proxy.complete_bodies) == 2 and proxy.complete_bodies[0] == proxy.complete_bodies[1] > 100_000, \
        proxy.complete_bodies
    state = user.get(f"/api/v1/jobs/{job['id']}").json()
    assert state["status"] == "done" and state["attempts"] == 1, state
    stack = user.get(f"/api/v1/stacks/{state['stack_id']}").json()
    with fits.open(io.BytesIO(user.get(stack["fits_url"]).content)) as hdul:
        assert hdul[0].header["NCOMBINE"] == stack["frames"] >= 2
        assert hdul[0].data.shape[0] == 3
    # progress moved while the chunk stacked: values between the start and the end were shown
    assert len({p for p in progress if 0 < p < 1}) >= 2, progress
    assert progress == sorted(progress), progress
