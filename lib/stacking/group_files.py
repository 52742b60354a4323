"""Files of deep and crowd stacks: reading chunk stacks and group states, writing the new state.

A group's FITS: primary (3, H, W) float32 weighted mean (sky subtracted, on the group's brightness
scale), WEIGHT (H, W) float32 the summed weights (the running sum is image × weight), STARS the grid's
reference stars. Header: NCOMBINE and EXPTIME over every contribution, DATE-BEG / DATE-END, NSTACKS.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import deep, solve
from .imported import LOCATION_KEYWORDS
from .normalize import sky_level_and_noise
from .preview import stretch, write_png

CARRIED = ("OBJECT", "RA", "DEC", "EQUINOX", "RADESYS", "FILTER", "FOCALLEN", "XPIXSZ")


def read_stack(path: Path) -> tuple[np.ndarray, np.ndarray, fits.Header]:
    """A chunk stack: (3, H, W) image, (H, W) coverage (frames per pixel; all equal if absent), header."""
    with fits.open(path, memmap=False) as hdul:
        image = hdul[0].data.astype(np.float32)
        header = hdul[0].header.copy()
        ncombine = float(header.get("NCOMBINE", 1))
        coverage = hdul["COVERAGE"].data.astype(np.float32) if "COVERAGE" in hdul else \
            np.full(image.shape[1:], ncombine, np.float32)
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
class GroupResult:
    running: deep.Running
    header: fits.Header

    def write_fits(self, path: Path) -> None:
        image = self.running.image
        header = self.header.copy()
        lum = deep.luminance(image)
        covered = self.running.weight > 0
        header["BGNOISE"] = (float(sky_level_and_noise(np.where(covered, lum, np.nan))[1]),
                             "sky noise of the luminance, image units")
        primary = fits.PrimaryHDU(image, header=header)
        weight = fits.ImageHDU(self.running.weight, name="WEIGHT")
        weight.header["COMMENT"] = "summed inverse-variance weights; the running sum is image x WEIGHT"
        stars = fits.BinTableHDU.from_columns([
            fits.Column("X", "D", array=self.running.ref_xy[:, 0]),
            fits.Column("Y", "D", array=self.running.ref_xy[:, 1]),
            fits.Column("FLUX", "D", array=self.running.ref_flux)], name="STARS")
        fits.HDUList([primary, weight, stars]).writeto(path, overwrite=True)

    def write_preview(self, path: Path) -> None:
        write_png(stretch(self.running.image), Path(path))


def update_group(group_path: Path | None, source_path: Path, kind: str, progress) -> GroupResult:
    """Add the chunk stack at *source_path* to the group at *group_path* (None: a new group)."""
    image, coverage, source = read_stack(source_path)
    progress(0.2, "measuring the new stack")
    measured = deep.measure(image)
    if group_path is None:
        return _added(deep.start(image, coverage, measured), _new_header(source), source, kind, 1.0, 0)
    running, header = read_running(group_path)
    progress(0.5, "registering onto the group")
    scale = deep.add(running, image, coverage, measured, _placement(source, header, image.shape[1:]))
    return _added(running, header, source, kind, scale, int(header["GROUPVER"]))


def rebuild_group(source_paths: list[Path], kind: str, version: int, progress) -> GroupResult:
    """A group made anew from its chunk stacks (after an owner's data was taken out of it);
    *version* is the group's version the rebuild starts from."""
    result = None
    for i, path in enumerate(source_paths):
        progress(i / len(source_paths), f"adding stack {i + 1}/{len(source_paths)}")
        image, coverage, source = read_stack(path)
        measured = deep.measure(image)
        if result is None:
            result = _added(deep.start(image, coverage, measured), _new_header(source), source, kind, 1.0, version)
        else:
            scale = deep.add(result.running, image, coverage, measured,
                             _placement(source, result.header, image.shape[1:]))
            result = _added(result.running, result.header, source, kind, scale, version)
    return result


def _placement(source: fits.Header, group: fits.Header, shape: tuple[int, int]):
    """Where the group's and the stack's plate solutions put the stack on the grid, or None when
    either is not solved (star matching alone then)."""
    source_wcs = solve.celestial_wcs(source) if source.get("PLTSOLVD") is True else None
    group_wcs = solve.celestial_wcs(group) if group.get("PLTSOLVD") is True else None
    if source_wcs is None or group_wcs is None:
        return None
    return deep.wcs_placement(source_wcs, group_wcs, shape)


def _new_header(source: fits.Header) -> fits.Header:
    header = fits.Header()
    for key in CARRIED:
        if key in source and key not in LOCATION_KEYWORDS:
            header[key] = source[key]
    header["NCOMBINE"], header["EXPTIME"], header["NSTACKS"] = 0, 0.0, 0
    header["DATE-BEG"], header["DATE-END"] = source["DATE-BEG"], source["DATE-END"]
    if source.get("PLTSOLVD") is True:     # the group's grid is its first stack's: so is its WCS
        solve.copy_solution(source, header)
    return header


def _added(running, header: fits.Header, source: fits.Header, kind: str, scale: float, base_version: int) -> GroupResult:
    """The result with *source* counted in; GROUPVER is the group version this result becomes."""
    header["GROUPVER"] = (base_version + 1, "group version this file is")
    header["STACKIND"] = (kind, "deep: one owner; crowd: every sharing owner")
    header["NCOMBINE"] = (int(header["NCOMBINE"]) + int(source["NCOMBINE"]), "frames in all contributions")
    header["EXPTIME"] = (float(header["EXPTIME"]) + float(source["EXPTIME"]), "[s] total exposure")
    header["NSTACKS"] = (int(header["NSTACKS"]) + 1, "chunk stacks added")
    header["DATE-BEG"] = min(str(header["DATE-BEG"]), str(source["DATE-BEG"]))
    header["DATE-END"] = max(str(header["DATE-END"]), str(source["DATE-END"]))
    header["LASTSCAL"] = (scale, "brightness factor applied to the last stack added")
    return GroupResult(running, header)
