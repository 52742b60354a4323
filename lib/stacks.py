"""Stacks: where their files live in the archive, what their rows say, and who may see them.

A stack's numbers (frames used and rejected, exposure, time span) are read back from the FITS file
the pipeline wrote, so the row and the file can never disagree, whether the stacker ran next to the
database or on a remote machine that only uploaded the file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from astropy.io import fits

from lib import catalog
from lib.db import now
from lib.stacking import solve

CHUNK, DEEP, CROWD = "chunk", "deep", "crowd"


@dataclass
class StackSummary:
    object: str
    instrument: str
    frames_used: int
    exposure_s: float
    date_beg: str
    date_end: str
    fwhm_px: float | None
    noise: float | None
    verdicts: list[dict] = field(default_factory=list)   # one per input frame, in input order

    frames_input: int | None = None          # when the stack says how many frames went in
    sky: dict = field(default_factory=dict)  # the stack's columns from its WCS: see sky_columns

    @property
    def frames_rejected(self) -> int:
        if self.frames_input is not None:
            return max(0, self.frames_input - self.frames_used)
        return sum(1 for v in self.verdicts if not v["used"])


def archive_keys(kind: str, job_id: int, lease_token: str) -> tuple[str, str]:
    """Archive keys for a job's outputs; per lease, so a stacker that lost its lease and cleans up
    after itself can never delete what the stacker that replaced it wrote."""
    base = f"stacks/{kind}/{job_id}/{lease_token[:16]}"
    return f"{base}/stack.fits", f"{base}/preview.png"


def read_summary(fits_path) -> StackSummary:
    """What the stack FITS at *fits_path* says about itself (primary header + FRAMES table)."""
    with fits.open(fits_path, memmap=False) as hdul:
        header = hdul[0].header
        verdicts = []
        if "FRAMES" in hdul:
            table = hdul["FRAMES"].data
            for row in table:
                verdicts.append({
                    "name": str(row["NAME"]).strip(),
                    "used": bool(row["USED"]),
                    "reason": (str(row["REASON"]).strip() or None),
                    "fwhm_px": _finite(row["FWHM"]),
                    "stars": int(row["STARS"]) if int(row["STARS"]) >= 0 else None,
                    "background": _finite(row["BACKGROUND"]),
                    "noise": _finite(row["NOISE"]),
                })
        sky = sky_columns(header)
        return StackSummary(
            object=sky.pop("shown_object") or "unknown", instrument=str(header.get("INSTRUME", "unknown")),
            frames_used=int(header["NCOMBINE"]), exposure_s=float(header["EXPTIME"]),
            date_beg=str(header["DATE-BEG"]), date_end=str(header["DATE-END"]),
            fwhm_px=_finite(header.get("FWHM", _median([v["fwhm_px"] for v in verdicts if v["used"]]))),
            noise=_finite(header.get("BGNOISE")),
            verdicts=verdicts, frames_input=header.get("NINPUT"), sky=sky)


def sky_columns(header: fits.Header) -> dict:
    """The stacks-table columns a stack's header gives about its place on the sky, so that pages and
    listings never re-read the FITS: ``filter``, ``solved``, ``sky`` (JSON of solve.sky_summary),
    ``objects`` (JSON of catalog.objects_in_field), ``target`` (the OpenNGC key it is filed under),
    ``footprint`` (JSON of its four corners on the sky, for the sky map) and
    ``shown_object`` (the name it is listed under: its OBJECT, or the main object in the field when
    OBJECT is empty or names something outside it)."""
    summary = solve.sky_summary(header)
    objects = []
    if summary["solved"]:
        objects = catalog.objects_in_field(solve.celestial_wcs(header), int(header["NAXIS1"]), int(header["NAXIS2"]))
    header_object = str(header.get("OBJECT", "") or "").strip()
    target, shown = catalog.filed_under(header_object, objects, int(header.get("NAXIS1", 0)),
                                        int(header.get("NAXIS2", 0)))
    filter_name = str(header.get("FILTER", "") or "").strip()[:16] or None
    outline = [[round(ra, 5), round(dec, 5)] for ra, dec in summary["footprint"]] if summary["solved"] else None
    return {"filter": filter_name, "solved": summary["solved"], "sky": json.dumps(summary),
            "objects": json.dumps(objects), "target": target, "footprint": json.dumps(outline),
            "shown_object": shown, **photometry_columns(header)}


# stacks-table column <- header keyword of the stack's photometry (lib/stacking/photometry.py)
PHOTOMETRY_COLUMNS = {"fwhm_arcsec": "FWHMARC", "zero_point": "MAGZPT", "zero_point_scatter": "MAGZPSIG",
                      "calibration_stars": "MAGZPN", "sky_mag": "SKYMAG", "limiting_mag": "LIMMAG"}


def photometry_columns(header: fits.Header) -> dict:
    """The stacks-table columns of a stack's photometry keywords (None where the header has none)."""
    columns = {column: _finite(header.get(keyword)) for column, keyword in PHOTOMETRY_COLUMNS.items()}
    if columns["calibration_stars"] is not None:
        columns["calibration_stars"] = int(columns["calibration_stars"])
    return columns


def photometry_view(stack: dict) -> dict | None:
    """``photometry`` of `GET /api/v1/stacks/<id>`: the measured numbers, None when not measured."""
    if stack.get("zero_point") is None and stack.get("fwhm_arcsec") is None:
        return None
    return {"fwhm_arcsec": stack.get("fwhm_arcsec"), "zero_point": stack.get("zero_point"),
            "zero_point_scatter": stack.get("zero_point_scatter"), "sky_mag": stack.get("sky_mag"),
            "limiting_mag": stack.get("limiting_mag"), "stars": stack.get("calibration_stars"),
            "band": "V (Tycho-2 VT, measured on the green plane)"}


def _median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def record_chunk_stack(tx, job: dict, chunk: dict, frames: list[dict], summary: StackSummary,
                       fits_key: str, preview_key: str, fits_size: int) -> int:
    """Insert the stack row and its per-frame rows inside the queue's completion transaction.

    *frames* are the chunk's frame rows in the order they were given to the pipeline; the FITS
    FRAMES table lists verdicts in that same order.
    """
    stack_id = tx["stacks"].insert({
        "job_id": job["id"], "kind": CHUNK, "owner_id": chunk["owner_id"], "chunk_id": chunk["id"],
        "chunk_key": chunk["chunk_key"], "object": summary.object, "telescope": chunk["telescope"],
        "ra": chunk["ra"], "dec": chunk["dec"], "frames": summary.frames_used,
        "frames_rejected": summary.frames_rejected, "exposure_s": summary.exposure_s,
        "date_beg": summary.date_beg, "date_end": summary.date_end, "fits_key": fits_key,
        "preview_key": preview_key, "fits_size": fits_size, "fwhm_px": summary.fwhm_px,
        "noise": summary.noise, "created_at": now(), **summary.sky,
    })
    tx["jobs"].update({"id": job["id"], "message": plate_message(summary.sky)}, ["id"])
    for frame, verdict in zip(frames, summary.verdicts):
        tx["stack_frames"].insert({
            "stack_id": stack_id, "frame_id": frame["id"], "filename": frame["filename"],
            "used": verdict["used"], "reason": (verdict["reason"] or None) and verdict["reason"][:255],
            "fwhm_px": verdict["fwhm_px"], "stars": verdict["stars"],
            "background": verdict["background"], "noise": verdict["noise"],
        })
    return stack_id


def plate_message(columns: dict) -> str:
    """The finished job's message about its plate solve: the scale found, or why there is none."""
    sky = json.loads(columns.get("sky") or "null") or {}
    if sky.get("solved"):
        return f"done; plate solved at {sky['scale_arcsec']:.2f} arcsec/px"
    return f"done; not plate solved: {sky.get('reason') or 'not tried'}"[:255]


# --- who sees what -----------------------------------------------------------------------------

def visible_to(db, viewer_id: int | None) -> tuple[str, dict]:
    """SQL condition (on ``stacks s LEFT JOIN users u ON u.id = s.owner_id``) for the stacks
    *viewer_id* may see: their own, those of owners who share with the crowd, and crowd stacks
    (which hold nothing but sharing owners' data). A deep or crowd stack shows once it has an image."""
    condition = "(s.fits_key IS NOT NULL AND (s.kind = 'crowd' OR u.share_with_crowd = :true"
    params = {"true": True}
    if viewer_id is not None:
        condition += " OR s.owner_id = :viewer"
        params["viewer"] = viewer_id
    return condition + "))", params


def list_stacks(db, viewer_id: int | None, *, object_name: str | None = None,
                limit: int = 60, offset: int = 0) -> list[dict]:
    condition, params = visible_to(db, viewer_id)
    sql = ("SELECT s.*, u.username AS owner FROM stacks s LEFT JOIN users u ON u.id = s.owner_id "
           f"WHERE {condition}")
    if object_name:
        condition, object_params = object_condition(object_name)
        sql += f" AND {condition}"
        params |= object_params
    sql += " ORDER BY s.id DESC LIMIT :limit OFFSET :offset"
    params.update(limit=int(limit), offset=int(offset))
    return [dict(r) for r in db.query(sql, **params)]


def object_condition(name: str) -> tuple[str, dict]:
    """SQL condition (on ``stacks s``) for the stacks of the object *name*, written any way: a name the
    catalogue knows ("M94", "m 94", "NGC 4736", "ngc4736") matches every stack filed under that object
    (see catalog.filed_under); any name also matches the OBJECT text itself, case-insensitively."""
    text = name.strip()
    key = catalog.canonical(text)
    if key is None:
        return "LOWER(s.object) = LOWER(:object)", {"object": text}
    return "(s.target = :target OR LOWER(s.object) = LOWER(:object))", {"object": text, "target": key}


def get_stack(db, viewer_id: int | None, stack_id: int) -> dict | None:
    condition, params = visible_to(db, viewer_id)
    rows = list(db.query("SELECT s.*, u.username AS owner FROM stacks s LEFT JOIN users u ON u.id = s.owner_id "
                         f"WHERE s.id = :id AND {condition}", id=stack_id, **params))
    return dict(rows[0]) if rows else None


def objects(db, viewer_id: int | None) -> list[str]:
    condition, params = visible_to(db, viewer_id)
    rows = db.query("SELECT DISTINCT s.object FROM stacks s LEFT JOIN users u ON u.id = s.owner_id "
                    f"WHERE {condition} ORDER BY s.object", **params)
    return [r["object"] for r in rows]


def api_view(stack: dict, base_url: str = "") -> dict:
    return {
        "id": stack["id"], "kind": stack["kind"], "object": stack["object"], "chunk_key": stack["chunk_key"],
        "owner": stack.get("owner"), "telescope": stack["telescope"], "ra": stack["ra"], "dec": stack["dec"],
        "frames": stack["frames"], "frames_rejected": stack["frames_rejected"],
        "exposure_s": stack["exposure_s"], "date_beg": stack["date_beg"], "date_end": stack["date_end"],
        "fwhm_px": stack["fwhm_px"], "noise": stack["noise"],
        "nights": stack.get("nights"), "owners": stack.get("owners"), "instrument": stack.get("instrument"),
        "filter": stack.get("filter"), "solved": bool(stack.get("solved")),
        "fits_url": f"{base_url}/stacks/{stack['id']}/stack.fits",
        "preview_url": f"{base_url}/stacks/{stack['id']}/preview.png",
    }


def sky_view(stack: dict) -> dict:
    """``{"wcs": {...}, "objects": [...]}`` of a stack row, as `GET /api/v1/stacks/<id>` shows them."""
    wcs = json.loads(stack.get("sky") or "null") or solve.sky_summary(fits.Header())
    objects = [{k: o[k] for k in ("name", "aliases", "type", "ra", "dec", "x", "y", "major_arcmin",
                                  "minor_arcmin", "angle_deg", "outline")}
               for o in json.loads(stack.get("objects") or "[]")]
    return {"wcs": wcs, "objects": objects}


def preview_box(header: fits.Header | None) -> dict | None:
    """The part of the stack the preview PNG shows, in FITS pixels (0-based, y along NAXIS2):
    ``{"x0", "y0", "width", "height"}``; the PNG is that box 1:1 with FITS row y0 at its bottom.

    The crop comes from the preview's PV* header cards (lib/stacking/preview.py); a stack written before
    previews were cropped shows its whole image. None when *header* is None (the FITS could not be read).
    """
    if header is None:
        return None
    width, height = int(header.get("NAXIS1", 0)), int(header.get("NAXIS2", 0))
    try:
        y0, y1, x0, x1 = (int(header[k]) for k in ("PVCROPY0", "PVCROPY1", "PVCROPX0", "PVCROPX1"))
    except (KeyError, ValueError, TypeError):
        return {"x0": 0, "y0": 0, "width": width, "height": height}
    return {"x0": x0, "y0": y0, "width": x1 - x0, "height": y1 - y0}


def download_name(stack: dict) -> str:
    safe_object = "".join(c if c.isalnum() else "_" for c in stack["object"]).strip("_") or "stack"
    return f"CrowdSky_{stack['kind']}_{safe_object}_{stack['chunk_key'] or stack['id']}.fits"

