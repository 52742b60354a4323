"""Filing frames into chunks: one telescope, one filter, one 15-minute UTC block, one pointing.

A chunk is what one stacking job stacks. Its key, ``YYYYMMDD.CC_HPnnnnnn``, names the UTC day, the
15-minute block of that day (00..95) and the HEALPix pixel (RING, nside 128) of the pointing of the
frame that opened the chunk. Membership is decided by angular distance, never by comparing keys, so
pointing jitter that straddles a pixel border does not split one target into several chunks. Frames
taken through different filters (Seestar FILTER: IRCUT, LP) are different data and never share a
chunk; such chunks of one block and pointing share a key and differ in their filter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

import astropy.units as u
from astropy.coordinates import angular_separation
from astropy_healpix import HEALPix

NSIDE = 128
CHUNK_RADIUS_DEG = 0.25            # frames of one pointing lie within this of the chunk's centre
BLOCK_MINUTES = 15
_HEALPIX = HEALPix(nside=NSIDE, order="ring")
# CrowdSky_<N>_<target>_<exposure>s_<filter>_<YYYYMMDD.CC>_HP<nnnnnn>.fit: how seestarpy names the
# stacks the telescope made of one chunk.
TELESCOPE_NAME = re.compile(
    r"^CrowdSky_(?P<frames>\d+)_(?P<target>.+)_(?P<exposure>\d+(?:\.\d+)?)s_(?P<filter>[A-Za-z]+)_"
    r"(?P<block>\d{8}\.\d{1,2})_HP(?P<pixel>\d{6})\.fits?$")


@dataclass(frozen=True)
class OpenChunk:
    """A chunk a new frame might join."""
    id: int
    telescope: str
    block: str                     # YYYYMMDD.CC
    ra: float                      # degrees: pointing of the opening frame
    dec: float
    filter: str | None = None      # FILTER of its frames; None: the frames had none


def block_label(date_obs: datetime) -> str:
    """``YYYYMMDD.CC``: the UTC day and its 15-minute block (00..95) holding *date_obs*."""
    utc = date_obs.astimezone(timezone.utc)
    block = (utc.hour * 60 + utc.minute) // BLOCK_MINUTES
    return f"{utc:%Y%m%d}.{block:02d}"


def healpix_label(ra: float, dec: float) -> str:
    """``HPnnnnnn``: the RING-scheme HEALPix pixel (nside 128) holding RA/Dec in degrees."""
    pixel = int(_HEALPIX.lonlat_to_healpix(ra * u.deg, dec * u.deg))
    return f"HP{pixel:06d}"


def chunk_key(date_obs: datetime, ra: float, dec: float) -> str:
    return f"{block_label(date_obs)}_{healpix_label(ra, dec)}"


def key_in_telescope_name(filename: str) -> str | None:
    """The chunk key a telescope stack's file name carries, or None."""
    named = TELESCOPE_NAME.match(filename)
    return f"{named['block']}_HP{named['pixel']}" if named else None


def separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance between two RA/Dec positions, all in degrees."""
    return float(angular_separation(ra1 * u.deg, dec1 * u.deg, ra2 * u.deg, dec2 * u.deg).to_value(u.deg))


def find_chunk(candidates: list[OpenChunk], telescope: str, date_obs: datetime,
               ra: float, dec: float, filter_name: str | None = None) -> OpenChunk | None:
    """The chunk a frame joins: same telescope, filter and block, nearest centre within CHUNK_RADIUS_DEG."""
    block = block_label(date_obs)
    best, best_distance = None, CHUNK_RADIUS_DEG
    for chunk in candidates:
        if chunk.telescope != telescope or chunk.block != block or chunk.filter != filter_name:
            continue
        distance = separation_deg(chunk.ra, chunk.dec, ra, dec)
        if distance <= best_distance:
            best, best_distance = chunk, distance
    return best
