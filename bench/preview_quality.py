"""The preview picture measured against its goals, on real frames.

    python bench/preview_quality.py                       # stacks each night of ../shared/data/seestar-m94, and all
    python bench/preview_quality.py STACK.fits [...]      # measures given stacks (with their COVERAGE)

For every stack it plans and renders the preview as the stacker does (lib/stacking/preview.py), times
both steps, and prints each measure of lib/stacking/picture_quality.py beside its goal. The rendered
PNGs go to bench/out/ (git-ignored) for a look. It prints figures and asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.stacking import picture_quality, preview, stack_files  # noqa: E402
from lib.stacking.stars import aperture_fluxes, detect_stars  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "seestar-m94"


def _stars(image: np.ndarray):
    """Stars of a stack found as the pipeline finds them, and their (m, 3) fluxes for the white balance."""
    luminance = (image[0] + 2 * image[1] + image[2]) * np.float32(0.25 * 65535)
    found = detect_stars(luminance, saturation=np.inf)
    fluxes = np.column_stack([aperture_fluxes(p, found.x[:50], found.y[:50], 6.0) for p in image])
    return found, fluxes


def report(name: str, image: np.ndarray, cover: np.ndarray | None, out: Path) -> None:
    found, fluxes = _stars(image)
    start = time.perf_counter()
    plan = preview.plan_rendering(image, cover, fluxes)
    planned = time.perf_counter()
    rgb = preview.render(image, plan)
    rendered = time.perf_counter()
    png = preview.encode_png(rgb)
    encoded = time.perf_counter()
    (out / f"{name}.png").write_bytes(png)
    y0, y1, x0, x1 = plan.crop
    xy = np.column_stack([found.x - x0, found.y - y0])[:100]
    result = picture_quality.measure(rgb, preview.calibrate(image, plan), xy)
    print(f"\n== {name}: {image.shape[2]}x{image.shape[1]} -> crop {x1 - x0}x{y1 - y0} "
          f"(rows {y0}:{y1}, columns {x0}:{x1})")
    print(f"   cost: plan {1000 * (planned - start):.0f} ms, render {1000 * (rendered - planned):.0f} ms, "
          f"PNG {1000 * (encoded - rendered):.0f} ms")
    print(f"   gains R G B {np.round(plan.gains, 3)}, {plan.stars_balanced} stars, {plan.cells_used} sky cells, "
          f"black {plan.black:.3g}, white {plan.white:.3g}, strength {plan.strength:.0f}")
    rows = [("clipped pixels", f"{100 * result['clipped_fraction']:.4f} %", "<= 0.01 %", "clipped_fraction"),
            ("sky channels R G B", " ".join(f"{v:.0f}" for v in result["sky_levels"]), "", None),
            ("sky cast (max-min)", f"{result['sky_cast']:.1f} levels", "<= 1", "sky_cast"),
            ("sky level", f"{result['sky_level']:.1f} / 255", "30..64", "sky_level_low"),
            ("chroma / luminance noise", f"{result['chroma_ratio']:.2f}", "<= 3", "chroma_ratio"),
            ("edge / middle noise", f"{result['edge_ratio']:.2f}", "<= 1.1", "edge_ratio"),
            ("star colour kept (Spearman)", f"{result.get('star_colour', float('nan')):.2f}", ">= 0.7", "star_colour")]
    missed = " ".join(picture_quality.failures(result))
    for label, value, goal, key in rows:
        flag = "" if key is None else ("MISSED" if key in missed or (key == "sky_level_low" and "sky_level" in missed)
                                       else "ok")
        print(f"   {label:<30} {value:>16}   goal {goal:<10} {flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fits", nargs="*", type=Path, help="stacks to measure (default: stack the real frames)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fits:
        for path in args.fits:
            with fits.open(path) as hdul:
                cover = hdul["COVERAGE"].data if "COVERAGE" in hdul else None
                report(path.stem, hdul[0].data.astype(np.float32), cover, args.out)
        return
    sets = {night.name: sorted(night.glob("*.fit*")) for night in sorted(REAL.iterdir()) if night.is_dir()}
    sets["all"] = [p for paths in sets.values() for p in paths]
    for name, paths in sets.items():
        result = stack_files(paths)
        report(f"m94-{name}", result.image, result.coverage, args.out)


if __name__ == "__main__":
    main()
