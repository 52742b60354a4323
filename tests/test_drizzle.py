"""Bayer drizzle (lib/stacking/drizzle.py): the drop arithmetic against STScI's reference drizzle, and
real Seestar frames stacked with and without it."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from drizzle.resample import Drizzle

from lib.stacking import StackOptions, stack_files
from lib.stacking import drizzle as drizzle_step
from lib.stacking.cube import DiskArray
from lib.stacking.debayer import cfa_luminance
from lib.stacking.solve import celestial_wcs, scale_arcsec, solver_available
from lib.stacking.stars import aperture_fluxes, detect_stars
from tests.frames import NIGHT_1, real_frames, small_frame_bytes

ROOT = Path(__file__).resolve().parents[1]


def _luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 ADU: 0.25 R + 0.5 G + 0.25 B of a (3, H, W) stack in ADU/65535."""
    return ((image[0] + 2 * image[1] + image[2]) * np.float32(0.25 * 65535)).astype(np.float32)


# ---------------------------------------------------------------------------------- the drop itself

def test_bayer_drops_match_the_reference_drizzle_of_each_colour_masked(tmp_path):
    """Each colour drizzled as its own sub-sampled plane with pixfrac/2 is the same as STScI's drizzle of
    the whole mosaic with only that colour's sites weighted: the same drops, the same overlaps."""
    width, height, factor, pixfrac = 64, 48, 2, 0.7
    path = tmp_path / "frame.fit"
    path.write_bytes(small_frame_bytes(width, height, seed=3))
    raw = fits.getdata(path).astype(np.float32)
    theta = np.radians(1.7)
    matrix = np.array([[np.cos(theta), -np.sin(theta), 1.37], [np.sin(theta), np.cos(theta), -0.62]])
    gain, offset = np.array([1.1, 0.9, 1.05]), np.array([0.001, -0.002, 0.0])
    frame = drizzle_step.DrizzleFrame(str(path), matrix, gain, offset, np.array([1.0, 2.0, 0.5]))
    zeros = DiskArray.create(tmp_path / "stack.f32", "float32", (3, height, width))   # holes stay 0
    bounds = DiskArray.create(tmp_path / "bounds.f32", "float32", (2, 3, height, width))
    output = DiskArray.create(tmp_path / "out.f32", "float32", (3, height * factor, width * factor))
    for rows in ((0, 40), (40, height * factor)):   # two bands: a band edge must not lose or double drops
        drizzle_step.drizzle_band((rows, [frame], "GRBG", factor, pixfrac, np.inf, np.inf, zeros, bounds,
                                   np.zeros(3, np.float32), output))
    ours = np.array(output.map())

    # the reference kernel drops a pixel whose centre lands off the output, even if its drop overlaps
    # the edge; ours pads its bands so that it does not: the reference gets the same padding
    pad = 8
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    pixmap = np.dstack([factor * (matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] + 0.5) - 0.5 + pad,
                        factor * (matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] + 0.5) - 0.5 + pad])
    for c, sites in enumerate(([(0, 1)], [(0, 0), (1, 1)], [(1, 0)])):   # GRBG: R, the two G, B
        mask = np.zeros((height, width), np.float32)
        for dy, dx in sites:
            mask[dy::2, dx::2] = 1.0
        reference = Drizzle(kernel="square", out_shape=(height * factor + 2 * pad, width * factor + 2 * pad),
                            disable_ctx=True,
                            fillval=0.0)
        values = (raw * np.float32(gain[c] / 65535) + np.float32(offset[c])).astype(np.float32)
        reference.add_image(values, exptime=1.0, pixmap=pixmap, weight_map=mask * np.float32(frame.weight[c]),
                            pixfrac=pixfrac, in_units="cps", iscale=1.0, pixel_scale_ratio=1.0)
        assert np.count_nonzero(reference.out_wht[pad:-pad, pad:-pad]) > 0.2 * ours[c].size
        np.testing.assert_allclose(ours[c], reference.out_img[pad:-pad, pad:-pad], rtol=1e-5, atol=1e-7)


def test_bands_stay_within_the_memory_limit():
    fine = (2 * 1080, 2 * 1920)
    for workers, limit in ((1, 64 * 2**20), (2, 64 * 2**20), (2, 512 * 2**20)):
        bands = drizzle_step.band_rows(fine, workers, limit)
        assert bands[0][0] == 0 and bands[-1][1] == fine[0]
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
        band_bytes = max(b - a for a, b in bands) * fine[1] * 3 * 2 * 4
        assert band_bytes <= max(limit // workers - drizzle_step.BAND_OVERHEAD, drizzle_step.MIN_BAND_BYTES)
        assert len(bands) >= 2 * workers


@pytest.mark.parametrize("changes", [{"drizzle": 4}, {"drizzle": 0}, {"pixfrac": 0.0}, {"pixfrac": 1.5}])
def test_bad_drizzle_options_are_refused(changes):
    with pytest.raises(ValueError, match="drizzle|pixfrac"):
        StackOptions(**changes)


def test_the_command_line_refuses_a_bad_drizzle_factor(tmp_path):
    frame = real_frames(NIGHT_1)[0]
    done = subprocess.run([sys.executable, "stacker.py", "stack", str(frame), "-o", str(tmp_path / "x.fits"),
                           "--drizzle", "5"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--drizzle" in done.stderr and not (tmp_path / "x.fits").exists()


# ------------------------------------------------------------------------------ real Seestar frames

@pytest.fixture(scope="module")
def pair():
    """The 6 frames of one night stacked plainly and with Bayer drizzle 2x (both plate solved)."""
    frames = real_frames(NIGHT_1)
    return stack_files(frames), stack_files(frames, options=StackOptions(drizzle=2))


def test_drizzled_stars_are_sharper_in_arcseconds(pair):
    plain, drizzled = pair
    assert drizzled.drizzle == 2 and drizzled.ncombine == plain.ncombine == 6
    # measured straight on each luminance (no smoothing kernel, whose size in arcseconds would differ);
    # a drizzled pixel is half a frame pixel. 6 frames at pixfrac 0.7 give ~0.93
    coarse = detect_stars(_luminance(plain.image), saturation=np.inf)
    fine = detect_stars(_luminance(drizzled.image), saturation=np.inf)
    assert fine.fwhm_px / 2 < 0.97 * coarse.fwhm_px
    assert fine.count >= 0.9 * coarse.count
    assert drizzled.fwhm_px > 1.5 * plain.fwhm_px   # the result reports FWHM on its own (fine) grid


def test_drizzle_conserves_star_flux_and_sky(pair):
    plain, drizzled = pair
    flat, fine = _luminance(plain.image), _luminance(drizzled.image)
    stars = detect_stars(cfa_luminance(flat), detect_sigma=5.0, max_stars=80, saturation=np.inf)
    x, y = stars.x[:60], stars.y[:60]
    coarse = aperture_fluxes(flat, x, y, 6.0)
    # the same sky on the fine grid: radius doubles, each fine pixel a quarter of a frame pixel
    drizzled_flux = aperture_fluxes(fine, 2 * x + 0.5, 2 * y + 0.5, 12.0) / 4
    both = np.isfinite(coarse) & np.isfinite(drizzled_flux)
    assert both.sum() >= 30
    assert np.median(drizzled_flux[both] / coarse[both]) == pytest.approx(1.0, abs=0.05)
    assert drizzled_flux[both].sum() / coarse[both].sum() == pytest.approx(1.0, abs=0.05)
    # pixel values keep the plain stack's units: the same sky level per channel
    np.testing.assert_allclose(np.median(drizzled.image, axis=(1, 2)), np.median(plain.image, axis=(1, 2)),
                               rtol=0.01)


def test_drizzled_output_layout_coverage_and_header(pair):
    plain, drizzled = pair
    image, cover = drizzled.image, drizzled.coverage
    height, width = plain.coverage.shape
    assert image.shape == (3, 2 * height, 2 * width) and cover.shape == (2 * height, 2 * width)
    assert cover.max() == 6 and np.array_equal(cover[::2, ::2], plain.coverage)
    # every covered fine pixel has a value: where no drop fell, the plain stack fills in
    assert np.all(image[:, cover > 0] > 0) and np.isfinite(image).all()
    assert 0.0 <= drizzled.drizzle_holes < 0.1
    with fits.open(io.BytesIO(drizzled.fits_bytes)) as hdul:
        header = hdul[0].header
        assert header["DRIZZLE"] == 2 and header["PIXFRAC"] == pytest.approx(0.7)
        assert header["NCOMBINE"] == 6 and header["XPIXSZ"] == pytest.approx(fits.getheader(
            real_frames(NIGHT_1)[0])["XPIXSZ"] / 2)
        assert any("Bayer drizzle x2" in line for line in header["HISTORY"])


@pytest.mark.skipif(not solver_available(), reason="solve-field is not installed")
def test_drizzled_wcs_has_half_the_scale_and_the_same_sky(pair):
    plain, drizzled = pair
    assert plain.plate_solved and drizzled.plate_solved, (plain.solve_reason, drizzled.solve_reason)
    with fits.open(io.BytesIO(plain.fits_bytes)) as a, fits.open(io.BytesIO(drizzled.fits_bytes)) as b:
        coarse, fine = celestial_wcs(a[0].header), celestial_wcs(b[0].header)
    assert scale_arcsec(fine) == pytest.approx(scale_arcsec(coarse) / 2, rel=0.01)
    # frame pixel (x, y) is fine pixel (2x + 0.5, 2y + 0.5): the same place on the sky within a fine pixel
    for x, y in ((100.0, 200.0), (900.0, 1700.0), (540.0, 960.0)):
        sky = coarse.pixel_to_world(x, y)
        assert sky.separation(fine.pixel_to_world(2 * x + 0.5, 2 * y + 0.5)).arcsec < scale_arcsec(fine)


def _with_trail(frames: list[Path], folder: Path) -> list[Path]:
    """The frames copied into folder, a bright 3-pixel-wide satellite trail painted across the first."""
    copies = []
    for k, path in enumerate(frames):
        with fits.open(path) as hdul:
            data, header = hdul[0].data.astype(np.int32), hdul[0].header
        if k == 0:   # not the reference frame (the third), so that both stacks share one grid
            rows = np.arange(100, data.shape[0] - 100)
            cols = (0.4 * rows + 100).astype(int)
            for d in (-1, 0, 1):
                data[rows, cols + d] += 4000
        copies.append(folder / path.name)
        fits.PrimaryHDU(np.clip(data, 0, 65535).astype(np.uint16), header).writeto(copies[-1])
    return copies


def test_a_satellite_trail_is_rejected_from_the_drizzle(pair, tmp_path):
    plain, drizzled = pair
    frames = _with_trail(real_frames(NIGHT_1), tmp_path)
    out = tmp_path / "trail.fits"
    done = subprocess.run([sys.executable, "stacker.py", "stack", *map(str, frames), "-o", str(out),
                           "--drizzle", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    clean = _luminance(drizzled.image)
    with fits.open(out) as hdul:
        assert hdul[0].header["DRIZZLE"] == 2 and hdul[0].header["NCOMBINE"] == 6
        trail = _luminance(hdul[0].data) - clean
    without = stack_files(frames, options=StackOptions(drizzle=2, rejection="none", plate_solve=False))
    assert without.reference_name == drizzled.reference_name   # one grid: the images compare pixel by pixel
    kept = _luminance(without.image) - clean
    noise = drizzled.noise
    # without rejection the trail shows at many sky noises; with it, nothing stands out of the noise
    assert np.percentile(kept, 99.9) > 5 * noise
    # the trail covers ~0.2 % of the pixels: were it kept, the top 0.1 % would stand far out of the noise
    assert np.percentile(np.abs(trail), 99.9) < 2 * noise
    assert np.count_nonzero(np.abs(trail) > 5 * noise) < 1e-5 * trail.size
