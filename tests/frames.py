"""Raw frames for tests: the real Seestar frames in shared/, and small synthetic ones built from them."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from astropy.io import fits

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "seestar-m94"
NIGHT_1 = SHARED / "2025-03-27"       # 6 frames, S50_1d3fe189
NIGHT_2 = SHARED / "2025-04-09"       # 11 frames, S50_12d98769


def real_frames(night: Path) -> list[Path]:
    frames = sorted(night.glob("*.fit"))
    if not frames:
        raise FileNotFoundError(f"the real Seestar frames are missing: expected them in {night}")
    return frames


def seestar_header(**changes) -> fits.Header:
    """The header of a real S50 frame with *changes* applied (None deletes a card)."""
    header = fits.getheader(real_frames(NIGHT_1)[0])
    for key, value in changes.items():
        key = key.replace("_", "-") if key == "DATE_OBS" else key
        if value is None:
            header.remove(key, ignore_missing=True)
        else:
            header[key] = value
    return header


def small_frame_bytes(width: int = 64, height: int = 48, seed: int = 0, **changes) -> bytes:
    """A small but complete 16-bit frame with a Seestar header."""
    data = np.random.default_rng(seed).integers(0, 4000, size=(height, width)).astype(np.uint16)
    header = seestar_header(**changes)
    header["NAXIS1"], header["NAXIS2"] = width, height
    hdu = fits.PrimaryHDU(data=data, header=header)   # astropy stores uint16 as int16 + BZERO
    out = io.BytesIO()
    hdu.writeto(out)
    return out.getvalue()
