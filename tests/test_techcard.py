"""The technical card's numbers from a stack's FITS header and row (pure: no servers)."""
from __future__ import annotations

import pytest
from astropy.io import fits

from lib import techcard


@pytest.mark.parametrize("telescop, instrume, model", [
    ("S50_12d98769", "Seestar S50", "ZWO Seestar S50"),
    ("S30_0a1b2c3d", None, "ZWO Seestar S30"),
    ("S30P_0a1b2c3d", None, "ZWO Seestar S30 Pro"),
    ("S30_0a1b2c3d", "Seestar S30 Pro", "ZWO Seestar S30 Pro"),
    (None, "ZWO ASI585MC", "ZWO ASI585MC"),
])
def test_telescope_model_comes_from_instrume_or_the_serial(telescop, instrume, model):
    assert techcard.telescope_model(telescop, instrume) == model


def test_card_rows_from_header_and_row():
    header = fits.Header()
    for key, value in (("NAXIS1", 1080), ("NAXIS2", 1920), ("TELESCOP", "S50_1d3fe189"), ("INSTRUME", "Seestar S50"),
                       ("FILTER", "LP"), ("GAIN", 80), ("CCD-TEMP", 21.3), ("FOCALLEN", 250), ("XPIXSZ", 2.9),
                       ("EXPTIME", 1700.0)):
        header[key] = value
    stack = {"telescope": "S50_1d3fe189", "frames": 170, "frames_rejected": 4, "exposure_s": 1700.0,
             "nights": 2, "fwhm_px": 3.0}
    rows = dict(techcard.card(stack, header))
    assert rows["Telescope"] == "ZWO Seestar S50" and rows["Serial"] == "S50_1d3fe189"
    assert rows["Filter"] == "light-pollution (dual band)" and rows["Gain"] == "80"
    assert rows["Sensor temperature"] == "21.3 °C"
    assert rows["Focal length"] == "250 mm · 2.39″/px"
    assert rows["Field of view"] == "43′ × 77′"
    assert rows["Frames"] == "170 used, 4 rejected"
    assert rows["Integration"] == "28 min (170 × 10 s)"
    assert rows["Nights"] == "2"
    assert rows["FWHM"] == "7.2″ (3.00 px)"


def test_card_without_header_keeps_what_the_row_knows():
    rows = dict(techcard.card({"telescope": "S50_x", "frames": 3, "exposure_s": 30.0, "fwhm_px": 2.5}, None))
    assert rows["Telescope"] == "ZWO Seestar S50" and rows["FWHM"] == "2.50 px" and "Gain" not in rows
