"""The first run: the README's commands on a fresh clone, and the roles starting together on nothing.

- `make run` in a fresh clone (no .venv, no var/) creates what it needs, serves, stacks real frames,
  and stops all three roles on one Ctrl-C with a quiet log.
- the app, a stacker and the janitor started at the same moment on an empty database all come up.
- readiness and the status page say when no stacker is around.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pymysql
import pytest
import requests

from lib.stacking.synthetic import make_session
from tests.apps import ROOT, Deployment
from tests.frames import NIGHT_1, real_frames
from tests.servers import free_port


def wait_for(what: str, check, timeout: float = 120, interval: float = 0.2, alive=()):
    """Call *check* until it returns something true; fail naming *what* after *timeout* seconds,
    or at once when a process in *alive* has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in alive:
            assert proc.poll() is None, f"{proc.args} exited with {proc.returncode} while waiting for {what}"
        try:
            result = check()
        except requests.ConnectionError:
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live (non-zombie) processes whose command line contains *text*."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X") and int(entry.name) != os.getpid():
            found.append(f"{entry.name}: {cmdline}")
    return found


# --- the roles starting together on an empty database -------------------------------------------

@pytest.fixture(params=("sqlite", "postgresql", "mariadb"))
def empty_database_url(request, _database_servers, tmp_path) -> str:
    """URL of a database with no tables at all (SQLite: in a folder that does not exist yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'not' / 'yet' / 'there' / 'crowdsky.db'}"
    backend = _database_servers.get(request.param)
    name = _database_servers.next_name()
    if request.param == "postgresql":
        backend.admin.execute(f'CREATE DATABASE "{name}"')
    else:
        backend._sql(f"CREATE DATABASE `{name}`")
    request.addfinalizer(lambda: backend.drop(name))
    return backend.url(name)


def test_app_stacker_and_janitor_started_at_once_on_an_empty_database_all_come_up(empty_database_url, tmp_path):
    d = Deployment(tmp_path / "data" / "nested", {"CROWDSKY_DATABASE_URL": empty_database_url,
                                                 "CROWDSKY_POLL_SECONDS": "1"})
    logs = {name: tmp_path / f"{name}.log" for name in ("ingest", "stacker", "janitor", "second-stacker")}
    commands = {"ingest": ["ingest_app.py", "--port", str(d.port)], "stacker": ["stacker.py", "--loop"],
                "janitor": ["janitor.py"], "second-stacker": ["stacker.py", "--loop"]}
    procs = {name: subprocess.Popen([sys.executable, *command], cwd=ROOT, env=d.env,
                                    stdout=subprocess.DEVNULL, stderr=open(logs[name], "wb"))
             for name, command in commands.items()}
    try:
        wait_for("the app", lambda: requests.get(d.url + "/healthz", timeout=2).ok, alive=procs.values())
        ready = wait_for("a stacker to be seen",
                         lambda: (r := requests.get(d.url + "/readyz", timeout=5).json())["stackers"].startswith("ok")
                         and r, alive=procs.values())
        assert ready["ready"] is True and ready["database"] == "ok", ready
        wait_for("the janitor", lambda: "janitor running" in logs["janitor"].read_text(), alive=procs.values())
        # all of them still up, and the site works on the schema they made together
        user = d.user("first")
        assert user.new_session() > 0
        assert all(proc.poll() is None for proc in procs.values())
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(30)
    for name, proc in procs.items():
        text = logs[name].read_text()
        assert proc.returncode == 0, f"{name}: {text[-3000:]}"
        assert "Traceback" not in text and '"level": "error"' not in text, f"{name}: {text[-3000:]}"


# --- no stacker around ----------------------------------------------------------------------------

def test_readiness_and_the_status_page_say_when_no_stacker_is_around(tmp_path):
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_STACKER_SILENT_SECONDS": "1"})
    d.start_app()
    try:
        ready = requests.get(d.url + "/readyz")
        # the app serves without a stacker: still ready, but it says so
        assert ready.status_code == 200 and ready.json()["stackers"] == "none seen yet", ready.text
        user = d.user("patient")
        night = make_session(tmp_path / "night", n_frames=3, shape=(128, 192), seed=4)
        session = user.new_session()
        for path in night.paths:
            assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
        job = user.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"][0]

        page = user.get("/status").text
        warning = re.search(r'<p class="notice failure" id="stacker-warning"[^>]*>', page)
        assert warning and "hidden" not in warning.group(0), "a pending job and no stacker: the page must say so"
        assert "No stacker is running" in page
        assert user.get("/api/v1/status").json()["stackers"]["silent"] is True

        done = d.run("stacker.py", "--once")
        assert done.returncode == 0, done.stderr[-2000:]
        assert user.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "done"
        seen = requests.get(d.url + "/readyz").json()
        assert seen["stackers"].startswith("ok (seen") or seen["stackers"].startswith("none seen for"), seen

        # the stacker is gone: after the (here 1 s) threshold readiness says for how long
        silent = wait_for("the stacker to count as gone",
                          lambda: (r := requests.get(d.url + "/readyz")).json()["stackers"].startswith("none seen for")
                          and r)
        assert silent.status_code == 200 and re.fullmatch(r"none seen for \d+ s", silent.json()["stackers"])
        # nothing pending: no warning on the page
        warning = re.search(r'<p class="notice failure" id="stacker-warning"[^>]*>', user.get("/status").text)
        assert warning and "hidden" in warning.group(0)
    finally:
        d.stop_app()


# --- the README's commands on a fresh clone ---------------------------------------------------------

def test_make_run_on_a_fresh_clone_stacks_real_frames_and_stops_on_one_ctrl_c(tmp_path):
    """README: `make run`, create an account, upload a night, finalize, get a stack; Ctrl-C stops.

    Runs the real `make run` in a clone of this checkout's HEAD: it creates .venv/ (pip installs
    from the machine's usual index or wheel cache, PIP_* variables apply) and var/.
    """
    checkout = tmp_path / "crowdsky"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True, timeout=120)
    assert not (checkout / ".venv").exists() and not (checkout / "var").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSKY_") and k != "VIRTUAL_ENV"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "make-run.log"
    # its own session, like a terminal's foreground job: Ctrl-C is SIGINT to the whole group
    make = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=checkout, env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for("make run to serve", lambda: requests.get(url + "/healthz", timeout=2).ok, timeout=900,
                 interval=1, alive=[make])
        assert (checkout / "var" / "crowdsky.db").is_file()

        assert requests.post(url + "/api/v1/register",
                             json={"username": "newcomer", "password": "first light 2025"}).status_code == 201
        token = requests.post(url + "/api/v1/token",
                              json={"username": "newcomer", "password": "first light 2025"}).json()["token"]
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        session = http.post(url + "/api/v1/sessions").json()["id"]
        for frame in real_frames(NIGHT_1):
            with open(frame, "rb") as body:
                answer = http.put(f"{url}/api/v1/sessions/{session}/frames/{frame.name}", data=body,
                                  headers={"Content-Type": "application/fits"})
            assert answer.status_code == 201, answer.text
        jobs = http.post(f"{url}/api/v1/sessions/{session}/finalize").json()["jobs"]
        assert len(jobs) == 1

        progress = []

        def stacked():
            state = http.get(f"{url}/api/v1/jobs/{jobs[0]['id']}").json()
            if state["status"] == "running":
                progress.append(state["progress"])
            assert state["status"] != "failed", state
            return state["status"] == "done" and state

        state = wait_for("the chunk to be stacked", stacked, timeout=900, alive=[make])
        stacks = http.get(url + "/api/v1/stacks").json()["stacks"]
        assert [s["id"] for s in stacks if s["kind"] == "chunk"] == [state["stack_id"]]
        assert http.get(url + stacks[0]["fits_url"]).content[:6] == b"SIMPLE"
        assert len({p for p in progress if 0 < p < 1}) >= 2, f"the job's progress did not move: {progress}"
        assert requests.get(url + "/readyz").json()["stackers"].startswith("ok"), "the stacker is seen"
    finally:
        os.killpg(make.pid, signal.SIGINT)              # Ctrl-C, once
        try:
            make.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
        leftovers = processes_mentioning(str(checkout))
        for line in leftovers:                          # don't leave them to the next test
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    log = log_path.read_text(errors="replace")
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}\n{log[-3000:]}"
    for noise in ("Traceback", "Segmentation fault", "unable to open database file", "VerifyWarning",
                  '"logger": "apscheduler', "RecursionError"):
        assert noise not in log, f"{noise!r} in the log of make run:\n{log[-5000:]}"
    # make itself ends by the SIGINT like any interrupted command (a shell shows 130); the roles exit 0
    assert make.returncode in (0, -signal.SIGINT), log[-3000:]


def test_make_run_on_a_port_in_use_says_so_and_stops_the_other_roles(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    data_dir = tmp_path / "crowdsky"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSKY_")}
    env["CROWDSKY_DATA_DIR"] = str(data_dir)
    with busy:
        run = subprocess.run([sys.executable, "-m", "lib.launcher", "--port", str(port)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=180)
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "the others were stopped" in run.stderr
    assert processes_mentioning(f"--port {port}") == []   # the launcher waits for every role it started
