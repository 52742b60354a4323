"""Synthetic Seestar-like raw frames with a known truth, for the tests and the benchmarks.

A star field (Gaussian PSFs integrated over each pixel, per-star colour) is seen by every frame through
its own rotation + shift, mosaiced to GRBG, given sky, shot and read noise, and written as a 16-bit FITS
file with a Seestar-style header (SITELAT/SITELONG included, as the real ones have them). Defects can
be switched on: fixed hot pixels, a satellite trail in one frame, a cloudy frame (low transparency,
bright sky) and a trailed frame (stars smeared along a line).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.special import erf

PATTERN = "GRBG"
SKY_ADU = np.array([1066.0, 1290.0, 1034.0])   # R, G, B sky per pixel: a real S50 frame's levels
READ_NOISE_ADU = 8.0
ADU_PER_ELECTRON = 0.4                            # shot-noise variance in ADU² per ADU of signal
PSF_FWHM_PX = 3.0
CHANNEL_SITES = {"R": (0, 1), "G": ((0, 0), (1, 1)), "B": (1, 0)}  # GRBG, array order


@dataclass(frozen=True)
class SyntheticFrame:
    """One written frame. matrix: (2, 3) taking sky (x, y) to this frame's pixel (x, y)."""

    path: Path
    matrix: np.ndarray
    transparency: float
    sky: np.ndarray
    exptime: float
    date_obs: datetime
    cloudy: bool = False
    trailed: bool = False
    satellite: bool = False


@dataclass
class SyntheticSession:
    """A set of frames of one star field and everything needed to check a stack of them."""

    shape: tuple[int, int]
    star_xy: np.ndarray          # (n, 2) sky positions
    star_flux: np.ndarray        # (n,) total flux in ADU at transparency 1 (green channel)
    star_colour: np.ndarray      # (n, 3) flux multipliers R, G, B
    hot_pixels: np.ndarray       # (k, 2) sensor (x, y), the same in every frame
    satellite_line: tuple[np.ndarray, np.ndarray] | None   # two (x, y) points, satellite frame's pixels
    frames: list[SyntheticFrame] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.frames]

    def frame_to_frame(self, source: int, target: int) -> np.ndarray:
        """(2, 3) matrix taking frame `source` pixels to frame `target` pixels."""
        return _compose(self.frames[target].matrix, _invert(self.frames[source].matrix))

    def truth(self, index: int) -> np.ndarray:
        """(3, H, W) float64 noiseless R, G, B of frame `index` (its sky and transparency, no defects)."""
        frame = self.frames[index]
        return _render(self.shape, frame.matrix, self.star_xy, self.star_flux * frame.transparency,
                       self.star_colour, frame.sky, trail=None)


def _invert(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    return (np.vstack([outer, [0.0, 0.0, 1.0]]) @ np.vstack([inner, [0.0, 0.0, 1.0]]))[:2]


def similarity(angle_deg: float, dx: float, dy: float, centre: tuple[float, float]) -> np.ndarray:
    """(2, 3) rotation by angle_deg about `centre` (x, y), then shift by (dx, dy)."""
    a = np.radians(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.asarray(centre, float)
    return np.column_stack([rot, c - rot @ c + [dx, dy]])


def _pixel_integral(edges_lo: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """Fraction of a 1-D Gaussian falling in pixels [edges_lo, edges_lo + 1)."""
    scale = 1.0 / (np.sqrt(2.0) * sigma)
    return 0.5 * (erf((edges_lo + 1.0 - centre) * scale) - erf((edges_lo - centre) * scale))


def _render(shape, matrix, star_xy, star_flux, star_colour, sky, trail) -> np.ndarray:
    """(3, H, W) noiseless image: sky plus every star through `matrix`; `trail` = (length_px, angle_deg)
    smears each star along a line (a tracking failure)."""
    height, width = shape
    image = np.empty((3, height, width))
    image[:] = np.asarray(sky, float)[:, None, None]
    sigma = PSF_FWHM_PX / 2.3548200450309493
    pos = star_xy @ matrix[:, :2].T + matrix[:, 2]
    if trail is None:
        offsets = np.zeros((1, 2))
    else:
        length, angle = trail
        steps = np.linspace(-0.5, 0.5, 15)[:, None] * length
        offsets = steps * [np.cos(np.radians(angle)), np.sin(np.radians(angle))]
    half = int(np.ceil(5 * sigma + (trail[0] / 2 if trail else 0)))
    for (x, y), flux, colour in zip(pos, star_flux, star_colour):
        x0, x1 = int(np.floor(x)) - half, int(np.floor(x)) + half + 1
        y0, y1 = int(np.floor(y)) - half, int(np.floor(y)) + half + 1
        if x1 < 0 or y1 < 0 or x0 >= width or y0 >= height:
            continue
        xs = np.arange(max(x0, 0), min(x1, width), dtype=float) - 0.5
        ys = np.arange(max(y0, 0), min(y1, height), dtype=float) - 0.5
        stamp = np.zeros((len(ys), len(xs)))
        for ox, oy in offsets:
            stamp += np.outer(_pixel_integral(ys, y + oy, sigma), _pixel_integral(xs, x + ox, sigma))
        stamp *= flux / len(offsets)
        sl = (slice(max(y0, 0), min(y1, height)), slice(max(x0, 0), min(x1, width)))
        for c in range(3):
            image[c][sl] += colour[c] * stamp
    return image


def _mosaic(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) → (H, W) GRBG mosaic."""
    cfa = np.empty(rgb.shape[1:])
    cfa[0::2, 0::2] = rgb[1, 0::2, 0::2]
    cfa[1::2, 1::2] = rgb[1, 1::2, 1::2]
    cfa[0::2, 1::2] = rgb[0, 0::2, 1::2]
    cfa[1::2, 0::2] = rgb[2, 1::2, 0::2]
    return cfa


def _satellite(shape, p0, p1, amplitude) -> np.ndarray:
    """(H, W) a straight trail through p0, p1 (x, y) with a Gaussian cross-section of σ = 0.8 px."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    direction = (p1 - p0) / np.linalg.norm(p1 - p0)
    distance = (xx - p0[0]) * direction[1] - (yy - p0[1]) * direction[0]
    return amplitude * np.exp(-0.5 * (distance / 0.8) ** 2)


def make_session(directory: Path, n_frames: int = 8, shape: tuple[int, int] = (256, 384), *, seed: int = 1,
                 n_stars: int = 80, max_rotation_deg: float = 1.5, max_shift_px: float = 12.0,
                 hot_pixels: int = 0, satellite_frame: int | None = None, cloudy_frame: int | None = None,
                 trailed_frame: int | None = None, blank: bool = False, exptime: float = 10.0,
                 object_name: str = "SYNTHETIC FIELD", telescope: str = "S50_synthetic") -> SyntheticSession:
    """Write `n_frames` raw frames into `directory` and return their truth.

    shape: (H, W) of the sensor, even. n_stars: stars in the field (some fall outside any one frame).
    blank=True writes frames with no stars at all. Frame k is named frame_{k:03d}.fits.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    directory.mkdir(parents=True, exist_ok=True)
    margin = max_shift_px + 0.02 * max(shape) * max_rotation_deg + 8
    count = 0 if blank else n_stars
    star_xy = np.column_stack([rng.uniform(-margin, width + margin, count),
                               rng.uniform(-margin, height + margin, count)])
    star_flux = 400.0 * (1.0 + rng.pareto(1.2, count)) * 4
    star_flux = np.minimum(star_flux, 2.0e5)
    star_colour = np.clip(rng.normal([0.85, 1.0, 0.8], 0.15, (count, 3)), 0.4, 1.6)
    hot = np.column_stack([rng.integers(0, width, hot_pixels), rng.integers(0, height, hot_pixels)])
    hot_values = rng.uniform(8000, 40000, hot_pixels)

    session = SyntheticSession(shape, star_xy, star_flux, star_colour, hot, None)
    start = datetime(2025, 4, 9, 20, 54, 22, 790113)
    centre = ((width - 1) / 2, (height - 1) / 2)
    for k in range(n_frames):
        angle = rng.uniform(-max_rotation_deg, max_rotation_deg)
        dx, dy = rng.uniform(-max_shift_px, max_shift_px, 2)
        matrix = similarity(angle, dx, dy, centre)
        transparency, sky = 1.0 - rng.uniform(0, 0.05), SKY_ADU * rng.uniform(0.98, 1.02)
        if k == cloudy_frame:
            transparency, sky = 0.3, SKY_ADU * 2.5
        trail = (9.0, rng.uniform(0, 180)) if k == trailed_frame else None
        rgb = _render(shape, matrix, star_xy, star_flux * transparency, star_colour, sky, trail)
        if k == satellite_frame:
            p0 = np.array([rng.uniform(0, width * 0.3), 0.0])
            p1 = np.array([rng.uniform(width * 0.7, width), height - 1.0])
            rgb += _satellite(shape, p0, p1, 1500.0)[None]
            session.satellite_line = (p0, p1)
        cfa = _mosaic(rgb)
        cfa += rng.normal(0.0, 1.0, cfa.shape) * np.sqrt(READ_NOISE_ADU ** 2 + ADU_PER_ELECTRON * cfa)
        cfa[hot[:, 1], hot[:, 0]] += hot_values
        raw = np.clip(np.round(cfa), 0, 65535).astype(np.uint16)

        date_obs = start + timedelta(seconds=k * (exptime + 1.3))
        header = fits.Header()
        header["CREATOR"] = ("ZWO Seestar S50", "Capture software")
        header["EXPTIME"] = (exptime, "Exposure time in seconds")
        header["EXPOSURE"] = (exptime, "Exposure time in seconds")
        header["RA"] = (192.995835, "Object Right Ascension in degrees")
        header["DEC"] = (40.978611, "Object Declination in degrees")
        header["SITELONG"] = (-0.620833, "longitude of the imaging site in degrees")
        header["SITELAT"] = (44.7417, "latitude of the imaging site in degrees")
        header["DATE-OBS"] = (date_obs.isoformat(timespec="microseconds"), "Image created time")
        header["FILTER"] = ("IRCUT", "Filter used when taking image")
        header["INSTRUME"] = ("Seestar S50", "Camera model")
        header["BAYERPAT"] = (PATTERN, "Bayer pattern")
        header["TELESCOP"] = (telescope, "Telescope name")
        header["OBJECT"] = (object_name, "name or catalog number of object being imaged")
        path = directory / f"frame_{k:03d}.fits"
        fits.PrimaryHDU(raw, header=header).writeto(path, overwrite=True)
        session.frames.append(SyntheticFrame(path, matrix, transparency, sky, exptime, date_obs,
                                             cloudy=k == cloudy_frame, trailed=k == trailed_frame,
                                             satellite=k == satellite_frame))
    return session
