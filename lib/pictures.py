"""Pictures of a stack beyond the preview PNG: the 16-bit rendition the stack page's stretch control
redraws in the browser, and the JPEG / 16-bit TIFF downloads "as shown" with the owner's black point
and strength.

Both start from the linear FITS and the rendering recorded in its header (lib/stacking/preview.py:
crop, sky model, white balance, chroma noise reduction); a stack written before the header carried
those factors gets them measured afresh. The rendition is cached on the app's machine
($DATA_DIR/cache/pictures), keyed like the thumbnails by stack id and a hash of the FITS key;
`prune_renditions` (the janitor's hourly `prune-renditions`) drops those of stacks gone or restacked
and those unused for a month.

Rendition format (GET /stacks/<id>/rendition.bin): little-endian uint16 R, G, B interleaved, rows top
to bottom as shown (the FITS's first row at the bottom), at most RENDITION_SIDE px on the long side;
value v stands for the calibrated level lo + v / 65535 · (hi − lo). The response header
X-Rendition carries JSON {width, height, lo, hi, black, white, strength, noise}: black/white/strength
are the preview's own (calibrated units, asinh β), noise the sky sigma (black points are given in it).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RENDITION_SIDE = 1200          # px, long side of the browser's rendition: ~4.5 MB for a Seestar stack
BLACK_RANGE = (-5.0, 50.0)     # black point, sky sigmas below the sky
STRENGTH_RANGE = (1.0, 1e5)    # asinh β


class PictureError(ValueError):
    """A download parameter is out of range; the message names it."""


@dataclass(frozen=True)
class Settings:
    """The owner's stretch: black point in sky sigmas below the sky, asinh strength β (None: the preview's)."""

    black_sigmas: float | None = None
    strength: float | None = None

    @classmethod
    def from_query(cls, query) -> "Settings":
        """From ?black=&strength= (both optional); PictureError names a bad value."""
        def number(name, low, high):
            text = (query.get(name) or "").strip()
            if not text:
                return None
            try:
                value = float(text)
            except ValueError:
                raise PictureError(f"{name} must be a number, got {text[:40]!r}") from None
            if not (low <= value <= high):
                raise PictureError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
            return value
        return cls(number("black", *BLACK_RANGE), number("strength", *STRENGTH_RANGE))


def stretch_defaults(header) -> dict | None:
    """The preview's own black point (sky sigmas) and strength from a stack's header, for the stack
    page's sliders before the rendition is loaded; None for a stack whose header has no rendering."""
    from lib.stacking.preview import Rendering

    plan = Rendering.from_header(header) if header is not None else None
    if plan is None or not plan.noise > 0:
        return None
    return {"black": round(-plan.black / plan.noise, 1), "strength": plan.strength}


def read_stack(archive, stack: dict):
    """(image (3, H, W) float32, coverage (H, W) or None, primary header) of a stack's FITS."""
    from astropy.io import fits

    data = b"".join(archive.iter_bytes(stack["fits_key"]))
    with fits.open(io.BytesIO(data)) as hdul:
        image = np.asarray(hdul[0].data, dtype=np.float32)
        cover = None
        for name in ("COVERAGE", "WEIGHT"):
            if name in hdul:
                cover = np.asarray(hdul[name].data)
                break
        header = hdul[0].header.copy()
    if image.ndim == 2:
        image = np.stack([image] * 3)
    return image, cover, header


def rendering(image: np.ndarray, cover, header):
    """The rendering recorded in the header, or one measured now for a stack without it."""
    from lib.stacking.preview import Rendering, plan_rendering

    return Rendering.from_header(header) or plan_rendering(image, cover, None)


def as_shown(image: np.ndarray, plan, settings: Settings) -> np.ndarray:
    """(h, w, 3) float32 0..1, rows top to bottom as shown, with the owner's black point and strength."""
    from lib.stacking.preview import calibrate, stretch_rgb

    black = plan.black if settings.black_sigmas is None else -settings.black_sigmas * plan.noise
    strength = plan.strength if settings.strength is None else settings.strength
    return stretch_rgb(calibrate(image, plan), black, plan.white, strength)[::-1]


def encode(shown: np.ndarray, fmt: str) -> bytes:
    """JPEG (8-bit, quality 92) or TIFF (16-bit RGB, deflate) bytes of an (h, w, 3) 0..1 picture."""
    import cv2

    bgr = np.ascontiguousarray(shown[..., ::-1])
    if fmt == "tiff":
        ok, data = cv2.imencode(".tiff", (bgr * 65535 + 0.5).astype(np.uint16),
                                [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    elif fmt == "jpg":
        ok, data = cv2.imencode(".jpg", (bgr * 255 + 0.5).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    else:
        raise PictureError(f"unknown picture format {fmt!r}: jpg or tiff")
    if not ok:
        raise ValueError(f"cannot encode a {shown.shape} picture as {fmt}")
    return data.tobytes()


def download(archive, stack: dict, settings: Settings, fmt: str) -> bytes:
    """The stack's picture as the stack page shows it, full size, as JPEG or 16-bit TIFF bytes."""
    image, cover, header = read_stack(archive, stack)
    return encode(as_shown(image, rendering(image, cover, header), settings), fmt)


def download_name(stack: dict, fmt: str) -> str:
    from lib.stacks import download_name as fits_name

    return fits_name(stack).rsplit(".", 1)[0] + f"_as_shown.{fmt}"


def make_rendition(image: np.ndarray, plan) -> tuple[dict, bytes]:
    """(metadata, uint16 bytes) of the calibrated image for the browser (see the module docstring)."""
    import cv2

    from lib.stacking.preview import calibrate

    linear = calibrate(image, plan)[:, ::-1]                  # rows as shown
    height, width = linear.shape[1:]
    scale = min(1.0, RENDITION_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        linear = np.stack([cv2.resize(np.ascontiguousarray(p), size, interpolation=cv2.INTER_AREA) for p in linear])
    lo = min(plan.black * 2, -BLACK_RANGE[1] * plan.noise / 4)  # room for the black slider below the sky
    hi = max(plan.white, lo + 1e-9)
    scaled = np.clip((linear - lo) / (hi - lo), 0, 1) * 65535 + 0.5
    data = np.ascontiguousarray(scaled.astype("<u2").transpose(1, 2, 0)).tobytes()
    meta = {"width": int(linear.shape[2]), "height": int(linear.shape[1]), "lo": lo, "hi": hi,
            "black": plan.black, "white": plan.white, "strength": plan.strength, "noise": plan.noise}
    return meta, data


def rendition(archive, cache_dir: Path, stack: dict) -> tuple[dict, bytes]:
    """The stack's rendition, from the cache or made (and cached when the cache is writable)."""
    path = Path(cache_dir) / rendition_name(stack)
    try:
        raw = path.read_bytes()
        head, _, data = raw.partition(b"\n")
        meta = json.loads(head)
        os.utime(path)           # last used: what prune_renditions goes by
        return meta, data
    except (OSError, ValueError):
        pass
    image, cover, header = read_stack(archive, stack)
    meta, data = make_rendition(image, rendering(image, cover, header))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(meta).encode() + b"\n" + data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("picture cache not writable (%s): serving without it", exc)
    return meta, data


def rendition_cache(settings) -> Path:
    return settings.data_dir / "cache" / "pictures"


def rendition_name(stack: dict) -> str:
    tag = hashlib.sha256(stack["fits_key"].encode()).hexdigest()[:16]
    return f"{stack['id']}-{tag}.rendition"


def prune_renditions(db, cache_dir: Path, unused_s: float = 30 * 86400.0, min_age_s: float = 3600.0) -> list[str]:
    """Delete cached renditions no stack has any more (restacked or deleted; older than min_age_s, so
    one written for a stack newer than this look at the table stays), those not used for unused_s,
    and half-written files. Returns the names deleted. The janitor's hourly `prune-renditions` calls it."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    current = {rendition_name(row) for row in db.query("SELECT id, fits_key FROM stacks WHERE fits_key IS NOT NULL")}
    now = time.time()
    deleted = []
    for path in cache_dir.iterdir():
        age = now - path.stat().st_mtime
        stale = path.suffix == ".part" or (path.suffix == ".rendition" and path.name not in current)
        if (stale and age > min_age_s) or (path.suffix == ".rendition" and age > unused_s):
            path.unlink(missing_ok=True)
            deleted.append(path.name)
    return deleted
