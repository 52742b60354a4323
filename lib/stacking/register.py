"""Registration: a similarity transform (rotation, uniform scale, shift) from a frame's stars onto the
reference frame's stars, then the warp that applies it.

The first guess is a translation that many pairs of bright stars agree on (frames of one session
mostly drift); then the same after turning the frame by the rotation that many pairs of star pairs
agree on (an alt-az mount's field rotates through a session); when neither pairs up most stars,
astroalign's triangle-invariant search on the brightest stars, which is robust to any rotation, scale
and large shifts. Either guess is then refined by
weighted least squares over every star pair it implies, which brings the error well below a tenth of
a pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ASTERISM_STARS = 30          # brightest stars handed to the triangle search: enough to match, half the time of 50
PAIR_RADIUS_PX = 3.0         # a predicted position this close to a reference star makes a pair
MIN_PAIR_RADIUS_PX = 0.3     # pairs are never required to agree better than this
SHIFT_STARS = 25             # brightest stars whose pairwise offsets vote for a translation
SHIFT_TOLERANCE_PX = 2.0
SHIFT_MIN_VOTES = 6
SHIFT_PAIRED_FRACTION = 0.5  # a quick guess is kept if half the stars then pair up ...
CONFIDENT_MATCHES = 20       # ... or this many: 20 stars agreeing to < 1 px after the fit are no accident
REFINE_PASSES = 4
ROTATION_STARS = 20          # brightest stars whose pairs vote for a rotation (190 pairs)
ROTATION_MIN_SEPARATION_PX = 100.0   # shorter pairs give too coarse an angle
ROTATION_LENGTH_TOLERANCE_PX = 1.5   # pairs of equal length (the scale is ~1) may be the same pair
ROTATION_BIN_DEG = 0.25

INTERPOLATION_FLAGS = {"cubic": cv2.INTER_CUBIC, "lanczos4": cv2.INTER_LANCZOS4}


class RegistrationError(ValueError):
    """The frame cannot be put onto the reference; the message is the reason shown to the owner."""


@dataclass(frozen=True)
class Registration:
    """matrix: (2, 3) float64 affine taking frame pixel (x, y, 1) to reference pixel (x, y).
    residual_px: RMS distance of paired stars after the fit. frame_index, ref_index: (m,) int arrays
    pairing the frame's stars with the reference's (indices into the lists given to find_registration)."""

    matrix: np.ndarray
    residual_px: float
    frame_index: np.ndarray
    ref_index: np.ndarray

    @property
    def matches(self) -> int:
        return int(len(self.frame_index))

    @property
    def scale(self) -> float:
        return float(np.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))

    @classmethod
    def identity(cls, n_stars: int) -> "Registration":
        """The reference onto itself: every star paired with itself."""
        index = np.arange(n_stars)
        return cls(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), 0.0, index, index)


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity taking src points onto dst points.

    src, dst: (n, 2) float (x, y), n ≥ 2; weights: (n,) ≥ 0 or None for equal weights.
    Returns the (2, 3) matrix [[a, -b, tx], [b, a, ty]].
    """
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.vstack([np.column_stack([x, -y, ones, zeros]), np.column_stack([y, x, zeros, ones])])
    target = np.concatenate([dst[:, 0], dst[:, 1]])
    if weights is not None:
        root = np.sqrt(np.concatenate([weights, weights]))
        design, target = design * root[:, None], target * root
    a, b, tx, ty = np.linalg.lstsq(design, target, rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def apply_matrix(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(n, 2) points through a (2, 3) affine matrix."""
    return xy @ matrix[:, :2].T + matrix[:, 2]


def find_registration(frame_xy: np.ndarray, ref_xy: np.ndarray, frame_flux: np.ndarray | None = None, *,
                      min_matches: int = 6, max_residual_px: float = 1.0,
                      max_scale_error: float = 0.02) -> Registration:
    """Register a frame's stars onto the reference's.

    frame_xy, ref_xy: (n, 2) float star positions in px, brightest first; frame_flux: (n,) the frame's
    star fluxes, to weight the fit (a faint star's centroid is noisier), or None for equal weights.
    Raises RegistrationError (with a reason fit for the owner) when no transform is found, too few
    stars pair up, the fit's residual is too large, or the scale is not ~1 (a false match).
    """
    if len(frame_xy) < 3 or len(ref_xy) < 3:
        raise RegistrationError(f"cannot register: {len(frame_xy)} stars in the frame, "
                                f"{len(ref_xy)} in the reference (3 needed to match)")
    registration = None
    # frames of another night or telescope share only part of the field: a fixed count suffices there
    well_paired = min(SHIFT_PAIRED_FRACTION * min(len(frame_xy), len(ref_xy)), CONFIDENT_MATCHES)
    # frames of one session are usually just shifted a little, or shifted and turned: try that first
    for first_guess in (shift_guess, rotation_guess):
        guess = first_guess(frame_xy, ref_xy)
        if guess is None:
            continue
        try:
            candidate = _refine(guess, frame_xy, ref_xy, frame_flux, min_matches)
        except RegistrationError:
            continue
        if candidate.matches >= well_paired and candidate.residual_px <= max_residual_px:
            registration = candidate
            break
    if registration is None:
        import astroalign  # only frames that neither just drift nor drift and turn need it (and scipy)

        try:
            guess, _ = astroalign.find_transform(frame_xy[:ASTERISM_STARS], ref_xy[:ASTERISM_STARS])
        except (astroalign.MaxIterError, ValueError, TypeError) as exc:
            raise RegistrationError(f"cannot register: no star pattern in common with the reference ({exc})") \
                from None
        registration = _refine(np.asarray(guess.params, float)[:2], frame_xy, ref_xy, frame_flux, min_matches)

    if abs(registration.scale - 1.0) > max_scale_error:
        raise RegistrationError(f"cannot register: matched transform has scale {registration.scale:.3f} "
                                f"(a false match; frames of one telescope share a scale)")
    if registration.residual_px > max_residual_px:
        raise RegistrationError(f"cannot register: star positions disagree by {registration.residual_px:.2f} px "
                                f"RMS after the fit (limit {max_residual_px:.2f})")
    return registration


def shift_guess(frame_xy: np.ndarray, ref_xy: np.ndarray) -> np.ndarray | None:
    """A pure translation most pairs of bright stars agree on, as a (2, 3) matrix, or None.

    Every offset between one of the frame's and one of the reference's brightest stars is a candidate;
    the true shift is the one many candidates share (within SHIFT_TOLERANCE_PX), chance offsets are not.
    """
    offsets = (ref_xy[:SHIFT_STARS, None, :] - frame_xy[None, :SHIFT_STARS, :]).reshape(-1, 2)
    votes = np.count_nonzero(_squared_distances(offsets, offsets) <= SHIFT_TOLERANCE_PX ** 2, axis=1)
    best = int(np.argmax(votes))
    if votes[best] < SHIFT_MIN_VOTES:
        return None
    agreeing = np.linalg.norm(offsets - offsets[best], axis=1) <= SHIFT_TOLERANCE_PX
    dx, dy = offsets[agreeing].mean(axis=0)
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def rotation_guess(frame_xy: np.ndarray, ref_xy: np.ndarray) -> np.ndarray | None:
    """A rotation plus translation, as a (2, 3) matrix, found without matching stars one by one; or None.

    The vector between two stars turns with the field and keeps its length (frames of one telescope
    share a scale), so every pair of equally long star pairs, one in each list, votes for the angle
    between them; the true rotation is the angle many votes share. A pair's direction depends on which
    star comes first, so angles are compared modulo 180° and both turns are tried for the translation.
    """
    a, b = _pair_vectors(frame_xy[:ROTATION_STARS]), _pair_vectors(ref_xy[:ROTATION_STARS])
    if len(a) == 0 or len(b) == 0:
        return None
    length_a, length_b = np.hypot(a[:, 0], a[:, 1]), np.hypot(b[:, 0], b[:, 1])
    same_length = np.abs(length_a[:, None] - length_b[None, :]) <= ROTATION_LENGTH_TOLERANCE_PX
    turn = np.degrees(np.arctan2(b[None, :, 1], b[None, :, 0]) - np.arctan2(a[:, None, 1], a[:, None, 0]))
    votes = np.mod(turn[same_length], 180.0)
    if len(votes) < SHIFT_MIN_VOTES:
        return None
    counts, edges = np.histogram(votes, bins=int(180 / ROTATION_BIN_DEG), range=(0.0, 180.0))
    peak = int(np.argmax(counts + np.roll(counts, -1)))  # a peak may straddle two bins
    if counts[peak] + counts[(peak + 1) % len(counts)] < SHIFT_MIN_VOTES:
        return None
    centre = edges[peak + 1]
    near = np.abs((votes - centre + 90.0) % 180.0 - 90.0) <= ROTATION_BIN_DEG
    angle = centre + float(np.mean((votes[near] - centre + 90.0) % 180.0 - 90.0))
    best, best_votes = None, 0
    for degrees in (angle, angle + 180.0):
        theta = np.radians(degrees)
        turned = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0]])
        turned_xy = apply_matrix(turned, frame_xy)
        shift = shift_guess(turned_xy, ref_xy)
        if shift is None:
            continue
        paired = int(np.count_nonzero(_nearest(turned_xy + shift[:, 2], ref_xy)[0] <= SHIFT_TOLERANCE_PX))
        if paired > best_votes:
            best, best_votes = np.hstack([turned[:, :2], shift[:, 2:]]), paired
    return best


def _pair_vectors(xy: np.ndarray) -> np.ndarray:
    """(m, 2) vectors between every two of the given stars at least ROTATION_MIN_SEPARATION_PX apart."""
    first, second = np.triu_indices(len(xy), k=1)
    vectors = xy[second] - xy[first]
    return vectors[np.hypot(vectors[:, 0], vectors[:, 1]) >= ROTATION_MIN_SEPARATION_PX]


def _refine(matrix: np.ndarray, frame_xy: np.ndarray, ref_xy: np.ndarray, frame_flux: np.ndarray | None,
            min_matches: int) -> Registration:
    """Pair every star the first guess brings near a reference star and fit, a few times over."""
    radius = PAIR_RADIUS_PX
    frame_index = ref_index = np.zeros(0, int)
    for _ in range(REFINE_PASSES):
        distance, nearest = _nearest(apply_matrix(matrix, frame_xy), ref_xy)
        frame_index, ref_index = _unique_pairs(distance, nearest, radius)
        if len(frame_index) < max(min_matches, 3):
            raise RegistrationError(f"cannot register: only {len(frame_index)} stars pair with the reference "
                                    f"(need {min_matches})")
        matrix = fit_similarity(frame_xy[frame_index], ref_xy[ref_index], _fit_weights(frame_flux, frame_index))
        error = np.linalg.norm(apply_matrix(matrix, frame_xy[frame_index]) - ref_xy[ref_index], axis=1)
        # next pass: drop pairs far off the fit (blends, a hot pixel next to a star, wrong neighbours);
        # the median error keeps a few such pairs from widening the net that is meant to catch them
        radius = max(3.0 * float(np.median(error)), MIN_PAIR_RADIUS_PX)
    error = np.linalg.norm(apply_matrix(matrix, frame_xy[frame_index]) - ref_xy[ref_index], axis=1)
    return Registration(matrix, float(np.sqrt(np.mean(error ** 2))), frame_index, ref_index)


def _fit_weights(flux: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    """Inverse-variance weights of centroids: a faint star's position error grows as 1/flux against
    the sky noise, so weight ∝ flux², capped at the 80th percentile so that a few bright, possibly
    saturated or blended stars cannot dominate."""
    if flux is None:
        return None
    paired = np.maximum(flux[index], 0.0)
    return np.minimum(paired, np.percentile(paired, 80)) ** 2 + 1e-12


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) squared Euclidean distances between (n, 2) and (m, 2) points. A star list has a few
    hundred entries at most, so the full matrix is small and beats building a search tree."""
    dx = a[:, None, 0] - b[None, :, 0]
    dy = a[:, None, 1] - b[None, :, 1]
    return dx * dx + dy * dy


def _nearest(points: np.ndarray, ref_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of (n, 2) points: distance to and index of the nearest of the (m, 2) reference stars."""
    squared = _squared_distances(points, ref_xy)
    nearest = np.argmin(squared, axis=1)
    return np.sqrt(squared[np.arange(len(points)), nearest]), nearest


def _unique_pairs(distance: np.ndarray, nearest: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs from a nearest-neighbour query within radius px, each reference star used once (by its
    closest frame star)."""
    found = np.flatnonzero(distance <= radius)
    order = found[np.argsort(distance[found])]
    _, first = np.unique(nearest[order], return_index=True)
    keep = np.sort(order[first])
    return keep, nearest[keep]


def warp(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], interpolation: str = "cubic") -> np.ndarray:
    """Resample an image onto the reference grid.

    image: (H, W) or (H, W, C) float32, C ≤ 4; matrix: (2, 3) frame → reference; shape: (H, W) of the
    output. Returns the same layout on the output grid; pixels the frame does not cover (and a
    kernel's width inside its edge) are NaN.
    """
    border = (float("nan"),) * (image.shape[2] if image.ndim == 3 else 1)
    return cv2.warpAffine(image, matrix, (shape[1], shape[0]), flags=INTERPOLATION_FLAGS[interpolation],
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)
