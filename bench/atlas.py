"""Crowd atlas: time of one atlas update per crowd stack change, and the atlas's size on disk.

    python bench/atlas.py

Builds two crowd stacks from the real M 94 frames (2025-03-27 and 2025-04-09: two telescopes, two
pointings of one target, so they overlap), then times the atlas update (lib/atlas.update, as an
atlas job runs it, against a folder archive and SQLite) after each change: the first crowd stack
added, the second added over it, a new version of the first, the second deleted. Prints per change
the wall time, the tiles redone at the deepest order and the parents redone, then the size of the
survey on disk (tiles, MOC, properties) per square degree it covers. Asserts nothing.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from astropy.io import fits  # noqa: E402

from lib import atlas, db as dbmod, stacks  # noqa: E402
from lib.stacking import stack_files  # noqa: E402
from lib.stacking.group_files import bring_up_to_date  # noqa: E402
from lib.stacking.solve import solve_stack_file  # noqa: E402
from lib.storage import open_storage  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "seestar-m94"
NIGHTS = ("2025-03-27", "2025-04-09")


def crowd_file(night: str, work: Path) -> Path:
    """A crowd stack of one night's frames, made as a crowd job makes it (plate solved)."""
    chunk, crowd = work / f"chunk-{night}.fits", work / f"crowd-{night}.fits"
    stack_files(sorted((REAL / night).glob("*.fit"))).write_fits(chunk)
    bring_up_to_date(None, [(1, chunk)], lambda f, m: None).write_fits(crowd)
    solve_stack_file(crowd, tmp_dir=str(work))
    return crowd


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    archive = open_storage(f"file://{work / 'archive'}")
    db = dbmod.connect(f"sqlite:///{work / 'bench.db'}")
    started = time.perf_counter()
    files = {night: crowd_file(night, work) for night in NIGHTS}
    print(f"two crowd stacks made in {time.perf_counter() - started:.1f} s (not counted below)")

    def put(night: str, stack_id: int | None = None) -> int:
        key = f"stacks/crowd/{night}.fits"
        with open(files[night], "rb") as f:
            size = archive.put(key, f)
        sky = stacks.sky_columns(fits.getheader(files[night]))
        header = fits.getheader(files[night])
        row = {"kind": "crowd", "fits_key": key, "fits_size": size, "solved": sky["solved"],
               "footprint": sky["footprint"], "exposure_s": float(header.get("EXPTIME", 0)), "object": "M 94",
               "ra": 192.72, "dec": 41.12, "frames": int(header.get("NCOMBINE", 0)), "owners": 1}
        with db as tx:
            if stack_id is None:
                return tx["stacks"].insert({**row, "version": 1})
            version = tx["stacks"].find_one(id=stack_id)["version"] + 1
            tx["stacks"].update({"id": stack_id, **row, "version": version}, ["id"])
            return stack_id

    def update(what: str) -> None:
        t = time.perf_counter()
        done = atlas.update(db, archive, work)
        print(f"{what:<42} {time.perf_counter() - t:6.1f} s   {done['tiles']:3d} tiles at order "
              f"{atlas.ORDER}, {done['parents']:2d} parents, {done['stacks']} crowd stacks shown")

    print(f"\n{'change':<42} {'time':>8}")
    first = put(NIGHTS[0])
    update("first crowd stack added")
    second = put(NIGHTS[1])
    update("second crowd stack added, overlapping")
    put(NIGHTS[0], first)
    update("new version of the first")
    with db as tx:
        tx["stacks"].delete(id=second)
    update("second deleted")
    put(NIGHTS[1], None)
    update("second added again (for the size below)")

    state = json.loads(b"".join(archive.iter_bytes(atlas.STATE_KEY)))
    covered = set().union(*(set(s["tiles"]) for s in state["stacks"].values()))
    tile_deg2 = 41252.96 / (12 * 4 ** atlas.ORDER)
    root = work / "archive" / "hips" / "crowd"
    sizes = {p: p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "state.json"}
    total, deepest = sum(sizes.values()), sum(v for p, v in sizes.items() if f"Norder{atlas.ORDER}/" in str(p))
    area = len(covered) * tile_deg2
    print(f"\natlas on disk: {total / 1e6:.1f} MB in {len(sizes)} files ({deepest / 1e6:.1f} MB at order "
          f"{atlas.ORDER}) over {len(covered)} tiles = {area:.2f} deg²")
    print(f"size per square degree covered: {total / 1e6 / area:.1f} MB/deg² "
          f"(whole sky at this rate: {total / area * 41253 / 1e12:.2f} TB)")


if __name__ == "__main__":
    main()
