"""Deep and crowd stacks with the real M 94 frames: two owners, two telescopes, two nights."""
from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits

from lib.stacking import deep
from lib.stacking.normalize import sky_level_and_noise
from tests.frames import NIGHT_1, NIGHT_2, real_frames
from tests.sky_overlay import log_in, outline_off_blob, preview_box_of, scroll_to_picture, stretch, tolerance, zoom_in_at


def upload_night(user, night):
    session = user.new_session()
    for path in real_frames(night):
        assert user.put_frame(session, path.name, path.read_bytes()).status_code == 201
    assert user.post(f"/api/v1/sessions/{session}/finalize").status_code == 200


def fits_of(user, stack) -> fits.HDUList:
    return fits.open(io.BytesIO(user.get(stack["fits_url"]).content))


def normalised_noise(image: np.ndarray, reference: deep.Running) -> float:
    """Sky noise of an image on the reference's brightness scale, measured in the central half."""
    measured = deep.measure(image)
    scale = deep.flux_scale(deep.luminance(image) * np.float32(deep.ADU), measured,
                            deep.register_onto(measured, reference), reference)
    h, w = image.shape[1:]
    centre = deep.luminance(image)[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    return sky_level_and_noise(centre)[1] * scale


@pytest.fixture(scope="module")
def crowd_site(tmp_path_factory):
    from tests.apps import Deployment
    d = Deployment(tmp_path_factory.mktemp("crowd"), {})
    d.start_app()
    users = {name: d.user(name) for name in ("alice", "bob", "carol")}
    for name in ("alice", "bob"):
        assert users[name].http.patch(f"{d.url}/api/v1/me", json={"share_with_crowd": True}).status_code == 200
    upload_night(users["alice"], NIGHT_1)
    upload_night(users["bob"], NIGHT_2)
    upload_night(users["carol"], NIGHT_2)          # carol does not share
    d.drain_queue()
    yield d, users
    d.stop_app()


def test_one_crowd_stack_adds_up_both_sharing_owners(crowd_site):
    d, users = crowd_site
    alice = users["alice"]
    listing = alice.get("/api/v1/stacks").json()["stacks"]
    crowd = [s for s in listing if s["kind"] == "crowd"]
    assert len(crowd) == 1, listing
    crowd = alice.get(f"/api/v1/stacks/{crowd[0]['id']}").json()
    assert crowd["object"] == "M 94"
    own = {name: [s for s in users[name].get("/api/v1/stacks").json()["stacks"]
                  if s["kind"] == "chunk" and s["owner"] == name][0] for name in ("alice", "bob")}

    credited = {c["owner"]: c for c in crowd["contributors"]}
    assert set(credited) == {"alice", "bob"}
    for name in ("alice", "bob"):
        assert credited[name]["frames"] == own[name]["frames"]
        assert credited[name]["exposure_s"] == pytest.approx(own[name]["exposure_s"])
    assert crowd["owners"] == 2 and crowd["nights"] == 2
    assert crowd["frames"] == own["alice"]["frames"] + own["bob"]["frames"]
    assert crowd["exposure_s"] == pytest.approx(own["alice"]["exposure_s"] + own["bob"]["exposure_s"])

    with fits_of(alice, crowd) as hdul:
        header = hdul[0].header
        assert header["NCOMBINE"] == crowd["frames"]
        assert header["EXPTIME"] == pytest.approx(crowd["exposure_s"])
        assert "SITELAT" not in header and "SITELONG" not in header
        image = hdul[0].data.astype(np.float32)
        weight = hdul["WEIGHT"].data
        stars = hdul["STARS"].data
        reference = deep.Running(total=image * weight, weight=weight,
                                 ref_xy=np.column_stack([stars["X"], stars["Y"]]), ref_flux=np.asarray(stars["FLUX"]))

    crowd_noise = normalised_noise(image, reference)
    for name in ("alice", "bob"):
        with fits_of(users[name], own[name]) as hdul:
            own_noise = normalised_noise(hdul[0].data.astype(np.float32), reference)
        assert crowd_noise < own_noise, (name, crowd_noise, own_noise)


def test_every_owner_has_a_deep_stack_of_their_own(crowd_site):
    d, users = crowd_site
    for name in ("alice", "bob", "carol"):
        mine = [s for s in users[name].get("/api/v1/stacks").json()["stacks"]
                if s["kind"] == "deep" and s["owner"] == name]
        assert len(mine) == 1
        detail = users[name].get(f"/api/v1/stacks/{mine[0]['id']}").json()
        assert [c["owner"] for c in detail["contributors"]] == [name]
        assert len(detail["chunk_stacks"]) == 1


def test_deep_and_crowd_stacks_carry_honest_metadata(crowd_site):
    """Like a chunk stack, a deep or crowd stack names its telescopes and cameras, keeps the grid's
    optics, its dates and a measured median FWHM and noise, in its FITS, its API answer and its page."""
    d, users = crowd_site
    alice = users["alice"]
    listing = alice.get("/api/v1/stacks").json()["stacks"]
    chunks = {s["owner"]: s for s in listing if s["kind"] == "chunk"}
    crowd = [s for s in listing if s["kind"] == "crowd"][0]
    deep = [s for s in listing if s["kind"] == "deep" and s["owner"] == "alice"][0]
    for stack, owners in ((crowd, ("alice", "bob")), (deep, ("alice",))):
        with fits_of(alice, stack) as hdul:
            header = hdul[0].header
            telescopes = {chunks[o]["telescope"] for o in owners}
            assert set(header["TELESCOP"].split(", ")) == telescopes
            assert header["INSTRUME"]
            assert header["FOCALLEN"] > 0 and header["XPIXSZ"] > 0
            assert header["DATE-OBS"] == header["DATE-BEG"] == min(chunks[o]["date_beg"] for o in owners)
            assert header["DATE-END"] == max(chunks[o]["date_end"] for o in owners)
            assert header["FWHM"] > 1 and header["BGNOISE"] > 0
        view = alice.get(f"/api/v1/stacks/{stack['id']}").json()
        assert set(view["telescope"].split(", ")) == telescopes
        assert view["fwhm_px"] == pytest.approx(header["FWHM"]) and view["noise"] == pytest.approx(header["BGNOISE"])
        page = alice.get(f"/stacks/{stack['id']}").text
        assert f"{header['FWHM']:.2f} px" in page
        for telescope in telescopes:
            assert telescope in page


def test_a_non_sharing_owner_stays_private(crowd_site):
    d, users = crowd_site
    crowd = [s for s in users["alice"].get("/api/v1/stacks").json()["stacks"] if s["kind"] == "crowd"][0]
    detail = users["alice"].get(f"/api/v1/stacks/{crowd['id']}").json()
    assert "carol" not in {c["owner"] for c in detail["contributors"]}
    assert all(s["owner"] != "carol" for s in detail["chunk_stacks"])
    for name in ("alice", "bob"):
        seen = users[name].get("/api/v1/stacks").json()["stacks"]
        assert all(s["owner"] != "carol" for s in seen)
    carols = [s for s in users["carol"].get("/api/v1/stacks").json()["stacks"] if s["owner"] == "carol"]
    assert {s["kind"] for s in carols} == {"chunk", "deep"}
    for stack in carols:
        assert users["alice"].get(f"/api/v1/stacks/{stack['id']}").status_code == 404
        assert users["alice"].get(stack["fits_url"]).status_code == 404


def test_an_owner_who_stops_sharing_leaves_the_crowd_stack_at_once(crowd_site):
    d, users = crowd_site
    alice, bob = users["alice"], users["bob"]
    crowd = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "crowd"][0]
    assert bob.http.patch(f"{d.url}/api/v1/me", json={"share_with_crowd": False}).status_code == 200

    # At once: the crowd stack that held bob's frames is gone from every listing and download.
    assert all(s["kind"] != "crowd" for s in alice.get("/api/v1/stacks").json()["stacks"])
    assert alice.get(f"/api/v1/stacks/{crowd['id']}").status_code == 404
    assert alice.get(crowd["fits_url"]).status_code == 404

    # Then it is rebuilt from what remains: alice's frames only.
    d.drain_queue()
    rebuilt = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "crowd"]
    assert len(rebuilt) == 1 and rebuilt[0]["id"] == crowd["id"]
    detail = alice.get(f"/api/v1/stacks/{crowd['id']}").json()
    assert [c["owner"] for c in detail["contributors"]] == ["alice"]
    alice_chunk = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"][0]
    assert detail["frames"] == alice_chunk["frames"] and detail["owners"] == 1
    with fits_of(alice, detail) as hdul:
        assert hdul[0].header["NCOMBINE"] == alice_chunk["frames"]


def test_two_updates_of_one_deep_stack_at_once_each_count_once(tmp_path):
    """Two stackers (``--jobs 2``) add two nights to one deep stack at the same moment: one commits,
    the other finds the stack moved on, is retried on the new version, and both nights count once."""
    from tests.apps import Deployment
    d = Deployment(tmp_path / "crowdsky", {"CROWDSKY_RETRY_BACKOFF_SECONDS": "0"})
    d.start_app()
    try:
        owner = d.user("dora")
        upload_night(owner, NIGHT_1)
        upload_night(owner, NIGHT_2)
        for _ in range(2):                     # the two chunk jobs, then the two deep jobs, in pairs
            both = d.run("stacker.py", "--once", "--jobs", "2")
            assert both.returncode == 0, both.stderr[-2000:]
        d.drain_queue()
        listing = owner.get("/api/v1/stacks").json()["stacks"]
        chunks = [s for s in listing if s["kind"] == "chunk"]
        deep_stacks = [s for s in listing if s["kind"] == "deep"]
        assert len(chunks) == 2 and len(deep_stacks) == 1
        detail = owner.get(f"/api/v1/stacks/{deep_stacks[0]['id']}").json()
        assert sorted(s["id"] for s in detail["chunk_stacks"]) == sorted(s["id"] for s in chunks)
        with fits_of(owner, detail) as hdul:
            assert hdul[0].header["NCOMBINE"] == sum(s["frames"] for s in chunks)
            assert hdul[0].header["NSTACKS"] == 2
    finally:
        d.stop_app()


def test_a_stack_with_coarser_pixels_registers_onto_the_grid(crowd_site):
    """An S30's pixels cover ~1.7x the sky of an S50's: its stars are narrow and its field scaled, and
    it must still be added to a crowd stack on an S50 grid (here: an S50 stack resampled to 0.6x)."""
    import cv2

    d, users = crowd_site
    alice = users["alice"]
    own = [s for s in alice.get("/api/v1/stacks").json()["stacks"] if s["kind"] == "chunk"][0]
    with fits_of(alice, own) as hdul:
        image = hdul[0].data.astype(np.float32)
        coverage = hdul["COVERAGE"].data.astype(np.float32)
    running = deep.start(image, coverage, deep.measure(image))
    coarse = np.stack([cv2.resize(plane, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA) for plane in image])
    coarse_coverage = cv2.resize(coverage, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)

    measured = deep.measure(coarse)
    matrix = deep.register_onto(measured, running)
    assert np.hypot(matrix[0, 0], matrix[1, 0]) == pytest.approx(1 / 0.6, rel=0.005)
    scale = deep.add(running, coarse, coarse_coverage, measured)
    assert scale == pytest.approx(1.0, rel=0.1)   # the same sky, so the same brightness per grid pixel


def test_deep_and_crowd_stack_pages_draw_m94_on_the_galaxy_and_work(crowd_site, page, artifacts):
    """A deep and a crowd stack of the real frames, their previews cropped to what most of the sum covers:
    the FITS header records the crop the PNG shows, the API gives it, and the page draws M 94's outline
    on the galaxy on screen, at the fit, zoomed in and over the stretch canvas; the page has its
    technical card and a stretch control that starts at the header's stretch; only the owner's deep
    stack offers Delete."""
    d, users = crowd_site
    alice = users["alice"]
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    log_in(page, d.url, "alice")
    listing = alice.get("/api/v1/stacks").json()["stacks"]
    for kind in ("deep", "crowd"):
        [stack] = [s for s in listing if s["kind"] == kind and (kind == "crowd" or s["owner"] == "alice")]
        detail = alice.get(f"/api/v1/stacks/{stack['id']}").json()
        shown = detail["preview"]
        assert shown == preview_box_of(alice.get(stack["fits_url"]).content, alice.get(stack["preview_url"]).content)
        assert (shown["width"], shown["height"]) != (detail["wcs"]["width"], detail["wcs"]["height"]), shown
        page.goto(f"{d.url}/stacks/{stack['id']}")
        page.locator('.sky-overlay .sky-object[data-name="M 94"] polygon').wait_for()
        page.wait_for_function("() => document.getElementById('preview').complete")
        assert page.locator("#technical-card").is_visible()
        # the sliders start at the header's stretch, with no 4 MB rendition fetched for a mere look
        assert page.locator("#stretch").is_visible() and page.locator("#stretch").get_attribute("data-black")
        assert page.locator("#stretch-black-value").text_content().endswith("σ")
        assert page.locator("#delete-stack").count() == (1 if kind == "deep" else 0)
        scroll_to_picture(page)
        found = outline_off_blob(page, "M 94", shown["width"], artifacts / f"stack-{kind}-m94-fit.png")
        assert found["off"] < tolerance(found["css_per_pixel"]), (kind, found)
        zoom_in_at(page, *found["drawn"], clicks=2)
        zoomed = outline_off_blob(page, "M 94", shown["width"], artifacts / f"stack-{kind}-m94-zoomed.png")
        assert zoomed["off"] < tolerance(zoomed["css_per_pixel"]), (kind, zoomed)
        stretch(page)
        stretched = outline_off_blob(page, "M 94", shown["width"], artifacts / f"stack-{kind}-m94-stretched.png")
        assert stretched["off"] < tolerance(stretched["css_per_pixel"]), (kind, stretched)
    assert not problems, problems

    # last, as it changes the site: the deep stack's Delete button, confirmed, deletes it and only it
    [deep] = [s for s in listing if s["kind"] == "deep" and s["owner"] == "alice"]
    [chunk] = [s for s in listing if s["kind"] == "chunk" and s["owner"] == "alice"]
    page.goto(f"{d.url}/stacks/{deep['id']}")
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    with page.expect_navigation():
        page.click("#delete-stack button[type=submit]")
    assert asked and "deep stack" in asked[0] and page.url.endswith("/stacks")
    assert alice.get(f"/api/v1/stacks/{deep['id']}").status_code == 404
    assert alice.get(f"/api/v1/stacks/{chunk['id']}").status_code == 200
