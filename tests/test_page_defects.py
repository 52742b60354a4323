"""Page defects an owner ran into, each checked in headless Chromium against the real app: the sky
map's zoom, frames in the order taken, login and account forms, a private stack's 404 page, batch
numbers per user, dismissing an empty batch, and "Retry failed files" only where a retry can help.
"""
from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect

from lib import batches
from tests.frames import small_frame_bytes
from tests.test_browser import PASSWORD, register, shot
from tests.test_gallery import database, insert_stacks, user_id
from tests.test_stack_page import make_stack


def centre_coords(page) -> str:
    """The RA/Dec readout with the mouse at the middle of the map."""
    box = page.locator("svg.skymap").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx + 3, cy + 3)
    page.mouse.move(cx, cy)
    return page.locator("#cursor-coords").inner_text()


def test_sky_map_zooms_at_the_view_centre_and_keeps_dots_and_labels_small(deployment, page, artifacts):
    url = deployment.url
    register(page, url, "cygnus")
    db = database(deployment)
    insert_stacks(db, user_id(db, "cygnus"), 40, seed=5)
    page.goto(url + "/map")
    expect(page.locator("svg.skymap circle.bin").first).to_be_attached()
    dot = page.locator("svg.skymap circle.bin").first
    label = page.locator("svg.skymap text.ra-label").first
    dot_size, label_size = dot.bounding_box()["width"], label.bounding_box()["height"]

    # wheel-zoom far in at a point off the centre (M 51's neighbourhood): dots and labels stay their size
    box = page.locator("svg.skymap").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    for _ in range(12):
        page.mouse.wheel(0, -400)
    page.wait_for_function("() => /scale\\((\\d+(\\.\\d+)?)\\)/.test(document.querySelector('g.zoom-layer')"
                           ".getAttribute('transform')) && parseFloat(document.querySelector('g.zoom-layer')"
                           ".getAttribute('transform').match(/scale\\(([\\d.]+)/)[1]) > 8")
    for circle in page.locator("svg.skymap circle.bin").all()[:5]:
        size = circle.bounding_box()
        if size:
            assert size["width"] <= dot_size * 1.5 + 12, size    # the biggest dot of 40 stacks stays small
    assert label.bounding_box() is None or label.bounding_box()["height"] <= label_size * 1.3

    # "+" zooms toward the middle of the view: the sky there stays where it was
    before = centre_coords(page)
    assert before.startswith("RA")
    page.click("#zoom-in")
    page.wait_for_timeout(600)           # the 250 ms transition
    after = centre_coords(page)
    ra = lambda text: re.search(r"RA (\S+h \S+m)", text).group(1)   # noqa: E731
    dec = lambda text: re.search(r"Dec (\S+°)", text).group(1)       # noqa: E731
    assert ra(after) == ra(before) and dec(after) == dec(before), (before, after)

    # the same after dragging the map aside in Pan mode, and for "−"
    page.click("#mode-pan")
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.35, steps=6)
    page.mouse.up()
    for button in ("#zoom-in", "#zoom-out"):
        before = centre_coords(page)
        page.click(button)
        page.wait_for_timeout(600)
        after = centre_coords(page)
        assert ra(after) == ra(before) and dec(after) == dec(before), (button, before, after)
    shot(page, artifacts, "map-zoomed")


def test_frames_are_listed_in_the_order_taken(deployment, page):
    url = deployment.url
    register(page, url, "lepus")
    stack_id = make_stack(deployment, "lepus", job_id=7_000_000)
    db = database(deployment)
    me = user_id(db, "lepus")
    # stacked in this (upload) order; taken at these times
    taken = {"c.fit": "2025-04-09T20:56:00", "a.fit": "2025-04-09T20:54:00", "b.fit": "2025-04-09T20:55:00"}
    for name, when in taken.items():
        frame_id = db["frames"].insert({"owner_id": me, "filename": name, "date_obs": when, "status": "stacked",
                                        "created_at": time.time()})
        db["stack_frames"].insert({"stack_id": stack_id, "frame_id": frame_id, "filename": name, "used": True,
                                   "reason": None, "fwhm_px": 3.0, "stars": 100})
    page.goto(f"{url}/stacks/{stack_id}")
    expect(page.locator("table.frames td.file")).to_have_text(["a.fit", "b.fit", "c.fit"])
    expect(page.locator("table.frames td.taken").first).to_have_text("2025-04-09 20:54:00")
    listed = page.evaluate(f"fetch('/api/v1/stacks/{stack_id}').then(r => r.json())")["frame_list"]
    assert [f["filename"] for f in listed] == ["a.fit", "b.fit", "c.fit"]
    expect(page.locator("#quality-chart svg g.frame title").first).to_contain_text("a.fit")


def test_private_stack_404_tells_anonymous_visitors_to_log_in(deployment, page):
    url = deployment.url
    register(page, url, "draco")
    stack_id = make_stack(deployment, "draco", job_id=7_000_100)
    page.click("text=Log out")
    response = page.goto(f"{url}/stacks/{stack_id}")
    assert response.status == 404
    hint = page.locator("#login-hint a")
    expect(page.locator("#login-hint")).to_contain_text("private")
    expect(hint).to_have_attribute("href", f"/login?next=/stacks/{stack_id}")
    hint.click()
    page.fill("input[name=username]", "draco")
    page.fill("input[name=password]", PASSWORD)
    page.click("form.stacked button[type=submit]")
    expect(page).to_have_url(re.compile(rf"/stacks/{stack_id}$"))      # back where they were going


def test_login_keeps_the_name_and_the_destination_after_a_wrong_password(deployment, page):
    url = deployment.url
    register(page, url, "ursa")
    page.click("text=Log out")
    page.goto(url + "/status")                                       # needs a login: sent to /login?next=/status
    expect(page).to_have_url(re.compile(r"/login\?next=/status$"))
    page.fill("input[name=username]", "ursa")
    page.fill("input[name=password]", "wrong password")
    page.click("form.stacked button[type=submit]")
    expect(page.locator(".error")).to_contain_text("wrong user name or password")
    expect(page.locator("input[name=username]")).to_have_value("ursa")
    page.fill("input[name=password]", PASSWORD)
    page.click("form.stacked button[type=submit]")
    expect(page).to_have_url(re.compile(r"/status$"))


def test_account_page_confirms_a_save(deployment, page):
    url = deployment.url
    register(page, url, "auriga")
    page.goto(url + "/account")
    page.check("input[name=share_with_crowd]")
    page.click("section form button[type=submit]")
    expect(page.locator("[role=status]")).to_contain_text("Saved")
    expect(page.locator("input[name=share_with_crowd]")).to_be_checked()
    page.goto(url + "/account")
    expect(page.locator("[role=status]")).to_have_count(0)           # said after a save, not on every visit


def test_batches_are_numbered_per_user_and_an_empty_one_can_be_dismissed(deployment, page):
    url = deployment.url
    db = database(deployment)
    other = deployment.user("early_bird")          # another user's batches come first in the table
    for _ in range(2):
        assert other.post("/api/v1/sessions").status_code == 201
    register(page, url, "lynx")
    me = user_id(db, "lynx")
    old = time.time() - 3600
    first = db["upload_sessions"].insert({"owner_id": me, "status": "expired", "created_at": old,
                                          "updated_at": old, "finalized_at": None})
    assert other.post("/api/v1/sessions").status_code == 201
    second = db["upload_sessions"].insert({"owner_id": me, "status": "open", "created_at": old + 60,
                                           "updated_at": old + 60, "finalized_at": None})
    page.goto(url + "/status")
    headings = page.locator("section.session h2")
    expect(headings).to_have_count(2)
    expect(headings.nth(0)).to_contain_text("Batch 2")     # newest first, the owner's own numbers
    expect(headings.nth(1)).to_contain_text("Batch 1")

    page.locator(f"section[data-session='{first}'] form.dismiss button").click()
    expect(page).to_have_url(re.compile(r"/status$"))
    expect(page.locator("section.session")).to_have_count(1)
    expect(page.locator("section.session h2")).to_contain_text("Batch 2")   # numbers stay
    page.wait_for_timeout(2500)                                              # the live refresh leaves it so
    expect(page.locator("section.session")).to_have_count(1)
    assert db["upload_sessions"].find_one(id=first)["status"] == "dismissed"
    # a dismissed batch takes no frames: the upload page starts a new batch
    response = page.request.put(f"{url}/api/v1/sessions/{first}/frames/late.fit", data=small_frame_bytes(seed=4),
                                headers={"Content-Type": "application/fits",
                                         "X-CSRF-Token": page.evaluate("document.querySelector('meta[name=csrf-token]').content")})
    assert response.status == 409
    assert db["upload_sessions"].find_one(id=second)["status"] == "open"


def test_dismiss_refuses_batches_with_frames_and_other_users_batches(deployment):
    owner = deployment.user("pyxis")
    deployment.user("stranger")
    db = database(deployment)
    session = owner.post("/api/v1/sessions").json()["id"]
    assert owner.put_frame(session, "a.fit", small_frame_bytes(seed=5)).status_code == 201
    db["upload_sessions"].update({"id": session, "updated_at": time.time() - 3600}, ["id"])
    with pytest.raises(batches.BatchError, match="has frames") as refused:
        batches.dismiss_empty(db, user_id(db, "pyxis"), session)
    assert refused.value.status == 409
    with pytest.raises(batches.BatchError) as refused:
        batches.dismiss_empty(db, user_id(db, "stranger"), session)
    assert refused.value.status == 404
    assert db["upload_sessions"].find_one(id=session)["status"] == "open"


def test_retry_is_offered_only_for_files_that_may_pass(deployment, page):
    url = deployment.url
    register(page, url, "pictor")
    page.set_input_files("#picker", [{"name": "Light_not_raw.fit", "mimeType": "application/fits",
                                      "buffer": small_frame_bytes(BAYERPAT=None)}])
    expect(page.locator("ul.files li.failed")).to_have_count(1, timeout=30_000)
    retry = page.locator("#retry-failed")
    expect(retry).to_be_hidden()                         # refused for what it is: a retry cannot help

    pattern = re.compile(r".*/api/v1/sessions/\d+/frames/.*")
    page.route(pattern, lambda route: route.fulfill(status=503, content_type="application/json",
                                                     body=json.dumps({"error": "storage is unavailable"})))
    page.set_input_files("#picker", [{"name": "Light_later.fit", "mimeType": "application/fits",
                                      "buffer": small_frame_bytes(seed=11)}])
    expect(page.locator("ul.files li.failed")).to_have_count(2, timeout=30_000)
    expect(retry).to_be_visible()
    expect(retry).to_have_text("Retry 1 file that may pass now")
    page.unroute(pattern)
    retry.click()
    expect(page.locator("ul.files li", has_text="Light_later.fit")).to_have_class(re.compile("done"), timeout=20_000)
    expect(page.locator("ul.files li", has_text="Light_not_raw.fit")).to_have_class(re.compile("failed"))
    expect(retry).to_be_hidden()
