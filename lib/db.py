"""The database: one ``dataset`` connection per process and the schema every role relies on.

Tables are declared here explicitly (column types and indexes) instead of being left to
``dataset``'s on-the-fly inference, so that SQLite, PostgreSQL and MariaDB all get the same shape
and the queue's hand-written SQL (``lib/sql/``) can rely on it.

Times the queue compares (leases, back-off) are stored as Unix seconds (float), which every
supported database compares the same way; times shown to people are ISO-8601 UTC strings.
"""
from __future__ import annotations

import contextlib
import fcntl
import random
import threading
import time
from pathlib import Path

import dataset
import sqlalchemy as sa

# (column, type factory) per table; ``id`` is the integer primary key dataset adds itself.
_T = dataset.types.Types()
# Unix seconds need double precision: a plain FLOAT is single precision on MariaDB.
DOUBLE = sa.Double(asdecimal=False)
SCHEMA: dict[str, list[tuple[str, object]]] = {
    "users": [
        ("username", _T.string(64)),
        ("username_key", _T.string(64)),  # NFKC + case-folded name: unique (lib/accounts.py)
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
        ("kind", _T.string(16)),          # a kind of lib/jobs.py KINDS: chunk, import, deep, crowd, atlas
        ("chunk_id", _T.integer),         # chunk, import: the chunk stacked; deep, crowd: the chunk that caused it
        ("group_id", _T.integer),         # deep, crowd: the group brought up to date
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
        ("instrument", _T.string(255)),   # deep/crowd: the telescopes' and cameras' names, comma-separated
        ("deep_id", _T.integer),          # chunk: the deep stack it belongs to (NULL: none)
        ("crowd_id", _T.integer),         # chunk: the crowd stack it belongs to (NULL: owner not sharing)
        ("created_at", DOUBLE),
        ("filter", _T.string(16)),        # FILTER of its frames
        ("solved", _T.boolean),           # plate solved: the FITS has a celestial WCS (lib/stacking/solve.py)
        ("sky", _T.text),                 # JSON: centre, scale, rotation, footprint (solve.sky_summary)
        ("objects", _T.text),             # JSON: catalogue objects in the field (lib/catalog.py)
        ("target", _T.string(32)),        # OpenNGC key it is filed under (NGC4736 for "M 94"), for search
        ("footprint", _T.text),           # JSON [[ra, dec] x 4]: its outline on the sky, for the sky map
        # photometry (lib/stacking/photometry.py; NULL: not measured): header FWHMARC, MAGZPT, MAGZPSIG,
        # MAGZPN, SKYMAG, LIMMAG
        ("fwhm_arcsec", DOUBLE),
        ("zero_point", DOUBLE),           # V mag of 1 ADU/s
        ("zero_point_scatter", DOUBLE),   # mag
        ("calibration_stars", _T.integer),
        ("sky_mag", DOUBLE),              # V mag/arcsec²
        ("limiting_mag", DOUBLE),         # V mag, 5σ point source
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
    "stackers": [                         # who has asked for work lately (lib/queue.py: stacker_seen)
        ("name", _T.string(160)),
        ("last_seen", DOUBLE),
    ],
    "quota_reservations": [               # bytes of uploads under way, counted against the quota
        ("owner_id", _T.integer),
        ("size", _T.bigint),
        ("created_at", DOUBLE),
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
    "jobs": [("status", "fair_rank", "id"), ("owner_id", "status", "fair_rank"), ("chunk_id",), ("group_id", "status")],
    # gallery pages are keyed on id (newest first) within a filter: PostgreSQL needs the id in the index
    "stacks": [("object",), ("owner_id",), ("job_id",), ("object", "id"), ("kind", "id"), ("owner_id", "id"),
               ("date_beg",), ("deep_id",), ("crowd_id",), ("target", "id")],
    "stack_frames": [("stack_id",)],
    "quota_reservations": [("owner_id",)],
    "contributions": [("group_id",), ("source_id",), ("owner_id",)],
}

LOCKS = ("groups", "atlas")    # atlas: one atlas update at a time (lib/atlas.py)

# Ids shown to people or written into other rows are never reused: SQLite would otherwise hand the
# highest freed rowid out again (PostgreSQL sequences and MariaDB's counter never go back).
AUTOINCREMENT = ("users", "api_tokens", "upload_sessions", "chunks", "frames", "jobs", "stacks",
                 "contributions", "stack_frames")

# (column, referenced table, declared earlier in SCHEMA): a deep/crowd stack's sources and members can only name stacks that exist.
FOREIGN_KEYS: dict[str, list[tuple[str, str]]] = {
    "stacks": [("deep_id", "stacks"), ("crowd_id", "stacks")],
    "contributions": [("group_id", "stacks"), ("source_id", "stacks")],
}

UNIQUE: dict[str, list[tuple[str, ...]]] = {
    "users": [("username",), ("username_key",)],
    "api_tokens": [("token_hash",)],
    "frames": [("owner_id", "sha256")],  # an owner's identical bytes are one frame
    "stacks": [("job_id",)],          # a job produces at most one stack, whoever completes it
    "contributions": [("group_id", "source_id")],   # a chunk stack is added to a group once
    "locks": [("name",)],
    "stackers": [("name",)],
}


@sa.event.listens_for(sa.Table, "column_reflect")
def _floats_as_float(inspector, table, column_info):
    # dataset reflects tables; MariaDB's DOUBLE reflects as Decimal-returning unless told otherwise.
    if isinstance(column_info["type"], sa.Float):
        column_info["type"].asdecimal = False


@sa.event.listens_for(sa.Table, "before_create")
def _create_whole(table, connection, **_):
    """A table of SCHEMA is created with all its columns at once, so that its options (AUTOINCREMENT)
    and foreign keys are part of CREATE TABLE (SQLite cannot add either later)."""
    if table.name not in SCHEMA:
        return
    for column, type_ in SCHEMA[table.name]:
        if column not in table.c:
            table.append_column(sa.Column(column, type_))
    for column, target in FOREIGN_KEYS.get(table.name, []):
        # The referenced table is named through a stand-in: dataset keeps no metadata of the others.
        referenced = sa.Table(target, sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
        table.append_constraint(sa.ForeignKeyConstraint([column], [referenced.c.id],
                                                        name=f"fk_{table.name}_{column}"))
    if table.name in AUTOINCREMENT:
        table.dialect_options["sqlite"]["autoincrement"] = True


@sa.event.listens_for(sa.engine.Engine, "connect")
def _sqlite_foreign_keys(dbapi_connection, _record):
    # SQLite checks foreign keys only when asked to, per connection.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()


class Database(dataset.Database):
    """``dataset.Database`` whose tables, once the schema is complete, keep the shape they were
    reflected with.

    dataset forgets every reflected table on any rollback (``Database._flush_tables``, meant for a
    table created in a transaction that was rolled back). Its tables are shared by every thread, so
    one request's rollback (an IntegrityError, say) made the others reflect again while building a
    statement: ``Table.find`` takes the table once for its WHERE clause and once for its SELECT,
    got two different ``sqlalchemy.Table`` objects of one name and sent ``FROM frames, frames``
    ("ambiguous column name: frames.id"). Our schema is declared in SCHEMA and only ever created
    by `ensure_schema` before `pin`, so after that there is nothing to forget.
    """

    _pinned = False

    def _flush_tables(self) -> None:
        if not self._pinned:
            super()._flush_tables()

    def pin(self) -> None:
        """Reflect every table of SCHEMA now, in one thread, and keep them from then on."""
        for name in SCHEMA:
            table = self.load_table(name)
            table.columns               # reflects the table and caches its columns
        self._pinned = True


def connect(url: str) -> Database:
    """Open the database at *url* and make sure every table, column and index exists.

    An embedded SQLite file's folder is created if missing (a first run has no ``./var`` yet).
    Any number of processes may do this at the same moment on an empty database: the schema is
    created under a lock (see `ensure_schema`).
    """
    # max_overflow=-1: the pool never runs dry. dataset holds its lock while it waits for a pooled
    # connection, and release() below needs that lock to give one back: with more threads than
    # connections (the app's 16 request threads, 15 connections) every thread stalled for the pool
    # timeout (30 s), then failed. Each thread holds at most one connection, so this is bounded.
    engine_kwargs: dict = {"pool_pre_ping": True, "max_overflow": -1}
    if url.startswith("sqlite"):
        # Several processes (app, stackers, janitor) share one file: wait for locks, don't fail.
        engine_kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        path = _sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    elif url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    elif url.startswith("mysql://") or url.startswith("mariadb://"):
        url = "mysql+pymysql://" + url.split("://", 1)[1]
    db = Database(url, engine_kwargs=engine_kwargs, ensure_schema=False)
    ensure_schema(db)
    db.pin()
    release(db)
    return db


def migrate(url: str) -> None:
    """Create or complete the schema at *url*, then close: ``make run`` does this once before
    starting the roles (each role would also do it, safely, on its own)."""
    connect(url).close()


def ensure_schema(db: dataset.Database) -> None:
    """Create what is missing of SCHEMA, INDEXES, UNIQUE and LOCKS; a no-op on a complete schema.

    dataset creates a table with its id, then adds columns one ALTER at a time, each after looking
    whether it exists: two processes doing that at once both see a column missing and the second
    ALTER fails ("duplicate column name"). So the whole step runs under a lock every process
    shares: a lock file beside a SQLite database, an advisory lock on PostgreSQL, a named lock
    (GET_LOCK) on MariaDB. Whoever comes second waits, then finds everything in place.
    """
    with _schema_lock(db):
        _create_missing(db)


@contextlib.contextmanager
def _schema_lock(db: dataset.Database, timeout_s: int = 300):
    """Hold the database's schema lock (across processes and machines) for the duration."""
    dialect = db.engine.dialect.name
    if dialect == "sqlite":
        path = _sqlite_path(str(db.url))
        if path is None:                   # in-memory: nobody else can see it
            yield
            return
        with open(path.with_name(path.name + ".schema-lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)        # released when the file is closed
            yield
        return
    # The lock lives on a connection of its own, held until the schema is done.
    with db.engine.connect() as conn:
        if dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
        else:                              # mysql / mariadb
            got = conn.execute(sa.text("SELECT GET_LOCK(:name, :timeout)"),
                               {"name": "crowdsky_schema", "timeout": timeout_s}).scalar()
            if got != 1:
                raise RuntimeError(f"the schema lock was not free within {timeout_s} s")
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": "crowdsky_schema"})


# Any fixed 64-bit number names the advisory lock; this one spells "crowdsky" in ASCII.
SCHEMA_LOCK_KEY = int.from_bytes(b"crowdsky", "big") >> 1


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL; None for an in-memory database."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _create_missing(db: dataset.Database) -> None:
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


# MariaDB: 1213 deadlock (the transaction was rolled back); PostgreSQL: deadlock, serialization failure.
_DEADLOCK_CODES = {1213}
_DEADLOCK_SQLSTATES = {"40P01", "40001"}


def chosen_as_deadlock_victim(exc: BaseException) -> bool:
    """Whether the database rolled this statement's transaction back to break a deadlock: the whole
    transaction may simply run again."""
    orig = getattr(exc, "orig", None)
    code = orig.args[0] if orig is not None and getattr(orig, "args", None) else None
    return code in _DEADLOCK_CODES or getattr(orig, "sqlstate", None) in _DEADLOCK_SQLSTATES


def retrying(transaction, attempts: int = 5):
    """``transaction()`` (which opens and commits a transaction of its own), run again when the
    database picked it as a deadlock's victim, after a short random pause; other errors pass.

    Row locks taken in different orders by concurrent requests (InnoDB's next-key locks make that
    hard to rule out) are the database's to resolve; the request that lost should not fail for it.
    """
    for attempt in range(1, attempts + 1):
        try:
            return transaction()
        except sa.exc.DBAPIError as exc:
            if attempt == attempts or not chosen_as_deadlock_victim(exc):
                raise
            time.sleep(random.uniform(0.01, 0.05) * attempt)


def now() -> float:
    """Unix seconds, the clock every stored time is measured on."""
    return time.time()
