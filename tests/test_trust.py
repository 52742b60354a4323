"""Deep and crowd stacks follow their sources: delete, unshare, reshare, finalize twice, and nothing
private ever leaks. Each test drives the real ingest app, ``stacker.py --once`` and ``janitor.py
--once`` on SQLite and on PostgreSQL, with small synthetic frames of one star field."""
from __future__ import annotations

import http.client
import io
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from astropy.io import fits

import lib.db
from lib import queue
from lib.stacking.synthetic import make_session
from tests.apps import ROOT, Deployment

BACKENDS = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
FRAMES_PER_CHUNK = 3


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """24 raw frames of one synthetic star field (one 15-minute block), as bytes; every chunk stack
    of them registers onto every other."""
    night = make_session(tmp_path_factory.mktemp("field"), n_frames=24, shape=(192, 256), seed=3)
    return [(p.name, p.read_bytes()) for p in night.paths]


class Site(Deployment):
    """A deployment whose queue a test can let run dry with one stacker process (`settle`)."""

    def __init__(self, data_dir, database_url: str):
        super().__init__(data_dir, {"CROWDSKY_DATABASE_URL": database_url, "CROWDSKY_RETRY_BACKOFF_SECONDS": "0",
                                    "CROWDSKY_POLL_SECONDS": "0.2"})
        self.database_url = database_url

    def settle(self, timeout: float = 300) -> None:
        """Run ``stacker.py --loop`` until no job is pending or running, then stop it (SIGTERM).
        A job's follow-ups are queued in the transaction that completes it, so the queue is never
        empty in between."""
        db = lib.db.connect(self.database_url)
        log = open(self.data_dir / "stacker.log", "ab")
        stacker = subprocess.Popen([sys.executable, "stacker.py", "--loop"], cwd=ROOT, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                counts = queue.counts_by_status(db)
                if counts["pending"] + counts["running"] == 0:
                    break
                assert stacker.poll() is None, (self.data_dir / "stacker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"the queue did not run dry: {counts}"
                time.sleep(0.2)
        finally:
            stacker.send_signal(signal.SIGTERM)
            stacker.wait(60)
            log.close()
            db.close()


@pytest.fixture
def site(database_url, tmp_path):
    d = Site(tmp_path / "crowdsky", database_url)
    d.start_app()
    yield d
    d.stop_app()


class Owner:
    """A user with the frames of the field they have not uploaded yet (an owner's bytes are one frame)."""

    def __init__(self, d: Deployment, name: str, field, share: bool):
        self.d, self.api, self.name = d, d.user(name), name
        self.unused = list(field)
        if share:
            self.share(True)

    def share(self, on: bool) -> None:
        response = self.api.http.patch(f"{self.d.url}/api/v1/me", json={"share_with_crowd": on})
        assert response.status_code == 200, response.text

    def upload(self, n: int = FRAMES_PER_CHUNK, finalize: bool = True) -> int:
        session = self.api.new_session()
        for name, body in self.unused[:n]:
            assert self.api.put_frame(session, name, body).status_code == 201
        self.unused = self.unused[n:]
        if finalize:
            response = self.api.post(f"/api/v1/sessions/{session}/finalize")
            assert response.status_code == 200, response.text
        return session

    def stacks(self, kind: str | None = None) -> list[dict]:
        listing = self.api.get("/api/v1/stacks").json()["stacks"]
        return [s for s in listing if s["owner"] == self.name and (kind is None or s["kind"] == kind)]

    def jobs(self) -> list[dict]:
        found = []
        for session in self.api.get("/api/v1/status").json()["sessions"]:
            for chunk in session["chunks"]:
                found += ([chunk["job"]] if chunk["job"] else []) + chunk["updates"]
        return found


def anonymous(d: Deployment, path: str) -> requests.Response:
    return requests.get(d.url + path, timeout=30)


def crowd_stacks(d: Deployment) -> list[dict]:
    return [s for s in anonymous(d, "/api/v1/stacks").json()["stacks"] if s["kind"] == "crowd"]


def file_sources(d: Deployment, stack: dict) -> list[int]:
    """The chunk stack ids a deep or crowd stack's FITS says it sums (its SOURCES table)."""
    response = anonymous(d, stack["fits_url"])
    assert response.status_code == 200, response.text
    with fits.open(io.BytesIO(response.content)) as hdul:
        return sorted(int(i) for i in hdul["SOURCES"].data["ID"])


def once(d: Deployment, script: str = "stacker.py") -> str:
    done = d.run(script, "--once")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def no_failed_jobs(*owners: Owner) -> None:
    for owner in owners:
        assert [j for j in owner.jobs() if j["status"] == "failed"] == []


@BACKENDS
def test_a_deleted_chunk_stacks_id_is_never_reused_and_no_private_pixels_reach_a_public_stack(site, field):
    """Issue scenarios 1 and 2: a sharing owner deletes a chunk job whose deep and crowd updates are
    still pending (the updates themselves cannot be deleted); a private owner's next chunk stack
    must not take its id and so its place."""
    d = site
    ursa, vega = Owner(d, "ursa", field, share=True), Owner(d, "vega", field, share=False)
    ursa.upload()
    d.settle()
    [first] = ursa.stacks("chunk")
    [deep] = ursa.stacks("deep")
    [crowd] = crowd_stacks(d)

    ursa.upload()
    once(d)                                              # the chunk stack; its updates wait in the queue
    second = max(ursa.stacks("chunk"), key=lambda s: s["id"])
    assert second["id"] != first["id"]
    # Issue scenario 2: a contributor cannot delete a deep or crowd update, waiting or done (409
    # naming what to delete instead), nor a crowd stack.
    updates = [j for j in ursa.jobs() if j["kind"] in ("deep", "crowd")]
    assert {(j["kind"], j["status"]) for j in updates} == {(k, s) for k in ("deep", "crowd") for s in ("done", "pending")}
    for job in updates:
        answer = ursa.api.http.delete(f"{d.url}/api/v1/jobs/{job['id']}")
        assert answer.status_code == 409, answer.text
        assert "DELETE /api/v1/stacks/" in answer.json()["error"]
    assert ursa.api.http.delete(f"{d.url}/api/v1/stacks/{crowd['id']}").status_code == 409
    assert [j["id"] for j in ursa.jobs() if j["kind"] in ("deep", "crowd")] == [j["id"] for j in updates]

    chunk_job = next(j for j in ursa.jobs() if j["stack_id"] == second["id"] and j["kind"] == "chunk")
    assert ursa.api.http.delete(f"{d.url}/api/v1/jobs/{chunk_job['id']}").status_code == 200
    assert anonymous(d, f"/api/v1/stacks/{second['id']}").status_code == 404

    vega.upload()
    d.settle()
    [private] = vega.stacks("chunk")
    assert private["id"] > second["id"], "a deleted stack's id was handed out again"

    for group in (deep, crowd):
        shown = anonymous(d, f"/api/v1/stacks/{group['id']}").json()
        assert [c["owner"] for c in shown["contributors"]] == ["ursa"]
        assert [s["id"] for s in shown["chunk_stacks"]] == [first["id"]]
        assert all(not {"fits_key", "preview_key"} & set(s) for s in shown["chunk_stacks"]), "storage keys are private"
        assert shown["frames"] == first["frames"]
        assert file_sources(d, shown) == [first["id"]]
    for stack in vega.stacks():
        assert anonymous(d, f"/api/v1/stacks/{stack['id']}").status_code == 404
        assert anonymous(d, stack["fits_url"]).status_code == 404
    no_failed_jobs(ursa, vega)


@BACKENDS
def test_sharing_off_on_off_converges_and_never_loses_the_crowd_stack(site, field):
    """Issue scenario 3: whatever the order of on and off, the crowd stack comes to hold the stacks
    of the owners sharing now; it is hidden at once when an owner leaves, never lost, and later
    contributions still go in. The janitor's reconcile runs fine while a stack is being rebuilt."""
    d = site
    ursa, wren = Owner(d, "ursa", field, share=True), Owner(d, "wren", field, share=True)
    ursa.upload()
    wren.upload()
    d.settle()
    [crowd] = crowd_stacks(d)

    ursa.share(False)
    assert crowd_stacks(d) == []                         # hidden at once, for everyone
    assert anonymous(d, crowd["fits_url"]).status_code == 404
    ursa.share(True)
    ursa.share(False)
    janitor = d.run("janitor.py", "--once", extra_env={"CROWDSKY_RECONCILE_GRACE_SECONDS": "0"})
    assert janitor.returncode == 0, janitor.stderr[-2000:]
    d.settle()
    [rebuilt] = crowd_stacks(d)
    assert rebuilt["id"] == crowd["id"]
    assert file_sources(d, rebuilt) == [s["id"] for s in wren.stacks("chunk")]
    assert [c["owner"] for c in anonymous(d, f"/api/v1/stacks/{crowd['id']}").json()["contributors"]] == ["wren"]
    for stack in ursa.stacks():
        assert anonymous(d, f"/api/v1/stacks/{stack['id']}").status_code == 404

    ursa.share(True)                                     # on: ursa's existing stack joins again
    wren.upload()                                        # and later contributions go in
    d.settle()
    [crowd] = crowd_stacks(d)
    everyone = sorted(s["id"] for o in (ursa, wren) for s in o.stacks("chunk"))
    assert file_sources(d, crowd) == everyone
    assert crowd["frames"] == sum(s["frames"] for o in (ursa, wren) for s in o.stacks("chunk"))
    no_failed_jobs(ursa, wren)


@BACKENDS
def test_eight_concurrent_finalizes_queue_each_chunk_once(site, field):
    """Issue scenario 4: of 8 finalizes of one session at once exactly one answers 200, the others
    409, and the chunk gets one job; the deep stack then counts every frame once."""
    d = site
    ursa = Owner(d, "ursa", field, share=False)
    session = ursa.upload(n=4, finalize=False)
    barrier = threading.Barrier(8)

    def finalize(_):
        barrier.wait()
        return ursa.api.post(f"/api/v1/sessions/{session}/finalize").status_code

    with ThreadPoolExecutor(8) as pool:
        answers = sorted(pool.map(finalize, range(8)))
    assert answers == [200] + [409] * 7
    [status] = ursa.api.get("/api/v1/status").json()["sessions"]
    [chunk] = status["chunks"]
    assert chunk["job"] is not None
    assert [j["kind"] for j in ursa.jobs()] == ["chunk"]
    d.settle()
    [deep] = ursa.stacks("deep")
    [chunk_stack] = ursa.stacks("chunk")
    assert deep["frames"] == chunk_stack["frames"] and chunk_stack["frames"] + chunk_stack["frames_rejected"] == 4


@BACKENDS
def test_a_frame_finishing_after_finalize_is_refused_and_leaves_nothing(site, field):
    """Issue scenario 5: a frame whose upload ends after its session was finalized answers 409 and
    leaves no row, no object and no quota used; the same bytes are welcome in a new session."""
    d = site
    ursa = Owner(d, "ursa", field, share=False)
    session = ursa.upload(n=1, finalize=False)
    name, body = ursa.unused.pop(0)
    buffer_before = sorted(p for p in (d.data_dir / "buffer").rglob("*") if p.is_file())

    slow = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    slow.putrequest("PUT", f"/api/v1/sessions/{session}/frames/{name}")
    slow.putheader("Authorization", ursa.api.http.headers["Authorization"])
    slow.putheader("Content-Type", "application/fits")
    slow.putheader("Content-Length", str(len(body)))
    slow.endheaders()
    slow.send(body[:len(body) // 2])                      # the header and half the data are in
    assert ursa.api.post(f"/api/v1/sessions/{session}/finalize").status_code == 200
    slow.send(body[len(body) // 2:])
    answer = slow.getresponse()
    text = answer.read().decode()
    slow.close()
    assert answer.status == 409, text
    assert "finalized" in text

    assert sorted(p for p in (d.data_dir / "buffer").rglob("*") if p.is_file()) == buffer_before
    import hashlib
    sha = hashlib.sha256(body).hexdigest()
    assert ursa.api.get("/api/v1/frames", params={"sha256": sha}).json()["frames"] == []
    [status] = ursa.api.get("/api/v1/status").json()["sessions"]
    assert sum(c["frames"] for c in status["chunks"]) == 1
    again = ursa.api.new_session()
    assert ursa.api.put_frame(again, name, body).status_code == 201


@BACKENDS
def test_deleting_stacks_and_turning_sharing_on_keep_deep_and_crowd_stacks_true(site, field):
    """Issue scenario 6: a deleted chunk stack leaves the deep and crowd stacks at once and they are
    rebuilt from the rest; turning sharing on brings an owner's existing stacks into the crowd
    stack; an owner can delete a deep stack (its chunk stacks stay)."""
    d = site
    ursa, wren = Owner(d, "ursa", field, share=True), Owner(d, "wren", field, share=True)
    vega = Owner(d, "vega", field, share=False)
    ursa.upload()
    ursa.upload()
    wren.upload()
    vega.upload()
    d.settle()
    [deep] = ursa.stacks("deep")
    [crowd] = crowd_stacks(d)
    keep, gone = sorted(ursa.stacks("chunk"), key=lambda s: s["id"])
    assert file_sources(d, deep) == [keep["id"], gone["id"]]

    assert ursa.api.http.delete(f"{d.url}/api/v1/stacks/{gone['id']}").status_code == 200
    for stack in (gone, deep, crowd):                    # hidden at once: they held its pixels
        assert anonymous(d, f"/api/v1/stacks/{stack['id']}").status_code == 404
    d.settle()
    deep = ursa.api.get(f"/api/v1/stacks/{deep['id']}").json()
    assert file_sources(d, deep) == [keep["id"]] and deep["frames"] == keep["frames"]
    crowd = anonymous(d, f"/api/v1/stacks/{crowd['id']}").json()
    wrens = [s["id"] for s in wren.stacks("chunk")]
    assert file_sources(d, crowd) == sorted([keep["id"]] + wrens)
    assert {c["owner"]: c["chunks"] for c in crowd["contributors"]} == {"ursa": 1, "wren": 1}
    assert len(crowd["chunk_stacks"]) == 2

    vega.share(True)                                     # her existing stack joins the crowd stack
    d.settle()
    [vegas] = vega.stacks("chunk")
    [crowd] = crowd_stacks(d)
    assert file_sources(d, crowd) == sorted([keep["id"], vegas["id"]] + wrens)

    assert ursa.api.http.delete(f"{d.url}/api/v1/stacks/{deep['id']}").status_code == 200
    assert ursa.api.get(f"/api/v1/stacks/{deep['id']}").status_code == 404
    assert ursa.api.get(f"/api/v1/stacks/{keep['id']}").status_code == 200
    assert wren.api.http.delete(f"{d.url}/api/v1/stacks/{keep['id']}").status_code == 404
    assert [s["id"] for s in crowd_stacks(d)] == [crowd["id"]]
    no_failed_jobs(ursa, wren, vega)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stack_that_does_not_register_is_kept_out_and_said_so(site, field, tmp_path):
    """A chunk stack of another star field at the same pointing cannot be registered onto the deep
    stack: it is refused (a recorded removal, the reason on the update job), the deep stack keeps
    what it had, and nothing fails or waits for ever."""
    d = site
    ursa = Owner(d, "ursa", field, share=False)
    ursa.upload()
    d.settle()
    [first] = ursa.stacks("chunk")
    stranger = make_session(tmp_path / "other", n_frames=FRAMES_PER_CHUNK, shape=(192, 256), seed=11)
    ursa.unused = [(p.name, p.read_bytes()) for p in stranger.paths]
    ursa.upload()
    d.settle()
    [deep] = ursa.stacks("deep")
    answer = ursa.api.get(deep["fits_url"])
    with fits.open(io.BytesIO(answer.content)) as hdul:
        assert [int(i) for i in hdul["SOURCES"].data["ID"]] == [first["id"]]
    kept_out = [j for j in ursa.jobs() if j["kind"] == "deep" and "kept out of the deep stack" in (j["message"] or "")]
    assert len(kept_out) == 1, ursa.jobs()
    no_failed_jobs(ursa)


def test_the_stack_page_deletes_an_owners_stack_with_the_csrf_token(tmp_path, field):
    """The stack page shows its owner (only) a Delete button; the form needs the CSRF token."""
    import re
    d = Site(tmp_path / "crowdsky", f"sqlite:///{tmp_path / 'crowdsky.db'}")
    d.start_app()
    try:
        ursa, wren = Owner(d, "ursa", field, share=True), Owner(d, "wren", field, share=True)
        ursa.upload()
        d.settle()
        [chunk] = ursa.stacks("chunk")
        [deep] = ursa.stacks("deep")
        browser = requests.Session()
        form = browser.get(d.url + "/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        assert browser.post(d.url + "/login", data={"username": "ursa", "password": "correct horse battery",
                                                    "csrf_token": token}).status_code == 200
        page = browser.get(f"{d.url}/stacks/{chunk['id']}").text
        assert f'action="/stacks/{chunk["id"]}/delete"' in page
        assert f'action="/stacks/{chunk["id"]}/delete"' not in wren.api.get(f"/stacks/{chunk['id']}").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        forged = browser.post(f"{d.url}/stacks/{chunk['id']}/delete", data={"csrf_token": "x" * 43},
                              allow_redirects=False)
        assert forged.status_code == 403
        assert ursa.api.get(f"/api/v1/stacks/{chunk['id']}").status_code == 200
        done = browser.post(f"{d.url}/stacks/{chunk['id']}/delete", data={"csrf_token": token},
                            allow_redirects=False)
        assert done.status_code in (302, 303), done.text
        assert ursa.api.get(f"/api/v1/stacks/{chunk['id']}").status_code == 404
        # its deep stack had nothing else: it is gone too, and so is the crowd stack
        assert ursa.api.get(f"/api/v1/stacks/{deep['id']}").status_code == 404
        assert crowd_stacks(d) == []
        d.settle()
        assert ursa.stacks() == [] and crowd_stacks(d) == []
    finally:
        d.stop_app()


def test_a_buffer_outage_during_finalize_still_queues_every_chunk(tmp_path, field, s3_server):
    """Finalize queues its jobs in the transaction that closes the session and touches storage only
    after it: with the S3 buffer down, a finalize that skips an already stacked chunk (the Seestar
    client's way) still answers 200 with the other chunk queued; the skipped chunk's raws, which
    could not be deleted then, are removed by the janitor's reconcile once S3 is back."""
    from tests.frames import small_frame_bytes
    bucket = s3_server.new_bucket()
    d = Site(tmp_path / "crowdsky", f"sqlite:///{tmp_path / 'crowdsky.db'}")
    d.env.update({"CROWDSKY_BUFFER_URL": s3_server.url(bucket), "CROWDSKY_BUFFER_USER": s3_server.credentials.user,
                  "CROWDSKY_BUFFER_PASSWORD": s3_server.credentials.secret})
    d.start_app()
    try:
        ursa = Owner(d, "ursa", field, share=False)
        ursa.upload()
        d.settle()
        [stacked] = ursa.stacks("chunk")
        session = ursa.upload(n=1, finalize=False)                   # the same chunk key again: skipped
        other = small_frame_bytes(seed=5)                            # another night: a chunk to queue
        assert ursa.api.put_frame(session, "other.fit", other).status_code == 201
        buffer = s3_server.open(bucket)
        assert len(list(buffer.list("raw/"))) == 2

        with s3_server.stopped():
            answer = requests.post(f"{d.url}/api/raw_upload.php", params={"action": "finalize"},
                                   data={"session_token": str(session), "overwrite": "0"},
                                   auth=("ursa", "correct horse battery"), timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["jobs"] == 1 and answer.json()["skipped"] == [stacked["chunk_key"]]
        [status] = [s for s in ursa.api.get("/api/v1/status").json()["sessions"] if s["id"] == session]
        assert [c["job"]["status"] for c in status["chunks"]] == ["pending"]

        janitor = d.run("janitor.py", "--once", extra_env={"CROWDSKY_RECONCILE_GRACE_SECONDS": "0"})
        assert janitor.returncode == 0, janitor.stderr[-2000:]
        assert len(list(buffer.list("raw/"))) == 1                    # only the queued chunk's raw is left
    finally:
        d.stop_app()
