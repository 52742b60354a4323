"""Load, bounded: 20 uploaders at once, 20 frames each, into the app on S3 (SeaweedFS) + PostgreSQL.

Every frame is stored exactly once (one row, one object, its own SHA-256), a repeat upload stores
nothing more, and finalize files each uploader's session into one chunk of its 20 frames. Loopback
only; the uploads take a few seconds (under 60 s asserted). Larger numbers: ``bench/load.py``.
"""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests
from sqlalchemy.engine import make_url

from lib.stacking.synthetic import make_session
from tests.apps import Deployment

UPLOADERS = 20
FRAMES = 20
SHAPE = (128, 192)                  # small frames (~55 kB): the test is about concurrency, not bytes
TIME_LIMIT_S = 60


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> list[list[tuple[str, bytes]]]:
    """Each uploader's frames, made once: one synthetic night per uploader, its own seed."""
    root = tmp_path_factory.mktemp("load-frames")
    return [[(p.name, p.read_bytes()) for p in
             make_session(root / f"u{i:02d}", n_frames=FRAMES, shape=SHAPE, seed=1000 + i).paths]
            for i in range(UPLOADERS)]


@pytest.fixture
def load_site(tmp_path, s3_server, _database_servers):
    """The app with its buffer in a fresh bucket and its rows in a fresh PostgreSQL database."""
    postgres = _database_servers.get("postgresql")
    name = _database_servers.next_name()
    postgres.create(name)
    s3_server.start()                              # no-op unless an earlier test left it stopped
    bucket = s3_server.new_bucket()
    d = Deployment(tmp_path / "crowdsky", {
        "CROWDSKY_DATABASE_URL": postgres.url(name),
        "CROWDSKY_BUFFER_URL": s3_server.url(bucket),
        "CROWDSKY_BUFFER_USER": s3_server.credentials.user,
        "CROWDSKY_BUFFER_PASSWORD": s3_server.credentials.secret,
    })
    try:
        d.start_app()
        yield d, bucket, postgres.url(name)
    finally:
        d.stop_app()
        postgres.drop(name)


def rows(database_url: str, sql: str) -> list[tuple]:
    conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        return conn.execute(sql).fetchall()


def test_concurrent_uploaders_store_every_frame_once_and_chunk_it_right(load_site, nights, s3_server):
    d, bucket, database_url = load_site
    users = [d.user(f"uploader{i:02d}") for i in range(UPLOADERS)]

    def upload_night(i: int) -> tuple[int, list[int], int]:
        user = users[i]
        session = user.new_session()
        url = f"{d.url}/api/v1/sessions/{session}/frames/"
        statuses = [user.http.put(url + name, data=body, headers={"Content-Type": "application/fits"},
                                  timeout=TIME_LIMIT_S).status_code for name, body in nights[i]]
        name, body = nights[i][0]                  # the same bytes again: answered, not stored again
        repeat = user.http.put(url + "again-" + name, data=body, headers={"Content-Type": "application/fits"},
                               timeout=TIME_LIMIT_S).status_code
        return session, statuses, repeat

    started = time.monotonic()
    with ThreadPoolExecutor(UPLOADERS) as pool:
        results = list(pool.map(upload_night, range(UPLOADERS), timeout=TIME_LIMIT_S))
    elapsed = time.monotonic() - started
    assert elapsed < TIME_LIMIT_S, f"{UPLOADERS * FRAMES} uploads took {elapsed:.1f} s"
    for session, statuses, repeat in results:
        assert statuses == [201] * FRAMES, (session, Counter(statuses))
        assert repeat == 200

    total = UPLOADERS * FRAMES
    frames = rows(database_url, "SELECT owner_id, session_id, chunk_id, buffer_key, sha256 FROM frames")
    assert len(frames) == total
    assert len({f[4] for f in frames}) == total, "every frame has its own SHA-256"
    keys = {f[3] for f in frames}
    objects = {o.object_name for o in s3_server.minio().list_objects(bucket, prefix="raw/", recursive=True)}
    assert objects == keys and len(objects) == total, "one object per row, no orphans, none missing"
    for owner_id, session_id, _, key, _ in frames:
        assert key.startswith(f"raw/{owner_id}/{session_id}/"), key

    sessions = {session for session, _, _ in results}
    assert len(sessions) == UPLOADERS
    for i, (session, _, _) in enumerate(results):
        jobs = users[i].post(f"/api/v1/sessions/{session}/finalize", timeout=TIME_LIMIT_S).json()["jobs"]
        assert [job["frames"] for job in jobs] == [FRAMES], jobs
    chunks = rows(database_url, "SELECT c.id, c.owner_id, c.session_id, COUNT(f.id), "
                                "COUNT(DISTINCT f.owner_id), COUNT(DISTINCT f.session_id) "
                                "FROM chunks c JOIN frames f ON f.chunk_id = c.id "
                                "GROUP BY c.id, c.owner_id, c.session_id")
    assert len(chunks) == UPLOADERS
    assert {c[2] for c in chunks} == sessions
    for chunk_id, owner_id, session_id, count, owners, session_count in chunks:
        assert (count, owners, session_count) == (FRAMES, 1, 1), chunk_id
    per_session = Counter(f[1] for f in frames)
    assert set(per_session.values()) == {FRAMES}
    jobs = rows(database_url, "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status")
    assert jobs == [("chunk", "pending", UPLOADERS)]

    # The app's own counters agree (Prometheus text format on /metrics).
    metrics = requests.get(d.url + "/metrics", timeout=30).text
    assert f'crowdsky_uploads_total{{result="created"}} {float(total)}' in metrics
    assert f'crowdsky_uploads_total{{result="duplicate"}} {float(UPLOADERS)}' in metrics
    assert f'crowdsky_jobs{{status="pending"}} {float(UPLOADERS)}' in metrics
