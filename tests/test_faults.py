"""Faults: real servers stop mid-operation; nothing is lost and everything recovers by itself."""
from __future__ import annotations

import pytest

from tests.apps import Deployment
from tests.frames import NIGHT_1, real_frames


@pytest.fixture
def s3_site(tmp_path, s3_server):
    d = Deployment(tmp_path / "crowdsky", {
        "CROWDSKY_BUFFER_URL": s3_server.url(),
        "CROWDSKY_BUFFER_USER": s3_server.credentials.user,
        "CROWDSKY_BUFFER_PASSWORD": s3_server.credentials.secret,
    })
    d.start_app()
    yield d
    d.stop_app()
    s3_server.start()


def test_s3_down_during_upload_answers_503_and_the_same_upload_succeeds_later(s3_site, s3_server):
    owner = s3_site.user("patient")
    session = owner.new_session()
    frame = real_frames(NIGHT_1)[0]
    s3_server.kill()
    refused = owner.put_frame(session, frame.name, frame.read_bytes())
    assert refused.status_code == 503, refused.text
    assert "unavailable" in refused.json()["error"]
    assert owner.get(f"/api/v1/sessions/{session}").json()["frames"] == []
    ready = owner.get("/readyz")
    assert ready.status_code == 503 and ready.json()["buffer"] != "ok"

    s3_server.start()
    accepted = owner.put_frame(session, frame.name, frame.read_bytes())
    assert accepted.status_code == 201, accepted.text
    assert len(owner.get(f"/api/v1/sessions/{session}").json()["frames"]) == 1
    assert owner.get("/readyz").status_code == 200
