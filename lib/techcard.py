"""The stack page's technical card: equipment and acquisition as a reader of an astrophoto expects
them (telescope model, filter, gain, sensor temperature, focal length and pixel scale, frames,
integration, nights, FWHM in arcseconds, sky brightness, limiting magnitude, zero point), from the
stack's FITS header and its stacks row.

Only the FITS header is read (a ranged read of its first blocks), never the pixels.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

HEADER_BYTES = 2880 * 24          # the primary header of a stack of a few hundred frames fits easily
ARCSEC_PER_RADIAN_OVER_1000 = 206.265   # scale ″/px = 206.265 × pixel size µm / focal length mm
FILTERS = {"IRCUT": "IR-cut (UV/IR block)", "LP": "light-pollution (dual band)", "DARK": "dark (shutter)"}


def read_header(archive, fits_key: str):
    """The primary header of a FITS in the archive, or None when it cannot be read."""
    from astropy.io import fits

    try:
        data = archive.read_range(fits_key, 0, HEADER_BYTES)
        end = data.find(b"END" + b" " * 77)
        if end < 0 or end % 80:
            end = next((i for i in range(0, len(data) - 79, 80) if data[i:i + 80].rstrip() == b"END"), -1)
        if end < 0:
            return None
        return fits.Header.fromstring(data[:end + 80].decode("ascii", "replace"))
    except Exception as exc:  # the card is a nicety: the page shows without it
        log.warning("no technical card for %s: %s", fits_key, exc)
        return None


def telescope_model(telescop: str | None, instrume: str | None) -> str | None:
    """'ZWO Seestar S50', 'ZWO Seestar S30' or 'ZWO Seestar S30 Pro' from INSTRUME or the serial's prefix."""
    for text in (instrume, telescop):
        if not text:
            continue
        match = re.search(r"S(30|50)[ _-]?(PRO|P(?=_))?", str(text).upper())
        if match:
            return f"ZWO Seestar S{match.group(1)}" + (" Pro" if match.group(2) else "")
    return str(instrume or telescop).strip() or None


def pixel_scale(header) -> float | None:
    """″/px from XPIXSZ (µm) and FOCALLEN (mm), or None."""
    try:
        return ARCSEC_PER_RADIAN_OVER_1000 * float(header["XPIXSZ"]) / float(header["FOCALLEN"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def card(stack: dict, header) -> list[tuple[str, str]]:
    """(label, text) rows of the technical card; rows whose value is unknown are left out."""
    header = header if header is not None else {}
    rows: list[tuple[str, str]] = []

    def add(label, value):
        if value not in (None, ""):
            rows.append((label, value))

    add("Telescope", telescope_model(header.get("TELESCOP") or stack.get("telescope"), header.get("INSTRUME")))
    add("Serial", header.get("TELESCOP") or stack.get("telescope"))
    filt = header.get("FILTER")
    add("Filter", FILTERS.get(str(filt).strip().upper(), str(filt).strip()) if filt else None)
    add("Gain", f"{header['GAIN']}" if header.get("GAIN") is not None else None)
    temp = header.get("CCD-TEMP")
    add("Sensor temperature", f"{float(temp):.1f} °C" if isinstance(temp, (int, float)) else None)
    scale = pixel_scale(header) if header else None
    focal = header.get("FOCALLEN")
    if focal:
        add("Focal length", f"{float(focal):.0f} mm" + (f" · {scale:.2f}″/px" if scale else ""))
    width, height = header.get("NAXIS1"), header.get("NAXIS2")
    if scale and width and height:
        add("Field of view", f"{width * scale / 60:.0f}′ × {height * scale / 60:.0f}′")
    frames, rejected = stack.get("frames"), stack.get("frames_rejected")
    if frames is not None:
        add("Frames", f"{frames} used" + (f", {rejected} rejected" if rejected is not None else ""))
    exposure = stack.get("exposure_s")
    if exposure:
        sub = header.get("EXPTIME") and frames and float(header["EXPTIME"]) / frames
        add("Integration", _duration(exposure) + (f" ({frames} × {sub:g} s)" if sub else ""))
    add("Nights", str(stack.get("nights") or 1))
    fwhm = stack.get("fwhm_px")
    arcsec = _number(stack, header, "fwhm_arcsec", "FWHMARC")    # measured on the plate-solved stack
    solved_scale = header.get("PLTSCALE") or scale
    if arcsec and solved_scale:
        # the stack's own stars, which are narrower than the frames' the row's fwhm_px is measured like
        add("FWHM", f"{arcsec:.1f}″ ({arcsec / float(solved_scale):.2f} px)")
    elif fwhm:
        add("FWHM", f"{fwhm * scale:.1f}″ ({fwhm:.2f} px)" if scale else f"{fwhm:.2f} px")
    sky_mag = _number(stack, header, "sky_mag", "SKYMAG")
    add("Sky brightness", f"{sky_mag:.2f} mag/arcsec² (V)" if sky_mag else None)
    limit = _number(stack, header, "limiting_mag", "LIMMAG")
    add("Limiting magnitude", f"{limit:.1f} (V, 5σ point source)" if limit else None)
    zero_point = _number(stack, header, "zero_point", "MAGZPT")
    if zero_point:
        stars = _number(stack, header, "calibration_stars", "MAGZPN")
        scatter = _number(stack, header, "zero_point_scatter", "MAGZPSIG")
        detail = ", ".join(part for part in (f"{stars:.0f} Tycho-2 stars" if stars else "",
                                             f"scatter {scatter:.2f} mag" if scatter is not None else "") if part)
        add("Zero point", f"{zero_point:.2f} mag (V of 1 ADU/s)" + (f" · {detail}" if detail else ""))
    add("Chunk key", stack.get("chunk_key"))   # the internal name, for support and the API
    return rows


def _number(stack: dict, header, column: str, keyword: str) -> float | None:
    """A photometric number from the stacks row, else from the header (files measured before the row had it)."""
    value = stack.get(column)
    if value is None:
        value = header.get(keyword)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
