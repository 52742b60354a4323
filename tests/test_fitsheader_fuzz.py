"""Property-based fuzzing of the FITS header reader: whatever the bytes, it either returns a
valid frame description or raises FrameError — never another exception, never a bogus frame."""
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.fitsheader import BAYER_PATTERNS, FrameError, parse, read_header_bytes
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
            value = data.draw(st.sampled_from([b"'abc'", b"-1", b"1e400", b"T", b"999999999999", b"''", b"NaN"]))
            cards[index] = (key + b"= " + value).ljust(80)[:80]
    check(b"".join(cards))
