"""Bayer drizzle 2x: CrowdSky against Siril 1.0.6's drizzle on the same frames, with both plain stacks.

    python bench/drizzle_vs_siril.py                      # the 6 frames of 2025-03-27
    python bench/drizzle_vs_siril.py --sets 2025-04-09,all --repeat 2
    python bench/drizzle_vs_siril.py --no-siril

For every data set it runs, one after the other and each in a process tree of its own,
    python stacker.py stack FRAMES... -o OUT.fits                  (plain)
    python stacker.py stack FRAMES... -o OUT.fits --drizzle 2      (Bayer drizzle, pixfrac 0.7)
    siril-cli -s script.ssf     plain:   convert -debayer, register, stack rej 3 3 -norm=addscale
                                drizzle: the same with `register light -drizzle` (Siril 1.0.6's drizzle
                                         upscales the debayered frames 2x while registering)
and prints for each: wall time, peak memory of the process tree (RSS and PSS sums, see
stack_vs_siril.py), star FWHM in pixels and in arcseconds (nominal S50 scale 206.265 XPIXSZ / FOCALLEN
times frame width / output width), sky noise per output pixel and after binning to the frames' pixel
size (a drizzled image has 4 pixels where a frame has one: binned, its noise compares with a plain
stack's), and the number of stars found. Siril's brightness scale is matched to CrowdSky's by the median
flux ratio of paired stars. It prints figures and asserts nothing; the machine's other load makes
times noisy.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stack_vs_siril import REAL, SIRIL, SIRIL_SCRIPT, Run, best_of, luminance, run_measured, sky_noise  # noqa: E402

from lib.stacking.register import RegistrationError, find_registration  # noqa: E402
from lib.stacking.solve import pixel_scale_arcsec  # noqa: E402
from lib.stacking.stars import aperture_fluxes, detect_stars  # noqa: E402


def run_crowdsky(frames: list[Path], out: Path, drizzle: int, repeat: int) -> tuple[Run, Path]:
    path = out / f"crowdsky-x{drizzle}.fits"
    command = [sys.executable, "stacker.py", "stack", *map(str, frames), "-o", str(path), "--drizzle", str(drizzle)]
    runs = [run_measured(command, cwd=ROOT) for _ in range(repeat)]
    if any(r.returncode for r in runs):
        raise RuntimeError(f"stacker.py failed: {[r.stderr[-2000:] for r in runs if r.returncode]}")
    return best_of(runs), path


def run_siril(frames: list[Path], out: Path, drizzle: bool, repeat: int) -> tuple[Run, Path]:
    runs = []
    for _ in range(repeat):
        work = Path(tempfile.mkdtemp(prefix="siril-", dir=out))
        (work / "in").mkdir()
        for k, frame in enumerate(frames):
            (work / "in" / f"light_{k:04d}.fit").symlink_to(frame.resolve())
        (work / "script.ssf").write_text(SIRIL_SCRIPT.format(drizzle=" -drizzle" if drizzle else ""))
        runs.append(run_measured([SIRIL, "-s", "script.ssf"], cwd=work))
        result = work / "result.fits"
        if runs[-1].returncode or not result.exists():
            raise RuntimeError(f"siril-cli failed: {runs[-1].stdout[-2000:]} {runs[-1].stderr[-1000:]}")
        final = out / f"siril-{'drizzle' if drizzle else 'plain'}.fits"
        shutil.move(result, final)
        shutil.rmtree(work)
    return best_of(runs), final


def binned(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks: a drizzled image back on the frames' pixel size."""
    if factor == 1:
        return image
    height, width = (s // factor * factor for s in image.shape)
    return image[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def measure(path: Path, frame_width: int, scale: float, reference: np.ndarray | None, brightness: float = 1.0):
    """(fwhm px, fwhm arcsec, noise per px, noise binned, stars, flux scale onto reference's stars)."""
    image = luminance(path)
    factor = round(image.shape[1] / frame_width)
    stars = detect_stars(image, saturation=np.inf)
    arcsec = scale * frame_width / image.shape[1]
    flux_scale = brightness
    if reference is not None:
        # Siril's output onto CrowdSky's brightness: stars paired on the same grid, median flux ratio
        ref_stars = detect_stars(reference, saturation=np.inf)
        try:
            pairs = find_registration(stars.xy, ref_stars.xy, stars.flux, max_residual_px=2.0 * factor)
            radius = 2.0 * float(np.nanmedian([stars.fwhm_px, ref_stars.fwhm_px]))
            ours = aperture_fluxes(reference, ref_stars.x[pairs.ref_index], ref_stars.y[pairs.ref_index], radius)
            theirs = aperture_fluxes(image, stars.x[pairs.frame_index], stars.y[pairs.frame_index], radius)
            ok = (ours > 0) & (theirs > 0)
            flux_scale = float(np.median(ours[ok] / theirs[ok]))
        except RegistrationError as exc:
            print(f"  ({path.name}: not paired with CrowdSky's output ({exc}); its noise is on its own scale)")
    return (stars.fwhm_px, stars.fwhm_px * arcsec, sky_noise(image) * flux_scale,
            sky_noise(binned(image, factor)) * flux_scale, stars.count)


def bench_set(label: str, frames: list[Path], out: Path, use_siril: bool, repeat: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = fits.getheader(frames[0])
    scale = pixel_scale_arcsec(float(header["FOCALLEN"]), float(header["XPIXSZ"]))
    frame_width = int(header["NAXIS1"])
    print(f"\n=== {label}: {len(frames)} frames, {scale:.2f}\"/px" + (f", best of {repeat}" if repeat > 1 else ""))
    rows = []
    for drizzle in (1, 2):
        run, path = run_crowdsky(frames, out, drizzle, repeat)
        rows.append((f"CrowdSky x{drizzle}", run, path, None))
    if use_siril:
        for drizzle in (False, True):
            run, path = run_siril(frames, out, drizzle, repeat)
            rows.append((f"Siril {'drizzle' if drizzle else 'plain'}", run, path, rows[int(drizzle)][2]))
    print(f"{'tool':16} {'wall s':>7} {'tree RSS MB':>11} {'tree PSS MB':>11} {'FWHM px':>7} {'FWHM as':>7} "
          f"{'noise/px':>8} {'binned':>7} {'stars':>5}")
    measured = {}
    for name, run, path, ours in rows:
        fwhm, fwhm_arcsec, noise, noise_binned, count = measure(
            path, frame_width, scale, None if ours is None else luminance(ours))
        measured[name] = (run, fwhm_arcsec, noise_binned)
        print(f"{name:16} {run.wall_s:7.2f} {run.tree_rss_mb:11.0f} {run.tree_pss_mb:11.0f} {fwhm:7.2f} "
              f"{fwhm_arcsec:7.2f} {noise:8.2f} {noise_binned:7.2f} {count:5d}")
    if use_siril:
        ours, theirs = measured["CrowdSky x2"], measured["Siril drizzle"]
        print(f"{'ratio x2/Siril':16} {ours[0].wall_s / theirs[0].wall_s:7.2f} "
              f"{ours[0].tree_rss_mb / theirs[0].tree_rss_mb:11.2f} "
              f"{ours[0].tree_pss_mb / theirs[0].tree_pss_mb:11.2f} "
              f"{'':7} {ours[1] / theirs[1]:7.2f} {'':8} {ours[2] / theirs[2]:7.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="2025-03-27", help="night folder names and/or 'all'")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "drizzle_vs_siril")
    parser.add_argument("--no-siril", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tool; the fastest is reported")
    args = parser.parse_args(argv)
    use_siril = SIRIL is not None and not args.no_siril
    if not use_siril:
        print("(no Siril comparison" + (": siril-cli not found)" if SIRIL is None else ")"))
    for name in filter(None, args.sets.split(",")):
        frames = sorted(REAL.glob("*/*.fit")) if name == "all" else sorted((REAL / name).glob("*.fit"))
        if not frames:
            print(f"\n=== {name}: no frames under {REAL}, skipped")
            continue
        bench_set(f"real M 94, {name}", frames, args.out / name, use_siril, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
