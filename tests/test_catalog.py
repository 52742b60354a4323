"""The OpenNGC catalogue (lib/catalog.py): names in any spelling, objects in a field, what a stack is filed under."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS

from lib import catalog

M94 = (192.7212, 41.1197)
WIDTH, HEIGHT = 1080, 1920          # an S50 stack


def s50_wcs(ra: float, dec: float, rotation_deg: float = 30.0, flip: bool = True) -> WCS:
    """A TAN WCS of an S50 stack centred on (ra, dec): 2.39″/px, turned, mirrored as Seestar stacks are."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(WIDTH + 1) / 2, (HEIGHT + 1) / 2]
    scale = 2.39 / 3600
    turn = np.radians(rotation_deg)
    cd = scale * np.array([[-np.cos(turn), np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    wcs.wcs.cd = cd @ np.diag([1.0, -1.0]) if flip else cd
    return wcs


@pytest.mark.parametrize("written", ["M94", "m 94", "M 94", "NGC 4736", "ngc4736", "NGC4736", " m  94 "])
def test_every_spelling_of_m94_has_one_key(written):
    assert catalog.canonical(written) == "NGC4736"


@pytest.mark.parametrize("written", ["", None, "my target", "Mosaic 1", "x" * 300])
def test_names_the_catalogue_does_not_know_have_no_key(written):
    assert catalog.canonical(written) is None


def test_display_names():
    assert catalog.display_name("NGC4736") == "M 94"
    assert catalog.display_name("IC0342") == "IC 342"
    assert catalog.pretty("NGC0224") == "NGC 224"


def test_objects_in_a_field_with_their_pixels_and_outline():
    wcs = s50_wcs(M94[0] + 0.05, M94[1] - 0.1)
    objects = catalog.objects_in_field(wcs, WIDTH, HEIGHT)
    m94 = next(o for o in objects if o["name"] == "M 94")
    assert np.hypot((m94["ra"] - M94[0]) * np.cos(np.radians(M94[1])), m94["dec"] - M94[1]) * 3600 < 5
    x, y = wcs.all_world2pix([[m94["ra"], m94["dec"]]], 0)[0]
    assert (m94["x"], m94["y"]) == (pytest.approx(x, abs=0.01), pytest.approx(y, abs=0.01))
    assert "NGC 4736" in m94["aliases"] and m94["type"] == "Galaxy"
    assert m94["major_arcmin"] == pytest.approx(7.74) and m94["angle_deg"] == 105
    # the outline is the 7.7′ × 6.7′ ellipse: its widest extent is the major axis in pixels
    outline = np.array(m94["outline"])
    widest = max(np.hypot(*(a - b)) for a in outline for b in outline)
    assert widest == pytest.approx(7.74 * 60 / 2.39, rel=0.02)
    for o in objects:
        assert -0.5 <= o["x"] <= WIDTH - 0.5 and -0.5 <= o["y"] <= HEIGHT - 0.5


def test_a_field_elsewhere_does_not_hold_m94():
    wcs = s50_wcs(M94[0] + 3.0, M94[1])
    assert all(o["name"] != "M 94" for o in catalog.objects_in_field(wcs, WIDTH, HEIGHT))


def test_an_empty_or_wrong_object_is_filed_under_the_main_object_in_the_field():
    wcs = s50_wcs(*M94)
    objects = catalog.objects_in_field(wcs, WIDTH, HEIGHT)
    assert catalog.main_object(objects, WIDTH, HEIGHT)["name"] == "M 94"
    assert catalog.filed_under("M 94", objects, WIDTH, HEIGHT) == ("NGC4736", "M 94")
    assert catalog.filed_under("ngc4736", objects, WIDTH, HEIGHT) == ("NGC4736", "ngc4736")
    assert catalog.filed_under("", objects, WIDTH, HEIGHT) == ("NGC4736", "M 94")
    assert catalog.filed_under("unknown", objects, WIDTH, HEIGHT) == ("NGC4736", "M 94")
    assert catalog.filed_under("M 31", objects, WIDTH, HEIGHT) == ("NGC4736", "M 94")      # not in the field
    assert catalog.filed_under("Comet C/2025 A1", objects, WIDTH, HEIGHT) == ("NGC4736", "Comet C/2025 A1")
    # unsolved (no objects known): the header is all there is
    assert catalog.filed_under("M 31", [], WIDTH, HEIGHT) == ("NGC0224", "M 31")
    assert catalog.filed_under("", [], WIDTH, HEIGHT) == (None, None)
