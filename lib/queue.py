"""The job queue: rows of the ``jobs`` table handed out to stackers under leases.

States::

    enqueue -> pending --claim--> running --complete--> done
                  ^                  |
                  |                  +--fail--> pending (after a back-off) or failed (attempts used up)
                  +----release-------+          (failed --retry--> pending)
                  +--requeue_expired-+  (lease ran out: pending, or failed when attempts are used up)

Leases. A claim writes a fresh random ``lease_token`` and ``lease_expires`` into the row and hands
both to the stacker as a `Lease`. Every later write by that stacker (heartbeat, complete, fail,
release) is an UPDATE that matches only ``id = ? AND lease_token = ? AND status = 'running'``; when
it matches nothing, the job has been taken away and the stacker must drop it. An expired lease is
still honoured until the janitor's `requeue_expired` takes the job back, so a slow stacker that
comes back in time loses nothing; once the job is requeued (and perhaps claimed by another stacker),
the old token matches nothing, so a stacker that comes back from the dead cannot overwrite the
replacement's work.

Fairness. Each job has a place in line, ``fair_rank``; a claim takes the claimable job with the
lowest rank (ties: lowest id). A job gets its rank when it enters the line (`enqueue`, `retry`): one
past its owner's highest rank still in line (pending or running), but never below the highest rank
any stacker has claimed so far. So one owner's jobs queue behind each other, while different owners'
lines interleave: owner A enqueues 2,000 jobs (ranks 1..2000); owner B, arriving while A's rank 40
is being worked on, gets ranks 40, 41, ... and the next claims go B40, A41, B41, A42, ...: round
robin, one claim per owner per round, whether jobs are claimed in parallel or one at a time. It
costs a few index lookups at enqueue, and keeps a claim a single walk down the (status, fair_rank)
index. Jobs that come back to pending after a failure or an expired lease keep their rank, so they
are retried before newer work. Concurrent enqueues for one owner may share a rank; ids break ties.

Time. Every time the queue stores or compares is Unix seconds from `lib.db.now()`, passed in from
Python, so SQLite, PostgreSQL and MariaDB agree (and tests can move the clock).

Atomic claims. PostgreSQL: one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)
RETURNING *``. MariaDB (no UPDATE ... RETURNING): ``SELECT ... FOR UPDATE SKIP LOCKED`` then
``UPDATE`` in one transaction, at READ COMMITTED like every queue transaction there (`_transaction`
says why). SQLite (one writer at a time, no SKIP LOCKED): a single conditional
``UPDATE ... WHERE id = (SELECT ...) AND status = 'pending' RETURNING *``.

Wake-up. On PostgreSQL, anything that makes a job claimable now sends NOTIFY on ``crowdsky_jobs``
and `wait_for_work` returns as soon as one arrives; elsewhere it simply sleeps, and the caller polls.

The SQL lives in ``lib/sql/<name>.sql`` (``<name>_<dialect>.sql`` where the databases differ), with
named ``:parameters``. Each function here is one transaction that commits before it returns, so no
connection is left idle in a transaction holding locks; called inside a caller's ``with db:`` it
joins that transaction instead.
"""
from __future__ import annotations

import contextlib
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dataset
import psycopg
import sqlalchemy as sa

from lib.db import now

CHANNEL = "crowdsky_jobs"
STATUSES = ("pending", "running", "done", "failed")

_SQL_DIR = Path(__file__).with_name("sql")


@dataclass
class Lease:
    """A claimed job. Keep it to heartbeat, complete, fail or release the job."""
    job_id: int
    token: str
    job: dict           # the row as claimed: kind, chunk_id, owner_id, attempts, max_attempts, ...
    expires: float      # Unix seconds; `heartbeat` moves it on


def enqueue(db: dataset.Database, *, kind: str, chunk_id: int | None, owner_id: int,
            max_attempts: int) -> int:
    """Add a pending job, claimable now; returns its id."""
    t = now()
    with _transaction(db):
        job_id = _run(db, "enqueue", kind=kind, chunk_id=chunk_id, owner_id=owner_id,
                      max_attempts=max_attempts, fair_rank=_place_in_line(db, owner_id),
                      now=t).scalar_one()
        _notify(db)
    return job_id


def claim(db: dataset.Database, worker: str, lease_seconds: float, *, direct: bool = True) -> Lease | None:
    """Take the pending job with the lowest rank whose back-off is over, or None if there is none.

    A remote stacker (*direct* False) is never handed a kind that needs the database and archive
    itself (lib/jobs.py ``DIRECT_ONLY``: the atlas update).

    The job becomes running, its attempt is counted, and the returned lease is valid for
    *lease_seconds* unless extended with `heartbeat`.
    """
    stacker_seen(db, worker)
    t = now()
    params = dict(now=t, token=secrets.token_hex(16), lease_expires=t + lease_seconds,
                  worker=worker[:128], direct=bool(direct))
    with _transaction(db):
        if _dialect(db) == "mysql":
            picked = _run(db, "claim", **params).first()      # locks the row till commit
            if picked is None:
                return None
            _run(db, "claim_mysql_take", id=picked.id, **params)
            row = _run(db, "get", id=picked.id).mappings().one()
        else:
            row = _run(db, "claim", **params).mappings().first()
            if row is None:
                return None
    return Lease(job_id=row["id"], token=row["lease_token"], job=dict(row),
                 expires=row["lease_expires"])


def heartbeat(db: dataset.Database, lease: Lease, progress: float, message: str,
              lease_seconds: float) -> bool:
    """Extend the lease and report progress (0..1) and what is happening now.

    False means the job is no longer ours (requeued, deleted, or claimed by another stacker):
    stop working on it.
    """
    expires = now() + lease_seconds
    with _transaction(db):
        ours = _run(db, "heartbeat", id=lease.job_id, token=lease.token, lease_expires=expires,
                    progress=float(progress), message=_clip(message, 255)).rowcount == 1
    if ours:
        lease.expires = expires
        stacker_seen(db, lease.job.get("worker") or "")
    return ours


def complete(db: dataset.Database, lease: Lease,
             record_stack: Callable[[dataset.Database], int]) -> int | None:
    """Mark the job done and record its stack, in one transaction; returns the stack id.

    *record_stack(tx)* inserts the stack row(s) through *tx* (the same transaction) and returns the
    stack id. It is called only while the lease is still ours, so a stacker whose job was taken
    away records nothing and gets None. If it raises, nothing is recorded and the job stays running
    under this lease (call `fail`).
    """
    with _transaction(db) as tx:
        if _run(tx, "complete", id=lease.job_id, token=lease.token, now=now()).rowcount != 1:
            return None
        stack_id = record_stack(tx)
        _run(tx, "complete_stack", id=lease.job_id, stack_id=stack_id)
    return stack_id


def fail(db: dataset.Database, lease: Lease, error: str, backoff_s: float, *,
         permanent: bool = False) -> str | None:
    """Record a failed attempt; returns the job's new status, or None if the lease was lost.

    With attempts left the job goes back to 'pending', claimable again after
    ``backoff_s * 2 ** (attempts - 1)`` seconds (30 s, 60 s, 120 s, ... for backoff_s=30);
    otherwise, or if the error is *permanent* (trying again cannot help, e.g. no usable frames),
    it is 'failed'. Either way *error* is kept on the job for people to read.
    """
    t = now()
    attempts = lease.job["attempts"]        # the row's count: only this lease's holder changes it
    if attempts < lease.job["max_attempts"] and not permanent:
        status, run_after, finished_at = "pending", t + backoff_s * 2 ** (attempts - 1), None
    else:
        status, run_after, finished_at = "failed", t, t
    with _transaction(db):
        ours = _run(db, "fail", id=lease.job_id, token=lease.token, status=status,
                    run_after=run_after, error=_clip(error, 10_000),
                    finished_at=finished_at).rowcount == 1
    return status if ours else None


def release(db: dataset.Database, lease: Lease) -> bool:
    """Give the job back (the stacker is shutting down): pending again now, attempt not counted."""
    with _transaction(db):
        ours = _run(db, "release", id=lease.job_id, token=lease.token, now=now()).rowcount == 1
        if ours:
            _notify(db)
    return ours


def requeue_expired(db: dataset.Database) -> list[int]:
    """Take jobs back from stackers whose lease ran out; returns their ids.

    Each goes back to pending, claimable now, or to failed if it has used all its attempts.
    """
    t = now()
    taken: list[int] = []
    with _transaction(db):
        for job in _run(db, "expired", now=t).mappings().all():
            if job["attempts"] < job["max_attempts"]:
                status, error, finished_at = "pending", None, None
            else:
                status, finished_at = "failed", t
                error = f"stacker stopped responding (lease expired) {job['attempts']} times"
            if _run(db, "requeue", id=job["id"], status=status, error=error, now=t,
                    finished_at=finished_at).rowcount == 1:
                taken.append(job["id"])
        if taken:
            _notify(db)
    return taken


def retry(db: dataset.Database, job_id: int) -> bool:
    """Give a failed job a fresh set of attempts, at the back of its owner's line.

    False if the job does not exist or has not failed.
    """
    with _transaction(db):
        job = get(db, job_id)
        if job is None or job["status"] != "failed":
            return False
        retried = _run(db, "retry", id=job_id, now=now(),
                       fair_rank=_place_in_line(db, job["owner_id"])).rowcount == 1
        if retried:
            _notify(db)
    return retried


def delete(db: dataset.Database, job_id: int) -> bool:
    """Remove the job row (the caller removes its raws and outputs); False if there was none.

    A stacker still working on it finds out at its next heartbeat.
    """
    with _transaction(db):
        return _run(db, "delete", id=job_id).rowcount == 1


def get(db: dataset.Database, job_id: int) -> dict | None:
    """The job row as a dict, or None."""
    with _transaction(db):
        row = _run(db, "get", id=job_id).mappings().first()
    return dict(row) if row is not None else None


def counts_by_status(db: dataset.Database) -> dict[str, int]:
    """Number of jobs in each state, every state present: {'pending': 3, 'running': 1, ...}."""
    counts = dict.fromkeys(STATUSES, 0)
    with _transaction(db):
        counts.update({row.status: row.n for row in _run(db, "counts_by_status")})
    return counts


# A stacker is noted at most this often (a write per claim attempt would be one a second each);
# none noted for CROWDSKY_STACKER_SILENT_SECONDS (60) means none is running: readiness and the
# status page say so.
STACKER_SEEN_EVERY_S = 15.0
FORGET_STACKERS_AFTER_S = 86400.0

_seen_at: dict[str, float] = {}          # stacker name -> time.monotonic() of its last note here
_seen_lock = threading.Lock()


def stacker_seen(db: dataset.Database, name: str) -> None:
    """Note that stacker *name* is alive (it claims, or reports progress); at most every
    ``STACKER_SEEN_EVERY_S`` per name and process.

    Best effort: a note that fails (a deadlock on a busy MariaDB, a lock timeout) is tried again at
    the next claim or heartbeat, and never fails the claim or heartbeat itself.
    """
    name = name[:160]
    with _seen_lock:
        last = _seen_at.get(name)
        if last is not None and time.monotonic() - last < STACKER_SEEN_EVERY_S:
            return
        _seen_at[name] = time.monotonic()
    t = now()
    try:
        try:
            with _transaction(db):
                if _run(db, "stacker_seen", stacker=name, now=t).rowcount == 0:
                    _run(db, "stacker_new", stacker=name, now=t)
        except sa.exc.IntegrityError:        # its first note, made by another thread a moment ago
            with _transaction(db):
                _run(db, "stacker_seen", stacker=name, now=t)
    except sa.exc.OperationalError:
        with _seen_lock:
            _seen_at.pop(name, None)


def forget_stackers(db: dataset.Database, older_than_s: float = FORGET_STACKERS_AFTER_S) -> int:
    """Drop the notes of stackers silent for *older_than_s* (stopped ones, past pids); returns how many."""
    with _transaction(db):
        return _run(db, "stackers_prune", before=now() - older_than_s).rowcount


def stackers_silent_for(db: dataset.Database) -> float | None:
    """Seconds since any stacker was last noted, or None if none ever was."""
    with _transaction(db):
        last = _run(db, "stackers_last_seen").scalar()
    return None if last is None else max(0.0, now() - float(last))


def wait_for_work(db_or_url: dataset.Database | str, timeout: float) -> bool:
    """Block until work may be available or *timeout* seconds pass; True if woken by a notification.

    On PostgreSQL this listens on ``crowdsky_jobs`` through its own connection, kept open between
    calls, so a job enqueued while the caller was busy still wakes the next call at once. Elsewhere,
    or if listening fails, it sleeps *timeout*: the caller polls `claim` either way.
    """
    url = sa.engine.make_url(db_or_url if isinstance(db_or_url, str) else db_or_url.url)
    if url.get_backend_name() != "postgresql":
        time.sleep(timeout)
        return False
    # One listener whether given postgresql:// or a Database (whose URL says postgresql+psycopg://).
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    deadline = time.monotonic() + timeout
    try:
        conn = _listener(conninfo)
        woken = False
        for _ in conn.notifies(timeout=timeout, stop_after=1):
            woken = True
        if woken:
            for _ in conn.notifies(timeout=0):     # one wake-up for a burst of enqueues
                pass
        return woken
    except psycopg.Error:
        _drop_listener(conninfo)                   # reconnect on the next call
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False


# --- internals -------------------------------------------------------------------------------

def _place_in_line(db: dataset.Database, owner_id: int) -> int:
    """The rank a new job of *owner_id* gets (see "Fairness" in the module docstring)."""
    row = _run(db, "enqueue_rank", owner_id=owner_id).one()
    owner_last = max(row.owner_pending or 0, row.owner_running or 0)
    claimed = max(row.claimed_running or 0, row.claimed_done or 0, row.claimed_failed or 0)
    return max(owner_last + 1, claimed)


@contextlib.contextmanager
def _transaction(db: dataset.Database) -> Iterator[dataset.Database]:
    """``with db:`` for one queue operation: commits at the end, rolls back on an exception, and
    joins the caller's transaction if one is open. On MariaDB a transaction of its own runs at READ
    COMMITTED (see lib/sql/read_committed_mysql.sql: REPEATABLE READ deadlocks claims)."""
    fresh = not db.executable.in_transaction()
    with db:
        if fresh and _dialect(db) == "mysql":
            _run(db, "read_committed")
        yield db


def _notify(db: dataset.Database) -> None:
    """Tell idle stackers there is work (PostgreSQL only; delivered when the transaction commits)."""
    if _dialect(db) == "postgresql":
        _run(db, "notify", channel=CHANNEL)


def _run(db: dataset.Database, name: str, **params) -> sa.CursorResult:
    """Run lib/sql/<name>.sql on the connection of *db*'s current transaction."""
    return db.executable.execute(_statement(name, _dialect(db)), params)


def _dialect(db: dataset.Database) -> str:
    name = db.engine.dialect.name
    return "mysql" if name == "mariadb" else name


@functools.cache
def _statement(name: str, dialect: str) -> sa.TextClause:
    """lib/sql/<name>_<dialect>.sql if that exists, else lib/sql/<name>.sql; comment lines dropped
    (a ``:word`` in a comment would otherwise be taken for a parameter)."""
    path = _SQL_DIR / f"{name}_{dialect}.sql"
    if not path.exists():
        path = _SQL_DIR / f"{name}.sql"
    lines = path.read_text().splitlines()
    return sa.text("\n".join(line for line in lines if not line.lstrip().startswith("--")))


def _clip(text: str | None, limit: int) -> str | None:
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


_listeners: dict[tuple[int, str], psycopg.Connection] = {}
_listeners_lock = threading.Lock()


def _listener(conninfo: str) -> psycopg.Connection:
    """This process's LISTENing connection to *conninfo* (a forked child opens its own)."""
    key = (os.getpid(), conninfo)
    with _listeners_lock:
        conn = _listeners.get(key)
        if conn is None or conn.closed:
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {CHANNEL}")
            _listeners[key] = conn
        return conn


def _drop_listener(conninfo: str) -> None:
    with _listeners_lock:
        conn = _listeners.pop((os.getpid(), conninfo), None)
    if conn is not None:
        conn.close()
