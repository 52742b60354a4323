"""Authorization: nobody gets into what is not theirs.

One deployment, three people: alice keeps her data private, carol shares hers with the crowd, and
mallory (logged in, with her own token) tries every door to alice's sessions, raws, jobs and stacks.
Someone else's private thing answers exactly like a missing one (404), and stays untouched. Then:
token kinds, browser sessions and CSRF, login limits without user enumeration, security headers,
and what the database file holds (Argon2id hashes and token digests, never a secret).
"""
from __future__ import annotations

import hashlib
import re
import sqlite3
import statistics
import time
from pathlib import Path

import pytest
import requests
from argon2 import PasswordHasher

from lib.stacking.synthetic import make_session
from tests.apps import ApiUser, Deployment
from tests.frames import small_frame_bytes

PASSWORD = "correct horse battery"          # Deployment.user's default
FITS = {"Content-Type": "application/fits"}


def upload(user: ApiUser, paths) -> int:
    session = user.new_session()
    for path in paths:
        assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
    return session


class World:
    """Who has what; ids of alice's private things that mallory tries to reach."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authorization")
    d = Deployment(tmp / "crowdsky", {})
    d.start_app()
    w = World()
    w.d = d
    w.alice, w.carol, w.mallory = d.user("alice"), d.user("carol"), d.user("mallory")
    assert w.carol.http.patch(f"{d.url}/api/v1/me", json={"share_with_crowd": True}).status_code == 200

    # alice: a stacked session; carol: the same, shared.
    w.stacked_session = upload(w.alice, make_session(tmp / "a", n_frames=5, seed=41).paths)
    w.stacked_job = w.alice.post(f"/api/v1/sessions/{w.stacked_session}/finalize").json()["jobs"][0]["id"]
    carol_session = upload(w.carol, make_session(tmp / "c", n_frames=5, seed=42).paths)
    assert w.carol.post(f"/api/v1/sessions/{carol_session}/finalize").status_code == 200
    d.drain_queue()

    # alice: an open session with a raw frame, and a finalized one whose job waits in the queue.
    w.open_session = w.alice.new_session()
    assert w.alice.put_frame(w.open_session, "open.fit", small_frame_bytes(seed=43)).status_code == 201
    w.waiting_session = w.alice.new_session()
    assert w.alice.put_frame(w.waiting_session, "waiting.fit", small_frame_bytes(seed=44)).status_code == 201
    w.waiting_job = w.alice.post(f"/api/v1/sessions/{w.waiting_session}/finalize").json()["jobs"][0]["id"]
    w.waiting_frame = w.alice.get(f"/api/v1/sessions/{w.waiting_session}").json()["frames"][0]["id"]

    w.alice_stacks = w.alice.get("/api/v1/stacks").json()["stacks"]
    w.alice_stacks = [s for s in w.alice_stacks if s["owner"] == "alice"]
    assert {s["kind"] for s in w.alice_stacks} == {"chunk", "deep"}, w.alice_stacks
    w.chunk = next(s for s in w.alice_stacks if s["kind"] == "chunk")
    w.carol_stacks = [s for s in w.carol.get("/api/v1/stacks").json()["stacks"] if s["owner"] == "carol"]
    assert w.carol_stacks
    yield w
    d.stop_app()


def alice_intact(w: World) -> None:
    """Everything mallory tried to reach is still there, unchanged, for alice."""
    a = w.alice
    open_session = a.get(f"/api/v1/sessions/{w.open_session}").json()
    assert open_session["status"] == "open" and len(open_session["frames"]) == 1
    assert a.get(f"/api/v1/jobs/{w.waiting_job}").json()["status"] == "pending"
    assert a.get(f"/api/v1/jobs/{w.stacked_job}").json()["status"] == "done"
    for stack in w.alice_stacks:
        assert a.get(f"/api/v1/stacks/{stack['id']}").status_code == 200
        assert a.get(stack["fits_url"]).status_code == 200
    assert a.get(w.chunk["preview_url"]).status_code == 200


# --- mallory against alice's private data -----------------------------------------------------

def intrusions(w: World) -> list[tuple[str, str, dict]]:
    stack_paths = []
    for s in w.alice_stacks:
        stack_paths += [("GET", f"/api/v1/stacks/{s['id']}", {}), ("GET", f"/stacks/{s['id']}", {}),
                        ("GET", s["fits_url"], {}), ("GET", s["preview_url"], {}),
                        ("GET", f"/stacks/{s['id']}/thumb.jpg", {}), ("GET", f"/stacks.zip?ids={s['id']}", {})]
    return [
        ("GET", f"/api/v1/sessions/{w.stacked_session}", {}),
        ("GET", f"/api/v1/sessions/{w.open_session}", {}),
        ("PUT", f"/api/v1/sessions/{w.open_session}/frames/planted.fit",
         {"data": small_frame_bytes(seed=45), "headers": FITS}),
        ("POST", f"/api/v1/sessions/{w.open_session}/finalize", {}),
        ("GET", f"/api/v1/jobs/{w.stacked_job}", {}),
        ("GET", f"/api/v1/jobs/{w.waiting_job}", {}),
        ("POST", f"/api/v1/jobs/{w.stacked_job}/retry", {}),
        ("POST", f"/api/v1/jobs/{w.waiting_job}/retry", {}),
        ("DELETE", f"/api/v1/jobs/{w.waiting_job}", {}),
        ("DELETE", f"/api/v1/jobs/{w.stacked_job}", {}),
        *stack_paths,
        ("GET", f"/api/download_stack.php?chunk_key={w.chunk['chunk_key']}", {}),
    ]


def test_another_user_cannot_read_change_or_delete_private_data(world):
    w = world
    mallory_basic = requests.Session()
    mallory_basic.auth = ("mallory", PASSWORD)
    for method, path, extra in intrusions(w):
        client = mallory_basic if path.startswith("/api/download_stack.php") else w.mallory.http
        response = client.request(method, w.d.url + path, allow_redirects=False, **extra)
        assert response.status_code == 404, (method, path, response.status_code, response.text[:300])
    alice_intact(w)


def test_another_user_sees_nothing_private_in_listings(world):
    w = world
    alice_ids = {s["id"] for s in w.alice_stacks}
    m = w.mallory
    listed = m.get("/api/v1/stacks").json()["stacks"]
    assert listed and not alice_ids & {s["id"] for s in listed}
    assert all(s["owner"] != "alice" for s in listed)
    by_object = m.get("/api/v1/stacks", params={"object": w.chunk["object"]}).json()["stacks"]
    assert not alice_ids & {s["id"] for s in by_object}
    assert not alice_ids & {row[0] for row in m.get("/api/v1/skymap").json()["stacks"]}
    status = m.get("/api/v1/status").json()
    assert status["sessions"] == []
    gallery = m.get("/stacks").text
    assert not any(f"/stacks/{i}" in gallery for i in alice_ids) and "alice" not in gallery
    mine = requests.get(w.d.url + "/api/my_stacks.php", auth=("mallory", PASSWORD))
    assert mine.status_code == 200 and "alice" not in mine.text
    assert str(w.chunk["id"]) not in re.findall(r'"id": (\d+)', mine.text)


def test_another_users_browser_session_cannot_retry_or_delete_by_form(world):
    w = world
    browser = log_in(w.d, "mallory")
    token = browser.cookies["crowdsky_csrf"]
    for action in ("retry", "delete"):
        response = browser.post(f"{w.d.url}/jobs/{w.waiting_job}/{action}", data={"csrf_token": token},
                                allow_redirects=False)
        assert response.status_code == 404, (action, response.status_code)
    alice_intact(w)


def test_another_user_cannot_add_to_or_finalize_a_session_through_the_seestar_routes(world):
    w = world
    for action, data, files in [
            ("file", {"session_token": str(w.open_session)}, {"file": ("x.fit", small_frame_bytes(seed=46))}),
            ("finalize", {"session_token": str(w.open_session)}, None)]:
        response = requests.post(f"{w.d.url}/api/raw_upload.php?action={action}", data=data, files=files,
                                 auth=("mallory", PASSWORD))
        assert response.status_code == 404, (action, response.status_code, response.text[:300])
    alice_intact(w)


def test_anonymous_visitors_see_only_shared_stacks(world):
    w = world
    anonymous = requests.Session()
    listed = anonymous.get(w.d.url + "/api/v1/stacks").json()["stacks"]
    assert listed, "carol shares: her stacks are public"
    assert all(s["owner"] == "carol" or s["kind"] == "crowd" for s in listed), listed
    for stack in w.carol_stacks:
        assert anonymous.get(w.d.url + stack["fits_url"]).status_code == 200
    for method, path, extra in intrusions(w):
        response = anonymous.request(method, w.d.url + path, allow_redirects=False, **extra)
        assert response.status_code in (401, 404), (method, path, response.status_code)
        if path.startswith(("/stacks", "/api/v1/stacks")):
            assert response.status_code == 404, path      # public routes: alice's look missing
    for path in ("/api/v1/status", f"/api/v1/sessions/{w.open_session}", f"/api/v1/jobs/{w.waiting_job}"):
        assert anonymous.get(w.d.url + path).status_code == 401
    assert "alice" not in anonymous.get(w.d.url + "/stacks").text
    alice_intact(w)


# --- token kinds ---------------------------------------------------------------------------

def test_user_tokens_cannot_use_the_worker_api(world):
    w = world
    lease = {"lease": "0" * 32}
    for method, path, extra in [
            ("POST", "/api/v1/worker/claim", {"json": {}}),
            ("GET", f"/api/v1/worker/jobs/{w.waiting_job}/inputs", {"params": lease}),
            ("GET", f"/api/v1/worker/jobs/{w.waiting_job}/inputs/frame-{w.waiting_frame}", {"params": lease}),
            ("POST", f"/api/v1/worker/jobs/{w.waiting_job}/heartbeat", {"json": {**lease, "progress": 0.5}}),
            ("POST", f"/api/v1/worker/jobs/{w.waiting_job}/fail", {"json": {**lease, "error": "x"}}),
            ("POST", f"/api/v1/worker/jobs/{w.waiting_job}/complete", {"data": lease})]:
        for user in (w.alice, w.mallory):          # not even the owner's own token
            response = user.http.request(method, w.d.url + path, **extra)
            assert response.status_code == 401, (user.username, path, response.status_code)
    alice_intact(w)


def test_worker_tokens_cannot_act_as_users_and_stop_working_when_revoked(world):
    w = world
    token = w.d.run("ingest_app.py", "worker-token", "add", "auth-test-box").stdout.strip()
    worker = requests.Session()
    worker.headers["Authorization"] = f"Bearer {token}"
    # A real worker token: the worker API knows it (a made-up lease is refused, not the token).
    inputs = f"{w.d.url}/api/v1/worker/jobs/{w.waiting_job}/inputs"
    assert worker.get(inputs, params={"lease": "0" * 32}).status_code == 409
    for method, path in [("GET", "/api/v1/status"), ("POST", "/api/v1/sessions"),
                         ("GET", f"/api/v1/sessions/{w.open_session}"), ("GET", f"/api/v1/jobs/{w.waiting_job}"),
                         ("POST", f"/api/v1/jobs/{w.waiting_job}/retry"), ("DELETE", f"/api/v1/jobs/{w.waiting_job}"),
                         ("PATCH", "/api/v1/me")]:
        response = worker.request(method, w.d.url + path, json={"share_with_crowd": True})
        assert response.status_code == 401, (method, path, response.status_code)
    # To the public routes a worker token is nobody: private stacks stay hidden.
    assert worker.get(f"{w.d.url}/api/v1/stacks/{w.chunk['id']}").status_code == 404

    assert "revoked 1" in w.d.run("ingest_app.py", "worker-token", "revoke", "auth-test-box").stdout
    assert worker.get(inputs, params={"lease": "0" * 32}).status_code == 401
    assert worker.post(f"{w.d.url}/api/v1/worker/claim", json={}).status_code == 401
    alice_intact(w)


# --- browser sessions and CSRF ----------------------------------------------------------------

def log_in(d: Deployment, username: str, password: str = PASSWORD) -> requests.Session:
    browser = requests.Session()
    form = browser.get(d.url + "/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = browser.post(d.url + "/login", data={"username": username, "password": password,
                                                    "csrf_token": csrf}, allow_redirects=False)
    assert response.status_code in (302, 303), response.status_code
    cookie = next(c for c in response.raw.headers.getlist("Set-Cookie") if c.startswith("crowdsky_session="))
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower(), cookie
    return browser


def test_cookie_state_changes_need_the_csrf_token_bearer_calls_do_not(world):
    w = world
    browser = log_in(w.d, "alice")
    token = browser.cookies["crowdsky_csrf"]
    url = w.d.url
    assert browser.get(url + "/api/v1/status").status_code == 200        # the cookie authenticates
    refused = [
        browser.post(url + "/api/v1/sessions"),
        browser.patch(url + "/api/v1/me", json={"share_with_crowd": True}),
        browser.delete(f"{url}/api/v1/jobs/{w.waiting_job}"),
        browser.put(f"{url}/api/v1/sessions/{w.open_session}/frames/forged.fit", data=small_frame_bytes(seed=47),
                    headers=FITS),
        browser.post(f"{url}/jobs/{w.waiting_job}/delete", allow_redirects=False),
        browser.post(url + "/account", data={"share_with_crowd": "on"}, allow_redirects=False),
        browser.post(url + "/logout", allow_redirects=False),
        browser.post(url + "/api/v1/sessions", headers={"X-CSRF-Token": "forged" * 8}),
    ]
    for response in refused:
        assert response.status_code == 403, (response.request.method, response.request.url, response.status_code)
    assert w.alice.get("/api/v1/status").json()["sessions"][0]["id"] == w.waiting_session  # nothing new
    assert not any(s["owner"] == "alice" for s in requests.get(url + "/api/v1/stacks").json()["stacks"])
    alice_intact(w)

    # With the token the same requests go through; a Bearer token needs none at all.
    made = browser.post(url + "/api/v1/sessions", headers={"X-CSRF-Token": token})
    assert made.status_code == 201
    assert w.alice.post("/api/v1/sessions").status_code == 201
    assert w.alice.http.patch(url + "/api/v1/me", json={"share_with_crowd": False}).status_code == 200


def test_logging_out_ends_the_browser_session(world):
    w = world
    browser = log_in(w.d, "alice")
    stolen = browser.cookies["crowdsky_session"]
    assert browser.get(w.d.url + "/api/v1/status").status_code == 200
    out = browser.post(w.d.url + "/logout", data={"csrf_token": browser.cookies["crowdsky_csrf"]},
                       allow_redirects=False)
    assert out.status_code in (302, 303)
    replay = requests.Session()
    replay.cookies.set("crowdsky_session", stolen)
    assert replay.get(w.d.url + "/api/v1/status").status_code == 401
    page = replay.get(w.d.url + "/upload", allow_redirects=False)
    assert page.status_code in (302, 303) and "/login" in page.headers["Location"]
    assert replay.get(f"{w.d.url}/stacks/{w.chunk['id']}").status_code == 404


# --- login limits and user enumeration ----------------------------------------------------------

class _FromAddress(requests.adapters.HTTPAdapter):
    """Connect from another loopback address (127.0.0.0/8 is all ours), as another client would."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(address: str) -> requests.Session:
    client = requests.Session()
    client.mount("http://", _FromAddress(address))
    return client


@pytest.fixture
def login_site(tmp_path):
    """A deployment of its own: the login limits are per process and would lock the module's users."""
    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app()
    for name in ("victim", "bystander"):
        assert requests.post(d.url + "/api/v1/register",
                             json={"username": name, "password": PASSWORD}).status_code == 201
    yield d
    d.stop_app()


def token_request(d: Deployment, client: requests.Session, username: str, password: str) -> requests.Response:
    return client.post(d.url + "/api/v1/token", json={"username": username, "password": password})


def test_login_is_limited_per_account_whatever_the_address(login_site):
    d = login_site
    for i in range(10):                         # ten guesses, each from another address
        assert token_request(d, client_at(f"127.0.0.{11 + i}"), "victim", f"guess {i}!").status_code == 401
    fresh = client_at("127.0.0.30")
    blocked = token_request(d, fresh, "victim", PASSWORD)         # even the right password now
    assert blocked.status_code == 429, blocked.text
    assert int(blocked.headers["Retry-After"]) > 0
    assert "too many failed logins" in blocked.json()["error"]
    form = fresh.post(d.url + "/login", data={"username": "victim", "password": PASSWORD,
                                              "csrf_token": "x" * 43}, cookies={"crowdsky_csrf": "x" * 43},
                      allow_redirects=False)
    assert form.status_code == 429
    assert token_request(d, fresh, "bystander", PASSWORD).status_code == 200   # other accounts unaffected


def test_login_is_limited_per_address(login_site):
    d = login_site
    guesser = client_at("127.0.0.40")
    for i in range(10):                         # ten accounts tried from one address
        assert token_request(d, guesser, f"nobody{i}", "guess guess").status_code == 401
    assert token_request(d, guesser, "bystander", PASSWORD).status_code == 429
    assert token_request(d, client_at("127.0.0.41"), "bystander", PASSWORD).status_code == 200


def test_a_forged_forwarded_for_header_does_not_escape_the_address_limit(login_site):
    d = login_site
    guesser = client_at("127.0.0.50")
    for i in range(10):
        guesser.headers["X-Forwarded-For"] = f"198.51.100.{i}"
        assert token_request(d, guesser, f"nobody{i}", "guess guess").status_code == 401
    guesser.headers["X-Forwarded-For"] = "198.51.100.99"
    assert token_request(d, guesser, "bystander", PASSWORD).status_code == 429


def test_unknown_user_and_wrong_password_answer_alike(login_site):
    d = login_site
    client = client_at("127.0.0.60")
    unknown = token_request(d, client, "no_such_user", "wrong password")
    wrong = token_request(d, client, "victim", "wrong password")
    assert (unknown.status_code, unknown.json()) == (wrong.status_code, wrong.json()) == \
        (401, {"error": "wrong user name or password"})

    form_client = client_at("127.0.0.61")
    form_client.get(d.url + "/login")
    csrf = form_client.cookies["crowdsky_csrf"]
    pages = [form_client.post(d.url + "/login", data={"username": name, "password": "wrong password",
                                                      "csrf_token": csrf})
             for name in ("no_such_user", "victim")]
    assert pages[0].status_code == pages[1].status_code == 401
    assert pages[0].text == pages[1].text

    basic = [requests.get(d.url + "/api/my_stacks.php", auth=(name, "wrong password"))
             for name in ("no_such_user", "bystander")]
    assert (basic[0].status_code, basic[0].text) == (basic[1].status_code, basic[1].text)

    # The same work either way (a password hash is checked even for nobody): similar answer times.
    def timed(name: str, address: str) -> float:
        started = time.perf_counter()
        assert token_request(d, client_at(address), name, "wrong password").status_code == 401
        return time.perf_counter() - started
    unknown_s = statistics.median(timed("no_such_user", f"127.0.0.{70 + i}") for i in range(5))
    known_s = statistics.median(timed("bystander", f"127.0.0.{80 + i}") for i in range(5))
    assert 1 / 3 < unknown_s / known_s < 3, (unknown_s, known_s)

    # The lockout does not tell either: an unknown name is locked out the same way.
    for i in range(10):
        token_request(d, client_at(f"127.0.1.{i + 1}"), "ghost", "wrong password")
    assert token_request(d, client_at("127.0.1.50"), "ghost", "wrong password").status_code == 429


# --- headers, and what is stored ----------------------------------------------------------------

def test_security_headers_on_pages_api_and_errors(world):
    w = world
    carol_stack = w.carol_stacks[0]["id"]
    for path in ("/", "/login", "/stacks", f"/stacks/{carol_stack}", "/map", "/api/v1/stacks",
                 f"/api/v1/stacks/{carol_stack}", "/api/v1/status", "/api/v1/nothing", "/nothing", "/healthz",
                 f"/stacks/{w.chunk['id']}"):
        response = requests.get(w.d.url + path, allow_redirects=False)
        csp = response.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, (path, csp)
        assert response.headers.get("X-Content-Type-Options") == "nosniff", path
        assert response.headers.get("X-Frame-Options") == "DENY", path


def test_passwords_are_argon2id_and_no_secret_is_stored_or_logged(world):
    w = world
    worker_token = w.d.run("ingest_app.py", "worker-token", "add", "storage-check").stdout.strip()
    browser = log_in(w.d, "carol")
    secrets = {
        "password": PASSWORD,
        "alice's API token": w.alice.http.headers["Authorization"].split()[1],
        "mallory's API token": w.mallory.http.headers["Authorization"].split()[1],
        "a browser session": browser.cookies["crowdsky_session"],
        "a worker token": worker_token,
    }
    stored = b"".join(p.read_bytes() for p in sorted(Path(w.d.data_dir).glob("crowdsky.db*")))
    logged = w.d.log_path.read_bytes()
    for what, secret in secrets.items():
        assert secret.encode() not in stored, f"{what} is in the database file"
        assert secret.encode() not in logged, f"{what} is in the log"
    for what in ("alice's API token", "a browser session", "a worker token"):
        assert hashlib.sha256(secrets[what].encode()).hexdigest().encode() in stored, f"{what}: no digest stored"

    conn = sqlite3.connect(f"file:{w.d.data_dir / 'crowdsky.db'}?mode=ro", uri=True)
    try:
        hashes = dict(conn.execute("SELECT username, password_hash FROM users").fetchall())
    finally:
        conn.close()
    assert set(hashes) >= {"alice", "carol", "mallory"}
    for name, encoded in hashes.items():
        assert encoded.startswith("$argon2id$"), (name, encoded[:20])
        assert PasswordHasher().verify(encoded, PASSWORD)
    assert len(set(hashes.values())) == len(hashes), "every hash has its own salt"
