"""Filing frames into chunks: telescope, 15-minute UTC block, pointing by distance."""
from datetime import datetime, timezone

import pytest

from lib.chunks import (CHUNK_RADIUS_DEG, NSIDE, OpenChunk, block_label, chunk_key, find_chunk,
                        healpix_label, separation_deg)

T0 = datetime(2025, 3, 27, 5, 45, 0, tzinfo=timezone.utc)


class Filing:
    """Files frames one after another the way uploads do: join the nearest chunk or open one."""

    def __init__(self):
        self.chunks: list[OpenChunk] = []
        self.keys: dict[int, str] = {}

    def add(self, telescope, when, ra, dec, filter_name="IRCUT") -> str:
        found = find_chunk(self.chunks, telescope, when, ra, dec, filter_name)
        if found is None:
            found = OpenChunk(len(self.chunks) + 1, telescope, block_label(when), ra, dec, filter_name)
            self.chunks.append(found)
            self.keys[found.id] = chunk_key(when, ra, dec)
        return self.keys[found.id]


def test_block_label_counts_quarter_hours_of_the_utc_day():
    assert block_label(datetime(2025, 3, 27, 0, 0, tzinfo=timezone.utc)) == "20250327.00"
    assert block_label(datetime(2025, 3, 27, 5, 44, 59, tzinfo=timezone.utc)) == "20250327.22"
    assert block_label(datetime(2025, 3, 27, 5, 45, 0, tzinfo=timezone.utc)) == "20250327.23"
    assert block_label(datetime(2025, 3, 27, 23, 59, 59, tzinfo=timezone.utc)) == "20250327.95"


def test_block_label_uses_utc_not_local_time():
    from datetime import timedelta
    local = datetime(2025, 3, 27, 1, 45, tzinfo=timezone(timedelta(hours=-4)))
    assert block_label(local) == "20250327.23"


def test_healpix_label_is_ring_nside_128():
    assert NSIDE == 128
    # RING numbering starts at the north pole and ends at the south pole (12 * 128**2 pixels).
    assert healpix_label(45.0, 89.99) == "HP000000"
    assert int(healpix_label(0.0, -89.99)[2:]) >= 12 * 128 ** 2 - 4
    assert healpix_label(193.070835, 40.979722).startswith("HP") and len(healpix_label(1, 1)) == 8


def test_key_format():
    assert chunk_key(T0, 193.070835, 40.979722) == f"20250327.23_{healpix_label(193.070835, 40.979722)}"


def test_jitter_across_a_tenth_of_a_degree_grid_line_stays_in_one_chunk():
    filing = Filing()
    keys = {filing.add("S50_a", T0, ra, dec) for ra, dec in
            [(193.049, 40.949), (193.051, 40.951), (193.052, 40.948), (193.047, 40.952)]}
    assert len(keys) == 1 and len(filing.chunks) == 1


def test_jitter_across_a_healpix_pixel_border_stays_in_one_chunk():
    # Walk in declination until the pixel changes: the two positions straddle a border.
    ra, dec = 193.07, 40.98
    first = healpix_label(ra, dec)
    step = 0.001
    while healpix_label(ra, dec + step) == first:
        step += 0.001
    a, b = (ra, dec + step - 0.002), (ra, dec + step + 0.002)
    assert healpix_label(*a) != healpix_label(*b)
    filing = Filing()
    keys = {filing.add("S50_a", T0, *a), filing.add("S50_a", T0, *b)}
    assert len(keys) == 1
    # The key is the label of the frame that opened the chunk, and never changes afterwards.
    assert keys == {chunk_key(T0, *a)}


def test_two_telescopes_on_one_target_make_two_chunks():
    filing = Filing()
    filing.add("S50_1d3fe189", T0, 193.07, 40.98)
    filing.add("S50_12d98769", T0, 193.07, 40.98)
    assert len(filing.chunks) == 2


def test_an_ircut_and_lp_mixed_block_makes_two_chunks():
    filing = Filing()
    for k, filter_name in enumerate(["IRCUT", "LP", "IRCUT", "LP", "LP"]):
        filing.add("S50_a", T0, 193.07 + 0.001 * k, 40.98, filter_name)
    assert sorted(c.filter for c in filing.chunks) == ["IRCUT", "LP"]
    filing.add("S50_a", T0, 193.07, 40.98, None)          # a frame without FILTER: neither of them
    assert len(filing.chunks) == 3


def test_frames_on_both_sides_of_a_quarter_hour_make_two_chunks():
    filing = Filing()
    before = datetime(2025, 3, 27, 5, 44, 55, tzinfo=timezone.utc)
    after = datetime(2025, 3, 27, 5, 45, 5, tzinfo=timezone.utc)
    k1 = filing.add("S50_a", before, 193.07, 40.98)
    k2 = filing.add("S50_a", after, 193.07, 40.98)
    assert k1.startswith("20250327.22_") and k2.startswith("20250327.23_")


def test_a_different_target_opens_its_own_chunk():
    filing = Filing()
    filing.add("S50_a", T0, 193.07, 40.98)
    filing.add("S50_a", T0, 193.07 + 1.0, 40.98)
    assert len(filing.chunks) == 2


def test_separation_handles_ra_wrap():
    assert separation_deg(359.95, 10.0, 0.05, 10.0) == pytest.approx(0.1 * 0.98481, rel=1e-3)
    assert separation_deg(359.95, 10.0, 0.05, 10.0) < CHUNK_RADIUS_DEG


@pytest.mark.parametrize("kind", ["deep", "crowd"])
def test_ircut_and_lp_stacks_of_one_target_go_into_separate_groups(tmp_path, kind):
    """Group matching (lib/groups.py) on a real database: same target, same filter → one group;
    another filter → a group of its own."""
    from lib import db as database
    from lib import groups

    db = database.connect(f"sqlite:///{tmp_path / 'groups.db'}")

    def group_of(filter_name, ra):
        stack = {"owner_id": 1, "object": "M 94", "ra": ra, "dec": 41.12, "filter": filter_name}
        with db as tx:
            return groups._find_or_create(tx, kind, stack)

    ircut = group_of("IRCUT", 192.72)
    lp = group_of("LP", 192.72)
    assert lp != ircut
    assert group_of("IRCUT", 192.75) == ircut and group_of("LP", 192.70) == lp
    assert {r["filter"] for r in db["stacks"].find(kind=kind)} == {"IRCUT", "LP"}
