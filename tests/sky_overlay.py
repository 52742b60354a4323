"""The stack page's sky overlay checked against the picture itself, in a real browser: where the page
draws an object's outline, and where the brightest blob of the picture on screen is (the preview PNG, or
the stretch canvas over it). Neither side is computed from the other: the outline comes from the API's
WCS, object list and preview box through static/sky-overlay.js; the blob from the screen's pixels."""
from __future__ import annotations

import io

import cv2
import numpy as np
from astropy.io import fits


def log_in(page, url, username, password="correct horse battery"):
    page.goto(url + "/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form.stacked button[type=submit]")
    page.wait_for_load_state()


def preview_box_of(fits_bytes: bytes, png_bytes: bytes) -> dict:
    """The box of the FITS the preview PNG shows, from the FITS header's PV* crop, checked against the
    PNG's own size."""
    header = fits.getheader(io.BytesIO(fits_bytes))
    y0, y1, x0, x1 = (int(header[k]) for k in ("PVCROPY0", "PVCROPY1", "PVCROPX0", "PVCROPX1"))
    png = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR)
    assert png.shape[:2] == (y1 - y0, x1 - x0), (png.shape, (y0, y1, x0, x1))
    return {"x0": x0, "y0": y0, "width": x1 - x0, "height": y1 - y0}


def zoom_in_at(page, x: float, y: float, clicks: int = 1) -> None:
    """Zoom with the mouse wheel at page point (x, y), *clicks* notches."""
    page.mouse.move(x, y)
    for _ in range(clicks):
        page.mouse.wheel(0, -400)
    page.wait_for_function("() => document.getElementById('picture').style.transform.includes('scale')")


def stretch(page, black: str = "4") -> None:
    """Move the black-point slider as a person would (the rendition loads at the first touch) and wait
    until the stretch canvas shows the result."""
    page.locator("#stretch-black").evaluate(
        "(e) => { e.dispatchEvent(new Event('pointerdown', {bubbles: true})); e.value = '%s';"
        " e.dispatchEvent(new Event('input', {bubbles: true})); }" % black)
    page.wait_for_function("() => document.getElementById('picture').dataset.stretched !== undefined", timeout=60_000)


def scroll_to_picture(page) -> None:
    """Bring the viewer's middle to the window's middle (zoom buttons below the fold scroll the page)."""
    page.locator("#viewport").evaluate("(e) => e.scrollIntoView({block: 'center'})")


def picture_on_screen(page) -> dict:
    """The page box (CSS px, window coordinates) where the picture can be seen now: the preview's box
    within the viewer, the window, and below the sticky page header."""
    boxes = page.evaluate("""() => {
        const r = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
        const header = document.querySelector('header.top');
        const below = header && getComputedStyle(header).position === 'sticky' ? header.getBoundingClientRect().bottom : 0;
        return [r(document.getElementById('viewport')), r(document.getElementById('preview')),
                [0, Math.max(0, below), innerWidth, innerHeight]]; }""")
    left, top = max(b[0] for b in boxes), max(b[1] for b in boxes)
    right, bottom = min(b[2] for b in boxes), min(b[3] for b in boxes)
    assert right - left > 50 and bottom - top > 50, boxes
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}


def brightest_blob(page, clip: dict, sigma: float) -> tuple[float, float]:
    """Page (x, y) of the brightest blob the browser shows inside *clip*: the screen's luminance
    smoothed with a Gaussian of *sigma* CSS px (wider than a star, so a galaxy's core wins), its
    maximum refined by the centroid of the smoothed light above 90 % of it around that point."""
    # the window as it is (a clip would be taken from the document, not the scrolled window), then cut
    window = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
    scale = window.shape[1] / page.evaluate("innerWidth")      # device pixels per CSS pixel
    rgb = window[round(clip["y"] * scale):round((clip["y"] + clip["height"]) * scale),
                 round(clip["x"] * scale):round((clip["x"] + clip["width"]) * scale)]
    lum = cv2.GaussianBlur(rgb.mean(axis=2), (0, 0), sigma * scale)
    py, px = np.unravel_index(np.argmax(lum), lum.shape)
    r = int(3 * sigma * scale) + 1
    y0, x0 = max(0, py - r), max(0, px - r)
    patch = lum[y0:py + r + 1, x0:px + r + 1]
    weight = np.clip(patch - 0.9 * lum[py, px], 0, None)
    yy, xx = np.mgrid[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]]
    return (round(clip["x"] * scale) / scale + (float((weight * xx).sum() / weight.sum()) + 0.5) / scale,
            round(clip["y"] * scale) / scale + (float((weight * yy).sum() / weight.sum()) + 0.5) / scale)


def outline_centre(page, name: str) -> tuple[float, float]:
    """Page (x, y) of the middle of the object's outline as the overlay draws it."""
    box = page.locator(f'.sky-overlay .sky-object[data-name="{name}"] polygon').bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def outline_off_blob(page, name: str, shown_width: int, screenshot=None) -> dict:
    """How far (CSS px) the overlay draws *name*'s outline from the brightest blob on screen, with the
    objects shown for the outline and hidden for the blob (their light would count as picture).
    shown_width: FITS columns the preview shows (the API's preview.width). *screenshot*: a path for a
    picture of the page with the overlay."""
    # toggled by script: Playwright's check() would scroll the toggle into view, and the picture with it
    show = "(e, on) => { if (e.checked !== on) e.click(); }"
    objects = page.locator("input[name=sky-objects]")
    objects.evaluate(show, True)
    drawn = outline_centre(page, name)
    if screenshot:
        page.screenshot(path=screenshot)
    objects.evaluate(show, False)
    css_per_pixel = page.locator("#preview").bounding_box()["width"] / shown_width
    blob = brightest_blob(page, picture_on_screen(page), max(3.0, 8 * css_per_pixel))
    objects.evaluate(show, True)
    assert outline_centre(page, name) == drawn              # nothing moved meanwhile
    return {"off": float(np.hypot(drawn[0] - blob[0], drawn[1] - blob[1])), "drawn": drawn, "blob": blob,
            "css_per_pixel": css_per_pixel}


def tolerance(css_per_pixel: float) -> float:
    """A few screen pixels: the catalogue's centre is within 2 FITS px of the nucleus, and the blob's
    centroid of a saturated core is good to a pixel or two of the picture."""
    return max(4.0, 3.5 * css_per_pixel)
