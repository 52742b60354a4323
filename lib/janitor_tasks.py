"""The janitor's tasks. Each runs on its own, is safe to repeat, and returns what it did."""
from __future__ import annotations

import logging

from lib import gallery, groups, pictures, queue, stacks, uploads
from lib.db import now
from lib.storage import StorageError, delete_quietly

log = logging.getLogger("crowdsky.janitor")


def expire_sessions(svc) -> list[int]:
    """Upload sessions left open longer than the setting: their raws go, nobody will stack them."""
    db, buffer = svc.db, svc.buffer
    cutoff = now() - svc.settings.session_expire_hours * 3600
    expired = []
    for session in list(db["upload_sessions"].find(status=uploads.OPEN)):
        if session["updated_at"] >= cutoff:
            continue
        frames = list(db["frames"].find(session_id=session["id"]))
        for frame in frames:
            try:
                buffer.delete(frame["buffer_key"])
            except StorageError as exc:      # try again next run; the rows stay until then
                log.warning("session %s: cannot delete %s yet: %s", session["id"], frame["buffer_key"], exc)
                break
        else:
            with db as tx:
                tx["frames"].delete(session_id=session["id"])
                tx["chunks"].delete(session_id=session["id"])
                tx["upload_sessions"].update({"id": session["id"], "status": uploads.EXPIRED,
                                              "updated_at": now()}, ["id"])
            expired.append(session["id"])
            log.info("expired upload session %s (%d raw frames deleted)", session["id"], len(frames))
    return expired


def requeue_dead_leases(db) -> list[int]:
    """Jobs whose stacker stopped heartbeating go back to the queue (or fail when out of attempts)."""
    jobs = queue.requeue_expired(db)
    for job_id in jobs:
        log.info("job %s: lease expired, returned to the queue", job_id)
    return jobs


def drop_unstackable_raws(svc) -> list[int]:
    """Raws of failed jobs nobody retried within the retention period: nobody will stack them."""
    cutoff = now() - svc.settings.raw_retention_days * 86400
    rows = svc.db.query(
        "SELECT f.id, f.buffer_key FROM frames f JOIN jobs j ON j.chunk_id = f.chunk_id "
        "WHERE f.status = 'buffered' AND j.status = 'failed' AND j.finished_at < :cutoff", cutoff=cutoff)
    dropped = []
    for row in list(rows):
        try:
            svc.buffer.delete(row["buffer_key"])
        except StorageError as exc:
            log.warning("cannot delete %s yet: %s", row["buffer_key"], exc)
            continue
        svc.db["frames"].update({"id": row["id"], "status": "discarded"}, ["id"])
        dropped.append(row["id"])
    return dropped


def prune_thumbnails(svc) -> list[str]:
    """Cached gallery thumbnails of previews no stack shows any more (on this machine's DATA_DIR)."""
    return gallery.prune_thumbnails(svc.db, gallery.thumbnail_cache(svc.settings))


def prune_renditions(svc) -> list[str]:
    """Cached stretch-control renditions (~4.5 MB each, on this machine's DATA_DIR) of stacks deleted or
    restacked, unused for 30 days, or half-written."""
    return pictures.prune_renditions(svc.db, pictures.rendition_cache(svc.settings))


def reconcile(svc, grace_s: float = 3600.0) -> dict:
    """Make rows and objects agree again, for anything older than *grace_s*.

    Objects with no row (an upload or a stacker that died between writing and recording) and
    half-written temporary files (a process killed mid-upload) are deleted; rows whose object is gone (lost outside CrowdSky) are reported and removed, so nothing
    points at missing data. Running it twice changes nothing the second time.
    """
    db, cutoff = svc.db, now() - grace_s
    report = {"buffer_orphans": [], "archive_orphans": [], "frames_without_raw": [], "stacks_without_fits": [],
              "partial_uploads": []}

    # Half-written temporary files of a process killed mid-write: no key, so no listing shows them.
    # Their time is the last write, so one still being written is never taken.
    for store in (svc.buffer, svc.archive):
        for name, written in list(store.leftovers()):
            if written < cutoff:
                store.delete_leftover(name)
                report["partial_uploads"].append(f"{store.role}:{name}")

    known_raws = {r["buffer_key"] for r in db.query("SELECT buffer_key FROM frames WHERE status = 'buffered'")}
    for key in list(svc.buffer.list("raw/")):
        made = uploads.raw_key_time(key)
        if key not in known_raws and (made is None or made < cutoff):
            svc.buffer.delete(key)
            report["buffer_orphans"].append(key)
    for frame in list(db.query("SELECT id, buffer_key FROM frames WHERE status = 'buffered' "
                               "AND created_at < :cutoff", cutoff=cutoff)):
        if not svc.buffer.exists(frame["buffer_key"]):
            db["frames"].update({"id": frame["id"], "status": "missing"}, ["id"])
            report["frames_without_raw"].append(frame["id"])

    known_outputs = set()
    for stack in db.query("SELECT fits_key, preview_key FROM stacks"):
        known_outputs.update((stack["fits_key"], stack["preview_key"]))
    for key in list(svc.archive.list("stacks/")):
        if key in known_outputs:
            continue
        job = _job_of_output(db, key)
        if job is None or (job["status"] != "running" and (job["finished_at"] or job["created_at"]) < cutoff):
            svc.archive.delete(key)
            report["archive_orphans"].append(key)
    # A deep or crowd stack being rebuilt has no file yet (fits_key NULL): nothing is missing.
    for stack in list(db.query("SELECT id FROM stacks WHERE created_at < :cutoff AND fits_key IS NOT NULL",
                               cutoff=cutoff)):
        stack = db["stacks"].find_one(id=stack["id"])
        if stack is None or not stack["fits_key"] or svc.archive.exists(stack["fits_key"]):
            continue
        with db as tx:
            groups.lock(tx)
            if stack["kind"] == stacks.CHUNK:       # it leaves its groups, which are rebuilt without it
                stale = groups.remove_chunk_stack(tx, dict(stack), svc.settings)
                if stack["job_id"]:
                    tx["jobs"].update({"id": stack["job_id"], "stack_id": None, "status": "failed",
                                       "error": "the stack's FITS file disappeared from the archive"}, ["id"])
            else:                                   # rebuilt from its chunk stacks
                stale = groups.rebuild(tx, dict(stack), None, svc.settings)
        delete_quietly(svc.archive, [k for k in stale if k != stack["fits_key"]])
        report["stacks_without_fits"].append(stack["id"])

    for kind, items in report.items():
        if items:
            log.warning("reconcile: %d %s: %s", len(items), kind.replace("_", " "), items[:20])
    return {kind: len(items) for kind, items in report.items()}


def _job_of_output(db, key: str) -> dict | None:
    """The job an archive key ``stacks/<kind>/<job id>/<lease>/...`` belongs to."""
    parts = key.split("/")
    if len(parts) < 4 or not parts[2].isdigit():
        return None
    return db["jobs"].find_one(id=int(parts[2]))
