"""Upload batches as their owner sees them on the status page: numbered per owner (1, 2, 3 … in the
order they were started, whoever else uploads meanwhile), and an empty leftover batch dismissed.

A dismissed batch keeps its row (status ``dismissed``), so later batches keep their numbers and the
upload API refuses new frames into it like into any batch that is no longer open (the upload page
then starts a new one).
"""
from __future__ import annotations

import time

DISMISSED = "dismissed"
IDLE_S = 60.0      # a batch untouched this long is a leftover, not one an upload is about to fill


class BatchError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def numbers(db, owner_id: int) -> dict[int, int]:
    """{session id: the owner's own batch number}, counting every batch they started."""
    rows = db.query("SELECT id FROM upload_sessions WHERE owner_id = :owner ORDER BY id", owner=owner_id)
    return {row["id"]: n for n, row in enumerate(rows, 1)}


def dismiss_empty(db, owner_id: int, session_id: int, now: float | None = None) -> None:
    """Hide the owner's batch if it holds no frame and is open or expired and idle; else BatchError.

    One conditional UPDATE decides, so two requests (or a frame arriving) cannot both win."""
    now = time.time() if now is None else now
    with db as tx:
        changed = tx.query(
            "UPDATE upload_sessions SET status = :dismissed, updated_at = :now "
            "WHERE id = :id AND owner_id = :owner AND status IN ('open', 'expired') AND updated_at < :idle "
            "AND NOT EXISTS (SELECT 1 FROM frames f WHERE f.session_id = :id)",
            dismissed=DISMISSED, now=now, id=session_id, owner=owner_id, idle=now - IDLE_S)
        if changed.result_proxy.rowcount == 1:
            return
    row = db["upload_sessions"].find_one(id=session_id)
    if row is None or row["owner_id"] != owner_id:
        raise BatchError(404, f"no upload batch {session_id}")
    if row["status"] == DISMISSED:
        return
    if db["frames"].count(session_id=session_id):
        raise BatchError(409, f"batch {session_id} has frames; delete its jobs instead")
    if row["status"] not in ("open", "expired"):
        raise BatchError(409, f"batch {session_id} is {row['status']}")
    raise BatchError(409, f"batch {session_id} was used in the last minute; try again shortly")
