"""Hostile and clumsy clients against the real app process: every one gets a clear 4xx naming the
fault (never a 500, never a hang), nothing is stored, and everyone else is still served.

Raw sockets and ``http.client`` are used where the way the bytes arrive is the point (a body sent
before the answer is read, a body cut short, headers dripped one byte at a time).
"""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import socket
import sqlite3
import threading
import time
import urllib.parse

import pytest
import requests

from tests.apps import Deployment
from tests.frames import NIGHT_1, real_frames, seestar_header, small_frame_bytes

PASSWORD = "correct horse battery"
FRAME_LIMIT = 5_000_000          # one real frame (4.15 MB) fits
QUOTA = 10_000_000               # two real frames fit, a third does not


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("hostile"), {
        "CROWDSKY_MAX_FRAME_BYTES": str(FRAME_LIMIT),
        "CROWDSKY_QUOTA_BYTES": str(QUOTA),
        # every login guess below comes from an address of its own, as from a botnet: only the
        # per-account limit stands in the way
        "CROWDSKY_TRUST_FORWARDED_FOR": "1",
    })
    d.start_app()
    yield d
    d.stop_app()


@pytest.fixture(scope="module")
def owner(site):
    return site.user("target")


def stored_objects(site, session) -> list:
    return [p for p in (site.data_dir / "buffer" / "raw").glob(f"*/{session}/*") if p.is_file()]


def nothing_stored(site, user, session) -> None:
    assert user.get(f"/api/v1/sessions/{session}").json()["frames"] == []
    assert stored_objects(site, session) == []


def raw_exchange(site, head: bytes, body: bytes = b"", *, half_close: bool = False,
                 timeout: float = 30) -> tuple[int, bytes]:
    """Send *head* and *body* on a socket of its own and read the whole answer: (status, body)."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=timeout) as conn:
        conn.sendall(head + body)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _expected_length(answer):
            part = conn.recv(65536)
            if not part:
                break
            answer += part
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def _expected_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 1 << 62


# --- 1. an answer sent before the body is read reaches a client that sends the body first -----

@pytest.mark.parametrize("connection", ["keep-alive", "close"])
@pytest.mark.parametrize("name, body, status, fault", [
    ("bad.fit", b"M 94 " * 800_000, 400, "not a FITS file"),               # 4 MB that are no frame
    ("picture.jpg", small_frame_bytes(seed=1) * 40, 400, "not a FITS file name"),
    ("evil\u202egpj.fit", small_frame_bytes(seed=2) * 40, 400, "file name"),
    ("big.fit", bytes(FRAME_LIMIT + 1_000_000), 413, "limit per frame"),
])
def test_a_client_sending_the_whole_body_first_reads_the_refusal(site, owner, connection, name, body,
                                                                   status, fault):
    session = owner.new_session()
    token = owner.http.headers["Authorization"]
    client = http.client.HTTPConnection("127.0.0.1", site.port, timeout=60)
    client.request("PUT", f"/api/v1/sessions/{session}/frames/{urllib.parse.quote(name)}", body=body,
                   headers={"Authorization": token, "Connection": connection,
                            "Content-Type": "application/fits"})
    response = client.getresponse()            # BrokenPipeError / ConnectionResetError before
    error = json.loads(response.read())["error"]
    client.close()
    assert response.status == status and fault in error, (response.status, error)
    nothing_stored(site, owner, session)


# --- 2. slow clients do not stop the site -------------------------------------------------------

def test_sixteen_slow_clients_do_not_stop_the_site(tmp_path):
    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app("--threads", "4", "--slow-client-seconds", "2")      # fewer threads than slow clients
    try:
        stop = threading.Event()
        drips = [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 200,           # headers dripped
                 b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{" + b" " * 999]                             # body dripped
        sockets, cut = [], []

        def drip(conn, data, head):
            conn.sendall(data[:head])
            for byte in data[head:]:
                if stop.wait(3):                 # one byte every 3 s
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    cut.append(conn)             # the app hung up on it
                    return

        threads = []
        for i in range(16):
            conn = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            sockets.append(conn)
            data = drips[i % 2]
            head = 5 if i % 2 == 0 else data.index(b"\r\n\r\n") + 5
            threads.append(threading.Thread(target=drip, args=(conn, data, head), daemon=True))
            threads[-1].start()
        time.sleep(1)                            # every worker thread is now stuck with a slow client
        try:
            health = requests.get(d.url + "/healthz", timeout=60)       # hangs forever without the watchdog
            assert health.status_code == 200 and health.json() == {"ok": True}
            owner = d.user("patient")                                   # real work goes on too
            session = owner.new_session()
            assert owner.put_frame(session, "ok.fit", small_frame_bytes(seed=9)).status_code == 201
            # and every slow client was cut: the app closed its connection
            for conn in sockets:
                conn.settimeout(60)
                try:
                    while conn.recv(65536):
                        pass
                except (ConnectionResetError, TimeoutError, socket.timeout) as exc:
                    assert not isinstance(exc, (TimeoutError, socket.timeout)), "a slow client was never cut"
        finally:
            stop.set()
            for conn in sockets:
                conn.close()
        assert "cut a slow client" in d.log_path.read_text()
    finally:
        d.stop_app()


# --- 3. anonymous bodies are refused by their declared length, before they are read ------------

def _form(boundary: str = "XXX") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nsomeone\r\n").encode()


@pytest.mark.parametrize("route, content_type", [
    ("/api/v1/register", "application/json"),
    ("/api/v1/token", "application/json"),
    ("/login", "application/x-www-form-urlencoded"),
    ("/login", "multipart/form-data; boundary=XXX"),
    ("/register", "application/x-www-form-urlencoded"),
    ("/api/raw_upload.php?action=file", "multipart/form-data; boundary=XXX"),
])
def test_a_huge_declared_body_is_refused_before_it_is_read(site, route, content_type):
    head = (f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: 400000000\r\n\r\n").encode()
    status, body = raw_exchange(site, head, _form())      # a few bytes of 400 MB, then we wait
    assert status == 413, body[:300]
    assert b"400000000" in body                           # the message names the size
    if route.startswith("/api/"):
        assert "at most" in json.loads(body)["error"]


def test_a_frame_form_past_the_frame_limit_is_refused_before_it_is_read(site, owner):
    basic = base64.b64encode(f"{owner.username}:{PASSWORD}".encode()).decode()
    length = FRAME_LIMIT + 10_000_000
    head = (f"POST /api/raw_upload.php?action=file HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n"
            f"Content-Type: multipart/form-data; boundary=XXX\r\nContent-Length: {length}\r\n\r\n").encode()
    status, body = raw_exchange(site, head, _form())
    assert status == 413 and str(length) in json.loads(body)["error"]


# --- 4. after logging in, only a path on this site -----------------------------------------

@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "//evil.example",
                                    "/\\evil.example", "\\\\evil.example", "/%09/evil.example",
                                    "https://evil.example/", "/\\/evil.example", " //evil.example",
                                    "/\u3000/evil.example", "javascript:alert(1)"])
def test_login_never_sends_anyone_off_the_site(site, owner, target):
    browser = requests.Session()
    browser.get(site.url + "/login")
    response = browser.post(site.url + "/login?next=" + urllib.parse.quote(target, safe="%/:"),
                            data={"username": owner.username, "password": PASSWORD,
                                  "csrf_token": browser.cookies["crowdsky_csrf"]},
                            allow_redirects=False)
    assert response.status_code == 303, response.text[:300]
    assert response.headers["Location"] == site.url + "/upload"


def test_login_goes_on_to_a_path_on_the_site(site, owner):
    browser = requests.Session()
    browser.get(site.url + "/login")
    response = browser.post(site.url + "/login?next=/stacks%3Fkind%3Ddeep",
                            data={"username": owner.username, "password": PASSWORD,
                                  "csrf_token": browser.cookies["crowdsky_csrf"]}, allow_redirects=False)
    assert response.headers["Location"] == site.url + "/stacks?kind=deep"


# --- 5. the login limit and the quota hold under concurrency ---------------------------------

def _guess(site, username: str, password: str, address: str) -> requests.Response:
    return requests.post(site.url + "/api/v1/token", json={"username": username, "password": password},
                         headers={"X-Forwarded-For": address}, timeout=120)


def test_two_hundred_guesses_at_once_get_no_more_checks_than_the_limit(site):
    site.user("besieged")
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: _guess(site, "besieged", f"guess {i}", f"203.0.113.{i % 250}"),
                                range(200)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    assert 1 <= statuses.count(401) <= 10, statuses.count(401)      # 25 checked before


def test_the_right_password_racing_wrong_ones_gets_no_token_past_the_limit(site):
    site.user("raced")
    passwords = [f"wrong {i}" for i in range(15)] + [PASSWORD]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: _guess(site, "raced", passwords[i], f"198.51.100.{i}"), range(16)))
    statuses = [a.status_code for a in answers]
    wrong, right = statuses[:15], statuses[15]
    assert wrong.count(401) <= 10 and set(wrong) <= {401, 429}, wrong      # 15 checked before
    assert right in (200, 429)               # a token only if it started before the limit was reached
    # The right password did not wipe the count: with 10 failures counted it gets no token, from anywhere.
    late = _guess(site, "raced", PASSWORD, "192.0.2.77")
    if wrong.count(401) == 10:
        assert late.status_code == 429 and "token" not in late.json()
    else:                                    # the right one took a place among the first ten
        assert right == 200 and late.status_code == 200


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
def test_ten_frames_at_once_never_pass_the_quota(tmp_path, _database_servers, backend):
    if backend == "sqlite":
        env = {}
    else:
        server = _database_servers.get(backend)
        name = _database_servers.next_name()
        server.create(name)
        env = {"CROWDSKY_DATABASE_URL": server.url(name)}
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_MAX_FRAME_BYTES": str(FRAME_LIMIT),
                                           "CROWDSKY_QUOTA_BYTES": str(QUOTA), **env})
    d.start_app()
    try:
        user = d.user("greedy")
        session = user.new_session()
        frames = [p.read_bytes() for p in real_frames(NIGHT_1)]
        bodies = [f[:-8] + i.to_bytes(8, "big") for i, f in enumerate(frames + frames)][:10]   # 10 distinct
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda i: user.put_frame(session, f"f{i}.fit", bodies[i]), range(10)))
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {201, 413}, [a.text for a in answers]
        stored = user.get(f"/api/v1/sessions/{session}").json()["frames"]
        assert sum(f["size"] for f in stored) <= QUOTA
        assert statuses.count(201) == len(stored) == 2                   # all 10 were stored before
        assert all("quota" in a.json()["error"] for a in answers if a.status_code == 413)
        assert len(stored_objects(d, session)) == 2
        # nothing stays reserved: once a frame is gone from the quota, one more fits
    finally:
        d.stop_app()
        if backend != "sqlite":
            server.drop(name)


# --- 6. user names are one name whatever their case or Unicode form -----------------------------

@pytest.mark.parametrize("taken, twin, fault", [
    ("alice", "Alice", "taken"), ("alice", "ALICE", "taken"),
    ("alice", "\uff41\uff4c\uff49\uff43\uff45", "taken"),                   # full-width letters
    ("alice", "a1ice", "too like"), ("bob_smith", "B0B.smith", "too like"),
])
def test_user_names_differing_only_in_case_form_or_look_are_one_name(site, taken, twin, fault):
    requests.post(site.url + "/api/v1/register", json={"username": taken, "password": PASSWORD})
    response = requests.post(site.url + "/api/v1/register", json={"username": twin, "password": PASSWORD})
    assert response.status_code == 400 and fault in response.json()["error"], response.text
    users = [r["username"] for r in _users(site)]
    assert twin not in users


def test_case_variants_registered_at_once_make_one_account(site):
    variants = ["Racer", "racer", "RACER", "rAcer", "raCer", "racEr", "raceR", "RAcer", "\uff52acer", "racER"]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda name: requests.post(site.url + "/api/v1/register",
                                                           json={"username": name, "password": PASSWORD}), variants))
    assert sorted(a.status_code for a in answers) == [201] + [400] * 9, [a.text for a in answers]
    assert sum(1 for r in _users(site) if r["username"].casefold() == "racer") == 1


def _users(site) -> list[dict]:
    with sqlite3.connect(site.data_dir / "crowdsky.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM users")]


def test_a_user_logs_in_by_any_case_of_the_name(site):
    site.user("mixedcase")
    response = requests.post(site.url + "/api/v1/token", json={"username": "MixedCase", "password": PASSWORD},
                             headers={"X-Forwarded-For": "192.0.2.200"})
    assert response.status_code == 200 and response.json()["token"]


def test_names_from_before_folding_are_migrated_and_keep_working(tmp_path):
    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app()
    d.user("carol")
    d.stop_app()
    # Two accounts made before names were folded: 'Carol' beside 'carol', neither with a key.
    with sqlite3.connect(d.data_dir / "crowdsky.db") as db:
        digest = db.execute("SELECT password_hash FROM users WHERE username = 'carol'").fetchone()[0]
        db.execute("UPDATE users SET username_key = NULL")
        db.execute("INSERT INTO users (username, password_hash, share_with_crowd, created_at) "
                   "VALUES ('Carol', ?, 0, 0)", (digest,))
    d.start_app()
    try:
        keys = {r["username"]: r["username_key"] for r in _users(d)}
        assert keys == {"carol": "carol", "Carol": None}           # the older one keeps the name
        for name in ("carol", "Carol"):                              # both still log in
            assert requests.post(d.url + "/api/v1/token", json={"username": name, "password": PASSWORD}
                                 ).status_code == 200
        again = requests.post(d.url + "/api/v1/register", json={"username": "CAROL", "password": PASSWORD})
        assert again.status_code == 400 and "taken" in again.json()["error"]
        assert "shares its case-folded name" in d.log_path.read_text()
    finally:
        d.stop_app()


# --- 7. what used to be a 500 ---------------------------------------------------------------------

@pytest.mark.parametrize("date", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
                                  "0001-01-01T00:00:00", "9999-12-31T23:59:59", "1970-01-01T00:00:00"])
def test_impossible_dates_are_refused_naming_date_obs(site, owner, date):
    session = owner.new_session()
    response = owner.put_frame(session, "when.fit", small_frame_bytes(seed=20, DATE_OBS=date))
    assert response.status_code == 400 and "DATE-OBS" in response.json()["error"], response.text
    nothing_stored(site, owner, session)


@pytest.mark.parametrize("route, content_type, body", [
    ("/api/v1/register", "application/json", b'{"username": "cut'),
    ("/api/v1/token", "application/json", b'{"username": "cut'),
    ("/login", "multipart/form-data; boundary=XXX", _form()),
    ("/login", "application/x-www-form-urlencoded", b"username=cut"),
])
def test_a_body_shorter_than_its_length_then_a_half_close_is_a_400(site, route, content_type, body):
    head = (f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) + 1000}\r\nConnection: close\r\n\r\n").encode()
    status, answer = raw_exchange(site, head, body, half_close=True)
    assert 400 <= status < 500, answer[:300]      # 400, or 403 where a form's CSRF token is missing first


def test_a_frame_shorter_than_its_length_then_a_half_close_is_a_400(site, owner):
    session = owner.new_session()
    body = small_frame_bytes(seed=21)
    head = (f"PUT /api/v1/sessions/{session}/frames/cut.fit HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {owner.http.headers['Authorization']}\r\n"
            f"Content-Length: {len(body) + 5000}\r\nConnection: close\r\n\r\n").encode()
    status, answer = raw_exchange(site, head, body, half_close=True)
    assert status == 400 and "ended after" in json.loads(answer)["error"]
    nothing_stored(site, owner, session)


@pytest.mark.parametrize("route", ["/api/v1/register", "/api/v1/token"])
def test_a_lone_surrogate_in_json_is_a_400(site, route):
    body = b'{"username": "\\ud800evil", "password": "\\udfffcorrect horse"}'
    response = requests.post(site.url + route, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "surrogate" in response.json()["error"], response.text


ID_ROUTES = [("GET", "/stacks/{}"), ("GET", "/stacks/{}/stack.fits"), ("GET", "/stacks/{}/preview.png"),
             ("GET", "/stacks/{}/thumb.jpg"), ("GET", "/api/v1/stacks/{}"), ("GET", "/api/v1/sessions/{}"),
             ("PUT", "/api/v1/sessions/{}/frames/x.fit"), ("POST", "/api/v1/sessions/{}/finalize"),
             ("GET", "/api/v1/jobs/{}"), ("POST", "/api/v1/jobs/{}/retry"), ("DELETE", "/api/v1/jobs/{}"),
             ("POST", "/jobs/{}/retry"), ("POST", "/jobs/{}/delete")]


@pytest.mark.parametrize("method, route", ID_ROUTES)
@pytest.mark.parametrize("big", [2 ** 63, 2 ** 64 + 5, 10 ** 30])
def test_ids_too_large_for_any_row_are_404(site, owner, method, route, big):
    response = owner.http.request(method, site.url + route.format(big), data=b"SIMPLE" if method == "PUT" else None)
    assert response.status_code == 404, (response.status_code, response.text[:300])
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_ids_too_large_for_the_seestar_session_token_are_refused(site, owner):
    response = requests.post(site.url + "/api/raw_upload.php?action=finalize", data={"session_token": str(2 ** 64)},
                             auth=(owner.username, PASSWORD))
    assert response.status_code in (400, 404) and "session" in response.json()["error"]


@pytest.mark.parametrize("query", ["to=9999-12-31", "from=0001-01-01", "from=9999-12-31&to=0001-01-01",
                                   "to=10000-01-01"])
def test_gallery_dates_at_the_ends_of_the_calendar(site, query):
    response = requests.get(site.url + "/stacks?" + query)
    assert response.status_code in (200, 400), response.status_code


def test_an_unhandled_error_is_a_logged_500_with_the_security_headers(tmp_path):
    """A row that breaks an invariant (a position that is no number) makes pages fail: the answer
    is a 500 in the caller's format with the security headers and a request id, never a traceback,
    and the log has one error line (with the traceback) and the request logged as 500."""
    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app()
    try:
        user = d.user("unlucky")
        with sqlite3.connect(d.data_dir / "crowdsky.db") as db:
            owner_id = db.execute("SELECT id FROM users WHERE username = 'unlucky'").fetchone()[0]
            stack_id = db.execute("INSERT INTO stacks (kind, owner_id, fits_key, preview_key, ra, dec, created_at) "
                                  "VALUES ('chunk', ?, 'x', 'y', 'north', 'up', 0)", (owner_id,)).lastrowid
        for path, kind in (("/api/v1/skymap", "json"), (f"/stacks/{stack_id}", "page")):
            response = user.get(path)
            assert response.status_code == 500, (path, response.status_code)
            assert response.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
            request_id = response.headers["X-Request-Id"]
            assert "Traceback" not in response.text and request_id in response.text
            if kind == "json":
                assert "internal error" in response.json()["error"]
            else:
                assert response.headers["Content-Type"].startswith("text/html")
            lines = [json.loads(line) for line in d.log_path.read_text().splitlines()
                     if line.startswith("{") and request_id in line]
            assert [line["status"] for line in lines if line.get("event") == "request"] == [500]
            errors = [line for line in lines if line["level"] == "error"]
            assert len(errors) == 1 and "Traceback" in errors[0]["error"]
    finally:
        d.stop_app()


# --- 9. file names that hide or change what the owner sees are refused --------------------------

@pytest.mark.parametrize("name", ["del\x7f.fit", "next\u0085line.fit", "evil\u202egpj.fit", "zero\u200bwidth.fit",
                                  "bom\ufeff.fit", "line\u2028sep.fit", "private\ue000.fit"])
def test_names_with_control_format_or_invisible_characters_are_refused(site, owner, name):
    session = owner.new_session()
    response = owner.put_frame(session, urllib.parse.quote(name), small_frame_bytes(seed=30))
    assert response.status_code == 400 and "file name" in response.json()["error"], response.text
    nothing_stored(site, owner, session)


@pytest.mark.parametrize("raw_name", ["%FF%FE.fit", "a%C0%AF.fit", "%ED%A0%80.fit"])
def test_a_name_that_is_not_utf8_is_refused_not_changed(site, owner, raw_name):
    session = owner.new_session()
    response = owner.put_frame(session, raw_name, small_frame_bytes(seed=31))
    assert response.status_code == 400 and "UTF-8" in response.json()["error"], response.text
    nothing_stored(site, owner, session)


def test_a_seestar_form_file_name_that_is_not_utf8_is_refused(site, owner):
    auth = (owner.username, PASSWORD)
    token = requests.post(site.url + "/api/raw_upload.php?action=start", auth=auth).json()["session_token"]
    body = (b'--XX\r\nContent-Disposition: form-data; name="session_token"\r\n\r\n' + token.encode() +
            b'\r\n--XX\r\nContent-Disposition: form-data; name="file"; filename="\xff\xfe.fit"\r\n\r\n' +
            small_frame_bytes(seed=32) + b"\r\n--XX--\r\n")
    response = requests.post(site.url + "/api/raw_upload.php?action=file", data=body, auth=auth,
                             headers={"Content-Type": "multipart/form-data; boundary=XX"})
    assert response.status_code == 400 and "UTF-8" in response.json()["error"], response.text
    nothing_stored(site, owner, int(token))


# --- 11. the login limiter's memory is bounded -----------------------------------------------

def test_the_login_limiter_keeps_no_entry_for_made_up_keys():
    from lib.ratelimit import LoginLimiter
    limiter = LoginLimiter(max_failures=3, window_s=0.2)
    for i in range(10_000):
        assert limiter.retry_after(f"user:nobody{i}", f"ip:10.0.{i // 256}.{i % 256}") == 0
    assert len(limiter) == 0                          # looking up is free
    for i in range(1000):
        wait, attempt = limiter.begin(f"user:guess{i}", "ip:10.9.9.9")
        if not wait:
            limiter.succeeded(attempt, f"user:guess{i}", "ip:10.9.9.9")
    assert len(limiter) == 0                          # right passwords leave nothing behind
    for _ in range(5):
        limiter.failed("user:victim")
    assert limiter.retry_after("user:victim") > 0
    time.sleep(0.3)
    limiter._swept -= 120                             # the minute between sweeps has passed
    limiter.failed("user:other")
    assert len(limiter) == 1                          # the victim's expired failures are gone


# --- 8. any Unicode name: the frame is stacked, the FITS stays ASCII, errors stay plain ------------

def test_a_frame_with_a_unicode_name_is_stacked_and_its_fits_stays_ascii(tmp_path):
    from astropy.io import fits
    from lib.stacking.synthetic import make_session

    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app()
    try:
        user = d.user("lumiere")
        session = user.new_session()
        paths = make_session(tmp_path / "frames", n_frames=4, seed=51).paths
        names = [f"Lumière_{i:02d}_😀.fit" for i in range(len(paths))]
        for name, path in zip(names, paths):
            response = user.put_frame(session, urllib.parse.quote(name), path.read_bytes())
            assert response.status_code == 201 and response.json()["filename"] == name, response.text
        job = user.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"][0]["id"]
        done = d.run("stacker.py", "--once")                  # the chunk job (the deep stack after it is not needed)
        assert done.returncode == 0, done.stderr[-3000:]
        view = user.get(f"/api/v1/jobs/{job}").json()
        assert view["status"] == "done" and view["error"] is None, view          # failed 3 times before
        stack = user.get(f"/api/v1/stacks/{view['stack_id']}").json()
        assert sorted(f["filename"] for f in stack["frame_list"]) == sorted(names)   # shown as given
        fits_bytes = user.get(f"/stacks/{view['stack_id']}/stack.fits").content
        (tmp_path / "stack.fits").write_bytes(fits_bytes)
        with fits.open(tmp_path / "stack.fits") as hdus:
            assert sorted(hdus["FRAMES"].data["NAME"]) == sorted(n.encode("ascii", "backslashreplace").decode()
                                                                  for n in names)
            assert "\\xe8" in hdus[0].header["REFFRAME"]
    finally:
        d.stop_app()


def test_job_errors_shown_to_owners_are_one_plain_sentence():
    from lib.jobs import owner_error

    traceback_text = ('Traceback (most recent call last):\n  File "/srv/crowdsky/lib/worker.py", line 140, in run_once\n'
                      '    _process(source, lease, workdir, beat)\nValueError: FITS header values must contain standard '
                      'printable ASCII characters')
    shown = owner_error(traceback_text)
    assert "\n" not in shown and "/srv" not in shown and "worker.py" not in shown and "ValueError" in shown
    shown = owner_error("FileNotFoundError: [Errno 2] No such file or directory: '/tmp/crowdsky-job7-x1/raw/3.fits'")
    assert "/tmp" not in shown and "3.fits" in shown
    plain = "no frame could be used (2 given): a.fit: too few stars; b.fit: blurred"
    assert owner_error(plain) == plain


# --- 10. what an upload killed mid-way leaves behind is cleaned ------------------------------------

def test_half_written_files_of_an_app_killed_mid_upload_are_cleaned(tmp_path):
    d = Deployment(tmp_path / "crowdsky", {})
    d.start_app()
    try:
        user = d.user("interrupted")
        session = user.new_session()
        frame = small_frame_bytes(width=1024, height=1024, seed=60)          # 2 MB
        conn = socket.create_connection(("127.0.0.1", d.port), timeout=30)
        conn.sendall((f"PUT /api/v1/sessions/{session}/frames/a.fit HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: {user.http.headers['Authorization']}\r\n"
                      f"Content-Length: {len(frame)}\r\n\r\n").encode() + frame[:len(frame) // 2])
        buffer = d.data_dir / "buffer"
        deadline = time.monotonic() + 60
        while not list(buffer.rglob(".*.part")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(buffer.rglob(".*.part")), "the upload never started writing"
        d.app.kill()                                                          # SIGKILL mid-upload
        d.app.wait(10)
        conn.close()
        parts = list(buffer.rglob(".*.part"))
        assert parts                                                          # what the crash left

        kept = d.run("janitor.py", "--once")                                   # within the grace period
        assert kept.returncode == 0, kept.stderr[-2000:]
        assert list(buffer.rglob(".*.part")) == parts

        cleaned = d.run("janitor.py", "--once", extra_env={"CROWDSKY_RECONCILE_GRACE_SECONDS": "0.001"})
        assert cleaned.returncode == 0, cleaned.stderr[-2000:]
        assert list(buffer.rglob(".*.part")) == []
        assert "partial uploads" in cleaned.stdout + cleaned.stderr
        d.start_app()                                                          # and the same frame goes in
        assert user.put_frame(session, "a.fit", frame).status_code == 201
    finally:
        d.stop_app()
