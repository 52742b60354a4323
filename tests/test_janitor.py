"""The janitor: expired sessions lose their raws, dead leases return, rows and objects reconcile."""
from __future__ import annotations

import io
import time

import pytest

from lib import config, janitor_tasks, queue, uploads
from lib.services import Services
from tests.frames import small_frame_bytes


@pytest.fixture
def svc(tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDSKY_DATA_DIR", str(tmp_path))
    return Services.open(config.load())


def upload(svc, owner_id, session_id, seed):
    body = small_frame_bytes(seed=seed)
    return uploads.ingest_frame(svc.db, svc.buffer, svc.settings, owner_id=owner_id, session_id=session_id,
                                filename=f"f{seed}.fit", body=io.BytesIO(body), content_length=len(body)).frame


def owner(svc, name="owner"):
    from lib import accounts
    return accounts.register(svc.db, name, "long enough password")


def test_abandoned_sessions_expire_and_their_raws_go(svc):
    user = owner(svc)
    abandoned, fresh = uploads.create_session(svc.db, user), uploads.create_session(svc.db, user)
    for seed in (1, 2):
        upload(svc, user, abandoned, seed)
    upload(svc, user, fresh, 3)
    svc.db["upload_sessions"].update({"id": abandoned, "updated_at": time.time() - 25 * 3600}, ["id"])

    assert janitor_tasks.expire_sessions(svc) == [abandoned]
    assert svc.db["upload_sessions"].find_one(id=abandoned)["status"] == "expired"
    assert svc.db["frames"].count(session_id=abandoned) == 0
    assert list(svc.buffer.list(f"raw/{user}/{abandoned}/")) == []
    assert len(list(svc.buffer.list(f"raw/{user}/{fresh}/"))) == 1
    assert janitor_tasks.expire_sessions(svc) == []     # idempotent


def test_reconcile_cleans_orphans_both_ways_and_is_idempotent(svc):
    user = owner(svc)
    session = uploads.create_session(svc.db, user)
    kept = upload(svc, user, session, 4)
    lost = upload(svc, user, session, 5)
    lost_key = svc.db["frames"].find_one(id=lost["id"])["buffer_key"]
    svc.buffer.delete(lost_key)                                  # gone behind CrowdSky's back
    hour_ago = time.time() - 3600
    svc.db.query("UPDATE frames SET created_at = :t", t=hour_ago - 10)
    old_orphan = f"raw/{user}/{session}/{int(hour_ago) - 100}-deadbeef.fits"
    new_orphan = f"raw/{user}/{session}/{int(time.time())}-cafebabe.fits"  # an upload in flight
    for key in (old_orphan, new_orphan):
        svc.buffer.put(key, io.BytesIO(b"x" * 100), length=100)
    svc.archive.put("stacks/chunk/999/abc/stack.fits", io.BytesIO(b"y" * 10), length=10)  # no such job

    report = janitor_tasks.reconcile(svc, grace_s=600)
    assert report == {"buffer_orphans": 1, "archive_orphans": 1, "frames_without_raw": 1, "stacks_without_fits": 0,
                      "partial_uploads": 0}
    assert not svc.buffer.exists(old_orphan) and svc.buffer.exists(new_orphan)
    assert svc.db["frames"].find_one(id=lost["id"])["status"] == "missing"
    assert svc.db["frames"].find_one(id=kept["id"])["status"] == "buffered"
    assert not svc.archive.exists("stacks/chunk/999/abc/stack.fits")

    again = janitor_tasks.reconcile(svc, grace_s=600)
    assert again == {"buffer_orphans": 0, "archive_orphans": 0, "frames_without_raw": 0, "stacks_without_fits": 0,
                     "partial_uploads": 0}


def test_dead_lease_returns_to_the_queue(svc):
    job = queue.enqueue(svc.db, kind="chunk", chunk_id=None, owner_id=1, max_attempts=3)
    lease = queue.claim(svc.db, "doomed", lease_seconds=0.01)
    assert lease.job_id == job
    time.sleep(0.05)
    assert janitor_tasks.requeue_dead_leases(svc.db) == [job]
    assert queue.get(svc.db, job)["status"] == "pending"
    assert janitor_tasks.requeue_dead_leases(svc.db) == []


def test_janitor_once_runs_every_task(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "CROWDSKY_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "janitor.py", "--once"], env=env, capture_output=True, text=True,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]), timeout=120)
    assert done.returncode == 0, done.stderr
    for task in ("expire-sessions", "requeue-dead-leases", "drop-unstackable-raws", "reconcile", "prune-thumbnails",
                 "prune-renditions"):
        assert f'"{task}: ' in done.stderr


def test_thumbnails_no_stack_shows_are_pruned(svc):
    import os

    from lib import gallery
    cache = gallery.thumbnail_cache(svc.settings)
    cache.mkdir(parents=True)
    stack_id = svc.db["stacks"].insert({"kind": "chunk", "preview_key": "stacks/chunk/1/a/preview.png"})
    shown = cache / gallery.thumbnail_name({"id": stack_id, "preview_key": "stacks/chunk/1/a/preview.png"})
    restacked = cache / gallery.thumbnail_name({"id": stack_id, "preview_key": "stacks/chunk/1/old/preview.png"})
    deleted = cache / gallery.thumbnail_name({"id": stack_id + 1, "preview_key": "stacks/chunk/2/a/preview.png"})
    half_written = cache / "tmp123.part"
    just_written = cache / gallery.thumbnail_name({"id": stack_id + 2, "preview_key": "stacks/chunk/3/a/preview.png"})
    an_hour_ago = time.time() - 3700
    for path in (shown, restacked, deleted, half_written, just_written):
        path.write_bytes(b"jpeg")
        if path is not just_written:
            os.utime(path, (an_hour_ago, an_hour_ago))

    assert sorted(janitor_tasks.prune_thumbnails(svc)) == sorted([restacked.name, deleted.name, half_written.name])
    assert shown.exists() and just_written.exists()       # in use; too new to judge
    assert janitor_tasks.prune_thumbnails(svc) == []


def test_renditions_of_stacks_gone_or_unused_are_pruned_by_the_janitor(svc):
    import os

    from lib import pictures
    cache = pictures.rendition_cache(svc.settings)
    cache.mkdir(parents=True)
    stack_id = svc.db["stacks"].insert({"kind": "chunk", "fits_key": "stacks/chunk/1/a/stack.fits"})
    unused_id = svc.db["stacks"].insert({"kind": "chunk", "fits_key": "stacks/chunk/4/a/stack.fits"})
    in_use = cache / pictures.rendition_name({"id": stack_id, "fits_key": "stacks/chunk/1/a/stack.fits"})
    restacked = cache / pictures.rendition_name({"id": stack_id, "fits_key": "stacks/chunk/1/old/stack.fits"})
    deleted = cache / pictures.rendition_name({"id": unused_id + 1, "fits_key": "stacks/chunk/2/a/stack.fits"})
    unused = cache / pictures.rendition_name({"id": unused_id, "fits_key": "stacks/chunk/4/a/stack.fits"})
    half_written = cache / "tmp123.part"
    just_written = cache / pictures.rendition_name({"id": unused_id + 2, "fits_key": "stacks/chunk/3/a/stack.fits"})
    an_hour_ago, a_month_ago = time.time() - 3700, time.time() - 31 * 86400
    for path, when in ((in_use, an_hour_ago), (restacked, an_hour_ago), (deleted, an_hour_ago),
                       (unused, a_month_ago), (half_written, an_hour_ago), (just_written, None)):
        path.write_bytes(b"{}\n")
        if when:
            os.utime(path, (when, when))

    pruned = janitor_tasks.prune_renditions(svc)
    assert sorted(pruned) == sorted([restacked.name, deleted.name, unused.name, half_written.name])
    assert sorted(p.name for p in cache.iterdir()) == sorted([in_use.name, just_written.name])
    assert janitor_tasks.prune_renditions(svc) == []
