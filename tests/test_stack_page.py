"""The stack page's picture in headless Chromium: the stretch control redraws at once, a portrait
stack fills a tall viewer, and the JPEG / 16-bit TIFF downloads are the picture as shown.

The stack is made here, not stacked: a synthetic portrait field (tests/test_preview.py) written as a
stack FITS with its preview factors in the header, and its preview PNG, put into the deployment's
archive folder with a stack row. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import io
import os
import time

import cv2
import numpy as np
import requests
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image
from playwright.sync_api import expect

from lib import pictures, stacks
from lib.stacking import preview
from tests.test_browser import register, shot
from tests.test_gallery import database, put_in_archive, user_id
from tests.test_preview import make_field


def make_stack(deployment, owner: str, *, job_id: int = 5_000_000, obj: str = "M 94", solved: bool = False,
               rendering_in_header: bool = True, **row) -> int:
    """A stack row of *owner* with a real FITS (preview factors in its header unless not
    *rendering_in_header*, as deep stacks were written before) and preview PNG; *solved*: with a TAN
    WCS centred on M 94 at the S50's 2.39″/px, and the row's sky columns from it."""
    image, cover, fluxes, _ = make_field()
    # Seestar-sized (portrait 960 x 1440): each pixel of the field becomes 4 x 4
    image, cover = (np.repeat(np.repeat(a, 4, axis=-2), 4, axis=-1) for a in (image, cover))
    fluxes = fluxes * 16
    plan = preview.plan_rendering(image, cover, fluxes)
    primary = fits.PrimaryHDU(image)
    for key, value, comment in plan.header_cards() if rendering_in_header else ():
        primary.header[key] = (value, comment)
    if solved:
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crpix = [(image.shape[2] + 1) / 2, (image.shape[1] + 1) / 2]
        wcs.wcs.crval = [192.7209, 41.1203]
        wcs.wcs.cdelt = [-2.39 / 3600, 2.39 / 3600]
        primary.header.update(wcs.to_header())
        primary.header["PLTSOLVD"] = True
        sky = stacks.sky_columns(primary.header)
        sky.pop("shown_object")
        row = {**sky, **row}
    primary.header["OBJECT"] = obj
    for key, value in (("TELESCOP", "S50_12d98769"), ("INSTRUME", "Seestar S50"), ("FILTER", "IRCUT"),
                       ("FOCALLEN", 250), ("XPIXSZ", 2.9), ("GAIN", 80), ("EXPTIME", 110.0), ("CCD-TEMP", 23.4)):
        primary.header[key] = value
    out = io.BytesIO()
    fits.HDUList([primary, fits.ImageHDU(cover, name="COVERAGE")]).writeto(out)
    fits_key, preview_key = f"stacks/chunk/{job_id}/t/stack.fits", f"stacks/chunk/{job_id}/t/preview.png"
    put_in_archive(deployment, fits_key, out.getvalue())
    put_in_archive(deployment, preview_key, preview.encode_png(preview.render(image, plan)))
    db = database(deployment)
    values = {"job_id": job_id, "kind": "chunk", "owner_id": user_id(db, owner), "chunk_id": None,
              "chunk_key": "20250409.20_HP000123", "object": obj, "telescope": "S50_12d98769",
              "ra": 192.72, "dec": 41.12, "frames": 11, "frames_rejected": 1, "exposure_s": 110.0,
              "date_beg": "2025-04-09T20:54:10.000", "date_end": "2025-04-09T20:57:26.552",
              "fits_key": fits_key, "preview_key": preview_key, "fits_size": len(out.getvalue()),
              "fwhm_px": 3.2, "noise": None, "created_at": time.time(), **row}
    db["stacks"].insert(values)
    return db["stacks"].find_one(job_id=job_id)["id"]


SKY_MEDIAN = """() => {
  const c = document.getElementById('stretch-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const g = [];
  for (let i = 1; i < d.length; i += 4 * 7) g.push(d[i]);
  g.sort((a, b) => a - b);
  return g[g.length >> 1];
}"""


def set_slider(page, selector: str, value: float) -> None:
    """Move a slider as a person would (an input event) and wait for the canvas to be redrawn."""
    before = page.evaluate("document.getElementById('picture').dataset.stretched || ''")
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
                          value)
    page.wait_for_function("(before) => (document.getElementById('picture').dataset.stretched || '') !== before",
                           arg=before)


def test_stretch_control_redraws_and_downloads_are_as_shown(deployment, page, artifacts, tmp_path):
    url = deployment.url
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    register(page, url, "carina")
    stack_id = make_stack(deployment, "carina")
    renditions = []
    page.on("request", lambda r: renditions.append(r.url) if "rendition.bin" in r.url else None)
    page.goto(f"{url}/stacks/{stack_id}")
    stretch = page.locator("#stretch")
    expect(stretch).to_be_visible()
    expect(page.locator("#stretch-black-value")).to_have_text("2.8 σ")   # the preview's own, from the header
    canvas = page.locator("#stretch-canvas")
    expect(canvas).to_be_hidden()                        # until touched, the full-size preview PNG is shown

    # a portrait stack fills a tall viewer: the picture takes the viewport's whole width and height
    page.wait_for_function("() => document.querySelector('.stack').classList.contains('portrait')")
    picture = page.locator("#preview").bounding_box()
    viewport = page.locator("#viewport").bounding_box()
    assert picture["width"] >= 0.97 * viewport["width"] and picture["height"] >= 0.97 * viewport["height"]
    assert picture["height"] >= 0.8 * 900
    shot(page, artifacts, "stack-portrait")

    # the technical card: the model, not only the serial, and the FWHM in arcseconds (px × scale)
    card = page.locator("#technical-card")
    for text in ("ZWO Seestar S50", "S50_12d98769", "IR-cut", "80", "23.4 °C", "250 mm · 2.39″/px",
                 "11 used, 1 rejected", "110 s (11 × 10 s)", "7.7″ (3.20 px)"):
        expect(card).to_contain_text(text)

    # the sliders redraw the canvas: a lower black point darkens the sky, more strength lifts it
    assert renditions == []                              # fetched only when someone reaches for a slider
    set_slider(page, "#stretch-black", 2.8)
    assert len(renditions) == 1
    expect(canvas).to_be_visible()
    default_sky = page.evaluate(SKY_MEDIAN)
    assert 30 <= default_sky <= 64                       # the preview's own stretch: sky at ~20 % grey
    set_slider(page, "#stretch-black", 0.5)
    darker = page.evaluate(SKY_MEDIAN)
    assert darker < default_sky - 10
    strength = float(page.eval_on_selector("#stretch-strength", "el => el.value"))
    set_slider(page, "#stretch-strength", min(100, strength + 15))
    lifted = page.evaluate(SKY_MEDIAN)
    assert lifted > darker + 5
    expect(page.locator("#stretch-black-value")).to_have_text("0.5 σ")
    shot(page, artifacts, "stack-stretched")

    # "as shown": the server renders the same black point and strength at full size
    jpeg_href = page.get_attribute("#download-jpeg", "href")
    assert "black=0.50" in jpeg_href and "strength=" in jpeg_href
    with page.expect_download() as download_info:
        page.click("#download-jpeg")
    saved = tmp_path / "shown.jpg"
    download_info.value.save_as(saved)
    with Image.open(saved) as jpeg:
        assert jpeg.format == "JPEG"
        shown = np.asarray(jpeg.convert("RGB"))
    with Image.open(io.BytesIO(requests.get(f"{url}/stacks/{stack_id}/preview.png",
                                            cookies=_cookies(page)).content)) as png:
        assert shown.shape[:2] == (png.height, png.width)          # full size, the preview's crop
    assert abs(float(np.median(shown[..., 1])) - lifted) <= 4         # the canvas and the file agree

    with page.expect_download() as download_info:
        page.click("#download-tiff")
    tiff_path = tmp_path / "shown.tiff"
    download_info.value.save_as(tiff_path)
    tiff = cv2.imread(str(tiff_path), cv2.IMREAD_UNCHANGED)
    assert tiff.dtype == np.uint16 and tiff.shape == shown.shape
    assert abs(float(np.median(tiff[..., 1])) / 257 - float(np.median(shown[..., 1]))) <= 2

    # Reset goes back to the preview PNG
    page.click("#stretch-reset")
    expect(canvas).to_be_hidden()
    assert not problems, problems


def test_picture_downloads_refuse_bad_settings_and_hide_private_stacks(deployment):
    owner = deployment.user("lyra")
    stack_id = make_stack(deployment, "lyra", job_id=5_000_100)
    base = f"{deployment.url}/stacks/{stack_id}/picture"
    for query, word in (("?black=dark", "black"), ("?strength=0", "strength"), ("?black=1e9", "black")):
        response = owner.http.get(base + ".jpg" + query)
        assert response.status_code == 400 and f"{word} must be" in response.text, response.text
    assert owner.http.get(base + ".tiff?black=1&strength=100").status_code == 200
    stranger = deployment.user("thief")
    for path in ("picture.jpg", "picture.tiff", "rendition.bin"):
        assert stranger.http.get(f"{deployment.url}/stacks/{stack_id}/{path}").status_code == 404


def _cookies(page) -> dict:
    return {c["name"]: c["value"] for c in page.context.cookies()}


def test_rendition_cache_is_pruned_of_stacks_gone_and_unused(deployment, tmp_path):
    db = database(deployment)
    owner = deployment.user("cetus").username
    stack_id = make_stack(deployment, owner, job_id=5_000_200)
    stack = db["stacks"].find_one(id=stack_id)
    cache = tmp_path / "pictures"
    meta, data = pictures.rendition(pictures_archive(deployment), cache, stack)
    assert len(data) == meta["width"] * meta["height"] * 6
    current = cache / pictures.rendition_name(stack)
    gone = cache / pictures.rendition_name({"id": stack_id, "fits_key": "stacks/chunk/old/stack.fits"})
    fresh_gone = cache / pictures.rendition_name({"id": stack_id + 1, "fits_key": "stacks/chunk/new/stack.fits"})
    for path in (gone, fresh_gone):
        path.write_bytes(b"{}\n")
    hour_ago = time.time() - 7200
    os.utime(gone, (hour_ago, hour_ago))
    assert pictures.prune_renditions(db, cache) == [gone.name]          # the current one and a fresh one stay
    month_ago = time.time() - 31 * 86400
    os.utime(current, (month_ago, month_ago))
    assert pictures.rendition(pictures_archive(deployment), cache, stack)[0] == meta   # a use renews it
    assert pictures.prune_renditions(db, cache) == []
    os.utime(current, (month_ago, month_ago))
    assert pictures.prune_renditions(db, cache) == [current.name]


def pictures_archive(deployment):
    """The deployment's archive (local folder storage), opened as the app opens it."""
    from lib.storage import FileStorage
    return FileStorage(deployment.data_dir / "archive", "archive")


def test_the_overlay_draws_on_a_preview_that_records_its_crop_and_not_on_one_that_does_not(deployment, page):
    """The API gives the preview's box from the header (the whole FITS when the header has no rendering);
    the page draws the overlay on a preview of that box, and none (saying why) on a cropped preview whose
    header does not say so, as deep stacks were written before they recorded their rendering."""
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    register(page, deployment.url, "lyra")
    recorded = make_stack(deployment, "lyra", job_id=5_000_300, solved=True)
    unrecorded = make_stack(deployment, "lyra", job_id=5_000_301, solved=True, rendering_in_header=False)
    api = requests.Session()
    api.cookies.update({c["name"]: c["value"] for c in page.context.cookies()})
    for stack_id, drawn in ((recorded, True), (unrecorded, False)):
        detail = api.get(f"{deployment.url}/api/v1/stacks/{stack_id}").json()
        width, height = Image.open(io.BytesIO(api.get(f"{deployment.url}/stacks/{stack_id}/preview.png").content)).size
        assert detail["wcs"]["solved"] and any(o["name"] == "M 94" for o in detail["objects"])
        if drawn:
            assert (detail["preview"]["width"], detail["preview"]["height"]) == (width, height)
            assert (width, height) != (detail["wcs"]["width"], detail["wcs"]["height"])     # cropped
        else:
            assert detail["preview"] == {"x0": 0, "y0": 0, "width": detail["wcs"]["width"],
                                         "height": detail["wcs"]["height"]}
        page.goto(f"{deployment.url}/stacks/{stack_id}")
        status = page.locator(".sky-status")
        expect(status).to_contain_text("plate solved")
        if drawn:
            expect(page.locator('.sky-overlay .sky-object[data-name="M 94"]')).to_have_count(1)
        else:
            expect(status).to_contain_text("no overlay")
            assert page.locator(".sky-overlay").count() == 0
    assert not problems, problems
