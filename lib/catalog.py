"""Deep-sky objects from the OpenNGC catalogue (PyPI ``pyongc``, which ships it as SQLite): their
names in every spelling people use, and which of them lie inside a plate-solved stack.

- `canonical` turns any name pyongc's identifier rules know ("M94", "m 94", "NGC 4736", "ngc4736")
  into one key ("NGC4736"), so a search finds a target whatever it was typed as.
- `objects_in_field` lists the galaxies, nebulae and clusters inside an image given its WCS, with
  their pixel position (0-based, x along NAXIS1) and outline.
- `main_object` picks the one a stack is "of" when its OBJECT header is empty or wrong.

The catalogue (about 14 000 rows) is read once per process into arrays; a field is then a vectorised
distance cut, a few milliseconds.
"""
from __future__ import annotations

import functools
import math
import sqlite3
from dataclasses import dataclass

import numpy as np

# Not deep-sky objects, or not objects at all: left out of fields.
SKIPPED_TYPES = ("*", "**", "Dup", "NonEx", "Nova", "Other")
OUTLINE_POINTS = 24            # vertices of an object's elliptical outline in pixels
MIN_OUTLINE_ARCMIN = 0.5       # objects without a size get an outline this big


@dataclass(frozen=True)
class Catalogue:
    """The catalogue as arrays (one entry per object, same order): key (OpenNGC name, e.g.
    ``NGC4736``), type description, ra/dec (degrees), major/minor axis (arcmin, NaN unknown),
    position angle (degrees E of N, NaN unknown), Messier number ('' none), cross names, common names."""

    key: np.ndarray
    type: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    major: np.ndarray
    minor: np.ndarray
    angle: np.ndarray
    messier: np.ndarray
    cross: np.ndarray
    common: np.ndarray


@functools.cache
def catalogue() -> Catalogue:
    from pyongc import ongc   # its database path; the file is read here, read-only

    connection = sqlite3.connect(f"file:{ongc.DBPATH}?mode=ro", uri=True)
    try:
        types = dict(connection.execute("SELECT type, typedesc FROM objTypes"))
        placeholders = ",".join("?" * len(SKIPPED_TYPES))
        rows = connection.execute(
            "SELECT name, type, ra, dec, majax, minax, pa, messier, ngc, ic, commonnames FROM objects "
            f"WHERE ra IS NOT NULL AND dec IS NOT NULL AND type NOT IN ({placeholders})", SKIPPED_TYPES).fetchall()
    finally:
        connection.close()
    number = lambda v: np.nan if v is None or v == "" else float(v)      # noqa: E731
    return Catalogue(
        key=np.array([r[0] for r in rows]), type=np.array([types.get(r[1], r[1]) for r in rows]),
        ra=np.degrees([r[2] for r in rows]), dec=np.degrees([r[3] for r in rows]),
        major=np.array([number(r[4]) for r in rows]), minor=np.array([number(r[5]) for r in rows]),
        angle=np.array([number(r[6]) for r in rows]), messier=np.array([r[7] or "" for r in rows]),
        cross=np.array([_cross_names(r[8], r[9]) for r in rows], dtype=object),
        common=np.array([r[10] or "" for r in rows]))


def _cross_names(ngc: str | None, ic: str | None) -> str:
    names = [f"NGC{n.strip()}" for n in (ngc or "").split(",") if n.strip()]
    names += [f"IC{n.strip()}" for n in (ic or "").split(",") if n.strip()]
    return ",".join(names)


def pretty(key: str) -> str:
    """``NGC4736`` → ``NGC 4736``, ``IC0342`` → ``IC 342``, ``M094`` → ``M 94`` (suffixes kept)."""
    for prefix in ("NGC", "IC", "M"):
        if key.startswith(prefix) and key[len(prefix):][:1].isdigit():
            rest = key[len(prefix):]
            digits = len(rest) - len(rest.lstrip("0123456789"))
            return f"{prefix} {int(rest[:digits])}{rest[digits:]}"
    return key


@functools.lru_cache(maxsize=4096)
def canonical(name: str | None) -> str | None:
    """The OpenNGC key of any name pyongc recognises (Messier, NGC, IC, with or without spaces and in
    any case; common catalogue cross-identifiers), or None when it names no catalogue object."""
    text = " ".join(str(name or "").split())
    if not text or len(text) > 64:
        return None
    from pyongc import ongc
    try:
        return ongc.Dso(text).name
    except Exception:       # pyongc raises ValueError subclasses and others for names it does not know
        return None


def names(index: int) -> tuple[str, list[str]]:
    """(display name, aliases) of the catalogue entry at *index*: the Messier name first when there is one."""
    cat = catalogue()
    key = str(cat.key[index])
    aliases = [pretty(key)]
    if cat.messier[index]:
        aliases.insert(0, f"M {int(cat.messier[index])}")
    aliases += [pretty(n) for n in str(cat.cross[index]).split(",") if n and pretty(n) not in aliases]
    aliases += [n.strip() for n in str(cat.common[index]).split(",") if n.strip()]
    return aliases[0], aliases[1:]


def display_name(key: str | None) -> str | None:
    """The name a stack filed under catalogue key *key* is shown with ("M 94" for NGC4736)."""
    if not key:
        return None
    hits = np.flatnonzero(catalogue().key == key)
    return names(int(hits[0]))[0] if len(hits) else pretty(key)


def _separation_deg(ra1, dec1, ra2, dec2):
    """Great-circle distance (degrees), vectorised (haversine)."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    a = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def _offset(ra: float, dec: float, bearing_deg: float, distance_deg: float) -> tuple[float, float]:
    """The point *distance_deg* from (ra, dec) towards position angle *bearing_deg* (E of N)."""
    d, b = math.radians(distance_deg), math.radians(bearing_deg)
    dec1 = math.radians(dec)
    dec2 = math.asin(math.sin(dec1) * math.cos(d) + math.cos(dec1) * math.sin(d) * math.cos(b))
    ra2 = math.radians(ra) + math.atan2(math.sin(b) * math.sin(d) * math.cos(dec1),
                                        math.cos(d) - math.sin(dec1) * math.sin(dec2))
    return math.degrees(ra2) % 360.0, math.degrees(dec2)


def objects_in_field(wcs, width: int, height: int) -> list[dict]:
    """Catalogue objects whose centre lies inside a (width × height)-pixel image with celestial *wcs*
    (astropy WCS, 2 axes), largest first.

    Each: ``{"key", "name", "aliases", "type", "ra", "dec", "x", "y", "major_arcmin", "minor_arcmin",
    "angle_deg", "outline"}``; x, y: 0-based pixels (x along NAXIS1); angle_deg: the catalogue's position
    angle of the major axis, degrees east of north (None when unknown); outline: (OUTLINE_POINTS, 2)
    pixel vertices of the object's ellipse, the sky's orientation and the image's parity included.
    """
    cat = catalogue()
    (ra0, dec0), = wcs.all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)
    corner = wcs.all_pix2world([[-0.5, -0.5]], 0)[0]
    radius = float(_separation_deg(ra0, dec0, corner[0], corner[1])) * 1.05
    near = np.flatnonzero(_separation_deg(ra0, dec0, cat.ra, cat.dec) <= radius)
    if not len(near):
        return []
    xy = wcs.all_world2pix(np.column_stack([cat.ra[near], cat.dec[near]]), 0, quiet=True)
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5)
    found = []
    for index, (x, y) in zip(near[inside], xy[inside]):
        name, aliases = names(int(index))
        major, minor, angle = (float(v) if np.isfinite(v) else None
                               for v in (cat.major[index], cat.minor[index], cat.angle[index]))
        found.append({
            "key": str(cat.key[index]), "name": name, "aliases": aliases, "type": str(cat.type[index]),
            "ra": round(float(cat.ra[index]), 6), "dec": round(float(cat.dec[index]), 6),
            "x": round(float(x), 2), "y": round(float(y), 2), "major_arcmin": major, "minor_arcmin": minor,
            "angle_deg": angle,
            "outline": _outline(wcs, float(cat.ra[index]), float(cat.dec[index]), major, minor, angle)})
    found.sort(key=lambda o: -(o["major_arcmin"] or 0.0))
    return found


def _outline(wcs, ra: float, dec: float, major: float | None, minor: float | None,
             angle: float | None) -> list[list[float]]:
    a = max(major or MIN_OUTLINE_ARCMIN, MIN_OUTLINE_ARCMIN) / 120.0       # semi-axes, degrees
    b = max(minor or major or MIN_OUTLINE_ARCMIN, MIN_OUTLINE_ARCMIN) / 120.0
    pa = angle or 0.0
    points = []
    for k in range(OUTLINE_POINTS):
        t = 2 * math.pi * k / OUTLINE_POINTS
        along, across = a * math.cos(t), b * math.sin(t)
        points.append(_offset(ra, dec, pa + math.degrees(math.atan2(across, along)), math.hypot(along, across)))
    xy = wcs.all_world2pix(np.array(points), 0, quiet=True)
    return [[round(float(x), 1), round(float(y), 1)] for x, y in xy]


def main_object(objects: list[dict], width: int, height: int) -> dict | None:
    """The object a field is "of": the largest one within a third of the image's shorter side of its
    centre, else the one nearest the centre; None for an empty field."""
    if not objects:
        return None
    cx, cy = (width - 1) / 2, (height - 1) / 2
    distance = lambda o: math.hypot(o["x"] - cx, o["y"] - cy)        # noqa: E731
    central = [o for o in objects if distance(o) <= min(width, height) / 3]
    if central:
        return max(central, key=lambda o: (o["major_arcmin"] or 0.0, -distance(o)))
    return min(objects, key=distance)


def filed_under(header_object: str | None, objects: list[dict], width: int, height: int) -> tuple[str | None, str | None]:
    """(catalogue key, display name) a stack is filed under.

    The OBJECT header when it names a catalogue object inside the field (or the field is unknown);
    else, when the field holds catalogue objects, its main object; else the header's name as it is.
    """
    if (header_object or "").strip().lower() == "unknown":     # what the upload path writes for no OBJECT
        header_object = ""
    key = canonical(header_object)
    in_field = {o["key"] for o in objects}
    if key and (key in in_field or not objects):
        return key, (header_object or "").strip() or display_name(key)
    main = main_object(objects, width, height)
    if main is not None:
        wrong = bool(key) or not (header_object or "").strip()
        return main["key"], main["name"] if wrong else header_object.strip()
    return key, (header_object or "").strip() or None


def resolve(name: str | None) -> dict | None:
    """Where an object is, from any of its names: ``{"name": "M 94", "key": "NGC4736", "ra": deg,
    "dec": deg}`` (J2000), or None when the catalogue has no such object."""
    key = canonical(name)
    if key is None:
        return None
    cat = catalogue()
    hits = np.flatnonzero(cat.key == key)
    if not len(hits):
        return None
    i = int(hits[0])
    return {"name": names(i)[0], "key": key, "ra": round(float(cat.ra[i]), 6), "dec": round(float(cat.dec[i]), 6)}
