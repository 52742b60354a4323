"""Stacks made on the telescope (the Seestar's own live stack, uploaded by the seestarpy client),
turned into CrowdSky stacks: a (3, H, W) float32 FITS with honest headers and a preview PNG.

The telescope's file is trusted for its pixels only; the numbers that describe it (frames, total
exposure, time span) come from the file name the telescope gave it, the client's form fields, or
the header, in that order, and a stack whose frame count cannot be found is refused.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from lib.chunks import TELESCOPE_NAME

from .debayer import bayer_pattern, debayer
from .fitsio import ascii_safe, format_date, parse_date
from .options import StackingError
from .preview import stretch, write_png

# Where an observer was: never copied into anything CrowdSky publishes.
LOCATION_KEYWORDS = {"SITELAT", "SITELONG", "SITEELEV", "LATITUDE", "LONGITUD", "OBSGEO-B", "OBSGEO-L",
                     "OBSGEO-H", "OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z", "OBS-LAT", "OBS-LONG", "OBS-ELEV"}
CARRIED = ("OBJECT", "TELESCOP", "INSTRUME", "FILTER", "RA", "DEC", "EQUINOX", "RADESYS", "FOCALLEN",
           "XPIXSZ", "YPIXSZ", "GAIN", "CREATOR")


@dataclass
class TelescopeStack:
    image: np.ndarray              # (3, H, W) float32, 0..1 of the input's full scale
    header: fits.Header            # what is carried over, location removed
    name: str                      # the file name it came with
    frames: int                    # frames combined on the telescope
    frames_input: int              # frames the telescope took for it (>= frames)
    exptime_total: float           # seconds
    date_beg: datetime             # UTC
    date_end: datetime
    key_from_name: str | None      # YYYYMMDD.CC_HPnnnnnn when the name carries it

    def write_fits(self, path: Path) -> None:
        header = self.header.copy()
        header["NCOMBINE"] = (self.frames, "frames combined on the telescope")
        header["NINPUT"] = (self.frames_input, "frames the telescope took for this stack")
        header["EXPTIME"] = (self.exptime_total, "[s] total exposure of the combined frames")
        header["DATE-OBS"] = (format_date(self.date_beg), "UTC start of the first combined exposure")
        header["DATE-BEG"] = (format_date(self.date_beg), "UTC start of the first combined exposure")
        header["DATE-END"] = (format_date(self.date_end), "UTC end of the last combined exposure")
        header["CTYPE3"] = ("RGB", "planes: red, green, blue")
        header.add_history(ascii_safe(f"stacked on the telescope; imported from {self.name}"))
        primary = fits.PrimaryHDU(self.image.astype(np.float32), header=header)
        table = fits.BinTableHDU.from_columns([
            fits.Column("NAME", "A128", array=[ascii_safe(self.name)[:128]]),
            fits.Column("USED", "L", array=np.array([True])),
            fits.Column("REASON", "A160", array=[""]),
            fits.Column("FWHM", "E", array=np.array([np.nan], np.float32)),
            fits.Column("STARS", "J", array=np.array([-1], np.int32)),
            fits.Column("BACKGROUND", "E", array=np.array([np.nan], np.float32)),
            fits.Column("NOISE", "E", array=np.array([np.nan], np.float32)),
        ], name="FRAMES")
        fits.HDUList([primary, table]).writeto(path, overwrite=True)

    def write_preview(self, path: Path) -> None:
        write_png(stretch(self.image), Path(path))


def colour_image(data: np.ndarray, header: fits.Header) -> np.ndarray:
    """(3, H, W) float32 in 0..1 from a telescope stack's pixels: RGB planes, a Bayer mosaic or mono."""
    if data.ndim == 3 and data.shape[0] == 3:
        planes = data
    elif data.ndim == 2 and "BAYERPAT" in header:
        planes = debayer(data, bayer_pattern(str(header["BAYERPAT"])))
    elif data.ndim == 2:
        planes = np.stack([data] * 3)
    else:
        raise StackingError(f"a stack must be a 2-D image or 3 colour planes, got shape {data.shape}")
    planes = planes.astype(np.float32)
    scale = 65535.0 if np.issubdtype(data.dtype, np.integer) or float(np.nanmax(planes)) > 2.0 else 1.0
    return planes / np.float32(scale)


def read_telescope_stack(path: Path, *, name: str, frames_input: int | None = None,
                         frames_aligned: int | None = None, date_beg: str | None = None,
                         date_end: str | None = None) -> TelescopeStack:
    """Read an uploaded telescope stack; the keyword arguments are the client's form fields."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if h.data is not None and h.is_image), None)
                if hdu is None:
                    raise StackingError(f"{name}: no image in the file")
                data, header = np.asarray(hdu.data), hdu.header.copy()
        except OSError as exc:
            raise StackingError(f"{name}: not a readable FITS file ({exc})") from None
    named = TELESCOPE_NAME.match(name)
    frames = frames_aligned or (int(named["frames"]) if named else None) or header.get("NCOMBINE") \
        or header.get("STACKCNT")
    if not frames:
        raise StackingError(f"{name}: how many frames it combines is unknown: send n_frames_aligned, "
                            "or name the file CrowdSky_<N>_<target>_<exp>s_<filter>_<key>.fit")
    frames = int(frames)
    if named:
        exptime_total = frames * float(named["exposure"])
    elif "TOTALEXP" in header:
        exptime_total = float(header["TOTALEXP"])
    elif "NCOMBINE" in header and "EXPTIME" in header:
        exptime_total = float(header["EXPTIME"])      # CrowdSky's own convention: EXPTIME is the total
    else:
        raise StackingError(f"{name}: the total exposure is unknown (no TOTALEXP, no CrowdSky file name)")
    try:
        begin = parse_date(date_beg or str(header.get("DATE-BEG") or header["DATE-OBS"]))
        end = parse_date(date_end) if date_end else (
            parse_date(str(header["DATE-END"])) if "DATE-END" in header else begin + timedelta(seconds=exptime_total))
    except (KeyError, ValueError):
        raise StackingError(f"{name}: the time of the observation is unknown (no DATE-OBS)") from None
    carried = fits.Header()
    for key in CARRIED:
        if key in header and key not in LOCATION_KEYWORDS:
            carried[key] = (header[key], header.comments[key])
    return TelescopeStack(
        image=colour_image(data, header), header=carried, name=name, frames=frames,
        frames_input=max(int(frames_input or frames), frames), exptime_total=exptime_total,
        date_beg=begin, date_end=end,
        key_from_name=f"{named['block']}_HP{named['pixel']}" if named else None)
