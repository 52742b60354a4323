"""Plate solving: where on the sky a stack's pixels lie, found by Astrometry.net's ``solve-field``.

The solver runs offline on the Tycho-2 index files (Debian's ``astrometry.net`` and
``astrometry-data-tycho2-*`` packages), hinted with the pointing the telescope wrote (RA/DEC) and the
pixel scale of its optics (206.265 × XPIXSZ / FOCALLEN ″/px), which keeps a solve of a Seestar stack
to a second or two. The result is written into the stack's primary header as a standard celestial WCS
(``RA---TAN`` / ``DEC--TAN``, ``-SIP`` when the solver fits distortion) with ``PLTSOLVD = T``; when no
solver is installed or the field does not solve, the header says ``PLTSOLVD = F`` and ``PLTREASN``
says why. Nothing else depends on a solve succeeding.

Pure helpers (hint, scale, command line, header cards, the sky summary) are separate from the one
function that runs the solver (`solve_luminance`), so the former are testable without it.

Pixel coordinates follow FITS: x along NAXIS1 (columns), y along NAXIS2 (rows); the WCS cards use
FITS's 1-based pixels, `sky_summary` reports 0-based ones as numpy indexes them.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

SOLVER = "solve-field"
ARCSEC_PER_RADIAN_MICRON_PER_MM = 206.265   # 206265 ″/rad × 1e-3 (µm / mm)
SCALE_TOLERANCE = 0.08          # the hinted scale ± 8 %: focal lengths and pixel sizes are nominal
SEARCH_RADIUS_DEG = 2.0         # a Seestar's RA/DEC can be a few tenths of a degree off the field centre
DOWNSAMPLE = 2                  # the solver's source extraction on a half-size image: faster, as sure
TIME_LIMIT_S = 20.0             # CPU seconds the solver may spend; a hinted solve takes 1-2 s
KILL_GRACE_S = 15.0             # wall seconds past the CPU limit before the solver's process group is killed
WCS_KEYWORDS = ("WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2",
                "CD1_1", "CD1_2", "CD2_1", "CD2_2", "EQUINOX", "RADESYS", "LONPOLE", "LATPOLE")
SIP_PREFIXES = ("A_", "B_", "AP_", "BP_")
KEPT_KEYWORDS = ("EQUINOX", "RADESYS")   # the telescope's own (they describe its RA/DEC too): kept when unsolved


@dataclass(frozen=True)
class Hint:
    """Where the solver looks.

    Attributes
    ----------
    ra_deg, dec_deg : float
        Pointing of the telescope, degrees (ICRS).
    scale_arcsec : float or None
        Pixel scale from the optics, arcseconds per pixel; None when unknown.
    """

    ra_deg: float
    dec_deg: float
    scale_arcsec: float | None = None


@dataclass(frozen=True)
class Solution:
    """A solve's outcome.

    Attributes
    ----------
    wcs : astropy.io.fits.Header or None
        The celestial WCS cards (1-based FITS pixels of the solved image); None when not solved.
    reason : str or None
        Why it is not solved, in words fit for the owner; None when solved.
    seconds : float
        Wall time the solver took.
    """

    wcs: fits.Header | None
    reason: str | None
    seconds: float = 0.0

    @property
    def solved(self) -> bool:
        return self.wcs is not None


def pixel_scale_arcsec(focal_mm: float, pixel_um: float) -> float:
    """Sky angle of one pixel: 206.265 × pixel size / focal length.

    Parameters
    ----------
    focal_mm : float
        Focal length, millimetres (FOCALLEN).
    pixel_um : float
        Pixel size with binning, micrometres (XPIXSZ).

    Returns
    -------
    float
        Arcseconds per pixel.

    Examples
    --------
    >>> round(pixel_scale_arcsec(250, 2.9), 3)   # Seestar S50
    2.393
    """
    return ARCSEC_PER_RADIAN_MICRON_PER_MM * float(pixel_um) / float(focal_mm)


def hint_from_header(header: Mapping) -> Hint | None:
    """The solver's hint from a frame's or stack's header.

    Parameters
    ----------
    header : Mapping
        Header keywords: RA, DEC (degrees) and, optionally, FOCALLEN (mm) and XPIXSZ (µm, binning
        included, as Seestars write it).

    Returns
    -------
    Hint or None
        The pointing, with the pixel scale when FOCALLEN and XPIXSZ are positive numbers; None when
        RA or DEC is missing or not a position (the solver would have to search the whole sky).
    """
    try:
        ra, dec = float(header["RA"]), float(header["DEC"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90):
        return None
    scale = None
    try:
        focal, pixel = float(header["FOCALLEN"]), float(header["XPIXSZ"])
        if focal > 0 and pixel > 0:
            scale = pixel_scale_arcsec(focal, pixel)
    except (KeyError, TypeError, ValueError):
        pass
    return Hint(ra % 360.0, dec, scale)


def solver_command(image: Path, out_dir: Path, hint: Hint | None, *, time_limit: float = TIME_LIMIT_S,
                   solver: str = SOLVER) -> list[str]:
    """The solve-field command line.

    Parameters
    ----------
    image : Path
        The float FITS to solve.
    out_dir : Path
        Where the solver writes; only ``<stem>.wcs`` (and its temporary files) end up there.
    hint : Hint or None
        Pointing (``--ra --dec --radius``) and scale (``--scale-low/high``, ± SCALE_TOLERANCE).
    time_limit : float
        CPU seconds (``--cpulimit``).
    solver : str
        The executable.

    Returns
    -------
    list of str
    """
    command = [solver, "--no-plots", "--overwrite", "--dir", str(out_dir), "--downsample", str(DOWNSAMPLE),
               "--cpulimit", str(int(math.ceil(time_limit))), "--crpix-center", "--temp-axy",
               # its line removal and uniformising start a Python interpreter each: half the CPU time of
               # a solve, and a stack has neither bad columns nor star-crowded corners to fix
               "--no-remove-lines", "--uniformize", "0",
               "--new-fits", "none", "--corr", "none", "--rdls", "none", "--match", "none",
               "--index-xyls", "none", "--solved", "none"]
    if hint is not None:
        command += ["--ra", f"{hint.ra_deg:.6f}", "--dec", f"{hint.dec_deg:.6f}", "--radius", str(SEARCH_RADIUS_DEG)]
        if hint.scale_arcsec:
            command += ["--scale-units", "arcsecperpix",
                        "--scale-low", f"{hint.scale_arcsec * (1 - SCALE_TOLERANCE):.4f}",
                        "--scale-high", f"{hint.scale_arcsec * (1 + SCALE_TOLERANCE):.4f}"]
    return command + [str(image)]


def solver_available(solver: str = SOLVER) -> bool:
    return shutil.which(solver) is not None


def solve_luminance(luminance: np.ndarray, hint: Hint | None, *, time_limit: float = TIME_LIMIT_S,
                    solver: str = SOLVER, tmp_dir: str | None = None) -> Solution:
    """Plate-solve an image with solve-field.

    The image is written as a float32 FITS into a temporary directory (removed afterwards); the
    solver is stopped, its whole process group, if it overruns *time_limit* by KILL_GRACE_S.

    Parameters
    ----------
    luminance : numpy.ndarray
        (H, W) float, any linear brightness unit; NaN is written as 0.
    hint : Hint or None
        Pointing and scale (see `hint_from_header`). Without both the solve is not tried: a blind
        search of the sky or of every scale takes minutes, which a stacker cannot spend on a stack.
    time_limit : float
        CPU seconds the solver may spend.
    solver : str
        The solve-field executable.
    tmp_dir : str or None
        Where the temporary directory goes; None: the system's.

    Returns
    -------
    Solution
        Solved, or why not. Never raises for a field that does not solve or a missing solver.
    """
    if not solver_available(solver):
        return Solution(None, f"no plate solver installed ({solver} not found)")
    if hint is None:
        return Solution(None, "no RA/DEC in the header to start the plate solve from")
    if hint.scale_arcsec is None:
        return Solution(None, "no FOCALLEN/XPIXSZ in the header: pixel scale unknown, plate solve not tried")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crowdsky-solve-", dir=tmp_dir) as scratch:
        scratch = Path(scratch)
        image = scratch / "luminance.fits"
        fits.PrimaryHDU(np.nan_to_num(np.asarray(luminance, np.float32), nan=0.0)).writeto(image)
        command = solver_command(image, scratch, hint, time_limit=time_limit, solver=solver)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)   # a group of its own: a timeout stops all of it
        try:
            output, _ = process.communicate(timeout=time_limit + KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return Solution(None, f"plate solver stopped after {time_limit + KILL_GRACE_S:.0f} s",
                            time.monotonic() - started)
        seconds = time.monotonic() - started
        result = scratch / "luminance.wcs"
        if process.returncode != 0:
            last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return Solution(None, f"plate solver failed (exit {process.returncode}): {last[0][:120]}", seconds)
        if not result.exists():
            return Solution(None, f"field did not solve within {SEARCH_RADIUS_DEG:g} deg of the header's RA/DEC "
                                  f"at {hint.scale_arcsec:.2f} arcsec/px", seconds)
        return Solution(wcs_cards(fits.getheader(result)), None, seconds)


def wcs_cards(header: fits.Header) -> fits.Header:
    """The celestial WCS keywords (TAN, SIP) of a solver's header, without its comments and history.

    Parameters
    ----------
    header : astropy.io.fits.Header
        What solve-field wrote into ``<stem>.wcs``.

    Returns
    -------
    astropy.io.fits.Header
    """
    cards = fits.Header()
    for card in header.cards:
        key = card.keyword
        if key in WCS_KEYWORDS or key.startswith(SIP_PREFIXES):
            cards[key] = (card.value, card.comment if card.comment != "no comment" else "")
    cards["WCSAXES"] = 2
    cards.setdefault("RADESYS", "ICRS")
    return cards


def write_solution(header: fits.Header, solution: Solution) -> None:
    """Put the solve's outcome into a stack's primary header, in place.

    Earlier WCS or solve keywords are removed first, so a header never mixes two solutions.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The stack's primary header.
    solution : Solution
        Solved: the WCS cards, ``PLTSOLVD = T`` and ``PLTSCALE`` (″/px) are written. Not solved:
        ``PLTSOLVD = F`` and ``PLTREASN`` (the reason).
    """
    clear_solution(header)
    if not solution.solved:
        header["PLTSOLVD"] = (False, "plate solved")
        header["PLTREASN"] = (solution.reason or "not solved", "why the plate was not solved")
        return
    for card in solution.wcs.cards:
        header[card.keyword] = (card.value, card.comment)
    header["PLTSOLVD"] = (True, "plate solved (astrometry.net, Tycho-2)")
    header["PLTSCALE"] = (round(scale_arcsec(celestial_wcs(header)), 4), "[arcsec/px] pixel scale")


def clear_solution(header: fits.Header) -> None:
    """Remove every WCS and solve keyword from *header*, in place."""
    for key in [k for k in header if (k in WCS_KEYWORDS and k not in KEPT_KEYWORDS)
                or k.startswith(SIP_PREFIXES) or k in ("PLTSOLVD", "PLTSCALE", "PLTREASN")]:
        del header[key]


def copy_solution(source: fits.Header, target: fits.Header) -> None:
    """Carry a solved header's WCS and solve keywords onto *target* (an image on the same pixel grid)."""
    clear_solution(target)
    for card in source.cards:
        if card.keyword in WCS_KEYWORDS or card.keyword.startswith(SIP_PREFIXES) \
                or card.keyword in ("PLTSOLVD", "PLTSCALE", "PLTREASN"):
            target[card.keyword] = (card.value, card.comment)


def celestial_wcs(header: fits.Header) -> WCS | None:
    """The header's celestial WCS.

    A stack's primary HDU is (3, H, W): the WCS describes its two image axes only.

    Parameters
    ----------
    header : astropy.io.fits.Header

    Returns
    -------
    astropy.wcs.WCS or None
        Two axes, SIP applied; None when the header has no RA---* axis.
    """
    if not str(header.get("CTYPE1", "")).startswith("RA---"):
        return None
    cards = fits.Header()
    for card in header.cards:
        if card.keyword in WCS_KEYWORDS or card.keyword.startswith(SIP_PREFIXES):
            cards[card.keyword] = card.value
    cards["WCSAXES"] = 2
    return WCS(cards, naxis=2)


def scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale (″/px) of the WCS's linear part."""
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0)


def rotation_deg(wcs: WCS, width: int, height: int) -> float:
    """Which way the image's +y axis (NAXIS2 growing) points on the sky, at the image centre.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial, two axes.
    width, height : int
        Image size, pixels.

    Returns
    -------
    float
        Position angle, degrees east of north in 0..360: 0 when +y runs north, 90 when east.
    """
    x, y = (width - 1) / 2, (height - 1) / 2
    (ra0, dec0), (ra1, dec1) = wcs.all_pix2world([[x, y], [x, y + 1]], 0)
    ra0, dec0, ra1, dec1 = map(math.radians, (ra0, dec0, ra1, dec1))
    angle = math.atan2(math.sin(ra1 - ra0) * math.cos(dec1),
                       math.cos(dec0) * math.sin(dec1) - math.sin(dec0) * math.cos(dec1) * math.cos(ra1 - ra0))
    return math.degrees(angle) % 360.0


def footprint(wcs: WCS, width: int, height: int) -> list[list[float]]:
    """The image's outline on the sky.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial, two axes.
    width, height : int
        Image size, pixels.

    Returns
    -------
    list of [float, float]
        [ra, dec] (degrees) of the four outer corners, in the order (0, 0), (W, 0), (W, H), (0, H)
        of the pixel edges.
    """
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
    sky = wcs.all_pix2world(corners, 0)
    return [[round(float(ra) % 360.0, 6), round(float(dec), 6)] for ra, dec in sky]


def sky_summary(header: fits.Header) -> dict:
    """What a stack's header says about its place on the sky, as the API shows it.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The stack's primary header.

    Returns
    -------
    dict
        ``solved``; ``ra``, ``dec`` of the image centre (degrees); ``scale_arcsec`` (″/px);
        ``rotation_deg`` (see `rotation_deg`); ``footprint`` (see `footprint`); ``width``, ``height``
        (px); ``tan``: ``{"crpix0": [x, y] 0-based reference pixel, "crval": [ra, dec], "cd": 2×2
        degrees per pixel}``, the projection's linear part; ``reason``. An unsolved stack has
        ``solved: False``, None for the numbers and the reason (None for files written before plate
        solving).
    """
    wcs = celestial_wcs(header) if header.get("PLTSOLVD") is True else None
    if wcs is None:
        return {"solved": False, "ra": None, "dec": None, "scale_arcsec": None, "rotation_deg": None,
                "footprint": None, "reason": header.get("PLTREASN")}
    width, height = int(header["NAXIS1"]), int(header["NAXIS2"])
    ra, dec = wcs.all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)[0]
    # the TAN projection's linear part, for pages that turn pointer positions into RA/Dec themselves
    # (SIP left out: it moves a Seestar stack's pixels by well under a pixel)
    tan = {"crpix0": [float(wcs.wcs.crpix[0]) - 1, float(wcs.wcs.crpix[1]) - 1],
           "crval": [float(wcs.wcs.crval[0]), float(wcs.wcs.crval[1])],
           "cd": [[float(v) for v in row] for row in wcs.pixel_scale_matrix]}
    return {"solved": True, "ra": round(float(ra) % 360.0, 6), "dec": round(float(dec), 6),
            "scale_arcsec": round(scale_arcsec(wcs), 4), "rotation_deg": round(rotation_deg(wcs, width, height), 3),
            "footprint": footprint(wcs, width, height), "reason": None, "width": width, "height": height,
            "tan": tan}


def stack_luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 luminance of a (3, H, W) stack: what the solver looks at."""
    return np.nanmean(image, axis=0, dtype=np.float32) if image.ndim == 3 else np.asarray(image, np.float32)


def solve_stack_file(path: Path, *, time_limit: float = TIME_LIMIT_S, tmp_dir: str | None = None) -> Solution | None:
    """Solve a stack FITS in place, unless its header says a solve was tried already.

    For stacks made outside the pipeline (deep and crowd stacks, telescope stacks); hinted by the
    header's RA/DEC and optics (FOCALLEN, XPIXSZ).

    Parameters
    ----------
    path : Path
        The stack FITS; its primary header gets the outcome (see `write_solution`).
    time_limit : float
        CPU seconds the solver may spend.
    tmp_dir : str or None
        Where the solver's temporary directory goes; None: the system's.

    Returns
    -------
    Solution or None
        None when the header already had PLTSOLVD.
    """
    with fits.open(path, mode="update", memmap=False) as hdul:
        header = hdul[0].header
        if "PLTSOLVD" in header:
            return None
        hint = hint_from_header(header)
        solution = solve_luminance(stack_luminance(hdul[0].data), hint, time_limit=time_limit, tmp_dir=tmp_dir)
        write_solution(header, solution)
        hdul.flush()
    return solution
