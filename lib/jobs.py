"""What happens around a stacking job: its kind, its owner's view of it, finishing, retrying, deleting.

``lib.queue`` knows how jobs are claimed and leased; this module knows what each kind of job
*means* (``KINDS``): what it reads, how it completes, who may retry or delete it, and how it shows
on the status page. An owner deletes *stacks* (chunk or deep, `delete_stack`), or a chunk or import
job with its raws and stack; a deep or crowd job is derived from stacks and is never deleted by hand.
"""
from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from lib import groups, queue, stacks
from lib.storage import delete_quietly



class JobError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def chunk_frames(db, chunk_id: int) -> list[dict]:
    """The frames a chunk job stacks, in the order given to the pipeline."""
    return [dict(r) for r in db["frames"].find(chunk_id=chunk_id, status="buffered", order_by="id")]


def job_inputs(db, job: dict) -> list[dict]:
    """The files a job reads: ``{"id", "filename", "store" ("buffer"/"archive"), "key", "size"}``."""
    return KINDS[job["kind"]].inputs(db, job)


def _raw_inputs(db, job: dict) -> list[dict]:
    return [{"id": f"frame-{f['id']}", "filename": f["filename"], "store": "buffer", "key": f["buffer_key"],
             "size": f["size"]} for f in chunk_frames(db, job["chunk_id"])]


def complete_job(svc, lease, fits_path, preview_path) -> int | None:
    """Record a finished job's result, whatever its kind; None when the lease had been lost."""
    return KINDS[lease.job["kind"]].complete(svc, lease, fits_path, preview_path)


def _complete_group_job(svc, lease, fits_path, preview_path) -> int | None:
    return groups.complete_group_job(svc.db, svc.archive, svc.settings, lease, fits_path, preview_path)


def complete_chunk_job(svc, lease, fits_path, preview_path) -> int | None:
    """Archive a finished chunk stack, record it, and drop the raws it no longer needs.

    Returns the stack id, or None when the lease had been lost (the outputs are then removed again:
    the stacker that took over writes its own). The owner's deep stack (and the crowd's, if the
    owner shares) are queued to take the new stack in, in the same transaction.
    """
    db, buffer, archive = svc.db, svc.buffer, svc.archive
    job = lease.job
    chunk = db["chunks"].find_one(id=job["chunk_id"])
    frames = chunk_frames(db, chunk["id"])
    summary = stacks.read_summary(fits_path)
    if len(summary.verdicts) != len(frames):
        raise JobError(409, f"the stack lists {len(summary.verdicts)} frames but the chunk has {len(frames)}")
    fits_key, preview_key = stacks.archive_keys(stacks.CHUNK, job["id"], lease.token)
    with open(fits_path, "rb") as f:
        fits_size = archive.put(fits_key, f)
    with open(preview_path, "rb") as f:
        archive.put(preview_key, f)

    def record(tx) -> int:
        stack_id = stacks.record_chunk_stack(tx, job, chunk, frames, summary, fits_key, preview_key, fits_size)
        groups.plan(tx, stack_id, svc.settings)
        return stack_id

    stack_id = queue.complete(db, lease, record)
    if stack_id is None:
        delete_quietly(archive, [fits_key, preview_key])
        return None
    delete_quietly(buffer, [f["buffer_key"] for f in frames])
    with db as tx:
        for frame in frames:
            tx["frames"].update({"id": frame["id"], "status": "stacked"}, ["id"])
    return stack_id


def complete_atlas_job(svc, lease) -> bool:
    """Mark an atlas job done (its tiles are already in the archive); False when the lease had been lost."""
    recorded = []
    queue.complete(svc.db, lease, lambda tx: recorded.append(True))
    return bool(recorded)


def current_lease(db, job_id: int, token: str | None) -> queue.Lease:
    """The lease a remote stacker presents, if it is still the job's current one."""
    job = db["jobs"].find_one(id=job_id)
    if (job is None or job["status"] != "running" or not token or not job["lease_token"]
            or not hmac.compare_digest(job["lease_token"].encode(), str(token).encode())):
        raise JobError(409, f"the lease on job {job_id} is no longer yours")
    return queue.Lease(job_id=job_id, token=job["lease_token"], job=dict(job), expires=job["lease_expires"])


# --- the owner's view ----------------------------------------------------------------------

def job_view(job: dict) -> dict:
    return {"id": job["id"], "kind": job["kind"], "label": KINDS[job["kind"]].label, "status": job["status"],
            "progress": round(float(job["progress"] or 0.0), 3), "message": job["message"],
            "attempts": job["attempts"], "max_attempts": job["max_attempts"],
            "stack_id": job["stack_id"], "error": owner_error(job["error"])}


_SERVER_PATH = re.compile(r"(?:/[^\s/'\":,;()]+){2,}/?")


def owner_error(error: str | None) -> str | None:
    """A job's error as its owner sees it: one plain sentence. Tracebacks and server paths are
    for the log (the stacker logs them in full); the owner gets the first line, paths cut down
    to their last part."""
    if not error:
        return error
    if "Traceback (most recent call last)" in error:
        last = [line for line in error.strip().splitlines() if line.strip()][-1]
        error = f"the stacker failed unexpectedly ({last.split(':', 1)[0].strip()[:60]}); details are in the server's log"
    line = next((line.strip() for line in error.splitlines() if line.strip()), "")
    line = _SERVER_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], line)
    return line if len(line) <= 300 else line[:297] + "..."


def owned_job(db, owner_id: int, job_id: int) -> dict:
    job = db["jobs"].find_one(id=job_id)
    if job is None or job["owner_id"] != owner_id:
        raise JobError(404, f"no job {job_id}")
    return job


def owner_sessions(db, owner_id: int, limit: int = 50) -> list[dict]:
    """The owner's upload sessions, newest first, each with its chunks and their jobs."""
    sessions = [dict(s) for s in db["upload_sessions"].find(owner_id=owner_id, order_by="-id", _limit=limit)]
    for session in sessions:
        session["chunks"] = []
        for chunk in db["chunks"].find(session_id=session["id"], order_by="id"):
            chunk = dict(chunk)
            chunk["frames"] = db["frames"].count(chunk_id=chunk["id"])
            of_chunk = list(db["jobs"].find(chunk_id=chunk["id"], order_by="id"))
            stacking = [j for j in of_chunk if KINDS[j["kind"]].owner_may_delete]
            chunk["job"] = job_view(stacking[-1]) if stacking else None
            # the deep and crowd stacks the chunk's stack was added to
            chunk["updates"] = [job_view(j) for j in of_chunk if not KINDS[j["kind"]].owner_may_delete]
            session["chunks"].append(chunk)
    return sessions


def retry(db, owner_id: int, job_id: int) -> None:
    job = owned_job(db, owner_id, job_id)
    if job["status"] != "failed":
        raise JobError(409, f"job {job_id} is {job['status']}; only failed jobs can be retried")
    queue.retry(db, job_id)


def delete(svc, owner_id: int, job_id: int) -> None:
    """Delete a chunk or import job that is not running, with its chunk, raws, stack and outputs;
    the stack leaves the deep and crowd stacks it was in (they are rebuilt from the rest)."""
    job = owned_job(svc.db, owner_id, job_id)
    kind = KINDS[job["kind"]]
    if not kind.owner_may_delete:
        raise JobError(409, f"job {job_id} keeps a {job['kind']} stack up to date and cannot be deleted; "
                            f"{kind.instead}")
    if job["status"] == "running":
        raise JobError(409, f"job {job_id} is running; wait for it to finish or fail")
    with svc.db as tx:
        raws, stale = _delete_chunk_job(tx, job, svc.settings)
    delete_quietly(svc.buffer, raws)
    delete_quietly(svc.archive, stale + list(svc.archive.list(f"stacks/{job['kind']}/{job_id}/")))


def _delete_chunk_job(tx, job: dict, settings) -> tuple[list[str], list[str]]:
    """Inside a transaction: a chunk or import job's stack (out of its groups), frames, chunk and
    the job itself. Returns (buffer keys, archive keys) to delete once committed."""
    stale = []
    stack = tx["stacks"].find_one(job_id=job["id"], kind=stacks.CHUNK)
    if stack is not None:
        stale += groups.remove_chunk_stack(tx, dict(stack), settings)
    raws = [f["buffer_key"] for f in tx["frames"].find(chunk_id=job["chunk_id"]) if f["status"] == "buffered"]
    if job["chunk_id"] is not None:
        tx.query("UPDATE jobs SET chunk_id = NULL WHERE chunk_id = :c AND id <> :j AND kind IN ('deep', 'crowd')",
                 c=job["chunk_id"], j=job["id"])
        tx["frames"].delete(chunk_id=job["chunk_id"])
        tx["chunks"].delete(id=job["chunk_id"])
    queue.delete(tx, job["id"])
    return raws, stale


def delete_stack(svc, owner_id: int, stack_id: int) -> None:
    """An owner deletes one of their stacks. A chunk stack goes with its job, chunk and raws, and
    leaves the deep and crowd stacks it was in (hidden at once, rebuilt from the rest, deleted when
    nothing is left). A deep stack goes alone: its chunk stacks stay, in no deep stack."""
    stack = svc.db["stacks"].find_one(id=stack_id)
    if stack is None or (stack["owner_id"] != owner_id and stack["kind"] != stacks.CROWD):
        raise JobError(404, f"no stack {stack_id}")
    if stack["kind"] == stacks.CROWD:
        raise JobError(409, f"stack {stack_id} is a crowd stack, everyone's; turn sharing off to take "
                            "your stacks out of it, or delete your chunk stacks")
    with svc.db as tx:
        stack = tx["stacks"].find_one(id=stack_id)
        if stack is None:
            raise JobError(404, f"no stack {stack_id}")
        raws: list[str] = []
        if stack["kind"] == stacks.CHUNK:
            job = tx["jobs"].find_one(id=stack["job_id"]) if stack["job_id"] else None
            if job is not None:
                raws, stale = _delete_chunk_job(tx, dict(job), svc.settings)
            else:
                stale = groups.remove_chunk_stack(tx, dict(stack), svc.settings)
        else:
            groups.lock(tx)
            stale = groups.delete_group(tx, stack_id)
    delete_quietly(svc.buffer, raws)
    delete_quietly(svc.archive, stale)


# --- kinds of job ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """What one kind of job is. *inputs(db, job)* lists what it reads, *complete(svc, lease, fits,
    preview)* records its result; *label* is how it shows on the status page."""
    name: str
    queued_by: str
    needs: str
    makes: str
    label: str
    inputs: Callable
    complete: Callable
    owner_may_retry: bool = True
    owner_may_delete: bool = True
    instead: str = ""              # what the owner deletes instead, when the job is not theirs to delete
    direct_only: bool = False      # needs the database and archive itself: never handed to remote stackers


_DERIVED = ("delete the chunk stack (DELETE /api/v1/stacks/<id>) to take it out, or the deep stack itself; "
            "for a crowd stack, turning sharing off takes all your stacks out")
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("chunk", "finalize", "the chunk's raw frames (buffer)", "a chunk stack", "stacking the chunk",
         _raw_inputs, complete_chunk_job),
    Kind("import", "POST /api/upload_stack.php", "one stack made on the telescope (buffer)", "a chunk stack",
         "importing the telescope's stack", _raw_inputs, complete_chunk_job),
    Kind("deep", "a chunk stack made or deleted; a failed registration",
         "the deep stack's file and the chunk stacks it lacks, or all its chunk stacks (archive)",
         "the deep stack's next file", "deep stack", groups.inputs, _complete_group_job,
         owner_may_delete=False, instead=_DERIVED),
    Kind("crowd", "a sharing owner's chunk stack made or deleted; sharing turned on or off",
         "the crowd stack's file and the chunk stacks it lacks, or all its chunk stacks (archive)",
         "the crowd stack's next file", "crowd stack", groups.inputs, _complete_group_job,
         owner_may_delete=False, instead=_DERIVED),
    Kind("atlas", "a crowd stack's file changed (new version, hidden for a rebuild, deleted)",
         "the crowd stacks overlapping the changed tiles (archive)",
         "the changed HiPS tiles of the crowd atlas (archive, hips/crowd/)", "crowd atlas update",
         lambda db, job: [], lambda svc, lease, fits_path, preview_path: complete_atlas_job(svc, lease),
         owner_may_delete=False, direct_only=True,
         instead="the atlas follows the crowd stacks; turn sharing off to take your data out of it"),
)}

# Kinds only a stacker next to the database and archive runs (lib/sql/claim_*.sql skips them for remote ones).
DIRECT_ONLY = tuple(k.name for k in KINDS.values() if k.direct_only)
