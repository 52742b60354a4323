"""The stacking pipeline's public value types: options in, the stack and per-frame verdicts out, and its
one error. Nothing here needs the pipeline's libraries, so a caller that only starts stacks and saves
their results stays small."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a caller that only starts stacks and saves their files never loads numpy
    import numpy as np


class StackingError(Exception):
    """No frame of the set could be used; the message says why, naming the frames and their reasons."""


REJECTIONS = ("winsorized", "sigma", "percentile", "none")
NORMALIZATIONS = ("addscale", "add", "none")
WEIGHTINGS = ("noise", "none")
INTERPOLATIONS = ("lanczos4", "cubic")
CUBE_DTYPES = ("float16", "float32")
DRIZZLE_FACTORS = (1, 2, 3)


@dataclass(frozen=True)
class StackOptions:
    """Everything the pipeline lets a caller choose. Defaults match a Seestar session stacked the way
    Siril's Seestar scripts do it (winsorized 3/3, additive+scale normalisation, noise weights)."""

    # pixel rejection: "winsorized" sigma clipping, plain "sigma" clipping, "percentile" clipping, "none"
    rejection: str = "winsorized"
    sigma_low: float = 3.0           # in units of the (winsorized) standard deviation
    sigma_high: float = 3.0
    percentile_low: float = 0.2      # percentile clipping: fraction of the pixel's median below it
    percentile_high: float = 0.1     # ... and above it
    max_clip_iterations: int = 5     # rejection passes per pixel stack

    normalization: str = "addscale"  # "addscale": sky offset + star-flux scale, "add": offset only, "none"
    weighting: str = "noise"         # "noise": inverse variance of each frame's normalised sky noise

    grading: bool = True             # reject outlier frames (cloudy, trailed, blurred, few stars)
    grade_k: float = 3.0             # a frame is an outlier beyond median ± grade_k · 1.4826 · MAD

    detect_sigma: float = 5.0        # star detection threshold in units of the sky noise
    max_stars: int = 200             # brightest stars kept per frame for matching and photometry
    min_stars: int = 6               # fewer detected stars than this and a frame cannot be registered
    min_matches: int = 6             # star pairs needed to accept a registration
    max_residual_px: float = 1.0     # RMS of matched star positions after the fit, in pixels
    max_scale_error: float = 0.02    # |scale - 1| allowed: frames of one telescope share a plate scale

    interpolation: str = "cubic"     # warp kernel: "cubic" or "lanczos4" (~5x slower, no sharper on Seestar stacks)

    workers: int | None = None       # worker processes; None: min(cores, frames); 1: all in the caller
    mem_limit: int = 64 * 2**20     # bytes of working memory the combine step may use, all workers together
    cube_dtype: str = "float16"      # registered frames on disk; float16 halves I/O at ~0.05 % precision
    tmp_dir: str | None = None       # where the disk-backed cube lives; None: the system temp dir

    drizzle: int = 1                 # Bayer drizzle onto a grid this many times finer (1: off; see drizzle.py)
    pixfrac: float = 0.7             # drizzle drop size, a fraction of a raw pixel's side

    plate_solve: bool = True         # solve the stack with solve-field (see solve.py) when it is installed
    solve_time_limit: float = 20.0   # CPU seconds the solver may spend on one stack

    def __post_init__(self) -> None:
        for name, allowed in (("rejection", REJECTIONS), ("normalization", NORMALIZATIONS),
                              ("weighting", WEIGHTINGS), ("interpolation", INTERPOLATIONS),
                              ("cube_dtype", CUBE_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"StackOptions.{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.mem_limit < 8 * 2**20:
            raise ValueError("StackOptions.mem_limit must be at least 8 MiB")
        if self.drizzle not in DRIZZLE_FACTORS:
            raise ValueError(f"StackOptions.drizzle must be one of {DRIZZLE_FACTORS}, not {self.drizzle!r}")
        if not 0.1 <= self.pixfrac <= 1.0:
            raise ValueError(f"StackOptions.pixfrac must be between 0.1 and 1, not {self.pixfrac!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError("StackOptions.workers must be at least 1")


@dataclass(frozen=True)
class FrameVerdict:
    """What happened to one input frame. Measurements are on the frame's luminance in raw ADU;
    they are None when the frame could not be read or measured."""

    name: str
    used: bool
    reason: str | None
    fwhm_px: float | None = None
    stars: int | None = None
    background: float | None = None
    noise: float | None = None
    residual_px: float | None = None   # registration RMS of matched stars, pixels
    weight: float | None = None        # relative combine weight (mean over channels), best frame = 1


@dataclass
class StackResult:
    """A finished stack.

    frames: one verdict per input frame, in input order. Times are ISO-8601 UTC without a zone suffix.
    fits_bytes and png_bytes are the output files, rendered by the stacking process (see
    fitsio.write_stack and preview.py); the pixels travel only inside the FITS (see `image`).
    """

    frames: list[FrameVerdict]
    ncombine: int
    exptime_total: float
    date_beg: str
    date_end: str
    object: str | None
    instrument: str | None
    reference_name: str
    noise: float          # sky RMS of the stack's luminance, ADU (same measure as FrameVerdict.noise)
    fwhm_px: float        # median star FWHM on the stack's luminance
    stars: int            # stars detected on the stack
    fits_bytes: bytes
    png_bytes: bytes
    plate_solved: bool = False        # the FITS header holds a celestial WCS (PLTSOLVD = T)
    solve_reason: str | None = None   # why not, when it does not
    solve_seconds: float = 0.0        # wall time of the plate solve
    drizzle: int = 1                  # output grid is this many times finer than a frame (fwhm_px, noise on it)
    drizzle_holes: float = 0.0        # share of drizzled pixels (mean over R, G, B) no drop reached

    @property
    def image(self) -> np.ndarray:
        """(3, H, W) float32 R, G, B in ADU/65535 of the reference frame, read from fits_bytes
        (drizzled: (3, f·H, f·W), still ADU/65535 per reference pixel)."""
        return self._hdu_data(0).astype("float32")

    @property
    def coverage(self) -> np.ndarray:
        """(H, W) int16: how many frames cover each pixel, read from fits_bytes."""
        return self._hdu_data("COVERAGE").astype("int16")

    def _hdu_data(self, hdu: int | str) -> np.ndarray:
        from astropy.io import fits  # only when asked for: a caller that just saves the files never is

        with fits.open(io.BytesIO(self.fits_bytes)) as hdul:
            return hdul[hdu].data

    def write_fits(self, path: Path | str) -> None:
        """The (3, H, W) float32 image with its COVERAGE and FRAMES extensions, as a FITS file."""
        Path(path).write_bytes(self.fits_bytes)

    def write_preview(self, path: Path | str) -> None:
        """The auto-stretched 8-bit preview, as a PNG file."""
        Path(path).write_bytes(self.png_bytes)
