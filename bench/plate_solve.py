"""Plate-solve time per stack beside the stacking time, on the real M 94 frames.

    python bench/plate_solve.py                 # every set, 3 repeats
    python bench/plate_solve.py --repeat 5 --sets 2025-04-09

For every set it stacks the frames (stack_files, plate solving off) and times that, then solves the
stack's luminance with solve-field as the stacker does (hinted by RA/DEC and the optics' pixel scale,
lib/stacking/solve.py) and times that; the same stack resampled to 0.6x (an S30-like pixel scale) is
solved too. Prints the median wall times, whether it solved, the scale found and where the WCS puts
M 94 (192.7212, +41.1197) in pixels. Target: a solve takes at most 2 s on 2 cores. Asserts nothing.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.stacking import StackOptions, stack_files  # noqa: E402
from lib.stacking import solve  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "seestar-m94"
M94 = (192.7212, 41.1197)


def timed(function, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sets", nargs="*", default=["2025-03-27", "2025-04-09", "both"])
    args = parser.parse_args()
    if not solve.solver_available():
        print("solve-field is not installed: bash infra/plate-solver.sh")
        return 1
    print(f"{os.cpu_count()} cores; median of {args.repeat} runs\n")
    print(f"{'set':<22} {'frames':>6} {'stack s':>8} {'solve s':>8} {'solved':>6} {'″/px':>6}  M 94 at (x, y)")
    for name in args.sets:
        frames = sorted(REAL.glob("*/*.fit")) if name == "both" else sorted((REAL / name).glob("*.fit"))
        stack_time, result = timed(lambda: stack_files(frames, options=StackOptions(plate_solve=False)),
                                   args.repeat)
        image = result.image
        with fits.open(io.BytesIO(result.fits_bytes)) as hdul:
            header = hdul[0].header.copy()
        hint = solve.hint_from_header(header)
        for label, picture, scale in ((name, image, 1.0), (f"{name} at 0.6x", None, 0.6)):
            if picture is None:
                picture = np.stack([cv2.resize(p, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                                    for p in image])
            lum = solve.stack_luminance(picture)
            scaled_hint = solve.Hint(hint.ra_deg, hint.dec_deg, hint.scale_arcsec / scale)
            solve_time, solution = timed(lambda: solve.solve_luminance(lum, scaled_hint), args.repeat)
            where, found = "-", "-"
            if solution.solved:
                out = fits.Header()
                solve.write_solution(out, solution)
                wcs = solve.celestial_wcs(out)
                x, y = wcs.all_world2pix([M94], 0)[0]
                where, found = f"({x:.1f}, {y:.1f})", f"{solve.scale_arcsec(wcs):.3f}"
            shown_stack = f"{stack_time:8.2f}" if scale == 1.0 else f"{'':>8}"
            print(f"{label:<22} {len(frames):>6} {shown_stack} {solve_time:8.2f} {str(solution.solved):>6} "
                  f"{found:>6}  {where}{'' if solution.solved else '  ' + str(solution.reason)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
