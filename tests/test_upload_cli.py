"""``upload.py``, the command-line uploader, run as a subprocess against the real app.

The Seestar layout is built in a temp folder from symlinks to the real frames:
``MyWorks/M 94_sub/Light_*.fit`` (raw sub-frames), ``MyWorks/M 94/`` (the telescope's own stacked
result, to be left alone), plus a dark frame, a Light_-named file whose header says Dark, and a
thumbnail, all to be skipped or ignored.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.apps import ROOT
from tests.frames import NIGHT_1, real_frames, small_frame_bytes
from tests.servers import free_port

GOOD = real_frames(NIGHT_1)[:3]


def seestar_tree(base: Path, frames=GOOD) -> Path:
    """A telescope's MyWorks folder; returns it."""
    works = base / "MyWorks"
    subs, stacked = works / "M 94_sub", works / "M 94"
    subs.mkdir(parents=True)
    stacked.mkdir()
    for frame in frames:
        (subs / frame.name).symlink_to(frame)
    (subs / "Dark_M 94_10.0s_IRCUT_20250327-014700.fit").write_bytes(small_frame_bytes(IMAGETYP="Dark"))
    (subs / "Light_M 94_10.0s_IRCUT_20250327-014800.fit").write_bytes(small_frame_bytes(seed=3, IMAGETYP="Dark"))
    (subs / "Light_M 94_10.0s_IRCUT_20250327-014513_thn.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (stacked / "Stacked_6_M 94_10.0s_IRCUT_20250327-014617.fit").symlink_to(real_frames(NIGHT_1)[5])
    return works


def run_upload(server: str, *args, token: str | None = None, cache: Path, stdin: str = "",
               timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSKY_")}
    env["XDG_CACHE_HOME"] = str(cache)
    if token is not None:
        env["CROWDSKY_TOKEN"] = token
    # A session of its own has no terminal: the password prompt then reads stdin, never a developer's tty.
    return subprocess.run([sys.executable, "upload.py", *map(str, args), "--server", server],
                          cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def summary(result: subprocess.CompletedProcess) -> str:
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{result.stderr}"
    return lines[-1]


def sessions(user) -> list[dict]:
    response = user.get("/api/v1/status")
    assert response.status_code == 200, response.text
    return response.json()["sessions"]


def session_frames(user, session_id: int) -> list[str]:
    response = user.get(f"/api/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    return sorted(f["filename"] for f in response.json()["frames"])     # parallel uploads: any order


def token_of(user) -> str:
    return user.http.headers["Authorization"].split(" ", 1)[1]


def test_uploads_the_sub_frames_once(deployment, tmp_path):
    alice = deployment.user("alice")
    works = seestar_tree(tmp_path / "card")
    cache = tmp_path / "cache"

    first = run_upload(deployment.url, works, "--no-finalize", token=token_of(alice), cache=cache)
    assert first.returncode == 0, first.stdout + first.stderr
    assert summary(first) == "uploaded 3, already there 0, skipped 2, failed 0; not finalized"
    assert "Dark_M 94_10.0s_IRCUT_20250327-014700.fit: not a light frame" in first.stdout
    assert "Light_M 94_10.0s_IRCUT_20250327-014800.fit: not a light frame (IMAGETYP is 'Dark')" in first.stdout
    [session] = sessions(alice)
    assert session["status"] == "open"
    # Only the raw sub-frames: not the stacked result, the dark, the fake light or the thumbnail.
    assert session_frames(alice, session["id"]) == [f.name for f in GOOD]

    # Again: the local record knows the frames; nothing is sent and no session is opened.
    second = run_upload(deployment.url, works, "--no-finalize", token=token_of(alice), cache=cache)
    assert second.returncode == 0, second.stdout + second.stderr
    assert summary(second) == "uploaded 0, already there 3, skipped 2, failed 0; not finalized"
    assert [s["id"] for s in sessions(alice)] == [session["id"]]

    # Without the local record the server recognises the bytes (200) and stores nothing new.
    third = run_upload(deployment.url, works / "M 94_sub", "--no-finalize", "--parallel", "1",
                       token=token_of(alice), cache=tmp_path / "other-cache")
    assert third.returncode == 0, third.stdout + third.stderr
    assert summary(third) == "uploaded 0, already there 3, skipped 2, failed 0; not finalized"
    assert session_frames(alice, session["id"]) == [f.name for f in GOOD]
    assert sum(len(session_frames(alice, s["id"])) for s in sessions(alice)) == 3


def test_a_bad_file_fails_with_the_servers_reason(deployment, tmp_path):
    alice = deployment.user("alice")
    works = seestar_tree(tmp_path / "card", frames=GOOD[:2])
    cut = works / "M 94_sub" / "Light_M 94_10.0s_IRCUT_20250327-020000.fit"
    with open(GOOD[2], "rb") as whole:
        cut.write_bytes(whole.read(2_000_000))

    result = run_upload(deployment.url, works, "--no-finalize", token=token_of(alice), cache=tmp_path / "cache")
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result) == "uploaded 2, already there 0, skipped 2, failed 1; not finalized"
    [failure] = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert cut.name in failure and "truncated" in failure and "(HTTP 400)" in failure
    [session] = sessions(alice)
    assert session_frames(alice, session["id"]) == [f.name for f in GOOD[:2]]


def test_finalize_resumes_the_open_session_and_queues_its_jobs(deployment, tmp_path):
    alice = deployment.user("alice")
    works = seestar_tree(tmp_path / "card", frames=GOOD[:2])
    cache = tmp_path / "cache"
    first = run_upload(deployment.url, works, "--no-finalize", token=token_of(alice), cache=cache)
    assert first.returncode == 0, first.stdout + first.stderr

    (works / "M 94_sub" / GOOD[2].name).symlink_to(GOOD[2])     # one more frame of the same night
    result = run_upload(deployment.url, works, token=token_of(alice), cache=cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result) == "uploaded 1, already there 2, skipped 2, failed 0; 1 job: 1 pending"
    [session] = sessions(alice)                 # the cut-short session went on: one session, one chunk
    assert session["status"] == "finalized"
    [chunk] = session["chunks"]
    assert chunk["frames"] == 3 and chunk["job"]["status"] == "pending"
    assert f"session {session['id']} finalized: 1 job" in result.stdout

    again = run_upload(deployment.url, works, token=token_of(alice), cache=cache)
    assert again.returncode == 0, again.stdout + again.stderr
    assert summary(again) == "uploaded 0, already there 3, skipped 2, failed 0; 0 jobs"


def test_wait_lists_the_stacks(deployment, tmp_path):
    alice = deployment.user("alice")
    works = seestar_tree(tmp_path / "card")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROWDSKY_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), CROWDSKY_TOKEN=token_of(alice))
    uploader = subprocess.Popen([sys.executable, "upload.py", str(works), "--wait", "--server", deployment.url],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(c["job"] for s in sessions(alice) for c in s["chunks"]):
            assert uploader.poll() is None and time.monotonic() < deadline, uploader.communicate()
            time.sleep(0.2)
        stacked = deployment.run("stacker.py", "--once")
        assert stacked.returncode == 0, stacked.stderr[-3000:]
        out, err = uploader.communicate(timeout=60)
    finally:
        if uploader.poll() is None:
            uploader.kill()
            uploader.communicate()
    assert uploader.returncode == 0, out + err
    assert out.strip().splitlines()[-1] == "uploaded 3, already there 0, skipped 2, failed 0; 1 job: 1 done"
    [stack] = alice.get("/api/v1/stacks").json()["stacks"]
    line = next(line for line in out.splitlines() if line.startswith(f"stack {stack['id']}:"))
    assert f"M 94 {stack['chunk_key']}: {stack['frames']} frames used, {stack['frames_rejected']} rejected" in line
    assert line.endswith(deployment.url + stack["fits_url"])


class FlakyServer:
    """Just enough of the API for upload.py, with storage that fails: a frame's PUT answers 503
    until its attempt number reaches ``succeed_on[name]`` (never, when missing)."""

    def __init__(self, succeed_on: dict[str, int]):
        self.succeed_on, self.attempts = succeed_on, Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(200, {"sessions": []})

            def do_POST(self):
                self.answer(201, {"id": 1})

            def do_PUT(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                name = unquote(self.path.rsplit("/", 1)[1])
                outer.attempts[name] += 1
                if outer.attempts[name] >= outer.succeed_on.get(name, 99):
                    self.answer(201, {"id": len(outer.attempts), "session_id": 1, "filename": name})
                else:
                    self.answer(503, {"error": "storage is unavailable right now; try again shortly"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_retries_twice_on_server_errors(tmp_path):
    works = seestar_tree(tmp_path / "card")
    flaky = FlakyServer({GOOD[0].name: 1, GOOD[1].name: 3})       # GOOD[2] never gets through
    try:
        result = run_upload(flaky.url, works, "--no-finalize", token="t", cache=tmp_path / "cache")
    finally:
        flaky.server.shutdown()
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary(result) == "uploaded 2, already there 0, skipped 2, failed 1; not finalized"
    assert flaky.attempts == {GOOD[0].name: 1, GOOD[1].name: 3, GOOD[2].name: 3}
    [failure] = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert GOOD[2].name in failure and "storage is unavailable" in failure and "(HTTP 503)" in failure


def test_a_wrong_token_stops_before_any_upload(deployment, tmp_path):
    works = seestar_tree(tmp_path / "card")
    result = run_upload(deployment.url, works, token="not-a-token", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "refused the token" in result.stderr and "CROWDSKY_TOKEN" in result.stderr
    assert "uploaded" not in result.stdout
    assert not [p for p in (deployment.data_dir / "buffer").rglob("*") if p.is_file()]


def test_login_with_user_name_and_password(deployment, tmp_path):
    deployment.user("carol", password="a good long password")
    works = seestar_tree(tmp_path / "card", frames=GOOD[:1])

    wrong = run_upload(deployment.url, works, "--user", "carol", "--no-finalize",
                       stdin="not the password\n", cache=tmp_path / "cache")
    assert wrong.returncode == 2
    assert "login as 'carol' failed: wrong user name or password" in wrong.stderr

    right = run_upload(deployment.url, works, "--no-finalize", stdin="carol\na good long password\n",
                       cache=tmp_path / "cache")
    assert right.returncode == 0, right.stdout + right.stderr
    assert summary(right) == "uploaded 1, already there 0, skipped 2, failed 0; not finalized"

    no_login = run_upload(deployment.url, works, stdin="", cache=tmp_path / "cache")
    assert no_login.returncode == 2 and "set CROWDSKY_TOKEN" in no_login.stderr


def test_server_unreachable_is_exit_code_2(tmp_path):
    works = seestar_tree(tmp_path / "card")
    result = run_upload(f"http://127.0.0.1:{free_port()}", works, token="whatever", cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "cannot reach http://127.0.0.1:" in result.stderr


@pytest.mark.parametrize("where", ["card", "card/MyWorks", "card/MyWorks/M 94_sub"])
def test_dry_run_finds_the_sub_frames_from_any_level(tmp_path, where):
    seestar_tree(tmp_path / "card")
    result = run_upload("http://127.0.0.1:9", tmp_path / where, "--dry-run", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result) == "dry run: would upload 3, already there 0, skipped 2"
    listed = sorted(Path(line.split("would upload ", 1)[1].rsplit(" (", 1)[0]).name
                    for line in result.stdout.splitlines() if line.startswith("would upload /"))
    assert listed == [f.name for f in GOOD]


def test_usage_errors_are_exit_code_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run_upload("http://127.0.0.1:9", empty, token="t", cache=tmp_path / "cache")
    assert nothing.returncode == 2 and "no FITS files found" in nothing.stderr
    missing = run_upload("http://127.0.0.1:9", tmp_path / "nope", token="t", cache=tmp_path / "cache")
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
    bad_server = run_upload("ftp://example", empty, token="t", cache=tmp_path / "cache")
    assert bad_server.returncode == 2 and "--server" in bad_server.stderr
