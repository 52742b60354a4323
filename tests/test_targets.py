"""The gallery by target, in headless Chromium against the real app: one card per object with the
total integration over its stacks and nights, opening to its deep and crowd stacks and its chunk
stacks night by night, with dates and times (not chunk keys or serials) on the page.

Stack rows are inserted straight into the deployment's database (tests/test_gallery.py does the same).
"""
from __future__ import annotations

import time

from playwright.sync_api import expect

from lib import gallery
from tests.test_browser import register, shot
from tests.test_gallery import database, user_id
from tests.test_stack_page import make_stack

def add(db, owner_id, job_id, kind, obj, beg, exposure, frames, preview_key, **extra):
    db["stacks"].insert({
        "job_id": job_id, "kind": kind, "owner_id": owner_id, "chunk_id": None,
        "chunk_key": f"{beg[:4]}{beg[5:7]}{beg[8:10]}.80_HP033810" if kind == "chunk" else None,
        "object": obj, "telescope": "S50_12d98769", "ra": 192.7, "dec": 41.1, "frames": frames,
        "frames_rejected": 0, "exposure_s": exposure, "date_beg": beg, "date_end": beg,
        "fits_key": f"stacks/{kind}/{job_id}/stack.fits", "preview_key": preview_key, "fits_size": 1000,
        "fwhm_px": 3.0, "noise": None, "created_at": time.time(), **extra})


def test_night_of_joins_evening_and_morning():
    assert gallery.night_of("2025-04-09T20:54:00") == gallery.night_of("2025-04-10T03:10:00")
    assert gallery.night_of("2025-04-10T20:00:00") != gallery.night_of("2025-04-10T03:10:00")
    assert gallery.night_of("not a date") is None


def test_target_gallery_totals_nights_and_stacks(deployment, page, artifacts):
    url = deployment.url
    register(page, url, "hydra")
    db = database(deployment)
    me = user_id(db, "hydra")
    # a real preview for the thumbnails
    make_stack(deployment, "hydra", job_id=6_000_000, obj="NGC 7000",
               date_beg="2025-06-01T22:10:00.000", date_end="2025-06-01T22:20:00.000")
    preview = db["stacks"].find_one(job_id=6_000_000)["preview_key"]
    # M 94: two chunks on the night of 9 April (evening and after midnight), one on 12 April; a deep stack
    add(db, me, 6_000_001, "chunk", "M 94", "2025-04-09T20:54:10.000", 600.0, 60, preview)
    add(db, me, 6_000_002, "chunk", "M 94", "2025-04-10T01:05:00.000", 300.0, 30, preview)
    add(db, me, 6_000_003, "chunk", "M 94", "2025-04-12T21:00:00.000", 1200.0, 120, preview)
    add(db, me, 6_000_004, "deep", "M 94", "2025-04-09T20:54:10.000", 2100.0, 210, preview, nights=2, owners=1)
    # somebody else's private stack of M 94 must count nowhere
    other = deployment.user("secretive")
    add(db, user_id(db, other.username), 6_000_005, "chunk", "M 94", "2025-04-11T21:00:00.000", 9000.0, 900, preview)

    page.goto(url + "/targets")
    cards = page.locator("a.card.target")
    expect(cards).to_have_count(2)
    m94 = page.locator("a.card.target[data-object='M 94']")
    expect(m94.locator(".integration")).to_have_text("35 min in 2 nights")
    expect(m94).to_contain_text("4 stacks")
    shot(page, artifacts, "targets")

    m94.click()
    expect(page.locator("h1")).to_have_text("M 94")
    expect(page.locator("#target-total")).to_contain_text("35 min of exposure")
    expect(page.locator("#target-total")).to_contain_text("210 frames")
    expect(page.locator("#target-groups a.card[data-kind=deep]")).to_have_count(1)
    nights = page.locator("#target-nights h3.night")
    expect(nights).to_have_text(["Night of Saturday 12 April 2025", "Night of Wednesday 9 April 2025"])
    night_cards = page.locator("#target-nights a.card")
    expect(night_cards).to_have_count(3)
    # times, not chunk keys or serials
    expect(night_cards.nth(1)).to_contain_text("2025-04-09 20:54 UTC")
    expect(night_cards.nth(2)).to_contain_text("2025-04-10 01:05 UTC")
    body = page.inner_text("body")
    assert "HP033810" not in body and "S50_12d98769" not in body
    expect(night_cards.first).to_contain_text("ZWO Seestar S50")
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    shot(page, artifacts, "target")

    # a target nobody may see answers 404
    anonymous = page.context.browser.new_page()
    response = anonymous.goto(url + "/targets/M%2094")
    assert response.status == 404
    anonymous.close()
