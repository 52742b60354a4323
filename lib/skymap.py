"""The sky map's data: where on the sky the stacks a viewer may see were taken, and when.

One compact row per stack (columns named once in ``fields``) keeps the answer small enough for the
browser to draw tens of thousands of stacks at once; the browser bins, projects and filters them.
The position is the chunk's pointing (RA/Dec of the telescope), never the observer's site; a
plate-solved stack also carries its footprint, the four corners of its field on the sky (its real,
rotated outline), which the map draws.
"""
from __future__ import annotations

import json

from lib.stacks import visible_to

FIELDS = ["id", "ra", "dec", "date_beg", "kind", "object", "frames", "exposure_s", "fits_size", "owner", "mine",
          "footprint"]


def points(db, viewer_id: int | None, limit: int = 50_000) -> dict:
    """``{"fields": [...], "stacks": [[id, ra, dec, ...], ...], "truncated": bool}``, newest first."""
    condition, params = visible_to(db, viewer_id)
    rows = db.query(
        "SELECT s.id, s.ra, s.dec, s.date_beg, s.kind, s.object, s.frames, s.exposure_s, s.fits_size, "
        "s.owner_id, s.footprint, u.username AS owner FROM stacks s LEFT JOIN users u ON u.id = s.owner_id "
        f"WHERE {condition} AND s.ra IS NOT NULL AND s.dec IS NOT NULL ORDER BY s.id DESC LIMIT :limit",
        limit=int(limit) + 1, **params)
    out = []
    for r in rows:
        out.append([r["id"], round(float(r["ra"]), 5), round(float(r["dec"]), 5), r["date_beg"], r["kind"],
                    r["object"], int(r["frames"] or 0), round(float(r["exposure_s"] or 0), 1), int(r["fits_size"] or 0),
                    r["owner"], viewer_id is not None and r["owner_id"] == viewer_id,
                    json.loads(r["footprint"]) if r["footprint"] else None])
    return {"fields": FIELDS, "stacks": out[:limit], "truncated": len(out) > limit}
