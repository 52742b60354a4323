"""The shared database object under concurrent threads (lib/db.py)."""
from __future__ import annotations

import threading

import sqlalchemy.exc

import lib.db

THREADS = 8
ROUNDS = 60


def test_a_rollback_in_one_thread_does_not_break_queries_in_others(db):
    """Request threads share one ``dataset.Database``. Half of them insert a duplicate user inside
    a transaction (IntegrityError: rolled back), the others look frames up by filter and join frames
    with chunks. Every lookup must succeed: a rollback must not make the others lose the tables'
    shapes. (Checked: with dataset's own rollback, which forgets every reflected table, lookups fail
    with "ambiguous column name: frames.id" on SQLite, "table name "frames" specified more than
    once" on PostgreSQL.)"""
    owner = db["users"].insert({"username": "alice", "username_key": "alice", "created_at": 0.0})
    chunk = db["chunks"].insert({"owner_id": owner, "chunk_key": "20250327.01_HP000001",
                                 "object": "M 94", "created_at": 0.0})
    for i in range(3):
        db["frames"].insert({"owner_id": owner, "chunk_id": chunk, "sha256": f"{i:064d}",
                             "status": "buffered", "object": "M 94", "created_at": 0.0})
    lib.db.release(db)

    start = threading.Barrier(THREADS)
    errors: list[str] = []
    rollbacks = [0]

    def roll_back() -> None:
        try:
            with db:
                db["users"].insert({"username": "alice", "username_key": "alice", "created_at": 1.0})
        except sqlalchemy.exc.IntegrityError:
            rollbacks[0] += 1
        lib.db.release(db)

    def look_up() -> None:
        try:
            found = list(db["frames"].find(chunk_id=chunk, status="buffered", order_by="id"))
            assert len(found) == 3, found
            assert db["frames"].find_one(sha256=f"{1:064d}")["chunk_id"] == chunk
            assert db["frames"].count(owner_id=owner) == 3
            joined = list(db.query("SELECT f.id, c.chunk_key FROM frames f JOIN chunks c ON c.id = f.chunk_id "
                                   "WHERE c.owner_id = :o", o=owner))
            assert len(joined) == 3, joined
        except Exception as exc:            # noqa: BLE001 - every failure is collected and reported
            errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        finally:
            lib.db.release(db)

    def worker(index: int) -> None:
        start.wait()
        for round_ in range(ROUNDS):
            (roll_back if (index + round_) % 2 else look_up)()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads)
    assert rollbacks[0] == THREADS * ROUNDS // 2      # the duplicate really was refused each time
    assert errors == [], f"{len(errors)} lookups failed, first: {errors[:3]}"
