"""A night of Seestar frames: CrowdSky cold (`stacker.py stack`) against Siril 1.0.6 on the same frames.

    python bench/night.py                    # 240 synthetic S50 frames (40 minutes of 10 s subs)
    python bench/night.py --frames 64        # quicker
    python bench/night.py --frames 240 --drizzle    # also `stacker.py stack --drizzle 2`
    python bench/night.py --keep DIR         # write the frames into DIR and keep them

The frames come from lib/stacking/synthetic.py at full S50 size (1080 x 1920): stars with Gaussian
PSFs, shot and read noise, hot pixels, one satellite trail and one cloudy frame, each frame turned by
up to ±3° and shifted by up to ±60 px (an alt-az mount's field rotation and drift). Both tools run
one after the other, each in a process tree of its own, measured as in stack_vs_siril.py: wall time,
peak memory of the process tree (RSS sum, PSS sum, largest process), sky noise, FWHM and SNR of the
same stars, frames rejected, ratios.

With --warm it also runs the warm path: a CrowdSky on its embedded defaults (SQLite, local folders;
tests/apps.py's Deployment) with the ingest app and an idle `stacker.py --loop` already running; the
frames are uploaded through the API, then the session is finalized, and it prints the time from
finalize until the deep stack holds every chunk's frames, and the stacker's peak memory (process
tree) over that time. It prints figures and asserts nothing; on a shared machine times move a lot
between runs.
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stack_vs_siril import SIRIL, _proc_kb, _process_tree, bench_set, run_measured  # noqa: E402

from lib.stacking.synthetic import make_session  # noqa: E402


def make_night(folder: Path, frames: int, seed: int):
    """frames synthetic full-size frames in folder: 10 s subs turned by up to ±3° and shifted by up to
    ±60 px, 250 stars, 200 hot pixels, a satellite trail in frame 5 and a cloudy frame in the middle."""
    start = time.perf_counter()
    session = make_session(folder, n_frames=frames, shape=(1080, 1920), n_stars=250, hot_pixels=200,
                           satellite_frame=5, cloudy_frame=frames // 2 if frames > 10 else None,
                           max_rotation_deg=3.0, max_shift_px=60.0, seed=seed)
    print(f"made {frames} frames in {folder} in {time.perf_counter() - start:.0f} s")
    return session


def warm_run(frames: list[Path], folder: Path) -> None:
    """Upload frames to a running service, finalize, and time the running stacker until the deep stack
    holds every chunk's frames."""
    from tests.apps import Deployment  # the test suite's real-process helpers

    deployment = Deployment(folder, {"CROWDSKY_POLL_SECONDS": "0.2"})
    deployment.start_app()
    stacker = subprocess.Popen([sys.executable, "stacker.py", "--loop"], cwd=ROOT, env=deployment.env,
                               stdout=subprocess.DEVNULL, stderr=open(folder / "stacker.log", "ab"))
    try:
        owner = deployment.user("night")
        session = owner.new_session()
        start = time.perf_counter()
        for path in frames:
            with open(path, "rb") as body:
                answer = owner.put_frame(session, path.name, body)
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"upload of {path.name}: {answer.status_code} {answer.text[:300]}")
        upload_s = time.perf_counter() - start
        peak = {"rss": 0, "pss": 0}
        done = threading.Event()

        def sample() -> None:
            tick = 0
            while not done.is_set():
                pids = _process_tree(stacker.pid)
                peak["rss"] = max(peak["rss"], sum(_proc_kb(p, "status", "VmRSS") for p in pids))
                if tick % 10 == 0:
                    peak["pss"] = max(peak["pss"], sum(_proc_kb(p, "smaps_rollup", "Pss") for p in pids))
                tick += 1
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        finalized = owner.post(f"/api/v1/sessions/{session}/finalize")
        if finalized.status_code != 200:
            raise RuntimeError(f"finalize: {finalized.status_code} {finalized.text[:300]}")
        jobs = finalized.json()["jobs"]
        deep_frames = -1
        while time.perf_counter() - start < 3600:
            states = [owner.get(f"/api/v1/jobs/{job['id']}").json()["status"] for job in jobs]
            if any(s == "failed" for s in states):
                raise RuntimeError(f"a chunk job failed: {states}")
            if all(s == "done" for s in states):
                stacks = owner.get("/api/v1/stacks").json()["stacks"]
                chunk_frames = sum(s["frames"] for s in stacks if s["kind"] == "chunk")
                deep_frames = max([s["frames"] for s in stacks if s["kind"] == "deep"], default=-1)
                if deep_frames == chunk_frames:
                    break
            time.sleep(0.2)
        warm_s = time.perf_counter() - start
        done.set()
        sampler.join()
        print(f"{'CrowdSky warm':12} {warm_s:7.2f} {peak['rss'] / 1024:11.0f} {peak['pss'] / 1024:11.0f}"
              f"   finalize -> deep stack of {deep_frames} frames, {len(jobs)} chunk jobs "
              f"(upload of {len(frames)} frames before: {upload_s:.0f} s)")
    finally:
        stacker.send_signal(signal.SIGTERM)
        try:
            stacker.wait(60)
        except subprocess.TimeoutExpired:
            stacker.kill()
        deployment.stop_app()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, help="folder for the frames, kept afterwards")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "night")
    parser.add_argument("--no-siril", action="store_true")
    parser.add_argument("--drizzle", action="store_true", help="also time `stacker.py stack --drizzle 2`")
    parser.add_argument("--warm", action="store_true", help="also upload to a running service and time it")
    parser.add_argument("--cold", action=argparse.BooleanOptionalAction, default=True,
                        help="run the cold comparison (--no-cold: only the warm run)")
    args = parser.parse_args(argv)
    use_siril = SIRIL is not None and not args.no_siril
    if not use_siril:
        print("(no Siril comparison" + (": siril-cli not found)" if SIRIL is None else ")"))

    with tempfile.TemporaryDirectory(prefix="crowdsky-night-") as scratch:
        folder = args.keep or Path(scratch)
        session = make_night(folder, args.frames, args.seed)
        if args.cold:
            bench_set(f"synthetic night, {args.frames} frames of 1080x1920", session.paths, args.out, use_siril,
                      1, session)
        if args.drizzle:
            out = args.out / "crowdsky-x2.fits"
            run = run_measured([sys.executable, "stacker.py", "stack", *map(str, session.paths), "-o", str(out),
                                "--drizzle", "2"], cwd=ROOT)
            print(f"{'CrowdSky x2':12} {run.wall_s:7.2f} {run.tree_rss_mb:11.0f} {run.tree_pss_mb:11.0f} "
                  f"{run.largest_rss_mb:10.0f}   (Bayer drizzle 2x, exit {run.returncode})")
        if args.warm:
            warm_run(session.paths, Path(scratch) / "service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
