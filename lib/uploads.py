"""Upload sessions: frames streamed into the buffer, filed into chunks, finalized into jobs.

A frame's bytes go from the request straight into the buffer under a key the server derives; the
header is read and validated from the first blocks before anything is stored, the length and the
SHA-256 are checked as the rest streams through, and only then is the frame's row written. A frame
that fails any check leaves neither an object nor a row behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import unicodedata
import uuid

import sqlalchemy as sa
from dataclasses import dataclass
from datetime import datetime, timezone

from lib import chunks, queue
from lib.db import now, release, retrying
from lib.storage import delete_quietly
from lib.fitsheader import FrameError, FrameHeader, parse, parse_stack, plausible_time, read_header_bytes

OPEN, FINALIZED, EXPIRED = "open", "finalized", "expired"
_FILENAME = re.compile(r"[^/\\\x00-\x1f]{1,255}")
# Unicode categories a shown name must not hold: controls (DEL, C1 such as U+0085), format
# characters (bidi overrides such as U+202E, zero-width ones), surrogates, private use,
# unassigned, and line/paragraph separators: they hide or reorder what the owner sees.
_INVISIBLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def raw_key(owner_id: int, session_id: int) -> str:
    """Buffer key of a new raw frame. It starts with the Unix time it was made, so the janitor can
    tell an object still being uploaded (no row yet) from one that lost its row long ago."""
    return f"raw/{owner_id}/{session_id}/{int(now())}-{uuid.uuid4().hex}.fits"


def raw_key_time(key: str) -> float | None:
    try:
        return float(key.rsplit("/", 1)[-1].split("-", 1)[0])
    except ValueError:
        return None


class UploadError(Exception):
    """A refused upload request: *status* is the HTTP status, the message is shown to the owner."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_session(db, owner_id: int) -> int:
    t = now()
    return db["upload_sessions"].insert({"owner_id": owner_id, "status": OPEN, "created_at": t,
                                         "updated_at": t, "finalized_at": None})


def get_session(db, owner_id: int, session_id: int) -> dict:
    """The owner's session; someone else's answers exactly like a missing one."""
    row = db["upload_sessions"].find_one(id=session_id)
    if row is None or row["owner_id"] != owner_id:
        raise UploadError(404, f"no upload session {session_id}")
    return row


def check_filename(filename: str) -> str:
    """The owner's file name, kept only to show it back; refused if it could be mistaken for a path."""
    if not _FILENAME.fullmatch(filename or "") or set(filename) <= {"."} or ".." in filename:
        raise UploadError(400, "file name must be 1-255 characters with no '/', '\\', '..' or control characters")
    hidden = sorted({f"U+{ord(c):04X}" for c in filename if unicodedata.category(c) in _INVISIBLE})
    if hidden:
        raise UploadError(400, f"file name must not hold control, format or invisible characters "
                               f"(it has {', '.join(hidden[:5])})")
    if not filename.lower().endswith((".fit", ".fits", ".fts")):
        raise UploadError(400, f"{filename!r} is not a FITS file name (.fit or .fits)")
    return filename


@dataclass
class Ingested:
    frame: dict
    created: bool                  # False: the same bytes were already uploaded by this owner


def ingest_frame(db, buffer, settings, *, owner_id: int, session_id: int, filename: str,
                 body, content_length: int | None) -> Ingested:
    """Stream one frame from *body* (a file-like of *content_length* bytes) into the buffer."""
    session = get_session(db, owner_id, session_id)
    if session["status"] != OPEN:
        raise UploadError(409, f"upload session {session_id} is {session['status']}; start a new one")
    _check_size(settings, filename, content_length)
    with _quota_reserved(db, settings, owner_id, content_length) as reservation:
        head, header = _read_header(filename, body, content_length, parse)

        def record(key, size, sha):
            return _record_frame(db, owner_id, session_id, filename, key, size, sha, header, reservation)
        return _stream_and_record(buffer, raw_key(owner_id, session_id), head, body, content_length, record)


def _check_size(settings, filename, content_length) -> None:
    """The name and the declared length against the limits, before anything is read."""
    check_filename(filename)
    if content_length is None:
        raise UploadError(411, "the upload needs a Content-Length")
    if content_length <= 0:
        raise UploadError(400, "the file is empty")
    if content_length > settings.max_frame_bytes:
        raise UploadError(413, f"the file is {content_length} bytes; the limit per frame is {settings.max_frame_bytes}")


# A reservation older than this is left by a process that died mid-upload: it no longer counts.
RESERVATION_TTL_S = 24 * 3600


@contextlib.contextmanager
def _quota_reserved(db, settings, owner_id: int, nbytes: int):
    """Reserve *nbytes* of the owner's quota for one upload, or refuse it (413).

    Stored frames plus open reservations never pass the quota, however many uploads run at once
    and on whichever database: the check and the reservation happen under a write lock on the
    owner's row (taken by updating it), so a second upload waits for the first's reservation. The
    frame's row takes the reservation's place in the transaction that records it
    (``_record_frame``); any other way out gives it back. Yields the reservation's id.
    """
    # A fresh transaction: one left open by this request's earlier reads would, on MariaDB
    # (REPEATABLE READ), see the quota as it was then, not as the lock below leaves it.
    release(db)
    used, reserved, reservation = retrying(lambda: _reserve(db, settings, owner_id, nbytes))
    if reservation is None:
        # Refused after the transaction ends, not inside it: a rollback makes ``dataset`` forget
        # every table's reflected shape, which races with the other request threads.
        raise UploadError(413, f"this upload would pass your storage quota ({used} of {settings.quota_bytes} "
                               f"bytes used{f', {reserved} in uploads under way' if reserved else ''})")
    try:
        yield reservation
    finally:
        db["quota_reservations"].delete(id=reservation)   # a no-op once the frame's row took its place


def _reserve(db, settings, owner_id: int, nbytes: int) -> tuple[int, int, int | None]:
    """One transaction of _quota_reserved: (bytes used, bytes reserved, the new reservation's id or None)."""
    with db as tx:
        tx.query("UPDATE users SET share_with_crowd = share_with_crowd WHERE id = :owner", owner=owner_id)
        tx.query("DELETE FROM quota_reservations WHERE owner_id = :owner AND created_at < :stale",
                 owner=owner_id, stale=now() - RESERVATION_TTL_S)
        # One statement, so one snapshot: a frame recorded meanwhile (its row in, its reservation
        # out, in one commit) is counted exactly once (two statements may see neither on PostgreSQL).
        row = next(iter(tx.query(
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM frames WHERE owner_id = :owner AND status = 'buffered') AS used, "
            "(SELECT COALESCE(SUM(size), 0) FROM quota_reservations WHERE owner_id = :owner) AS reserved",
            owner=owner_id)))
        used, reserved = int(row["used"]), int(row["reserved"])
        reservation = None
        if used + reserved + nbytes <= settings.quota_bytes:
            reservation = tx["quota_reservations"].insert({"owner_id": owner_id, "size": nbytes, "created_at": now()})
    return used, reserved, reservation


def _read_header(filename, body, content_length, parser):
    """Read and validate the FITS header from the first blocks of the body."""
    try:
        head = read_header_bytes(body, limit=content_length)
        header = parser(head)
    except FrameError as exc:
        raise UploadError(400, f"{filename}: {exc}") from None
    needed = header.header_bytes + header.data_bytes
    if content_length < needed:
        raise UploadError(400, f"{filename}: the file is truncated: its header describes "
                               f"{needed} bytes but the upload has {content_length}")
    return head, header


def _stream_and_record(buffer, key, head, body, content_length, record) -> Ingested:
    """Stream the body into the buffer under *key*, then ``record(key, size, sha256)`` its row.

    Whatever goes wrong after the first byte is stored, the object is removed again, and a
    repeat of bytes already recorded keeps the first copy only.
    """
    reader = _CheckedReader(head, body, content_length)
    try:
        buffer.put(key, reader, length=content_length)
    except EOFError:            # the client stopped sending (the storage stored nothing)
        raise UploadError(400, f"the upload ended after {reader.count} of {content_length} bytes") from None
    try:
        reader.verify_complete()
        result = record(key, reader.count, reader.sha256.hexdigest())
    except BaseException:
        buffer.delete(key)
        raise
    if not result.created:
        buffer.delete(key)
    return result


def _record_frame(db, owner_id, session_id, filename, key, size, sha, header: FrameHeader,
                  reservation: int) -> Ingested:
    existing = db["frames"].find_one(owner_id=owner_id, sha256=sha)
    if existing is not None:
        return Ingested(frame_view(db, existing), created=False)

    def record() -> int:
        with db as tx:
            tx["quota_reservations"].delete(id=reservation)   # the frame's row counts from now on
            # Touching the session row first serialises chunk filing within one session on every
            # database (a row lock on PostgreSQL/MariaDB, the write lock on SQLite), so two frames
            # of one pointing uploaded at the same moment cannot open two chunks.
            # The same statement refuses a frame whose session was finalized while it streamed in:
            # finalize closes the session under the same lock, so a frame is in before or out.
            still_open = tx.executable.execute(sa.text(
                "UPDATE upload_sessions SET updated_at = :now WHERE id = :id AND status = :open"),
                dict(now=now(), id=session_id, open=OPEN)).rowcount
            if still_open != 1:
                raise UploadError(409, f"upload session {session_id} was finalized while {filename} was "
                                       "uploading; it was not stored: upload it into a new session")
            chunk_id = _file_into_chunk(tx, owner_id, session_id, header)
            return tx["frames"].insert({
                "owner_id": owner_id, "session_id": session_id, "chunk_id": chunk_id,
                "buffer_key": key, "sha256": sha, "filename": filename, "size": size,
                "object": header.object, "telescope": header.telescope,
                "instrument": header.instrument, "date_obs": header.date_obs.isoformat(),
                "exptime": header.exptime, "ra": header.ra, "dec": header.dec,
                "bayerpat": header.bayerpat, "width": header.width, "height": header.height,
                "status": "buffered", "created_at": now(), "filter": header.filter,
            })

    try:
        frame_id = retrying(record)
    except sa.exc.IntegrityError:
        # The same bytes arrived twice at once; the unique (owner, sha256) index let one win.
        existing = db["frames"].find_one(owner_id=owner_id, sha256=sha)
        if existing is None:
            raise
        return Ingested(frame_view(db, existing), created=False)
    return Ingested(frame_view(db, db["frames"].find_one(id=frame_id)), created=True)


def ingest_telescope_stack(svc, owner_id: int, *, filename: str, body, content_length: int | None,
                           details: dict) -> dict:
    """A stack made on the telescope: stored in the buffer like a frame, in a session of its own,
    and queued as an ``import`` job that turns it into a CrowdSky stack of this owner's.

    *details* are what the uploader says about it: frames_input, frames_aligned, date_beg, date_end.
    """
    _check_size(svc.settings, filename, content_length)
    with _quota_reserved(svc.db, svc.settings, owner_id, content_length) as reservation:
        return _ingest_telescope_stack(svc, owner_id, filename, body, content_length, details, reservation)


def _ingest_telescope_stack(svc, owner_id, filename, body, content_length, details, reservation) -> dict:
    head, header = _read_header(filename, body, content_length, parse_stack)
    date_obs = header.date_obs
    if date_obs is None and details.get("date_beg"):
        try:
            date_obs = datetime.fromisoformat(details["date_beg"].rstrip("Z")).replace(tzinfo=timezone.utc)
            date_obs = plausible_time(date_obs, "date_obs_start", details["date_beg"])
        except FrameError as exc:
            raise UploadError(400, str(exc)) from None
        except ValueError:
            raise UploadError(400, f"date_obs_start {details['date_beg']!r} is not an ISO-8601 time") from None
    if date_obs is None:
        raise UploadError(400, f"{filename}: DATE-OBS is missing and no date_obs_start was given")
    session_id = create_session(svc.db, owner_id)

    def record(key, size, sha):
        with svc.db as tx:
            tx["quota_reservations"].delete(id=reservation)
            chunk_id = tx["chunks"].insert({
                "owner_id": owner_id, "session_id": session_id,
                "chunk_key": chunks.key_in_telescope_name(filename) or chunks.chunk_key(date_obs, header.ra, header.dec),
                "telescope": header.telescope, "object": header.object, "ra": header.ra, "dec": header.dec,
                "created_at": now()})
            tx["frames"].insert({
                "owner_id": owner_id, "session_id": session_id, "chunk_id": chunk_id, "buffer_key": key,
                "sha256": sha, "filename": filename, "size": size, "object": header.object,
                "telescope": header.telescope, "instrument": header.instrument,
                "date_obs": date_obs.isoformat(), "ra": header.ra, "dec": header.dec,
                "status": "buffered", "created_at": now()})
            tx["upload_sessions"].update({"id": session_id, "status": FINALIZED, "finalized_at": now(),
                                          "updated_at": now()}, ["id"])
            job_id = queue.enqueue(tx, kind="import", chunk_id=chunk_id, owner_id=owner_id,
                                   max_attempts=svc.settings.max_attempts)
            tx["jobs"].update({"id": job_id, "payload": json.dumps(details)}, ["id"])
        return Ingested({"job_id": job_id, "chunk_id": chunk_id}, created=True)

    try:
        ingested = _stream_and_record(svc.buffer, raw_key(owner_id, session_id), head, body,
                                      content_length, record)
    except sa.exc.IntegrityError:
        raise UploadError(409, f"{filename}: you uploaded this very file before") from None
    chunk = svc.db["chunks"].find_one(id=ingested.frame["chunk_id"])
    return {"job_id": ingested.frame["job_id"], "chunk_key": chunk["chunk_key"]}


def _file_into_chunk(tx, owner_id: int, session_id: int, header: FrameHeader) -> int:
    rows = list(tx["chunks"].find(session_id=session_id, telescope=header.telescope))
    candidates = [chunks.OpenChunk(r["id"], r["telescope"], r["chunk_key"].split("_")[0], r["ra"], r["dec"],
                                   r["filter"]) for r in rows]
    found = chunks.find_chunk(candidates, header.telescope, header.date_obs, header.ra, header.dec, header.filter)
    if found is not None:
        return found.id
    return tx["chunks"].insert({
        "owner_id": owner_id, "session_id": session_id,
        "chunk_key": chunks.chunk_key(header.date_obs, header.ra, header.dec),
        "telescope": header.telescope, "object": header.object,
        "ra": header.ra, "dec": header.dec, "created_at": now(), "filter": header.filter,
    })


def frames_with_sha256(db, owner_id: int, sha256: str) -> list[dict]:
    """The owner's frames with these bytes, from any batch (none or one), so a client can skip
    sending them again."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        raise UploadError(400, "sha256 must be 64 lowercase hexadecimal characters")
    return [frame_view(db, f) for f in db["frames"].find(owner_id=owner_id, sha256=sha256)]


def frame_view(db, frame: dict) -> dict:
    chunk = db["chunks"].find_one(id=frame["chunk_id"])
    return {"id": frame["id"], "session_id": frame["session_id"], "filename": frame["filename"],
            "chunk_key": chunk["chunk_key"] if chunk else None, "object": frame["object"],
            "telescope": frame["telescope"], "date_obs": frame["date_obs"], "exptime": frame["exptime"],
            "ra": frame["ra"], "dec": frame["dec"], "size": frame["size"], "sha256": frame["sha256"],
            "status": frame["status"]}


def stored_bytes(db, owner_id: int) -> int:
    rows = db.query("SELECT COALESCE(SUM(size), 0) AS total FROM frames "
                    "WHERE owner_id = :owner AND status = 'buffered'", owner=owner_id)
    return int(next(iter(rows))["total"])


# What finalize does with a chunk whose key already has a stack of this owner's.
STACK_AGAIN, SKIP_STACKED, REPLACE_STACKED = "stack", "skip", "replace"


def finalize(svc, owner_id: int, session_id: int, *, stacked: str = STACK_AGAIN) -> dict:
    """Close the session and queue one stacking job per chunk, in one transaction.

    Returns ``{"jobs": [...], "skipped": [chunk keys]}``. With SKIP_STACKED, chunks whose key already
    has a stack are not queued and their raws are dropped; with REPLACE_STACKED, those older stacks
    are deleted (and leave their deep and crowd stacks) and the chunk is stacked anew.

    The first statement is a conditional UPDATE of the session: it takes the write lock (SQLite)
    or the row lock (PostgreSQL, MariaDB), so of concurrent finalizes exactly one finds the session
    open and the others answer 409, and a frame being recorded into the session is either in
    before it closes or refused after (see `_record_frame`). Nothing is deleted from storage until
    the transaction has committed; a crash before that leaves the session open and nothing queued.
    """
    from lib import groups
    db = svc.db
    raws, stale = [], []
    with db as tx:
        closed = tx.executable.execute(sa.text(
            "UPDATE upload_sessions SET status = :finalized, finalized_at = :now, updated_at = :now "
            "WHERE id = :id AND owner_id = :owner AND status = :open"),
            dict(finalized=FINALIZED, open=OPEN, now=now(), id=session_id, owner=owner_id)).rowcount
        if closed != 1:
            session = get_session(tx, owner_id, session_id)
            raise UploadError(409, f"upload session {session_id} is already {session['status']}")
        chunk_rows = list(tx["chunks"].find(session_id=session_id, order_by="id"))
        if not chunk_rows:
            raise UploadError(400, f"upload session {session_id} has no frames to stack")
        jobs, skipped = [], []
        for chunk in chunk_rows:
            earlier = [dict(s) for s in tx["stacks"].find(owner_id=owner_id, chunk_key=chunk["chunk_key"],
                                                          kind="chunk")]
            if earlier and stacked == SKIP_STACKED:
                skipped.append(chunk["chunk_key"])
                raws += [f["buffer_key"] for f in tx["frames"].find(chunk_id=chunk["id"])]
                tx["frames"].delete(chunk_id=chunk["id"])
                tx["chunks"].delete(id=chunk["id"])
                continue
            if earlier and stacked == REPLACE_STACKED:
                for stack in earlier:
                    stale += groups.remove_chunk_stack(tx, stack, svc.settings)
            job_id = queue.enqueue(tx, kind="chunk", chunk_id=chunk["id"], owner_id=owner_id,
                                   max_attempts=svc.settings.max_attempts)
            jobs.append({"id": job_id, "chunk_key": chunk["chunk_key"],
                         "frames": tx["frames"].count(chunk_id=chunk["id"]), "status": "pending"})
    delete_quietly(svc.buffer, raws)
    delete_quietly(svc.archive, stale)
    return {"jobs": jobs, "skipped": skipped}


class _CheckedReader(io.RawIOBase):
    """The upload body as the buffer reads it: the header already read, then the rest, hashed.

    Reads stop at the declared length; a body that ends early is caught by ``verify_complete``.
    """

    def __init__(self, head: bytes, rest, length: int):
        self._head, self._rest, self._length = head, rest, length
        self._head_pos = 0
        self.sha256 = hashlib.sha256(head)
        self.count = len(head)       # bytes taken from the body so far, header included

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._length
        if self._head_pos < len(self._head):
            data = self._head[self._head_pos:self._head_pos + size]
            self._head_pos += len(data)
            return data
        remaining = self._length - self.count
        if remaining <= 0:
            return b""
        data = self._rest.read(min(size, remaining))
        self.sha256.update(data)
        self.count += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def verify_complete(self) -> None:
        if self.count != self._length:
            raise UploadError(400, f"the upload ended after {self.count} of {self._length} bytes")
