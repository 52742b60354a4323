"""CrowdSky's stacker against Siril 1.0.6 on the same frames: speed, memory and image quality.

    python bench/stack_vs_siril.py                    # real M 94 frames + 32 synthetic frames
    python bench/stack_vs_siril.py --synthetic 16 --sets 2025-04-09
    python bench/stack_vs_siril.py --no-siril         # the project side only

For every data set it runs, one after the other and each in a process tree of its own,
    python stacker.py stack FRAMES... -o OUT.fits --preview OUT.png
    siril-cli -s script.ssf   (convert + debayer, global star registration, stack rej 3 3 winsorized,
                               -norm=addscale, 32-bit output: what Seestar users run)
and prints for each tool: wall time; peak memory of the whole process tree (sum of RSS sampled every
20 ms, and sum of PSS, which counts pages shared between processes once, every 0.2 s), and the largest
single process's peak RSS (what /usr/bin/time reports); sky noise, star FWHM and bright-star SNR measured the
same way on both outputs; frames rejected; then the ratios CrowdSky/Siril. On synthetic frames the
known truth also gives the worst residual at hot pixels and under the satellite trail.

It prints figures and asserts nothing. Outputs go to bench/out/ (git-ignored) unless --out is given.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.stacking.register import RegistrationError, apply_matrix, find_registration  # noqa: E402
from lib.stacking.stars import aperture_fluxes, detect_stars  # noqa: E402
from lib.stacking.synthetic import make_session  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "seestar-m94"
SIRIL = shutil.which("siril-cli")
SIRIL_SCRIPT = """requires 1.0.0
set32bits
setext fits
cd in
convert light -debayer -out=../work
cd ../work
register light{drizzle}
stack r_light rej 3 3 -norm=addscale -out=../result
close
"""


# ------------------------------------------------------------------------------ process-tree memory

def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return found


def _process_tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        seen.append(current)
        todo += _children(current)
    return seen


def _proc_kb(pid: int, name: str, field: str) -> int:
    """A "Field:  N kB" line of /proc/PID/<name>, in kB (0 once the process is gone).

    status (VmRSS) holds kernel counters, cheap to read. smaps_rollup (Pss) walks the process's page
    tables under its memory-map lock, which stalls a process that maps and unmaps memory all the time
    (the stacker's workers do): it is read only every PSS_EVERY-th sample."""
    try:
        with open(f"/proc/{pid}/{name}") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


SAMPLE_SECONDS = 0.02
PSS_EVERY = 10            # PSS every 0.2 s: memory is stable within a stage, and it costs far less


@dataclass
class Run:
    wall_s: float
    tree_rss_mb: float      # peak of the sum of RSS over the process tree
    tree_pss_mb: float      # peak of the sum of PSS (shared pages counted once)
    largest_rss_mb: float   # peak RSS of the largest single process
    processes: int
    returncode: int
    stdout: str
    stderr: str


def run_measured(command: list[str], cwd: Path) -> Run:
    """Run a command, sampling the memory of its whole process tree (RSS every 20 ms, PSS every 0.2 s)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0, "largest": 0, "count": 0}
    done = threading.Event()

    def sample() -> None:
        tick = 0
        while not done.is_set():
            pids = _process_tree(process.pid)
            rss = [_proc_kb(pid, "status", "VmRSS") for pid in pids]
            peak["rss"] = max(peak["rss"], sum(rss))
            peak["largest"] = max([peak["largest"], *rss])
            peak["count"] = max(peak["count"], len(pids))
            if tick % PSS_EVERY == 0:
                peak["pss"] = max(peak["pss"], sum(_proc_kb(pid, "smaps_rollup", "Pss") for pid in pids))
            tick += 1
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    return Run(time.perf_counter() - start, peak["rss"] / 1024, peak["pss"] / 1024, peak["largest"] / 1024,
               peak["count"], process.returncode, stdout, stderr)


# ----------------------------------------------------------------------------------------- tools

def best_of(runs: list[Run]) -> Run:
    """The fastest of repeated runs, with the highest memory peaks seen in any of them: on a shared
    machine other work only ever adds time, while memory is a property of the program."""
    fastest = min(runs, key=lambda r: r.wall_s)
    return Run(fastest.wall_s, max(r.tree_rss_mb for r in runs), max(r.tree_pss_mb for r in runs),
               max(r.largest_rss_mb for r in runs), max(r.processes for r in runs), fastest.returncode,
               fastest.stdout, fastest.stderr)


def run_crowdsky(frames: list[Path], out: Path, repeat: int) -> tuple[Run, Path, int]:
    fits_path, png_path = out / "crowdsky.fits", out / "crowdsky.png"
    runs = [run_measured([sys.executable, "stacker.py", "stack", *map(str, frames), "-o", str(fits_path),
                          "--preview", str(png_path)], cwd=ROOT) for _ in range(repeat)]
    run = best_of(runs)
    if any(r.returncode != 0 for r in runs):
        raise RuntimeError(f"stacker.py failed: {[r.stderr[-2000:] for r in runs if r.returncode]}")
    used = int(np.count_nonzero(fits.getdata(fits_path, "FRAMES")["USED"]))
    return run, fits_path, len(frames) - used


def run_siril(frames: list[Path], out: Path, repeat: int) -> tuple[Run, Path, int]:
    runs = []
    for _ in range(repeat):
        work = Path(tempfile.mkdtemp(prefix="siril-", dir=out))
        (work / "in").mkdir()
        for k, frame in enumerate(frames):  # Siril wants plain names; a link per frame, no copies
            (work / "in" / f"light_{k:04d}.fit").symlink_to(frame.resolve())
        (work / "script.ssf").write_text(SIRIL_SCRIPT.format(drizzle=""))
        runs.append(run_measured([SIRIL, "-s", "script.ssf"], cwd=work))
        if runs[-1].returncode == 0 and len(runs) < repeat:
            shutil.rmtree(work)
    run = best_of(runs)
    result = work / "result.fits"
    if run.returncode != 0 or not result.exists():
        raise RuntimeError(f"siril-cli failed: {run.stdout[-2000:]} {run.stderr[-1000:]}")
    stacked = re.findall(r"(\d+) images have been stacked", run.stdout)
    final = out / "siril.fits"
    shutil.move(result, final)
    shutil.rmtree(work)
    return run, final, len(frames) - int(stacked[-1]) if stacked else -1


# --------------------------------------------------------------------------------------- quality

@dataclass
class Quality:
    noise_adu: float      # robust sky RMS of the luminance, on CrowdSky's brightness scale
    fwhm_px: float
    snr: float            # median SNR of the 20 brightest unsaturated stars found in both
    stars: int


def luminance(path: Path) -> np.ndarray:
    """(H, W) float32 ADU: 0.25 R + 0.5 G + 0.25 B of a (3, H, W) stack stored as ADU/65535."""
    data = fits.getdata(path).astype(np.float32)
    return (data[0] + 2 * data[1] + data[2]) * np.float32(65535 / 4)


def sky_noise(image: np.ndarray) -> float:
    """Robust RMS of the sky in the central 60 % of the frame: 3-sigma-clipped MAD about the median."""
    height, width = image.shape
    box = image[int(0.2 * height):int(0.8 * height), int(0.2 * width):int(0.8 * width)].ravel()
    for _ in range(5):
        centre = np.median(box)
        sigma = 1.4826 * np.median(np.abs(box - centre))
        box = box[np.abs(box - centre) < 3 * sigma]
    return float(1.4826 * np.median(np.abs(box - np.median(box))))


def compare(ours_path: Path, siril_path: Path | None) -> tuple[Quality, Quality | None]:
    """The same measurements on both outputs. Siril's output is put on CrowdSky's brightness scale
    (median flux ratio of paired stars) before its noise is measured; SNR uses the same stars in both."""
    ours = luminance(ours_path)
    ours_stars = detect_stars(ours, saturation=np.inf)
    ours_noise = sky_noise(ours)
    if siril_path is None:
        return Quality(ours_noise, ours_stars.fwhm_px, float("nan"), ours_stars.count), None
    siril = luminance(siril_path)
    siril_stars = detect_stars(siril, saturation=np.inf)
    try:
        pairs = find_registration(siril_stars.xy, ours_stars.xy, siril_stars.flux, max_residual_px=2.0)
    except RegistrationError as exc:
        print(f"  (outputs could not be paired: {exc}; noise and SNR not comparable)")
        return (Quality(ours_noise, ours_stars.fwhm_px, float("nan"), ours_stars.count),
                Quality(sky_noise(siril), siril_stars.fwhm_px, float("nan"), siril_stars.count))
    radius = 2.0 * float(np.nanmedian([ours_stars.fwhm_px, siril_stars.fwhm_px]))
    ours_flux = aperture_fluxes(ours, ours_stars.x[pairs.ref_index], ours_stars.y[pairs.ref_index], radius)
    siril_flux = aperture_fluxes(siril, siril_stars.x[pairs.frame_index], siril_stars.y[pairs.frame_index], radius)
    ok = (ours_flux > 0) & (siril_flux > 0)
    scale = float(np.median(ours_flux[ok] / siril_flux[ok]))
    # bright but not the very brightest (saturated in some frames), the same stars for both tools
    bright = np.argsort(-np.nan_to_num(np.where(ok, ours_flux, np.nan)))[3:23]
    siril_noise = sky_noise(siril) * scale
    area = np.sqrt(np.pi) * radius
    return (Quality(ours_noise, ours_stars.fwhm_px, float(np.median(ours_flux[bright] / (ours_noise * area))),
                    ours_stars.count),
            Quality(siril_noise, siril_stars.fwhm_px,
                    float(np.median(scale * siril_flux[bright] / (siril_noise * area))), siril_stars.count))


def defect_residuals(path: Path, session, noise: float) -> tuple[float, float]:
    """Worst |stack - truth| at hot pixels and under the satellite trail, in units of sky noise.

    The stack's reference frame is found by matching its stars to each frame's true star positions.
    """
    image = fits.getdata(path).astype(np.float64) * 65535
    lum = (image[0] + 2 * image[1] + image[2]) / 4
    found = detect_stars(lum.astype(np.float32), saturation=np.inf)
    best = max(range(len(session.frames)), key=lambda k: np.count_nonzero(
        cKDTree(apply_matrix(session.frames[k].matrix, session.star_xy)).query(found.xy)[0] < 1.0))
    truth = session.truth(best)
    truth_lum = (truth[0] + 2 * truth[1] + truth[2]) / 4
    residual = lum - truth_lum
    stars = apply_matrix(session.frames[best].matrix, session.star_xy)
    height, width = lum.shape

    def worst(points_xy: np.ndarray) -> float:
        far = cKDTree(stars).query(points_xy)[0] > 8
        inside = (points_xy[:, 0] > 8) & (points_xy[:, 0] < width - 9) & (points_xy[:, 1] > 8) & \
                 (points_xy[:, 1] < height - 9)
        pix = np.round(points_xy[far & inside]).astype(int)
        if len(pix) == 0:
            return float("nan")
        return float(np.percentile(np.abs(residual[pix[:, 1], pix[:, 0]]), 99) / noise)

    hot = np.concatenate([apply_matrix(session.frame_to_frame(k, best), session.hot_pixels.astype(float))
                          for k in range(len(session.frames)) if not session.frames[k].cloudy])
    trail_frame = next(k for k, f in enumerate(session.frames) if f.satellite)
    p0, p1 = session.satellite_line
    along = p0 + np.linspace(0.02, 0.98, 400)[:, None] * (p1 - p0)
    return worst(hot), worst(apply_matrix(session.frame_to_frame(trail_frame, best), along))


# ------------------------------------------------------------------------------------------ main

def bench_set(label: str, frames: list[Path], out: Path, use_siril: bool, repeat: int, session=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    print(f"\n=== {label}: {len(frames)} frames" + (f", best of {repeat} runs" if repeat > 1 else ""))
    ours_run, ours_fits, ours_rejected = run_crowdsky(frames, out, repeat)
    siril = run_siril(frames, out, repeat) if use_siril else None
    ours_q, siril_q = compare(ours_fits, siril[1] if siril else None)
    rows = [("CrowdSky", ours_run, ours_q, ours_rejected, ours_fits)]
    if siril:
        rows.append(("Siril 1.0.6", siril[0], siril_q, siril[2], siril[1]))
    print(f"{'tool':12} {'wall s':>7} {'tree RSS MB':>11} {'tree PSS MB':>11} {'largest MB':>10} "
          f"{'noise ADU':>9} {'FWHM px':>7} {'SNR':>6} {'stars':>5} {'rejected':>8}")
    for name, run, quality, rejected, _ in rows:
        print(f"{name:12} {run.wall_s:7.2f} {run.tree_rss_mb:11.0f} {run.tree_pss_mb:11.0f} "
              f"{run.largest_rss_mb:10.0f} {quality.noise_adu:9.2f} {quality.fwhm_px:7.2f} {quality.snr:6.1f} "
              f"{quality.stars:5d} {rejected:8d}")
    if siril:
        s_run, s_q = siril[0], siril_q
        print(f"{'ratio':12} {ours_run.wall_s / s_run.wall_s:7.2f} "
              f"{ours_run.tree_rss_mb / s_run.tree_rss_mb:11.2f} {ours_run.tree_pss_mb / s_run.tree_pss_mb:11.2f} "
              f"{ours_run.largest_rss_mb / s_run.largest_rss_mb:10.2f} "
              f"{ours_q.noise_adu / s_q.noise_adu:9.2f} {ours_q.fwhm_px / s_q.fwhm_px:7.2f} "
              f"{ours_q.snr / s_q.snr:6.2f}")
    if session is not None:
        for name, _, quality, _, path in rows:
            hot, trail = defect_residuals(path, session, quality.noise_adu)
            print(f"{name:12} vs truth: worst 1 % at hot pixels {hot:.1f} sigma, under the trail {trail:.1f} sigma")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="2025-04-09,2025-03-27,all",
                        help="real data sets: night folder names and/or 'all' (default: both nights and all 17)")
    parser.add_argument("--synthetic", type=int, default=32, help="synthetic frames (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "stack_vs_siril")
    parser.add_argument("--no-siril", action="store_true", help="run the project side only")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per tool and set; the fastest is reported (a shared machine only adds time)")
    args = parser.parse_args(argv)

    use_siril = SIRIL is not None and not args.no_siril
    if SIRIL is None and not args.no_siril:
        print("siril-cli not found: install it with `apt-get install -y siril` (Siril 1.0.6 on Debian 12); "
              "running the CrowdSky side only")
    if not use_siril:
        print("(no Siril comparison)")

    for name in filter(None, args.sets.split(",")):
        frames = sorted(REAL.glob("*/*.fit")) if name == "all" else sorted((REAL / name).glob("*.fit"))
        if not frames:
            print(f"\n=== {name}: no frames under {REAL}, skipped")
            continue
        bench_set(f"real M 94, {name}", frames, args.out / name, use_siril, args.repeat)

    if args.synthetic:
        with tempfile.TemporaryDirectory(prefix="crowdsky-bench-") as scratch:
            session = make_session(Path(scratch), n_frames=args.synthetic, shape=(1920, 1080), n_stars=250,
                                   hot_pixels=200, satellite_frame=5, cloudy_frame=9 if args.synthetic > 9 else None,
                                   max_shift_px=30, seed=7)
            bench_set("synthetic, full size, truth known", session.paths, args.out / "synthetic", use_siril,
                      args.repeat, session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
