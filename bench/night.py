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

Only the cold path is measured here: the warm one (frames uploaded through the API to a running
`stacker.py --loop`, chunks then the deep stack) needs the service's processes and is not in this
bench yet. It prints figures and asserts nothing; on a shared machine times move a lot between runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stack_vs_siril import SIRIL, bench_set, run_measured  # noqa: E402

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, help="folder for the frames, kept afterwards")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "night")
    parser.add_argument("--no-siril", action="store_true")
    parser.add_argument("--drizzle", action="store_true", help="also time `stacker.py stack --drizzle 2`")
    args = parser.parse_args(argv)
    use_siril = SIRIL is not None and not args.no_siril
    if not use_siril:
        print("(no Siril comparison" + (": siril-cli not found)" if SIRIL is None else ")"))

    with tempfile.TemporaryDirectory(prefix="crowdsky-night-") as scratch:
        folder = args.keep or Path(scratch)
        session = make_night(folder, args.frames, args.seed)
        bench_set(f"synthetic night, {args.frames} frames of 1080x1920", session.paths, args.out, use_siril,
                  1, session)
        if args.drizzle:
            out = args.out / "crowdsky-x2.fits"
            run = run_measured([sys.executable, "stacker.py", "stack", *map(str, session.paths), "-o", str(out),
                                "--drizzle", "2"], cwd=ROOT)
            print(f"{'CrowdSky x2':12} {run.wall_s:7.2f} {run.tree_rss_mb:11.0f} {run.tree_pss_mb:11.0f} "
                  f"{run.largest_rss_mb:10.0f}   (Bayer drizzle 2x, exit {run.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
