"""The preview picture: each goal's measure holds on a synthetic field built to break it.

The field: a sky with a strong linear + quadratic gradient and a colour cast, noise, coloured stars
of known colour, a bright galaxy core that a naive stretch burns out, and a drifted edge that few
frames cover (noisier). Pure and fast: arrays in, measures out. One test stacks three real S50
frames (a few seconds) and measures the PNG the pipeline wrote.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from lib.stacking import picture_quality, preview

H, W = 360, 240   # portrait, like a Seestar frame


@pytest.fixture(scope="module")
def field():
    return make_field()


def make_field():
    """(image (3, H, W) float32, cover (H, W), star fluxes (m, 3), star positions (m, 2) px)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    u, v = x / W * 2 - 1, y / H * 2 - 1
    cast = np.array([1.6, 1.0, 0.7], np.float32)                    # red-brown light pollution
    gradient = 0.02 + 0.006 * u + 0.004 * v + 0.003 * v * v
    image = np.stack([gradient * c for c in cast]) + rng.normal(0, 4e-4, (3, H, W)).astype(np.float32)
    # stars of known colour (B/R), with a colour response that the white balance must undo
    response = np.array([0.8, 1.0, 0.6], np.float32)
    stars = []
    for k in range(40):
        sx, sy = rng.uniform(15, W - 15), rng.uniform(40, H - 15)
        colour = np.exp(rng.uniform(-0.7, 0.7))                      # true B/R, median 1
        flux = rng.uniform(0.01, 0.1)
        rgb = np.array([1.0, np.sqrt(colour), colour]) / np.sqrt(colour) * flux
        psf = np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2 * 1.5 ** 2))
        image += (rgb * response)[:, None, None].astype(np.float32) * psf
        stars.append((sx, sy, colour))
    # a galaxy: faint wide halo and a core far brighter than any star's peak
    r2 = (x - W / 2) ** 2 + (y - H / 2) ** 2
    galaxy = 0.004 * np.exp(-r2 / (2 * 15 ** 2)) + 0.5 * np.exp(-r2 / (2 * 3 ** 2))
    image += (np.array([1.0, 0.9, 0.7]) * response)[:, None, None].astype(np.float32) * galaxy
    # the first 30 rows drifted: covered by 2 of 10 frames, so twice as noisy
    cover = np.full((H, W), 10, np.int16)
    cover[:30] = 2
    image[:, :30] += rng.normal(0, 8e-4, (3, 30, W)).astype(np.float32)
    xy = np.array([(sx, sy) for sx, sy, _ in stars])
    from lib.stacking.stars import aperture_fluxes
    fluxes = np.column_stack([aperture_fluxes(p, xy[:, 0], xy[:, 1], 6.0) for p in image])
    return image.astype(np.float32), cover, fluxes, xy


def test_preview_meets_every_goal_on_a_field_with_gradient_cast_and_bright_core(field):
    image, cover, fluxes, xy = field
    plan = preview.plan_rendering(image, cover, fluxes)
    rgb = preview.render(image, plan)
    y0, y1, x0, x1 = plan.crop
    assert y0 >= 30 and rgb.shape == (y1 - y0, x1 - x0, 3)         # the drifted band is cropped off
    result = picture_quality.measure(rgb, preview.calibrate(image, plan), xy - [x0, y0])
    assert picture_quality.failures(result) == []
    # the bright core: unclipped, and brighter than the sky by far
    core = rgb[H // 2 - y0, W // 2 - x0]
    assert core.max() < 255 and core.min() > 150


def test_without_the_rendering_the_same_field_misses_the_goals(field):
    """The measures can fail: a plain per-channel stretch of the same field misses them."""
    image, _, _, _ = field
    naive = np.clip(image / np.percentile(image, 99.9, axis=(1, 2), keepdims=True), 0, 1)
    rgb = (np.sqrt(naive).transpose(1, 2, 0) * 255).astype(np.uint8)
    missed = " ".join(picture_quality.failures(picture_quality.measure(rgb)))
    assert "clipped_fraction" in missed and "sky_cast" in missed


def test_gradient_is_removed_and_sky_is_neutral(field):
    image, cover, fluxes, _ = field
    plan = preview.plan_rendering(image, cover, fluxes)
    flat = preview.calibrate(image, plan)
    quarters = [flat[:, :60, :60], flat[:, :60, -60:], flat[:, -60:, :60], flat[:, -60:, -60:]]
    medians = np.array([[np.median(q[c]) for c in range(3)] for q in quarters])
    # the sky started 0.018..0.05 with a 2x cast; it ends within a fraction of the noise of 0
    assert np.abs(medians).max() < 3e-4


def test_white_balance_makes_the_median_star_neutral(field):
    image, cover, fluxes, _ = field
    plan = preview.plan_rendering(image, cover, fluxes)
    assert plan.stars_balanced >= 30
    np.testing.assert_allclose(plan.gains, [1 / 0.8, 1.0, 1 / 0.6], rtol=0.15)


def test_every_factor_is_recorded_in_the_header_and_reproduces_the_preview(field):
    image, cover, fluxes, _ = field
    plan = preview.plan_rendering(image, cover, fluxes)
    header = fits.Header()
    for key, value, comment in plan.header_cards():
        header[key] = (value, comment)
    restored = preview.Rendering.from_header(fits.Header.fromstring(header.tostring()))
    assert restored.crop == plan.crop
    np.testing.assert_array_equal(preview.render(image, restored), preview.render(image, plan))
    assert preview.Rendering.from_header(fits.Header()) is None


def test_crop_is_the_largest_rectangle_most_frames_cover():
    cover = np.zeros((200, 100), np.int16)
    cover[20:180, 10:90] = 10      # most frames
    cover[20:60, 10:30] = 3        # a corner few frames reach
    y0, y1, x0, x1 = preview.covered_crop(cover, cover.shape, step=4)
    assert (cover[y0:y1, x0:x1] >= 7).all()
    assert (y1 - y0) * (x1 - x0) >= 0.9 * (120 * 80)  # the best rectangle is 120 x 80 (rows 60..180)
    assert preview.covered_crop(None, (50, 40)) == (0, 50, 0, 40)


def test_chroma_reduction_keeps_star_colours(field):
    image, cover, fluxes, xy = field
    plan = preview.plan_rendering(image, cover, fluxes)
    y0, y1, x0, x1 = plan.crop
    y, x = np.mgrid[0:y1 - y0, 0:x1 - x0]
    raw = np.nan_to_num(image[:, y0:y1, x0:x1]) - preview.background_model(plan.background, (y1 - y0, x1 - x0))
    raw *= plan.gains[:, None, None].astype(np.float32)
    reduced = preview.reduce_chroma(raw, plan.noise)
    sky = raw.mean(axis=0) < plan.noise
    assert (reduced[0] - reduced.mean(0))[sky].std() < 0.3 * (raw[0] - raw.mean(0))[sky].std()
    for sx, sy in (xy - [x0, y0])[:20]:
        if 5 <= sy < y1 - y0 - 5 and 5 <= sx < x1 - x0 - 5:
            j, i = int(round(sy)), int(round(sx))
            before, after = raw[:, j, i], reduced[:, j, i]
            if before.mean() > 20 * plan.noise:
                assert after[2] / after[0] == pytest.approx(before[2] / before[0], rel=0.1)


REAL_NIGHT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "seestar-m94" / "2025-04-09"


@pytest.mark.skipif(not REAL_NIGHT.is_dir(), reason=f"real Seestar frames not found at {REAL_NIGHT}")
def test_preview_of_a_small_real_stack_meets_every_goal():
    """Three real S50 frames of M 94 stacked by the pipeline: its PNG, as written, meets the goals."""
    import cv2

    from lib.stacking import stack_files
    from lib.stacking.stars import detect_stars

    result = stack_files(sorted(REAL_NIGHT.glob("*.fit"))[:3])
    header = fits.getheader(io.BytesIO(result.fits_bytes))
    plan = preview.Rendering.from_header(header)
    image = result.image
    rgb = cv2.imdecode(np.frombuffer(result.png_bytes, np.uint8), cv2.IMREAD_COLOR)[::-1, :, ::-1]  # as the arrays
    np.testing.assert_array_equal(rgb, preview.render(image, plan))        # the header reproduces the PNG
    y0, y1, x0, x1 = plan.crop
    found = detect_stars((image[0] + 2 * image[1] + image[2]) * np.float32(0.25 * 65535), saturation=np.inf)
    xy = np.column_stack([found.x - x0, found.y - y0])[:100]
    result = picture_quality.measure(rgb, preview.calibrate(image, plan), xy)
    assert picture_quality.failures(result) == [], result
