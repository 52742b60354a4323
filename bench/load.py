"""Load: many uploaders at once through the ingest app, into S3 (SeaweedFS) and PostgreSQL.

    .venv/bin/python bench/load.py [--uploaders 20] [--frames 20] [--source real|synthetic]
                                   [--shape 256x384] [--database postgresql|sqlite] [--threads 16]

Each uploader is a user of its own with one upload session; all start together and upload their
frames one after another, then finalize. Frames: ``real`` (default) are copies of one real Seestar
S50 frame from ``../shared/data/seestar-m94/`` (4.15 MB) whose DATE-OBS differs by a millisecond
each, so every upload is a distinct frame of one chunk per session while the pixels stay real;
``synthetic`` are small star fields (``--shape``), made up front. Everything runs on loopback: a
SeaweedFS ``weed`` server started here, the machine's PostgreSQL (``CROWDSKY_TEST_POSTGRES_URL``,
default ``postgresql://postgres@127.0.0.1:5432/postgres``; a database of its own, dropped after).

Prints throughput (frames/s, MB/s), upload latency percentiles (p50/p90/p99/max), finalize time
and what was stored (rows, objects, chunks). Nothing is asserted. A JSON summary is written to
``bench/out/load.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import requests
from astropy.io import fits
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.stacking.synthetic import make_session  # noqa: E402  (after the path fix above)
from tests.apps import Deployment  # noqa: E402
from tests.servers import S3Server  # noqa: E402

REAL_FRAME = ROOT.parent / "shared" / "data" / "seestar-m94" / "2025-04-09" / \
    "Light_M 94_10.0s_IRCUT_20250409-225435.fit"
MB = 1e6


class RealFrames:
    """Distinct copies of one real frame: the header is rewritten (DATE-OBS + n ms), the data kept."""

    def __init__(self, path: Path):
        raw = path.read_bytes()
        end = next(offset + 2880 for offset in range(0, len(raw), 2880)
                   if any(raw[offset + i: offset + i + 80].rstrip() == b"END" for i in range(0, 2880, 80)))
        self.header, self.data = fits.Header.fromstring(raw[:end]), raw[end:]
        self.header_len, self.start = end, datetime.fromisoformat(self.header["DATE-OBS"])
        self.lock = threading.Lock()

    def frame(self, n: int) -> bytes:
        with self.lock:                    # one Header object, rewritten per frame
            self.header["DATE-OBS"] = (self.start + timedelta(milliseconds=n)).isoformat(timespec="microseconds")
            block = self.header.tostring().encode("ascii")
        assert len(block) == self.header_len, "rewriting DATE-OBS changed the header size"
        return block + self.data


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploaders", type=int, default=20, help="concurrent uploaders (default 20)")
    parser.add_argument("--frames", type=int, default=20, help="frames per uploader (default 20)")
    parser.add_argument("--source", choices=["real", "synthetic"], default="real")
    parser.add_argument("--shape", default="256x384", help="synthetic frame H x W (default 256x384)")
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--threads", type=int, default=16, help="the app's request threads (default 16)")
    args = parser.parse_args(argv)
    total = args.uploaders * args.frames

    with tempfile.TemporaryDirectory(prefix="crowdsky-load-") as tmp:
        tmp = Path(tmp)
        if args.source == "real":
            real = RealFrames(REAL_FRAME)

            def frame(i: int, k: int) -> tuple[str, bytes]:
                return f"u{i:03d}_{k:04d}.fit", real.frame(i * 100_000 + k)
        else:
            height, width = (int(v) for v in args.shape.lower().split("x"))
            made = [make_session(tmp / f"u{i}", n_frames=args.frames, shape=(height, width), seed=5000 + i)
                    for i in range(args.uploaders)]

            def frame(i: int, k: int) -> tuple[str, bytes]:
                return made[i].paths[k].name, made[i].paths[k].read_bytes()
        frame_mb = len(frame(0, 0)[1]) / MB
        print(f"{args.uploaders} uploaders x {args.frames} frames = {total} frames of {frame_mb:.2f} MB "
              f"({total * frame_mb:.0f} MB), {args.source}; app with {args.threads} threads on "
              f"{args.database} + S3 (SeaweedFS)")

        server = S3Server(tmp / "weed")
        server.start()
        admin = database = None
        env = {"CROWDSKY_BUFFER_URL": server.url(), "CROWDSKY_BUFFER_USER": server.access_key,
               "CROWDSKY_BUFFER_PASSWORD": server.secret_key,
               "CROWDSKY_QUOTA_BYTES": str(10 ** 12)}
        if args.database == "postgresql":
            server_url = make_url(os.environ.get("CROWDSKY_TEST_POSTGRES_URL")
                                  or "postgresql://postgres@127.0.0.1:5432/postgres")
            admin = psycopg.connect(server_url.set(drivername="postgresql").render_as_string(hide_password=False),
                                    autocommit=True, connect_timeout=5)
            database = f"crowdsky_load_{secrets.token_hex(4)}"
            admin.execute(f'CREATE DATABASE "{database}"')
            env["CROWDSKY_DATABASE_URL"] = server_url.set(database=database).render_as_string(hide_password=False)
        d = Deployment(tmp / "crowdsky", env)
        try:
            result = run(d, server, args, frame, frame_mb)
        finally:
            d.stop_app()
            server.kill()          # its data is a temp folder: no need for weed's slow clean shutdown
            if admin is not None:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                admin.close()

    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run(d: Deployment, server: S3Server, args, frame, frame_mb: float) -> dict:
    d.start_app("--threads", str(args.threads))
    users = [d.user(f"load{i:03d}") for i in range(args.uploaders)]
    sessions = [user.new_session() for user in users]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(args.uploaders)

    def upload_night(i: int) -> None:
        user, session = users[i], sessions[i]
        go.wait()
        for k in range(args.frames):
            name, body = frame(i, k)
            started = time.perf_counter()
            try:
                response = user.http.put(f"{d.url}/api/v1/sessions/{session}/frames/{name}", data=body,
                                         headers={"Content-Type": "application/fits"}, timeout=300)
                status = response.status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                if status != 201:
                    failures.append(f"{name}: {status}")

    started = time.perf_counter()
    with ThreadPoolExecutor(args.uploaders) as pool:
        list(pool.map(upload_night, range(args.uploaders)))
    elapsed = time.perf_counter() - started

    finalize_s = []
    chunks = []
    for user, session in zip(users, sessions):
        t = time.perf_counter()
        response = user.post(f"/api/v1/sessions/{session}/finalize", timeout=300)
        finalize_s.append(time.perf_counter() - t)
        chunks += response.json().get("jobs", []) if response.status_code == 200 else []
    bucket = d.env["CROWDSKY_BUFFER_URL"].split("//", 1)[1].split("?", 1)[0]
    objects = sum(1 for _ in server.minio().list_objects(bucket, prefix="raw/", recursive=True))
    rows = sum(len(user.get(f"/api/v1/sessions/{s}").json()["frames"]) for user, s in zip(users, sessions))

    total, ok = len(latencies), len(latencies) - len(failures)
    ms = [1000 * v for v in latencies]
    result = {
        "uploaders": args.uploaders, "frames_per_uploader": args.frames, "source": args.source,
        "frame_mb": round(frame_mb, 3), "database": args.database, "app_threads": args.threads,
        "seconds": round(elapsed, 2), "frames_per_s": round(ok / elapsed, 1),
        "mb_per_s": round(ok * frame_mb / elapsed, 1),
        "latency_ms": {"p50": round(percentile(ms, 50), 1), "p90": round(percentile(ms, 90), 1),
                       "p99": round(percentile(ms, 99), 1), "max": round(max(ms), 1),
                       "mean": round(statistics.fmean(ms), 1)},
        "failed": len(failures), "rows": rows, "objects": objects, "chunks": len(chunks),
        "frames_per_chunk": sorted({c["frames"] for c in chunks}),
        "finalize_ms_p50": round(1000 * percentile(finalize_s, 50), 1),
    }
    print(f"uploads       : {ok}/{total} in {elapsed:.1f} s -> {result['frames_per_s']} frames/s, "
          f"{result['mb_per_s']} MB/s")
    lat = result["latency_ms"]
    print(f"latency (ms)  : p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"finalize (ms) : p50 {result['finalize_ms_p50']}")
    print(f"stored        : {rows} rows, {objects} objects, {len(chunks)} chunks of "
          f"{result['frames_per_chunk']} frames")
    for failure in failures[:10]:
        print("  failed:", failure)
    return result


if __name__ == "__main__":
    sys.exit(main())
