"""Property-based fuzzing of the FITS header reader: whatever the bytes, it either returns a
valid frame description or raises FrameError — never another exception, never a bogus frame."""
import io
from datetime import datetime, timedelta, timezone

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.fitsheader import BAYER_PATTERNS, EARLIEST_DATE_OBS, FrameError, parse, read_header_bytes
from tests.frames import seestar_header

REAL_HEAD = seestar_header().tostring().encode("ascii")
CARDS = [REAL_HEAD[i:i + 80] for i in range(0, len(REAL_HEAD), 80)]


def check(body: bytes) -> None:
    try:
        frame = parse(read_header_bytes(io.BytesIO(body), limit=len(body)))
    except FrameError as exc:
        assert str(exc)
        return
    assert frame.bayerpat in BAYER_PATTERNS
    assert 0 <= frame.ra < 360 and -90 <= frame.dec <= 90 and frame.exptime > 0
    assert frame.header_bytes % 2880 == 0 and frame.width * frame.height * 2 == frame.data_bytes
    assert EARLIEST_DATE_OBS <= frame.date_obs <= datetime.now(timezone.utc) + timedelta(days=1)


# Times at the ends of the calendar (converting them to UTC overflows) and impossible ones
DATES = [b"'0001-01-01T00:00:00+05:00'", b"'9999-12-31T23:59:59-05:00'", b"'0001-01-01T00:00:00'",
         b"'9999-12-31T23:59:59'", b"'1999-12-31T23:59:59Z'", b"'2999-01-01T00:00:00'", b"'2025-13-01T00:00:00'"]


@pytest.mark.parametrize("date", DATES)
def test_dates_at_the_ends_of_the_calendar_are_refused_naming_date_obs(date):
    cards = [(c[:8] + b"= " + date).ljust(80) if c.startswith(b"DATE-OBS") else c for c in CARDS]
    with pytest.raises(FrameError, match="DATE-OBS"):
        parse(read_header_bytes(io.BytesIO(b"".join(cards))))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=6000))
def test_random_bytes(body):
    check(body)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_real_header(data):
    """Flip, drop, duplicate and rewrite cards of a real Seestar header."""
    cards = list(CARDS)
    for _ in range(data.draw(st.integers(1, 6))):
        index = data.draw(st.integers(0, len(cards) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "garble", "value"]))
        if action == "drop" and len(cards) > 1:
            cards.pop(index)
        elif action == "dup":
            cards.insert(index, cards[index])
        elif action == "garble":
            noise = data.draw(st.binary(min_size=80, max_size=80))
            cards[index] = noise
        else:
            key = cards[index][:8]
            value = data.draw(st.sampled_from([b"'abc'", b"-1", b"1e400", b"T", b"999999999999", b"''", b"NaN",
                                               *DATES]))
            cards[index] = (key + b"= " + value).ljust(80)[:80]
    check(b"".join(cards))
