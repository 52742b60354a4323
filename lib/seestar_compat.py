"""The original CrowdSky service's API, as the Seestar community's ``seestarpy`` client speaks it.

A thin translation onto the same upload, chunking and stack code as the JSON API: the client's
raw-upload session token is an upload session id, its chunk keys are CrowdSky's chunk keys, and its
stack listing is the caller's own stacks.
"""
from __future__ import annotations

from lib import uploads
from lib.uploads import UploadError


def stack_listing(db, owner_id: int, object_name: str | None) -> list[dict]:
    """The caller's chunk stacks, newest first, in the field names the client reads (the original
    service had no deep or crowd stacks; their keys are not chunk keys)."""
    sql = "SELECT * FROM stacks WHERE owner_id = :owner AND kind = 'chunk'"
    params = {"owner": owner_id}
    if object_name:
        sql += " AND LOWER(object) = LOWER(:object)"
        params["object"] = object_name.strip()
    rows = db.query(sql + " ORDER BY id DESC", **params)
    return [{"id": r["id"], "chunk_key": r["chunk_key"], "object_name": r["object"],
             "n_frames": r["frames"], "n_frames_rejected": r["frames_rejected"],
             "exposure_s": r["exposure_s"], "date_obs_start": r["date_beg"],
             "date_obs_end": r["date_end"], "telescope": r["telescope"], "kind": r["kind"]}
            for r in rows]


def stack_for_key(db, owner_id: int, chunk_key: str) -> dict:
    """The caller's newest stack with *chunk_key*."""
    row = db["stacks"].find_one(owner_id=owner_id, chunk_key=chunk_key, kind="chunk", order_by="-id")
    if row is None:
        raise UploadError(404, f"you have no stack with chunk key {chunk_key!r}")
    return row


def session_id(token: str | None) -> int:
    if not token or not token.isascii() or not token.isdigit() or len(token) > 18:    # ids are below 2^63
        raise UploadError(400, "session_token is missing or malformed; call action=start first")
    return int(token)


def raw_file(svc, owner_id: int, token: str | None, upload) -> dict:
    """One raw frame from a multipart form field (a spooled temporary file)."""
    body, length = _spooled(upload)
    result = uploads.ingest_frame(svc.db, svc.buffer, svc.settings, owner_id=owner_id,
                                  session_id=session_id(token), filename=upload.raw_filename,
                                  body=body, content_length=length)
    frame = result.frame
    return {"ok": True, "filename": frame["filename"], "chunk_key": frame["chunk_key"],
            "date_obs": frame["date_obs"], "duplicate": not result.created}


def _spooled(upload):
    """(file object, length) of a multipart form file, which Bottle has spooled to memory or disk."""
    if upload is None or not hasattr(upload, "file"):
        raise UploadError(400, "the form has no 'file' field")
    body = upload.file
    body.seek(0, 2)
    length = body.tell()
    body.seek(0)
    return body, length


def _count(form, name: str) -> int | None:
    value = (form.get(name) or "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UploadError(400, f"{name} must be a positive whole number, got {value!r}")
    return int(value)


def upload_stack(svc, owner_id: int, upload, form) -> dict:
    """A stack made on the telescope; queued for post-processing (preview, metadata, location
    removal — always done: CrowdSky never keeps an observer's location, so scrub_location is moot)."""
    body, length = _spooled(upload)
    details = {"frames_input": _count(form, "n_frames_input"), "frames_aligned": _count(form, "n_frames_aligned"),
               "date_beg": form.get("date_obs_start") or None, "date_end": form.get("date_obs_end") or None}
    queued = uploads.ingest_telescope_stack(svc, owner_id, filename=upload.raw_filename, body=body,
                                            content_length=length, details=details)
    return {"ok": True, "job_id": queued["job_id"], "chunk_key": queued["chunk_key"], "status": "queued"}


def raw_finalize(svc, owner_id: int, token: str | None, overwrite: bool) -> dict:
    done = uploads.finalize(svc, owner_id, session_id(token),
                            stacked=uploads.REPLACE_STACKED if overwrite else uploads.SKIP_STACKED)
    return {"ok": True, "jobs": len(done["jobs"]), "job_ids": [j["id"] for j in done["jobs"]],
            "chunks": [j["chunk_key"] for j in done["jobs"]], "skipped": done["skipped"]}


