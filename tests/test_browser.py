"""The site as a telescope owner uses it, in headless Chromium against the real app process:
register, upload real frames, finalize, stack, browse, zoom, find the stack on the sky map, select
it with a box and download it; resume an interrupted upload; see why a file was refused.

Screenshots of every page (desktop and phone width) land in test-artifacts/ for people to look at.
"""
from __future__ import annotations

import io
import json
import re
import zipfile

from astropy.io import fits
from playwright.sync_api import expect

from tests.frames import NIGHT_1, real_frames, small_frame_bytes

PASSWORD = "a long enough password"
PHONE = {"width": 390, "height": 844}


def register(page, url, username="stella", password=PASSWORD):
    page.goto(url + "/register")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form.stacked button[type=submit]")
    expect(page).to_have_url(re.compile(r"/upload$"))


def shot(page, artifacts, name):
    page.screenshot(path=artifacts / f"{name}.png", full_page=True)


def test_upload_stack_browse_map_and_download(deployment, page, artifacts, tmp_path):
    url = deployment.url
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

    page.goto(url + "/")
    expect(page.locator("h1")).to_contain_text("Seestar")
    expect(page.locator("body")).to_contain_text("location is never published")
    shot(page, artifacts, "home")
    register(page, url)
    cookie = {c["name"]: c for c in page.context.cookies()}["crowdsky_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    # Upload three real frames with the file picker: a bar per file, one for the batch.
    finalize = page.locator("#finalize")
    expect(finalize).to_be_disabled()
    frames = real_frames(NIGHT_1)[:3]
    page.set_input_files("#picker", [str(p) for p in frames])
    rows = page.locator("ul.files li")
    expect(rows).to_have_count(3)
    expect(page.locator("ul.files li.done")).to_have_count(3, timeout=60_000)
    expect(page.locator("#batch-text")).to_contain_text("3 of 3 files")
    expect(page.locator("#batch-bar")).to_have_attribute("style", re.compile(r"width: 100(\.0)?%"))
    for row in rows.all():
        expect(row.locator(".fill")).to_have_attribute("style", re.compile(r"width: 100(\.0)?%"))
        expect(row.locator(".state")).to_contain_text("M 94 · 2025-03-27 05:45 UTC")   # a time, not a chunk key
    shot(page, artifacts, "upload")

    expect(finalize).to_be_enabled()
    finalize.click()
    expect(page.locator("#result")).to_contain_text("Queued 1 stacking job (3 frames from 2025-03-27 05:45 UTC)")
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('crowdsky.upload'))") == []

    # The status page follows the job live: no reload needed to see it finish.
    page.goto(url + "/status")
    expect(page.locator("td.state").first).to_contain_text("pending")
    expect(page.locator("#stacker-warning")).to_contain_text("No stacker is running")   # none started yet
    stacked = deployment.run("stacker.py", "--once")
    assert stacked.returncode == 0, stacked.stderr[-2000:]
    expect(page.locator("td.state").first).to_contain_text("done", timeout=20_000)
    expect(page.locator("#stacker-warning")).to_be_hidden()
    expect(page.locator("td.actions a", has_text="View stack")).to_be_visible()
    expect(page.locator("td.actions button", has_text="Delete")).to_be_visible()
    chunk_cell = page.locator("table.jobs tbody td").first
    expect(chunk_cell).to_contain_text("2025-03-27 05:45–06:00 UTC")
    expect(chunk_cell).to_contain_text("ZWO Seestar S50")
    expect(chunk_cell).not_to_contain_text("HP0")                  # the chunk key only in the details
    shot(page, artifacts, "status")

    # Gallery → stack page: preview, numbers, per-frame chart, zoom, FITS download.
    page.goto(url + "/stacks")
    cards = page.locator("a.card")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("M 94")
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    shot(page, artifacts, "gallery")
    cards.first.click()
    numbers = page.locator("dl.numbers")
    expect(numbers).to_contain_text("Frames used")
    expect(numbers).to_contain_text("Median FWHM")
    expect(numbers).to_contain_text("Time span")
    page.wait_for_function("() => document.querySelector('img.preview').naturalWidth > 100")
    chart = page.locator("#quality-chart svg")
    expect(chart).to_be_visible()
    expect(chart.locator("g.frame")).to_have_count(3)
    shot(page, artifacts, "stack")

    viewport = page.locator("#viewport")
    box = viewport.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 3)
    expect(page.locator("#picture")).to_have_attribute("style", re.compile(r"scale\(2\)"))
    expect(viewport).to_have_class(re.compile(r"zoomed"))
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 60, box["y"] + box["height"] / 2 + 40, steps=5)
    page.mouse.up()
    shot(page, artifacts, "stack-zoomed")
    page.click("[data-zoom=fit]")
    expect(viewport).not_to_have_class(re.compile(r"zoomed"))

    with page.expect_download() as download_info:
        page.click("#download-fits")
    saved = tmp_path / "download.fits"
    download_info.value.save_as(saved)
    with fits.open(saved) as hdul:
        assert hdul[0].header["NCOMBINE"] >= 2
        assert hdul[0].data.shape[0] == 3
        assert "SITELAT" not in hdul[0].header

    # Sky map: the stack is a dot; hover says how many; a box around it selects it; Download all.
    page.goto(url + "/map")
    dot = page.locator("svg.skymap circle.bin")
    expect(dot).to_have_count(1)
    expect(page.locator("#time-note")).to_contain_text("1 stack")
    at = dot.bounding_box()
    cx, cy = at["x"] + at["width"] / 2, at["y"] + at["height"] / 2
    page.mouse.move(cx, cy)
    expect(page.locator("#sky-tip")).to_contain_text("1 stack here")
    expect(page.locator("#sky-tip")).to_contain_text("M 94")
    expect(page.locator("#cursor-coords")).to_contain_text("RA 12h")
    page.mouse.move(cx - 40, cy - 30)
    page.mouse.down()
    page.mouse.move(cx + 40, cy + 30, steps=6)
    page.mouse.up()
    expect(page.locator("#sel-summary")).to_contain_text("1 stack")
    expect(page.locator("svg.skymap circle.bin.selected")).to_have_count(1)
    download_all = page.locator("#download-all")
    expect(download_all).to_be_enabled()
    shot(page, artifacts, "map")
    with page.expect_download() as download_info:
        download_all.click()
    zipped = tmp_path / "stacks.zip"
    download_info.value.save_as(zipped)
    with zipfile.ZipFile(zipped) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names[0] == "index.csv" and len(names) == 2, names
        assert names[1].endswith(".fits")
        assert "M 94" in archive.read("index.csv").decode()
        with fits.open(io.BytesIO(archive.read(names[1]))) as hdul:
            assert hdul[0].header["NCOMBINE"] >= 2
            assert hdul[0].data.shape[0] == 3

    # A box over empty sky selects nothing and the button goes back to disabled.
    sky = page.locator("svg.skymap").bounding_box()
    page.mouse.move(sky["x"] + 30, sky["y"] + sky["height"] - 40)
    page.mouse.down()
    page.mouse.move(sky["x"] + 80, sky["y"] + sky["height"] - 10, steps=3)
    page.mouse.up()
    expect(download_all).to_be_disabled()

    # The same pages at phone width.
    page.set_viewport_size(PHONE)
    for path, name in (("/", "home-phone"), ("/targets", "targets-phone"), ("/stacks", "gallery-phone"), ("/upload", "upload-phone"),
                       ("/status", "status-phone"), ("/map", "map-phone")):
        page.goto(url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], f"{path} scrolls sideways"
        shot(page, artifacts, name)
    page.goto(url + "/stacks")
    page.locator("a.card").first.click()
    expect(page.locator("#quality-chart svg")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, artifacts, "stack-phone")
    assert not problems, problems


def test_reload_resumes_the_batch_and_skips_what_is_in(deployment, page, artifacts):
    url = deployment.url
    register(page, url, "vega")
    frames = [str(p) for p in real_frames(NIGHT_1)[:3]]
    puts = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)

    page.set_input_files("#picker", frames[:2])
    expect(page.locator("ul.files li.done")).to_have_count(2, timeout=60_000)
    assert len(puts) == 2
    session = page.evaluate("localStorage.getItem(Object.keys(localStorage).find(k => k.startsWith('crowdsky.upload')))")
    assert session and session.isdigit()

    page.reload()
    resume = page.locator("#resume")
    expect(resume).to_be_visible()
    expect(resume).to_contain_text("2 files already in")
    expect(resume).to_contain_text("drop the folder again to continue")
    expect(page.locator("#finalize")).to_be_enabled()          # what is in can be stacked as it is
    shot(page, artifacts, "upload-resume")

    page.set_input_files("#picker", frames)
    expect(page.locator("ul.files li.skipped")).to_have_count(2, timeout=30_000)
    expect(page.locator("ul.files li.done")).to_have_count(1, timeout=60_000)
    expect(page.locator("ul.files li.skipped .state").first).to_contain_text("already in")
    assert len(puts) == 3, puts                                 # only the new file was sent
    assert puts[-1].endswith(re.sub(r"\s", "%20", frames[2].rsplit("/", 1)[1]))
    expect(page.locator("#batch-text")).to_contain_text("3 of 3 files")
    expect(page.locator("#batch-text")).to_contain_text("2 already in")

    # The server agrees: one session with three frames, the one the page kept.
    data = page.evaluate(f"fetch('/api/v1/sessions/{session}').then(r => r.json())")
    assert data["status"] == "open" and len(data["frames"]) == 3
    page.click("#finalize")
    expect(page.locator("#result")).to_contain_text("Queued 1 stacking job")
    page.reload()
    expect(page.locator("#resume")).to_be_hidden()

    # The same files again, in a new batch: the server has their bytes, so none is sent again.
    page.set_input_files("#picker", frames)
    expect(page.locator("ul.files li.skipped")).to_have_count(3, timeout=30_000)
    expect(page.locator("ul.files li.skipped .state").first).to_contain_text("earlier batch")
    assert len(puts) == 3, puts

    # Changed their mind: the status page deletes the job (after asking) with its raw frames.
    page.goto(url + "/status")
    expect(page.locator("td.state").first).to_contain_text("pending")
    questions = []
    page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
    page.click("td.actions button:has-text('Delete')")
    expect(page.locator("td.state")).to_have_count(0)
    assert "cannot be undone" in questions[0]


def test_refused_and_failing_files_say_why(deployment, page, artifacts):
    url = deployment.url
    register(page, url, "deneb")

    # The server refuses a frame without a Bayer pattern: the owner reads why in plain words.
    bad = small_frame_bytes(BAYERPAT=None)
    good = small_frame_bytes(seed=3)
    page.set_input_files("#picker", [
        {"name": "Light_colour_export.fit", "mimeType": "application/fits", "buffer": bad},
        {"name": "Light_good.fit", "mimeType": "application/fits", "buffer": good},
        {"name": "Light_good.jpg", "mimeType": "image/jpeg", "buffer": b"not a frame"},
    ])
    failed = page.locator("ul.files li.failed")
    expect(failed).to_have_count(1, timeout=30_000)
    expect(failed.locator(".state")).to_have_text(
        "this is not a raw colour frame from a Seestar (no Bayer pattern)")
    expect(failed.locator(".state")).to_have_attribute("title", re.compile("BAYERPAT is missing"))
    expect(page.locator("ul.files li.done")).to_have_count(1)
    expect(page.locator("#files-count")).to_contain_text("1 other file ignored")
    expect(page.locator("#batch-text")).to_contain_text("1 failed")
    expect(page.locator("#finalize")).to_be_enabled()
    shot(page, artifacts, "upload-failed")

    # A storage outage: each file is tried three times, then shown as failed with the reason.
    attempts = []

    def outage(route):
        attempts.append(route.request.url)
        route.fulfill(status=503, content_type="application/json",
                      body=json.dumps({"error": "storage is unavailable right now; nothing was lost, try again shortly"}))

    page.route(re.compile(r".*/api/v1/sessions/\d+/frames/.*"), outage)
    page.set_input_files("#picker", [{"name": "Light_later.fit", "mimeType": "application/fits",
                                      "buffer": small_frame_bytes(seed=9)}])
    later = page.locator("ul.files li", has_text="Light_later.fit")
    expect(later.locator(".state")).to_contain_text("retrying", timeout=10_000)
    expect(later).to_have_class(re.compile(r"failed"), timeout=20_000)
    expect(later.locator(".state")).to_contain_text("storage is unavailable right now")
    assert len(attempts) == 3
    retry = page.locator("#retry-failed")
    expect(retry).to_be_visible()
    page.unroute(re.compile(r".*/api/v1/sessions/\d+/frames/.*"))
    retry.click()
    expect(later).to_have_class(re.compile(r"done"), timeout=20_000)


def test_wrong_password_and_forged_form_are_refused(deployment, page, browser):
    url = deployment.url
    register(page, url, "orion")
    page.click("text=Log out")
    page.goto(url + "/login")
    page.fill("input[name=username]", "orion")
    page.fill("input[name=password]", "not the password")
    page.click("form.stacked button[type=submit]")
    expect(page.locator(".error")).to_contain_text("wrong user name or password")

    # A form posted without the page's CSRF token (as another site would) is refused.
    response = page.request.post(url + "/login", form={"username": "orion", "password": PASSWORD})
    assert response.status == 403
