"""Star detection and the per-frame quality metrics graded later: star count, FWHM, elongation, sky level
and sky noise. Built on sep (Source Extractor as a library)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sep

# A single hot pixel seen through the 3x3 luminance kernel measures ~2.0 px; a star, which the kernel
# widens too, 3 px and up on a Seestar. Anything narrower than this is sensor, not sky.
MIN_STAR_FWHM_PX = 2.4

GAUSSIAN_SIGMA_TO_FWHM = 2.3548200450309493

RAISE_LIMIT_TRIES = 4   # a frame with too much above the threshold is searched again at 2x the threshold


@dataclass(frozen=True)
class StarField:
    """Stars of one image plus its sky statistics.

    x, y: (n,) float64 pixel positions (x = column, y = row, pixel centres at integers), brightest first,
    at most `max_stars` of them; flux: (n,) background-subtracted flux in ADU.
    count: stars detected in all (not capped). fwhm_px, elongation: medians over unsaturated, isolated
    stars (NaN when there are none). background, noise: global sky level and RMS in ADU.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    count: int
    fwhm_px: float
    elongation: float
    background: float
    noise: float

    @property
    def xy(self) -> np.ndarray:
        """(n, 2) float64 positions (x, y)."""
        return np.column_stack([self.x, self.y])


def detect_stars(image: np.ndarray, *, detect_sigma: float = 5.0, max_stars: int = 200,
                 saturation: float = 60000.0, min_fwhm_px: float = MIN_STAR_FWHM_PX) -> StarField:
    """Find stars in a luminance image and measure them.

    image: (H, W) float32 in ADU (it is not modified). detect_sigma: threshold in units of the sky RMS.
    saturation: ADU level above which a star's core is clipped; such stars still count and are used
    for matching, but not for FWHM or elongation. min_fwhm_px: narrower objects are not stars (the
    default rejects hot pixels of a raw frame seen through the luminance kernel; a finished stack has
    none, and an undersampled telescope's stars can be narrower than that).
    """
    data = np.array(image, dtype=np.float32, order="C")  # a copy, the sky is subtracted from it in place
    sky = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
    sky.subfrom(data)
    noise = float(sky.globalrms)
    objects = _extract(data, detect_sigma, noise)
    if len(objects) == 0:
        return _empty(float(sky.globalback), noise)

    x, y = objects["x"], objects["y"]
    size = np.sqrt(np.maximum(objects["a"] * objects["b"], 0.25))
    half_light, _ = sep.flux_radius(data, x, y, np.clip(6.0 * size, 4.0, 40.0), 0.5, subpix=3)
    fwhm = 2.0 * half_light  # exact for a Gaussian profile
    is_star = np.isfinite(fwhm) & (fwhm >= min_fwhm_px)
    objects, fwhm = objects[is_star], fwhm[is_star]
    if len(objects) == 0:
        return _empty(float(sky.globalback), noise)

    clean = ((objects["flag"] & (sep.OBJ_MERGED | sep.OBJ_TRUNC)) == 0) & \
            (objects["peak"] + sky.globalback < saturation)
    fwhm_med = float(np.median(fwhm[clean])) if clean.any() else float("nan")
    elong = objects["a"] / np.maximum(objects["b"], 1e-3)
    elong_med = float(np.median(elong[clean])) if clean.any() else float("nan")

    kept = objects[np.argsort(objects["flux"])[::-1][:max_stars]]
    # windowed centroids (SExtractor's XWIN/YWIN) are several times more precise than isophotal ones
    width = np.median(fwhm) / GAUSSIAN_SIGMA_TO_FWHM
    xw, yw, flag = sep.winpos(data, kept["x"], kept["y"], np.full(len(kept), np.clip(width, 0.5, 10.0)))
    good = (flag == 0) & (np.abs(xw - kept["x"]) < 1.5) & (np.abs(yw - kept["y"]) < 1.5)
    return StarField(x=np.where(good, xw, kept["x"]).astype(np.float64),
                     y=np.where(good, yw, kept["y"]).astype(np.float64),
                     flux=kept["flux"].astype(np.float64), count=int(len(objects)),
                     fwhm_px=fwhm_med, elongation=elong_med, background=float(sky.globalback), noise=noise)


def _extract(data: np.ndarray, detect_sigma: float, noise: float) -> np.ndarray:
    """sep.extract, with its pixel buffer kept at the library's default size (a few MB): a frame with
    so much above the threshold that it overflows (a big nebula, a bright-sky gradient) is searched
    again at a higher threshold, where stars are still found and the buffer suffices."""
    for attempt in range(RAISE_LIMIT_TRIES):
        try:
            return sep.extract(data, detect_sigma * 2 ** attempt, err=noise, minarea=5)
        except Exception as exc:  # sep raises a bare Exception when its buffers overflow
            if "buffer full" not in str(exc) and "limit" not in str(exc):
                raise
    return np.zeros(0, dtype=sep.extract(np.zeros((8, 8), np.float32), 1.0).dtype)


def _empty(background: float, noise: float) -> StarField:
    nothing = np.zeros(0, np.float64)
    return StarField(x=nothing, y=nothing, flux=nothing, count=0, fwhm_px=float("nan"),
                     elongation=float("nan"), background=background, noise=noise)


def aperture_fluxes(image: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Background-subtracted aperture photometry.

    image: (H, W) float32 ADU; x, y: (n,) positions; radius: aperture radius in px. The sky is the
    mean of an annulus from 2x to 3x the radius. Returns (n,) fluxes in ADU (NaN where the aperture
    leaves the image).
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    flux, _, flag = sep.sum_circle(image, x, y, radius, bkgann=(2.0 * radius, 3.0 * radius), subpix=5)
    return np.where((flag & sep.APER_TRUNC) == 0, flux, np.nan)
