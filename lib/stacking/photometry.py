"""Photometry of a plate-solved stack: star sizes in arcseconds, a V zero point calibrated on the
Tycho-2 stars in the field, the sky's surface brightness and the 5σ limiting magnitude.

Measured on the green plane, whose passband (about 500-580 nm) is close to Johnson V and Tycho VT.
The catalogue is the Tycho-2 of the Astrometry.net index files the plate solver uses: each index
carries the stars' VT magnitude as a tag-along column (``MAG_VT``); the all-sky index with the most
stars is read (`catalogue_stars`). VT differs from Johnson V by under 0.1 mag for most stars
(V ≈ VT − 0.09 (BT − VT)); the zero point is a V zero point to that accuracy.

Units: the image is in the stack's ADU (reference-frame ADU, the FITS value × 65535); fluxes are
turned into ADU/s with the exposure of one frame, since a stack is a mean of frames normalised to its
reference frame. ``MAGZPT`` is the magnitude of a source giving 1 ADU/s; a star's magnitude is
``MAGZPT − 2.5 log10(flux / exposure)``.

Everything but `catalogue_stars` (which reads the index file) and `measure_group_file` (which
measures a file in place) is a pure function of arrays.
Pixel positions are 0-based (x = column, y = row) as numpy indexes them; the STARS table holds them
1-based, as FITS does.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits

from .solve import celestial_wcs, scale_arcsec

INDEX_DIR = Path("/usr/share/astrometry")
INDEX_GLOB = "index-tycho2-*.fits"
DETECT_SIGMA = 5.0
MIN_STAR_FWHM_PX = 1.5          # narrower: a hot pixel or a cosmic the rejection left, not a star
SATURATION_ADU = 40000.0        # peak above this in the stack: a frame may have clipped it (60000 in a frame)
CALIBRATION_FAINTEST = 11.5     # Tycho-2 VT errors pass 0.1 mag beyond this: fainter stars only when too few
CALIBRATION_MIN = 5
MATCH_RADIUS_PX = 3.0           # catalogue to detection; Tycho-2 positions are good to well under 1″
CLIP_SIGMA = 3.0
LIMIT_SIGMA = 5.0               # LIMMAG: a point source at 5σ
EMPTY_APERTURES = 2000          # random apertures that measure the sky noise an aperture sees
MAX_TABLE_STARS = 2000          # the STARS table keeps the brightest this many


@dataclass(frozen=True)
class Catalogue:
    """Catalogue stars near a position.

    Attributes
    ----------
    ra, dec : numpy.ndarray
        (n,) degrees, ICRS (J2000).
    mag : numpy.ndarray
        (n,) Tycho VT magnitude.
    source : str
        The file they came from.
    """

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class Photometry:
    """A stack's photometric measures (see `measure`).

    Attributes
    ----------
    fwhm_px, fwhm_arcsec : float
        Median FWHM of unsaturated, isolated stars; NaN without any.
    zero_point : float
        V magnitude of a source giving 1 ADU/s (NaN when no catalogue star was measured).
    zero_point_scatter : float
        Robust standard deviation (1.4826 × MAD) of the calibration stars' catalogue − measured
        magnitude after clipping, mag.
    calibration_stars : int
        Catalogue stars the zero point rests on.
    sky_mag : float
        Sky surface brightness, V mag/arcsec².
    limiting_mag : float
        V magnitude of a point source measured at 5σ in an aperture of radius FWHM.
    sky_adu, sky_noise_adu, aperture_noise_adu : float
        Median sky level (ADU/px), pixel noise (ADU), and the noise of an aperture of radius FWHM
        on empty sky (ADU; measured, so it includes the noise correlated by interpolation).
    x, y, ra, dec, flux, mag, catmag, star_fwhm : numpy.ndarray
        (n,) the stars: 0-based pixel position, sky position (degrees), flux (ADU/s), calibrated
        magnitude, catalogue magnitude (NaN: not a catalogue star), FWHM (px); brightest first.
    used : numpy.ndarray
        (n,) bool, the star is one the zero point rests on.
    """

    fwhm_px: float
    fwhm_arcsec: float
    zero_point: float
    zero_point_scatter: float
    calibration_stars: int
    sky_mag: float
    limiting_mag: float
    sky_adu: float
    sky_noise_adu: float
    aperture_noise_adu: float
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    ra: np.ndarray = field(repr=False)
    dec: np.ndarray = field(repr=False)
    flux: np.ndarray = field(repr=False)
    mag: np.ndarray = field(repr=False)
    catmag: np.ndarray = field(repr=False)
    star_fwhm: np.ndarray = field(repr=False)
    used: np.ndarray = field(repr=False)


# -------------------------------------------------------------------------------------- catalogue

@functools.lru_cache(maxsize=4)
def _index(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u32 (n, 3) star positions, their minval (3,), 1/scale, VT (n,)) of an index file, memory-mapped."""
    with fits.open(path, memmap=True) as hdul:
        by_name = {hdu.header.get("TTYPE1"): hdu for hdu in hdul[1:]}
        data, ranges, mags = by_name["kdtree_data_stars"], by_name["kdtree_range_stars"], by_name["MAG_VT"]
        endian = "<" if str(hdul[0].header.get("ENDIAN", "")).startswith("04:03:02:01") else ">"
        n = int(data.header["NAXIS2"])
        locations = [hdu.fileinfo()["datLoc"] for hdu in (data, ranges, mags)]
    stars = np.memmap(path, f"{endian}u4", "r", offset=locations[0], shape=(n, 3))
    # the tree's range: minval (3), maxval (3), scale (tree units per data unit), native doubles
    scaling = np.fromfile(path, f"{endian}f8", count=7, offset=locations[1])
    vt = np.memmap(path, ">f4", "r", offset=locations[2], shape=(n,))   # a FITS column: big-endian
    return stars, scaling[:3], 1.0 / scaling[6], vt


@functools.lru_cache(maxsize=8)
def index_file(index_dir: Path = INDEX_DIR) -> Path | None:
    """The all-sky Tycho-2 index with the most stars in *index_dir* (None when there is none).

    Astrometry.net's index files come one per scale; the finer the scale, the more stars are kept per
    patch of sky (index-tycho2-08 keeps 1.3 million of Tycho-2's 2.5 million). Files split by HEALPix
    tile are not read.
    """
    best, most = None, -1
    for path in sorted(Path(index_dir).glob(INDEX_GLOB)):
        try:
            header = fits.getheader(path)
        except OSError:
            continue
        if int(header.get("HEALPIX", -1)) == -1 and int(header.get("NSTARS", 0)) > most:
            best, most = path, int(header["NSTARS"])
    return best


def catalogue_stars(ra_deg: float, dec_deg: float, radius_deg: float, *,
                    index_dir: Path = INDEX_DIR) -> Catalogue | None:
    """Tycho-2 stars within *radius_deg* of a position, with their VT magnitude.

    Parameters
    ----------
    ra_deg, dec_deg : float
        Centre, degrees.
    radius_deg : float
        Search radius, degrees.
    index_dir : Path
        Where the Astrometry.net index files are.

    Returns
    -------
    Catalogue or None
        None when no index file is installed.
    """
    path = index_file(index_dir)
    if path is None:
        return None
    stars, minval, invscale, vt = _index(str(path))
    ra0, dec0 = math.radians(ra_deg), math.radians(dec_deg)
    centre = np.array([math.cos(dec0) * math.cos(ra0), math.cos(dec0) * math.sin(ra0), math.sin(dec0)])
    # in the tree's integer units the dot product with the centre is linear: select, then convert the few
    xyz = stars.astype(np.float64) * invscale + minval
    near = np.flatnonzero(xyz @ centre > math.cos(math.radians(radius_deg)))
    x, y, z = xyz[near].T
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arcsin(np.clip(z, -1, 1)))
    return Catalogue(ra, dec, np.asarray(vt[near], np.float64), path.name)


# -------------------------------------------------------------------------------------- measuring

def zero_point(catalogue_mag: np.ndarray, instrumental_mag: np.ndarray,
               sigma: float = CLIP_SIGMA) -> tuple[float, float, np.ndarray]:
    """The offset that puts instrumental magnitudes on the catalogue's scale, robust to outliers.

    Parameters
    ----------
    catalogue_mag : numpy.ndarray
        (n,) catalogue magnitudes.
    instrumental_mag : numpy.ndarray
        (n,) −2.5 log10(flux in ADU/s) of the same stars.
    sigma : float
        Clipping threshold in robust standard deviations (1.4826 × MAD), iterated to convergence.

    Returns
    -------
    zero_point : float
        Median of catalogue − instrumental over the kept stars (NaN with none).
    scatter : float
        Robust standard deviation of the kept stars' differences, mag.
    kept : numpy.ndarray
        (n,) bool, the stars kept.
    """
    diff = np.asarray(catalogue_mag, np.float64) - np.asarray(instrumental_mag, np.float64)
    kept = np.isfinite(diff)
    if not kept.any():
        return float("nan"), float("nan"), kept
    for _ in range(10):
        centre = np.median(diff[kept])
        spread = max(1.4826 * np.median(np.abs(diff[kept] - centre)), 0.02)   # a floor: no clipping to 0
        new = np.isfinite(diff) & (np.abs(diff - centre) <= sigma * spread)
        if (new == kept).all() or new.sum() < 3:
            break
        kept = new
    centre = float(np.median(diff[kept]))
    return centre, float(1.4826 * np.median(np.abs(diff[kept] - centre))), kept


def empty_aperture_noise(data: np.ndarray, mask: np.ndarray, radius: float, count: int = EMPTY_APERTURES,
                         seed: int = 0) -> float:
    """Noise of an aperture sum on empty sky, measured by placing apertures at random.

    Parameters
    ----------
    data : numpy.ndarray
        (H, W) float32, sky subtracted.
    mask : numpy.ndarray
        (H, W) bool, True where the pixel is a source or not fully exposed: apertures touching it are
        dropped.
    radius : float
        Aperture radius, px.
    count : int
        Apertures tried (fixed *seed*: the same image always gives the same number).

    Returns
    -------
    float
        Standard deviation of the sums within 4 robust sigmas (1.4826 × MAD) of their median, ADU;
        NaN when fewer than 30 apertures fit.
    """
    height, width = data.shape
    margin = int(math.ceil(radius)) + 1
    if height <= 2 * margin or width <= 2 * margin:
        return float("nan")
    rng = np.random.default_rng(seed)
    x = rng.uniform(margin, width - margin, count)
    y = rng.uniform(margin, height - margin, count)
    sums, _, flags = sep.sum_circle(data, x, y, radius, mask=mask, subpix=5)
    touched, _, _ = sep.sum_circle(mask.astype(np.float32), x, y, radius, subpix=1)
    good = (touched == 0) & (flags == 0)
    if good.sum() < 30:
        return float("nan")
    s = sums[good]
    # the standard deviation of the sums within 4 robust sigmas: an aperture on a faint source missed by
    # the mask does not count, and it scatters less than the MAD does
    spread = 1.4826 * np.median(np.abs(s - np.median(s)))
    return float(np.std(s[np.abs(s - np.median(s)) <= 4 * spread]))


def field_catalogue(wcs, width: int, height: int, *, index_dir: Path = INDEX_DIR) -> Catalogue | None:
    """The catalogue stars of an image: `catalogue_stars` around its centre, out to its corners."""
    centre = wcs.all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)[0]
    radius = 0.5 * math.hypot(width, height) * scale_arcsec(wcs) / 3600.0 * 1.05
    return catalogue_stars(float(centre[0]), float(centre[1]), radius, index_dir=index_dir)


def measure(plane: np.ndarray, wcs, exposure_s: float, *, coverage: np.ndarray | None = None,
            catalogue: Catalogue | None = None, pedestal_adu: float = 0.0,
            sky_subtracted: bool = False) -> Photometry:
    """Measure a stack's stars, zero point, sky brightness and limiting magnitude.

    Parameters
    ----------
    plane : numpy.ndarray
        (H, W) the green plane in ADU (the stack's values × 65535); NaN counts as not exposed.
    wcs : astropy.wcs.WCS
        The plate solve's celestial WCS (0-based pixels as numpy's in `all_pix2world(..., 0)`).
    exposure_s : float
        Seconds one unit of the image stands for (a frame's exposure: a stack is a mean).
    coverage : numpy.ndarray or None
        (H, W) frames covering each pixel; sky and noise are measured where it is at its maximum.
    catalogue : Catalogue or None
        Stars to calibrate on (see `catalogue_stars`); None: no zero point, no magnitudes.
    pedestal_adu : float
        The sensor's offset included in the sky level (ADU); 0 when unknown, which makes ``sky_mag``
        a bright limit: the sky is at least that dark.
    sky_subtracted : bool
        The image's sky was taken off (a deep or crowd stack): no ``sky_mag`` (NaN).

    Returns
    -------
    Photometry
    """
    data = np.ascontiguousarray(np.nan_to_num(plane, nan=0.0), np.float32)
    full = np.ones(data.shape, bool) if coverage is None else (coverage >= np.max(coverage))
    full &= np.isfinite(plane)
    background = sep.Background(data, mask=~full, bw=64, bh=64, fw=3, fh=3)
    sky_map = background.back()
    data = data - sky_map
    noise = float(background.globalrms)
    sky_adu = float(np.median(sky_map[full])) if full.any() else float(background.globalback)

    objects, segments = sep.extract(data, DETECT_SIGMA, err=noise, minarea=5, mask=~full,
                                    segmentation_map=True)
    x, y = objects["x"], objects["y"]
    size = np.sqrt(np.maximum(objects["a"] * objects["b"], 0.25))
    half_light, _ = sep.flux_radius(data, x, y, np.clip(6.0 * size, 4.0, 40.0), 0.5, subpix=3)
    fwhm = 2.0 * half_light                          # exact for a Gaussian profile
    peak = objects["peak"] + sky_adu
    star = np.isfinite(fwhm) & (fwhm >= MIN_STAR_FWHM_PX) & ((objects["flag"] & sep.OBJ_TRUNC) == 0)
    clean = star & ((objects["flag"] & sep.OBJ_MERGED) == 0) & (peak < SATURATION_ADU)
    fwhm_px = float(np.median(fwhm[clean])) if clean.any() else float("nan")
    if np.isfinite(fwhm_px):                         # a galaxy's nucleus or a knot of it is no star
        star &= fwhm <= 3.0 * fwhm_px
        clean &= star
    scale = scale_arcsec(wcs)

    # calibration aperture: 2 FWHM holds all of a star's light but its far wings, the same for every star
    aperture = float(np.clip(2.0 * fwhm_px, 3.0, 25.0)) if np.isfinite(fwhm_px) else 6.0
    order = np.flatnonzero(star)[np.argsort(objects["flux"][star])[::-1]][:MAX_TABLE_STARS]
    sx, sy = x[order], y[order]
    flux, _, flags = sep.sum_circle(data, sx, sy, aperture, bkgann=(1.5 * aperture, 2.5 * aperture), subpix=5)
    flux = np.where((flags & sep.APER_TRUNC) == 0, flux, np.nan)
    rate = flux / exposure_s
    with np.errstate(invalid="ignore", divide="ignore"):
        instrumental = np.where(rate > 0, -2.5 * np.log10(rate), np.nan)
    ra, dec = (wcs.all_pix2world(np.column_stack([sx, sy]), 0).T if len(order) else (np.zeros(0), np.zeros(0)))

    catmag = np.full(len(order), np.nan)
    if catalogue is not None and len(catalogue.ra) and len(order):
        cx, cy = wcs.all_world2pix(np.column_stack([catalogue.ra, catalogue.dec]), 0).T
        for k in range(len(catalogue.ra)):
            d2 = (sx - cx[k]) ** 2 + (sy - cy[k]) ** 2
            nearest = int(np.argmin(d2))
            if d2[nearest] <= MATCH_RADIUS_PX ** 2 and not (catmag[nearest] <= catalogue.mag[k]):
                catmag[nearest] = catalogue.mag[k]     # two catalogue stars on one: the brighter
    calibrator = np.isfinite(catmag) & np.isfinite(instrumental) & clean[order]
    if (calibrator & (catmag <= CALIBRATION_FAINTEST)).sum() >= CALIBRATION_MIN:
        calibrator &= catmag <= CALIBRATION_FAINTEST
    zp, scatter, kept = zero_point(catmag[calibrator], instrumental[calibrator])
    used = np.zeros(len(order), bool)
    used[np.flatnonzero(calibrator)[kept]] = True

    # limiting magnitude: the noise of an aperture of radius FWHM on empty sky, and the share of a
    # star's light that aperture holds (measured on the calibration stars or, lacking them, the clean ones)
    small = float(np.clip(fwhm_px, 1.5, 15.0)) if np.isfinite(fwhm_px) else 3.0
    source_mask = (segments > 0) | ~full
    source_mask = _dilate(source_mask, int(math.ceil(small)))
    aperture_noise = empty_aperture_noise(data, source_mask, small)
    share_of = used if used.sum() >= 3 else clean[order] & np.isfinite(flux)
    inner, _, _ = sep.sum_circle(data, sx[share_of], sy[share_of], small, subpix=5)
    share = float(np.median(inner / flux[share_of])) if share_of.any() else 0.8
    share = float(np.clip(share, 0.2, 1.0)) if np.isfinite(share) else 0.8
    limit = LIMIT_SIGMA * aperture_noise / share / exposure_s
    limiting_mag = zp - 2.5 * math.log10(limit) if limit > 0 and np.isfinite(limit) else float("nan")
    sky_rate = (sky_adu - pedestal_adu) / exposure_s / scale ** 2
    sky_mag = zp - 2.5 * math.log10(sky_rate) if sky_rate > 0 and not sky_subtracted else float("nan")

    return Photometry(
        fwhm_px=fwhm_px, fwhm_arcsec=fwhm_px * scale, zero_point=zp, zero_point_scatter=scatter,
        calibration_stars=int(used.sum()), sky_mag=sky_mag, limiting_mag=limiting_mag, sky_adu=sky_adu,
        sky_noise_adu=noise, aperture_noise_adu=aperture_noise,
        x=sx, y=sy, ra=np.asarray(ra) % 360.0, dec=np.asarray(dec), flux=rate, mag=zp + instrumental,
        catmag=catmag, star_fwhm=fwhm[order], used=used)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    import cv2

    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


# -------------------------------------------------------------------------------------- FITS

KEYWORDS = ("FWHMARC", "MAGZPT", "MAGZPSIG", "MAGZPN", "SKYMAG", "LIMMAG", "PHOTBAND")


def header_cards(result: Photometry) -> list[tuple[str, object, str]]:
    """(keyword, value, comment) for the stack's primary header; values not measured are left out."""
    cards = [("PHOTBAND", "G", "photometry: green plane, Tycho VT (~V)")]
    for key, value, digits, comment in (
            ("FWHMARC", result.fwhm_arcsec, 2, "[arcsec] median star FWHM"),
            ("MAGZPT", result.zero_point, 3, "[mag] V of 1 ADU/s (per frame exposure)"),
            ("MAGZPSIG", result.zero_point_scatter, 3, "[mag] scatter of the calibration stars"),
            ("SKYMAG", result.sky_mag, 2, "[mag/arcsec2] V sky surface brightness"),
            ("LIMMAG", result.limiting_mag, 2, "[mag] V of a 5 sigma point source")):
        if value is not None and np.isfinite(value):
            cards.append((key, round(float(value), digits), comment))
    cards.append(("MAGZPN", int(result.calibration_stars), "catalogue stars of the zero point"))
    return cards


def measure_group_file(path: Path) -> Photometry | None:
    """Measure a deep or crowd stack's file and write the keywords into its primary header, in place.

    A group's image is a sum of sky-subtracted contributions on its first contribution's brightness
    scale (lib/stacking/deep.py): one unit is that stack's ADU/65535 in one of its frames' exposure
    (GRID's EXPTIME / NCOMBINE), and there is no sky to measure (no SKYMAG). Pixels with at least half
    the greatest weight count as fully exposed. The file's STARS table is the group's registration
    stars; the measured stars are not written.

    Returns
    -------
    Photometry or None
        None when the file is not plate solved, is no group file, or no catalogue is installed.
    """
    with fits.open(path, mode="update", memmap=False) as hdul:
        header = hdul[0].header
        if header.get("PLTSOLVD") is not True or "GRID" not in hdul or "WEIGHT" not in hdul:
            return None
        grid = hdul["GRID"].header
        try:
            exposure = float(grid["EXPTIME"]) / float(grid["NCOMBINE"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            return None
        wcs = celestial_wcs(header)
        image = hdul[0].data
        catalogue = field_catalogue(wcs, image.shape[2], image.shape[1])
        if catalogue is None or not exposure > 0:
            return None
        weight = np.nan_to_num(hdul["WEIGHT"].data.astype(np.float32), nan=0.0)
        full = (weight >= 0.5 * weight.max()).astype(np.int16)
        result = measure(image[1].astype(np.float32) * np.float32(65535), wcs, exposure, coverage=full,
                         catalogue=catalogue, sky_subtracted=True)
        for key, value, comment in header_cards(result):
            header[key] = (value, comment)
        hdul.flush()
    return result


def stars_table(result: Photometry) -> fits.BinTableHDU:
    """The STARS binary table: every star measured, brightest first; CATMAG NaN for non-catalogue stars."""
    table = fits.BinTableHDU.from_columns([
        fits.Column("RA", "D", unit="deg", array=result.ra),
        fits.Column("DEC", "D", unit="deg", array=result.dec),
        fits.Column("X", "E", unit="pix", array=result.x + 1.0),       # FITS pixels are 1-based
        fits.Column("Y", "E", unit="pix", array=result.y + 1.0),
        fits.Column("FLUX", "E", unit="adu/s", array=result.flux),
        fits.Column("MAG", "E", unit="mag", array=result.mag),
        fits.Column("CATMAG", "E", unit="mag", array=result.catmag),
        fits.Column("FWHM", "E", unit="pix", array=result.star_fwhm),
        fits.Column("CALIB", "L", array=result.used),
    ], name="STARS")
    table.header["COMMENT"] = "stars of the green plane; MAG = MAGZPT - 2.5 log10(FLUX); CATMAG: Tycho-2 VT"
    table.header["COMMENT"] = "CALIB: the star is one the zero point rests on; X, Y: 1-based FITS pixels"
    return table
