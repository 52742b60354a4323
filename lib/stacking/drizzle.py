"""Bayer drizzle: every raw mosaic pixel dropped onto a finer output grid, no demosaic.

Each raw pixel carries one colour. Its drop, a square pixfrac raw pixels on a side centred on the
pixel, goes through the frame's registration (frame → reference pixels) and onto a grid `factor` times
finer than the reference, and adds to the output pixels it overlaps in proportion to the overlap
(Fruchter & Hook 2002, "square" kernel). Red, green and blue are separate planes: a raw red pixel
feeds only the red plane. Because a Bayer site samples every second pixel (green every second on a
diagonal), a colour plane is drizzled as its own sub-sampled image with pixfrac halved in its pixel
units, which is the same drop in raw pixels. The overlap arithmetic is STScI's `drizzle` C kernel.

Rejection. The frames are first stacked the ordinary way (register.py, combine.py: winsorized clipping
over every frame at every pixel), and that clipped stack is the reference a drop is checked against:
a raw pixel, normalised like its frame (gain, offset), is dropped only if it lies within the clipped
stack's local range (min and max over 3 × 3 reference pixels around where it lands) widened by
k · σ (σ: the robust spread of that frame's pixels about the stack, per colour) and by a share of the
local signal (a frame with better seeing has taller stars than the mean). Why not clip the drops
themselves: after drizzling an output pixel has a handful of fractional drops, too few to estimate a
spread, and a two-pass clip would hold or re-read every frame at the fine scale. The clipped stack has
already seen every frame at every pixel, so a satellite trail, a cosmic ray or a hot pixel (all far
above the local maximum of a stack that rejected them) is caught in one streaming pass.

Holes. With pixfrac < 1 and few frames, a fine pixel may receive no drop of some colour (a red site
covers a quarter of the mosaic). Such pixels take the clipped stack, resampled (cubic) onto the fine
grid, so the image has no zeros; the share of them is reported.

Units. Drizzle computes a weighted mean, so the output stays in ADU/65535 per reference pixel (sky and
stretch unchanged); a star's flux is the sum over its fine pixels divided by factor².

Memory. The output is made in bands of fine rows, one band per task: a worker holds its band's sums
and weights and reads from every frame only the raw rows whose drops can reach the band, so memory
does not grow with the number of frames and is bounded by the band size. Stack and envelope are
DiskArrays (cube.py) the workers map.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from astropy.io import fits
from drizzle.resample import Drizzle

ADU_SCALE = np.float32(1 / 65535)
SEEING_SLACK = 0.5        # a drop may exceed the stack's local range by this share of the local signal
ENVELOPE_SIZE = 3         # reference pixels across the window whose min and max bound a drop
PAD_FACTOR = 2            # fine rows and columns of padding around a band's sums, per unit of factor
FOOTPRINT_MARGIN_PX = 4   # raw rows read beyond a band's exact footprint (drop size, rounding)
BAND_OVERHEAD = 24 * 2**20   # per-worker temporaries besides the band (one raw frame and its pixmaps)
MIN_BAND_BYTES = 32 * 2**20   # fewer, larger bands: each band reads every frame's rows again
COLOURS = "RGB"


@dataclass(frozen=True)
class DrizzleFrame:
    """One registered frame as drizzle needs it: matrix (2, 3) frame px → reference px; gain, offset
    (3,) take raw ADU·ADU_SCALE to the reference's ADU/65535; weight (3,) its combine weight."""

    path: str
    matrix: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    weight: np.ndarray


@dataclass
class BandCounts:
    """What one band's drizzle did: raw pixels that landed in it and were dropped or rejected, and
    fine pixels per colour that no drop reached (filled from the clipped stack)."""

    dropped: int
    rejected: int
    holes: np.ndarray    # (3,)


def cfa_sites(pattern: str) -> list[tuple[int, int, int]]:
    """(row, column, channel) of the four sites of a 2 × 2 Bayer cell, pattern in array order."""
    return [(k // 2, k % 2, COLOURS.index(letter)) for k, letter in enumerate(pattern)]


def fine_coordinates(ref: np.ndarray, factor: int) -> np.ndarray:
    """Reference pixel coordinates → fine-grid coordinates (pixel centres at integers in both): fine
    pixel j spans reference [(j - 0.5 + 0.5) / f - 0.5, ...], i.e. j = f · (x + 0.5) - 0.5."""
    return factor * (ref + 0.5) - 0.5


def envelope(stack: np.ndarray) -> np.ndarray:
    """(2, 3, H, W) float32: local minimum and maximum of the (3, H, W) clipped stack over
    ENVELOPE_SIZE² reference pixels, the range a registered drop is expected in."""
    kernel = np.ones((ENVELOPE_SIZE, ENVELOPE_SIZE), np.uint8)
    out = np.empty((2, *stack.shape), np.float32)
    for c in range(stack.shape[0]):
        out[0, c] = cv2.erode(stack[c], kernel, borderType=cv2.BORDER_REPLICATE)
        out[1, c] = cv2.dilate(stack[c], kernel, borderType=cv2.BORDER_REPLICATE)
    return out


def band_rows(fine_shape: tuple[int, int], workers: int, mem_limit: int) -> list[tuple[int, int]]:
    """Fine-row ranges: a band costs 3 colours × (sum + weight) × rows × W' float32, all workers'
    bands together within mem_limit (at least MIN_BAND_BYTES each); at least 2 bands per worker."""
    height, width = fine_shape
    budget = max(mem_limit // workers - BAND_OVERHEAD, MIN_BAND_BYTES)
    rows = max(8, budget // (3 * 2 * width * 4))
    rows = min(rows, max(8, -(-height // (2 * workers))))
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def _footprint_rows(matrix: np.ndarray, fine_rows: tuple[int, int], factor: int, shape: tuple[int, int]
                    ) -> tuple[int, int]:
    """Raw rows [y0, y1) of a frame whose drops can land in the fine rows (pixel-centre arithmetic)."""
    height, width = shape
    ref_top = (fine_rows[0] + 0.5) / factor - 0.5
    ref_bottom = (fine_rows[1] - 0.5 + 0.5) / factor - 0.5
    corners = np.array([[-0.5, ref_top], [width - 0.5, ref_top], [-0.5, ref_bottom], [width - 0.5, ref_bottom]])
    inverse = cv2.invertAffineTransform(matrix)
    frame_y = corners @ inverse[1, :2] + inverse[1, 2]
    y0 = int(np.floor(frame_y.min())) - FOOTPRINT_MARGIN_PX
    y1 = int(np.ceil(frame_y.max())) + FOOTPRINT_MARGIN_PX + 1
    return max(y0, 0), min(y1, height)


def drizzle_band(task) -> BandCounts:
    """Drizzle every frame into fine rows [rows[0], rows[1]) and write them into output.

    task: (rows, frames: list[DrizzleFrame], pattern, factor, pixfrac, sigma_low, sigma_high,
    stack: DiskArray (3, H, W) clipped stack, bounds: DiskArray (2, 3, H, W) from envelope(),
    sky: (3,) the stack's sky level, output: DiskArray (3, f·H, f·W) float32).
    """
    rows, frames, pattern, factor, pixfrac, sigma_low, sigma_high, stack, bounds, sky, output = task
    _, height, width = stack.shape
    fine_width = output.shape[2]
    # the kernel drops a pixel whose centre lands off its output array, even if its drop overlaps the
    # array's edge: the sums are padded all round so that every drop reaching the band lands inside
    pad = PAD_FACTOR * factor
    sums = np.zeros((3, rows[1] - rows[0] + 2 * pad, fine_width + 2 * pad), np.float32)
    weights = np.zeros_like(sums)
    # one accumulator per colour, fed by every frame: the kernel keeps sums as a running weighted mean
    kernels = [Drizzle(kernel="square", out_img=sums[c], out_wht=weights[c], disable_ctx=True, fillval=0.0)
               for c in range(3)]
    reference, limits = stack.map(), bounds.map()
    dropped = rejected = 0
    for frame in frames:
        y0, y1 = _footprint_rows(frame.matrix, rows, factor, (height, width))
        if y1 - y0 < 2:
            continue
        raw = _raw_rows(frame.path, y0, y1)
        for dy, dx, c in cfa_sites(pattern):
            first = y0 + (dy - y0) % 2
            values = raw[first - y0::2, dx::2].astype(np.float32)
            if values.size == 0:
                continue
            ys, xs = np.mgrid[first:y1:2, dx:width:2].astype(np.float64)
            ref_x = frame.matrix[0, 0] * xs + frame.matrix[0, 1] * ys + frame.matrix[0, 2]
            ref_y = frame.matrix[1, 0] * xs + frame.matrix[1, 1] * ys + frame.matrix[1, 2]
            values = values * np.float32(frame.gain[c] * ADU_SCALE) + np.float32(frame.offset[c])
            fine_y = fine_coordinates(ref_y, factor)
            # a turned frame's footprint box is wider than the band: only pixels landing near it are checked
            near = (fine_y >= rows[0] - pad) & (fine_y < rows[1] + pad)
            if not near.any():
                continue
            candidates = values[near]
            near_x, near_y = np.rint(ref_x[near]).astype(np.intp), np.rint(ref_y[near]).astype(np.intp)
            inside = (near_x >= 0) & (near_x < width) & (near_y >= 0) & (near_y < height)
            if not inside.any():
                continue
            near_x, near_y = np.clip(near_x, 0, width - 1), np.clip(near_y, 0, height - 1)
            residual = (candidates - reference[c, near_y, near_x])[inside]
            spread = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
            low, high = limits[0, c, near_y, near_x], limits[1, c, near_y, near_x]
            slack = SEEING_SLACK * np.maximum(high - sky[c], 0.0)
            # a pixel landing just off the reference still overlaps its edge pixels: checked against the
            # nearest edge pixel, kept
            kept = (candidates <= high + sigma_high * spread + slack) \
                & (candidates >= low - sigma_low * spread - slack)
            counted = inside & (fine_y[near] >= rows[0] - 0.5) & (fine_y[near] < rows[1] - 0.5)  # one band each
            dropped += int(np.count_nonzero(kept & counted))
            rejected += int(np.count_nonzero(~kept & counted))
            weight = np.zeros(values.shape, np.float32)
            weight[near] = kept * np.float32(frame.weight[c])
            pixmap = np.dstack([fine_coordinates(ref_x, factor) + pad, fine_y - rows[0] + pad])
            # pixfrac is in the sub-sampled plane's pixels, two raw pixels apart: half gives the raw drop
            kernels[c].add_image(np.ascontiguousarray(values), exptime=1.0, pixmap=pixmap,
                                 weight_map=weight,
                                 pixfrac=pixfrac / 2, in_units="cps", iscale=1.0, pixel_scale_ratio=1.0)
        del raw
    holes = np.zeros(3, np.int64)
    resampled = _resampled_band(reference, rows, factor, fine_width)
    band = sums[:, pad:-pad, pad:-pad]
    for c in range(3):
        empty = weights[c, pad:-pad, pad:-pad] <= 0
        holes[c] = int(np.count_nonzero(empty))
        band[c][empty] = resampled[c][empty]
    image = output.map(writable=True)
    image[:, rows[0]:rows[1]] = band
    return BandCounts(dropped, rejected, holes)


def _raw_rows(path: str, y0: int, y1: int) -> np.ndarray:
    """Rows [y0, y1) of a raw frame in ADU (uint16 → float32), reading only those rows. The frame was
    read and checked whole when it was registered (fitsio.read_frame)."""
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        return np.asarray(hdul[0].section[y0:y1, :], dtype=np.float32)


def _resampled_band(reference: np.ndarray, rows: tuple[int, int], factor: int, fine_width: int) -> np.ndarray:
    """(3, rows, W') the clipped stack resampled (cubic) onto fine rows [rows[0], rows[1])."""
    height = reference.shape[1]
    top = max(rows[0] // factor - 2, 0)
    bottom = min(-(-rows[1] // factor) + 2, height)
    out = np.empty((3, rows[1] - rows[0], fine_width), np.float32)
    for c in range(3):
        block = np.ascontiguousarray(reference[c, top:bottom], np.float32)
        fine = cv2.resize(block, (fine_width, (bottom - top) * factor), interpolation=cv2.INTER_CUBIC)
        out[c] = fine[rows[0] - top * factor:rows[1] - top * factor]
    return out
