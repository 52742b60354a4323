"""Gallery paging, filters, the sky map's data and the "Download all" ZIP, on many stacks.

Stack rows are inserted straight into the deployment's database (their FITS written into the
archive folder where a test downloads them), so hundreds of stacks cost no stacking time.
"""
from __future__ import annotations

import io
import json
import random
import re
import time
import zipfile
from datetime import date, timedelta

import numpy as np
import pytest
import requests
from astropy.io import fits
from jsonschema import Draft202012Validator
from playwright.sync_api import expect

from lib import gallery
from lib.db import connect
from tests.apps import ROOT
from tests.test_browser import register, shot

# Real places on the sky, so the map looks like the sky people shoot (RA, Dec in degrees).
TARGETS = {"M 31": (10.68, 41.27), "M 42": (83.82, -5.39), "M 51": (202.47, 47.20), "M 81": (148.89, 69.07),
           "M 94": (192.72, 41.12), "M 101": (210.80, 54.35), "NGC 7000": (314.75, 44.33), "M 8": (270.90, -24.38),
           "IC 434": (85.25, -2.46), "M 13": (250.42, 36.46), "M 27": (299.90, 22.72), "NGC 253": (11.89, -25.29)}
KINDS = ["chunk"] * 8 + ["deep", "crowd"]


def database(deployment):
    return connect(f"sqlite:///{deployment.data_dir / 'crowdsky.db'}")


def user_id(db, username: str) -> int:
    return db["users"].find_one(username=username)["id"]


def insert_stacks(db, owner_id: int | None, count: int, *, seed: int = 0, first_job: int = 1_000_000,
                  fits_key: str = "stacks/chunk/none/stack.fits", kinds=KINDS) -> list[int]:
    """*count* stack rows of *owner_id* spread over the sky and two years; returns their ids."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        name = rng.choice(sorted(TARGETS))
        ra, dec = TARGETS[name]
        day = date(2024, 1, 1) + timedelta(days=rng.randrange(720))
        beg = f"{day.isoformat()}T{rng.randrange(18, 24):02d}:{rng.randrange(60):02d}:00.000"
        kind = rng.choice(kinds)
        rows.append({
            "job_id": first_job + i, "kind": kind, "owner_id": None if kind == "crowd" else owner_id,
            "chunk_id": None, "chunk_key": f"{day:%Y%m%d}.{rng.randrange(96):02d}_HP{rng.randrange(10**6):06d}",
            "object": name, "telescope": "S50_test", "ra": (ra + rng.uniform(-0.2, 0.2)) % 360,
            "dec": dec + rng.uniform(-0.2, 0.2), "frames": rng.randrange(5, 400), "frames_rejected": rng.randrange(5),
            "exposure_s": 10.0 * rng.randrange(5, 400), "date_beg": beg, "date_end": beg, "fits_key": fits_key,
            "preview_key": "stacks/chunk/none/preview.png", "fits_size": 24_883_200, "fwhm_px": 3.1,
            "noise": None, "created_at": time.time(),
        })
    db["stacks"].insert_many(rows)
    first = first_job
    return [r["id"] for r in db.query("SELECT id FROM stacks WHERE job_id >= :a AND job_id < :b ORDER BY id",
                                      a=first, b=first + count)]


def card_ids(page) -> list[int]:
    return [int(x) for x in page.locator("a.card").evaluate_all("cards => cards.map(c => c.dataset.id)")]


def test_gallery_pages_filters_and_map_with_many_stacks(deployment, page, artifacts):
    url = deployment.url
    register(page, url, "andromeda")
    db = database(deployment)
    me = user_id(db, "andromeda")
    mine = insert_stacks(db, me, 300, seed=1, kinds=["chunk"] * 8 + ["deep"])
    other = deployment.user("private_pat")                   # never shares: none of these may show
    hidden = insert_stacks(db, user_id(db, other.username), 20, seed=2, first_job=2_000_000, kinds=["chunk"])

    # Page through everything with "Older": pages are full, disjoint, newest first, and complete.
    page.goto(url + "/stacks")
    pages = []
    while True:
        ids = card_ids(page)
        pages.append(ids)
        assert ids == sorted(ids, reverse=True)
        older = page.locator("a[rel=next]")
        if not older.count():
            break
        older.click()
        expect(page).to_have_url(re.compile(rf"before={ids[-1]}$"))
    assert [len(p) for p in pages[:-1]] == [gallery.PAGE_SIZE] * (len(pages) - 1)
    seen = [i for p in pages for i in p]
    assert len(seen) == len(set(seen)) == 300
    assert seen == sorted(mine, reverse=True)
    assert not set(seen) & set(hidden)

    # "Newer" from page 3 comes back to exactly page 2, then page 1.
    page.goto(f"{url}/stacks?before={pages[1][-1]}")
    assert card_ids(page) == pages[2]
    page.click("a[rel=prev]")
    assert card_ids(page) == pages[1]
    page.click("a[rel=prev]")
    assert card_ids(page) == pages[0]
    expect(page.locator("a[rel=prev]")).to_have_count(0)

    # Filters: kind, object, dates; paging keeps them.
    page.select_option("select[name=kind]", "deep")
    page.click("#filters button[type=submit]")
    deep = [r["id"] for r in db.query("SELECT id FROM stacks WHERE owner_id = :o AND kind = 'deep' ORDER BY id DESC", o=me)]
    got = card_ids(page)
    while page.locator("a[rel=next]").count():
        assert "kind=deep" in page.locator("a[rel=next]").get_attribute("href")
        page.click("a[rel=next]")
        got += card_ids(page)
    assert got == deep
    for tag in page.locator("a.card .tag").all_inner_texts():
        assert tag.lower() == "deep"

    page.goto(url + "/stacks?object=M+51&from=2024-06-01&to=2024-12-31")
    expected = [r["id"] for r in db.query(
        "SELECT id FROM stacks WHERE owner_id = :o AND object = 'M 51' AND date_beg >= '2024-06-01' "
        "AND date_beg < '2025-01-01' ORDER BY id DESC", o=me)]
    assert card_ids(page) == expected[:gallery.PAGE_SIZE]
    expect(page.locator("select[name=object]")).to_have_value("M 51")
    shot(page, artifacts, "gallery-filtered")
    page.goto(url + "/stacks?kind=galaxy&from=yesterday")
    expect(page.locator("p.error")).to_have_count(2)

    # The sky map draws all 300, the timeline counts them, and a box selects what it covers.
    page.goto(url + "/map")
    expect(page.locator("#time-note")).to_contain_text("300 stacks")
    expect(page.locator("svg.skymap circle.bin")).to_have_count(len(TARGETS))
    dots = page.locator("svg.skymap circle.bin").evaluate_all(
        "cs => cs.map(c => ({n: +c.dataset.count, box: c.getBoundingClientRect().toJSON()}))")

    def alone(dot):          # no other dot's centre inside this one's box (plus the margin dragged)
        b = dot["box"]
        return not any(b["x"] - 8 <= o["box"]["x"] + o["box"]["width"] / 2 <= b["x"] + b["width"] + 8 and
                       b["y"] - 8 <= o["box"]["y"] + o["box"]["height"] / 2 <= b["y"] + b["height"] + 8
                       for o in dots if o is not dot)
    biggest = max(filter(alone, dots), key=lambda d: d["n"])
    b = biggest["box"]
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    expect(page.locator("#sky-tip")).to_contain_text(f"{biggest['n']} stacks here")
    page.mouse.move(b["x"] - 6, b["y"] - 6)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] + 6, b["y"] + b["height"] + 6, steps=4)
    page.mouse.up()
    expect(page.locator("#sel-summary")).to_contain_text(f"{biggest['n']} stacks")
    expect(page.locator("#download-ids")).to_have_value(re.compile(r"^\d+(,\d+){%d}$" % (biggest["n"] - 1)))
    # brush the first half of the timeline: fewer stacks are shown and selected
    tl = page.locator("#timeline svg").bounding_box()
    page.mouse.move(tl["x"] + 12, tl["y"] + 30)
    page.mouse.down()
    page.mouse.move(tl["x"] + tl["width"] / 2, tl["y"] + 30, steps=5)
    page.mouse.up()
    expect(page.locator("#time-note")).not_to_contain_text("All dates")
    shown = int(re.search(r"(\d+) stacks", page.locator("#time-note").inner_text()).group(1))
    assert 0 < shown < 300
    shot(page, artifacts, "map-many")


def test_keyset_pages_stay_fast_with_10000_stacks(tmp_path):
    db = connect(f"sqlite:///{tmp_path / 'many.db'}")
    owner = db["users"].insert({"username": "big", "password_hash": "x", "share_with_crowd": True, "created_at": 0})
    ids = []
    for batch in range(10):
        ids += insert_stacks(db, owner, 1000, seed=batch, first_job=1_000_000 + 1000 * batch)
    assert len(ids) == 10_000

    filters = gallery.Filters()
    slowest, before, walked = 0.0, None, []
    while True:
        started = time.perf_counter()
        result = gallery.page(db, None, filters, before=before, size=60)
        slowest = max(slowest, time.perf_counter() - started)
        walked += [s["id"] for s in result.stacks]
        if result.older is None:
            break
        before = result.older
    assert walked == sorted(ids, reverse=True)
    assert slowest < 0.25, f"a page took {slowest:.3f} s"

    # a filtered page deep in the list costs no more than the first
    narrow = gallery.Filters(object="M 94", kind="chunk")
    for cursor in (None, ids[len(ids) // 2], ids[50]):
        started = time.perf_counter()
        result = gallery.page(db, owner, narrow, before=cursor)
        assert time.perf_counter() - started < 0.25
        assert all(s["object"] == "M 94" and s["kind"] == "chunk" for s in result.stacks)
        assert all(cursor is None or s["id"] < cursor for s in result.stacks)
    # the owner filter also finds the crowd stacks an owner's frames went into
    assert gallery.page(db, None, gallery.Filters(owner="big")).stacks
    assert gallery.page(db, None, gallery.Filters(owner="nobody")).stacks == []
    plan = " ".join(str(dict(r)) for r in db.query(
        "EXPLAIN QUERY PLAN SELECT id FROM stacks WHERE kind = 'deep' AND id < 5000 ORDER BY id DESC LIMIT 25"))
    assert "USING" in plan and "INDEX" in plan.upper(), plan


# --- "Download all": who may download what ------------------------------------------------------

def small_stack_fits(value: float) -> bytes:
    hdu = fits.PrimaryHDU(np.full((3, 16, 24), value, dtype=np.float32))
    hdu.header["NCOMBINE"] = 3
    hdu.header["OBJECT"] = "M 94"
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()


def put_in_archive(deployment, key: str, data: bytes) -> None:
    path = deployment.data_dir / "archive" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def two_owners(deployment):
    """alice keeps her stack private; bob shares his. Each has one stack with a real FITS."""
    alice, bob = deployment.user("alice"), deployment.user("bob")
    assert bob.http.patch(deployment.url + "/api/v1/me", json={"share_with_crowd": True}).status_code == 200
    db = database(deployment)
    stacks = {}
    for n, who in enumerate((alice, bob)):
        key = f"stacks/chunk/{9000 + n}/test/stack.fits"
        data = small_stack_fits(float(n + 1))
        put_in_archive(deployment, key, data)
        [stacks[who.username]] = insert_stacks(db, user_id(db, who.username), 1, seed=n, first_job=3_000_000 + n,
                                               fits_key=key, kinds=["chunk"])
        db["stacks"].update({"id": stacks[who.username], "fits_size": len(data)}, ["id"])
    return alice, bob, stacks


def unzip(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/zip"
    assert "attachment" in response.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def test_zip_holds_only_what_the_viewer_may_see(deployment, two_owners):
    alice, bob, ids = two_owners
    url = deployment.url
    a, b = ids["alice"], ids["bob"]

    # Anyone gets bob's shared stack; alice's private one is refused to everyone but alice.
    files = unzip(requests.get(f"{url}/stacks.zip", params={"ids": str(b)}))
    assert len(files) == 2 and list(files)[0] == "index.csv"
    [fits_name] = [n for n in files if n.endswith(".fits")]
    assert fits_name.startswith(f"{b}_CrowdSky_chunk_")
    with fits.open(io.BytesIO(files[fits_name])) as hdul:
        assert hdul[0].data.shape == (3, 16, 24) and float(hdul[0].data[0, 0, 0]) == 2.0
    for who, wanted in ((requests, str(a)), (requests, f"{b},{a}"), (bob.http, str(a)), (bob.http, f"{a},{b}")):
        response = who.get(f"{url}/stacks.zip", params={"ids": wanted})
        assert response.status_code == 404, response.text
        assert str(a) in response.text and "PK" not in response.text[:2]

    both = unzip(alice.get("/stacks.zip", params={"ids": f"{a},{b}"}))
    assert len(both) == 3 and list(both)[0] == "index.csv"
    index = both["index.csv"].decode().splitlines()
    assert index[0].startswith("id,file,object") and len(index) == 3
    assert "SITELAT" not in both["index.csv"].decode()

    # Bad requests say what is wrong; a POST without the page's CSRF token is refused.
    assert requests.get(f"{url}/stacks.zip", params={"ids": "1;DROP TABLE stacks"}).status_code == 400
    assert requests.get(f"{url}/stacks.zip").status_code == 400
    too_many = ",".join(str(i) for i in range(1, gallery.MAX_SELECTION + 2))
    assert requests.get(f"{url}/stacks.zip", params={"ids": too_many}).status_code == 413
    assert requests.post(f"{url}/stacks.zip", data={"ids": str(b)}).status_code == 403
    assert requests.get(f"{url}/stacks/{a}/thumb.jpg").status_code == 404


def test_sky_map_data_shows_only_visible_stacks(deployment, two_owners):
    alice, bob, ids = two_owners
    url = deployment.url
    anonymous = requests.get(url + "/api/v1/skymap").json()
    at = {f: i for i, f in enumerate(anonymous["fields"])}
    assert [row[at["id"]] for row in anonymous["stacks"]] == [ids["bob"]]
    assert anonymous["stacks"][0][at["mine"]] is False
    mine = alice.get("/api/v1/skymap").json()
    rows = {row[at["id"]]: row for row in mine["stacks"]}
    assert set(rows) == {ids["alice"], ids["bob"]}
    assert rows[ids["alice"]][at["mine"]] is True and rows[ids["bob"]][at["mine"]] is False
    assert -90 <= rows[ids["alice"]][at["dec"]] <= 90 and 0 <= rows[ids["alice"]][at["ra"]] < 360
    assert "SITELAT" not in str(mine) and "sitelat" not in str(mine).lower()
    schema = json.loads((ROOT / "lib" / "openapi.json").read_text())["components"]["schemas"]["SkyMap"]
    for answer in (anonymous, mine):
        Draft202012Validator(schema).validate(answer)


def test_browser_downloads_the_selection_with_csrf(deployment, page, two_owners, tmp_path):
    """The map's form posts the ids with the page's CSRF token; the ZIP streams back."""
    alice, bob, ids = two_owners
    page.goto(deployment.url + "/login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "correct horse battery")
    page.click("form.stacked button[type=submit]")
    page.goto(deployment.url + "/map")
    expect(page.locator("#time-note")).to_contain_text("2 stacks")
    page.click("#select-window")
    expect(page.locator("#sel-summary")).to_contain_text("2 stacks")
    with page.expect_download() as info:
        page.click("#download-all")
    saved = tmp_path / "all.zip"
    info.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert len([n for n in archive.namelist() if n.endswith(".fits")]) == 2
