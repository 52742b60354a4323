"""Reading and validating the header of a raw Seestar frame.

A raw frame is a FITS primary HDU: a 2-D 16-bit Bayer mosaic with the pointing (RA, DEC), the time
(DATE-OBS, UTC) and the exposure (EXPTIME) in its header. The header is read from the first bytes
of the upload, before anything is stored, so a bad file is refused without touching the buffer.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from astropy.io import fits
from astropy.io.fits.verify import VerifyError

BLOCK = 2880                       # FITS logical record, bytes
MAX_HEADER_BLOCKS = 64             # 180 KiB of cards: far more than any camera writes
MAX_SIDE = 16384                   # pixels; larger claims are refused before reading the data
BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
# No Seestar (nor any digital camera writing FITS like it) took a frame before this; a later limit
# is tomorrow (a clock a few hours ahead is a mistake worth keeping, a year 9999 is not a frame).
EARLIEST_DATE_OBS = datetime(2000, 1, 1, tzinfo=timezone.utc)
_END_CARD = re.compile(rb"END {77}")


class FrameError(ValueError):
    """The bytes are not a raw frame CrowdSky can stack; the message says what is wrong."""


@dataclass(frozen=True)
class FrameHeader:
    width: int                     # NAXIS1, pixels
    height: int                    # NAXIS2, pixels
    bayerpat: str                  # e.g. GRBG
    date_obs: datetime             # start of exposure, UTC, timezone-aware
    exptime: float                 # seconds
    ra: float                      # degrees, 0..360
    dec: float                     # degrees, -90..90
    object: str
    telescope: str                 # TELESCOP: identifies one physical telescope
    instrument: str
    header_bytes: int              # length of the header, a multiple of 2880
    data_bytes: int                # width * height * 2, before padding
    filter: str | None = None      # FILTER (Seestar: IRCUT, LP); frames of two filters are different data

    @property
    def min_file_bytes(self) -> int:
        return self.header_bytes + self.data_bytes


def header_length(head: bytes) -> int | None:
    """Length in bytes of the FITS header at the start of *head*, or None if END is not in it yet."""
    for offset in range(0, len(head) - BLOCK + 1, BLOCK):
        block = head[offset:offset + BLOCK]
        for card in range(0, BLOCK, 80):
            if _END_CARD.fullmatch(block[card:card + 80]):
                return offset + BLOCK
    return None


def read_header_bytes(stream, limit: int | None = None) -> bytes:
    """Read whole 2880-byte blocks from *stream* up to and including the one holding END.

    *limit* caps how many bytes may be read (the declared body length).
    """
    head = b""
    while len(head) < MAX_HEADER_BLOCKS * BLOCK:
        want = BLOCK if limit is None else min(BLOCK, limit - len(head))
        block = _read_exactly(stream, want) if want > 0 else b""
        if len(block) < BLOCK:
            if not head and not block:
                raise FrameError("the file is empty")
            raise FrameError("the file ends inside the FITS header (no END card): it is truncated or not FITS")
        if not head and not block.startswith(b"SIMPLE  ="):
            raise FrameError("not a FITS file: it does not start with a SIMPLE card")
        head += block
        if header_length(head) is not None:
            return head
    raise FrameError(f"the FITS header has no END card in its first {MAX_HEADER_BLOCKS * BLOCK} bytes")


def _read_exactly(stream, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_cards(head: bytes):
    """(astropy Header, header length in bytes) of the header at the start of *head*."""
    length = header_length(head)
    if length is None:
        raise FrameError("the FITS header has no END card")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = fits.Header.fromstring(head[:length].decode("ascii"))
        for card in header.cards:        # astropy parses values lazily: parse them all now
            _ = card.value
    except (UnicodeDecodeError, ValueError, VerifyError) as exc:
        raise FrameError(f"the FITS header cannot be read: {str(exc).splitlines()[0][:200]}") from None
    if header.get("SIMPLE") is not True:
        raise FrameError("not a standard FITS file (SIMPLE is not T)")
    return header, length


def parse(head: bytes) -> FrameHeader:
    """Validate the header bytes of a raw frame and return what CrowdSky needs from it."""
    header, length = _read_cards(head)
    naxis = _int(header, "NAXIS")
    if naxis != 2:
        raise FrameError(f"expected a 2-D raw Bayer frame, got NAXIS = {naxis} (colour cubes and stacks are not raw frames)")
    bitpix = _int(header, "BITPIX")
    if bitpix != 16:
        raise FrameError(f"expected 16-bit pixels (BITPIX = 16), got BITPIX = {bitpix}")
    width, height = _int(header, "NAXIS1"), _int(header, "NAXIS2")
    for name, side in (("NAXIS1", width), ("NAXIS2", height)):
        if not 16 <= side <= MAX_SIDE:
            raise FrameError(f"{name} = {side} is not a plausible frame size (16..{MAX_SIDE} pixels)")

    bayerpat = str(header.get("BAYERPAT", "")).strip().upper()
    if not bayerpat:
        raise FrameError("BAYERPAT is missing: CrowdSky needs the Bayer pattern of a one-shot-colour frame")
    if bayerpat not in BAYER_PATTERNS:
        raise FrameError(f"BAYERPAT = {bayerpat!r} is not one of {', '.join(BAYER_PATTERNS)}")

    ra = _number(header, "RA")
    dec = _number(header, "DEC")
    if not 0.0 <= ra < 360.0:
        raise FrameError(f"RA = {ra} is outside 0..360 degrees")
    if not -90.0 <= dec <= 90.0:
        raise FrameError(f"DEC = {dec} is outside -90..+90 degrees")
    exptime = _number(header, "EXPTIME")
    if not 0.0 < exptime <= 86400.0:
        raise FrameError(f"EXPTIME = {exptime} is not a plausible exposure in seconds")

    return FrameHeader(
        width=width, height=height, bayerpat=bayerpat,
        date_obs=_date_obs(header), exptime=exptime, ra=ra, dec=dec,
        object=_text(header, "OBJECT") or "unknown",
        telescope=_text(header, "TELESCOP") or _text(header, "INSTRUME") or "unknown",
        instrument=_text(header, "INSTRUME") or "unknown",
        header_bytes=length, data_bytes=width * height * 2, filter=_text(header, "FILTER")[:16] or None,
    )


def _text(header, key: str) -> str:
    return " ".join(str(header.get(key, "")).split())[:64]


def _int(header, key: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FrameError(f"{key} is missing or not a whole number")
    return value


def _number(header, key: str) -> float:
    if key not in header:
        raise FrameError(f"{key} is missing from the header")
    value = header[key]
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FrameError(f"{key} = {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FrameError(f"{key} = {value!r} is not a number")
    return float(value)


def _date_obs(header) -> datetime:
    raw = header.get("DATE-OBS")
    if raw is None:
        raise FrameError("DATE-OBS is missing: CrowdSky needs the UTC time the frame was taken")
    text = str(raw).strip()
    try:
        moment = datetime.fromisoformat(text.rstrip("Z"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)   # FITS: DATE-OBS is UTC unless it says otherwise
        moment = moment.astimezone(timezone.utc)       # OverflowError at the ends of the calendar
    except (ValueError, OverflowError):
        raise FrameError(f"DATE-OBS = {text!r} is not an ISO-8601 date and time") from None
    return plausible_time(moment, "DATE-OBS", text)


def plausible_time(moment: datetime, name: str, text: str) -> datetime:
    """*moment* (UTC, aware) if a telescope could have taken a frame then, else a FrameError
    naming the field *name* and the *text* it came from."""
    if not EARLIEST_DATE_OBS <= moment <= datetime.now(timezone.utc) + timedelta(days=1):
        raise FrameError(f"{name} = {text!r} is not a plausible time: frames are taken between "
                         f"{EARLIEST_DATE_OBS.year} and today")
    return moment


@dataclass(frozen=True)
class StackHeader:
    """What CrowdSky needs from the header of a stack made elsewhere (e.g. on the telescope)."""
    object: str
    telescope: str
    instrument: str
    ra: float
    dec: float
    date_obs: datetime | None      # None when the header has none (the uploader may say it)
    header_bytes: int
    data_bytes: int


def parse_stack(head: bytes) -> StackHeader:
    """Validate the header of an uploaded stack: a 2-D or 3-plane image with a pointing."""
    header, length = _read_cards(head)
    naxis = _int(header, "NAXIS")
    if naxis not in (2, 3):
        raise FrameError(f"expected a 2-D image or 3 colour planes, got NAXIS = {naxis}")
    bitpix = _int(header, "BITPIX")
    if bitpix not in (8, 16, 32, -32, -64):
        raise FrameError(f"BITPIX = {bitpix} is not a FITS image type")
    sides = [_int(header, f"NAXIS{i}") for i in range(1, naxis + 1)]
    if not all(16 <= side <= MAX_SIDE for side in sides[:2]) or (naxis == 3 and sides[2] not in (1, 3)):
        raise FrameError(f"image size {' x '.join(map(str, sides))} is not a plausible stack")
    ra, dec = _number(header, "RA"), _number(header, "DEC")
    if not 0.0 <= ra < 360.0 or not -90.0 <= dec <= 90.0:
        raise FrameError(f"RA = {ra}, DEC = {dec} is not a position on the sky")
    data_bytes = abs(bitpix) // 8
    for side in sides:
        data_bytes *= side
    return StackHeader(
        object=_text(header, "OBJECT") or "unknown",
        telescope=_text(header, "TELESCOP") or _text(header, "INSTRUME") or "unknown",
        instrument=_text(header, "INSTRUME") or "unknown", ra=ra, dec=dec,
        date_obs=_date_obs(header) if "DATE-OBS" in header else None,
        header_bytes=length, data_bytes=data_bytes)
