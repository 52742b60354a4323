"""Deep stacks (one owner's chunk stacks of one pointing) and crowd stacks (every sharing owner's).

A group is a row of ``stacks`` with kind ``deep`` or ``crowd``; what went into it is listed in
``contributions``. Every new chunk stack is planned into its owner's deep stack and, if the owner
shares, into the crowd stack of that patch of sky, each as a job of its own on the same queue:
the job adds the one new chunk stack to the group's running sum and weight (``lib.stacking.deep``),
so nothing is ever rescanned.

Two jobs may update one group at the same time; each writes its result under its own lease's keys
and commits only if the group is still at the version it started from (``version`` column), so one
of them wins and the other is retried on the new version. Nothing is lost, nothing added twice.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import sqlalchemy as sa
from astropy.io import fits

from lib import chunks, queue, stacks
from lib.db import now
from lib.stacking.options import StackingError
from lib.storage import delete_quietly


DEEP, CROWD = stacks.DEEP, stacks.CROWD
GROUP_RADIUS_DEG = 0.5          # chunk stack centres this close are one target
GROUP_LOCK = "groups"           # serialises the creation of groups (see _find_or_create)


class GroupConflict(Exception):
    """The group moved on while this job worked; the job is retried on the new version."""


class NotShared(StackingError):
    """A crowd update for an owner who stopped sharing: dropped for good, not retried."""


def plan(tx, stack_id: int, settings) -> list[int]:
    """Queue the deep (and, when the owner shares, the crowd) update for a new chunk stack.

    Runs inside the transaction that records the chunk stack, so either both happen or neither.
    """
    stack = tx["stacks"].find_one(id=stack_id)
    owner = tx["users"].find_one(id=stack["owner_id"])
    kinds = [DEEP] + ([CROWD] if owner["share_with_crowd"] else [])
    jobs = []
    for kind in kinds:
        group_id = _find_or_create(tx, kind, stack)
        job_id = queue.enqueue(tx, kind=kind, chunk_id=stack["chunk_id"], owner_id=stack["owner_id"],
                               max_attempts=settings.max_attempts)
        tx["jobs"].update({"id": job_id, "payload": json.dumps({"group": group_id, "source": stack_id})}, ["id"])
        jobs.append(job_id)
    return jobs


def _find_or_create(tx, kind: str, stack: dict) -> int:
    """The group of *kind* whose centre is nearest the stack's, within GROUP_RADIUS_DEG, or a new one."""
    # Taking the lock row first makes concurrent planners queue up here, so two chunk stacks of one
    # new target cannot open two groups.
    tx.query("UPDATE locks SET taken_at = :now WHERE name = :name", now=now(), name=GROUP_LOCK)
    owner = stack["owner_id"] if kind == DEEP else None
    rows = tx.query("SELECT id, ra, dec, filter FROM stacks WHERE kind = :kind AND dec BETWEEN :lo AND :hi"
                    + (" AND owner_id = :owner" if owner is not None else ""),
                    kind=kind, lo=stack["dec"] - GROUP_RADIUS_DEG, hi=stack["dec"] + GROUP_RADIUS_DEG, owner=owner)
    best, best_distance = None, GROUP_RADIUS_DEG
    for row in rows:
        if row["filter"] != stack["filter"]:      # IRCUT and LP frames are different data: never one sum
            continue
        distance = chunks.separation_deg(row["ra"], row["dec"], stack["ra"], stack["dec"])
        if distance <= best_distance:
            best, best_distance = row["id"], distance
    if best is not None:
        return best
    return tx["stacks"].insert({
        "kind": kind, "owner_id": owner, "object": stack["object"], "telescope": None,
        "chunk_key": chunks.healpix_label(stack["ra"], stack["dec"]), "ra": stack["ra"], "dec": stack["dec"],
        "frames": 0, "frames_rejected": 0, "exposure_s": 0.0, "version": 0, "nights": 0, "owners": 0,
        "created_at": now(), "filter": stack["filter"]})


def inputs(db, job: dict) -> list[dict]:
    """What a group job reads: the group's current state (if it has one) and the new chunk stack."""
    payload = json.loads(job["payload"])
    group = db["stacks"].find_one(id=payload["group"])
    if payload.get("rebuild"):
        return [{"id": f"source-{s['id']}", "filename": f"stack-{s['id']}.fits", "store": "archive",
                 "key": s["fits_key"], "size": s["fits_size"]} for s in contributing_stacks(db, group["id"])]
    source = db["stacks"].find_one(id=payload["source"])
    if source is None:
        raise GroupConflict(f"stack {payload['source']} no longer exists")
    found = []
    if group["fits_key"]:
        found.append({"id": "group", "filename": "group.fits", "store": "archive", "key": group["fits_key"],
                      "size": group["fits_size"]})
    found.append({"id": "source", "filename": f"stack-{source['id']}.fits", "store": "archive",
                  "key": source["fits_key"], "size": source["fits_size"]})
    return found


def complete_group_job(db, archive, lease, fits_path, preview_path) -> int | None:
    """Record a group's new version: its files, its totals and the contribution just added."""
    payload = json.loads(lease.job["payload"])
    group = db["stacks"].find_one(id=payload["group"])
    source = db["stacks"].find_one(id=payload["source"]) if "source" in payload else None
    if group is None or ("source" in payload and source is None):
        raise GroupConflict("the group or the stack to add was deleted meanwhile")
    fits_key, preview_key = stacks.archive_keys(group["kind"], lease.job_id, lease.token)
    with open(fits_path, "rb") as f:
        fits_size = archive.put(fits_key, f)
    with open(preview_path, "rb") as f:
        archive.put(preview_key, f)
    header = fits.getheader(fits_path)
    sky = stacks.sky_columns(header)             # its WCS, objects and filter, stored with the new version
    sky.pop("shown_object")
    built_on = int(header["GROUPVER"]) - 1       # the version this result was built from
    old_keys = (group["fits_key"], group["preview_key"])

    def record(tx) -> int:
        if source is not None:
            if group["kind"] == CROWD and not tx["users"].find_one(id=source["owner_id"])["share_with_crowd"]:
                raise NotShared(f"the owner of stack {source['id']} stopped sharing; it stays out of the crowd stack")
            tx["contributions"].insert({
                "group_id": group["id"], "source_id": source["id"], "owner_id": source["owner_id"],
                "frames": source["frames"], "exposure_s": source["exposure_s"], "date_beg": source["date_beg"],
                "date_end": source["date_end"], "scale": float(header.get("LASTSCAL", 1.0)), "created_at": now()})
        summary = _totals(tx, group["id"])
        moved = tx.executable.execute(sa.text(
            "UPDATE stacks SET version = :version + 1, fits_key = :fits_key, preview_key = :preview_key, "
            "fits_size = :fits_size, frames = :frames, exposure_s = :exposure, date_beg = :date_beg, "
            "date_end = :date_end, nights = :nights, owners = :owners, noise = :noise, object = :object "
            "WHERE id = :id AND version = :version"), dict(
            fits_key=fits_key, preview_key=preview_key, fits_size=fits_size, frames=summary["frames"],
            exposure=summary["exposure_s"], date_beg=summary["date_beg"], date_end=summary["date_end"],
            nights=summary["nights"], owners=summary["owners"], noise=_float(header.get("BGNOISE")),
            object=group["object"], id=group["id"], version=built_on))
        if moved.rowcount != 1:
            raise GroupConflict(f"{group['kind']} stack {group['id']} changed while this job worked")
        tx["stacks"].update({"id": group["id"], **sky}, ["id"])
        return group["id"]

    try:
        group_id = queue.complete(db, lease, record)
    except GroupConflict:
        delete_quietly(archive, (fits_key, preview_key))
        raise
    if group_id is None:
        delete_quietly(archive, (fits_key, preview_key))
        return None
    delete_quietly(archive, [k for k in old_keys if k])
    return group_id


def set_sharing(svc, owner_id: int, share: bool) -> list[int]:
    """Turn an owner's sharing on or off. Off takes their data out of every crowd stack at once:
    those stacks are hidden and their files deleted now, and rebuilt from the other owners'
    contributions by queued jobs. Returns the ids of the rebuild jobs."""
    from lib import accounts
    db = svc.db
    rebuilds, stale = [], []
    with db as tx:
        accounts.set_sharing(tx, owner_id, share)
        if share:
            return []
        tx.query("DELETE FROM jobs WHERE kind = 'crowd' AND owner_id = :owner AND status IN ('pending', 'failed')",
                 owner=owner_id)
        touched = {r["group_id"] for r in tx.query(
            "SELECT DISTINCT c.group_id FROM contributions c JOIN stacks g ON g.id = c.group_id "
            "WHERE c.owner_id = :owner AND g.kind = 'crowd'", owner=owner_id)}
        for group_id in sorted(touched):
            group = tx["stacks"].find_one(id=group_id)
            stale += [k for k in (group["fits_key"], group["preview_key"]) if k]
            tx["contributions"].delete(group_id=group_id, owner_id=owner_id)
            if tx["contributions"].count(group_id=group_id) == 0:
                tx["stacks"].delete(id=group_id)
                continue
            version = (group["version"] or 0) + 1
            tx["stacks"].update({"id": group_id, "fits_key": None, "preview_key": None, "version": version}, ["id"])
            job_id = queue.enqueue(tx, kind=CROWD, chunk_id=None, owner_id=owner_id,
                                   max_attempts=svc.settings.max_attempts)
            tx["jobs"].update({"id": job_id, "payload": json.dumps(
                {"group": group_id, "rebuild": True, "version": version})}, ["id"])
            rebuilds.append(job_id)
    delete_quietly(svc.archive, stale)
    return rebuilds


def _totals(tx, group_id: int) -> dict:
    rows = list(tx["contributions"].find(group_id=group_id))
    nights = {(datetime.fromisoformat(r["date_beg"]) - timedelta(hours=12)).date() for r in rows}
    return {"frames": sum(r["frames"] for r in rows), "exposure_s": sum(r["exposure_s"] for r in rows),
            "date_beg": min(r["date_beg"] for r in rows), "date_end": max(r["date_end"] for r in rows),
            "nights": len(nights), "owners": len({r["owner_id"] for r in rows})}


def credits(db, group_id: int) -> list[dict]:
    """Contributors of a group by user name, with their frames and integration time."""
    rows = db.query(
        "SELECT u.username AS owner, SUM(c.frames) AS frames, SUM(c.exposure_s) AS exposure_s, "
        "COUNT(*) AS chunks FROM contributions c JOIN users u ON u.id = c.owner_id "
        "WHERE c.group_id = :group GROUP BY u.username ORDER BY SUM(c.exposure_s) DESC", group=group_id)
    return [dict(r) for r in rows]


def contributing_stacks(db, group_id: int) -> list[dict]:
    rows = db.query(
        "SELECT s.id, s.chunk_key, s.object, s.frames, s.exposure_s, s.date_beg, s.telescope, s.fits_key, "
        "s.fits_size, u.username AS owner "
        "FROM contributions c JOIN stacks s ON s.id = c.source_id JOIN users u ON u.id = c.owner_id "
        "WHERE c.group_id = :group ORDER BY s.date_beg", group=group_id)
    return [dict(r) for r in rows]


def _float(value):
    return None if value is None else float(value)
