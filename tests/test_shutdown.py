"""Graceful shutdown: SIGTERM never leaves a job leased to a process that is gone.

A stacker (or the janitor's stacking pass) stopped mid-job gives the job back to the queue (pending
again at once, the attempt not counted) and exits within moments; the lease is never left to run
out. The lease here is the default 300 s, so a job found pending was given back, not requeued.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lib.stacking.synthetic import make_session
from tests.apps import ROOT, Deployment

EXIT_WITHIN_S = 30          # generous: the slowest step of these small jobs takes well under a second


@pytest.fixture
def site(tmp_path):
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_POLL_SECONDS": "1"})
    d.start_app()
    yield d
    d.stop_app()


def queue_job(d: Deployment, user, tmp_path, seed: int) -> int:
    """A chunk job of 16 synthetic frames, big enough that stacking takes a few seconds."""
    night = make_session(tmp_path / f"night{seed}", n_frames=16, shape=(512, 768), seed=seed)
    session = user.new_session()
    for path in night.paths:
        assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
    jobs = user.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"]
    assert len(jobs) == 1
    return jobs[0]["id"]


def start(d: Deployment, *args: str, log_name: str, group: bool = False) -> tuple[subprocess.Popen, object]:
    log = open(d.data_dir / log_name, "wb")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=d.env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=group)
    return proc, log


def wait_until_running(user, job_id: int, proc: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = user.get(f"/api/v1/jobs/{job_id}").json()
        if state["status"] != "pending" or proc.poll() is not None:
            return state
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} was never claimed")


def wait_for_log(d: Deployment, name: str, text: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while text not in log_text(d, name):
        assert proc.poll() is None and time.monotonic() < deadline, log_text(d, name)[-3000:]
        time.sleep(0.02)


def stop_and_time(proc: subprocess.Popen, signal_to_group: bool = False) -> float:
    started = time.monotonic()
    if signal_to_group:          # systemd's default: every process of the unit gets SIGTERM
        os.killpg(proc.pid, signal.SIGTERM)
    else:                        # docker stop, kill PID: the main process only
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running {EXIT_WITHIN_S} s after SIGTERM") from None
    return time.monotonic() - started


def assert_given_back(state: dict) -> None:
    assert state["status"] == "pending", state
    assert state["attempts"] == 0 and state["error"] is None and state["stack_id"] is None, state


def log_text(d: Deployment, name: str) -> str:
    return (d.data_dir / name).read_text(errors="replace")


@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_mid_job_gives_the_job_back_and_another_stacker_finishes_it(site, tmp_path, to_group):
    d = site
    user = d.user("interrupted")
    job_id = queue_job(d, user, tmp_path, seed=21)
    proc, log = start(d, "stacker.py", "--loop", log_name="stacker.log", group=to_group)
    with log:
        assert wait_until_running(user, job_id, proc)["status"] == "running"
        wait_for_log(d, "stacker.log", "measured 1/", proc)      # the stacking pool is at work
        took = stop_and_time(proc, signal_to_group=to_group)
    assert proc.returncode == 0, log_text(d, "stacker.log")[-3000:]
    assert took < EXIT_WITHIN_S
    state = user.get(f"/api/v1/jobs/{job_id}").json()
    assert_given_back(state)
    assert "given back" in log_text(d, "stacker.log")
    assert user.get("/api/v1/stacks").json()["stacks"] == []

    after = d.run("stacker.py", "--once")
    assert after.returncode == 0, after.stderr[-2000:]
    state = user.get(f"/api/v1/jobs/{job_id}").json()
    assert state["status"] == "done" and state["attempts"] == 1, state
    assert len([s for s in user.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"]) == 1


def test_sigterm_to_an_idle_stacker_exits_at_once(site):
    proc, log = start(site, "stacker.py", "--loop", log_name="idle.log")
    with log:
        time.sleep(3)                               # idle: waiting between queue checks
        assert proc.poll() is None, log_text(site, "idle.log")
        took = stop_and_time(proc)
    assert proc.returncode == 0
    assert took < 5, f"an idle stacker took {took:.1f} s to stop"
    assert "Traceback" not in log_text(site, "idle.log")


def test_sigterm_to_the_janitor_exits_cleanly(site):
    proc, log = start(site, "janitor.py", log_name="janitor.log")
    with log:
        deadline = time.monotonic() + 30
        while "janitor running" not in log_text(site, "janitor.log"):
            assert proc.poll() is None and time.monotonic() < deadline, log_text(site, "janitor.log")
            time.sleep(0.1)
        took = stop_and_time(proc)
    assert proc.returncode == 0, log_text(site, "janitor.log")
    assert took < 10
    assert "Traceback" not in log_text(site, "janitor.log")


def test_sigterm_during_the_janitors_stacking_pass_gives_the_job_back(site, tmp_path):
    d = site
    user = d.user("cronjob")
    job_id = queue_job(d, user, tmp_path, seed=22)
    d.env["CROWDSKY_STACK_EVERY_MINUTES"] = "60"    # the janitor stacks too (here: in its --once run)
    proc, log = start(d, "janitor.py", "--once", log_name="janitor-once.log")
    with log:
        assert wait_until_running(user, job_id, proc)["status"] == "running"
        stop_and_time(proc)
    assert proc.returncode == 0, log_text(d, "janitor-once.log")[-3000:]
    assert_given_back(user.get(f"/api/v1/jobs/{job_id}").json())
