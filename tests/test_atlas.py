"""The crowd atlas (lib/atlas.py): HiPS tiles of the shared crowd stacks, kept up to date by atlas jobs,
served at /hips/crowd/ and browsed at /atlas. One owner and the 6 real frames of 2025-03-27: private
first (no tile), then shared (the M 94 tile shows the galaxy), then unshared (the tile is gone)."""
from __future__ import annotations

import io
import json
import urllib.parse

import astropy.units as u
import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.wcs import WCS
from astropy_healpix import HEALPix, level_to_nside
from PIL import Image
from scipy import ndimage

from lib import atlas
from tests.frames import NIGHT_1, real_frames

M94 = (192.7212, 41.1197)


def tile_of(ra: float, dec: float, order: int = atlas.ORDER) -> int:
    hp = HEALPix(nside=level_to_nside(order), order="nested", frame="icrs")
    return int(hp.lonlat_to_healpix(ra * u.deg, dec * u.deg))


def tile_path(order: int, npix: int) -> str:
    return atlas.tile_key(order, npix).removeprefix(atlas.PREFIX)


def jobs_of_kind(d, kind: str) -> list[dict]:
    import dataset
    db = dataset.connect(d.env.get("CROWDSKY_DATABASE_URL") or f"sqlite:///{d.data_dir / 'crowdsky.db'}")
    try:
        return [dict(r) for r in db["jobs"].find(kind=kind)]
    finally:
        db.close()


# --- the parts, on synthetic data ---------------------------------------------------------------

def test_paths_name_only_what_the_atlas_holds():
    assert atlas.parse_path("properties") == "hips/crowd/properties"
    assert atlas.parse_path("Moc.fits") == "hips/crowd/Moc.fits"
    assert atlas.parse_path("Norder8/Dir170000/Npix173708.png") == "hips/crowd/Norder8/Dir170000/Npix173708.png"
    assert atlas.parse_path("Norder0/Dir0/Npix11.png") == "hips/crowd/Norder0/Dir0/Npix11.png"
    for bad in ("Norder8/Dir0/Npix173708.png",           # wrong Dir
                f"Norder{atlas.ORDER + 1}/Dir0/Npix1.png",  # deeper than the atlas
                "Norder3/Dir0/Npix768.png",              # past the last tile of order 3
                "Norder0/Dir0/Npix12.png",
                "state.json", "../properties", "Norder8/Dir0/Npix1.jpg"):
        assert atlas.parse_path(bad) is None, bad


def test_the_deepest_order_matches_an_s50():
    # 1.61″ HEALPix pixels at order 8 (512-px tiles): the first order no coarser than 2.39″
    assert atlas.ORDER == 8
    assert atlas.deepest_order(3.3) == 7


def test_a_parent_pixel_lies_where_its_children_do():
    """The 2 × 2 placement of children in their parent agrees with reproject's tile WCS."""
    order, parent = 8, 173708 // 4
    parent_wcs = atlas.tile_wcs(order - 1, parent)[0]
    for sub in range(4):
        child = np.zeros((atlas.TILE, atlas.TILE, 4), np.uint8)
        child[100:102, 300:302] = (255, 255, 255, 255)          # one 2 × 2 block, rows 100-101, cols 300-301
        children = [child if s == sub else None for s in range(4)]
        made = atlas.parent_tile(children)
        y, x = np.argwhere(made[..., 3] > 0)[0]
        in_child = atlas.tile_wcs(order, 4 * parent + sub)[0].pixel_to_world(300.5, 100.5)
        in_parent = parent_wcs.pixel_to_world(x, y)
        assert in_child.separation(in_parent).arcsec < 3.3, sub      # within one parent pixel


def test_the_fast_mapping_agrees_with_reproject():
    """Tiles are resampled on an interpolated pixel mapping; reproject_interp is the reference."""
    from reproject import reproject_interp
    npix = tile_of(*M94)
    tile_wcs = atlas.tile_wcs(atlas.ORDER, npix)[0]
    source_wcs = WCS(naxis=2)
    source_wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    source_wcs.wcs.crval = M94
    source_wcs.wcs.crpix = [200, 150]
    angle = np.radians(23)
    scale = 2.39 / 3600
    source_wcs.wcs.cd = scale * np.array([[-np.cos(angle), np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rng = np.random.default_rng(1)
    rgb = ndimage.gaussian_filter(rng.random((3, 300, 400)), (0, 3, 3)).astype(np.float32)
    source = atlas.Source(1, rgb, np.ones((300, 400), np.float32), source_wcs)
    acc = {npix: np.zeros((4, atlas.TILE, atlas.TILE), np.float32)}
    assert atlas.add_source(acc, source) == {npix}
    mine = atlas.finish_tile(acc[npix])
    ref, footprint = reproject_interp((rgb, source_wcs), tile_wcs, shape_out=(3, atlas.TILE, atlas.TILE),
                                      order="bilinear")
    both = (mine[..., 3] > 0) & (footprint[0] > 0)
    assert both.sum() > 0.9 * (footprint[0] > 0).sum()
    expected = np.clip(np.moveaxis(ref, 0, -1)[both], 0, 1) * 255
    assert np.abs(mine[..., :3][both] - expected).max() <= 1.5


def test_the_moc_merges_full_siblings_and_reads_back():
    tiles = {4 * 1000 + i for i in range(4)} | {4 * 2000 + 1}
    with fits.open(io.BytesIO(atlas.moc_fits(tiles, order=8))) as hdul:
        header, uniq = hdul[1].header, sorted(int(v) for v in hdul[1].data["UNIQ"])
    assert header["ORDERING"] == "NUNIQ" and header["MOCORDER"] == 8 and header["COORDSYS"] == "C"
    assert uniq == sorted([4 * 4 ** 7 + 1000, 4 * 4 ** 8 + 8001])



def synthetic_crowd_fits(path, ra: float, dec: float) -> list[list[float]]:
    """A small crowd-stack-like FITS (600 × 800, 2.39″/px, north up) with a bright blob at its centre;
    returns its footprint (four corners) as lib/stacks.py stores it."""
    rng = np.random.default_rng(7)
    h, w = 600, 800
    yy, xx = np.mgrid[0:h, 0:w]
    blob = 4000 * np.exp(-((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (2 * 12.0 ** 2))
    image = np.stack([blob + rng.normal(0, 10, (h, w)) for _ in range(3)]).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(w + 1) / 2, (h + 1) / 2]
    wcs.wcs.cdelt = [-2.39 / 3600, 2.39 / 3600]
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": ra, "CRVAL2": dec,   # a CD matrix,
                          "CRPIX1": (w + 1) / 2, "CRPIX2": (h + 1) / 2, "CD1_1": -2.39 / 3600,       # as solve-field
                          "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 2.39 / 3600})                         # writes it
    fits.HDUList([fits.PrimaryHDU(image, header=header),
                  fits.ImageHDU(np.ones((h, w), np.float32), name="WEIGHT")]).writeto(path)
    corners = wcs.pixel_to_world_values([-0.5, w - 0.5, w - 0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5])
    return [[float(a), float(b)] for a, b in zip(*corners)]


def test_tiles_follow_a_crowd_stack_on_every_storage(storage, tmp_path):
    """Folder, S3 and WebDAV archives alike: a crowd stack's tiles appear; when its new version lies
    elsewhere, the old place's tiles (every order) are removed and the new place's drawn; deleted, all go."""
    import lib.db
    db = lib.db.connect(f"sqlite:///{tmp_path / 'atlas.db'}")
    try:
        places = [(150.0, 20.0), (150.0, 21.0)]
        footprints = [synthetic_crowd_fits(tmp_path / f"crowd{i}.fits", *p) for i, p in enumerate(places)]
        for i in range(2):
            with open(tmp_path / f"crowd{i}.fits", "rb") as f:
                storage.put(f"stacks/crowd/{i}.fits", f)
        with db as tx:
            stack_id = tx["stacks"].insert({"kind": "crowd", "fits_key": "stacks/crowd/0.fits", "solved": True,
                                            "footprint": json.dumps(footprints[0]), "exposure_s": 60.0, "version": 1})
        first = atlas.update(db, storage, tmp_path)
        assert first["changed"] == [stack_id] and 4 <= first["tiles"] <= 16     # a 0.5° × 0.4° field, 0.23° tiles
        here, there = tile_of(*places[0]), tile_of(*places[1])
        assert storage.exists(atlas.tile_key(atlas.ORDER, here))
        assert storage.exists(atlas.tile_key(0, here >> 2 * atlas.ORDER))
        assert not storage.exists(atlas.tile_key(atlas.ORDER, there))
        assert atlas.update(db, storage, tmp_path)["changed"] == []           # nothing changed: nothing redone

        with db as tx:                       # a new version, a degree north
            tx["stacks"].update({"id": stack_id, "fits_key": "stacks/crowd/1.fits", "version": 2,
                                 "footprint": json.dumps(footprints[1])}, ["id"])
        moved = atlas.update(db, storage, tmp_path)
        assert moved["changed"] == [stack_id] and moved["tiles"] >= first["tiles"]
        assert not storage.exists(atlas.tile_key(atlas.ORDER, here))
        assert not storage.exists(atlas.tile_key(atlas.ORDER - 3, here >> 6)) or (here >> 6) == (there >> 6)
        tile = atlas.decode(b"".join(storage.iter_bytes(atlas.tile_key(atlas.ORDER, there))))
        lum = tile[..., :3].astype(float).mean(axis=-1)
        y, x = np.unravel_index(np.argmax(np.where(tile[..., 3] > 0, lum, 0)), lum.shape)
        from astropy.coordinates import SkyCoord
        assert atlas.tile_wcs(atlas.ORDER, there)[0].pixel_to_world(x, y).separation(
            SkyCoord(*places[1], unit="deg")).arcsec < 10                      # the blob, where its WCS says

        with db as tx:
            tx["stacks"].delete(id=stack_id)
        atlas.update(db, storage, tmp_path)
        assert [k for k in storage.list(atlas.PREFIX) if k.endswith(".png")] == []
    finally:
        db.close()

# --- the whole, on the real frames ------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from tests.apps import Deployment
    d = Deployment(tmp_path_factory.mktemp("atlas"), {})
    d.start_app()
    owner = d.user("alice")
    session = owner.new_session()
    for path in real_frames(NIGHT_1):
        assert owner.put_frame(session, path.name, path.read_bytes()).status_code == 201
    assert owner.post(f"/api/v1/sessions/{session}/finalize").status_code == 200
    d.drain_queue()
    yield d, owner
    d.stop_app()


def test_a_private_owners_target_has_no_tile(site):
    d, owner = site
    kinds = {s["kind"] for s in owner.get("/api/v1/stacks").json()["stacks"]}
    assert kinds == {"chunk", "deep"}
    assert jobs_of_kind(d, "atlas") == []                      # nothing shared: no atlas update queued
    for order in (atlas.ORDER, atlas.MIN_ORDER):
        response = requests.get(f"{d.url}/hips/crowd/{tile_path(order, tile_of(*M94, order))}")
        assert response.status_code == 404, order
        assert "no shared data" in response.text
    assert requests.get(f"{d.url}/hips/crowd/state.json").status_code == 404


def test_shared_the_m94_tile_at_the_deepest_order_shows_the_galaxy(site):
    d, owner = site
    assert owner.http.patch(f"{d.url}/api/v1/me", json={"share_with_crowd": True}).status_code == 200
    d.drain_queue()
    assert [j["status"] for j in jobs_of_kind(d, "atlas")] == ["done"]
    npix = tile_of(*M94)
    response = requests.get(f"{d.url}/hips/crowd/{tile_path(atlas.ORDER, npix)}")
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    assert "public" in response.headers["Cache-Control"] and response.headers["ETag"]
    again = requests.get(f"{d.url}/hips/crowd/{tile_path(atlas.ORDER, npix)}",
                         headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and not again.content

    rgba = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))[::-1]    # FITS row order
    assert rgba.shape == (atlas.TILE, atlas.TILE, 4) and (rgba[..., 3] == 255).mean() > 0.5
    lum = ndimage.gaussian_filter(rgba[..., :3].astype(float).mean(axis=-1), 6)
    y, x = np.unravel_index(np.argmax(np.where(rgba[..., 3] > 0, lum, 0)), lum.shape)
    galaxy = atlas.tile_wcs(atlas.ORDER, npix)[0].pixel_to_world(x, y)
    from astropy.coordinates import SkyCoord
    assert galaxy.separation(SkyCoord(*M94, unit="deg")).arcsec < 20      # the brightest region is M 94's core
    assert lum.max() > 3 * np.median(lum[rgba[..., 3] > 0])              # and it stands out of the sky

    # every order down to MIN_ORDER has the tile above it, and the survey describes itself
    for order in range(atlas.MIN_ORDER, atlas.ORDER):
        assert requests.get(f"{d.url}/hips/crowd/{tile_path(order, tile_of(*M94, order))}").status_code == 200
    props = requests.get(f"{d.url}/hips/crowd/properties")
    assert props.status_code == 200
    fields = dict(line.split("=", 1) for line in props.text.splitlines() if "=" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["hips_order"] == str(atlas.ORDER) and fields["hips_tile_format"] == "png"
    assert fields["hips_frame"] == "equatorial" and fields["dataproduct_type"] == "image"
    assert fields["hips_version"] == "1.4" and fields["hips_tile_width"] == "512"
    with fits.open(io.BytesIO(requests.get(f"{d.url}/hips/crowd/Moc.fits").content)) as hdul:
        uniq = np.asarray(hdul[1].data["UNIQ"], np.int64)
    cells = [(k, int(v) - 4 * 4 ** k) for v in uniq for k in [int(np.log2(int(v) // 4) // 2)]]
    assert any(npix >> 2 * (atlas.ORDER - k) == n for k, n in cells)      # M 94's tile is covered


def test_the_atlas_page_draws_the_survey(site, page, artifacts):
    d, owner = site
    page.goto(f"{d.url}/atlas?target=M%2094")
    page.wait_for_selector("#aladin[data-ready='1']", timeout=60_000)
    assert "M 94" in page.inner_text("#atlas-note")
    for _ in range(60):           # (polled from here: the page's CSP forbids wait_for_function's eval)
        if page.get_attribute("#aladin", "data-footprints") == "1":
            break
        page.wait_for_timeout(500)
    assert page.get_attribute("#aladin", "data-footprints") == "1"
    box = page.query_selector("#aladin").bounding_box()
    for _ in range(60):             # Aladin Lite fetches and draws the tiles lazily: look until they are there
        page.screenshot(path=artifacts / "atlas.png")
        shot = np.asarray(Image.open(artifacts / "atlas.png").convert("RGB")).astype(int)
        view = shot[int(box["y"]):int(box["y"] + box["height"]), int(box["x"]):int(box["x"] + box["width"])]
        centre = view[view.shape[0] // 3: 2 * view.shape[0] // 3, view.shape[1] // 3: 2 * view.shape[1] // 3]
        if centre.std() > 5 and centre.max() > 150:
            break
        page.wait_for_timeout(500)
    assert centre.std() > 5, "the atlas view is blank"
    assert centre.max() > 150, "no bright galaxy core drawn"
    # an outline leads to its crowd stack: click the middle of one of its edges
    crowd = requests.get(f"{d.url}/api/v1/atlas/footprints").json()["stacks"][0]
    (ra1, dec1), (ra2, dec2) = crowd["footprint"][0], crowd["footprint"][1]
    page.evaluate("window.crowdAtlas.setFoV(2.5)")
    page.wait_for_timeout(500)
    x, y = page.evaluate(f"window.crowdAtlas.world2pix({(ra1 + ra2) / 2}, {(dec1 + dec2) / 2})")
    with page.expect_navigation(timeout=15_000):
        page.mouse.click(box["x"] + x, box["y"] + y)
    assert page.url.endswith(f"/stacks/{crowd['id']}")
    # linked from the sky map and from the stack pages, which open the atlas on the stack
    page.goto(f"{d.url}/map")
    assert page.get_attribute("#atlas-link", "href") == "/atlas"
    crowd = requests.get(f"{d.url}/api/v1/atlas/footprints").json()["stacks"][0]
    page.goto(f"{d.url}/stacks/{crowd['id']}")
    href = page.get_attribute("#atlas-link", "href")
    assert href.startswith("/atlas?target=")
    ra, dec = (float(v) for v in urllib.parse.unquote(href.split("=", 1)[1]).split())
    assert abs(ra - M94[0]) < 1 and abs(dec - M94[1]) < 1          # the stack's pointing
    # the resolve route behind the search box
    assert requests.get(f"{d.url}/api/v1/resolve", params={"name": "ngc4736"}).json()["name"] == "M 94"
    assert requests.get(f"{d.url}/api/v1/resolve", params={"name": "not a thing"}).status_code == 404
    assert requests.get(f"{d.url}/api/v1/resolve").status_code == 400


def test_a_region_downloads_as_one_fits_mosaic_with_coverage(site, page):
    d, owner = site
    response = requests.get(f"{d.url}/atlas/region.fits",
                            params={"ra": M94[0], "dec": M94[1], "width": 0.3, "height": 0.2})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/fits"
    with fits.open(io.BytesIO(response.content)) as hdul:
        image, cover, wcs = hdul[0].data, hdul["COVERAGE"].data, WCS(hdul[0].header).celestial
        assert image.shape == (3, 301, 452) and cover.shape == image.shape[1:]     # 0.2° × 0.3° at 2.39″
        assert list(hdul["SOURCES"].data["ID"]) == [s["id"] for s in
                                                    requests.get(f"{d.url}/api/v1/atlas/footprints").json()["stacks"]]
    assert (cover > 0).mean() > 0.9
    lum = ndimage.gaussian_filter(np.nan_to_num(image.mean(axis=0)), 3)
    y, x = np.unravel_index(np.argmax(lum), lum.shape)
    from astropy.coordinates import SkyCoord
    assert wcs.pixel_to_world(x, y).separation(SkyCoord(*M94, unit="deg")).arcsec < 20
    # the page's link follows the view
    page.goto(f"{d.url}/atlas?target=M%2094")
    page.wait_for_selector("#aladin[data-ready='1']", timeout=60_000)
    assert "/atlas/region.fits?ra=" in page.get_attribute("#atlas-region", "href")
    # bounded, and bad input named
    for params, word in (({"ra": 10, "dec": 5, "width": 3, "height": 1}, "width"),
                         ({"ra": "x", "dec": 5, "width": 1, "height": 1}, "ra"),
                         ({"ra": 10, "dec": 95, "width": 1, "height": 1}, "dec"),
                         ({"ra": 10, "dec": 5, "width": 1}, "height")):
        refused = requests.get(f"{d.url}/atlas/region.fits", params=params)
        assert refused.status_code == 400 and word in refused.text, params
    empty = requests.get(f"{d.url}/atlas/region.fits", params={"ra": 10, "dec": -40, "width": 1, "height": 1})
    assert empty.status_code == 404


def test_an_update_that_dies_midway_is_redone_by_the_next(site, tmp_path):
    """state.json is written last: an update killed after writing some tiles leaves the state as it was,
    so the next update redoes the same tiles and ends where an uninterrupted one would."""
    import lib.db
    from lib.storage import open_storage
    d, owner = site
    archive = open_storage((d.data_dir / "archive").as_uri())
    db = lib.db.connect(f"sqlite:///{d.data_dir / 'crowdsky.db'}")
    try:
        npix = tile_of(*M94)
        before = b"".join(archive.iter_bytes(atlas.tile_key(atlas.ORDER, npix)))
        state = b"".join(archive.iter_bytes(atlas.STATE_KEY))
        archive.delete(atlas.tile_key(atlas.ORDER - 1, npix // 4))          # damage a parent...
        with db as tx:                                                       # ...and change the crowd stack
            tx.query("UPDATE stacks SET version = version + 1 WHERE kind = 'crowd'")

        def dies(fraction, message):
            if message == "parent tiles":
                raise RuntimeError("killed")
        with pytest.raises(RuntimeError):
            atlas.update(db, archive, tmp_path, dies)
        assert b"".join(archive.iter_bytes(atlas.STATE_KEY)) == state       # untouched: the change is still to do
        done = atlas.update(db, archive, tmp_path)
        assert len(done["changed"]) == 1 and done["tiles"] >= 27
        assert b"".join(archive.iter_bytes(atlas.tile_key(atlas.ORDER, npix))) == before
        assert archive.exists(atlas.tile_key(atlas.ORDER - 1, npix // 4))  # parents redone too
        assert atlas.update(db, archive, tmp_path)["changed"] == []          # and then nothing is left to do
    finally:
        db.close()

def test_unsharing_takes_the_owners_pixels_out_of_every_tile(site):
    d, owner = site
    assert owner.http.patch(f"{d.url}/api/v1/me", json={"share_with_crowd": False}).status_code == 200
    d.drain_queue()
    assert all(j["status"] == "done" for j in jobs_of_kind(d, "atlas"))
    for order in range(atlas.MIN_ORDER, atlas.ORDER + 1):
        assert requests.get(f"{d.url}/hips/crowd/{tile_path(order, tile_of(*M94, order))}").status_code == 404
    with fits.open(io.BytesIO(requests.get(f"{d.url}/hips/crowd/Moc.fits").content)) as hdul:
        assert len(hdul[1].data) == 0
    assert json.loads(requests.get(f"{d.url}/api/v1/atlas/footprints").text)["stacks"] == []
    assert requests.get(f"{d.url}/atlas/region.fits",
                        params={"ra": M94[0], "dec": M94[1], "width": 0.3, "height": 0.2}).status_code == 404
    # the owner's own stacks stay theirs
    assert {s["kind"] for s in owner.get("/api/v1/stacks").json()["stacks"]} == {"chunk", "deep"}


# --- the queue and the lock, on every database ---------------------------------------------------

class _Settings:
    max_attempts = 3


def test_an_atlas_job_is_queued_once_and_never_handed_to_a_remote_stacker(db):
    from lib import queue
    with db as tx:
        first = atlas.queue_update(tx, _Settings, owner_id=1)
        assert atlas.queue_update(tx, _Settings, owner_id=2) == first      # one waits at a time
    chunk_job = queue.enqueue(db, kind="chunk", chunk_id=None, owner_id=1, max_attempts=3)
    remote = queue.claim(db, "remote-box/1", 60, direct=False)
    assert remote is not None and remote.job_id == chunk_job                # the atlas job is passed over
    assert queue.claim(db, "remote-box/2", 60, direct=False) is None
    direct = queue.claim(db, "stacker/1", 60)
    assert direct is not None and direct.job_id == first and direct.job["kind"] == "atlas"
    with db as tx:                 # running does not count as waiting: a change now queues the next update
        assert atlas.queue_update(tx, _Settings, owner_id=1) not in (None, first)


def test_atlas_updates_take_turns_and_a_dead_holders_lock_is_taken_over(db, monkeypatch):
    import threading
    atlas._take_lock(db, lambda: None)
    waited, got = [], threading.Event()

    def second():
        def waiting():
            waited.append(1)
            if len(waited) == 2:
                atlas._drop_lock(db2)          # the first update finishes while the second waits
        atlas._take_lock(db2, waiting)
        got.set()

    import lib.db
    db2 = lib.db.connect(str(db.url))
    try:
        monkeypatch.setattr(atlas.time, "sleep", lambda s: None)
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(60)
        assert got.is_set() and len(waited) == 2            # it waited its turn, then went
        # a holder that died: its lock is older than LOCK_STALE_S and is taken over without waiting
        monkeypatch.setattr(atlas, "now", lambda: lib.db.now() + atlas.LOCK_STALE_S + 1)
        atlas._take_lock(db, lambda: pytest.fail("waited for a dead holder"))
    finally:
        db2.close()

