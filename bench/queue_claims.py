"""Claims per second with many concurrent claimer processes, on PostgreSQL, MariaDB and SQLite.

    .venv/bin/python bench/queue_claims.py [--jobs 2000] [--processes 8] [--backends postgresql,mariadb,sqlite]

For each backend: enqueue the jobs into a scratch database, let the claimer processes claim until
nothing is left, and print the rate and the number of double claims (a job handed to two claimers).
`lib.queue.claim` must show 0. The same run with `naive_claim` (SELECT, then UPDATE, no lock) shows
the race that `claim` exists to prevent. Servers come from CROWDSKY_TEST_POSTGRES_URL and
CROWDSKY_TEST_MARIADB_URL (defaults as in tests/databases.py); scratch databases are dropped after.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pymysql
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lib.db  # noqa: E402
from lib import queue  # noqa: E402
from tests.databases import DEFAULT_URLS  # noqa: E402  (the servers the tests use)


def naive_claim(db, worker: str, lease_seconds: float) -> queue.Lease | None:
    """The broken claim: read the next job, then mark it running. Two claimers can both read the
    same id before either writes, and both believe they own it. For comparison only."""
    t = lib.db.now()
    token = secrets.token_hex(16)
    with db:
        row = next(iter(db.query(
            "SELECT id FROM jobs WHERE status = 'pending' AND run_after <= :now "
            "ORDER BY fair_rank, id LIMIT 1", now=t)), None)
        if row is None:
            return None
        db.query("UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_token = :token, "
                 "lease_expires = :expires, worker = :worker, started_at = :now WHERE id = :id",
                 token=token, expires=t + lease_seconds, worker=worker, now=t, id=row["id"])
        job = next(iter(db.query("SELECT * FROM jobs WHERE id = :id", id=row["id"])))
    return queue.Lease(job_id=row["id"], token=token, job=dict(job), expires=t + lease_seconds)


CLAIMS = {"lib.queue.claim": queue.claim, "naive": naive_claim}


def claimer(url: str, claim_name: str, worker: str, start, results) -> None:
    db = lib.db.connect(url)
    claim = CLAIMS[claim_name]
    start.wait()
    began = time.perf_counter()
    claimed = []
    while (lease := claim(db, worker, 300)) is not None:
        claimed.append(lease.job_id)
    results.put((began, time.perf_counter(), claimed))


def run(url: str, claim_name: str, jobs: int, processes: int) -> tuple[float, int, int]:
    """Enqueue *jobs* fresh jobs, drain them with *processes* claimers: (claims/s, claims, doubles)."""
    db = lib.db.connect(url)
    with db:
        db.query("DELETE FROM jobs")
        for i in range(jobs):
            queue.enqueue(db, kind="chunk", chunk_id=i, owner_id=1 + i % 5, max_attempts=3)
    db.close()                      # forked claimers must not share this process's connections

    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=claimer, args=(url, claim_name, f"claimer-{i}", start, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(end for _, end, _ in reports) - min(began for began, _, _ in reports)
    claims = [job_id for _, _, claimed in reports for job_id in claimed]
    return len(claims) / elapsed, len(claims), len(claims) - len(set(claims))


class ScratchDatabase:
    """A database of its own on the test server of *backend* (for SQLite, a temporary file)."""

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"crowdsky_bench_{secrets.token_hex(4)}"
        if backend == "sqlite":
            self.folder = tempfile.TemporaryDirectory()
            self.url = f"sqlite:///{Path(self.folder.name) / 'bench.db'}"
            return
        env = "CROWDSKY_TEST_POSTGRES_URL" if backend == "postgresql" else "CROWDSKY_TEST_MARIADB_URL"
        server = make_url(os.environ.get(env) or DEFAULT_URLS[backend])
        self.url = server.set(database=self.name).render_as_string(hide_password=False)
        if backend == "postgresql":
            conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
            self.admin = psycopg.connect(conninfo, autocommit=True)
            self.sql = self.admin.execute
            self.sql(f'CREATE DATABASE "{self.name}"')
        else:
            self.admin = pymysql.connect(host=server.host, port=server.port or 3306,
                                         user=server.username, password=server.password or "",
                                         autocommit=True)
            self.sql = self.admin.cursor().execute
            self.sql(f"CREATE DATABASE `{self.name}`")

    def drop(self) -> None:
        if self.backend == "sqlite":
            self.folder.cleanup()
        elif self.backend == "postgresql":
            self.sql(f'DROP DATABASE "{self.name}" WITH (FORCE)')
        else:
            self.sql(f"DROP DATABASE `{self.name}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--backends", default="postgresql,mariadb,sqlite")
    args = parser.parse_args()

    print(f"{args.jobs} jobs, {args.processes} claimer processes, {os.cpu_count()} CPUs")
    print(f"{'backend':<12}{'claim':<18}{'claims/s':>10}{'claims':>8}{'double claims':>15}")
    for backend in args.backends.split(","):
        scratch = ScratchDatabase(backend)
        try:
            for claim_name in CLAIMS:
                rate, claims, doubles = run(scratch.url, claim_name, args.jobs, args.processes)
                print(f"{backend:<12}{claim_name:<18}{rate:>10.0f}{claims:>8}{doubles:>15}", flush=True)
        finally:
            scratch.drop()


if __name__ == "__main__":
    main()
