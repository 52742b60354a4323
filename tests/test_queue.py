"""The job queue's contract (lib/queue.py), on SQLite, PostgreSQL and MariaDB alike."""
from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

import lib.db
from lib import queue


@pytest.fixture
def clock(monkeypatch):
    """The queue's clock, moved by hand: leases and back-offs expire without sleeping."""
    class Clock:
        t = time.time()

        def __call__(self) -> float:
            return self.t

        def advance(self, seconds: float) -> None:
            self.t += seconds

    fake = Clock()
    monkeypatch.setattr(queue, "now", fake)
    return fake


def add_jobs(db, n: int, *, owner_id: int = 1, max_attempts: int = 3) -> list[int]:
    return [queue.enqueue(db, kind="chunk", chunk_id=100 + i, owner_id=owner_id,
                          max_attempts=max_attempts) for i in range(n)]


def stack_recorder(lease: queue.Lease, note: str = ""):
    """A record_stack callback that inserts a stack row for the lease's job."""
    def record(tx) -> int:
        return tx["stacks"].insert({"job_id": lease.job_id, "kind": lease.job["kind"],
                                    "owner_id": lease.job["owner_id"],
                                    "chunk_id": lease.job["chunk_id"], "object": note})
    return record


def stack_rows(db, job_id: int) -> list[dict]:
    with db:
        return list(db["stacks"].find(job_id=job_id))


def test_enqueue_claim_heartbeat_complete(db, clock):
    job_id = queue.enqueue(db, kind="chunk", chunk_id=7, owner_id=3, max_attempts=3)
    job = queue.get(db, job_id)
    assert (job["status"], job["attempts"], job["run_after"]) == ("pending", 0, clock.t)

    lease = queue.claim(db, "stacker-a", lease_seconds=60)
    assert lease.job_id == job_id and len(lease.token) == 32
    assert (lease.job["kind"], lease.job["chunk_id"], lease.job["owner_id"]) == ("chunk", 7, 3)
    assert (lease.job["status"], lease.job["attempts"], lease.job["worker"]) == ("running", 1, "stacker-a")
    assert lease.expires == clock.t + 60 and lease.job["started_at"] == clock.t
    assert queue.claim(db, "stacker-b", 60) is None, "a running job is nobody else's"

    clock.advance(50)
    assert queue.heartbeat(db, lease, 0.5, "registering frames", lease_seconds=60)
    job = queue.get(db, job_id)
    assert (job["progress"], job["message"]) == (0.5, "registering frames")
    assert job["lease_expires"] == lease.expires == clock.t + 60

    stack_id = queue.complete(db, lease, stack_recorder(lease))
    job = queue.get(db, job_id)
    assert (job["status"], job["stack_id"], job["progress"]) == ("done", stack_id, 1)
    assert job["finished_at"] == clock.t
    assert [row["id"] for row in stack_rows(db, job_id)] == [stack_id]
    assert queue.counts_by_status(db) == {"pending": 0, "running": 0, "done": 1, "failed": 0}


def test_complete_records_nothing_when_record_stack_raises(db):
    add_jobs(db, 1)
    lease = queue.claim(db, "stacker-a", 60)

    def broken(tx):
        stack_recorder(lease)(tx)
        raise OSError("archive unreachable")

    with pytest.raises(OSError):
        queue.complete(db, lease, broken)
    assert queue.get(db, lease.job_id)["status"] == "running"
    assert stack_rows(db, lease.job_id) == []
    assert queue.fail(db, lease, "archive unreachable", backoff_s=30) == "pending"


def test_expired_lease_is_requeued_and_the_old_holder_cannot_overwrite(db, clock):
    [job_id] = add_jobs(db, 1)
    old = queue.claim(db, "stacker-old", lease_seconds=60)
    clock.advance(61)
    assert queue.claim(db, "stacker-new", 60) is None, "expired leases are the janitor's to requeue"

    assert queue.requeue_expired(db) == [job_id]
    job = queue.get(db, job_id)
    assert (job["status"], job["lease_token"], job["lease_expires"]) == ("pending", None, None)

    new = queue.claim(db, "stacker-new", 60)
    assert new.job_id == job_id and new.job["attempts"] == 2 and new.token != old.token

    # The old holder comes back from the dead: every write is refused, nothing is recorded.
    assert queue.heartbeat(db, old, 0.9, "still here", 60) is False
    assert queue.complete(db, old, stack_recorder(old, "old")) is None
    assert queue.fail(db, old, "late error", backoff_s=1) is None
    assert queue.release(db, old) is False

    stack_id = queue.complete(db, new, stack_recorder(new, "new"))
    assert [(row["id"], row["object"]) for row in stack_rows(db, job_id)] == [(stack_id, "new")]
    assert queue.complete(db, old, stack_recorder(old, "old")) is None
    assert queue.get(db, job_id)["status"] == "done"


def test_a_lease_kept_alive_or_merely_late_is_not_taken_back(db, clock):
    add_jobs(db, 1)
    lease = queue.claim(db, "stacker-a", lease_seconds=60)
    clock.advance(50)
    assert queue.heartbeat(db, lease, 0.2, "grading", 60)
    clock.advance(50)                       # past the first expiry, within the extended one
    assert queue.requeue_expired(db) == []
    clock.advance(30)                       # expired, but nobody has taken the job back yet
    assert queue.heartbeat(db, lease, 0.4, "stacking", 60)
    assert queue.requeue_expired(db) == []
    assert queue.get(db, lease.job_id)["worker"] == "stacker-a"


def test_a_job_whose_lease_expires_on_its_last_attempt_fails(db, clock):
    [job_id] = add_jobs(db, 1, max_attempts=2)
    for _ in range(2):
        assert queue.claim(db, "stacker-a", 60) is not None
        clock.advance(61)
        assert queue.requeue_expired(db) == [job_id]
    job = queue.get(db, job_id)
    assert job["status"] == "failed"
    assert job["error"] == "stacker stopped responding (lease expired) 2 times"
    assert queue.claim(db, "stacker-a", 60) is None


def test_failures_back_off_exponentially_then_fail_with_the_last_error(db, clock):
    [job_id] = add_jobs(db, 1, max_attempts=3)
    for attempt, wait in ((1, 10), (2, 20)):
        lease = queue.claim(db, "stacker-a", 60)
        assert lease.job["attempts"] == attempt
        assert queue.fail(db, lease, f"boom {attempt}", backoff_s=10) == "pending"
        job = queue.get(db, job_id)
        assert (job["status"], job["error"], job["run_after"]) == ("pending", f"boom {attempt}", clock.t + wait)
        clock.advance(wait - 0.5)
        assert queue.claim(db, "stacker-a", 60) is None, "still backing off"
        clock.advance(1)

    lease = queue.claim(db, "stacker-a", 60)
    assert queue.fail(db, lease, "boom 3", backoff_s=10) == "failed"
    job = queue.get(db, job_id)
    assert (job["status"], job["error"], job["attempts"]) == ("failed", "boom 3", 3)
    clock.advance(3600)
    assert queue.claim(db, "stacker-a", 60) is None

    assert queue.retry(db, job_id)
    job = queue.get(db, job_id)
    assert (job["status"], job["attempts"], job["error"]) == ("pending", 0, None)
    assert queue.retry(db, job_id) is False, "only failed jobs are retried"
    assert queue.claim(db, "stacker-a", 60).job["attempts"] == 1


def test_a_permanent_failure_is_not_retried(db):
    [job_id] = add_jobs(db, 1, max_attempts=3)
    lease = queue.claim(db, "stacker-a", 60)
    assert queue.fail(db, lease, "no usable frames", backoff_s=10, permanent=True) == "failed"
    assert queue.get(db, job_id)["error"] == "no usable frames"


def test_release_gives_the_job_back_without_counting_the_attempt(db):
    [job_id] = add_jobs(db, 1)
    lease = queue.claim(db, "stacker-a", 60)
    assert queue.release(db, lease)
    job = queue.get(db, job_id)
    assert (job["status"], job["attempts"], job["lease_token"]) == ("pending", 0, None)
    assert queue.heartbeat(db, lease, 0.5, "", 60) is False
    assert queue.claim(db, "stacker-b", 60).job["attempts"] == 1


def test_delete_removes_the_job_and_its_stacker_notices(db):
    pending, running = add_jobs(db, 2)
    lease = queue.claim(db, "stacker-a", 60)
    assert lease.job_id == pending
    assert queue.delete(db, pending) and queue.get(db, pending) is None
    assert queue.heartbeat(db, lease, 0.5, "", 60) is False
    assert queue.complete(db, lease, stack_recorder(lease)) is None
    assert stack_rows(db, pending) == []
    assert queue.delete(db, pending) is False
    assert queue.counts_by_status(db) == {"pending": 1, "running": 0, "done": 0, "failed": 0}


@pytest.mark.parametrize("finish", [False, True], ids=["claims-in-parallel", "one-at-a-time"])
def test_a_second_owner_is_served_within_the_first_claims(db, finish):
    add_jobs(db, 50, owner_id=1)
    b_jobs = add_jobs(db, 2, owner_id=2)
    first = []
    for _ in range(4):
        lease = queue.claim(db, "stacker-a", 60)
        first.append(lease.job_id)
        if finish:
            queue.complete(db, lease, stack_recorder(lease))
    assert set(b_jobs) <= set(first)


def test_owners_arriving_late_take_turns_with_a_backlog(db):
    add_jobs(db, 50, owner_id=1)
    for _ in range(20):
        lease = queue.claim(db, "stacker-a", 60)
        queue.complete(db, lease, stack_recorder(lease))
    add_jobs(db, 30, owner_id=2)
    owners = [queue.claim(db, "stacker-a", 60).job["owner_id"] for _ in range(20)]
    # Round robin: neither the newcomer nor the backlog waits for the other.
    assert owners.count(1) == owners.count(2) == 10
    assert all(a != b for a, b in zip(owners, owners[1:])), owners


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_wait_for_work_wakes_on_enqueue_on_postgresql(db, database_url):
    assert queue.wait_for_work(database_url, 0.01) is False     # now listening
    woke = {}

    def waiter():
        woke["result"] = queue.wait_for_work(database_url, 10)
        woke["at"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    enqueued_at = time.monotonic()
    add_jobs(db, 1)
    thread.join(12)
    assert woke["result"] is True and woke["at"] - enqueued_at < 2

    add_jobs(db, 3)                 # arrives while nobody waits: the next wait returns at once
    started = time.monotonic()
    assert queue.wait_for_work(db, 10) is True
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("database_url", ["sqlite", "mariadb"], indirect=True)
def test_wait_for_work_just_sleeps_elsewhere(database_url):
    started = time.monotonic()
    assert queue.wait_for_work(database_url, 0.2) is False
    assert time.monotonic() - started >= 0.2


# --- many stackers at once ---------------------------------------------------------------------

def drain(url: str, worker: str, start: multiprocessing.Barrier, results: multiprocessing.Queue) -> None:
    """One stacker process: claim and complete until nothing is left; report what it claimed."""
    claimed, lost = [], 0
    try:
        db = lib.db.connect(url)
        start.wait()
        while (lease := queue.claim(db, worker, lease_seconds=60)) is not None:
            claimed.append(lease.job_id)
            if queue.complete(db, lease, stack_recorder(lease, worker)) is None:
                lost += 1
    except BaseException as exc:            # report it: the test would otherwise just time out
        results.put((worker, claimed, lost, repr(exc)))
        raise
    results.put((worker, claimed, lost, None))


def test_four_stackers_complete_every_job_exactly_once(db, database_url):
    """Four processes, each with its own connection, drain 40 jobs at once. (Checked: with
    bench.queue_claims.naive_claim, a select-then-update claim, patched in for queue.claim, this
    fails on all three databases: jobs claimed twice, duplicate stack rows refused.)"""
    job_ids = add_jobs(db, 40)
    db.engine.dispose()             # the forked stackers must not share this process's connections
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(4), ctx.Queue()
    stackers = [ctx.Process(target=drain, args=(database_url, f"stacker-{i}", start, results))
                for i in range(4)]
    for p in stackers:
        p.start()
    reports = [results.get(timeout=60) for _ in stackers]
    for p in stackers:
        p.join(10)

    assert [error for *_, error in reports if error] == []
    claims = sorted(job_id for _, claimed, _, _ in reports for job_id in claimed)
    assert claims == sorted(job_ids), "every job claimed exactly once"
    assert sum(lost for _, _, lost, _ in reports) == 0
    with db:
        per_job = {row["job_id"]: row["n"] for row in db.query(
            "SELECT job_id, COUNT(*) AS n FROM stacks GROUP BY job_id")}
    assert per_job == {job_id: 1 for job_id in job_ids}
    assert queue.counts_by_status(db) == {"pending": 0, "running": 0, "done": 40, "failed": 0}
