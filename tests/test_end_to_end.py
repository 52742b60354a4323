"""The walking skeleton, end to end over real HTTP: register, upload real Seestar frames (and bad
files), finalize, stack, browse, download — on the embedded defaults and on S3 + WebDAV."""
from __future__ import annotations

import io

import pytest
import requests
from astropy.io import fits

from tests.apps import Deployment
from tests.frames import NIGHT_1, NIGHT_2, real_frames, small_frame_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def upload_all(user, session_id, paths) -> list[dict]:
    frames = []
    for path in paths:
        with open(path, "rb") as body:
            response = user.put_frame(session_id, path.name, body)
        assert response.status_code == 201, response.text
        frames.append(response.json())
    return frames


def check_flow(d: Deployment) -> None:
    alice = d.user("alice")
    session = alice.new_session()
    night1, night2 = real_frames(NIGHT_1), real_frames(NIGHT_2)
    frames = upload_all(alice, session, night1 + night2)

    # Two telescopes on two nights: exactly two chunks, keyed by UTC block and HEALPix pixel.
    keys = {f["chunk_key"] for f in frames}
    assert len(keys) == 2
    assert {k.split("_")[0] for k in keys} == {"20250327.23", "20250409.83"}
    assert all(k.split("_")[1].startswith("HP") and len(k.split("_")[1]) == 8 for k in keys)
    assert frames[0]["object"] == "M 94" and frames[0]["exptime"] == 10.0
    assert frames[0]["date_obs"].startswith("2025-03-27T05:45:00")

    # The same bytes again: 200 with the frame already stored, not a second copy.
    with open(night1[0], "rb") as body:
        again = alice.put_frame(session, "renamed copy.fit", body)
    assert again.status_code == 200 and again.json()["id"] == frames[0]["id"]

    # Bad files: a 4xx naming the fault, and nothing stored.
    text = alice.put_frame(session, "notes.fit", b"clear skies\n" * 300)
    assert text.status_code == 400 and "not a FITS file" in text.json()["error"]
    truncated = alice.put_frame(session, "cut.fit", night1[1].read_bytes()[:2_000_000])
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    no_bayer = alice.put_frame(session, "mono.fit", small_frame_bytes(BAYERPAT=None))
    assert no_bayer.status_code == 400 and "BAYERPAT" in no_bayer.json()["error"]
    sneaky = alice.put_frame(session, "..%2F..%2Fescape.fit", small_frame_bytes(seed=7))
    assert sneaky.status_code == 400 and "file name" in sneaky.json()["error"]
    listed = alice.get(f"/api/v1/sessions/{session}").json()["frames"]
    assert len(listed) == len(night1) + len(night2)

    # Someone else cannot see or use alice's session.
    bob = d.user("bob")
    assert bob.get(f"/api/v1/sessions/{session}").status_code == 404
    assert bob.post(f"/api/v1/sessions/{session}/finalize").status_code == 404

    finalized = alice.post(f"/api/v1/sessions/{session}/finalize")
    assert finalized.status_code == 200, finalized.text
    jobs = finalized.json()["jobs"]
    assert sorted(j["frames"] for j in jobs) == [len(night1), len(night2)]
    assert all(j["status"] == "pending" for j in jobs)
    assert alice.post(f"/api/v1/sessions/{session}/finalize").status_code == 409

    # Two chunk jobs, then the owner's deep stack takes in both nights (one target, 0.06° apart) in
    # one job: the second chunk stack joins the deep update already waiting for the first.
    assert d.drain_queue() == 3

    for job in jobs:
        state = alice.get(f"/api/v1/jobs/{job['id']}").json()
        assert state["status"] == "done", state
        assert state["progress"] == 1.0 and state["stack_id"]

    everything = alice.get("/api/v1/stacks", params={"object": "M 94"}).json()["stacks"]
    listing = [s for s in everything if s["kind"] == "chunk"]
    assert len(listing) == 2
    deep = [s for s in everything if s["kind"] == "deep"]
    assert len(deep) == 1 and deep[0]["nights"] == 2
    assert deep[0]["frames"] == sum(s["frames"] for s in listing)
    assert alice.get("/api/v1/stacks", params={"object": "M 31"}).json()["stacks"] == []
    for stack in listing:
        detail = alice.get(f"/api/v1/stacks/{stack['id']}").json()
        assert len(detail["frame_list"]) == stack["frames"] + stack["frames_rejected"]
        for frame in detail["frame_list"]:
            assert frame["used"] or frame["reason"]
        fits_bytes = alice.get(stack["fits_url"]).content
        with fits.open(io.BytesIO(fits_bytes)) as hdul:
            header = hdul[0].header
            assert hdul[0].data.shape[0] == 3 and hdul[0].data.dtype.name == "float32"
            assert header["NCOMBINE"] == stack["frames"] >= 2
            assert header["EXPTIME"] == pytest.approx(10.0 * stack["frames"])
            assert "SITELAT" not in header and "SITELONG" not in header
            assert header["DATE-BEG"] == stack["date_beg"] and header["DATE-END"] == stack["date_end"]
        preview = alice.get(stack["preview_url"])
        assert preview.headers["Content-Type"] == "image/png" and preview.content.startswith(PNG_MAGIC)

    # Stacked raws leave the buffer; bob (not sharing, not the owner) sees none of alice's stacks.
    assert alice.get(f"/api/v1/sessions/{session}").json()["frames"][0]["status"] == "stacked"
    assert bob.get("/api/v1/stacks").json()["stacks"] == []
    assert bob.get(listing[0]["fits_url"]).status_code == 404


def test_walking_skeleton_on_embedded_defaults(deployment):
    check_flow(deployment)
    buffer = deployment.data_dir / "buffer"
    assert not [p for p in buffer.rglob("*") if p.is_file()], "stacked raws must leave the buffer"


def test_walking_skeleton_on_s3_buffer_and_webdav_archive(tmp_path, s3_server, webdav_server):
    d = Deployment(tmp_path / "crowdsky", {
        "CROWDSKY_BUFFER_URL": s3_server.url(),
        "CROWDSKY_BUFFER_USER": s3_server.credentials.user,
        "CROWDSKY_BUFFER_PASSWORD": s3_server.credentials.secret,
        "CROWDSKY_ARCHIVE_URL": webdav_server.url(),
        "CROWDSKY_ARCHIVE_USER": webdav_server.credentials.user,
        "CROWDSKY_ARCHIVE_PASSWORD": webdav_server.credentials.secret,
    })
    d.start_app()
    try:
        check_flow(d)
    finally:
        d.stop_app()


def test_healthz_and_security_headers(deployment):
    response = requests.get(deployment.url + "/healthz")
    assert response.status_code == 200
    page = requests.get(deployment.url + "/")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
