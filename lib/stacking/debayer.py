"""Bayer mosaic → colour, and a luminance straight from the mosaic for star work.

Patterns are named in array order: the first two letters are row 0, columns 0 and 1, of the array as
astropy returns it (the first row stored in the file). Seestar frames say GRBG and their two green
sites do sit on the (0,0)/(1,1) diagonal in that order, which the test suite checks on a real frame.
"""
from __future__ import annotations

import cv2
import numpy as np

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

# OpenCV names a Bayer conversion after the colours at row 1, columns 1 and 2 of the mosaic, not after
# the top-left 2x2 block: an RGGB sensor is its "BayerBG". Edge-aware (EA) demosaicing keeps 16 bits
# (VNG is 8-bit only in OpenCV) and is sharper than bilinear.
_CV2_EA_TO_RGB = {
    "RGGB": cv2.COLOR_BayerBG2RGB_EA,
    "BGGR": cv2.COLOR_BayerRG2RGB_EA,
    "GRBG": cv2.COLOR_BayerGB2RGB_EA,
    "GBRG": cv2.COLOR_BayerGR2RGB_EA,
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
    """Demosaic a raw frame.

    cfa: (H, W) uint16 mosaic in ADU; pattern: one of PATTERNS in array order.
    Returns (H, W, 3) uint16, channels R, G, B, same ADU scale.
    """
    if cfa.dtype != np.uint16:
        raise ValueError(f"expected a uint16 mosaic, got {cfa.dtype}")
    return cv2.cvtColor(cfa, _CV2_EA_TO_RGB[pattern])


def cfa_luminance(cfa: np.ndarray) -> np.ndarray:
    """Luminance of a raw mosaic without demosaicing.

    cfa: (H, W) mosaic, any numeric dtype, ADU. Returns (H, W) float32 ADU equal to
    0.25 R + 0.5 G + 0.25 B at every pixel (whatever the pattern), slightly smoothed by the 3x3 kernel.
    """
    # reflect-101 mirrors about the edge pixel, so a neighbour outside the frame keeps the colour
    # a neighbour inside would have had
    return cv2.sepFilter2D(cfa, cv2.CV_32F, _LUMA_1D, _LUMA_1D, borderType=cv2.BORDER_REFLECT_101)
