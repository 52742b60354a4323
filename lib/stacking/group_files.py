"""Files of deep and crowd stacks: reading chunk stacks and group states, writing the new state.

A group's FITS: primary (3, H, W) float32 weighted mean (sky subtracted, on the group's brightness
scale), WEIGHT (H, W) float32 the summed weights (the running sum is image × weight), STARS the grid's
reference stars, GRID the first contribution's header (grid, optics), SOURCES one row per chunk stack
summed in (id, brightness scale, frames, exposure, times, telescope, camera, FWHM), REFUSED the chunk
stacks that did not register (id, reason). The primary header is a function of SOURCES: NCOMBINE,
EXPTIME, NSTACKS, DATE-OBS/BEG/END, TELESCOP and INSTRUME (every name, comma-separated), the grid's
FOCALLEN/XPIXSZ, and measured on the result: FWHM (median, grid pixels) and BGNOISE; the preview's
rendering (PV* cards, lib/stacking/preview.py: its crop, sky model, balance and stretch), as in a chunk
stack, so that pages know what part of the grid the preview shows and the stretch control starts there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import deep, solve
from .imported import LOCATION_KEYWORDS
from .normalize import sky_level_and_noise
from .preview import Rendering, plan_rendering, render, write_png
from .register import RegistrationError
from .stars import detect_stars

CARRIED = ("OBJECT", "RA", "DEC", "EQUINOX", "RADESYS", "FILTER")
OPTICS = ("FOCALLEN", "APERTURE", "XPIXSZ", "YPIXSZ", "XBINNING", "YBINNING")   # the grid's: its scale


def read_stack(path: Path) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    """A chunk stack: (3, H, W) image, (H, W) coverage (frames per pixel; all equal if absent), header."""
    with fits.open(path, memmap=False) as hdul:
        image = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
        ncombine = float(header.get("NCOMBINE", 1))
        coverage = hdul["COVERAGE"].data.astype(np.float32) if "COVERAGE" in hdul else \
            np.full(image.shape[1:], ncombine, np.float32)
        if "FWHM" not in header and "FRAMES" in hdul:       # a chunk stack: the median of its used frames
            table = hdul["FRAMES"].data
            used = np.asarray(table["FWHM"], float)[np.asarray(table["USED"], bool)]
            used = used[np.isfinite(used)]
            if used.size:
                header["FWHM"] = float(np.median(used))
    return image, coverage, header


def read_running(path: Path) -> tuple[deep.Running, fits.Header]:
    with fits.open(path, memmap=False) as hdul:
        image = hdul[0].data.astype(np.float32)
        weight = hdul["WEIGHT"].data.astype(np.float32)
        stars = hdul["STARS"].data
        running = deep.Running(total=image * weight, weight=weight,
                               ref_xy=np.column_stack([stars["X"], stars["Y"]]).astype(np.float64),
                               ref_flux=np.asarray(stars["FLUX"], np.float64))
        return running, hdul[0].header.copy()


@dataclass
class Source:
    """One chunk stack in a group's file: what it brought, read from its own header."""
    id: int                 # the chunk stack's id (never reused)
    scale: float            # brightness factor that put it on the group's scale
    frames: int
    exposure_s: float
    date_beg: str
    date_end: str
    telescope: str
    instrument: str
    fwhm_px: float          # the chunk stack's median FWHM, its own pixels; NaN if unknown


@dataclass
class GroupResult:
    """A group's next file: the running sum of exactly *sources*; *refused* are (id, reason) of
    chunk stacks that could not be registered onto the grid and stay out."""
    running: deep.Running
    grid: fits.Header                       # the first contribution's header: grid, optics, object
    sources: list[Source] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)

    @property
    def header(self) -> fits.Header:
        """The group's header, every figure a function of its sources."""
        header = fits.Header()
        for key in CARRIED + OPTICS:
            if key in self.grid and key not in LOCATION_KEYWORDS:
                header[key] = self.grid[key]
        if self.grid.get("PLTSOLVD") is True:     # the group's grid is its first stack's: so is its WCS
            solve.copy_solution(self.grid, header)
        header["TELESCOP"] = (_names(s.telescope for s in self.sources), "every telescope that contributed")
        header["INSTRUME"] = (_names(s.instrument for s in self.sources), "every camera that contributed")
        header["NCOMBINE"] = (sum(s.frames for s in self.sources), "frames in all contributions")
        header["EXPTIME"] = (float(sum(s.exposure_s for s in self.sources)), "[s] total exposure")
        header["NSTACKS"] = (len(self.sources), "chunk stacks added")
        begin = min(s.date_beg for s in self.sources)
        header["DATE-OBS"] = (begin, "UTC start of the first contribution")
        header["DATE-BEG"] = (begin, "UTC start of the first contribution")
        header["DATE-END"] = (max(s.date_end for s in self.sources), "UTC end of the last contribution")
        return header

    def write_fits(self, path: Path) -> None:
        image = self.running.image
        header = self.header
        lum = deep.luminance(image)
        covered = self.running.weight > 0
        header["BGNOISE"] = (float(sky_level_and_noise(np.where(covered, lum, np.nan))[1]),
                             "sky noise of the luminance, image units")
        fwhm = _fwhm_px(lum)
        if fwhm is not None:
            header["FWHM"] = (fwhm, "[px] median star FWHM on the group's grid")
        for key, value, comment in self.rendering.header_cards():
            header[key] = (value, comment)
        primary = fits.PrimaryHDU(image, header=header)
        weight = fits.ImageHDU(self.running.weight, name="WEIGHT")
        weight.header["COMMENT"] = "summed inverse-variance weights; the running sum is image x WEIGHT"
        stars = fits.BinTableHDU.from_columns([
            fits.Column("X", "D", array=self.running.ref_xy[:, 0]),
            fits.Column("Y", "D", array=self.running.ref_xy[:, 1]),
            fits.Column("FLUX", "D", array=self.running.ref_flux)], name="STARS")
        grid_header = fits.Header(
            [(k, self.grid[k]) for k in CARRIED + OPTICS + ("NCOMBINE", "EXPTIME", "DATE-BEG", "DATE-END")
             if k in self.grid and k not in LOCATION_KEYWORDS])
        if self.grid.get("PLTSOLVD") is True:
            solve.copy_solution(self.grid, grid_header)
        grid = fits.ImageHDU(name="GRID", header=grid_header)
        sources = fits.BinTableHDU.from_columns([
            fits.Column("ID", "K", array=[s.id for s in self.sources]),
            fits.Column("SCALE", "D", array=[s.scale for s in self.sources]),
            fits.Column("NCOMBINE", "K", array=[s.frames for s in self.sources]),
            fits.Column("EXPTIME", "D", array=[s.exposure_s for s in self.sources]),
            fits.Column("DATE-BEG", "A26", array=[s.date_beg for s in self.sources]),
            fits.Column("DATE-END", "A26", array=[s.date_end for s in self.sources]),
            fits.Column("TELESCOP", "A64", array=[s.telescope for s in self.sources]),
            fits.Column("INSTRUME", "A64", array=[s.instrument for s in self.sources]),
            fits.Column("FWHM", "D", array=[s.fwhm_px for s in self.sources])], name="SOURCES")
        refused = fits.BinTableHDU.from_columns([
            fits.Column("ID", "K", array=[i for i, _ in self.refused]),
            fits.Column("REASON", "A200", array=[r[:200] for _, r in self.refused])], name="REFUSED")
        fits.HDUList([primary, weight, stars, grid, sources, refused]).writeto(path, overwrite=True)

    @cached_property
    def rendering(self) -> Rendering:
        """The preview's rendering, cropped to what WEIGHT says most of the sum covers; measured once, so
        that the FITS header records the very factors the PNG was made with."""
        return plan_rendering(self.running.image, self.running.weight, None)

    def write_preview(self, path: Path) -> None:
        write_png(render(self.running.image, self.rendering), Path(path))


def read_group(path: Path) -> GroupResult:
    """A group's file as a result to add to: running sum, grid header and the sources in it."""
    running, _ = read_running(path)
    with fits.open(path, memmap=False) as hdul:
        grid = hdul["GRID"].header.copy()
        sources = [Source(int(r["ID"]), float(r["SCALE"]), int(r["NCOMBINE"]), float(r["EXPTIME"]),
                          str(r["DATE-BEG"]).strip(), str(r["DATE-END"]).strip(), str(r["TELESCOP"]).strip(),
                          str(r["INSTRUME"]).strip(), float(r["FWHM"])) for r in hdul["SOURCES"].data]
    return GroupResult(running, grid, sources)


def file_sources(path: Path) -> tuple[list[int], list[tuple[int, str]]]:
    """(ids of the chunk stacks summed in a group file, [(id, reason)] of those refused)."""
    with fits.open(path, memmap=False) as hdul:
        return ([int(i) for i in hdul["SOURCES"].data["ID"]],
                [(int(r["ID"]), str(r["REASON"]).strip()) for r in hdul["REFUSED"].data])


def bring_up_to_date(group_path: Path | None, sources: list[tuple[int, Path]], progress) -> GroupResult:
    """The group at *group_path* (None: a new one, on the first source's grid) with the chunk stacks
    *sources* ([(stack id, path)]) added. A stack already in the file is not added twice; one that
    does not register onto the grid is refused with the reason and the rest still go in."""
    result = read_group(group_path) if group_path is not None else None
    inside = {s.id for s in result.sources} if result else set()
    refused: list[tuple[int, str]] = []
    for i, (stack_id, path) in enumerate(sources):
        progress(i / max(len(sources), 1), f"adding stack {i + 1}/{len(sources)}")
        if stack_id in inside:
            continue
        image, coverage, header = read_stack(path)
        measured = deep.measure(image)
        if result is None:
            result = GroupResult(deep.start(image, coverage, measured), header.copy())
            scale = 1.0
        else:
            try:
                scale = deep.add(result.running, image, coverage, measured,
                                 _placement(header, result.grid, image.shape[1:]))
            except RegistrationError as exc:
                refused.append((stack_id, str(exc)))
                continue
        result.sources.append(_source(stack_id, scale, header))
        inside.add(stack_id)
    if result is None:
        raise ValueError("a group needs at least one chunk stack")
    result.refused = refused
    return result


def _placement(source: fits.Header, grid: fits.Header, shape: tuple[int, int]):
    """Where the grid's and the stack's plate solutions put the stack on the grid, or None when
    either is not solved (star matching alone then)."""
    source_wcs = solve.celestial_wcs(source) if source.get("PLTSOLVD") is True else None
    grid_wcs = solve.celestial_wcs(grid) if grid.get("PLTSOLVD") is True else None
    if source_wcs is None or grid_wcs is None:
        return None
    return deep.wcs_placement(source_wcs, grid_wcs, shape)


def _source(stack_id: int, scale: float, header: fits.Header) -> Source:
    fwhm = header.get("FWHM")
    return Source(stack_id, float(scale), int(header["NCOMBINE"]), float(header["EXPTIME"]),
                  str(header["DATE-BEG"]), str(header["DATE-END"]), str(header.get("TELESCOP", ""))[:64],
                  str(header.get("INSTRUME", ""))[:64], float("nan") if fwhm is None else float(fwhm))


def _names(values) -> str:
    return ", ".join(sorted({v for v in values if v}))


def _fwhm_px(lum: np.ndarray) -> float | None:
    """Median star FWHM of a luminance image (pixels), or None when no star is measured."""
    try:
        found = detect_stars(np.nan_to_num(lum) * np.float32(deep.ADU), max_stars=300,
                             saturation=0.9 * deep.ADU, min_fwhm_px=deep.MIN_STAR_FWHM_PX)
    except Exception:          # too few objects to measure: the figure is unknown, not wrong
        return None
    return float(found.fwhm_px) if np.isfinite(found.fwhm_px) else None
