"""The database: one ``dataset`` connection per process and the schema every role relies on.

Tables are declared here explicitly (column types and indexes) instead of being left to
``dataset``'s on-the-fly inference, so that SQLite, PostgreSQL and MariaDB all get the same shape
and the queue's hand-written SQL (``lib/sql/``) can rely on it.

Times the queue compares (leases, back-off) are stored as Unix seconds (float), which every
supported database compares the same way; times shown to people are ISO-8601 UTC strings.
"""
from __future__ import annotations

import threading
import time

import dataset
import sqlalchemy as sa

# (column, type factory) per table; ``id`` is the integer primary key dataset adds itself.
_T = dataset.types.Types()
# Unix seconds need double precision: a plain FLOAT is single precision on MariaDB.
DOUBLE = sa.Double(asdecimal=False)
SCHEMA: dict[str, list[tuple[str, object]]] = {
    "users": [
        ("username", _T.string(64)),
        ("password_hash", _T.string(255)),
        ("share_with_crowd", _T.boolean),
        ("created_at", DOUBLE),
    ],
    "api_tokens": [
        ("token_hash", _T.string(64)),
        ("kind", _T.string(16)),          # 'user' or 'worker'
        ("user_id", _T.integer),          # NULL for worker tokens
        ("name", _T.string(128)),
        ("created_at", DOUBLE),
        ("revoked_at", DOUBLE),
    ],
    "upload_sessions": [
        ("owner_id", _T.integer),
        ("status", _T.string(16)),        # open | finalized | expired
        ("created_at", DOUBLE),
        ("updated_at", DOUBLE),
        ("finalized_at", DOUBLE),
    ],
    "chunks": [
        ("owner_id", _T.integer),
        ("session_id", _T.integer),
        ("chunk_key", _T.string(32)),     # YYYYMMDD.CC_HPnnnnnn
        ("telescope", _T.string(64)),
        ("object", _T.string(128)),
        ("ra", DOUBLE),                 # pointing of the frame that opened the chunk, degrees
        ("dec", DOUBLE),
        ("created_at", DOUBLE),
        ("filter", _T.string(16)),        # FILTER of its frames (IRCUT, LP): frames of two filters never share one
    ],
    "frames": [
        ("owner_id", _T.integer),
        ("session_id", _T.integer),
        ("chunk_id", _T.integer),
        ("buffer_key", _T.string(255)),
        ("sha256", _T.string(64)),
        ("filename", _T.string(255)),     # as the owner named it; shown, never used as a key
        ("size", _T.bigint),
        ("object", _T.string(128)),
        ("telescope", _T.string(64)),
        ("instrument", _T.string(64)),
        ("date_obs", _T.string(32)),      # ISO-8601 UTC
        ("exptime", DOUBLE),
        ("ra", DOUBLE),
        ("dec", DOUBLE),
        ("bayerpat", _T.string(8)),
        ("width", _T.integer),
        ("height", _T.integer),
        ("status", _T.string(16)),        # buffered | stacked | discarded
        ("created_at", DOUBLE),
        ("filter", _T.string(16)),        # FILTER header (Seestar: IRCUT, LP); NULL when absent
    ],
    "jobs": [
        ("kind", _T.string(16)),          # chunk (later: deep, crowd)
        ("chunk_id", _T.integer),
        ("owner_id", _T.integer),
        ("status", _T.string(16)),        # pending | running | done | failed
        ("attempts", _T.integer),
        ("max_attempts", _T.integer),
        ("run_after", DOUBLE),          # not claimable before this Unix time (retry back-off)
        ("lease_token", _T.string(64)),
        ("lease_expires", DOUBLE),
        ("worker", _T.string(128)),
        ("progress", DOUBLE),           # 0..1, reported with each heartbeat
        ("message", _T.string(255)),      # what the stacker is doing now
        ("error", _T.text),
        ("stack_id", _T.integer),
        ("payload", _T.text),             # JSON: what a kind of job needs beyond its chunk
        ("created_at", DOUBLE),
        ("started_at", DOUBLE),
        ("finished_at", DOUBLE),
        ("fair_rank", _T.bigint),         # place in line; claims take the lowest (lib/queue.py)
    ],
    "stacks": [
        ("job_id", _T.integer),
        ("kind", _T.string(16)),          # chunk | deep | crowd
        ("owner_id", _T.integer),
        ("chunk_id", _T.integer),
        ("chunk_key", _T.string(32)),
        ("object", _T.string(128)),
        ("telescope", _T.string(64)),
        ("ra", DOUBLE),
        ("dec", DOUBLE),
        ("frames", _T.integer),
        ("frames_rejected", _T.integer),
        ("exposure_s", DOUBLE),
        ("date_beg", _T.string(32)),
        ("date_end", _T.string(32)),
        ("fits_key", _T.string(255)),
        ("preview_key", _T.string(255)),
        ("fits_size", _T.bigint),
        ("fwhm_px", DOUBLE),
        ("noise", DOUBLE),
        ("version", _T.integer),          # deep/crowd: bumped by every update (see lib/groups.py)
        ("nights", _T.integer),           # deep/crowd: nights and owners that contributed
        ("owners", _T.integer),
        ("created_at", DOUBLE),
        ("filter", _T.string(16)),        # FILTER of its frames
        ("solved", _T.boolean),           # plate solved: the FITS has a celestial WCS (lib/stacking/solve.py)
        ("sky", _T.text),                 # JSON: centre, scale, rotation, footprint (solve.sky_summary)
        ("objects", _T.text),             # JSON: catalogue objects in the field (lib/catalog.py)
        ("target", _T.string(32)),        # OpenNGC key it is filed under (NGC4736 for "M 94"), for search
        ("footprint", _T.text),           # JSON [[ra, dec] x 4]: its outline on the sky, for the sky map
    ],
    "contributions": [                    # what went into a deep or crowd stack
        ("group_id", _T.integer),
        ("source_id", _T.integer),        # the chunk stack added
        ("owner_id", _T.integer),
        ("frames", _T.integer),
        ("exposure_s", DOUBLE),
        ("date_beg", _T.string(32)),
        ("date_end", _T.string(32)),
        ("scale", DOUBLE),                # brightness factor that put it on the group's scale
        ("created_at", DOUBLE),
    ],
    "locks": [                            # rows to take a write lock on (see lib/groups.py)
        ("name", _T.string(32)),
        ("taken_at", DOUBLE),
    ],
    "stack_frames": [
        ("stack_id", _T.integer),
        ("frame_id", _T.integer),
        ("filename", _T.string(255)),
        ("used", _T.boolean),
        ("reason", _T.string(255)),
        ("fwhm_px", DOUBLE),
        ("stars", _T.integer),
        ("background", DOUBLE),
        ("noise", DOUBLE),
    ],
}

INDEXES: dict[str, list[tuple[str, ...]]] = {
    "users": [("username",)],
    "api_tokens": [("token_hash",)],
    "upload_sessions": [("owner_id", "status")],
    "chunks": [("session_id",), ("owner_id",)],
    "frames": [("session_id",), ("chunk_id",)],
    # claim: lowest rank among pending; enqueue: an owner's last place in line
    "jobs": [("status", "fair_rank", "id"), ("owner_id", "status", "fair_rank"), ("chunk_id",)],
    # gallery pages are keyed on id (newest first) within a filter: PostgreSQL needs the id in the index
    "stacks": [("object",), ("owner_id",), ("job_id",), ("object", "id"), ("kind", "id"), ("owner_id", "id"),
               ("date_beg",), ("target", "id")],
    "stack_frames": [("stack_id",)],
    "contributions": [("group_id",), ("source_id",), ("owner_id",)],
}

LOCKS = ("groups",)

UNIQUE: dict[str, list[tuple[str, ...]]] = {
    "users": [("username",)],
    "api_tokens": [("token_hash",)],
    "frames": [("owner_id", "sha256")],  # an owner's identical bytes are one frame
    "stacks": [("job_id",)],          # a job produces at most one stack, whoever completes it
    "contributions": [("group_id", "source_id")],   # a chunk stack is added to a group once
    "locks": [("name",)],
}


@sa.event.listens_for(sa.Table, "column_reflect")
def _floats_as_float(inspector, table, column_info):
    # dataset reflects tables; MariaDB's DOUBLE reflects as Decimal-returning unless told otherwise.
    if isinstance(column_info["type"], sa.Float):
        column_info["type"].asdecimal = False


def connect(url: str) -> dataset.Database:
    """Open the database at *url* and make sure every table, column and index exists."""
    # max_overflow=-1: the pool never runs dry. dataset holds its lock while it waits for a pooled
    # connection, and release() below needs that lock to give one back: with more threads than
    # connections (the app's 16 request threads, 15 connections) every thread stalled for the pool
    # timeout (30 s), then failed. Each thread holds at most one connection, so this is bounded.
    engine_kwargs: dict = {"pool_pre_ping": True, "max_overflow": -1}
    if url.startswith("sqlite"):
        # Several processes (app, stackers, janitor) share one file: wait for locks, don't fail.
        engine_kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    elif url.startswith("mysql://") or url.startswith("mariadb://"):
        url = "mysql+pymysql://" + url.split("://", 1)[1]
    db = dataset.connect(url, engine_kwargs=engine_kwargs, ensure_schema=False)
    ensure_schema(db)
    return db


def ensure_schema(db: dataset.Database) -> None:
    with db:
        for name, columns in SCHEMA.items():
            table = db.create_table(name, primary_id="id", primary_type=_T.integer)
            for column, type_ in columns:
                if not table.has_column(column):
                    table.create_column(column, type_)
    for name in SCHEMA:
        table = db[name]
        for columns in INDEXES.get(name, []):
            table.create_index(list(columns))
        for columns in UNIQUE.get(name, []):
            _unique_index(db, name, columns)
    for lock in LOCKS:
        if db["locks"].find_one(name=lock) is None:
            try:
                db["locks"].insert({"name": lock, "taken_at": 0.0})
            except sa.exc.IntegrityError:    # another process starting at the same moment made it
                pass
    release(db)


def _unique_index(db: dataset.Database, table: str, columns: tuple[str, ...]) -> None:
    name = f"uq_{table}_{'_'.join(columns)}"
    inspector = sa.inspect(db.executable)
    existing = {ix["name"] for ix in inspector.get_indexes(table)}
    existing |= {uc["name"] for uc in inspector.get_unique_constraints(table)}
    if name in existing:
        return
    sa_table = db[table].table
    sa.Index(name, *(sa_table.c[c] for c in columns), unique=True).create(db.executable)
    db.executable.commit()


def release(db: dataset.Database) -> None:
    """Hand this thread's connection back to the pool, ending any read transaction it holds.

    dataset keeps one connection per thread for as long as the Database lives. Threads that come
    and go (request threads, heartbeats, scheduled tasks) would otherwise pin connections until the
    pool runs dry, and a connection left after a read sits idle in a transaction holding locks.
    """
    if db.in_transaction:
        return
    with db.lock:
        connection = db.connections.pop(threading.get_ident(), None)
    if connection is not None:
        connection.close()


def now() -> float:
    """Unix seconds, the clock every stored time is measured on."""
    return time.time()
