"""The shared database object under concurrent threads (lib/db.py)."""
from __future__ import annotations

import threading

import pytest
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


def test_a_transaction_chosen_as_a_deadlocks_victim_runs_again(db, database_url):
    """Two transactions lock two rows in opposite orders at the same moment: the database breaks
    the deadlock by rolling one back. ``retrying`` runs that one again, so both changes land and
    neither caller sees an error (on SQLite one writer waits for the other: no deadlock to break)."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer at a time: transactions wait, they never deadlock")
    a = db["stackers"].insert({"name": "a", "last_seen": 0.0})
    b = db["stackers"].insert({"name": "b", "last_seen": 0.0})
    lib.db.release(db)
    both_locked_one = threading.Barrier(2, timeout=30)
    tries = {"forward": 0, "backward": 0}
    errors: list[BaseException] = []

    def bump(name: str, first: int, second: int) -> None:
        def transaction() -> None:
            tries[name] += 1
            with db as tx:
                tx.query("UPDATE stackers SET last_seen = last_seen + 1 WHERE id = :id", id=first)
                if tries[name] == 1:       # only the first try meets the other half-way
                    try:
                        both_locked_one.wait()
                    except threading.BrokenBarrierError:
                        pass
                tx.query("UPDATE stackers SET last_seen = last_seen + 1 WHERE id = :id", id=second)
        try:
            lib.db.retrying(transaction)
        except BaseException as exc:     # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            lib.db.release(db)

    threads = [threading.Thread(target=bump, args=("forward", a, b)),
               threading.Thread(target=bump, args=("backward", b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(tries.values()) == [1, 2], tries          # one of them was the victim, and ran again
    assert [r["last_seen"] for r in db["stackers"].find(order_by="id")] == [2.0, 2.0]
