"""Deep and crowd stacks: chunk stacks of one patch of sky, added up on one grid.

A deep (one owner) or crowd (many owners) stack is kept as a running weighted *sum* and *weight*
map on the grid of its first contribution, so a new chunk stack is added without re-reading any
earlier one:

    sum    += w · (scale · (stack − sky))        (after warping onto the grid)
    weight += w                                   w = coverage fraction / (scale · σ)²
    image   = sum / weight

``scale`` puts the newcomer on the grid's brightness scale (median flux ratio of paired stars), and
σ is its sky noise, so each pixel is an inverse-variance weighted mean: a plain mean of stacks of
different depth would be noisier than the deepest of them. Stacks from different telescopes
(S50, S30, S30 Pro: other pixel scales and frame sizes) are matched by a similarity transform with
scale (astroalign's triangles are scale-invariant; a test adds an S50 stack resampled to an S30-like
0.6x); one that does not register is refused with the reason.

Arrays: images (3, H, W) float32, maps (H, W) float32; star positions in pixels (x = column).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .normalize import sky_level_and_noise
from .register import RegistrationError, apply_matrix, find_registration, fit_similarity, warp
from .stars import StarField, aperture_fluxes, detect_stars

ADU = 65535.0                 # stacks are stored in ADU/65535; star detection works in ADU
MAX_SCALE_ERROR = 0.8         # S50 vs S30 pixel scales differ by ~1.7x: allow them, refuse wilder fits
MAX_RESIDUAL_PX = 1.5         # stacks of different nights and telescopes agree less well than frames
MIN_STAR_FWHM_PX = 1.2        # pixel rejection removed the hot pixels; a coarser telescope's stars are narrow
WCS_PAIR_RADIUS_PX = 4.0      # a star the WCS places this close to a grid star pairs with it
WCS_MIN_PAIRS = 8             # pairs the WCS placement needs before star matching refines it


@dataclass(frozen=True)
class StackMeasure:
    """What registration and weighting need to know about one stack.

    stars: luminance stars (positions in this stack's pixels, fluxes in ADU); sky: (3,) per-channel
    sky level; noise: sky noise of the luminance, same units as the image.
    """
    stars: StarField
    sky: np.ndarray
    noise: float


@dataclass
class Running:
    """The running state of a deep or crowd stack on its grid."""
    total: np.ndarray             # (3, H, W) weighted sum of sky-subtracted, scaled contributions
    weight: np.ndarray            # (H, W) sum of weights
    ref_xy: np.ndarray            # (n, 2) the grid's stars, for registering newcomers
    ref_flux: np.ndarray          # (n,) their luminance fluxes, the grid's brightness scale

    @property
    def image(self) -> np.ndarray:
        """(3, H, W) float32 weighted mean; 0 where nothing contributes."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.total / self.weight
        return np.where(self.weight > 0, mean, 0.0).astype(np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 mean of the three planes of a (3, H, W) image."""
    return image.mean(axis=0, dtype=np.float32)


def measure(image: np.ndarray) -> StackMeasure:
    """Stars, sky and noise of a (3, H, W) stack in ADU/65535."""
    lum = luminance(image) * np.float32(ADU)
    stars = detect_stars(lum, max_stars=300, saturation=0.9 * ADU, min_fwhm_px=MIN_STAR_FWHM_PX)
    sky = np.array([sky_level_and_noise(plane)[0] for plane in image])
    _, noise = sky_level_and_noise(lum)
    return StackMeasure(stars=stars, sky=sky, noise=noise / ADU)


def wcs_placement(stack_wcs, grid_wcs, shape: tuple[int, int], samples: int = 7) -> np.ndarray:
    """(2, 3) matrix taking a stack's pixels onto the grid's, from the two plate solutions alone.

    stack_wcs, grid_wcs: celestial astropy WCS of the stack and of the grid; shape: (H, W) of the stack.
    A samples × samples lattice over the stack is taken to the sky and back onto the grid, and a
    similarity is fitted to it: telescopes of any pixel scale and field rotation are placed without a
    star pattern in common, to a pixel or so (SIP distortion and the fit's residual)."""
    height, width = shape
    xs, ys = np.meshgrid(np.linspace(0, width - 1, samples), np.linspace(0, height - 1, samples))
    lattice = np.column_stack([xs.ravel(), ys.ravel()])
    on_grid = grid_wcs.all_world2pix(stack_wcs.all_pix2world(lattice, 0), 0, quiet=True)
    return fit_similarity(lattice, on_grid)


def register_onto(stack: StackMeasure, running: Running, placement: np.ndarray | None = None) -> np.ndarray:
    """(2, 3) matrix taking the stack's pixels onto the grid; RegistrationError if none is found.

    placement: the WCS's (see wcs_placement), when both are plate solved: star pairs near where it puts
    them refine it. Without it, or when too few stars pair, stars are matched from scratch."""
    if placement is not None:
        refined = _refine_placement(placement, stack, running)
        if refined is not None:
            return refined
    registration = find_registration(stack.stars.xy, running.ref_xy, stack.stars.flux,
                                     max_scale_error=MAX_SCALE_ERROR, max_residual_px=MAX_RESIDUAL_PX)
    return registration.matrix


def _refine_placement(matrix: np.ndarray, stack: StackMeasure, running: Running) -> np.ndarray | None:
    """The WCS placement refined by the stars it pairs (three passes, tightening the radius), or None
    when fewer than WCS_MIN_PAIRS pair up or they disagree by more than MAX_RESIDUAL_PX RMS."""
    radius = WCS_PAIR_RADIUS_PX
    xy, ref = stack.stars.xy, running.ref_xy
    if len(xy) < WCS_MIN_PAIRS or len(ref) < WCS_MIN_PAIRS:
        return None
    for _ in range(3):
        distance = np.linalg.norm(apply_matrix(matrix, xy)[:, None, :] - ref[None, :, :], axis=2)
        nearest = np.argmin(distance, axis=1)
        close = distance[np.arange(len(xy)), nearest] <= radius
        # each grid star pairs once: with the closest of the stack's stars that found it
        order = np.flatnonzero(close)[np.argsort(distance[np.flatnonzero(close), nearest[close]])]
        _, first = np.unique(nearest[order], return_index=True)
        pairs = np.sort(order[first])
        if len(pairs) < WCS_MIN_PAIRS:
            return None
        matrix = fit_similarity(xy[pairs], ref[nearest[pairs]])
        error = np.linalg.norm(apply_matrix(matrix, xy[pairs]) - ref[nearest[pairs]], axis=1)
        radius = max(3.0 * float(np.median(error)), 0.5)
    return matrix if float(np.sqrt(np.mean(error ** 2))) <= MAX_RESIDUAL_PX else None


def flux_scale(stack_lum: np.ndarray, stack: StackMeasure, matrix: np.ndarray, running: Running) -> float:
    """Factor putting the stack on the grid's brightness scale: median ratio of paired star fluxes.

    Fluxes are measured in apertures scaled with the transform, so a telescope with a finer pixel
    scale (more pixels per star) compares like with like.
    """
    pixel_scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))        # grid px per stack px
    radius = 3.0 * max(float(np.nan_to_num(stack.stars.fwhm_px, nan=3.0)), 1.5)
    on_grid = apply_matrix(matrix, stack.stars.xy)
    nearest = np.linalg.norm(on_grid[:, None, :] - running.ref_xy[None, :, :], axis=2)
    pairs = [(i, int(np.argmin(row))) for i, row in enumerate(nearest) if row.min() < 2.0]
    if len(pairs) < 3:
        raise RegistrationError(f"cannot compare brightness: only {len(pairs)} stars pair with the grid")
    mine = aperture_fluxes(stack_lum, stack.stars.x[[i for i, _ in pairs]],
                           stack.stars.y[[i for i, _ in pairs]], radius)
    theirs = running.ref_flux[[j for _, j in pairs]]
    good = (mine > 0) & (theirs > 0)
    if good.sum() < 3:
        raise RegistrationError("cannot compare brightness: too few stars with flux in both")
    # Fluxes are sums over pixels. Warping keeps pixel values and spreads each of the stack's pixels over
    # pixel_scale² grid pixels, so a star's flux on the grid is pixel_scale² times its flux here.
    return float(np.median(theirs[good] / mine[good])) / pixel_scale ** 2


def start(image: np.ndarray, coverage: np.ndarray, stack: StackMeasure) -> Running:
    """A new running stack on this stack's own grid."""
    weight = _weights(coverage, stack.noise)
    total = (image - stack.sky[:, None, None].astype(np.float32)) * weight
    lum = luminance(image) * np.float32(ADU)
    radius = 3.0 * max(float(np.nan_to_num(stack.stars.fwhm_px, nan=3.0)), 1.5)
    flux = aperture_fluxes(lum, stack.stars.x, stack.stars.y, radius)
    return Running(total=total.astype(np.float32), weight=weight, ref_xy=stack.stars.xy, ref_flux=flux)


def add(running: Running, image: np.ndarray, coverage: np.ndarray, stack: StackMeasure,
        placement: np.ndarray | None = None) -> float:
    """Register *image* onto the running stack (starting from the WCS *placement* when given, see
    register_onto) and add it in place; returns the brightness scale used."""
    matrix = register_onto(stack, running, placement)
    scale = flux_scale(luminance(image) * np.float32(ADU), stack, matrix, running)
    shape = running.weight.shape
    cover = warp(coverage.astype(np.float32), matrix, shape, "cubic")
    weight = _weights(np.nan_to_num(cover, nan=0.0), stack.noise * scale)
    for c in range(3):
        plane = warp(((image[c] - np.float32(stack.sky[c])) * np.float32(scale)).astype(np.float32),
                     matrix, shape, "cubic")
        ok = np.isfinite(plane)
        running.total[c][ok] += plane[ok] * weight[ok]
    running.weight += np.where(np.isfinite(cover), weight, 0.0).astype(np.float32)
    return scale


def _weights(coverage: np.ndarray, noise: float) -> np.ndarray:
    """(H, W) inverse-variance weight: a pixel covered by a fraction f of the stack's frames has
    variance σ²/f, where σ is the sky noise of the fully covered stack."""
    full = max(float(np.nanmax(coverage)), 1.0)
    fraction = np.clip(coverage / full, 0.0, 1.0)
    return (fraction / max(noise, 1e-12) ** 2).astype(np.float32)
