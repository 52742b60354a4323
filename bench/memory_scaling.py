"""Peak memory of a stack against its number of frames: it should stay flat.

    python bench/memory_scaling.py                      # 32, 128 and 400 full-size frames
    python bench/memory_scaling.py --counts 16,64       # a quick run

Writes synthetic full-size (1080 x 1920) Seestar-like frames into a temporary directory (the largest
count once; smaller runs take the first frames), stacks each count with
`python stacker.py stack ... -o OUT.fits` and prints wall time and the peak memory of the whole
process tree (sum of RSS, sum of PSS) and of its largest process. Everything it writes is deleted at
the end. It prints figures and asserts nothing.
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

from lib.stacking.synthetic import make_session  # noqa: E402
from stack_vs_siril import run_measured  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="32,128,400", help="comma-separated frame counts")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write frames (default: system temp)")
    args = parser.parse_args(argv)
    counts = sorted(int(c) for c in args.counts.split(","))

    with tempfile.TemporaryDirectory(prefix="crowdsky-memory-", dir=args.tmp) as scratch:
        start = time.perf_counter()
        session = make_session(Path(scratch) / "frames", n_frames=counts[-1], shape=(1920, 1080), n_stars=250,
                               hot_pixels=200, max_shift_px=30, seed=11)
        print(f"wrote {counts[-1]} frames of 1080x1920 in {time.perf_counter() - start:.0f} s")
        print(f"{'frames':>6} {'wall s':>7} {'s/frame':>7} {'tree RSS MB':>11} {'tree PSS MB':>11} {'largest MB':>10}")
        for count in counts:
            out = Path(scratch) / f"stack-{count}.fits"
            run = run_measured([sys.executable, "stacker.py", "stack", *map(str, session.paths[:count]),
                                "-o", str(out)], cwd=ROOT)
            if run.returncode != 0:
                print(f"{count:6d} failed: {run.stderr[-500:]}")
                continue
            print(f"{count:6d} {run.wall_s:7.1f} {run.wall_s / count:7.3f} {run.tree_rss_mb:11.0f} "
                  f"{run.tree_pss_mb:11.0f} {run.largest_rss_mb:10.0f}", flush=True)
            out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
