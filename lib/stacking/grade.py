"""Frame grading: which frames of a session are outliers, and which one is the best.

Every limit is relative to the session itself: median ± k · 1.4826 · MAD of the metric over the frames
being graded, never a fixed number, because sky brightness, seeing and star density change from night
to night and target to target. A spread floor (a fraction of the median) keeps near-identical frames
from being rejected over measurement noise when the MAD is tiny.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAD_TO_SIGMA = 1.4826

# Smallest spread assumed for each metric, as a fraction of its median. Star counts fluctuate by a few
# detections near the threshold; FWHM and elongation measurements by several percent; the sky level by
# little, but a change well below these floors is not worth losing a frame over.
SPREAD_FLOOR = {"stars": 0.10, "fwhm": 0.08, "elongation": 0.08, "background": 0.05}


@dataclass(frozen=True)
class FrameMetrics:
    """One frame's measurements (luminance, ADU): detected stars, median FWHM in px,
    median elongation a/b (1 = round), sky background level, sky RMS noise."""

    stars: int
    fwhm_px: float
    elongation: float
    background: float
    noise: float


def robust_limits(values: np.ndarray, k: float, floor_fraction: float) -> tuple[float, float, float]:
    """Median and the two limits median ∓ k·σ, σ = max(1.4826·MAD, floor_fraction·|median|).

    values: (n,) finite floats. Returns (median, low limit, high limit).
    """
    median = float(np.median(values))
    sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(values - median))), floor_fraction * abs(median))
    return median, median - k * sigma, median + k * sigma


def grade_frames(metrics: list[FrameMetrics], k: float = 3.0) -> list[str | None]:
    """Grade a session's frames against each other.

    Returns, in input order, None for a frame that passes, or a one-line reason for one that does not:
    cloudy (sky much brighter, or far fewer stars than the session's typical frame), blurred (FWHM
    too large) or trailed (stars elongated). With fewer than 3 frames there is no "typical" frame to
    compare against, so nothing is rejected here.
    """
    if len(metrics) < 3:
        return [None] * len(metrics)
    stars = np.array([m.stars for m in metrics], float)
    fwhm = np.array([m.fwhm_px for m in metrics], float)
    elong = np.array([m.elongation for m in metrics], float)
    background = np.array([m.background for m in metrics], float)

    med_stars, low_stars, _ = robust_limits(stars, k, SPREAD_FLOOR["stars"])
    med_bg, _, high_bg = robust_limits(background, k, SPREAD_FLOOR["background"])
    measured = np.isfinite(fwhm) & np.isfinite(elong)
    if measured.sum() >= 3:
        med_fwhm, _, high_fwhm = robust_limits(fwhm[measured], k, SPREAD_FLOOR["fwhm"])
        med_elong, _, high_elong = robust_limits(elong[measured], k, SPREAD_FLOOR["elongation"])
    else:
        med_fwhm = high_fwhm = med_elong = high_elong = float("inf")

    reasons: list[str | None] = []
    for m in metrics:
        if m.background > high_bg:
            reasons.append(f"cloudy or bright sky: background {m.background:.0f} ADU, session median "
                           f"{med_bg:.0f} (limit {high_bg:.0f})")
        elif m.stars < low_stars:
            reasons.append(f"cloudy: {m.stars} stars detected, session median {med_stars:.0f} "
                           f"(limit {low_stars:.0f})")
        elif np.isfinite(m.elongation) and m.elongation > high_elong:
            reasons.append(f"trailed: star elongation {m.elongation:.2f}, session median {med_elong:.2f} "
                           f"(limit {high_elong:.2f})")
        elif np.isfinite(m.fwhm_px) and m.fwhm_px > high_fwhm:
            reasons.append(f"blurred: FWHM {m.fwhm_px:.2f} px, session median {med_fwhm:.2f} "
                           f"(limit {high_fwhm:.2f})")
        else:
            reasons.append(None)
    return reasons


def pick_reference(metrics: list[FrameMetrics], candidates: list[int]) -> int:
    """Index (into `metrics`) of the best frame among `candidates`, the frames that passed grading.

    Best = most stars per unit of FWHM² · noise: transparency and depth over seeing, focus and sky
    brightness. Frames whose FWHM could not be measured rank below all measured ones, by star count.
    """
    def key(i: int) -> tuple[bool, float]:
        m = metrics[i]
        measured = bool(np.isfinite(m.fwhm_px) and m.fwhm_px > 0 and m.noise > 0)
        return measured, (m.stars / (m.fwhm_px ** 2 * m.noise) if measured else float(m.stars))

    return max(candidates, key=key)
