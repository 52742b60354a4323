"""Bayer mosaic → colour, and a luminance straight from the mosaic for star work.

Patterns are named in array order: the first two letters are row 0, columns 0 and 1, of the array as
astropy returns it (the first row stored in the file). Seestar frames say GRBG and their two green
sites do sit on the (0,0)/(1,1) diagonal in that order, which the test suite checks on a real frame.
"""
from __future__ import annotations

import cv2
import numpy as np

from .normalize import sky_level_and_noise

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

# Malvar, He & Cutler (2004), "High-quality linear interpolation for demosaicing of Bayer-patterned
# color images": bilinear interpolation corrected by the Laplacian of the colour sampled at the site.
# Stars are nearly grey, so that correction restores most of the resolution bilinear interpolation
# loses. It also adds the Laplacian's noise to the sky, so it is applied only where it stands out of
# that noise (see _shrink): stars keep nearly all of the correction, the sky little of it (~15 % more
# sky noise than bilinear, a fraction of what the full correction adds). The correction kernels
# (MHC's kernels less bilinear interpolation) are centred on the site being filled in; weights in
# eighths:
#   green     green at a red or blue site
#   row       red or blue at a green site whose left and right neighbours have that colour
#   column    ... whose upper and lower neighbours have it
#   diagonal  red at a blue site, blue at a red site
_CORRECTION = {
    "green": np.array([[0, 0, -1, 0, 0], [0, 0, 0, 0, 0], [-1, 0, 4, 0, -1], [0, 0, 0, 0, 0], [0, 0, -1, 0, 0]]),
    "row": np.array([[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 0, 5, 0, -1], [0, -1, 0, -1, 0], [0, 0, .5, 0, 0]]),
    "column": np.array([[0, 0, -1, 0, 0], [0, -1, 0, -1, 0], [.5, 0, 5, 0, .5], [0, -1, 0, -1, 0], [0, 0, -1, 0, 0]]),
    "diagonal": np.array([[0, 0, -1.5, 0, 0], [0, 0, 0, 0, 0], [-1.5, 0, 6, 0, -1.5], [0, 0, 0, 0, 0],
                          [0, 0, -1.5, 0, 0]]),
}
_CORRECTION = {name: (kernel / 8).astype(np.float32) for name, kernel in _CORRECTION.items()}
SHRINK_SIGMAS = 1.0        # the part of the correction within ±1σ of its sky noise is dropped
SHRINK_STRIP_ROWS = 64     # rows soft-thresholded at a time: a 0.5 MB buffer instead of a second plane

# OpenCV names a Bayer conversion after the colours at row 1, columns 1 and 2 of the mosaic, not after
# the top-left 2x2 block: an RGGB sensor is its "BayerBG".
_CV2_BILINEAR_TO_RGB = {
    "RGGB": cv2.COLOR_BayerBG2RGB,
    "BGGR": cv2.COLOR_BayerRG2RGB,
    "GRBG": cv2.COLOR_BayerGB2RGB,
    "GBRG": cv2.COLOR_BayerGR2RGB,
}

# 3x3 binomial kernel: on any Bayer mosaic it sums to 1/4 R + 1/2 G + 1/4 B at every pixel, so it
# gives a full-resolution luminance without demosaicing and without shifting star centroids.
_LUMA_1D = np.array([0.25, 0.5, 0.25], np.float32)


def bayer_pattern(bayerpat: str, x_offset: int = 0, y_offset: int = 0) -> str:
    """Normalise a BAYERPAT header value (plus XBAYROFF/YBAYROFF, in pixels) to one of PATTERNS.

    An odd offset means the mosaic starts one column/row later, which swaps the pattern's columns/rows.
    Raises ValueError for anything that is not a 2x2 RGB Bayer pattern.
    """
    pattern = bayerpat.strip().upper()
    if pattern not in PATTERNS:
        raise ValueError(f"unsupported Bayer pattern {bayerpat!r} (expected one of {', '.join(PATTERNS)})")
    if x_offset % 2:
        pattern = pattern[1] + pattern[0] + pattern[3] + pattern[2]
    if y_offset % 2:
        pattern = pattern[2:] + pattern[:2]
    return pattern


def debayer(cfa: np.ndarray, pattern: str) -> np.ndarray:
    """Demosaic a raw frame: bilinear, plus the Malvar-He-Cutler correction where it stands out of the
    noise (see _CORRECTION).

    cfa: (H, W) mosaic in ADU, any numeric type (clipped to 0..65535); pattern: one of PATTERNS in
    array order. Returns (3, H, W) float32 R, G, B in ADU. Next to sharp edges values a little outside
    the sensor's range can occur (the correction overshoots); nothing is clipped.
    """
    mosaic = np.clip(cfa, 0, 65535).astype(np.uint16) if cfa.dtype != np.uint16 else cfa
    bilinear = cv2.cvtColor(mosaic, _CV2_BILINEAR_TO_RGB[pattern])          # (H, W, 3) uint16
    rgb = np.empty((3, *mosaic.shape), np.float32)
    for c in range(3):
        rgb[c] = bilinear[..., c]
    del bilinear
    # where each correction goes: (colour, site) pairs, site = (row, column) in the 2x2 cell
    sites = {(k // 2, k % 2): letter for k, letter in enumerate(pattern)}
    uses: dict[str, list[tuple[int, tuple[int, int]]]] = {name: [] for name in _CORRECTION}
    for site, letter in sites.items():
        for colour in "RGB":
            if letter == colour:
                continue
            if colour == "G":
                kernel = "green"
            elif letter == "G":
                kernel = "row" if sites[(site[0], 1 - site[1])] == colour else "column"
            else:
                kernel = "diagonal"
            uses[kernel].append(("RGB".index(colour), site))
    correction = np.empty_like(rgb[0])
    for kernel, targets in uses.items():  # one kernel at a time: a single extra plane in memory, reused
        cv2.filter2D(mosaic, cv2.CV_32F, _CORRECTION[kernel], dst=correction, borderType=cv2.BORDER_REFLECT_101)
        _shrink(correction)
        for channel, (row, column) in targets:
            rgb[channel, row::2, column::2] += correction[row::2, column::2]
    return rgb


def _shrink(correction: np.ndarray) -> None:
    """Soft threshold, in place: the correction less its part within ±SHRINK_SIGMAS of its robust spread.

    correction: (H, W) float32; the sky dominates it, so its MAD is the sky's noise through the kernel.
    Afterwards it is 0 where it was noise and keeps nearly all of itself on stars.
    """
    limit = SHRINK_SIGMAS * sky_level_and_noise(correction)[1]
    # OpenCV's min/max/subtract: the same arithmetic as numpy's clip, a few times faster; in strips of
    # rows, so that the clipped copy is a small buffer rather than another plane
    clipped = np.empty((SHRINK_STRIP_ROWS, correction.shape[1]), np.float32)
    for start in range(0, len(correction), SHRINK_STRIP_ROWS):
        strip = correction[start:start + SHRINK_STRIP_ROWS]
        part = clipped[:len(strip)]
        cv2.max(strip, -limit, dst=part)
        cv2.min(part, limit, dst=part)
        cv2.subtract(strip, part, dst=strip)


def cfa_luminance(cfa: np.ndarray) -> np.ndarray:
    """Luminance of a raw mosaic without demosaicing.

    cfa: (H, W) mosaic, any numeric dtype, ADU. Returns (H, W) float32 ADU equal to
    0.25 R + 0.5 G + 0.25 B at every pixel (whatever the pattern), slightly smoothed by the 3x3 kernel.
    """
    # reflect-101 mirrors about the edge pixel, so a neighbour outside the frame keeps the colour
    # a neighbour inside would have had
    return cv2.sepFilter2D(cfa, cv2.CV_32F, _LUMA_1D, _LUMA_1D, borderType=cv2.BORDER_REFLECT_101)
