"""The stacking pipeline (lib/stacking) on synthetic frames with a known truth, and on real Seestar frames."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from lib.stacking import FrameVerdict, StackingError, StackOptions, StackResult, stack_files
from lib.stacking import combine, grade
from lib.stacking.debayer import PATTERNS, bayer_pattern, cfa_luminance, debayer
from lib.stacking.fitsio import read_frame
from lib.stacking.register import apply_matrix, find_registration, rotation_guess
from lib.stacking.stars import detect_stars
from lib.stacking.synthetic import make_session

REAL_FRAMES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "seestar-m94"
CLOUDY, SATELLITE, TRAILED = 5, 2, 6


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """8 small frames: hot pixels in all, a satellite trail, a cloudy frame and a trailed frame."""
    return make_session(tmp_path_factory.mktemp("synthetic"), n_frames=8, hot_pixels=40, seed=1,
                        satellite_frame=SATELLITE, cloudy_frame=CLOUDY, trailed_frame=TRAILED)


@pytest.fixture(scope="module")
def stacked(session) -> tuple[StackResult, list[tuple[float, str]]]:
    calls: list[tuple[float, str]] = []
    result = stack_files(session.paths, names=[f"owner-{p.name}" for p in session.paths],
                         progress=lambda fraction, message: calls.append((fraction, message)))
    return result, calls


def _reference_index(session, result) -> int:
    return [f"owner-{p.name}" for p in session.paths].index(result.reference_name)


def _sky_pixels_near(session, points_xy: np.ndarray, reference: int, frame: int) -> np.ndarray:
    """(row, col) of reference-grid pixels at the given frame's points, at least 8 px from any star."""
    xy = apply_matrix(session.frame_to_frame(frame, reference), points_xy)
    stars = apply_matrix(session.frames[reference].matrix, session.star_xy)
    far = np.min(np.linalg.norm(xy[:, None] - stars[None], axis=2), axis=1) > 8
    height, width = session.shape
    inside = (xy[:, 0] > 6) & (xy[:, 0] < width - 7) & (xy[:, 1] > 6) & (xy[:, 1] < height - 7)
    pick = np.round(xy[far & inside]).astype(int)
    return pick[:, ::-1]


def _residual(result, session, reference, pixels) -> np.ndarray:
    """(n, 3) stack minus truth in ADU at pixels (n, 2) rows/cols."""
    truth = session.truth(reference)
    stack = result.image.astype(np.float64) * 65535
    return np.stack([stack[c][pixels[:, 0], pixels[:, 1]] - truth[c][pixels[:, 0], pixels[:, 1]]
                     for c in range(3)], axis=1)


# ------------------------------------------------------------------------------------------ debayer

@pytest.mark.parametrize("pattern", PATTERNS)
def test_debayer_puts_each_colour_in_its_channel(pattern):
    for channel, colour in enumerate("RGB"):
        cfa = np.zeros((8, 8), np.uint16)
        for k, letter in enumerate(pattern):
            if letter == colour:
                cfa[k // 2::2, k % 2::2] = 1000
        rgb = debayer(cfa, pattern)[:, 2:6, 2:6].reshape(3, -1).mean(axis=1)
        assert rgb[channel] == pytest.approx(1000, abs=1)
        assert np.delete(rgb, channel) == pytest.approx([0, 0], abs=1)


def test_demosaic_sharpens_stars_and_keeps_the_sky_quiet(session, monkeypatch):
    """Bilinear interpolation widens stars; the Laplacian correction wins that back on stars, and its
    soft threshold keeps most of the correction's noise out of the sky."""
    import cv2

    from lib.stacking import debayer as demosaic

    raw, header = read_frame(session.paths[0])
    assert header.pattern == "GRBG"  # the OpenCV code below is GRBG's
    bilinear = np.moveaxis(cv2.cvtColor(raw, cv2.COLOR_BayerGB2RGB).astype(np.float32), -1, 0)
    ours = debayer(raw, header.pattern)
    monkeypatch.setattr(demosaic, "SHRINK_SIGMAS", 0.0)
    unthresholded = debayer(raw, header.pattern)

    def stars(rgb):
        return detect_stars((rgb[0] + 2 * rgb[1] + rgb[2]) / 4)

    sharp, soft, raw_correction = stars(ours), stars(bilinear), stars(unthresholded)
    assert sharp.fwhm_px < 0.95 * soft.fwhm_px
    assert sharp.noise < 1.25 * soft.noise
    assert sharp.noise < 0.9 * raw_correction.noise


def test_bayer_offsets_shift_the_pattern():
    assert bayer_pattern("grbg") == "GRBG"
    assert bayer_pattern("GRBG", x_offset=1) == "RGGB"
    assert bayer_pattern("GRBG", y_offset=1) == "BGGR"
    with pytest.raises(ValueError):
        bayer_pattern("RGBW")


def test_luminance_from_mosaic_weights_colours_a_quarter_a_half_a_quarter():
    cfa = np.zeros((16, 16), np.float32)
    cfa[0::2, 1::2] = 400          # R sites of GRBG
    cfa[0::2, 0::2] = cfa[1::2, 1::2] = 200  # G
    cfa[1::2, 0::2] = 800          # B
    assert cfa_luminance(cfa)[4:12, 4:12] == pytest.approx(0.25 * 400 + 0.5 * 200 + 0.25 * 800)


# ----------------------------------------------------------------------------------- registration

def test_rotated_and_shifted_frame_registers_within_a_tenth_of_a_pixel(tmp_path):
    session = make_session(tmp_path, n_frames=5, n_stars=120, hot_pixels=30, max_rotation_deg=3,
                           max_shift_px=20, seed=4)
    stars = [detect_stars(cfa_luminance(read_frame(p)[0])) for p in session.paths]
    height, width = session.shape
    grid = np.array([[x, y] for x in np.linspace(0, width - 1, 5) for y in np.linspace(0, height - 1, 5)])
    for k in range(1, 5):
        registration = find_registration(stars[k].xy, stars[0].xy, stars[k].flux)
        error = apply_matrix(registration.matrix, grid) - apply_matrix(session.frame_to_frame(k, 0), grid)
        assert np.linalg.norm(error, axis=1).max() < 0.1, f"frame {k}"
        assert registration.matches >= 20


@pytest.mark.parametrize("degrees", [2.5, -40.0, 180.0])
def test_a_turned_field_is_found_without_matching_triangles(degrees):
    """An alt-az mount turns the field through a session, and a meridian flip turns it by 180°: the
    quick guess from star pairs must find the turn (astroalign stays the last resort)."""
    rng = np.random.default_rng(3)
    ref = rng.uniform([0, 0], [1080, 1920], (60, 2))
    theta = np.radians(degrees)
    turn = np.array([[np.cos(theta), -np.sin(theta), 35.0], [np.sin(theta), np.cos(theta), -12.0]])
    frame = apply_matrix(np.linalg.inv(np.vstack([turn, [0, 0, 1]]))[:2], ref)
    frame += rng.normal(0, 0.05, frame.shape)
    guess = rotation_guess(frame, ref)
    assert guess is not None
    found = np.degrees(np.arctan2(guess[1, 0], guess[0, 0]))
    assert abs((found - degrees + 180) % 360 - 180) < 0.3
    assert np.abs(apply_matrix(guess, frame) - ref).max() < 3.0


PARTLY_SHARED_FIELD = """
import sys
import numpy as np
from lib.stacking.register import apply_matrix, find_registration

rng = np.random.default_rng(5)
sky = rng.uniform([-1200, -1200], [2300, 3100], (1500, 2))
flux = rng.pareto(1.5, len(sky)) + 1
theta = np.radians(70.0)
turn = np.array([[np.cos(theta), -np.sin(theta), 900.0], [np.sin(theta), np.cos(theta), -400.0]])
inverse = np.linalg.inv(np.vstack([turn, [0, 0, 1]]))[:2]


def seen(xy):
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < 1080) & (xy[:, 1] >= 0) & (xy[:, 1] < 1920)
    order = np.argsort(-flux[inside])[:200]
    return np.flatnonzero(inside)[order]


in_ref = seen(sky)
frame_sky = apply_matrix(inverse, sky)
in_frame = seen(frame_sky)
common = np.intersect1d(in_ref, in_frame)
frame_xy = frame_sky[in_frame] + rng.normal(0, 0.05, (len(in_frame), 2))
found = find_registration(frame_xy, sky[in_ref], flux[in_frame])
error = np.abs(apply_matrix(found.matrix, frame_sky[common]) - sky[common]).max()
print(len(common), len(in_ref), found.matches, error, "astroalign" in sys.modules)
"""


def test_frames_sharing_part_of_the_field_register_without_the_triangle_search():
    """Another night or another telescope: the field turned by 70° and moved by half a frame, a third
    of the stars in common. The quick guesses must register it; the triangle search (astroalign) would
    load scipy and scikit-image into every worker."""
    done = subprocess.run([sys.executable, "-c", PARTLY_SHARED_FIELD], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    common, in_ref, matches, error, loaded = done.stdout.split()
    assert int(common) < 0.5 * int(in_ref) and int(matches) >= 20
    assert float(error) < 0.1
    assert loaded == "False"


# ------------------------------------------------------------------------------------- full stack

def test_cloudy_and_trailed_frames_are_graded_out_with_reasons(stacked, session):
    result, _ = stacked
    verdicts = {v.name: v for v in result.frames}
    cloudy = verdicts[f"owner-frame_{CLOUDY:03d}.fits"]
    assert not cloudy.used and cloudy.reason.startswith("cloudy")
    trailed = verdicts[f"owner-frame_{TRAILED:03d}.fits"]
    assert not trailed.used and trailed.reason.startswith("trailed")
    assert [v.name for v in result.frames] == [f"owner-{p.name}" for p in session.paths]
    assert all(v.used and v.reason is None for v in result.frames if v.name not in (cloudy.name, trailed.name))
    assert all(isinstance(v, FrameVerdict) and v.stars > 0 and v.fwhm_px > 0 for v in result.frames)


def test_reference_is_the_best_graded_frame(stacked, session):
    result, _ = stacked
    used = [v for v in result.frames if v.used]
    scores = {v.name: v.stars / (v.fwhm_px ** 2 * v.noise) for v in used}
    assert result.reference_name == max(scores, key=scores.get)


def test_satellite_trail_and_hot_pixels_are_rejected(stacked, session):
    result, _ = stacked
    reference = _reference_index(session, result)
    noise = 65535 * np.median([np.median(np.abs(np.diff(result.image[c][40:-40, 40:-40], axis=1)))
                               for c in range(3)]) * 1.4826 / np.sqrt(2)
    p0, p1 = session.satellite_line
    along = p0 + np.linspace(0.05, 0.95, 200)[:, None] * (p1 - p0)
    trail = _sky_pixels_near(session, along, reference, SATELLITE)
    hot = np.concatenate([_sky_pixels_near(session, session.hot_pixels.astype(float), reference, k)
                          for k, v in enumerate(result.frames) if v.used])
    assert len(trail) > 50 and len(hot) > 100
    for pixels in (trail, hot):
        residual = _residual(result, session, reference, pixels)
        assert np.abs(np.median(residual)) < 3 * noise
        assert np.percentile(np.abs(residual), 99) < 8 * noise


def test_without_rejection_the_same_defects_show(session, stacked):
    result, _ = stacked
    plain = stack_files(session.paths, options=StackOptions(rejection="none", workers=1))
    reference = [p.name for p in session.paths].index(plain.reference_name)
    p0, p1 = session.satellite_line
    along = p0 + np.linspace(0.05, 0.95, 200)[:, None] * (p1 - p0)
    trail = _sky_pixels_near(session, along, reference, SATELLITE)
    # the 1500 ADU trail, averaged over 6 frames and smeared by demosaicing and warping
    assert np.median(_residual(plain, session, reference, trail)) > 60


def test_output_fits_headers_and_tables_are_exact(stacked, session, tmp_path):
    result, _ = stacked
    path = tmp_path / "stack.fits"
    result.write_fits(path)
    with fits.open(path) as hdul:
        header = hdul[0].header
        assert hdul[0].data.shape == (3, *session.shape) and hdul[0].data.dtype == np.dtype(">f4")
        used = [k for k, v in enumerate(result.frames) if v.used]
        frames = [session.frames[k] for k in used]
        start = min(f.date_obs for f in frames)
        end = max(f.date_obs + timedelta(seconds=f.exptime) for f in frames)
        assert header["NCOMBINE"] == len(used) == result.ncombine == 6
        assert header["EXPTIME"] == pytest.approx(sum(f.exptime for f in frames)) == result.exptime_total
        assert header["DATE-BEG"] == start.isoformat(timespec="milliseconds") == result.date_beg
        assert header["DATE-END"] == end.isoformat(timespec="milliseconds") == result.date_end
        assert header["DATE-OBS"] == header["DATE-BEG"]
        assert header["OBJECT"] == result.object == "SYNTHETIC FIELD"
        assert header["INSTRUME"] == result.instrument == "Seestar S50"
        assert header["TELESCOP"] == "S50_synthetic"
        assert header["REFFRAME"] == result.reference_name
        for private in ("SITELAT", "SITELONG", "SITEELEV", "OBSGEO-B", "OBSGEO-L", "LATITUDE", "LONGITUD"):
            assert private not in header
        assert "BAYERPAT" not in header
        assert sum("frame used" in line for line in header["HISTORY"]) == len(used)

        table = hdul["FRAMES"].data
        assert list(table["NAME"]) == [v.name for v in result.frames]
        assert list(table["USED"]) == [v.used for v in result.frames]
        assert list(table["REASON"]) == [v.reason or "" for v in result.frames]
        assert list(table["STARS"]) == [v.stars for v in result.frames]
        assert np.isnan(table["RESIDUAL"][CLOUDY]) and table["RESIDUAL"][used].max() < 0.5
        coverage = hdul["COVERAGE"].data
        assert coverage.shape == session.shape and coverage.max() == len(used)


def test_preview_is_a_neutral_png(stacked, tmp_path):
    from PIL import Image
    result, _ = stacked
    path = tmp_path / "stack.png"
    result.write_preview(path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        rgb = np.asarray(image, float)
    # cropped to the area most frames cover, as the FITS header records (the FITS keeps every pixel)
    header = fits.getheader(io.BytesIO(result.fits_bytes))
    y0, y1, x0, x1 = (header[k] for k in ("PVCROPY0", "PVCROPY1", "PVCROPX0", "PVCROPX1"))
    assert rgb.shape == (y1 - y0, x1 - x0, 3) and (result.coverage[y0:y1, x0:x1] >= 0.7 * result.ncombine).all()
    sky = np.median(rgb.reshape(-1, 3), axis=0)
    assert sky.max() - sky.min() < 6 and 10 < sky.mean() < 80  # grey, dark but not black


def test_progress_reports_every_frame_and_block(stacked, session):
    _, calls = stacked
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    messages = [m for _, m in calls]
    assert sum(m.startswith("measured ") for m in messages) == len(session.paths)
    assert "registered 6/6" in messages  # the two graded-out frames are not registered
    assert any(m.startswith("combined block ") for m in messages)


def test_stack_noise_beats_a_single_frame(stacked):
    result, _ = stacked
    frame_noise = np.median([v.noise for v in result.frames if v.used])
    assert result.noise < frame_noise / 2
    assert result.fwhm_px < 1.3 * np.median([v.fwhm_px for v in result.frames if v.used])


# ------------------------------------------------------------------------------------ failures

def test_frames_without_stars_raise_a_clear_error(tmp_path):
    blank = make_session(tmp_path, n_frames=3, blank=True)
    with pytest.raises(StackingError) as error:
        stack_files(blank.paths, options=StackOptions(workers=1))
    message = str(error.value)
    assert "no frame could be used" in message and "too few stars" in message
    assert all(p.name in message for p in blank.paths)


def test_the_error_crosses_from_the_stacking_process(tmp_path):
    blank = make_session(tmp_path, n_frames=2, blank=True)
    with pytest.raises(StackingError, match="too few stars"):
        stack_files(blank.paths, options=StackOptions(workers=2, tmp_dir=str(tmp_path)))
    assert not list(tmp_path.glob("crowdsky-stack-*")), "scratch space is removed"


def test_a_caller_that_gives_up_stops_the_stacking_process(session, tmp_path):
    class GiveUp(Exception):
        pass

    def progress(fraction, message):
        if message.startswith("registered"):
            raise GiveUp

    with pytest.raises(GiveUp):
        stack_files(session.paths, progress=progress, options=StackOptions(workers=2, tmp_dir=str(tmp_path)))
    assert not list(tmp_path.glob("crowdsky-stack-*"))
    running = subprocess.run(["pgrep", "-f", f"lib.stacking.runner {tmp_path}"], capture_output=True)
    assert running.returncode == 1, "no runner left behind"


def test_scratch_left_by_a_killed_stack_is_removed(tmp_path):
    from lib.stacking.runner import _remove_orphaned_scratch
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"crowdsky-stack-{int(dead.stdout)}-abc"
    mine = tmp_path / f"crowdsky-stack-{os.getpid()}-def"
    orphan.mkdir()
    mine.mkdir()
    _remove_orphaned_scratch(tmp_path)
    assert not orphan.exists() and mine.exists()


def test_frames_that_match_nothing_leave_only_the_reference(tmp_path):
    paths = []
    for seed in (11, 12, 13):  # three unrelated star fields
        paths += make_session(tmp_path / f"field{seed}", n_frames=1, seed=seed).paths
    result = stack_files(paths, names=["a.fits", "b.fits", "c.fits"], options=StackOptions(workers=1))
    assert result.ncombine == 1
    others = [v for v in result.frames if v.name != result.reference_name]
    assert all(not v.used and v.reason.startswith("cannot register") for v in others)


def test_odd_frames_are_rejected_not_fatal(session, tmp_path):
    odd_shape = tmp_path / "small.fits"
    data, _ = read_frame(session.paths[0])
    header = fits.getheader(session.paths[0])
    fits.PrimaryHDU(data[:128, :128], header=header).writeto(odd_shape)
    other_pattern = tmp_path / "rggb.fits"
    header["BAYERPAT"] = "RGGB"
    fits.PrimaryHDU(data, header=header).writeto(other_pattern)
    not_fits = tmp_path / "notes.fits"
    not_fits.write_text("not a FITS file")
    paths = [*session.paths[:4], odd_shape, other_pattern, not_fits]
    result = stack_files(paths, options=StackOptions(workers=1))
    reasons = {v.name: v.reason for v in result.frames}
    assert "session's frames are 384x256" in reasons["small.fits"]
    assert "Bayer pattern RGGB differs" in reasons["rggb.fits"]
    assert reasons["notes.fits"].startswith("not a readable FITS file")
    assert result.ncombine == 4


def test_names_must_match_paths(session):
    with pytest.raises(ValueError):
        stack_files(session.paths[:2], names=["one"])
    with pytest.raises(StackingError):
        stack_files([])


# ---------------------------------------------------------------------------- pure step functions

def _reference_winsorized(values: np.ndarray, low=3.0, high=3.0, passes=5) -> tuple[float, float]:
    """Siril's winsorized sigma clipping of one pixel, written out plainly."""
    v = np.sort(values[~np.isnan(values)]).astype(np.float64)
    for _ in range(passes):
        if len(v) < 3:
            break
        centre, sigma = np.median(v), v.std()
        for _ in range(10_000):
            new = 1.134 * np.clip(v, centre - 1.5 * sigma, centre + 1.5 * sigma).std()
            settled = abs(new - sigma) <= 1e-9 * sigma
            sigma = new
            if settled:
                break
        keep = (v >= centre - low * sigma) & (v <= centre + high * sigma)
        if keep.all():
            break
        v = v[keep]
    return (v.min(), v.max()) if len(v) else (np.nan, np.nan)


@pytest.mark.parametrize("frames", [3, 5, 8, 17, 40, 150])
@pytest.mark.parametrize("outlier_rate", [0.05, 0.0])  # 0: sky only, where most pixels are decided early
def test_vectorised_winsorized_clipping_matches_the_per_pixel_procedure(frames, outlier_rate):
    rng = np.random.default_rng(frames)
    stack = rng.normal(100, 10, (frames, 1500)).astype(np.float32)
    outliers = rng.random(stack.shape) < outlier_rate
    stack[outliers] += rng.normal(0, 80, outliers.sum()).astype(np.float32)
    stack[rng.random(stack.shape) < 0.1] = np.nan
    lowest, highest = combine.winsorized_limits(stack)
    for p in range(stack.shape[1]):
        expected = _reference_winsorized(stack[:, p])
        assert (lowest[p], highest[p]) == pytest.approx(expected, abs=1e-3, nan_ok=True), p


def test_pixel_stacks_sort_like_numpy_with_missing_values_last():
    rng = np.random.default_rng(3)
    for frames in range(1, 41):
        stack = rng.normal(0, 1, (frames, 257)).astype(np.float32)
        stack[rng.random(stack.shape) < 0.2] = np.nan
        stack[:, 0] = 1.0  # ties
        assert np.array_equal(combine.sort_frames(stack), np.sort(stack, axis=0), equal_nan=True), frames
        whole = stack[:, 1:]
        assert np.array_equal(combine.sort_frames(np.nan_to_num(whole)), np.sort(np.nan_to_num(whole), axis=0))


def test_combine_rejects_outliers_and_weights_frames():
    rng = np.random.default_rng(0)
    stack = rng.normal(10, 1, (12, 2000)).astype(np.float32)
    stack[3, ::5] += 200                      # a trail through every 5th pixel of one frame
    stack[:, :10] = np.nan                    # pixels no frame covers
    weights = np.ones(12, np.float32)
    for rejection in ("winsorized", "sigma", "percentile"):
        mean, rejected = combine.combine(stack, weights, rejection=rejection)
        assert np.isnan(mean[:10]).all()
        assert np.abs(mean[10:] - 10).max() < 2, rejection
        assert rejected >= 398, rejection
    mean, rejected = combine.combine(stack, weights, rejection="none")
    assert rejected == 0 and mean[10::5].mean() > 20
    clean = rng.normal(10, 1, (4, 500)).astype(np.float32)
    clean[0] = 30
    mean, _ = combine.combine(clean, np.array([0, 1, 1, 1], np.float32), rejection="none")
    assert np.abs(mean - 10).max() < 3  # the zero-weight frame does not count


def test_grading_limits_are_relative_to_the_session():
    def metrics(stars=60, fwhm=3.5, elongation=1.1, background=1170.0, noise=37.0):
        return grade.FrameMetrics(stars, fwhm, elongation, background, noise)

    session = [metrics(stars=60 + k % 3, fwhm=3.4 + 0.05 * (k % 4)) for k in range(10)]
    assert grade.grade_frames(session) == [None] * 10
    bright_sky_night = [metrics(background=5000.0 + k) for k in range(10)]  # the same numbers ten times brighter
    assert grade.grade_frames(bright_sky_night) == [None] * 10
    session[4] = metrics(stars=15, background=2900.0)
    session[7] = metrics(fwhm=6.0)
    reasons = grade.grade_frames(session)
    assert reasons[4].startswith("cloudy") and reasons[7].startswith("blurred")
    assert sum(r is not None for r in reasons) == 2


# ---------------------------------------------------------------------------------- real frames

@pytest.mark.skipif(not REAL_FRAMES.is_dir(), reason=f"real Seestar frames not found at {REAL_FRAMES}")
def test_three_real_seestar_frames_register_and_stack(tmp_path):
    paths = sorted((REAL_FRAMES / "2025-04-09").glob("*.fit"))[:3]
    raw, header = read_frame(paths[0])
    assert header.pattern == "GRBG"
    # the two green sites of a GRBG mosaic, (0,0) and (1,1), see the same sky; R and B do not
    sites = [np.median(raw[r::2, c::2]) for r, c in ((0, 0), (1, 1), (0, 1), (1, 0))]
    assert abs(sites[0] - sites[1]) < 0.02 * sites[0] and min(abs(sites[0] - s) for s in sites[2:]) > 0.1 * sites[0]

    result = stack_files(paths)
    assert result.ncombine == 3 and all(v.used for v in result.frames)
    assert all(v.residual_px < 0.5 for v in result.frames)
    assert result.object == "M 94" and result.exptime_total == 30.0
    result.write_fits(tmp_path / "m94.fits")
    header = fits.getheader(tmp_path / "m94.fits")
    assert header["NCOMBINE"] == 3 and "SITELAT" not in header and "SITELONG" not in header
    temperatures = [fits.getheader(p)["CCD-TEMP"] for p in paths]
    assert header["CCD-TEMP"] == pytest.approx(float(np.median(temperatures)), abs=0.01)  # the technical card's
    # sky close to neutral after normalisation: channel levels keep the reference's raw colour, their
    # noise is similar, and the stretched preview is grey
    result.write_preview(tmp_path / "m94.png")
    from PIL import Image
    with Image.open(tmp_path / "m94.png") as image:
        sky = np.median(np.asarray(image, float).reshape(-1, 3), axis=0)
    assert sky.max() - sky.min() < 6
