"""Deep stacks (one owner's chunk stacks of one pointing) and crowd stacks (every sharing owner's).

A group is a row of ``stacks`` with kind ``deep`` or ``crowd``. It is a function of its sources:

- *members*: the chunk stacks that belong in it now. A chunk stack names its deep stack in
  ``deep_id`` and, while its owner shares, its crowd stack in ``crowd_id`` (NULL otherwise). Every
  change of membership happens in the transaction of the change that causes it (a new chunk stack,
  a deleted one, sharing turned on or off) under the ``groups`` lock row, so membership always
  says "the current stacks of owners sharing now".
- *contributions*: the chunk stacks summed in the group's current file (the file lists them too,
  in its SOURCES table). Contribution rows reference chunk stacks by id with a foreign key, and
  ids are never reused (lib/db.py AUTOINCREMENT), so a contribution can never name a stranger's stack.

A *group job* (kind ``deep`` or ``crowd``) brings the file to its members: it adds the members the
file lacks to it, or, when the file holds a stack that is no longer a member (or there is no file),
builds it anew from the members. Jobs name only their group, never a source, so nothing a job
carries can go stale; at most one job per group waits in the queue at a time.

Removing a source (its chunk stack deleted, its owner no longer sharing, or it not registering onto
the grid) is recorded in the same transaction as its cause: the membership goes, and a group whose
file holds that source is hidden at once (file deleted, contributions cleared) and a job queued to
rebuild it from the rest. A group left without members is deleted with its jobs.

A result commits only if it holds nothing that is no longer a member and everything already
committed that still is (checked under a row lock on the group); otherwise the job is retried on
the new state. So updates racing each other or a removal lose nothing and leak nothing.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import sqlalchemy as sa
from astropy.io import fits

from lib import atlas, chunks, queue, stacks
from lib.db import now
from lib.stacking.group_files import file_sources
from lib.storage import delete_quietly


DEEP, CROWD = stacks.DEEP, stacks.CROWD
MEMBERSHIP = {DEEP: "deep_id", CROWD: "crowd_id"}     # the chunk stack column naming its group
GROUP_RADIUS_DEG = 0.5          # chunk stack centres this close are one target
GROUP_LOCK = "groups"           # serialises membership changes (see module docstring)


class GroupConflict(Exception):
    """The group moved on while this job worked; the job is retried on the new state."""


# --- changes of membership (each inside the caller's transaction) ------------------------------

def lock(tx) -> None:
    """Take the ``groups`` lock row: planners, deletes and sharing changes queue up here, so two
    of them never decide on the same group from different pictures of it."""
    tx.query("UPDATE locks SET taken_at = :now WHERE name = :name", now=now(), name=GROUP_LOCK)


def plan(tx, stack_id: int, settings) -> list[int]:
    """Make a new chunk stack a member of its owner's deep stack and, if the owner shares now, of
    the crowd stack of that patch of sky; queue their updates. Returns the job ids.

    Runs inside the transaction that records the chunk stack, so either both happen or neither.
    """
    lock(tx)
    stack = tx["stacks"].find_one(id=stack_id)
    owner = tx["users"].find_one(id=stack["owner_id"])       # read under the lock: sharing now
    kinds = [DEEP] + ([CROWD] if owner["share_with_crowd"] else [])
    return [_join(tx, kind, stack, stack["owner_id"], settings) for kind in kinds]


def _join(tx, kind: str, stack: dict, job_owner: int, settings) -> int:
    group_id = _find_or_create(tx, kind, stack)
    tx["stacks"].update({"id": stack["id"], MEMBERSHIP[kind]: group_id}, ["id"])
    return ensure_job(tx, kind, group_id, job_owner, settings, chunk_id=stack["chunk_id"])


def _find_or_create(tx, kind: str, stack: dict) -> int:
    """The group of *kind* whose centre is nearest the stack's, within GROUP_RADIUS_DEG, or a new one."""
    owner = stack["owner_id"] if kind == DEEP else None
    # Through dataset, which quotes column names: DEC is a reserved word on MariaDB.
    near = {"kind": kind, "dec": {"between": [stack["dec"] - GROUP_RADIUS_DEG, stack["dec"] + GROUP_RADIUS_DEG]}}
    if owner is not None:
        near["owner_id"] = owner
    rows = tx["stacks"].find(**near)
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


def ensure_job(tx, kind: str, group_id: int, owner_id: int, settings, chunk_id: int | None = None) -> int:
    """A pending job that will bring the group up to date: the one already waiting, or a new one.
    (A job already running may have read the group before this change, so it does not count.)"""
    waiting = tx["jobs"].find_one(group_id=group_id, status="pending")
    if waiting is not None:
        return waiting["id"]
    job_id = queue.enqueue(tx, kind=kind, chunk_id=chunk_id, owner_id=owner_id,
                           max_attempts=settings.max_attempts)
    tx["jobs"].update({"id": job_id, "group_id": group_id, "payload": json.dumps({"group": group_id})}, ["id"])
    return job_id


def remove_chunk_stack(tx, stack: dict, settings) -> list[str]:
    """Take a chunk stack out of its groups and delete its rows; returns archive keys to delete
    once the transaction has committed (its own files and those of groups hidden by it)."""
    lock(tx)
    stale = [k for k in (stack["fits_key"], stack["preview_key"]) if k]
    touched = {stack[c] for c in MEMBERSHIP.values() if stack[c]}
    touched |= {r["group_id"] for r in tx["contributions"].find(source_id=stack["id"])}
    tx["stacks"].update({"id": stack["id"], "deep_id": None, "crowd_id": None}, ["id"])
    for group_id in sorted(touched):
        stale += _after_removal(tx, group_id, {stack["id"]}, stack["owner_id"], settings)
    tx["stack_frames"].delete(stack_id=stack["id"])
    tx["stacks"].delete(id=stack["id"])
    if stack["job_id"]:
        tx["jobs"].update({"id": stack["job_id"], "stack_id": None}, ["id"])
    return stale


def delete_group(tx, group_id: int, settings=None) -> list[str]:
    """Delete a group with its jobs (a stacker working on one finds out at its next heartbeat);
    its members stay, belonging to no group of this kind. Returns archive keys to delete."""
    group = tx["stacks"].find_one(id=group_id)
    if group is None:
        return []
    if group["kind"] == CROWD and group["fits_key"]:       # it was in the atlas: the atlas follows
        shown_by = tx["contributions"].find_one(group_id=group_id)
        atlas.queue_update(tx, settings, shown_by["owner_id"] if shown_by else None)
    tx.query(f"UPDATE stacks SET {MEMBERSHIP[group['kind']]} = NULL WHERE {MEMBERSHIP[group['kind']]} = :g",
             g=group_id)
    tx["contributions"].delete(group_id=group_id)
    tx["jobs"].delete(group_id=group_id)
    tx["stacks"].delete(id=group_id)
    return [k for k in (group["fits_key"], group["preview_key"]) if k]


def _after_removal(tx, group_id: int, removed: set[int], job_owner: int, settings) -> list[str]:
    """After *removed* left the group's members: hide the group if its file holds any of them,
    delete it if no member is left, else make sure a job brings it up to date."""
    group = tx["stacks"].find_one(id=group_id)
    if group is None:
        return []
    if not members(tx, group):
        return delete_group(tx, group_id, settings)
    summed = {r["source_id"] for r in tx["contributions"].find(group_id=group_id)}
    if summed & removed:
        return rebuild(tx, group, job_owner, settings)
    ensure_job(tx, group["kind"], group_id, group["owner_id"] if group["kind"] == DEEP else job_owner, settings)
    return []


def rebuild(tx, group: dict, job_owner: int | None, settings) -> list[str]:
    """Hide the group now (its file, its contributions) and queue the job that builds it anew from
    its members (or delete it, when none is left). Returns the archive keys to delete once committed."""
    remaining = members(tx, group)
    if not remaining:
        return delete_group(tx, group["id"])
    stale = [k for k in (group["fits_key"], group["preview_key"]) if k]
    tx["contributions"].delete(group_id=group["id"])
    tx.query("UPDATE stacks SET fits_key = NULL, preview_key = NULL, fits_size = NULL, "
             "version = version + 1 WHERE id = :g", g=group["id"])
    owner = group["owner_id"] if group["kind"] == DEEP else job_owner
    if owner is None:      # a crowd stack nobody is changing (the janitor found its file gone)
        owner = remaining[0]["owner_id"]
    ensure_job(tx, group["kind"], group["id"], owner, settings)
    if group["kind"] == CROWD and group["fits_key"]:      # hidden: the atlas drops it until rebuilt
        atlas.queue_update(tx, settings, owner)
    return stale


def set_sharing(svc, owner_id: int, share: bool) -> list[int]:
    """Turn an owner's sharing on or off; the crowd stacks follow in the same transaction.

    Off: the owner's chunk stacks leave every crowd stack at once; a crowd stack whose file holds
    any of them is hidden (its files deleted) and rebuilt from the rest by a queued job, one left
    with nobody is deleted. On: every chunk stack of the owner joins the crowd stack of its patch
    of sky. Whatever the order and speed of on and off, the crowd stacks come to hold the stacks
    of the owners sharing now. Returns the ids of the jobs queued (or already waiting).
    """
    from lib import accounts
    db = svc.db
    queued, stale = [], []
    with db as tx:
        lock(tx)
        accounts.set_sharing(tx, owner_id, share)
        own = [dict(r) for r in tx.query(
            "SELECT * FROM stacks WHERE owner_id = :owner AND kind = 'chunk' ORDER BY id", owner=owner_id)]
        if share:
            for stack in own:
                if stack["crowd_id"] is None:
                    queued.append(_join(tx, CROWD, stack, owner_id, svc.settings))
        else:
            touched = {s["crowd_id"] for s in own if s["crowd_id"]}
            touched |= {r["group_id"] for r in tx.query(
                "SELECT DISTINCT c.group_id FROM contributions c JOIN stacks g ON g.id = c.group_id "
                "WHERE c.owner_id = :owner AND g.kind = 'crowd'", owner=owner_id)}
            tx.query("UPDATE stacks SET crowd_id = NULL WHERE owner_id = :owner AND kind = 'chunk'", owner=owner_id)
            for group_id in sorted(touched):
                stale += _after_removal(tx, group_id, {s["id"] for s in own}, owner_id, svc.settings)
                job = tx["jobs"].find_one(group_id=group_id, status="pending")
                if job is not None:
                    queued.append(job["id"])
    delete_quietly(svc.archive, stale)
    return sorted(set(queued))


def members(db, group: dict) -> list[dict]:
    """The chunk stacks that belong in *group* now (for a crowd stack: of owners sharing now)."""
    column = MEMBERSHIP[group["kind"]]
    sql = f"SELECT s.* FROM stacks s JOIN users u ON u.id = s.owner_id WHERE s.{column} = :g AND s.kind = 'chunk'"
    if group["kind"] == CROWD:
        sql += " AND u.share_with_crowd = :true"
    return [dict(r) for r in db.query(sql + " ORDER BY s.id", g=group["id"], true=True)]


# --- group jobs ---------------------------------------------------------------------------------

def inputs(db, job: dict) -> list[dict]:
    """What a group job reads: the group's file and the members it lacks, or (when the file holds a
    stack that is no longer a member, or there is none) every member, to build it anew."""
    group = db["stacks"].find_one(id=json.loads(job["payload"])["group"])
    if group is None:
        raise GroupConflict(f"the stack job {job['id']} was to update no longer exists")
    wanted = members(db, group)
    summed = {r["source_id"] for r in db["contributions"].find(group_id=group["id"])}
    found = []
    if group["fits_key"] and summed <= {s["id"] for s in wanted}:
        found.append({"id": "group", "filename": f"{group['kind']}-{group['id']}.fits", "store": "archive",
                      "key": group["fits_key"], "size": group["fits_size"]})
        wanted = [s for s in wanted if s["id"] not in summed]
    found += [{"id": f"source-{s['id']}", "filename": f"stack-{s['id']}.fits", "store": "archive",
               "key": s["fits_key"], "size": s["fits_size"]} for s in wanted]
    if not found:
        raise GroupConflict(f"{group['kind']} stack {group['id']} has no members")
    return found


def complete_group_job(db, archive, settings, lease, fits_path, preview_path) -> int | None:
    """Record a group's new file, if it still fits the group's members (see module docstring)."""
    group_id = json.loads(lease.job["payload"])["group"]
    summed, refused = file_sources(fits_path)
    header = _header(fits_path)
    sky = stacks.sky_columns(fits.getheader(fits_path))    # its WCS, objects and filter, stored with the new version
    sky.pop("shown_object")
    kind = lease.job["kind"]
    fits_key, preview_key = stacks.archive_keys(kind, lease.job_id, lease.token)
    with open(fits_path, "rb") as f:
        fits_size = archive.put(fits_key, f)
    with open(preview_path, "rb") as f:
        archive.put(preview_key, f)
    stale: list[str] = []

    def record(tx) -> int:
        # The groups lock orders this against every change of membership (and so against removals
        # touching this group) on every database, and always in the same order: no deadlocks.
        lock(tx)
        if _execute(tx, "UPDATE stacks SET version = version + 1 WHERE id = :g", g=group_id).rowcount != 1:
            raise GroupConflict(f"{kind} stack {group_id} was deleted meanwhile")
        group = tx["stacks"].find_one(id=group_id)
        wanted = {s["id"]: s for s in members(tx, group)}
        committed = {r["source_id"] for r in tx["contributions"].find(group_id=group_id)}
        if not set(summed) <= set(wanted) or not (committed & set(wanted)) <= set(summed):
            raise GroupConflict(f"{kind} stack {group_id} changed while this job worked")
        for stack_id, reason in refused:        # a failed registration is a recorded removal
            if stack_id in wanted:
                tx["stacks"].update({"id": stack_id, MEMBERSHIP[kind]: None}, ["id"])
        if refused:
            said = "; ".join(f"stack {i}: {reason}" for i, reason in refused)
            tx["jobs"].update({"id": lease.job_id, "message": f"kept out of the {kind} stack: {said}"[:255]}, ["id"])
        tx["contributions"].delete(group_id=group_id)
        scales = header["scales"]
        for stack_id in summed:
            source = wanted[stack_id]
            tx["contributions"].insert({
                "group_id": group_id, "source_id": stack_id, "owner_id": source["owner_id"],
                "frames": source["frames"], "exposure_s": source["exposure_s"], "date_beg": source["date_beg"],
                "date_end": source["date_end"], "scale": scales[stack_id], "created_at": now()})
        totals = _totals(tx, group_id)
        tx["stacks"].update({
            "id": group_id, "fits_key": fits_key, "preview_key": preview_key, "fits_size": fits_size,
            "frames": totals["frames"], "exposure_s": totals["exposure_s"], "date_beg": totals["date_beg"],
            "date_end": totals["date_end"], "nights": totals["nights"], "owners": totals["owners"],
            "noise": header["noise"], "fwhm_px": header["fwhm"], "telescope": header["telescope"][:64],
            "instrument": header["instrument"][:255], **sky}, ["id"])
        stale.extend(k for k in (group["fits_key"], group["preview_key"]) if k)
        if set(wanted) - set(summed) - {i for i, _ in refused}:
            ensure_job(tx, kind, group_id, lease.job["owner_id"], settings)     # members that came meanwhile
        if kind == CROWD:
            atlas.queue_update(tx, settings, lease.job["owner_id"])     # the atlas follows the crowd stack
        return group_id

    try:
        group_id = queue.complete(db, lease, record)
    except GroupConflict:
        delete_quietly(archive, (fits_key, preview_key))
        raise
    if group_id is None:
        delete_quietly(archive, (fits_key, preview_key))
        return None
    delete_quietly(archive, stale)
    return group_id


def _header(fits_path) -> dict:
    with fits.open(fits_path, memmap=False) as hdul:
        h = hdul[0].header
        table = hdul["SOURCES"].data
        return {"scales": {int(r["ID"]): float(r["SCALE"]) for r in table},
                "noise": _float(h.get("BGNOISE")), "fwhm": _float(h.get("FWHM")),
                "telescope": str(h.get("TELESCOP", "")), "instrument": str(h.get("INSTRUME", ""))}


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
        "SELECT s.id, s.chunk_key, s.object, s.frames, s.exposure_s, s.date_beg, s.telescope, "
        "u.username AS owner "
        "FROM contributions c JOIN stacks s ON s.id = c.source_id JOIN users u ON u.id = c.owner_id "
        "WHERE c.group_id = :group ORDER BY s.date_beg", group=group_id)
    return [dict(r) for r in rows]


def _execute(tx, sql: str, **params):
    return tx.executable.execute(sa.text(sql), params)


def _float(value):
    return None if value is None else float(value)
