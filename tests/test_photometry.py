"""Photometry of stacks (lib/stacking/photometry.py): FWHM in arcseconds, a V zero point calibrated on the
Tycho-2 stars of the field, sky brightness and limiting magnitude, in the FITS header and a STARS table."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lib import techcard
from lib.stacking import group_files, photometry, solve, stack_files
from tests.frames import NIGHT_1, SHARED, real_frames

needs_solver = pytest.mark.skipif(shutil.which("solve-field") is None,
                                  reason="astrometry.net is not installed (bash infra/test-tools.sh)")
needs_frames = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real Seestar frames not found at {SHARED}")
needs_index = pytest.mark.skipif(photometry.index_file() is None, reason="no Tycho-2 index files installed")


# ------------------------------------------------------------------------------------ pure functions

def test_the_zero_point_is_the_median_offset_and_ignores_outliers():
    rng = np.random.default_rng(3)
    catalogue = rng.uniform(8, 12, 25)
    instrumental = catalogue - 21.0 + rng.normal(0, 0.03, 25)
    instrumental[:4] -= np.array([1.0, -0.8, 2.5, 0.6])        # a blend, a variable, a misidentification
    zp, scatter, kept = photometry.zero_point(catalogue, instrumental)
    assert zp == pytest.approx(21.0, abs=0.02)
    assert not kept[:4].any() and kept[4:].sum() >= 19         # 3σ clipping may drop a good one
    assert 0.015 < scatter < 0.06


def synthetic_field(seed=0, fwhm=3.0, sky=500.0, noise=10.0, zp=20.0, exposure=10.0, scale=2.4):
    """A (600, 800) image of Gaussian stars on a flat sky with white noise, a TAN WCS and the catalogue
    of its stars: each star's flux is exactly what `zp` says its magnitude gives."""
    rng = np.random.default_rng(seed)
    height, width = 600, 800
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 30.0]
    wcs.wcs.crpix = [width / 2, height / 2]
    wcs.wcs.cdelt = [-scale / 3600, scale / 3600]
    n = 40
    x, y = rng.uniform(30, width - 30, n), rng.uniform(30, height - 30, n)
    mags = rng.uniform(9, 12.5, n)
    flux = 10 ** ((zp - mags) / 2.5) * exposure              # ADU in one exposure
    sigma = fwhm / 2.3548
    yy, xx = np.mgrid[0:height, 0:width]
    image = sky + rng.normal(0, noise, (height, width))
    for xi, yi, fi in zip(x, y, flux):
        box = (slice(int(yi) - 15, int(yi) + 16), slice(int(xi) - 15, int(xi) + 16))
        image[box] += fi / (2 * np.pi * sigma ** 2) * np.exp(-((xx[box] - xi) ** 2 + (yy[box] - yi) ** 2) / (2 * sigma ** 2))
    ra, dec = wcs.all_pix2world(np.column_stack([x, y]), 0).T
    return image.astype(np.float32), wcs, photometry.Catalogue(ra, dec, mags)


def test_synthetic_stars_give_back_their_zero_point_size_sky_and_depth():
    zp, exposure, scale, sky, noise, fwhm = 20.0, 10.0, 2.4, 500.0, 10.0, 3.0
    image, wcs, catalogue = synthetic_field(zp=zp, exposure=exposure, scale=scale, sky=sky, noise=noise, fwhm=fwhm)
    result = photometry.measure(image, wcs, exposure, catalogue=catalogue)
    assert result.zero_point == pytest.approx(zp, abs=0.03)
    assert result.fwhm_px == pytest.approx(fwhm, rel=0.08)
    assert result.fwhm_arcsec == pytest.approx(fwhm * scale, rel=0.08)
    assert result.sky_mag == pytest.approx(zp - 2.5 * math.log10(sky / exposure / scale ** 2), abs=0.02)
    # white noise: an aperture of radius FWHM sees σ·√(π FWHM²); a Gaussian star puts 94 % of its light in it
    expected_limit = zp - 2.5 * math.log10(5 * noise * math.sqrt(math.pi) * fwhm / 0.9375 / exposure)
    assert result.limiting_mag == pytest.approx(expected_limit, abs=0.15)
    assert result.calibration_stars >= 15                      # the brighter ones: VT ≤ 11.5
    calibrated = np.isfinite(result.catmag)
    assert np.median(np.abs(result.mag[calibrated] - result.catmag[calibrated])) < 0.02


def test_without_catalogue_stars_or_without_stars_nothing_is_made_up():
    image, wcs, catalogue = synthetic_field()
    unmatched = photometry.Catalogue(catalogue.ra + 1.0, catalogue.dec, catalogue.mag)   # a degree away
    result = photometry.measure(image, wcs, 10.0, catalogue=unmatched)
    assert result.fwhm_arcsec == pytest.approx(3.0 * 2.4, rel=0.08) and result.calibration_stars == 0
    assert all(math.isnan(v) for v in (result.zero_point, result.sky_mag, result.limiting_mag))
    assert {key for key, _, _ in photometry.header_cards(result)} == {"PHOTBAND", "FWHMARC", "MAGZPN"}
    sky = np.random.default_rng(0).normal(500, 10, image.shape).astype(np.float32)
    empty = photometry.measure(sky, wcs, 10.0, catalogue=catalogue)
    assert len(empty.x) == 0 and math.isnan(empty.fwhm_px) and math.isnan(empty.zero_point)


def test_empty_apertures_measure_the_noise_an_aperture_sees():
    rng = np.random.default_rng(1)
    data = rng.normal(0, 2.0, (400, 400)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[:, :100] = True                                       # not exposed: no aperture goes there
    data[:, :100] = 1e6
    assert photometry.empty_aperture_noise(data, mask, 4.0) == pytest.approx(2.0 * math.sqrt(math.pi) * 4.0, rel=0.1)


# ------------------------------------------------------------------------------------ real frames

@pytest.fixture(scope="module")
def m94(tmp_path_factory):
    path = tmp_path_factory.mktemp("photometry") / "m94.fits"
    result = stack_files(real_frames(NIGHT_1))
    assert result.plate_solved, result.solve_reason
    result.write_fits(path)
    with fits.open(path) as hdul:
        return hdul[0].header, hdul["STARS"].data, path


@needs_solver
@needs_frames
@needs_index
def test_the_catalogue_stars_of_the_field_land_on_stars_of_the_stack(m94):
    header, stars, _ = m94
    wcs = solve.celestial_wcs(header)
    catalogue = photometry.field_catalogue(wcs, header["NAXIS1"], header["NAXIS2"])
    assert 15 <= len(catalogue.ra) <= 200 and catalogue.mag.min() > 5 and catalogue.mag.max() < 13.5
    x, y = wcs.all_world2pix(np.column_stack([catalogue.ra, catalogue.dec]), 0).T
    inside = (x > 10) & (x < header["NAXIS1"] - 10) & (y > 10) & (y < header["NAXIS2"] - 10)
    # each catalogue star inside the field has a detected star within 2 px (STARS holds 1-based pixels)
    distance = np.hypot(stars["X"][None, :] - 1 - x[inside, None], stars["Y"][None, :] - 1 - y[inside, None]).min(axis=1)
    assert inside.sum() >= 10 and np.median(distance) < 1.0 and (distance < 2.0).mean() > 0.8


@needs_solver
@needs_frames
@needs_index
def test_a_real_stack_carries_its_photometry(m94):
    header, stars, _ = m94
    for key in ("FWHMARC", "MAGZPT", "MAGZPSIG", "MAGZPN", "SKYMAG", "LIMMAG"):
        assert isinstance(header[key], (int, float)), key
    assert header["PHOTBAND"] == "G"
    assert stars.columns.names[:8] == ["RA", "DEC", "X", "Y", "FLUX", "MAG", "CATMAG", "FWHM"]
    assert len(stars) >= 50
    calibration = stars[stars["CALIB"]]
    assert len(calibration) == header["MAGZPN"] >= 5
    residual = calibration["MAG"] - calibration["CATMAG"]
    assert np.median(np.abs(residual - np.median(residual))) <= 0.1
    assert abs(np.median(residual)) < 0.02                       # the zero point is their median offset
    # magnitudes follow MAGZPT and FLUX for every star
    assert np.allclose(stars["MAG"], header["MAGZPT"] - 2.5 * np.log10(stars["FLUX"]), atol=1e-3, equal_nan=True)
    # a Seestar's stars are 2-4 px (5-10″) wide; FWHMARC is the pixels times the plate scale
    assert 4.0 < header["FWHMARC"] < 10.0
    assert header["FWHMARC"] == pytest.approx(np.median(stars["FWHM"][stars["FWHM"] < 6]) * header["PLTSCALE"], rel=0.15)
    # one minute of an S50 reaches fainter than the faintest calibration star, not as deep as 20
    assert calibration["CATMAG"].max() < header["LIMMAG"] < 20.0
    assert np.nanmax(stars["MAG"]) < header["LIMMAG"] + 1.0      # nothing measured far below the limit
    assert 16.0 < header["SKYMAG"] < 22.0                         # a suburban sky, V mag/arcsec²
    # the sky positions are the WCS's
    wcs = solve.celestial_wcs(header)
    ra, dec = wcs.all_pix2world(np.column_stack([stars["X"], stars["Y"]]), 1).T
    assert np.allclose(ra, stars["RA"], atol=1e-5) and np.allclose(dec, stars["DEC"], atol=1e-5)


@needs_solver
@needs_frames
@needs_index
def test_the_technical_card_shows_the_photometry(m94):
    header, _, _ = m94
    rows = dict(techcard.card({"frames": 6, "exposure_s": 60.0, "fwhm_px": 3.2}, header))
    assert rows["FWHM"] == f"{header['FWHMARC']:.1f}″ ({header['FWHMARC'] / header['PLTSCALE']:.2f} px)"
    assert rows["Sky brightness"] == f"{header['SKYMAG']:.2f} mag/arcsec² (V)"
    assert rows["Limiting magnitude"] == f"{header['LIMMAG']:.1f} (V, 5σ point source)"
    assert rows["Zero point"].startswith(f"{header['MAGZPT']:.2f} mag") and f"{header['MAGZPN']} Tycho-2 stars" in rows["Zero point"]


@needs_solver
@needs_frames
@needs_index
def test_a_deep_stack_of_one_chunk_stack_measures_like_it(m94, tmp_path):
    """A deep stack is on its first contribution's brightness scale, sky subtracted: the same zero point,
    depth and star size, and no sky brightness."""
    header, _, path = m94
    group = group_files.bring_up_to_date(None, [(1, path)], lambda *_: None)
    deep = tmp_path / "deep.fits"
    group.write_fits(deep)
    result = photometry.measure_group_file(deep)
    written = fits.getheader(deep)
    assert written["MAGZPT"] == pytest.approx(result.zero_point, abs=1e-3) == pytest.approx(header["MAGZPT"], abs=0.05)
    assert written["LIMMAG"] == pytest.approx(header["LIMMAG"], abs=0.3)
    assert written["FWHMARC"] == pytest.approx(header["FWHMARC"], rel=0.1)
    assert "SKYMAG" not in written and written["MAGZPN"] >= 5


def test_an_unsolved_stack_has_no_photometry_rows():
    rows = dict(techcard.card({"frames": 3, "exposure_s": 30.0, "fwhm_px": 2.5}, fits.Header()))
    assert not {"Sky brightness", "Limiting magnitude", "Zero point"} & set(rows)
