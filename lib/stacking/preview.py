"""Preview: a linear stack turned into an 8-bit picture a person can look at.

Each channel's sky is measured and subtracted, so the background comes out neutral grey whatever the
sky's colour; channels are balanced on the stars (the median star is taken as white); then one
asinh stretch, shared by the three channels so colours survive, lifts the faint end.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .normalize import sky_level_and_noise

BACKGROUND_TARGET = 0.12     # output level of the sky, 0..1: dark grey, noise just visible
BLACK_SIGMAS = 2.5           # black point this many sky sigmas below the sky
WHITE_PERCENTILE = 99.97     # brightest pixels allowed to saturate


def white_balance(image: np.ndarray, star_fluxes: np.ndarray | None) -> np.ndarray:
    """(3,) channel gains that make the median star white.

    image: (3, H, W) float32; star_fluxes: (m, 3) background-subtracted fluxes of stars in the image,
    or None. Without at least 5 stars measured in all channels the gains equalise the sky noise instead.
    """
    if star_fluxes is not None:
        good = np.all(np.isfinite(star_fluxes) & (star_fluxes > 0), axis=1)
        if good.sum() >= 5:
            colour = np.median(star_fluxes[good] / star_fluxes[good, 1:2], axis=0)
            return 1.0 / colour
    noise = np.array([sky_level_and_noise(plane)[1] for plane in image])
    return noise[1] / noise


def asinh_strength(background: float, target: float) -> float:
    """β such that asinh(β·background)/asinh(β) = target (background, target in (0, 1))."""
    low, high = 1e-3, 1e7
    for _ in range(100):  # bisection in log space; the map is monotonic in β
        beta = np.sqrt(low * high)
        if np.arcsinh(beta * background) / np.arcsinh(beta) < target:
            low = beta
        else:
            high = beta
    return float(np.sqrt(low * high))


def stretch(image: np.ndarray, star_fluxes: np.ndarray | None = None) -> np.ndarray:
    """Auto-stretch a linear colour image.

    image: (3, H, W) float32 (any scale); star_fluxes as for `white_balance`.
    Returns (H, W, 3) uint8 RGB, rows in the same order as the input.
    """
    stats = [sky_level_and_noise(plane) for plane in image]
    sky = [level for level, _ in stats]
    gains = white_balance(image, star_fluxes)
    noise = float(np.median([n * g for (_, n), g in zip(stats, gains)]))
    black = -BLACK_SIGMAS * noise
    sample = sum((image[c, ::2, ::2] - sky[c]) * gains[c] for c in range(3)) / 3
    white = float(np.nanpercentile(sample, WHITE_PERCENTILE))
    span = max(white - black, 10 * noise, 1e-12)
    beta = asinh_strength(min(max(-black / span, 1e-6), 0.5), BACKGROUND_TARGET)
    rgb = np.empty((*image.shape[1:], 3), np.uint8)
    for c in range(3):  # a plane at a time: the float temporaries stay the size of one plane
        plane = (image[c] - np.float32(sky[c])) * np.float32(gains[c] / span)
        plane -= np.float32(black / span)
        np.clip(plane, 0.0, 1.0, out=plane)
        plane *= np.float32(beta)
        np.arcsinh(plane, out=plane)
        plane *= np.float32(255 / np.arcsinh(beta))
        plane += 0.5
        rgb[..., c] = plane
    return rgb


def write_png(rgb: np.ndarray, path: Path) -> None:
    """Save an (H, W, 3) uint8 image as a PNG file (see encode_png)."""
    Path(path).write_bytes(encode_png(rgb))


def encode_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes, first array row at the bottom (the FITS convention, so the
    PNG looks like the FITS in DS9 or Siril)."""
    # OpenCV's encoder with run-length matching: twice as fast as Pillow's fastest level and the file is
    # smaller (a stretched sky is mostly runs of similar bytes). OpenCV orders channels B, G, R.
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[::-1, :, ::-1]),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise ValueError(f"cannot encode a {rgb.shape} {rgb.dtype} image as PNG")
    return encoded.tobytes()
