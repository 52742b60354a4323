"""The walking skeleton as a person does it, in headless Chromium."""
from __future__ import annotations

import re

from astropy.io import fits
from playwright.sync_api import expect

from tests.frames import NIGHT_1, real_frames


def register(page, url, username="stella", password="a long enough password"):
    page.goto(url + "/register")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form.stacked button[type=submit]")
    expect(page).to_have_url(re.compile(r"/upload$"))


def test_register_upload_finalize_stack_browse_download(deployment, page, artifacts, tmp_path):
    url = deployment.url
    page.goto(url + "/")
    page.screenshot(path=artifacts / "home.png", full_page=True)
    register(page, url)
    cookie = {c["name"]: c for c in page.context.cookies()}["crowdsky_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    frames = real_frames(NIGHT_1)[:3]
    page.set_input_files("#picker", [str(p) for p in frames])
    rows = page.locator("ul.files li")
    expect(rows).to_have_count(3)
    expect(page.locator("ul.files li.done")).to_have_count(3, timeout=60_000)
    expect(page.locator("#batch-text")).to_contain_text("3 of 3 files")
    expect(page.locator("#batch-bar")).to_have_attribute("style", re.compile(r"width: 100(\.0)?%"))
    for row in rows.all():
        expect(row.locator(".state")).to_contain_text("M 94")
    page.screenshot(path=artifacts / "upload.png", full_page=True)

    finalize = page.locator("#finalize")
    expect(finalize).to_be_enabled()
    finalize.click()
    expect(page.locator("#result")).to_contain_text("Queued 1 stacking job")

    page.goto(url + "/status")
    expect(page.locator("td.state")).to_contain_text("pending")
    stacked = deployment.run("stacker.py", "--once")
    assert stacked.returncode == 0, stacked.stderr[-2000:]
    page.reload()
    expect(page.locator("td.state")).to_contain_text("done")
    page.screenshot(path=artifacts / "status.png", full_page=True)

    page.goto(url + "/stacks")
    cards = page.locator("a.card")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("M 94")
    page.screenshot(path=artifacts / "gallery.png", full_page=True)
    cards.first.click()
    expect(page.locator("dl.numbers")).to_contain_text("Frames used")
    preview = page.locator("img.preview")
    expect(preview).to_be_visible()
    assert page.evaluate("document.querySelector('img.preview').naturalWidth") > 100
    page.screenshot(path=artifacts / "stack.png", full_page=True)

    with page.expect_download() as download_info:
        page.click("text=FITS")
    saved = tmp_path / "download.fits"
    download_info.value.save_as(saved)
    with fits.open(saved) as hdul:
        assert hdul[0].header["NCOMBINE"] >= 2
        assert hdul[0].data.shape[0] == 3

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(url + "/stacks")
    page.screenshot(path=artifacts / "gallery-phone.png", full_page=True)
    page.goto(url + "/upload")
    page.screenshot(path=artifacts / "upload-phone.png", full_page=True)


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
    response = page.request.post(url + "/login", form={"username": "orion", "password": "a long enough password"})
    assert response.status == 403
