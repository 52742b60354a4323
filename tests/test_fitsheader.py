"""Reading and validating raw frame headers."""
import io
from datetime import datetime, timezone

import pytest
from astropy.io import fits

from lib.fitsheader import BLOCK, FrameError, parse, read_header_bytes
from tests.frames import NIGHT_1, real_frames, seestar_header, small_frame_bytes


def head_of(header: fits.Header) -> bytes:
    return header.tostring().encode("ascii")


def test_real_seestar_frame_is_read():
    path = real_frames(NIGHT_1)[0]
    with open(path, "rb") as f:
        head = read_header_bytes(f)
    frame = parse(head)
    assert (frame.width, frame.height) == (1080, 1920)
    assert frame.bayerpat == "GRBG"
    assert frame.telescope == "S50_1d3fe189"
    assert frame.object == "M 94"
    assert frame.exptime == 10.0
    assert frame.date_obs == datetime(2025, 3, 27, 5, 45, 0, 734589, tzinfo=timezone.utc)
    assert frame.ra == pytest.approx(193.070835) and frame.dec == pytest.approx(40.979722)
    assert frame.min_file_bytes == 2 * BLOCK + 1080 * 1920 * 2 <= path.stat().st_size


@pytest.mark.parametrize("changes, fault", [
    ({"BAYERPAT": None}, "BAYERPAT is missing"),
    ({"BAYERPAT": "XYZW"}, "BAYERPAT = 'XYZW'"),
    ({"DATE_OBS": None}, "DATE-OBS is missing"),
    ({"DATE_OBS": "yesterday"}, "DATE-OBS = 'yesterday'"),
    ({"EXPTIME": None}, "EXPTIME is missing"),
    ({"EXPTIME": "long"}, "EXPTIME = 'long' is not a number"),
    ({"EXPTIME": 0}, "EXPTIME = 0.0"),
    ({"RA": None}, "RA is missing"),
    ({"RA": 361.0}, "RA = 361.0 is outside"),
    ({"DEC": -91.0}, "DEC = -91.0 is outside"),
    ({"BITPIX": 8}, "BITPIX = 8"),
    ({"BITPIX": -32}, "BITPIX = -32"),
    ({"NAXIS": 3, "NAXIS3": 3}, "NAXIS = 3"),
    ({"NAXIS1": 10_000_000}, "NAXIS1 = 10000000"),
])
def test_bad_headers_are_refused_with_the_fault_named(changes, fault):
    with pytest.raises(FrameError, match=fault.replace("(", r"\(").replace(".", r"\.")):
        parse(head_of(seestar_header(**changes)))


def test_date_obs_is_utc():
    frame = parse(head_of(seestar_header(DATE_OBS="2025-04-09T20:54:35")))
    assert frame.date_obs.tzinfo is not None and frame.date_obs.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("body, fault", [
    (b"", "empty"),
    (b"hello, this is text, not a frame\n" * 200, "not a FITS file"),
    (b"\xff\xd8\xff\xe0" + bytes(6000), "not a FITS file"),
])
def test_non_fits_bodies_are_refused(body, fault):
    with pytest.raises(FrameError, match=fault):
        read_header_bytes(io.BytesIO(body))


def test_header_without_end_card_is_refused():
    head = head_of(seestar_header())
    no_end = head.replace(b"END" + b" " * 77, b" " * 80)
    with pytest.raises(FrameError, match="no END card|ends inside the FITS header"):
        read_header_bytes(io.BytesIO(no_end))


def test_file_truncated_mid_header_is_refused():
    body = small_frame_bytes()
    with pytest.raises(FrameError, match="ends inside the FITS header"):
        read_header_bytes(io.BytesIO(body[:1000]))
