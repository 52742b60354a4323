"""FITS in and out: reading a raw frame with the header keywords the pipeline needs, and writing the
stacked image with the keywords that describe it.

Only descriptive keywords are carried from the reference frame to the stack (a fixed list, below);
anything that is not on it, such as SITELAT/SITELONG or any other location keyword, is never written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from astropy.io import fits

from .debayer import bayer_pattern
from .photometry import Photometry, header_cards, stars_table
from .solve import Solution, write_solution

# Keywords copied from the reference frame into the stack when present. They describe the target,
# the optics and the camera, which all frames of a stack share. Per-frame values (time, exposure,
# temperature, focus position) are replaced by stack-level ones or dropped; location is never copied.
CARRIED_KEYWORDS = ("OBJECT", "TELESCOP", "INSTRUME", "CREATOR", "FILTER", "RA", "DEC", "EQUINOX",
                    "RADESYS", "FOCALLEN", "APERTURE", "XPIXSZ", "YPIXSZ", "XBINNING", "YBINNING",
                    "GAIN", "IMAGETYP")


class FrameReadError(ValueError):
    """A file is not a raw frame the pipeline can use; the message is the reason shown to the owner."""


@dataclass(frozen=True)
class FrameHeader:
    """What the pipeline needs from a raw frame's header.

    pattern: Bayer pattern in array order (see debayer.py); shape: (H, W); date_obs: exposure start,
    UTC, naive datetime; exptime: seconds; carried: (keyword, value, comment) of CARRIED_KEYWORDS present.
    """

    pattern: str
    shape: tuple[int, int]
    date_obs: datetime
    exptime: float
    carried: tuple[tuple[str, object, str], ...] = field(default=())
    temperature: float | None = None      # CCD-TEMP, °C

    def value(self, keyword: str) -> object | None:
        return next((value for key, value, _ in self.carried if key == keyword), None)


def parse_date(text: str) -> datetime:
    """A FITS DATE-OBS value ('YYYY-MM-DDThh:mm:ss[.ffffff]', UTC) as a naive datetime."""
    text = text.strip().rstrip("Z")
    if "." in text:  # fromisoformat wants at most 6 fractional digits
        head, fraction = text.split(".", 1)
        text = f"{head}.{fraction[:6]}"
    return datetime.fromisoformat(text)


def format_date(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, no zone suffix, as FITS dates are written."""
    return moment.isoformat(timespec="milliseconds")


def read_frame(path: Path) -> tuple[np.ndarray, FrameHeader]:
    """Read a raw Bayer frame.

    Returns the (H, W) uint16 mosaic in ADU and its FrameHeader. Raises FrameReadError when the file
    is not a 2-D 16-bit image with BAYERPAT, DATE-OBS and EXPTIME (or EXPOSURE).
    """
    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul[0]
            header = hdu.header
            data = hdu.data
    except (OSError, ValueError) as exc:
        raise FrameReadError(f"not a readable FITS file ({exc})") from None
    if data is None or data.ndim != 2:
        raise FrameReadError("no 2-D image in the primary HDU")
    if data.dtype != np.uint16:
        if data.dtype.kind in "iu" and data.size and data.min() >= 0 and data.max() <= 65535:
            data = data.astype(np.uint16)
        else:
            raise FrameReadError(f"pixel type {data.dtype} is not a 16-bit raw frame")
    if "BAYERPAT" not in header:
        raise FrameReadError("header has no BAYERPAT: not a raw colour frame")
    try:
        pattern = bayer_pattern(str(header["BAYERPAT"]), int(header.get("XBAYROFF", 0)),
                                int(header.get("YBAYROFF", 0)))
    except ValueError as exc:
        raise FrameReadError(str(exc)) from None
    if "DATE-OBS" not in header:
        raise FrameReadError("header has no DATE-OBS")
    try:
        date_obs = parse_date(str(header["DATE-OBS"]))
    except ValueError:
        raise FrameReadError(f"DATE-OBS {header['DATE-OBS']!r} is not an ISO-8601 date") from None
    exposure = header.get("EXPTIME", header.get("EXPOSURE"))
    if not isinstance(exposure, (int, float)) or exposure <= 0:
        raise FrameReadError("header has no positive EXPTIME or EXPOSURE")
    carried = tuple((key, header[key], header.comments[key]) for key in CARRIED_KEYWORDS if key in header)
    temperature = header.get("CCD-TEMP")
    temperature = float(temperature) if isinstance(temperature, (int, float)) else None
    return np.ascontiguousarray(data), FrameHeader(pattern, data.shape, date_obs, float(exposure), carried,
                                                   temperature)


@dataclass(frozen=True)
class FrameRow:
    """One row of the FRAMES table (values in the frame's raw ADU; None = not measured)."""

    name: str
    used: bool
    reason: str | None
    date_obs: str | None
    exptime: float | None
    fwhm_px: float | None
    stars: int | None
    background: float | None
    noise: float | None
    residual_px: float | None
    weight: float | None


def ascii_safe(text: str) -> str:
    """*text* as FITS can hold it (printable ASCII): other characters become Python escapes,
    ``Lumière_😀.fit`` -> ``Lumi\\xe8re_\\U0001f600.fit``, so nothing is lost and the file stays
    valid. The original name is kept in the database for display."""
    return "".join(c if " " <= c <= "~" else c.encode("ascii", "backslashreplace").decode("ascii")
                   if ord(c) > 0x7F else f"\\x{ord(c):02x}" for c in text)


def _column(values: Sequence[float | int | None], fill: float) -> np.ndarray:
    return np.array([fill if v is None else v for v in values], dtype=np.float32)


def write_stack(path: Path | BinaryIO, image: np.ndarray, coverage: np.ndarray, *, reference: FrameHeader,
                reference_name: str, ncombine: int, exptime_total: float, date_beg: str, date_end: str,
                frames: Sequence[FrameRow], history: Sequence[str],
                extra_cards: Sequence[tuple[str, object, str]] = (), solution: Solution | None = None,
                photometry: Photometry | None = None) -> None:
    """Write the stack: primary HDU (3, H, W) float32, image extension COVERAGE (H, W) int16
    (frames covering each pixel) and binary table FRAMES (every input frame, used or not).
    extra_cards: (keyword, value, comment) added to the primary header, e.g. the preview's factors.

    image: (3, H, W) float32, R, G, B, in ADU/65535 of the reference frame after normalisation.
    solution: the plate solve's outcome (WCS + PLTSOLVD, see solve.write_solution); None: not tried.
    photometry: its keywords (FWHMARC, MAGZPT, SKYMAG, LIMMAG, ...) go into the primary header and its
    stars into a binary table STARS (see photometry.py); None: not measured.
    """
    primary = fits.PrimaryHDU(np.ascontiguousarray(image, dtype=np.float32))
    header = primary.header
    for key, value, comment in reference.carried:
        header[key] = (value, comment)
    header["NCOMBINE"] = (ncombine, "number of frames combined")
    header["EXPTIME"] = (exptime_total, "[s] total exposure of the combined frames")
    header["DATE-OBS"] = (date_beg, "UTC start of the first combined exposure")
    header["DATE-BEG"] = (date_beg, "UTC start of the first combined exposure")
    header["DATE-END"] = (date_end, "UTC end of the last combined exposure")
    header["REFFRAME"] = ascii_safe(reference_name)  # no comment: a long file name alone may fill the card
    header["CTYPE3"] = ("RGB", "planes: red, green, blue")
    header["BUNIT"] = ("ADU/65535", "reference-frame ADU scaled to 0..1")
    for key, value, comment in extra_cards:
        header[key] = (value, comment)
    if solution is not None:
        write_solution(header, solution)
    if photometry is not None:
        for key, value, comment in header_cards(photometry):
            header[key] = (value, comment)
    for line in history:
        header.add_history(ascii_safe(line))

    table = fits.BinTableHDU.from_columns([
        fits.Column("NAME", "A128", array=[ascii_safe(f.name)[:128] for f in frames]),
        fits.Column("USED", "L", array=np.array([f.used for f in frames], bool)),
        fits.Column("REASON", "A160", array=[ascii_safe(f.reason or "")[:160] for f in frames]),
        fits.Column("DATE-OBS", "A26", array=[f.date_obs or "" for f in frames]),
        fits.Column("EXPTIME", "E", unit="s", array=_column([f.exptime for f in frames], np.nan)),
        fits.Column("FWHM", "E", unit="pix", array=_column([f.fwhm_px for f in frames], np.nan)),
        fits.Column("STARS", "J", array=np.array([-1 if f.stars is None else f.stars for f in frames], np.int32)),
        fits.Column("BACKGROUND", "E", unit="adu", array=_column([f.background for f in frames], np.nan)),
        fits.Column("NOISE", "E", unit="adu", array=_column([f.noise for f in frames], np.nan)),
        fits.Column("RESIDUAL", "E", unit="pix", array=_column([f.residual_px for f in frames], np.nan)),
        fits.Column("WEIGHT", "E", array=_column([f.weight for f in frames], np.nan)),
    ], name="FRAMES")
    table.header["COMMENT"] = "every input frame in input order; STARS=-1 and NaN: not measured"

    cover = fits.ImageHDU(np.ascontiguousarray(coverage, dtype=np.int16), name="COVERAGE")
    cover.header["COMMENT"] = "number of combined frames covering each pixel after registration"
    extensions = [cover, table] + ([stars_table(photometry)] if photometry is not None else [])
    fits.HDUList([primary, *extensions]).writeto(path, overwrite=True)


def exposure_end(date_obs: datetime, exptime: float) -> datetime:
    return date_obs + timedelta(seconds=exptime)
