"""Stacks: where their files live in the archive, what their rows say, and who may see them.

A stack's numbers (frames used and rejected, exposure, time span) are read back from the FITS file
the pipeline wrote, so the row and the file can never disagree, whether the stacker ran next to the
database or on a remote machine that only uploaded the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from astropy.io import fits

from lib.db import now

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
        return StackSummary(
            object=str(header.get("OBJECT", "unknown")), instrument=str(header.get("INSTRUME", "unknown")),
            frames_used=int(header["NCOMBINE"]), exposure_s=float(header["EXPTIME"]),
            date_beg=str(header["DATE-BEG"]), date_end=str(header["DATE-END"]),
            fwhm_px=_finite(header.get("FWHM", _median([v["fwhm_px"] for v in verdicts if v["used"]]))),
            noise=_finite(header.get("BGNOISE")),
            verdicts=verdicts, frames_input=header.get("NINPUT"))


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
        "noise": summary.noise, "created_at": now(),
    })
    for frame, verdict in zip(frames, summary.verdicts):
        tx["stack_frames"].insert({
            "stack_id": stack_id, "frame_id": frame["id"], "filename": frame["filename"],
            "used": verdict["used"], "reason": (verdict["reason"] or None) and verdict["reason"][:255],
            "fwhm_px": verdict["fwhm_px"], "stars": verdict["stars"],
            "background": verdict["background"], "noise": verdict["noise"],
        })
    return stack_id


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
        sql += " AND LOWER(s.object) = LOWER(:object)"
        params["object"] = object_name.strip()
    sql += " ORDER BY s.id DESC LIMIT :limit OFFSET :offset"
    params.update(limit=int(limit), offset=int(offset))
    return [dict(r) for r in db.query(sql, **params)]


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


def frame_verdicts(db, stack_id: int) -> list[dict]:
    return [dict(r) for r in db["stack_frames"].find(stack_id=stack_id, order_by="id")]


def api_view(stack: dict, base_url: str = "") -> dict:
    return {
        "id": stack["id"], "kind": stack["kind"], "object": stack["object"], "chunk_key": stack["chunk_key"],
        "owner": stack.get("owner"), "telescope": stack["telescope"], "ra": stack["ra"], "dec": stack["dec"],
        "frames": stack["frames"], "frames_rejected": stack["frames_rejected"],
        "exposure_s": stack["exposure_s"], "date_beg": stack["date_beg"], "date_end": stack["date_end"],
        "fwhm_px": stack["fwhm_px"], "noise": stack["noise"],
        "nights": stack.get("nights"), "owners": stack.get("owners"), "instrument": stack.get("instrument"),
        "fits_url": f"{base_url}/stacks/{stack['id']}/stack.fits",
        "preview_url": f"{base_url}/stacks/{stack['id']}/preview.png",
    }


def download_name(stack: dict) -> str:
    safe_object = "".join(c if c.isalnum() else "_" for c in stack["object"]).strip("_") or "stack"
    return f"CrowdSky_{stack['kind']}_{safe_object}_{stack['chunk_key'] or stack['id']}.fits"

