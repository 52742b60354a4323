"""Measures of a rendered preview against the goals a postable picture must meet.

Used by bench/preview_quality.py (real frames) and tests/test_preview.py (synthetic fields). Every
measure is a pure function of arrays; `measure` gathers them and `GOALS` says what each must reach.

    clipped_fraction   pixels with any channel at 255, fraction of all pixels            goal ≤ 1e-4
    sky_levels         per-channel median of the sky (pixels below the luminance median), 0..255
    sky_cast           max − min of sky_levels                                           goal ≤ 1 level
    sky_level          mean of sky_levels                                                goal 30..64
    chroma_ratio       robust sigma of the sky's colour difference (channel − luminance, worst channel)
                       over that of the luminance, both high-passed                      goal ≤ 3
    edge_ratio         luminance noise in the outer 6 % border over the middle's         goal ≤ 1.1
    star_colour        how the rendered stars' colours (log B/R) follow the linear ones: Spearman
                       correlation                                                       goal ≥ 0.7
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.stats import spearmanr

from .normalize import MAD_TO_SIGMA

GOALS = {
    "clipped_fraction": ("<=", 1e-4),
    "sky_cast": ("<=", 1.0),
    "sky_level_low": (">=", 30.0),
    "sky_level_high": ("<=", 64.0),
    "chroma_ratio": ("<=", 3.0),
    "edge_ratio": ("<=", 1.1),
    "star_colour": (">=", 0.7),
}


def _sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return MAD_TO_SIGMA * float(np.median(np.abs(values - np.median(values)))) if values.size else float("nan")


def clipped_fraction(rgb: np.ndarray) -> float:
    """Fraction of the (h, w, 3) uint8 image's pixels with any channel at 255."""
    return float(np.mean(rgb.max(axis=2) == 255))


def sky_mask(rgb: np.ndarray) -> np.ndarray:
    """(h, w) bool: pixels whose luminance is below the image's median (the sky, stars and galaxy excluded)."""
    lum = rgb.astype(np.float32).mean(axis=2)
    return lum <= np.median(lum)


def sky_levels(rgb: np.ndarray) -> np.ndarray:
    """(3,) median level of each channel over the whole image (0..255): the sky, which most pixels are."""
    return np.array([float(np.median(rgb[::2, ::2, c])) for c in range(3)])


def _high_pass(plane: np.ndarray) -> np.ndarray:
    return plane - cv2.blur(plane, (15, 15))


def chroma_ratio(rgb: np.ndarray) -> float:
    """Sky colour noise over sky luminance noise (see the module docstring)."""
    image = rgb.astype(np.float32)
    lum = image.mean(axis=2)
    sky = sky_mask(rgb)
    lum_noise = _sigma(_high_pass(lum)[sky])
    chroma = max(_sigma(_high_pass(image[..., c] - lum)[sky]) for c in range(3))
    return chroma / max(lum_noise, 1e-6)


def edge_ratio(rgb: np.ndarray, border: float = 0.06) -> float:
    """Luminance noise of the sky in the outer `border` fraction over that in the middle half."""
    lum = _high_pass(rgb.astype(np.float32).mean(axis=2))
    sky = sky_mask(rgb)
    h, w = lum.shape
    by, bx = max(2, int(h * border)), max(2, int(w * border))
    edge = np.zeros_like(sky)
    edge[:by], edge[-by:], edge[:, :bx], edge[:, -bx:] = True, True, True, True
    middle = np.zeros_like(sky)
    middle[h // 4:3 * h // 4, w // 4:3 * w // 4] = True
    return _sigma(lum[edge & sky]) / max(_sigma(lum[middle & sky]), 1e-6)


def star_colour(rgb: np.ndarray, linear: np.ndarray, x: np.ndarray, y: np.ndarray,
                radius: float = 3.0) -> float:
    """Spearman correlation of the stars' log(B/R) in the rendered image with that in the linear one.

    rgb: (h, w, 3) uint8 rendered; linear: (3, h, w) float32 calibrated (same crop, sky 0, balanced);
    x, y: (n,) star positions in that crop, px. Aperture sums minus the local annulus median.
    """
    def colours(planes) -> np.ndarray:
        out = []
        yy, xx = np.mgrid[-8:9, -8:9]
        r = np.hypot(xx, yy)
        inner, ring = r <= radius, (r >= 5) & (r <= 8)
        for cx, cy in zip(np.round(x).astype(int), np.round(y).astype(int)):
            if not (8 <= cy < planes[0].shape[0] - 8 and 8 <= cx < planes[0].shape[1] - 8):
                out.append(np.nan)
                continue
            sums = []
            for plane in (planes[0], planes[2]):
                box = plane[cy - 8:cy + 9, cx - 8:cx + 9].astype(np.float64)
                sums.append(box[inner].sum() - inner.sum() * np.median(box[ring]))
            out.append(np.log(sums[1] / sums[0]) if min(sums) > 0 else np.nan)
        return np.array(out)

    shown = colours([rgb[..., c] for c in range(3)])
    truth = colours(list(linear))
    ok = np.isfinite(shown) & np.isfinite(truth)
    if ok.sum() < 5:
        return float("nan")
    return float(spearmanr(truth[ok], shown[ok]).statistic)


def measure(rgb: np.ndarray, linear: np.ndarray | None = None, stars_xy: np.ndarray | None = None) -> dict:
    """All measures of a rendered (h, w, 3) uint8 image; star_colour only with linear and stars_xy (n, 2)."""
    levels = sky_levels(rgb)
    result = {"clipped_fraction": clipped_fraction(rgb), "sky_levels": levels,
              "sky_cast": float(levels.max() - levels.min()), "sky_level": float(levels.mean()),
              "chroma_ratio": chroma_ratio(rgb), "edge_ratio": edge_ratio(rgb)}
    result["sky_level_low"] = result["sky_level_high"] = result["sky_level"]
    if linear is not None and stars_xy is not None:
        result["star_colour"] = star_colour(rgb, linear, stars_xy[:, 0], stars_xy[:, 1])
    return result


def failures(result: dict) -> list[str]:
    """The goals a `measure` result misses, as readable lines (empty: all met)."""
    missed = []
    for name, (op, goal) in GOALS.items():
        if name not in result:
            continue
        value = result[name]
        ok = value <= goal if op == "<=" else value >= goal
        if not ok:
            missed.append(f"{name} = {value:.4g}, goal {op} {goal}")
    return missed
