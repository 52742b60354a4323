"""Bad input: every refusal is a 4xx whose message names the fault, and leaves nothing behind."""
from __future__ import annotations

import pytest
import requests

from tests.apps import Deployment
from tests.frames import NIGHT_1, real_frames, seestar_header, small_frame_bytes

FRAME = real_frames(NIGHT_1)[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("bad-input"), {
        "CROWDSKY_MAX_FRAME_BYTES": str(5_000_000),     # one real frame (4.15 MB) fits
        "CROWDSKY_QUOTA_BYTES": str(9_000_000),         # two real frames fit, a third does not
    })
    d.start_app()
    yield d
    d.stop_app()


@pytest.fixture(scope="module")
def owner(site):
    return site.user("careful")


@pytest.fixture
def session(owner):
    return owner.new_session()


def stored_objects(site, session) -> list:
    """Objects in the buffer under *session*'s keys (raw/<owner>/<session>/...)."""
    return [p for p in (site.data_dir / "buffer" / "raw").glob(f"*/{session}/*") if p.is_file()]


def assert_refused(site, owner, session, response, status, fault):
    assert response.status_code == status, response.text
    assert fault.lower() in response.json()["error"].lower(), response.json()["error"]
    assert owner.get(f"/api/v1/sessions/{session}").json()["frames"] == []
    assert stored_objects(site, session) == []


def header_only(**changes) -> bytes:
    return seestar_header(**changes).tostring().encode("ascii")


def with_data(head: bytes, data_bytes: int) -> bytes:
    return head + bytes(data_bytes)


REAL = FRAME.read_bytes()
BAD_BODIES = {
    "empty body": (b"", 400, "empty"),
    "text named .fit": (b"M 94 was lovely tonight\n" * 200, 400, "not a FITS file"),
    "JPEG named .fit": (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(5000), 400, "not a FITS file"),
    "truncated mid-header": (REAL[:1500], 400, "ends inside the FITS header"),
    "truncated mid-data": (REAL[:3_000_000], 400, "truncated"),
    "no END card": (REAL[:5760].replace(b"END" + b" " * 77, b" " * 80) + REAL[5760:5760 * 2], 400, "END"),
    "colour cube NAXIS=3": (with_data(header_only(NAXIS=3, NAXIS3=3), 1000), 400, "NAXIS = 3"),
    "BITPIX 8": (with_data(header_only(BITPIX=8), 1000), 400, "BITPIX = 8"),
    "size claiming gigabytes": (with_data(header_only(NAXIS1=16000, NAXIS2=16000), 1000), 400, "truncated"),
    "missing DATE-OBS": (with_data(header_only(DATE_OBS=None), 1000), 400, "DATE-OBS is missing"),
    "unparsable DATE-OBS": (with_data(header_only(DATE_OBS="last night"), 1000), 400, "DATE-OBS = 'last night'"),
    "missing RA": (with_data(header_only(RA=None), 1000), 400, "RA is missing"),
    "missing DEC": (with_data(header_only(DEC=None), 1000), 400, "DEC is missing"),
    "missing EXPTIME": (with_data(header_only(EXPTIME=None), 1000), 400, "EXPTIME is missing"),
    "RA outside 0-360": (with_data(header_only(RA=400.0), 1000), 400, "RA = 400.0 is outside"),
    "DEC outside +-90": (with_data(header_only(DEC=95.0), 1000), 400, "DEC = 95.0 is outside"),
    "no Bayer pattern": (small_frame_bytes(BAYERPAT=None), 400, "BAYERPAT is missing"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_file_is_refused_and_nothing_is_stored(site, owner, session, case):
    body, status, fault = BAD_BODIES[case]
    response = owner.put_frame(session, "frame.fit", body)
    assert_refused(site, owner, session, response, status, fault)


@pytest.mark.parametrize("name, fault", [
    ("..%2F..%2Fetc%2Fpasswd.fit", "file name"),
    ("nul%00byte.fit", "file name"),
    ("a" * 300 + ".fit", "file name"),
    ("...", "file name"),
    ("picture.jpg", "not a FITS file name"),
])
def test_bad_file_names_are_refused(site, owner, session, name, fault):
    response = owner.put_frame(session, name, small_frame_bytes(seed=3))
    assert_refused(site, owner, session, response, 400, fault)


def test_body_over_the_size_limit_is_refused_before_it_is_read(site, owner, session):
    response = owner.put_frame(session, "big.fit", bytes(6_000_000))
    assert_refused(site, owner, session, response, 413, "limit per frame")


def test_upload_past_the_quota_is_refused(site, tmp_path):
    user = site.user("hoarder")
    session = user.new_session()
    frames = real_frames(NIGHT_1)
    assert user.put_frame(session, "1.fit", frames[0].read_bytes()).status_code == 201
    assert user.put_frame(session, "2.fit", frames[1].read_bytes()).status_code == 201
    response = user.put_frame(session, "3.fit", frames[2].read_bytes())
    assert response.status_code == 413 and "quota" in response.json()["error"]
    assert len(user.get(f"/api/v1/sessions/{session}").json()["frames"]) == 2


def test_someone_elses_session_looks_missing(site, owner):
    intruder = site.user("intruder")
    session = owner.new_session()
    response = intruder.put_frame(session, "x.fit", small_frame_bytes(seed=4))
    assert response.status_code == 404 and "no upload session" in response.json()["error"]
    assert intruder.post(f"/api/v1/sessions/{session}/finalize").status_code == 404
    assert intruder.get(f"/api/v1/sessions/{session}").status_code == 404


def test_finalize_twice_and_finalize_empty(site, owner):
    empty = owner.new_session()
    response = owner.post(f"/api/v1/sessions/{empty}/finalize")
    assert response.status_code == 400 and "no frames" in response.json()["error"]
    session = owner.new_session()
    assert owner.put_frame(session, "one.fit", small_frame_bytes(seed=5)).status_code == 201
    assert owner.post(f"/api/v1/sessions/{session}/finalize").status_code == 200
    again = owner.post(f"/api/v1/sessions/{session}/finalize")
    assert again.status_code == 409 and "already finalized" in again.json()["error"]
    late = owner.put_frame(session, "two.fit", small_frame_bytes(seed=6))
    assert late.status_code == 409


@pytest.mark.parametrize("path, body, fault", [
    ("/api/v1/register", {"username": 42, "password": "long enough pw"}, "'username' must be a string"),
    ("/api/v1/register", {"username": "fine_name", "password": ["x"]}, "'password' must be a string"),
    ("/api/v1/register", [1, 2], "must be a JSON object"),
    ("/api/v1/token", {"username": "careful"}, "'password' must be a string"),
])
def test_json_with_wrong_types_is_refused(site, path, body, fault):
    response = requests.post(site.url + path, json=body)
    assert response.status_code == 400 and fault in response.json()["error"]


def test_invalid_json_is_refused(site):
    response = requests.post(site.url + "/api/v1/register", data=b"{not json",
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


def test_frames_are_found_by_their_bytes_only_by_their_owner(site, owner):
    import hashlib
    session = owner.new_session()
    body = small_frame_bytes(seed=11)
    assert owner.put_frame(session, "known.fit", body).status_code == 201
    digest = hashlib.sha256(body).hexdigest()
    found = owner.get("/api/v1/frames", params={"sha256": digest})
    assert found.status_code == 200 and [f["session_id"] for f in found.json()["frames"]] == [session]
    stranger = site.user("stranger")
    assert stranger.get("/api/v1/frames", params={"sha256": digest}).json() == {"frames": []}
    malformed = owner.get("/api/v1/frames", params={"sha256": "not-a-digest"})
    assert malformed.status_code == 400 and "sha256" in malformed.json()["error"]
