"""Wake-up: how long a finalized chunk waits before an idle stacker starts on it.

    .venv/bin/python bench/wakeup.py [--repeats 3] [--idle 6] [--database postgresql sqlite]
                                     [--poll-seconds 5]

For each database, starts the ingest app and one ``stacker.py --loop``, then, a few times: uploads a
small synthetic night, leaves the stacker idle for a while (``--idle`` seconds plus a random part,
so its wait is caught at different points), finalizes, and measures from just before the finalize
request to
- claimed: the job's ``started_at`` (the stacker took it), and
- first progress: the stacker's first progress line for the job ("0% downloading 1/5").
On PostgreSQL the idle stacker LISTENs and is woken by NOTIFY; on SQLite it polls, waiting 0.5 s,
1 s, 2 s, ... up to ``CROWDSKY_POLL_SECONDS`` (default 5) between checks. Target: under 2 s.
Prints every measurement and the median and worst per database; nothing is asserted. PostgreSQL
is the machine's server (``CROWDSKY_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), in a database of its own dropped afterwards.
A JSON summary goes to ``bench/out/wakeup.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.stacking.synthetic import make_session  # noqa: E402  (after the path fix above)
from tests.apps import Deployment  # noqa: E402

TARGET_S = 2.0


def log_time(line: str) -> float:
    stamp = json.loads(line)["time"]
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def first_progress(log_path: Path, job_id: int, deadline_s: float = 60) -> float | None:
    """Unix time of the stacker's first progress line for *job_id* ("job 7:   0% downloading 1/5")."""
    pattern = re.compile(rf'"event": "job {job_id}: +\d+% ')
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if pattern.search(line):
                return log_time(line)
        time.sleep(0.01)
    return None


def measure(database: str, args, tmp: Path) -> list[dict]:
    env = {}
    if args.poll_seconds is not None:
        env["CROWDSKY_POLL_SECONDS"] = str(args.poll_seconds)
    admin = name = None
    if database == "postgresql":
        server = make_url(os.environ.get("CROWDSKY_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/postgres")
        admin = psycopg.connect(server.set(drivername="postgresql").render_as_string(hide_password=False),
                                autocommit=True, connect_timeout=5)
        name = f"crowdsky_wakeup_{secrets.token_hex(4)}"
        admin.execute(f'CREATE DATABASE "{name}"')
        env["CROWDSKY_DATABASE_URL"] = server.set(database=name).render_as_string(hide_password=False)
    d = Deployment(tmp / database, env)
    stacker = None
    try:
        d.start_app()
        user = d.user("waiting")
        stacker_log = d.data_dir / "stacker.log"
        with open(stacker_log, "wb") as out:
            stacker = subprocess.Popen([sys.executable, "stacker.py", "--loop"], cwd=ROOT, env=d.env,
                                       stdout=out, stderr=subprocess.STDOUT)
        started_at = _started_at_reader(d, database)
        results = []
        for rep in range(args.repeats):
            night = make_session(tmp / f"{database}-{rep}", n_frames=5, seed=700 + rep)
            session = user.new_session()
            for path in night.paths:
                assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
            idle = args.idle + random.uniform(0, 5)
            time.sleep(idle)                               # the stacker sits in its idle wait
            t0 = time.time()
            job_id = user.post(f"/api/v1/sessions/{session}/finalize").json()["jobs"][0]["id"]
            claimed = None
            deadline = time.monotonic() + 60
            while claimed is None and time.monotonic() < deadline:
                claimed = started_at(job_id)
                time.sleep(0.005)
            progress = first_progress(stacker_log, job_id)
            row = {"repeat": rep + 1, "idle_s": round(idle, 1),
                   "claimed_s": None if claimed is None else round(claimed - t0, 3),
                   "first_progress_s": None if progress is None else round(progress - t0, 3)}
            results.append(row)
            print(f"  {database:10s} #{rep + 1}: idle {row['idle_s']:4.1f} s -> claimed after "
                  f"{row['claimed_s']} s, first progress after {row['first_progress_s']} s", flush=True)
            _wait_until_finished(user, job_id)
        return results
    finally:
        if stacker is not None and stacker.poll() is None:
            stacker.send_signal(signal.SIGTERM)
            try:
                stacker.wait(30)
            except subprocess.TimeoutExpired:
                stacker.kill()
        d.stop_app()
        if admin is not None:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


def _started_at_reader(d: Deployment, database: str):
    """A function job_id -> the job's started_at (Unix seconds) or None, read from the database."""
    if database == "postgresql":
        url = make_url(d.env["CROWDSKY_DATABASE_URL"]).set(drivername="postgresql")
        conn = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        return lambda job_id: conn.execute("SELECT started_at FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
    path = d.data_dir / "crowdsky.db"

    def read(job_id: int):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT started_at FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        finally:
            conn.close()
    return read


def _wait_until_finished(user, job_id: int, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if user.get(f"/api/v1/jobs/{job_id}").json()["status"] in ("done", "failed"):
            return
        time.sleep(0.2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="finalizes per database (default 3)")
    parser.add_argument("--idle", type=float, default=6.0,
                        help="seconds the stacker idles before each finalize, plus 0-5 s at random (default 6)")
    parser.add_argument("--database", nargs="+", choices=["postgresql", "sqlite"], default=["postgresql", "sqlite"])
    parser.add_argument("--poll-seconds", type=float, default=None,
                        help="CROWDSKY_POLL_SECONDS for the stacker (default: the setting's default, 5)")
    args = parser.parse_args(argv)

    summary = {}
    with tempfile.TemporaryDirectory(prefix="crowdsky-wakeup-") as tmp:
        for database in args.database:
            print(f"{database}:", flush=True)
            rows = measure(database, args, Path(tmp))
            claimed = [r["claimed_s"] for r in rows if r["claimed_s"] is not None]
            progress = [r["first_progress_s"] for r in rows if r["first_progress_s"] is not None]
            summary[database] = {"runs": rows,
                                 "claimed_median_s": statistics.median(claimed) if claimed else None,
                                 "claimed_max_s": max(claimed) if claimed else None,
                                 "first_progress_median_s": statistics.median(progress) if progress else None,
                                 "first_progress_max_s": max(progress) if progress else None}
    print(f"\nfinalize -> first progress (target < {TARGET_S:.0f} s):")
    for database, s in summary.items():
        worst = s["first_progress_max_s"]
        verdict = "n/a" if worst is None else ("within target" if worst < TARGET_S else "over target")
        print(f"  {database:10s}: median {s['first_progress_median_s']} s, worst {worst} s ({verdict}); "
              f"claimed: median {s['claimed_median_s']} s, worst {s['claimed_max_s']} s")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "wakeup.json").write_text(json.dumps({"target_s": TARGET_S, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
