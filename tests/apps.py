"""pytest plugin: the real CrowdSky processes (ingest app, stacker, janitor) as a test drives them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class Deployment:
    """One CrowdSky installation: its environment, a running ingest app, and commands to run."""

    def __init__(self, data_dir: Path, env: dict[str, str]):
        self.data_dir = data_dir
        self.env = {**os.environ, "CROWDSKY_DATA_DIR": str(data_dir), **env}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: subprocess.Popen | None = None
        self.log_path = data_dir / "ingest.log"

    def start_app(self, *options: str) -> None:
        """Start the ingest app (with extra command-line *options*) and wait for /healthz."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.app = subprocess.Popen([sys.executable, "ingest_app.py", "--port", str(self.port), *options],
                                    cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.app.poll() is not None:
                raise RuntimeError(f"the ingest app exited:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"the ingest app did not answer /healthz:\n{self.log_tail()}")

    def stop_app(self) -> None:
        if self.app and self.app.poll() is None:
            self.app.terminate()
            try:
                self.app.wait(10)
            except subprocess.TimeoutExpired:
                self.app.kill()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def run(self, *args: str, timeout: float = 300, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """Run ``python <args>`` (stacker.py, janitor.py, ...) with this deployment's settings."""
        return subprocess.run([sys.executable, *args], cwd=ROOT, env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def drain_queue(self, limit: int = 30) -> int:
        """Run ``stacker.py --once`` until no job is pending (chunk jobs, then the deep and crowd
        jobs they queue); returns how many jobs ran."""
        for ran in range(limit):
            done = self.run("stacker.py", "--once")
            assert done.returncode == 0, done.stderr[-3000:]
            assert "VerifyWarning" not in done.stderr, done.stderr[-3000:]   # astropy: "Card is too long"
            if "no pending job" in done.stdout:
                return ran
        raise AssertionError(f"the queue did not drain in {limit} runs")

    def user(self, username: str, password: str = "correct horse battery") -> "ApiUser":
        response = requests.post(self.url + "/api/v1/register", json={"username": username, "password": password})
        assert response.status_code == 201, response.text
        token = requests.post(self.url + "/api/v1/token",
                              json={"username": username, "password": password}).json()["token"]
        return ApiUser(self.url, username, token)


class ApiUser:
    """A registered user talking to the JSON API with a Bearer token."""

    def __init__(self, url: str, username: str, token: str):
        self.url, self.username = url, username
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path, **kw):
        return self.http.get(self.url + path, **kw)

    def post(self, path, **kw):
        return self.http.post(self.url + path, **kw)

    def put_frame(self, session_id: int, filename: str, body) -> requests.Response:
        return self.http.put(f"{self.url}/api/v1/sessions/{session_id}/frames/{filename}", data=body,
                             headers={"Content-Type": "application/fits"})

    def new_session(self) -> int:
        response = self.post("/api/v1/sessions")
        assert response.status_code == 201, response.text
        return response.json()["id"]


@pytest.fixture
def deployment(tmp_path):
    """A CrowdSky on the embedded defaults (SQLite, local folders), app running."""
    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app()
    yield d
    d.stop_app()
