"""Stacks know where they are on the sky, over real HTTP: real M 94 frames are stacked and plate solved
by the stacker, the API shows the WCS and the objects in the field, any spelling of a name finds the
stacks, and a stack with no OBJECT is filed under what its WCS shows."""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from astropy.io import fits

from tests.apps import ROOT, Deployment
from tests.frames import NIGHT_1, real_frames
from tests.sky_overlay import log_in, outline_off_blob, preview_box_of, scroll_to_picture, stretch, tolerance, zoom_in_at
from tests.test_plate_solve import M94, nucleus_xy

pytestmark = pytest.mark.skipif(shutil.which("solve-field") is None,
                                reason="astrometry.net is not installed (bash infra/test-tools.sh)")


def frame_with(path, shift=(0, 0), **cards) -> bytes:
    """The raw frame's bytes with header *cards* changed, pixels untouched unless *shift* (dx, dy) is
    given: then the sky moves by that many pixels along x and y, as if the mount had drifted (even
    numbers keep the Bayer pattern; the strips uncovered get the frame's median)."""
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        for key, value in cards.items():
            hdul[0].header[key] = value
        dx, dy = shift
        if dx or dy:
            raw = hdul[0].data
            moved = np.full_like(raw, np.median(raw))
            h, w = raw.shape
            moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = raw[max(-dy, 0):h - max(dy, 0),
                                                                               max(-dx, 0):w - max(dx, 0)]
            hdul[0].data = moved
        out = io.BytesIO()
        hdul.writeto(out)
    return out.getvalue()


def upload(user, named_bodies) -> None:
    session = user.new_session()
    for name, body in named_bodies:
        response = user.put_frame(session, name, body)
        assert response.status_code == 201, response.text
    assert user.post(f"/api/v1/sessions/{session}/finalize").status_code == 200


def settled(user) -> bool:
    """Every job of the user's (stacking, deep and crowd updates) has finished."""
    found = [c["job"] for s in user.get("/api/v1/status").json()["sessions"] for c in s["chunks"]]
    found += [u for s in user.get("/api/v1/status").json()["sessions"] for c in s["chunks"] for u in c["updates"]]
    return all(job and job["status"] in ("done", "failed") for job in found)


def stack_all(d: Deployment, expected: dict) -> None:
    """One stacker (--loop: no interpreter start per job) until every user sees as many stacks as expected."""
    stacker = subprocess.Popen([sys.executable, "stacker.py", "--loop"], cwd=ROOT, env=d.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not all(settled(user) and len(user.get("/api/v1/stacks").json()["stacks"]) == count
                      for user, count in expected.items()):
            assert time.monotonic() < deadline, "the stacks were not made in time"
            assert stacker.poll() is None, "the stacker exited"
            time.sleep(0.5)
    finally:
        stacker.terminate()
        stacker.wait(60)


def telescope_stacks(frames) -> tuple[bytes, bytes]:
    """FITS bytes of a stack of *frames* as a telescope would send it (no WCS), and of the same stack
    resampled to 0.6x with a focal length to match."""
    import cv2
    from lib.stacking import StackOptions, stack_files

    result = stack_files(frames, options=StackOptions(plate_solve=False))
    with fits.open(io.BytesIO(result.fits_bytes)) as hdul:
        header, image = hdul[0].header, hdul[0].data
        keep = fits.Header([card for card in header.cards
                            if card.keyword in ("OBJECT", "TELESCOP", "INSTRUME", "FILTER", "RA", "DEC", "FOCALLEN",
                                                "XPIXSZ", "YPIXSZ", "NCOMBINE", "EXPTIME", "DATE-OBS")])
    out = []
    for factor in (1.0, 0.6):
        picture = image if factor == 1.0 else np.stack(
            [cv2.resize(p, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA) for p in image])
        head = keep.copy()
        head["FOCALLEN"] = header["FOCALLEN"] * factor
        buffer = io.BytesIO()
        fits.PrimaryHDU(picture.astype(np.float32), header=head).writeto(buffer)
        out.append(buffer.getvalue())
    return out[0], out[1]


@pytest.fixture(scope="module")
def sky(tmp_path_factory):
    d = Deployment(tmp_path_factory.mktemp("sky") / "crowdsky", {})
    d.start_app()
    try:
        alice, bob = d.user("alice"), d.user("bob")
        frames = real_frames(NIGHT_1)
        upload(alice, [(p.name, p.read_bytes()) for p in frames[:4]])
        # bob's telescope wrote no OBJECT (frames of the same night, so other bytes: other frames) and
        # drifted 160 x 96 px between his first two frames (his preview is cropped well inside the FITS),
        # and he switched to the LP filter half-way through the quarter hour
        upload(bob, [(p.name, frame_with(p, shift=shift, OBJECT="")) for p, shift in zip(frames[:2], [(0, 0), (160, -96)])]
               + [(p.name, frame_with(p, OBJECT="", FILTER="LP")) for p in frames[2:4]])
        # carol uploads two stacks made elsewhere: an S50 stack, and the same resampled to 0.6x with the
        # optics of an S30-like telescope (FOCALLEN x 0.6); both join one deep stack
        carol = d.user("carol")
        s50, coarse = telescope_stacks(frames[:3])
        for name, body in (("s50-stack.fit", s50), ("coarse-stack.fit", coarse)):
            sent = requests.post(d.url + "/api/upload_stack.php", auth=("carol", "correct horse battery"),
                                 files={"file": (name, body)})
            assert sent.status_code == 200, sent.text
        stack_all(d, {alice: 2, bob: 4, carol: 3})     # 5 chunk or imported stacks, 4 deep stacks
        yield d, alice, bob, carol
    finally:
        d.stop_app()


def test_a_chunk_stack_shows_its_wcs_and_names_m94_on_its_nucleus(sky):
    d, alice, _, _ = sky
    [stack] = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"]
    assert stack["solved"] is True and stack["filter"] == "IRCUT"
    [job] = [j for s in alice.get("/api/v1/status").json()["sessions"] for c in s["chunks"] for j in [c["job"]]]
    assert job["message"].startswith("done; plate solved at 2.3"), job
    detail = alice.get(f"/api/v1/stacks/{stack['id']}").json()
    wcs = detail["wcs"]
    assert wcs["solved"] is True and wcs["scale_arcsec"] == pytest.approx(2.39, rel=0.03)
    assert len(wcs["footprint"]) == 4 and 0 <= wcs["rotation_deg"] < 360
    [m94] = [o for o in detail["objects"] if o["name"] == "M 94"]
    assert "NGC 4736" in m94["aliases"] and m94["type"] == "Galaxy"
    with fits.open(io.BytesIO(alice.get(stack["fits_url"]).content)) as hdul:
        assert hdul[0].header["PLTSOLVD"] is True
        image = hdul[0].data
    x, y = nucleus_xy(image, (m94["x"], m94["y"]))
    # the catalogue's position of the nucleus, through the stack's WCS, is on the nucleus in the pixels
    assert abs(x - m94["x"]) < 2 and abs(y - m94["y"]) < 2, (x, y, m94)
    assert abs(m94["ra"] - M94[0]) < 0.001 and abs(m94["dec"] - M94[1]) < 0.001


def test_a_chunk_stack_shows_its_photometry_as_its_fits_has_it(sky):
    """`GET /api/v1/stacks/<id>` and the technical card give the photometry the stacker wrote into the FITS;
    deep stacks are measured too."""
    d, alice, _, _ = sky
    [stack] = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"]
    photometry = alice.get(f"/api/v1/stacks/{stack['id']}").json()["photometry"]
    header = fits.getheader(io.BytesIO(alice.get(stack["fits_url"]).content))
    assert photometry["fwhm_arcsec"] == pytest.approx(header["FWHMARC"])
    assert photometry["zero_point"] == pytest.approx(header["MAGZPT"])
    assert photometry["zero_point_scatter"] == pytest.approx(header["MAGZPSIG"])
    assert photometry["sky_mag"] == pytest.approx(header["SKYMAG"])
    assert photometry["limiting_mag"] == pytest.approx(header["LIMMAG"])
    assert photometry["stars"] == header["MAGZPN"] >= 3
    assert 16 < photometry["sky_mag"] < 22 and 12 < photometry["limiting_mag"] < 20
    page = alice.get(f"/stacks/{stack['id']}").text
    assert f"{header['SKYMAG']:.2f} mag/arcsec² (V)" in page and f"{header['LIMMAG']:.1f} (V, 5σ point source)" in page
    # her deep stack (this chunk stack alone) is on its brightness scale, sky subtracted: no sky brightness
    [deep] = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "deep"]
    deep_photometry = alice.get(f"/api/v1/stacks/{deep['id']}").json()["photometry"]
    assert deep_photometry["zero_point"] == pytest.approx(photometry["zero_point"], abs=0.05)
    assert deep_photometry["sky_mag"] is None and deep_photometry["limiting_mag"] > 12


def test_the_deep_stack_carries_the_wcs_of_its_grid(sky):
    _, alice, _, _ = sky
    [deep] = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "deep"]
    detail = alice.get(f"/api/v1/stacks/{deep['id']}").json()
    assert detail["wcs"]["solved"] is True and [o["name"] for o in detail["objects"]] == ["M 94"]


@pytest.mark.parametrize("written", ["M94", "m 94", "NGC 4736", "ngc4736", "M 94"])
def test_any_spelling_finds_the_m94_stacks(sky, written):
    _, alice, bob, _ = sky
    found = alice.get("/api/v1/stacks", params={"object": written}).json()["stacks"]
    assert sorted(s["kind"] for s in found) == ["chunk", "deep"]
    assert len(bob.get("/api/v1/stacks", params={"object": written}).json()["stacks"]) == 4
    assert alice.get("/api/v1/stacks", params={"object": "M 31"}).json()["stacks"] == []


@pytest.mark.parametrize("odd", ["M", "NGC", "M 9999", "x" * 500, "'; DROP TABLE stacks; --", "%", "\u2603"])
def test_an_object_search_for_no_catalogue_name_finds_nothing_and_does_not_fail(sky, odd):
    _, alice, _, _ = sky
    answer = alice.get("/api/v1/stacks", params={"object": odd})
    assert answer.status_code == 200 and answer.json()["stacks"] == []
    assert alice.get("/stacks", params={"object": odd}).status_code == 200


def test_a_stack_without_object_is_filed_under_what_its_wcs_shows(sky):
    _, _, bob, _ = sky
    chunk_stacks = [s for s in bob.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"]
    assert [s["object"] for s in chunk_stacks] == ["M 94", "M 94"]


def test_ircut_and_lp_frames_never_share_a_chunk_or_a_deep_stack(sky):
    """One session, one quarter hour, one pointing, two filters: two chunks, two deep stacks."""
    _, _, bob, _ = sky
    listing = bob.get("/api/v1/stacks").json()["stacks"]
    by_kind = {kind: sorted((s["filter"], s["frames"]) for s in listing if s["kind"] == kind)
               for kind in ("chunk", "deep")}
    assert by_kind == {"chunk": [("IRCUT", 2), ("LP", 2)], "deep": [("IRCUT", 2), ("LP", 2)]}
    keys = {s["chunk_key"] for s in listing if s["kind"] == "chunk"}
    assert len(keys) == 1                # same block and pointing: the filter tells them apart


def test_the_gallery_filter_takes_any_spelling(sky):
    d, alice, _, _ = sky
    ids = {s["id"] for s in alice.get("/api/v1/stacks").json()["stacks"]}
    page = alice.get("/stacks", params={"object": "ngc4736"}).text
    assert all(f'href="/stacks/{i}"' in page for i in ids), page[:2000]
    assert 'href="/stacks/' not in alice.get("/stacks", params={"object": "M 31"}).text


# ------------------------------------------------------------------------------------ in the browser

def on_screen(page, x, y, shown):
    """Where FITS pixel (x, y) is shown now: the preview shows the box *shown* (the API's "preview",
    cropped to what most frames cover) with its first FITS row at the bottom."""
    box = page.locator("#preview").bounding_box()
    return (box["x"] + (x - shown["x0"] + 0.5) / shown["width"] * box["width"],
            box["y"] + (shown["y0"] + shown["height"] - 0.5 - y) / shown["height"] * box["height"])


def test_the_stack_page_overlays_objects_grid_pointer_coordinates_and_scale(sky, page, artifacts):
    d, alice, _, _ = sky
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    [stack] = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"]
    detail = alice.get(f"/api/v1/stacks/{stack['id']}").json()
    wcs, [m94] = detail["wcs"], [o for o in detail["objects"] if o["name"] == "M 94"]
    shown = detail["preview"]
    log_in(page, d.url, "alice")
    page.goto(f"{d.url}/stacks/{stack['id']}")
    outline = page.locator('.sky-overlay .sky-object[data-name="M 94"] polygon')
    outline.wait_for()
    expect_text = page.locator(".sky-overlay .sky-object text")
    assert expect_text.first.text_content() == "M 94"

    def outline_centre():
        box = outline.bounding_box()
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    # the outline sits on the object's pixel, before and after zooming in
    for zoom in (False, True):
        if zoom:
            page.click("[data-zoom=in]")
            page.click("[data-zoom=in]")
            page.wait_for_timeout(300)
        sx, sy = on_screen(page, m94["x"], m94["y"], shown)
        cx, cy = outline_centre()
        assert abs(cx - sx) < 3 and abs(cy - sy) < 3, (zoom, cx, cy, sx, sy)
    page.click("[data-zoom=fit]")
    scroll_to_picture(page)          # the zoom buttons sit below the fold of a portrait picture

    # RA/Dec under the pointer: on the nucleus it reads M 94's position (a screen pixel is ~2 image px)
    sx, sy = on_screen(page, m94["x"], m94["y"], shown)
    page.mouse.move(sx, sy)
    readout = page.locator("#sky-readout")
    assert readout.text_content().startswith("RA 12h 50m")
    ra, dec = float(readout.get_attribute("data-ra")), float(readout.get_attribute("data-dec"))
    assert abs(ra - m94["ra"]) * 3600 * 0.75 < 20 and abs(dec - m94["dec"]) * 3600 < 20, (ra, dec, m94)

    # the scale bar is as long as its label says, at the preview's scale
    bar = page.locator(".sky-scalebar .bar")
    arcmin = float(page.locator(".sky-scalebar").get_attribute("data-arcmin"))
    css_per_pixel = page.locator("#preview").bounding_box()["width"] / shown["width"]
    assert bar.bounding_box()["width"] == pytest.approx(arcmin * 60 / wcs["scale_arcsec"] * css_per_pixel, abs=2.5)

    # the grid is off until asked for; objects can be hidden
    assert not page.locator(".sky-grid").is_visible()
    page.check("input[name=sky-grid]")
    assert page.locator(".sky-grid polyline").count() >= 4
    shot(page, artifacts, "stack-sky-overlay")
    page.uncheck("input[name=sky-objects]")
    assert not outline.is_visible()
    assert not problems, problems


def shot(page, artifacts, name):
    page.screenshot(path=artifacts / f"{name}.png", full_page=True)


def test_the_sky_map_draws_each_solved_stack_as_its_footprint(sky, page):
    d, alice, _, _ = sky
    data = alice.get("/api/v1/skymap").json()
    at = {f: i for i, f in enumerate(data["fields"])}
    rows = {row[at["id"]]: row for row in data["stacks"]}
    assert len(rows) == 2                         # alice's chunk stack and her deep stack
    for stack_id, row in rows.items():
        wcs = alice.get(f"/api/v1/stacks/{stack_id}").json()["wcs"]
        assert row[at["footprint"]] == [[round(ra, 5), round(dec, 5)] for ra, dec in wcs["footprint"]]

    log_in(page, d.url, "alice")
    page.goto(d.url + "/map")
    outlines = page.locator("svg.skymap path.footprint")
    outlines.first.wait_for()
    assert outlines.count() == 2
    # the outline is the field's, not a dot: four corners, sides in the S50's 43′ × 76′ proportion
    corners = outlines.first.evaluate("""(p) => {
        const pts = [], d = p.getAttribute("d");
        for (const m of d.matchAll(/[ML]\\s*(-?[\\d.]+)[ ,](-?[\\d.]+)/g)) pts.push([+m[1], +m[2]]);
        return pts; }""")
    assert len(corners) == 4, corners
    sides = sorted(((corners[i][0] - corners[i - 1][0]) ** 2 + (corners[i][1] - corners[i - 1][1]) ** 2) ** 0.5
                   for i in range(4))
    assert 1.5 < sides[2] / sides[1] < 2.1 and sides[0] > 0.5


def test_an_s30_scale_stack_joins_the_deep_stack_placed_by_its_wcs(sky):
    """Telescope stacks are plate solved after import; one at 0.6x the S50's pixel scale is added to
    the same deep stack as the S50 one."""
    _, _, _, carol = sky
    listing = carol.get("/api/v1/stacks").json()["stacks"]
    imported = [s for s in listing if s["kind"] == "chunk"]
    scales = sorted(carol.get(f"/api/v1/stacks/{s['id']}").json()["wcs"]["scale_arcsec"] for s in imported)
    assert scales == [pytest.approx(2.38, abs=0.03), pytest.approx(3.96, abs=0.05)]
    updates = [u for s in carol.get("/api/v1/status").json()["sessions"] for c in s["chunks"] for u in c["updates"]]
    # one deep-stack update each, or one for both when the second came while the first still waited
    # (a pending update takes in every chunk stack recorded before it runs)
    assert 1 <= len(updates) <= 2 and all(u["status"] == "done" for u in updates), updates
    [deep] = [s for s in listing if s["kind"] == "deep"]
    assert deep["frames"] == sum(s["frames"] for s in imported) == 6
    detail = carol.get(f"/api/v1/stacks/{deep['id']}").json()
    assert sorted(s["id"] for s in detail["chunk_stacks"]) == sorted(s["id"] for s in imported)
    assert detail["wcs"]["solved"] and [o["name"] for o in detail["objects"]] == ["M 94"]
    with fits.open(io.BytesIO(carol.get(deep["fits_url"]).content)) as hdul:
        # each contribution's brightness factor onto the group's scale is in SOURCES (it was LASTSCAL, the
        # last one's, before deep stacks were rebuilt from their sources)
        assert hdul[0].header["NSTACKS"] == 2
        assert list(hdul["SOURCES"].data["SCALE"]) == [pytest.approx(1.0, rel=0.15)] * 2



def test_the_m94_outline_is_drawn_on_the_galaxy_the_cropped_preview_shows(sky, page, artifacts):
    """On real frames, bob's telescope drifted between frames, so the preview is cropped well inside the
    FITS: the centre of M 94's outline as the page draws it is within a few screen pixels of the brightest
    blob on screen (the galaxy's core), at the fit, zoomed in, panned, and over the stretch canvas."""
    d, _, bob, _ = sky
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    [stack] = [s for s in bob.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk" and s["filter"] == "IRCUT"]
    detail = bob.get(f"/api/v1/stacks/{stack['id']}").json()
    wcs, shown = detail["wcs"], detail["preview"]
    assert shown == preview_box_of(bob.get(stack["fits_url"]).content, bob.get(stack["preview_url"]).content)
    # the crop is in effect, and not symmetric: a page drawing on the whole FITS would be far off
    assert wcs["width"] - shown["width"] > 60 and shown["x0"] != wcs["width"] - shown["x0"] - shown["width"], shown
    log_in(page, d.url, "bob")
    page.goto(f"{d.url}/stacks/{stack['id']}")
    page.locator('.sky-overlay .sky-object[data-name="M 94"] polygon').wait_for()
    page.wait_for_function("() => document.getElementById('preview').complete")
    scroll_to_picture(page)

    def check(name):
        found = outline_off_blob(page, "M 94", shown["width"], artifacts / f"{name}.png")
        assert found["off"] < tolerance(found["css_per_pixel"]), (name, found)
        return found

    at_fit = check("stack-m94-crop-fit")
    label_at_fit = page.locator('.sky-overlay .sky-object[data-name="M 94"] text').bounding_box()
    # where a page taking the preview for the whole FITS would put M 94: more than the tolerance away
    m94 = next(o for o in detail["objects"] if o["name"] == "M 94")
    box = page.locator("#preview").bounding_box()
    naive = (box["x"] + (m94["x"] + 0.5) / wcs["width"] * box["width"],
             box["y"] + (wcs["height"] - 0.5 - m94["y"]) / wcs["height"] * box["height"])
    assert np.hypot(naive[0] - at_fit["blob"][0], naive[1] - at_fit["blob"][1]) > 2 * tolerance(at_fit["css_per_pixel"])

    zoom_in_at(page, *at_fit["drawn"], clicks=2)
    zoomed = check("stack-m94-crop-zoomed")
    assert zoomed["css_per_pixel"] > 2 * at_fit["css_per_pixel"]
    # drawn at screen scale, not scaled with the picture: the label keeps its size and the outline is a
    # 1.5 px line on screen at any zoom (scaled with the picture's layer, both came out blurred and fat)
    scaled = page.locator(".sky-overlay").evaluate(
        "(s) => { for (let e = s; e; e = e.parentElement) if (getComputedStyle(e).transform !== 'none') return true;"
        " return false; }")
    label = page.locator('.sky-overlay .sky-object[data-name="M 94"] text').bounding_box()
    stroke = page.locator('.sky-overlay .sky-object[data-name="M 94"] polygon').evaluate(
        "(p) => getComputedStyle(p).strokeWidth")
    assert not scaled and stroke == "1.5px", (scaled, stroke)
    assert abs(label["height"] - label_at_fit["height"]) < 2 and abs(label["width"] - label_at_fit["width"]) < 2
    page.locator("#viewport").focus()
    for key in ("ArrowLeft", "ArrowUp"):
        page.keyboard.press(key)
    check("stack-m94-crop-panned")

    # a slider moved: the stretch canvas (the rendition, of the same crop) lies under the overlay
    stretch(page)
    assert page.locator("#stretch-canvas").is_visible()
    check("stack-m94-crop-stretched")
    page.click("[data-zoom=fit]")
    scroll_to_picture(page)
    check("stack-m94-crop-stretched-fit")
    assert not problems, problems
