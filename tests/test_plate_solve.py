"""Plate solving (lib/stacking/solve.py): real Seestar stacks get a WCS that puts M 94 on its nucleus."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lib.stacking import stack_files
from lib.stacking import solve
from tests.frames import NIGHT_1, SHARED, real_frames

M94 = (192.7212, 41.1197)              # OpenNGC's position of NGC 4736's nucleus, degrees
REPO = Path(__file__).resolve().parents[1]
needs_solver = pytest.mark.skipif(shutil.which("solve-field") is None,
                                  reason="astrometry.net is not installed (bash infra/test-tools.sh)")
needs_frames = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real Seestar frames not found at {SHARED}")


# ------------------------------------------------------------------------------------ pure helpers

def test_pixel_scale_from_the_optics():
    assert solve.pixel_scale_arcsec(250, 2.9) == pytest.approx(2.3927, abs=1e-4)        # S50
    assert solve.pixel_scale_arcsec(160, 2.0) == pytest.approx(2.5783, abs=1e-4)        # S30-like optics


def test_hint_needs_ra_and_dec_and_takes_the_scale_when_the_optics_are_known():
    hint = solve.hint_from_header({"RA": 192.99, "DEC": 40.97, "FOCALLEN": 250, "XPIXSZ": 2.9})
    assert (hint.ra_deg, hint.dec_deg) == (192.99, 40.97) and hint.scale_arcsec == pytest.approx(2.3927, abs=1e-4)
    assert solve.hint_from_header({"RA": 192.99, "DEC": 40.97}).scale_arcsec is None
    assert solve.hint_from_header({"RA": 192.99, "DEC": 40.97, "FOCALLEN": 0, "XPIXSZ": 2.9}).scale_arcsec is None
    assert solve.hint_from_header({"RA": 192.99}) is None
    assert solve.hint_from_header({"RA": "n/a", "DEC": 1.0}) is None
    assert solve.hint_from_header({"RA": 10.0, "DEC": 95.0}) is None


def test_solver_command_carries_the_hint_within_eight_percent(tmp_path):
    command = solve.solver_command(tmp_path / "l.fits", tmp_path, solve.Hint(192.99, 40.97, 2.5), time_limit=7)
    value = lambda flag: command[command.index(flag) + 1]          # noqa: E731
    assert value("--ra") == "192.990000" and value("--dec") == "40.970000" and value("--radius") == "2.0"
    assert float(value("--scale-low")) == pytest.approx(2.3) and float(value("--scale-high")) == pytest.approx(2.7)
    assert value("--scale-units") == "arcsecperpix" and value("--downsample") == "2"
    assert value("--cpulimit") == "7" and "--no-plots" in command and command[-1].endswith("l.fits")


def test_without_a_scale_or_a_solver_the_solve_is_not_tried_and_says_why():
    image = np.zeros((64, 64), np.float32)
    assert "pixel scale unknown" in solve.solve_luminance(image, solve.Hint(1.0, 2.0)).reason
    assert "RA/DEC" in solve.solve_luminance(image, None).reason
    missing = solve.solve_luminance(image, solve.Hint(1.0, 2.0, 2.4), solver="no-such-solve-field")
    assert not missing.solved and "no plate solver installed" in missing.reason


# ------------------------------------------------------------------------------------ real frames

@pytest.fixture(scope="module")
def m94_stack(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("solve") / "m94.fits"
    result = stack_files(real_frames(NIGHT_1))
    assert result.plate_solved, result.solve_reason
    result.write_fits(path)
    return path


def nucleus_xy(image: np.ndarray, near: tuple[float, float], radius: int = 80) -> tuple[float, float]:
    """0-based (x, y) of the galaxy's nucleus measured on the pixels alone: the brightest point of the
    smoothed luminance within *radius* px of *near*, refined by a centroid over its 9×9 neighbourhood."""
    lum = cv2.GaussianBlur(np.nanmean(image, axis=0).astype(np.float32), (0, 0), 3.0)
    x0, y0 = int(round(near[0])), int(round(near[1]))
    window = lum[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    py, px = np.unravel_index(np.argmax(window), window.shape)
    py, px = py + y0 - radius, px + x0 - radius
    patch = lum[py - 4:py + 5, px - 4:px + 5]
    patch = patch - patch.min()
    yy, xx = np.mgrid[-4:5, -4:5]
    return px + float((patch * xx).sum() / patch.sum()), py + float((patch * yy).sum() / patch.sum())


@needs_solver
@needs_frames
def test_real_stack_wcs_puts_m94_on_its_nucleus_within_two_pixels(m94_stack):
    with fits.open(m94_stack) as hdul:
        header, image = hdul[0].header, hdul[0].data
    assert header["PLTSOLVD"] is True and header["CTYPE1"].startswith("RA---TAN")
    wcs = WCS(header, naxis=2)                   # a standard celestial WCS astropy reads as it is
    x, y = wcs.all_world2pix([M94], 0)[0]
    height, width = image.shape[1:]
    assert 0 < x < width and 0 < y < height
    nx, ny = nucleus_xy(image, (x, y))
    assert np.hypot(nx - x, ny - y) < 2.0, (x, y, nx, ny)
    assert header["PLTSCALE"] == pytest.approx(2.39, rel=0.03)
    assert "SITELAT" not in header


@needs_solver
@needs_frames
def test_sky_summary_of_a_solved_stack(m94_stack):
    header = fits.getheader(m94_stack)
    sky = solve.sky_summary(header)
    assert sky["solved"] and sky["scale_arcsec"] == pytest.approx(2.39, rel=0.03)
    # the centre is within the field's half-diagonal of M 94, which the field holds
    assert abs(sky["dec"] - M94[1]) < 0.5 and abs(sky["ra"] - M94[0]) < 0.7
    corners = np.array(sky["footprint"])
    assert corners.shape == (4, 2)
    # the outline's sides are the field's: 1080 × 1920 px at 2.39″/px ≈ 43′ × 76′
    sides = [np.hypot((corners[i, 0] - corners[i - 1, 0]) * np.cos(np.radians(corners[i, 1])),
                      corners[i, 1] - corners[i - 1, 1]) * 60 for i in range(4)]
    assert sorted(round(s) for s in sides) == [43, 43, 76, 76]
    assert 0 <= sky["rotation_deg"] < 360


@needs_frames
def test_without_a_solver_the_stack_is_made_and_says_why(tmp_path):
    """The stacking CLI with no solve-field on PATH: PLTSOLVD = F and the reason, the stack intact."""
    out = tmp_path / "m94.fits"
    env = {**os.environ, "PATH": str(tmp_path)}           # nothing runnable there
    done = subprocess.run([sys.executable, "stacker.py", "stack", *map(str, real_frames(NIGHT_1)[:3]),
                           "-o", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "not plate solved: no plate solver installed" in done.stdout
    header = fits.getheader(out)
    assert header["PLTSOLVD"] is False and "no plate solver installed" in header["PLTREASN"]
    assert header["NCOMBINE"] == 3 and "CTYPE1" not in header


@needs_solver
def test_a_file_never_solved_is_solved_in_place(m94_stack, tmp_path):
    """Deep, crowd and telescope stacks are solved after they are written: the file gets the WCS in place."""
    copy = tmp_path / "copy.fits"
    with fits.open(m94_stack) as hdul:
        solve.clear_solution(hdul[0].header)
        assert "CTYPE1" not in hdul[0].header and "A_ORDER" not in hdul[0].header
        hdul.writeto(copy)
    solution = solve.solve_stack_file(copy)
    assert solution.solved
    assert solve.solve_stack_file(copy) is None          # solved already: not again
    header = fits.getheader(copy)
    assert header["PLTSOLVD"] is True and "PLTREASN" not in header
    again, first = solve.sky_summary(header), solve.sky_summary(fits.getheader(m94_stack))
    assert np.allclose(again["footprint"], first["footprint"], atol=2 / 3600)   # the same field to 2″


# ------------------------------------------------------------- deep stacks placed by their WCS

@needs_solver
@needs_frames
def test_a_resampled_s50_stack_is_placed_by_its_wcs_and_joins_the_deep_stack(m94_stack):
    """An S50 stack resampled to 0.6x (an S30-like pixel scale), plate solved on its own, is placed on
    an S50 grid by the two WCSs; star matching refines that to what matching stars alone finds."""
    from lib.stacking import deep

    with fits.open(m94_stack) as hdul:
        header = hdul[0].header
        image = hdul[0].data.astype(np.float32)
        coverage = hdul["COVERAGE"].data.astype(np.float32)
    running = deep.start(image, coverage, deep.measure(image))
    coarse = np.stack([cv2.resize(plane, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA) for plane in image])
    coarse_coverage = cv2.resize(coverage, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    hint = solve.hint_from_header(header)
    solution = solve.solve_luminance(solve.stack_luminance(coarse),
                                     solve.Hint(hint.ra_deg, hint.dec_deg, hint.scale_arcsec / 0.6))
    assert solution.solved, solution.reason
    coarse_header = fits.Header()
    solve.write_solution(coarse_header, solution)

    placement = deep.wcs_placement(solve.celestial_wcs(coarse_header), solve.celestial_wcs(header), coarse.shape[1:])
    # the pixel mapping of a 0.6x resize: x_grid = (x + 0.5) / 0.6 - 0.5, with no turn
    truth = np.array([[1 / 0.6, 0, 0.5 / 0.6 - 0.5], [0, 1 / 0.6, 0.5 / 0.6 - 0.5]])
    h, w = coarse.shape[1:]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    off = lambda m: np.abs(apply(m, corners) - apply(truth, corners)).max()       # noqa: E731
    assert off(placement) < 3.0                                     # the WCSs alone: within a few pixels
    measured = deep.measure(coarse)
    refined = deep.register_onto(measured, running, placement)
    assert off(refined) < 0.5                                       # star pairs bring it under a pixel
    from_stars = deep.register_onto(measured, running)
    assert np.abs(apply(refined, corners) - apply(from_stars, corners)).max() < 0.5
    weight_before = running.weight.copy()
    scale = deep.add(running, coarse, coarse_coverage, measured, placement)
    assert scale == pytest.approx(1.0, rel=0.1)                     # the same sky, the same brightness
    assert (running.weight > weight_before).mean() > 0.9            # it joined: the grid got deeper


def apply(matrix, xy):
    return xy @ matrix[:, :2].T + matrix[:, 2]


def test_a_solver_that_hangs_is_stopped_with_everything_it_started(tmp_path, monkeypatch):
    """A solver past its time limit is killed with its whole process group; the scratch goes too."""
    pids = tmp_path / "pids"
    hanging = tmp_path / "hanging-solver"
    hanging.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pids}\nsleep 300\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(solve, "KILL_GRACE_S", 0.5)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    solution = solve.solve_luminance(np.zeros((64, 64), np.float32), solve.Hint(1.0, 2.0, 2.4),
                                     time_limit=1, solver=str(hanging), tmp_dir=str(scratch))
    assert not solution.solved and "stopped after" in solution.reason
    child = int(pids.read_text())
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, "the solver's child outlived it"
        time.sleep(0.05)
    assert list(scratch.iterdir()) == []


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
