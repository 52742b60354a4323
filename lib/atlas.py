"""The crowd atlas: every crowd stack reprojected into one HiPS survey (IVOA HiPS 1.0).

Layout in the archive, under ``hips/crowd/`` (served as ``/hips/crowd/...``):

- ``Norder<k>/Dir<d>/Npix<n>.png``: HEALPix NESTED tiles, 512 × 512 RGBA PNG (transparent where no
  crowd stack covers the sky), ``d = (n // 10000) * 10000``. ``ORDER`` is the deepest order (its
  pixels are just finer than an S50's 2.39″); orders ``MIN_ORDER``..``ORDER - 1`` are built from
  their four children (2 × 2 means), so a parent always agrees with its children.
- ``properties``: the HiPS description (order, format, frame, title, release date).
- ``Moc.fits``: the coverage (tiles at ``ORDER`` holding data) as an IVOA MOC 1.1 FITS table (NUNIQ).
- ``state.json``: what the tiles were made from, per crowd stack: ``{"order": k, "stacks":
  {"<id>": {"sig": "<version>:<fits key>", "tiles": [npix at ORDER, ...]}}}``; written last.

Tiles look like the previews: each crowd stack is rendered with its own preview rendering
(lib/stacking/preview.py: background, white balance, asinh stretch; the preview's crop, so only
well-covered pixels count), then reprojected (``reproject.reproject_interp`` onto the tile's HPX
WCS from ``reproject.hips``); overlapping crowd stacks are averaged, each pixel weighted by its
stack's WEIGHT (relative to the stack's most covered pixel) times the stack's total exposure, so
the deeper data dominates.

Incremental. An ``atlas`` job (queued in the same transaction as any change of a crowd stack's
file: new version, hidden for a rebuild, deleted; see lib/groups.py) compares the crowd stacks
now with ``state.json``: the *dirty* tiles are those of the changed stacks' old and new footprints;
only they are rendered again, from every crowd stack that overlaps them, then their parents.
Memory stays bounded: tiles are rendered ``BATCH`` at a time, one crowd stack in memory at a time.
Atlas jobs are serialised by the ``atlas`` lock row (a job waits its turn; a holder that died is
taken over after ``LOCK_STALE_S``), and writing ``state.json`` last makes a crashed job's successor
redo the same tiles: the atlas always converges to the crowd stacks of now.
"""
from __future__ import annotations

import io
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lib.db import now

PREFIX = "hips/crowd/"
STATE_KEY = PREFIX + "state.json"
TILE = 512                      # px, tile side (hips_tile_width)
S50_SCALE_ARCSEC = 2.39         # px scale of a Seestar S50 (206.265 × 2.9 µm / 250 mm)
MIN_ORDER = 0                   # lowest order written: viewers draw the whole sky from orders 0-3
BATCH = 16                      # tiles rendered at once: 16 × 4 MB of float32 accumulators
LOCK = "atlas"                  # lock row serialising atlas jobs
LOCK_STALE_S = 600.0            # a lock untouched this long belongs to a job that died
TITLE = "CrowdSky crowd atlas"


def deepest_order(scale_arcsec: float) -> int:
    """The lowest tile order whose HEALPix pixels (tiles of TILE px) are no coarser than *scale_arcsec*."""
    from astropy_healpix import level_to_nside, nside_to_pixel_resolution
    import astropy.units as u
    for order in range(MIN_ORDER, 20):
        if nside_to_pixel_resolution(level_to_nside(order) * TILE).to_value(u.arcsec) <= scale_arcsec:
            return order
    raise ValueError(f"no HiPS order fine enough for {scale_arcsec}″/px")


ORDER = deepest_order(S50_SCALE_ARCSEC)     # 8: 1.61″ pixels, tiles of 0.23°


def tile_key(order: int, npix: int) -> str:
    return f"{PREFIX}Norder{order}/Dir{(npix // 10000) * 10000}/Npix{npix}.png"


def parse_path(path: str) -> str | None:
    """The archive key of a served atlas path (``Norder8/Dir0/Npix123.png``, ``properties``,
    ``Moc.fits``), or None when the path names nothing the atlas can hold."""
    import re
    if path in ("properties", "Moc.fits"):
        return PREFIX + path
    m = re.fullmatch(r"Norder(\d{1,2})/Dir(\d{1,12})/Npix(\d{1,15})\.png", path)
    if m is None:
        return None
    order, folder, npix = (int(g) for g in m.groups())
    if not MIN_ORDER <= order <= ORDER or folder != (npix // 10000) * 10000 or npix >= 12 * 4 ** order:
        return None
    return tile_key(order, npix)


# --- sources: a crowd stack as the atlas sees it ------------------------------------------------

@dataclass
class Source:
    """A crowd stack rendered like its preview. rgb: (3, h, w) float32 0..1; weight: (h, w) float32
    (0 where uncovered); wcs: celestial WCS of those pixels."""
    id: int
    rgb: np.ndarray
    weight: np.ndarray
    wcs: object


def read_source(stack_id: int, path: Path, exposure_s: float) -> Source:
    """A crowd stack's FITS (lib/stacking/group_files.py) as the atlas shows it."""
    from astropy.io import fits
    from lib.stacking import preview, solve
    with fits.open(path, memmap=False) as hdul:
        header = hdul[0].header
        image = hdul[0].data.astype(np.float32)
        weight = hdul["WEIGHT"].data.astype(np.float32) if "WEIGHT" in hdul else \
            np.ones(image.shape[1:], np.float32)
        wcs = solve.celestial_wcs(header)
    if wcs is None:
        raise ValueError(f"crowd stack {stack_id} has no WCS")
    plan = preview.Rendering.from_header(header) or preview.plan_rendering(image, weight, None)
    y0, y1, x0, x1 = plan.crop
    shown = preview.stretch_rgb(preview.calibrate(image, plan), plan.black, plan.white, plan.strength)
    del image
    rgb = np.ascontiguousarray(np.moveaxis(shown, -1, 0), dtype=np.float32)
    weight = weight[y0:y1, x0:x1]
    peak = float(weight.max()) if weight.size else 0.0
    relative = weight / peak if peak > 0 else weight
    return Source(stack_id, rgb, (relative * max(exposure_s, 1.0)).astype(np.float32), wcs[y0:y1, x0:x1])


def candidate_tiles(footprint: list[list[float]], order: int = ORDER) -> set[int]:
    """Tiles at *order* that overlap a stack whose corners are *footprint* ([[ra, dec] × 4], degrees,
    in order around the field): a cone around its centre, narrowed to the tiles one of whose outline
    points lies inside the field or that hold one of its corners (enough for a field larger than a
    tile, which an S50's is: neither can cross the other without holding a vertex)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy_healpix import HEALPix, level_to_nside
    corners = SkyCoord([c[0] for c in footprint], [c[1] for c in footprint], unit="deg")
    vec = corners.cartesian.xyz.mean(axis=1)
    centre = SkyCoord(*vec, representation_type="cartesian").spherical
    centre = SkyCoord(centre.lon, centre.lat)
    hp = HEALPix(nside=level_to_nside(order), order="nested", frame="icrs")
    radius = corners.separation(centre).max() + hp.pixel_resolution * 1.5
    cone = np.asarray(hp.cone_search_skycoord(centre, radius=radius.to(u.deg)), np.int64)
    if not len(cone):
        return set()
    frame = centre.skyoffset_frame()

    def plane(coords):          # tangent-plane offsets from the field's centre, degrees
        off = coords.transform_to(frame)
        return off.lon.wrap_at(180 * u.deg).deg, off.lat.deg

    qx, qy = plane(corners)
    lon, lat = hp.boundaries_lonlat(cone, step=4)                       # (n, 16) outline points
    tx, ty = plane(SkyCoord(lon.ravel(), lat.ravel()))
    tx, ty = tx.reshape(lon.shape), ty.reshape(lon.shape)
    inside = _in_convex(qx, qy, tx, ty).any(axis=1)
    for cx, cy in zip(qx, qy):                                          # a corner inside the tile
        inside |= _in_convex_rows(tx, ty, cx, cy)
    return {int(n) for n in cone[inside]}


def _in_convex(qx, qy, px, py) -> np.ndarray:
    """Whether points (px, py) lie inside the convex polygon (qx, qy) (either winding)."""
    signs = []
    for i in range(len(qx)):
        j = (i + 1) % len(qx)
        signs.append((qx[j] - qx[i]) * (py - qy[i]) - (qy[j] - qy[i]) * (px - qx[i]))
    signs = np.array(signs)
    return (signs >= 0).all(axis=0) | (signs <= 0).all(axis=0)


def _in_convex_rows(tx, ty, px, py) -> np.ndarray:
    """Per row of (tx, ty) polygons (n, m): whether the point (px, py) lies inside it."""
    nx, ny = np.roll(tx, -1, axis=1), np.roll(ty, -1, axis=1)
    cross = (nx - tx) * (py - ty) - (ny - ty) * (px - tx)
    return (cross >= 0).all(axis=1) | (cross <= 0).all(axis=1)


# --- tiles ---------------------------------------------------------------------------------------

def tile_wcs(order: int, npix: int) -> list:
    """The HPX WCS of a tile (FITS row order), two of them for a tile astride the projection's
    border (each valid on its side). reproject's own, so tiles line up as every HiPS reader expects
    (a private module of reproject: the version is pinned in requirements.txt)."""
    from astropy.coordinates import ICRS
    from astropy.wcs import WCS
    from reproject.hips import _utils
    header = _utils.tile_header(level=order, index=npix, frame=ICRS(), tile_dims=TILE)
    return [WCS(h) for h in (header if isinstance(header, tuple) else (header,))]


def overlaps(source: Source, order: int, npix: int) -> bool:
    """Whether the tile's outline, in the source's pixels, boxes any of them (cheap; may say yes for a
    tile just off a corner, never no for one that overlaps)."""
    from astropy_healpix import HEALPix, level_to_nside
    import astropy.units as u
    hp = HEALPix(nside=level_to_nside(order), order="nested", frame="icrs")
    lon, lat = hp.boundaries_lonlat([npix], step=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = source.wcs.world_to_pixel_values(lon.to_value(u.deg).ravel(), lat.to_value(u.deg).ravel())
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return True
    h, w = source.weight.shape
    return x.max() >= -0.5 and x.min() <= w - 0.5 and y.max() >= -0.5 and y.min() <= h - 0.5


GRID_STEP = 16          # px: the tile→source pixel mapping is computed on this grid and interpolated


def source_pixels(source_wcs, wcs, shape: tuple[int, int] = (TILE, TILE)) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of an output image (a tile; its *wcs*, *shape* (ny, nx)) falls in the source
    (x, y: (ny, nx) float64, NaN off the sky). The exact mapping (SIP and all) is computed every
    GRID_STEP px and interpolated between: smooth over 16 px to far below a pixel, at 1/256 of the cost."""
    from scipy.ndimage import map_coordinates

    def nodes_of(size):
        nodes = np.arange(0, size + GRID_STEP, GRID_STEP, dtype=np.float64)
        nodes[-1] = min(nodes[-1], size - 1)
        return nodes[np.concatenate([[True], np.diff(nodes) > 0])]

    ny_nodes, nx_nodes = nodes_of(shape[0]), nodes_of(shape[1])
    gx, gy = np.meshgrid(nx_nodes, ny_nodes)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        lon, lat = wcs.pixel_to_world_values(gx, gy)
        x, y = source_wcs.world_to_pixel_values(lon, lat)
    # fractional node index of every output pixel
    fy = np.interp(np.arange(shape[0], dtype=np.float64), ny_nodes, np.arange(len(ny_nodes), dtype=np.float64))
    fx = np.interp(np.arange(shape[1], dtype=np.float64), nx_nodes, np.arange(len(nx_nodes), dtype=np.float64))
    fy, fx = np.meshgrid(fy, fx, indexing="ij")
    out = [map_coordinates(np.asarray(v, np.float64), [fy, fx], order=1, mode="nearest", cval=np.nan) for v in (x, y)]
    return out[0], out[1]


def add_source(acc: dict[int, np.ndarray], source: Source, order: int = ORDER) -> set[int]:
    """Add *source* into the accumulators *acc* (npix → (4, TILE, TILE) float32: Σ w·r, Σ w·g, Σ w·b,
    Σ w; FITS row order, first row south), bilinear. Returns the tiles it put any weight into."""
    from scipy.ndimage import map_coordinates
    h, w = source.weight.shape
    touched = set()
    for npix, total in acc.items():
        if not overlaps(source, order, npix):
            continue
        for wcs in tile_wcs(order, npix):
            x, y = source_pixels(source.wcs, wcs)
            inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
            if not inside.any():
                continue
            xs, ys = np.where(inside, x, 0), np.where(inside, y, 0)
            weight = map_coordinates(source.weight, [ys, xs], order=1, mode="nearest")
            weight = np.where(inside, weight, 0).astype(np.float32)
            if not (weight > 0).any():
                continue
            total[3] += weight
            for c in range(3):
                total[c] += weight * map_coordinates(source.rgb[c], [ys, xs], order=1, mode="nearest")
            touched.add(npix)
    return touched


def finish_tile(total: np.ndarray) -> np.ndarray | None:
    """Accumulated (4, T, T) → (T, T, 4) uint8 RGBA in FITS row order, or None when empty."""
    weight = total[3]
    covered = weight > 0
    if not covered.any():
        return None
    rgb = np.where(covered, total[:3] / np.where(covered, weight, 1), 0)
    rgba = np.empty(weight.shape + (4,), np.uint8)
    rgba[..., :3] = (np.clip(np.moveaxis(rgb, 0, -1), 0, 1) * 255 + 0.5).astype(np.uint8)
    rgba[..., 3] = np.where(covered, 255, 0)
    return rgba


def encode(rgba: np.ndarray) -> bytes:
    """(T, T, 4) uint8 RGBA, FITS row order → PNG bytes (first PNG row north, as HiPS readers expect)."""
    from PIL import Image
    buf = io.BytesIO()
    # level 1: five times faster than the default 6, files 9 % larger (noisy sky compresses little anyway)
    Image.fromarray(np.ascontiguousarray(rgba[::-1]), "RGBA").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """PNG bytes of a tile → (T, T, 4) uint8 RGBA in FITS row order."""
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))[::-1]


def parent_tile(children: list[np.ndarray | None]) -> np.ndarray | None:
    """The parent of four children (RGBA, FITS row order, index 4p + 0..3; None when missing): 2 × 2
    means of the covered pixels, placed as reproject.hips places them."""
    half = TILE // 2
    out = np.zeros((TILE, TILE, 4), np.uint8)
    where = {0: (slice(half, None), slice(None, half)), 1: (slice(None, half), slice(None, half)),
             2: (slice(half, None), slice(half, None)), 3: (slice(None, half), slice(half, None))}
    any_data = False
    for sub, child in enumerate(children):
        if child is None:
            continue
        alpha = (child[..., 3] > 0).astype(np.float32)
        rgb = child[..., :3].astype(np.float32) * alpha[..., None]
        blocks = rgb.reshape(half, 2, half, 2, 3).sum(axis=(1, 3))
        count = alpha.reshape(half, 2, half, 2).sum(axis=(1, 3))
        covered = count > 0
        if not covered.any():
            continue
        any_data = True
        part = np.zeros((half, half, 4), np.uint8)
        part[..., :3] = np.where(covered[..., None], blocks / np.maximum(count, 1)[..., None] + 0.5, 0).astype(np.uint8)
        part[..., 3] = np.where(covered, 255, 0)
        out[where[sub]] = part
    return out if any_data else None


# --- MOC and properties ---------------------------------------------------------------------------

def moc_fits(tiles: set[int], order: int = ORDER) -> bytes:
    """An IVOA MOC 1.1 FITS file of the given tiles at *order* (siblings merged into parents)."""
    from astropy.io import fits
    cells: dict[int, set[int]] = {order: set(tiles)}
    for k in range(order, 0, -1):
        full = [p for p in {n // 4 for n in cells[k]} if all(4 * p + i in cells[k] for i in range(4))]
        cells.setdefault(k - 1, set()).update(full)
        cells[k] -= {4 * p + i for p in full for i in range(4)}
    uniq = sorted(4 * 4 ** k + n for k, ns in cells.items() for n in ns)
    table = fits.BinTableHDU.from_columns([fits.Column("UNIQ", "K", array=np.array(uniq, np.int64))])
    table.header.update({"PIXTYPE": "HEALPIX", "ORDERING": "NUNIQ", "COORDSYS": "C", "MOCORDER": order,
                         "MOCVERS": "1.1", "MOCDIM": "SPACE", "MOCTOOL": "CrowdSky", "EXTNAME": "MOC"})
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(buf)
    return buf.getvalue()


def properties(tiles: set[int], stacks: int, order: int = ORDER, when: float | None = None) -> str:
    """The HiPS ``properties`` file (key = value lines)."""
    when = datetime.fromtimestamp(when if when is not None else time.time(), timezone.utc)
    fraction = len(tiles) / (12 * 4 ** order)
    lines = {
        "creator_did": "ivo://crowdsky/hips/crowd", "obs_title": TITLE,
        "obs_description": f"Every shared crowd stack ({stacks}), reprojected and co-added",
        "dataproduct_type": "image", "hips_version": "1.4", "hips_builder": "CrowdSky (reproject)",
        "hips_release_date": when.strftime("%Y-%m-%dT%H:%MZ"), "hips_status": "public master unclonable",
        "hips_frame": "equatorial", "hips_order": str(order), "hips_order_min": str(MIN_ORDER),
        "hips_tile_width": str(TILE), "hips_tile_format": "png", "hips_pixel_scale":
            f"{45 / TILE / 2 ** order * math.sqrt(2):.6g}", "moc_sky_fraction": f"{fraction:.3g}",
    }
    return "".join(f"{k:<20} = {v}\n" for k, v in lines.items())


# --- the job ----------------------------------------------------------------------------------------

def queue_update(tx, settings, owner_id: int | None) -> int | None:
    """Inside the transaction changing a crowd stack's file: make sure an atlas job will follow (the one
    already waiting, or a new one). Returns its id (None when there is no owner to queue it for).
    Every caller holds the ``groups`` lock (lib/groups.py), so two changes never both find none waiting."""
    from lib import queue
    waiting = tx["jobs"].find_one(kind="atlas", status="pending")
    if waiting is not None:
        return waiting["id"]
    if owner_id is None:
        return None
    return queue.enqueue(tx, kind="atlas", chunk_id=None, owner_id=owner_id,
                         max_attempts=settings.max_attempts if settings is not None else 3)


def _take_lock(db, stop_waiting: Callable[[], None]) -> None:
    """Wait for the atlas lock row (its taken_at > 0 while held); *stop_waiting* is called between tries
    (it raises when the job must give up: lease lost, stacker stopping)."""
    while True:
        t = now()
        with db as tx:
            got = tx.executable.execute(
                _sql("UPDATE locks SET taken_at = :t WHERE name = :n AND (taken_at = 0 OR taken_at < :stale)"),
                {"t": t, "n": LOCK, "stale": t - LOCK_STALE_S}).rowcount
        if got == 1:
            return
        stop_waiting()
        time.sleep(1.0)


def _touch_lock(db) -> None:
    with db as tx:
        tx.executable.execute(_sql("UPDATE locks SET taken_at = :t WHERE name = :n"), {"t": now(), "n": LOCK})


def _drop_lock(db) -> None:
    with db as tx:
        tx.executable.execute(_sql("UPDATE locks SET taken_at = 0 WHERE name = :n"), {"n": LOCK})


def _sql(text: str):
    import sqlalchemy as sa
    return sa.text(text)


def crowd_stacks(db) -> dict[int, dict]:
    """The crowd stacks the atlas shows now: with a file and a plate solution."""
    rows = db.query("SELECT id, version, fits_key, footprint, exposure_s FROM stacks "
                    "WHERE kind = 'crowd' AND fits_key IS NOT NULL AND solved = :true", true=True)
    found = {}
    for r in rows:
        footprint = json.loads(r["footprint"]) if r["footprint"] else None
        if footprint:
            found[int(r["id"])] = {"sig": f"{r['version']}:{r['fits_key']}", "fits_key": r["fits_key"],
                                   "footprint": footprint, "exposure_s": float(r["exposure_s"] or 0.0)}
    return found


def read_state(archive) -> dict:
    from lib.storage import NotFound
    try:
        state = json.loads(b"".join(archive.iter_bytes(STATE_KEY)))
    except NotFound:
        return {"order": ORDER, "stacks": {}}
    if state.get("order") != ORDER:        # the survey's depth changed: built anew
        return {"order": ORDER, "stacks": {}}
    return state


def update(db, archive, workdir: Path, progress: Callable[[float, str], None] = lambda f, m: None) -> dict:
    """Bring the atlas to the crowd stacks of now (see the module docstring).

    Returns ``{"changed": [stack ids], "tiles": tiles written or removed at ORDER, "parents": at lower
    orders, "stacks": crowd stacks shown}``.
    """
    from lib.storage import NotFound, delete_quietly
    state = read_state(archive)
    old = {int(k): v for k, v in state["stacks"].items()}
    current = crowd_stacks(db)
    release_db(db)
    changed = sorted(i for i in set(old) | set(current)
                     if i not in old or i not in current or old[i]["sig"] != current[i]["sig"])
    candidates = {i: candidate_tiles(current[i]["footprint"]) for i in changed if i in current}
    dirty = set()
    for i in changed:
        dirty |= set(old.get(i, {}).get("tiles", ())) | candidates.get(i, set())
    reach = {i: (candidates[i] if i in candidates else set(old[i]["tiles"])) for i in current}
    contributors = sorted(i for i in current if reach[i] & dirty)
    files = {}
    for n, i in enumerate(contributors):
        progress(0.3 * n / max(len(contributors), 1), f"downloading crowd stack {i}")
        files[i] = workdir / f"crowd-{i}.fits"
        with open(files[i], "wb") as out:
            for part in archive.iter_bytes(current[i]["fits_key"]):
                out.write(part)
    tiles_of = {i: set(old[i]["tiles"]) - dirty for i in current if i not in candidates and i in old}
    tiles_of.update({i: set() for i in candidates})
    written: dict[int, np.ndarray | None] = {}
    ordered = sorted(dirty)
    batches = [ordered[k:k + BATCH] for k in range(0, len(ordered), BATCH)]
    for b, batch in enumerate(batches):
        acc = {n: np.zeros((4, TILE, TILE), np.float32) for n in batch}
        for i in contributors:
            wanted = {n: acc[n] for n in batch if n in reach[i]}
            if not wanted:
                continue
            progress(0.3 + 0.5 * b / len(batches), f"tiles {b * BATCH + 1}-{b * BATCH + len(batch)} of {len(ordered)}")
            source = read_source(i, files[i], current[i]["exposure_s"])
            for n in add_source(wanted, source):
                tiles_of.setdefault(i, set()).add(n)
            del source
        for n in batch:
            rgba = finish_tile(acc[n])
            written[n] = rgba
            if rgba is None:
                delete_quietly(archive, [tile_key(ORDER, n)])
            else:
                archive.put(tile_key(ORDER, n), io.BytesIO(encode(rgba)))
        del acc
    progress(0.85, "parent tiles")
    parents = 0
    level = written
    for order in range(ORDER - 1, MIN_ORDER - 1, -1):
        above: dict[int, np.ndarray | None] = {}
        for p in sorted({n // 4 for n in level}):
            children = []
            for c in range(4 * p, 4 * p + 4):
                if c in level:
                    children.append(level[c])
                else:
                    try:
                        children.append(decode(b"".join(archive.iter_bytes(tile_key(order + 1, c)))))
                    except NotFound:
                        children.append(None)
            tile = parent_tile(children)
            above[p] = tile
            if tile is None:
                delete_quietly(archive, [tile_key(order, p)])
            else:
                archive.put(tile_key(order, p), io.BytesIO(encode(tile)))
            parents += 1
        level = above
    covered = set().union(*tiles_of.values()) if tiles_of else set()
    archive.put(PREFIX + "Moc.fits", io.BytesIO(moc_fits(covered)))
    archive.put(PREFIX + "properties", io.BytesIO(properties(covered, len(current)).encode()))
    new_state = {"order": ORDER, "stacks": {str(i): {"sig": current[i]["sig"], "tiles": sorted(tiles_of.get(i, ()))}
                                           for i in current}}
    archive.put(STATE_KEY, io.BytesIO(json.dumps(new_state).encode()))
    return {"changed": changed, "tiles": len(dirty), "parents": parents, "stacks": len(current)}


def release_db(db) -> None:
    from lib.db import release
    release(db)


def run_job(svc, lease, workdir: Path, progress: Callable[[float, str], None]) -> dict:
    """An ``atlas`` job on a stacker next to the database and archive: wait for the atlas lock, update."""
    _take_lock(svc.db, lambda: progress(0.0, "waiting for another atlas update"))
    try:
        def step(fraction: float, message: str) -> None:
            _touch_lock(svc.db)
            progress(fraction, message)
        return update(svc.db, svc.archive, workdir, step)
    finally:
        _drop_lock(svc.db)


def footprints(db) -> list[dict]:
    """The crowd stacks the atlas shows, for its overlay: ``{"id", "object", "frames", "exposure_s",
    "owners", "footprint": [[ra, dec] × 4]}``."""
    rows = db.query("SELECT id, object, frames, exposure_s, owners, footprint FROM stacks "
                    "WHERE kind = 'crowd' AND fits_key IS NOT NULL AND footprint IS NOT NULL ORDER BY id")
    return [{"id": r["id"], "object": r["object"], "frames": int(r["frames"] or 0),
             "exposure_s": round(float(r["exposure_s"] or 0), 1), "owners": int(r["owners"] or 0),
             "footprint": json.loads(r["footprint"])} for r in rows if r["footprint"] and r["footprint"] != "null"]


# --- a region of the crowd data as one FITS mosaic ---------------------------------------------------

MAX_REGION_DEG = 2.0            # each side of a region download
MAX_REGION_PX = 2048            # each side of its image: coarser pixels than the data's for large regions
MAX_REGION_STACKS = 8           # crowd stacks co-added into one region (the nearest)


class RegionError(ValueError):
    """A region that cannot be made (its size); the message says what to change."""


def region_grid(ra: float, dec: float, width: float, height: float):
    """The TAN grid of a region: north up, centred on (ra, dec), S50 pixels (2.39″) or coarser so that
    neither side passes MAX_REGION_PX. Returns (wcs, (ny, nx))."""
    from astropy.wcs import WCS
    for name, value in (("width", width), ("height", height)):
        if not 0 < value <= MAX_REGION_DEG:
            raise RegionError(f"{name} must be more than 0 and at most {MAX_REGION_DEG}° (got {value:g})")
    if not (0 <= ra < 360 and -90 <= dec <= 90):
        raise RegionError("ra must be in [0, 360) and dec in [-90, 90] degrees")
    scale = max(S50_SCALE_ARCSEC / 3600, max(width, height) / MAX_REGION_PX)
    nx, ny = max(1, round(width / scale)), max(1, round(height / scale))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.wcs.cdelt = [-scale, scale]
    wcs.wcs.radesys = "ICRS"
    return wcs, (ny, nx)


def region_fits(db, archive, ra: float, dec: float, width: float, height: float, workdir: Path) -> bytes | None:
    """The crowd data in a region, co-added on one TAN grid (see `region_grid`), as FITS bytes: primary
    (3, ny, nx) float32 linear RGB (sky subtracted; each crowd stack on its own brightness scale, its
    first source's), COVERAGE (ny, nx) float32 the summed weights (exposure seconds × relative
    coverage: 0 where no crowd stack reaches), SOURCES the crowd stacks used. None when no crowd stack
    reaches the region. Memory: about 5 × 4 bytes per output pixel plus one crowd stack."""
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from scipy.ndimage import map_coordinates
    from lib.stacking import solve
    wcs, (ny, nx) = region_grid(ra, dec, width, height)
    centre = SkyCoord(ra, dec, unit="deg")
    reach = math.hypot(width, height) / 2
    near = []
    for stack_id, stack in crowd_stacks(db).items():
        corners = SkyCoord([c[0] for c in stack["footprint"]], [c[1] for c in stack["footprint"]], unit="deg")
        if corners.separation(centre).deg.min() <= reach + corners.separation(corners[0]).deg.max():
            mid = SkyCoord(*corners.cartesian.xyz.mean(axis=1), representation_type="cartesian")
            near.append((float(SkyCoord(mid.spherical.lon, mid.spherical.lat).separation(centre).deg), stack_id, stack))
    release_db(db)
    near = sorted(near, key=lambda t: t[0])[:MAX_REGION_STACKS]
    total = np.zeros((3, ny, nx), np.float32)
    weight_sum = np.zeros((ny, nx), np.float32)
    used = []
    for _, stack_id, stack in near:
        path = workdir / f"region-{stack_id}.fits"
        with open(path, "wb") as out:
            for part in archive.iter_bytes(stack["fits_key"]):
                out.write(part)
        with fits.open(path, memmap=False) as hdul:
            image = hdul[0].data.astype(np.float32)
            weight = hdul["WEIGHT"].data.astype(np.float32) if "WEIGHT" in hdul else np.ones(image.shape[1:], np.float32)
            source_wcs = solve.celestial_wcs(hdul[0].header)
        path.unlink()
        x, y = source_pixels(source_wcs, wcs, (ny, nx))
        h, w = weight.shape
        inside = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        if not inside.any():
            continue
        peak = float(weight.max()) or 1.0
        xs, ys = np.where(inside, x, 0), np.where(inside, y, 0)
        wmap = np.where(inside, map_coordinates(weight, [ys, xs], order=1), 0).astype(np.float32)
        wmap *= np.float32(max(stack["exposure_s"], 1.0) / peak)
        if not (wmap > 0).any():
            continue
        for c in range(3):
            total[c] += wmap * np.nan_to_num(map_coordinates(image[c], [ys, xs], order=1))
        weight_sum += wmap
        used.append((stack_id, stack["exposure_s"]))
        del image, weight, x, y, xs, ys
    if not used:
        return None
    covered = weight_sum > 0
    total /= np.where(covered, weight_sum, 1)[None]
    total[:, ~covered] = np.nan
    header = wcs.to_header()
    header["BUNIT"] = ("", "linear, sky subtracted; each crowd stack on its own scale")
    header["NSTACKS"] = (len(used), "crowd stacks co-added")
    header["ORIGIN"] = "CrowdSky crowd atlas"
    header["COMMENT"] = "Shared crowd data only. COVERAGE: summed weights (exposure s x relative coverage)."
    cover = fits.ImageHDU(weight_sum, header=wcs.to_header(), name="COVERAGE")
    sources = fits.BinTableHDU.from_columns([
        fits.Column("ID", "K", array=[i for i, _ in used]),
        fits.Column("EXPTIME", "D", array=[e for _, e in used])], name="SOURCES")
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(total, header=header), cover, sources]).writeto(buf)
    return buf.getvalue()
