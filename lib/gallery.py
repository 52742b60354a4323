"""The gallery: filtered, keyset-paged listings of the stacks a viewer may see, the numbers a stack
page shows, the site's totals, and small cached thumbnails of the previews.

Pages are keyed on the stack id (newest first): a page asks for ids below (or above) the last one it
showed, so page 400 costs the same as page 1 whatever the number of stacks, and a stack added while
someone is paging never shifts what they see.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlencode

from lib.stacks import CHUNK, CROWD, DEEP, object_condition, visible_to
from lib.web import HTTPProblem

log = logging.getLogger("crowdsky.gallery")

PAGE_SIZE = 24
KINDS = (CHUNK, DEEP, CROWD)
MAX_SELECTION = 1000          # stacks in one "Download all" ZIP
THUMB_SIDE = 480              # longest side of a gallery thumbnail, pixels

_FROM = " FROM stacks s LEFT JOIN users u ON u.id = s.owner_id"     # crowd stacks have no owner
_SELECT = "SELECT s.*, u.username AS owner" + _FROM


@dataclass
class Filters:
    """What the gallery's filter form asks for; every field optional."""
    object: str | None = None
    kind: str | None = None
    owner: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, query) -> "Filters":
        """Read the filters from a query (a Bottle FormsDict or a plain dict); bad values are
        dropped and named in ``errors`` instead of failing the page."""
        get = (lambda k: query.getunicode(k, "")) if hasattr(query, "getunicode") else (lambda k: query.get(k, ""))
        f = cls()
        f.object = (get("object") or "").strip()[:128] or None
        kind = (get("kind") or "").strip().lower()
        if kind in KINDS:
            f.kind = kind
        elif kind:
            f.errors.append(f"unknown kind {kind!r}: use chunk, deep or crowd")
        f.owner = (get("owner") or "").strip()[:64] or None
        for name in ("from", "to"):
            text = (get(name) or "").strip()
            if not text:
                continue
            try:
                setattr(f, "date_from" if name == "from" else "date_to", date.fromisoformat(text))
            except ValueError:
                f.errors.append(f"'{text}' is not a date (YYYY-MM-DD)")
        return f

    @property
    def active(self) -> bool:
        return any((self.object, self.kind, self.owner, self.date_from, self.date_to))

    def params(self) -> dict[str, str]:
        out = {"object": self.object, "kind": self.kind, "owner": self.owner,
               "from": self.date_from and self.date_from.isoformat(),
               "to": self.date_to and self.date_to.isoformat()}
        return {k: v for k, v in out.items() if v}

    def url(self, path: str = "/stacks", **extra) -> str:
        params = self.params() | {k: str(v) for k, v in extra.items() if v is not None}
        return path + ("?" + urlencode(params) if params else "")

    def sql(self) -> tuple[str, dict]:
        """Extra ``AND ...`` conditions (on ``s`` and ``u``) and their parameters."""
        parts, params = [], {}
        if self.object:     # by any of its names (see stacks.object_condition)
            condition, object_params = object_condition(self.object)
            parts.append(condition)
            params |= object_params
        if self.kind:
            parts.append("s.kind = :kind")
            params["kind"] = self.kind
        if self.owner:
            # the owner's own stacks, and the crowd stacks their frames went into
            parts.append("(u.username = :owner OR (s.kind = 'crowd' AND EXISTS (SELECT 1 FROM contributions c "
                         "JOIN users cu ON cu.id = c.owner_id WHERE c.group_id = s.id AND cu.username = :owner)))")
            params["owner"] = self.owner
        if self.date_from:
            parts.append("s.date_beg >= :date_from")
            params["date_from"] = self.date_from.isoformat()
        if self.date_to and self.date_to < date.max:     # up to the last day there is: no bound
            parts.append("s.date_beg < :date_to")       # the whole day named, UTC
            params["date_to"] = (self.date_to + timedelta(days=1)).isoformat()
        return "".join(f" AND {p}" for p in parts), params


@dataclass
class Page:
    stacks: list[dict]
    newer: int | None          # cursor for the page before this one (``after=``), None on the first
    older: int | None          # cursor for the next page (``before=``), None on the last


def cursor(value) -> int | None:
    """A page cursor from the query string: a positive stack id, else None."""
    text = str(value or "").strip()
    return int(text) if text.isdigit() and 0 < int(text) < 2**62 else None


def page(db, viewer_id: int | None, filters: Filters, *, before: int | None = None,
         after: int | None = None, size: int = PAGE_SIZE) -> Page:
    """One page of the stacks *viewer_id* may see that match *filters*, newest first.

    ``before``: the page of stacks older than that id; ``after``: the page just newer than it.
    """
    condition, params = visible_to(db, viewer_id)
    extra, extra_params = filters.sql()
    params |= extra_params
    where = f" WHERE {condition}{extra}"
    if after is not None:
        rows = _query(db, f"{_SELECT}{where} AND s.id > :after ORDER BY s.id ASC LIMIT :limit",
                      params | {"after": after, "limit": size + 1})
        has_newer = len(rows) > size
        rows = list(reversed(rows[:size]))
        has_older = bool(rows) and _exists(db, where + " AND s.id < :edge", params | {"edge": rows[-1]["id"]})
    else:
        sql = f"{_SELECT}{where}" + (" AND s.id < :before" if before is not None else "")
        rows = _query(db, sql + " ORDER BY s.id DESC LIMIT :limit",
                      params | {"before": before, "limit": size + 1} if before is not None
                      else params | {"limit": size + 1})
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = before is not None and bool(rows) and _exists(
            db, where + " AND s.id > :edge", params | {"edge": rows[0]["id"]})
    return Page(stacks=rows,
                newer=rows[0]["id"] if rows and has_newer else None,
                older=rows[-1]["id"] if rows and has_older else None)


def _query(db, sql: str, params: dict) -> list[dict]:
    return [dict(r) for r in db.query(sql, **params)]


def _exists(db, where: str, params: dict) -> bool:
    sql = f"SELECT s.id{_FROM}{where} LIMIT 1"
    return bool(_query(db, sql, params))


def owners(db, viewer_id: int | None) -> list[str]:
    """User names of the owners whose stacks *viewer_id* may see (for the owner filter)."""
    condition, params = visible_to(db, viewer_id)
    rows = db.query(f"SELECT DISTINCT u.username AS owner{_FROM} WHERE {condition} AND u.username IS NOT NULL "
                    "ORDER BY u.username", **params)
    return [r["owner"] for r in rows]


def site_numbers(db) -> dict:
    """Totals over what everyone may see, for the front page. Exposure, frames and owners are
    counted on chunk stacks only: deep and crowd stacks re-use the same frames."""
    condition, params = visible_to(db, None)
    row = list(db.query(
        "SELECT COUNT(*) AS stacks, COUNT(DISTINCT s.object) AS objects, "
        "COALESCE(SUM(CASE WHEN s.kind = 'chunk' THEN s.exposure_s ELSE 0 END), 0) AS exposure, "
        "COALESCE(SUM(CASE WHEN s.kind = 'chunk' THEN s.frames ELSE 0 END), 0) AS frames, "
        f"COUNT(DISTINCT s.owner_id) AS owners{_FROM} WHERE {condition}", **params))[0]
    return {"stacks": int(row["stacks"]), "hours": float(row["exposure"] or 0) / 3600.0,
            "objects": int(row["objects"]), "owners": int(row["owners"]), "frames": int(row["frames"])}


# --- one stack -----------------------------------------------------------------------------

def rejections(frames: list[dict]) -> list[tuple[str, int]]:
    """Why frames were left out, most common reason first: ``[(reason, count), ...]``."""
    counts = Counter((f["reason"] or "rejected") for f in frames if not f["used"])
    return counts.most_common()


def time_span(stack: dict) -> str:
    """'2025-03-27 05:45:12 – 05:46:40 UTC (1 min 28 s)' from the stack's DATE-BEG/DATE-END."""
    from datetime import datetime
    try:
        beg = datetime.fromisoformat(str(stack["date_beg"]).rstrip("Z"))
        end = datetime.fromisoformat(str(stack["date_end"]).rstrip("Z"))
    except ValueError:
        return f"{stack['date_beg']} – {stack['date_end']}"
    seconds = max(0, round((end - beg).total_seconds()))
    if seconds > 86400:
        return f"{beg.strftime('%Y-%m-%d')} – {end.strftime('%Y-%m-%d')} ({(end.date() - beg.date()).days} days)"
    length = (f"{seconds // 3600} h {seconds % 3600 // 60} min" if seconds >= 3600
              else f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s")
    end_text = end.strftime("%H:%M:%S") if end.date() == beg.date() else end.strftime("%Y-%m-%d %H:%M:%S")
    return f"{beg.strftime('%Y-%m-%d %H:%M:%S')} – {end_text} UTC ({length})"


def frames_in_time_order(db, stack_id: int) -> list[dict]:
    """A stack's per-frame verdicts in the order the frames were taken (DATE-OBS), each with its
    ``date_obs``; frames whose time is unknown come last, in the order they were stacked."""
    rows = _query(db, "SELECT sf.*, f.date_obs AS date_obs FROM stack_frames sf LEFT JOIN frames f ON f.id = sf.frame_id "
                      "WHERE sf.stack_id = :stack ORDER BY sf.id", {"stack": stack_id})
    return sorted(rows, key=lambda r: (r["date_obs"] is None, r["date_obs"] or "", r["id"]))


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def exposure_text(seconds: float | None) -> str:
    seconds = float(seconds or 0)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def ra_text(ra: float | None) -> str:
    if ra is None:
        return "–"
    total = round(float(ra) / 15.0 * 3600) % (24 * 3600)
    return f"{total // 3600:02d}h {total % 3600 // 60:02d}m {total % 60:02d}s"


def dec_text(dec: float | None) -> str:
    if dec is None:
        return "–"
    sign = "+" if dec >= 0 else "−"
    total = round(abs(float(dec)) * 3600)
    return f"{sign}{total // 3600:02d}° {total % 3600 // 60:02d}′ {total % 60:02d}″"


def group_details(db, stack: dict) -> dict | None:
    """For a deep or crowd stack: who contributed (by user name) and the chunk stacks it sums."""
    if stack["kind"] not in (DEEP, CROWD):
        return None
    from lib import groups
    return {"credits": groups.credits(db, stack["id"]), "chunks": groups.contributing_stacks(db, stack["id"])}


def page_title(stack: dict) -> str:
    if stack["kind"] == CHUNK and stack.get("date_beg"):
        return f"{stack['object']} · {when_text(stack)}"
    return f"{stack['object']} · {stack['kind']} stack"


# --- selections for "Download all" ----------------------------------------------------------

_IDS = re.compile(r"\s*\d{1,18}\s*(,\s*\d{1,18}\s*)*,?\s*")


def parse_ids(text: str) -> list[int]:
    """'1,2,3' → [1, 2, 3] (order kept, repeats dropped); a 400 for anything else."""
    text = (text or "").strip()
    if not text:
        raise HTTPProblem(400, "choose at least one stack: ids=1,2,3")
    if not _IDS.fullmatch(text):
        raise HTTPProblem(400, "ids must be stack numbers separated by commas, e.g. ids=1,2,3")
    ids = list(dict.fromkeys(int(p) for p in text.split(",") if p.strip()))
    if len(ids) > MAX_SELECTION:
        raise HTTPProblem(413, f"{len(ids)} stacks chosen; one download holds at most {MAX_SELECTION}: "
                               "select a smaller region or time window")
    return ids


def visible_stacks(db, viewer_id: int | None, ids: list[int]) -> list[dict]:
    """The rows of *ids*, in that order, if *viewer_id* may see every one of them; else a 404 that
    names the first one missing (someone else's private stack answers exactly like a missing one)."""
    condition, params = visible_to(db, viewer_id)
    found: dict[int, dict] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        names = {f"id{i}": v for i, v in enumerate(part)}
        sql = f"{_SELECT} WHERE {condition} AND s.id IN ({', '.join(':' + n for n in names)})"
        for row in _query(db, sql, params | names):
            found[row["id"]] = row
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPProblem(404, f"no stack {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [found[i] for i in ids]


# --- thumbnails ----------------------------------------------------------------------------

def thumbnail(archive, cache_dir: Path, stack: dict) -> Path | bytes:
    """A small JPEG of the stack's preview: a cached file, or the bytes when the cache cannot be written.

    The cache is a plain folder on the app's machine (``$DATA_DIR/cache/thumbs``); its file name
    includes a hash of the preview's archive key, so a restacked chunk never shows an old picture.
    """
    from PIL import Image

    path = Path(cache_dir) / thumbnail_name(stack)
    if path.exists():
        return path
    source = io.BytesIO(b"".join(archive.iter_bytes(stack["preview_key"])))
    with Image.open(source) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=84, optimize=True, progressive=True)
    data = out.getvalue()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("thumbnail cache not writable (%s): serving without it", exc)
        return data
    return path


def thumbnail_cache(settings) -> Path:
    """The folder where the web app caches thumbnails: $DATA_DIR/cache/thumbs on its machine."""
    return settings.data_dir / "cache" / "thumbs"


def thumbnail_name(stack: dict) -> str:
    """The cache file name of a stack's thumbnail: its id and a hash of its preview's archive key."""
    tag = hashlib.sha256(stack["preview_key"].encode()).hexdigest()[:16]
    return f"{stack['id']}-{tag}.jpg"


def prune_thumbnails(db, cache_dir: Path, min_age_s: float = 3600.0) -> list[str]:
    """Delete cached thumbnails no stack shows any more (the stack was restacked or deleted) and
    half-written files; only files older than min_age_s, so that a thumbnail written for a stack
    newer than this look at the stacks table is left alone. Returns the names deleted.

    Without this the cache would keep one file per preview ever shown; with it, it holds at most one
    per stack (~50 KB each)."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    current = {thumbnail_name(row) for row in db.query(
        "SELECT id, preview_key FROM stacks WHERE preview_key IS NOT NULL")}
    cutoff = time.time() - min_age_s
    deleted = []
    for path in cache_dir.iterdir():
        unused = path.suffix == ".part" or (path.suffix == ".jpg" and path.name not in current)
        if unused and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            deleted.append(path.name)
    return deleted


# --- "Download all": the chosen stacks' FITS in one streamed ZIP ------------------------------

MANIFEST_FIELDS = ["id", "file", "object", "kind", "owner", "telescope", "ra", "dec", "date_beg", "date_end",
                   "frames", "frames_rejected", "exposure_s", "fwhm_px", "noise"]


def zip_members(archive, rows: list[dict]) -> list:
    """ZIP members for *rows*: an ``index.csv`` describing them, then each stack's FITS, read from
    the archive only when its turn comes."""
    import csv

    from lib.stacks import download_name
    from lib.zipstream import Member

    names = [f"{row['id']}_{download_name(row)}" for row in rows]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for row, name in zip(rows, names):
        writer.writerow([name if f == "file" else ("" if row.get(f) is None else row.get(f)) for f in MANIFEST_FIELDS])
    manifest = table.getvalue().encode()
    members = [Member("index.csv", len(manifest), lambda: [manifest])]
    for row, name in zip(rows, names):
        members.append(Member(name, int(row["fits_size"] or 0),
                              lambda key=row["fits_key"]: archive.iter_bytes(key),
                              modified=row.get("created_at")))
    return members


def zip_name(rows: list[dict]) -> str:
    objects = {r["object"] for r in rows}
    label = "".join(c if c.isalnum() else "_" for c in objects.pop()).strip("_") if len(objects) == 1 else "stacks"
    return f"CrowdSky_{label or 'stacks'}_{len(rows)}.zip"


# --- the gallery by target -------------------------------------------------------------------

KIND_ORDER = {DEEP: 0, CROWD: 1, CHUNK: 2}


def night_of(date_beg: str | None) -> date | None:
    """The observing night a UTC start time belongs to: its date 12 h earlier, so that an evening and
    the morning after are one night (the rule lib/groups.py counts nights by)."""
    from datetime import datetime
    try:
        return (datetime.fromisoformat(str(date_beg).rstrip("Z")) - timedelta(hours=12)).date()
    except ValueError:
        return None


def _summary(name: str, rows: list[dict]) -> dict:
    """One target's totals over *rows* (its stacks the viewer may see). Integration, frames and
    nights are counted on chunk stacks only: deep and crowd stacks re-use the same frames."""
    chunks = [r for r in rows if r["kind"] == CHUNK]
    nights = {night_of(r["date_beg"]) for r in chunks} - {None}
    cover = min(rows, key=lambda r: (KIND_ORDER.get(r["kind"], 3), -(r["exposure_s"] or 0), -r["id"]))
    if not chunks:  # only deep/crowd stacks are visible: take their own totals
        nights_n = max((r.get("nights") or 0) for r in rows)
        exposure = max((r["exposure_s"] or 0) for r in rows)
        frames = max((r["frames"] or 0) for r in rows)
    else:
        nights_n, exposure, frames = len(nights), sum(r["exposure_s"] or 0 for r in chunks), \
            sum(r["frames"] or 0 for r in chunks)
    return {"object": name, "exposure_s": exposure, "frames": frames, "nights": nights_n,
            "stacks": len(rows), "chunks": len(chunks), "cover": cover,
            "first": min((r["date_beg"] or "") for r in rows), "last": max((r["date_beg"] or "") for r in rows)}


def targets(db, viewer_id: int | None) -> list[dict]:
    """One summary per target (object) the viewer may see a stack of, most recently observed first;
    see `_summary` for the fields (``cover`` is the stack whose picture stands for the target)."""
    condition, params = visible_to(db, viewer_id)
    by_object: dict[str, list[dict]] = {}
    for row in _query(db, f"{_SELECT} WHERE {condition} ORDER BY s.id", params):
        by_object.setdefault(row["object"], []).append(row)
    out = [_summary(name, rows) for name, rows in by_object.items()]
    return sorted(out, key=lambda t: t["last"], reverse=True)


def target(db, viewer_id: int | None, name: str) -> dict | None:
    """A target's page: its summary, deep stacks, crowd stacks and chunk stacks by night (newest
    night first, each night's stacks in time order); None when the viewer may see none of it."""
    condition, params = visible_to(db, viewer_id)
    rows = _query(db, f"{_SELECT} WHERE {condition} AND s.object = :object ORDER BY s.date_beg, s.id",
                  params | {"object": name})
    if not rows:
        return None
    nights: dict[date | None, list[dict]] = {}
    for row in rows:
        if row["kind"] == CHUNK:
            nights.setdefault(night_of(row["date_beg"]), []).append(row)
    return _summary(name, rows) | {
        "deep": [r for r in rows if r["kind"] == DEEP],
        "crowd": [r for r in rows if r["kind"] == CROWD],
        "by_night": sorted(nights.items(), key=lambda item: item[0] or date.min, reverse=True)}


def when_text(stack: dict) -> str:
    """'2025-04-09 20:54 UTC' (start of the stack) for pages, in place of chunk keys and serials."""
    text = str(stack.get("date_beg") or "")
    return f"{text[:10]} {text[11:16]} UTC" if len(text) >= 16 else (text[:10] or "–")


def block_text(chunk_key: str | None) -> str:
    """'2025-04-09 20:45–21:00 UTC' from a chunk key 'YYYYMMDD.CC_HPnnnnnn' (CC: the day's 15-minute
    block); the key itself when it is not one."""
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})\.(\d{1,2})_HP\d+", chunk_key or "")
    if not match:
        return chunk_key or "–"
    year, month, day, block = match.groups()
    start = int(block) * 15
    end = start + 15
    return (f"{year}-{month}-{day} {start // 60:02d}:{start % 60:02d}–"
            f"{end // 60 % 24:02d}:{end % 60:02d} UTC")
