"""Preview: a linear stack turned into a picture a person would post.

    plan = plan_rendering(image, cover, star_fluxes)   # every factor, small numbers (FITS header cards)
    rgb = render(image, plan)                           # (h, w, 3) uint8, the PNG preview
    linear = calibrate(image, plan)                     # (3, h, w) float32, the stretch control's input

The steps, all on the linear data and all recorded in `Rendering` (the FITS itself stays linear):

    crop        to the largest rectangle that at least COVER_FRACTION of the frames cover (the drifted
                edges, seen by few frames, are noisier than the middle)
    background  per channel a 2-D quadratic fitted to star- and galaxy-free cells of the sky (cells
                whose level stands out from the fit are dropped and the fit repeated) and subtracted:
                the gradient goes; its constant term is then set so that every channel's median (the
                image is mostly sky) is 0, i.e. the sky is neutral
    balance     channel gains that make the median star of the field white
    chroma      the colour difference from the luminance is blurred where there is no signal (the sky)
                and kept where there is (stars, the galaxy): the sky's colour speckle goes, star colours stay
    stretch     black point BLACK_SIGMAS sky sigmas below the sky, white point above the brightest
                pixels, then asinh of each pixel's brightest channel, its factor applied to all three
                channels alike (hue kept), its strength chosen so that the sky lands at SKY_TARGET grey

The browser's stretch control (static/stack.js) repeats `stretch_rgb` on the calibrated data with the
owner's black point and strength; `stretch_rgb` is the reference for that code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .normalize import MAD_TO_SIGMA

COVER_FRACTION = 0.7         # the preview shows pixels at least this fraction of the frames cover
SKY_TARGET = 0.2             # output level of the sky, 0..1 (51/255): dark grey, faint structure visible
BLACK_SIGMAS = 2.8           # black point this many sky sigmas below the sky
WHITE_PERCENTILE = 99.999    # of the luminance; the white point sits WHITE_HEADROOM above it
WHITE_HEADROOM = 1.15
GRID_CELLS = 24              # background cells along the long side
CHROMA_SIGMA = 6.0           # px, blur of the colour difference in the sky
SIGNAL_SIGMAS = (2.0, 6.0)   # luminance (in sky sigmas) where chroma goes from blurred to kept
POLY_TERMS = 6               # 1, u, v, u², uv, v²


@dataclass(frozen=True)
class Rendering:
    """Every factor of a preview; written to the stack's FITS header (see `header_cards`).

    crop: (y0, y1, x0, x1) array rows/columns kept, end exclusive. background: (3, 6) quadratic
    coefficients per channel, image units (ADU/65535), in u, v ∈ [-1, 1] across the crop (see
    `background_model`). gains: (3,) white balance, multiplying the background-subtracted channels.
    noise: sky sigma of the calibrated luminance. black, white: calibrated units. strength: asinh β.
    """

    crop: tuple[int, int, int, int]
    background: np.ndarray
    gains: np.ndarray
    noise: float
    black: float
    white: float
    strength: float
    chroma_sigma: float = CHROMA_SIGMA
    stars_balanced: int = 0
    cells_used: int = 0

    def header_cards(self) -> list[tuple[str, object, str]]:
        """(keyword, value, comment) cards that describe this rendering of the linear FITS."""
        y0, y1, x0, x1 = self.crop
        cards = [("PVCROPY0", y0, "preview crop: first row (0-based)"),
                 ("PVCROPY1", y1, "preview crop: end row, exclusive"),
                 ("PVCROPX0", x0, "preview crop: first column (0-based)"),
                 ("PVCROPX1", x1, "preview crop: end column, exclusive")]
        for c, band in enumerate("RGB"):
            for k in range(POLY_TERMS):
                cards.append((f"PVBK{band}{k}", float(self.background[c, k]),
                              f"preview sky {band}: coefficient {k} of 1,u,v,u2,uv,v2"))
        for c, band in enumerate("RGB"):
            cards.append((f"PVGAIN{band}", float(self.gains[c]), f"preview white balance gain, {band}"))
        cards += [("PVNOISE", float(self.noise), "preview sky sigma after calibration"),
                  ("PVBLACK", float(self.black), "preview black point, calibrated units"),
                  ("PVWHITE", float(self.white), "preview white point, calibrated units"),
                  ("PVSTRETC", float(self.strength), "preview asinh strength (beta)"),
                  ("PVCHROMA", float(self.chroma_sigma), "[px] preview sky chroma blur sigma"),
                  ("PVSTARS", int(self.stars_balanced), "stars the white balance used (0: sky noise)")]
        return cards

    @classmethod
    def from_header(cls, header) -> "Rendering | None":
        """The rendering recorded by `header_cards`, or None when the header has none."""
        if "PVSTRETC" not in header:
            return None
        crop = tuple(int(header[k]) for k in ("PVCROPY0", "PVCROPY1", "PVCROPX0", "PVCROPX1"))
        background = np.array([[float(header[f"PVBK{b}{k}"]) for k in range(POLY_TERMS)] for b in "RGB"])
        gains = np.array([float(header[f"PVGAIN{b}"]) for b in "RGB"])
        return cls(crop, background, gains, float(header["PVNOISE"]), float(header["PVBLACK"]),
                   float(header["PVWHITE"]), float(header["PVSTRETC"]), float(header["PVCHROMA"]),
                   int(header.get("PVSTARS", 0)))


# ------------------------------------------------------------------------------------------ steps

def covered_crop(cover: np.ndarray | None, shape: tuple[int, int], fraction: float = COVER_FRACTION,
                 step: int = 8) -> tuple[int, int, int, int]:
    """The largest axis-aligned rectangle whose pixels at least `fraction` of the frames cover.

    cover: (H, W) frames covering each pixel, or None (nothing cropped); shape: (H, W).
    Returns (y0, y1, x0, x1), end exclusive. Worked on blocks of step×step pixels (a block counts
    only if all its pixels are covered), so the answer is exact to within `step` px and cheap.
    """
    height, width = shape
    if cover is None or cover.size == 0 or cover.max() <= 0:
        return 0, height, 0, width
    good = cover >= max(1, fraction * float(cover.max()))
    bh, bw = height // step, width // step
    if bh == 0 or bw == 0:
        return 0, height, 0, width
    blocks = good[:bh * step, :bw * step].reshape(bh, step, bw, step).all(axis=(1, 3))
    best, best_box = 0, (0, height, 0, width)
    heights = np.zeros(bw, np.int32)
    for row in range(bh):  # largest rectangle in a histogram, row by row (the stack method)
        heights = np.where(blocks[row], heights + 1, 0)
        stack: list[int] = []
        for col in range(bw + 1):
            h = heights[col] if col < bw else 0
            while stack and heights[stack[-1]] >= h:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = int(heights[top]) * (col - left)
                if area > best:
                    best = area
                    best_box = ((row + 1 - heights[top]) * step, (row + 1) * step, left * step, col * step)
            stack.append(col)
    if best == 0:
        return 0, height, 0, width
    y0, y1, x0, x1 = best_box
    # blocks stop at a multiple of step: extend to the image edge when the rectangle reaches the last block
    y1 = height if y1 == bh * step and good[y1:, x0:x1].all() else y1
    x1 = width if x1 == bw * step and good[y0:y1, x1:].all() else x1
    return int(y0), int(y1), int(x0), int(x1)


def _poly_terms(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)


def fit_background(image: np.ndarray, cells: int = GRID_CELLS) -> tuple[np.ndarray, int]:
    """A smooth sky model per channel: a quadratic in u, v fitted to the medians of sky-only cells.

    image: (3, h, w) float32, already cropped. The image is cut into about `cells` cells along its
    long side; a cell's level is its median (stars barely move it); cells whose luminance residual
    stands more than 2.5 robust sigmas above the fit (a galaxy, a bright star's halo) or 4 below are
    dropped and the fit repeated. Returns ((3, 6) coefficients, cells used).
    """
    _, height, width = image.shape
    size = max(8, max(height, width) // cells) // 2 * 2   # even: the cells are sampled every other pixel
    ny, nx = max(1, height // size), max(1, width // size)
    levels = np.empty((3, ny, nx))
    for c in range(3):
        view = image[c, :ny * size:2, :nx * size:2]  # every other pixel: plenty for a median
        blocks = view.reshape(ny, size // 2, nx, size // 2).transpose(0, 2, 1, 3).reshape(ny, nx, -1)
        levels[c] = np.median(blocks, axis=2)   # the crop has no NaN (nan_to_num)
    v, u = np.meshgrid((np.arange(ny) + 0.5) * size / height * 2 - 1,
                       (np.arange(nx) + 0.5) * size / width * 2 - 1, indexing="ij")
    terms = _poly_terms(u.ravel(), v.ravel())
    values = levels.reshape(3, -1).T                      # (cells, 3)
    keep = np.all(np.isfinite(values), axis=1)
    coefficients = np.zeros((3, POLY_TERMS))
    for _ in range(5):
        if keep.sum() < POLY_TERMS:
            break
        coefficients = np.linalg.lstsq(terms[keep], values[keep], rcond=None)[0].T
        residual = (values - terms @ coefficients.T).mean(axis=1)
        spread = MAD_TO_SIGMA * np.median(np.abs(residual[keep] - np.median(residual[keep]))) + 1e-12
        new_keep = np.all(np.isfinite(values), axis=1) & (residual < 2.5 * spread) & (residual > -4 * spread)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if keep.sum() < POLY_TERMS:  # too few cells: a flat sky at the median
        coefficients = np.zeros((3, POLY_TERMS))
        coefficients[:, 0] = np.nanmedian(values, axis=0)
    return coefficients, int(keep.sum())


def background_model(coefficients: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(3, h, w) float32 sky model of `fit_background`'s coefficients over a crop of shape (h, w)."""
    height, width = shape
    v = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
    u = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    out = np.empty((3, height, width), np.float32)
    for c in range(3):
        a = coefficients[c].astype(np.float32)
        # separable: a0 + a1 u + a3 u² + v (a2 + a4 u) + a5 v²
        out[c] = (a[0] + a[1] * u + a[3] * u * u)[None, :] + v[:, None] * (a[2] + a[4] * u)[None, :] \
            + (a[5] * v * v)[:, None]
    return out


def white_balance(image: np.ndarray, star_fluxes: np.ndarray | None) -> tuple[np.ndarray, int]:
    """(3,) channel gains that make the median star white, and the number of stars used.

    image: (3, H, W) float32 with its sky removed; star_fluxes: (m, 3) background-subtracted fluxes of
    stars in the image, or None. Without at least 5 stars measured in all channels the gains equalise
    the sky noise instead (and 0 stars are reported).
    """
    if star_fluxes is not None and len(star_fluxes):
        good = np.all(np.isfinite(star_fluxes) & (star_fluxes > 0), axis=1)
        if good.sum() >= 5:
            colour = np.median(star_fluxes[good] / star_fluxes[good, 1:2], axis=0)
            return 1.0 / colour, int(good.sum())
    noise = np.array([_noise(plane) for plane in image])
    return noise[1] / noise, 0


def _noise(plane: np.ndarray) -> float:
    sample = plane[::4, ::4]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return float("nan")
    return MAD_TO_SIGMA * float(np.median(np.abs(sample - np.median(sample))))


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


def reduce_chroma(rgb: np.ndarray, noise: float, sigma: float = CHROMA_SIGMA) -> np.ndarray:
    """Colour noise of the sky blurred away, colour of stars and the galaxy kept.

    rgb: (3, h, w) float32 calibrated (sky 0, neutral); noise: sky sigma of its luminance. The colour
    difference of each channel from the luminance is Gaussian-blurred (sigma px); the result uses
    the blurred difference where the (slightly smoothed) luminance is below SIGNAL_SIGMAS[0] sky
    sigmas, the original above SIGNAL_SIGMAS[1], and a blend between. Returns a new (3, h, w) array.
    """
    lum = rgb.mean(axis=0)
    smooth = cv2.GaussianBlur(lum, (0, 0), 1.0)
    low, high = SIGNAL_SIGMAS
    keep = np.clip((smooth / max(noise, 1e-12) - low) / (high - low), 0.0, 1.0)
    keep = cv2.GaussianBlur(keep, (0, 0), 1.0)  # no hard seam around a star
    # the sky's colour is averaged over sky only (a normalised convolution): a star's colour must not
    # bleed into a coloured halo around it
    sky = np.float32(1) - keep
    height, width = lum.shape
    # the blur is wide and smooth: done at half resolution (four times cheaper) and brought back bilinearly
    half = (max(1, width // 2), max(1, height // 2))

    def smooth_half(plane):
        small = cv2.resize(plane, half, interpolation=cv2.INTER_AREA)
        return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / 2), (width, height), interpolation=cv2.INTER_LINEAR)

    sky_weight = np.maximum(smooth_half(sky), np.float32(1e-3))
    out = np.empty_like(rgb)
    for c in range(3):
        diff = rgb[c] - lum
        blurred = smooth_half(diff * sky) / sky_weight
        out[c] = lum + blurred + keep * (diff - blurred)
    return out


def stretch_rgb(rgb: np.ndarray, black: float, white: float, strength: float) -> np.ndarray:
    """The display stretch: (3, h, w) calibrated float32 → (h, w, 3) float32 in 0..1.

    Each pixel is shifted by the black point and scaled to the white point; its brightest channel M
    goes through asinh(β·M)/asinh(β) and all three channels are scaled by the same factor, so hue and
    saturation survive and no channel passes 1 below the white point (a luminance-driven factor would
    push a coloured star's strongest channel over 1 long before its luminance got there). Above the
    white point the pixel is scaled down as a whole.
    """
    span = np.float32(max(white - black, 1e-12))
    shifted = [np.maximum((rgb[c] - np.float32(black)) / span, 0) for c in range(3)]
    peak = np.maximum(np.maximum(shifted[0], shifted[1]), shifted[2])
    beta = np.float32(strength)
    safe = np.maximum(peak, np.float32(1e-7))
    factor = np.arcsinh(beta * np.minimum(safe, 1)) / (np.float32(np.arcsinh(strength)) * safe)
    out = np.empty((*peak.shape, 3), np.float32)
    for c in range(3):
        out[..., c] = shifted[c] * factor
    return out


# --------------------------------------------------------------------------------- the whole thing

def calibrate(image: np.ndarray, plan: Rendering) -> np.ndarray:
    """The rendering's linear steps: crop, background removed, white balance, chroma noise reduced.

    image: (3, H, W) float32 linear stack. Returns (3, h, w) float32, sky 0 and neutral, calibrated units.
    """
    y0, y1, x0, x1 = plan.crop
    crop = np.nan_to_num(image[:, y0:y1, x0:x1].astype(np.float32, copy=True))
    crop -= background_model(plan.background, crop.shape[1:])
    crop *= plan.gains.astype(np.float32)[:, None, None]
    return reduce_chroma(crop, plan.noise, plan.chroma_sigma)


def plan_rendering(image: np.ndarray, cover: np.ndarray | None = None,
                   star_fluxes: np.ndarray | None = None) -> Rendering:
    """Measure every factor of the preview from the linear stack.

    image: (3, H, W) float32 linear (any scale); cover: (H, W) frames per pixel or None; star_fluxes:
    (m, 3) background-subtracted star fluxes as for `white_balance`, or None.
    """
    crop = covered_crop(cover, image.shape[1:])
    y0, y1, x0, x1 = crop
    cropped = np.nan_to_num(image[:, y0:y1, x0:x1].astype(np.float32))
    coefficients, cells = fit_background(cropped)
    # the levels below are measured on every other pixel both ways (sampled, not averaged: the noise
    # stays the full-resolution noise), a quarter of the work
    flat = cropped - background_model(coefficients, cropped.shape[1:])
    flat = np.ascontiguousarray(flat[:, ::2, ::2]) if min(flat.shape[1:]) >= 64 else flat
    sampled = flat.shape[1] < cropped.shape[1]
    # neutralise: the fit's level can sit a fraction of a sigma off where faint halos cover many cells;
    # the image is mostly sky, so each channel's median is made 0
    offsets = np.array([float(np.median(flat[c, ::2, ::2])) for c in range(3)])
    coefficients[:, 0] += offsets
    flat -= offsets.astype(np.float32)[:, None, None]
    gains, stars = white_balance(flat, star_fluxes)
    gains = gains / gains[1]
    flat *= gains.astype(np.float32)[:, None, None]
    lum = flat.mean(axis=0)
    noise = _noise(lum) or 1e-6
    black = -BLACK_SIGMAS * noise
    # of the brightest channel: the stretch keeps hue, so a coloured pixel reaches 1 in that channel first
    peak = flat.max(axis=0)
    white = float(np.percentile(peak, WHITE_PERCENTILE))
    white = max(float(peak.max()) if peak.size < 4096 else white * WHITE_HEADROOM, 10 * noise)
    # the galaxy core must not clip: the white point never sits below the smoothed brightest region
    core = float(cv2.GaussianBlur(lum, (0, 0), 1.5 if sampled else 3.0).max())
    white = max(white, core)
    strength = asinh_strength(min(max(-black / (white - black), 1e-6), 0.5), SKY_TARGET)
    return Rendering(crop, coefficients, gains, noise, black, white, strength, CHROMA_SIGMA, stars, cells)


def render(image: np.ndarray, plan: Rendering, black: float | None = None,
           strength: float | None = None) -> np.ndarray:
    """(h, w, 3) uint8 RGB of the linear stack as the plan (or the given black point / strength) shows it."""
    shown = stretch_rgb(calibrate(image, plan), plan.black if black is None else black, plan.white,
                        plan.strength if strength is None else strength)
    return to_uint8(shown)


def to_uint8(shown: np.ndarray) -> np.ndarray:
    """(h, w, 3) float in 0..1 → uint8, rounded."""
    return (shown * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def stretch(image: np.ndarray, star_fluxes: np.ndarray | None = None,
            cover: np.ndarray | None = None) -> np.ndarray:
    """Auto-stretch a linear colour image: `render` of `plan_rendering`.

    image: (3, H, W) float32 (any scale); star_fluxes as for `white_balance`; cover as for
    `covered_crop`. Returns (h, w, 3) uint8 RGB, rows in the same order as the input (cropped).
    """
    return render(image, plan_rendering(image, cover, star_fluxes))


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
