"""The janitor's tasks. Each runs on its own, is safe to repeat, and returns what it did."""
from __future__ import annotations

import logging

from lib import queue, uploads
from lib.db import now
from lib.storage import StorageError

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
