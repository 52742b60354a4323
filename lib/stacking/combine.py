"""Pixel combination: reject outliers in each pixel's stack of values, then take the weighted mean.

The functions work on a block of pixel stacks: an (N, P) float32 array holding N frames' values of P
pixels (one colour channel), NaN where a frame does not cover the pixel.

Each pixel's stack is sorted once (`sort_frames`: a sorting network on whole rows for up to 32 frames,
numpy's sort beyond). From then on every rejection rule keeps a contiguous run of the
sorted values, [low, high), so an iteration only moves two indices per pixel; sums over any run come
from prefix sums. The result of a rejection rule is a pair of per-pixel value limits, and the mean is
taken over the values of the unsorted stack that lie within them (that is where the frame weights go).

Winsorized sigma clipping (the default, as in Siril and PixInsight): the spread is estimated with the
tails pulled in to median ± 1.5σ, iterated until σ settles, so a satellite trail or a hot pixel cannot
inflate the very σ that is supposed to reject it. Most pixels of a stack are sky with nothing to
reject; a cheap bound recognises most of them before their winsorized σ is iterated (first on whole
rows of the sorted block, `whole_stacks_kept`, then in each later pass, `winsorized_keeps_all`), which
halves the time of the whole step without changing its result.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MIN_VALUES_TO_CLIP = 3            # below this a pixel's stack has no meaningful centre and spread
WINSOR_LIMIT = 1.5                # tails are pulled in to median ± 1.5 σ ...
WINSOR_CORRECTION = 1.134         # ... which shrinks a Gaussian's σ by this factor
WINSOR_TOLERANCE = 5e-4           # relative change of σ at which the iteration has settled (Siril's)
WINSOR_MAX_STEPS = 50             # most pixels settle in one or two steps
EDGE_MARGIN = 1e-6                # relative step past the σ where the clamped set changes (float32 data)
BOUND_MARGIN = 1e-5               # relative safety of the keeps-everything bound, per 100 frames
SORTING_NETWORK_MAX = 32          # up to this many frames a sorting network beats numpy's per-pixel sort
CHUNK_ELEMENTS = 2**19            # values handled at once: ~20 MB of temporaries, few enough calls


def count_true(mask: np.ndarray) -> np.ndarray:
    """(P,) number of True values in each column of an (N, P) bool mask (N < 65536)."""
    # summing the bytes is several times faster than count_nonzero along the first axis
    return mask.view(np.uint8).sum(axis=0, dtype=np.uint16).astype(np.intp)


@dataclass
class SortedStack:
    """A block sorted along the frame axis, with what every rejection rule needs.

    values: (N, P) float32 sorted, NaN last; counts: (P,) number of non-NaN values;
    deviation: (N, P) float32 values minus `origin` (a rough centre, for precision);
    first, second: (N + 1, P) float32 prefix sums of deviation and deviation² (row k = sum of rows < k).
    float32 suffices: a run's sums are differences of prefix sums, and what precedes a run are its
    own smaller values, which (non-negative data, deviations from the median) are never far below it.
    """

    values: np.ndarray
    counts: np.ndarray
    origin: np.ndarray
    deviation: np.ndarray
    first: np.ndarray
    second: np.ndarray

    def take(self, array: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """array[rows[i], columns[i]] for an (N or N+1, P) array of this block."""
        return np.take(array.reshape(-1), rows * array.shape[1] + columns)


@functools.cache
def merge_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for n inputs (Knuth, TAOCP 3, 5.3.4): the compare-exchange pairs
    (i, j), i < j, that sort any n values when applied in order (19 pairs for 8, 191 for 32)."""
    pairs = []
    span = 1
    while span < n:
        step = span
        while step >= 1:
            for start in range(step % span, n - step, 2 * step):
                for i in range(start, min(start + step, n - step)):
                    if i // (2 * span) == (i + step) // (2 * span):
                        pairs.append((i, i + step))
            step //= 2
        span *= 2
    return tuple(pairs)


def sort_frames(stack: np.ndarray) -> np.ndarray:
    """Each pixel's values sorted: (N, P) float32 with NaN → a sorted copy, NaN last.

    numpy sorts one short column at a time; for up to SORTING_NETWORK_MAX frames a sorting network
    applied to whole rows (a minimum and a maximum of two rows per pair, for all pixels at once) is
    2-5x faster. Missing values travel through it as +inf (no frame value is infinite).
    """
    if len(stack) > SORTING_NETWORK_MAX:
        return np.sort(stack, axis=0)
    missing = np.isnan(stack)
    has_missing = bool(missing.any())
    values = np.where(missing, np.float32(np.inf), stack) if has_missing else stack.copy()
    smaller = np.empty_like(values[0])
    for i, j in merge_network(len(values)):
        np.minimum(values[i], values[j], out=smaller)
        np.maximum(values[i], values[j], out=values[j])
        values[i] = smaller
    if has_missing:
        values[values == np.inf] = np.nan
    return values


def sort_stack(stack: np.ndarray) -> SortedStack:
    """Sort a block (N, P) float32 with NaN, and precompute counts and prefix sums."""
    return sorted_stack(sort_frames(stack))


def sorted_stack(values: np.ndarray) -> SortedStack:
    """The SortedStack of a block already sorted along axis 0 (NaN last)."""
    n_frames = len(values)
    if np.isnan(values[-1]).any():  # only then are some stacks short
        counts = count_true(~np.isnan(values))
    else:
        counts = np.full(values.shape[1], n_frames, np.intp)
    origin = values[(np.maximum(counts, 1) - 1) // 2, np.arange(values.shape[1])]
    deviation = values - origin  # NaN (missing) stays NaN: it is never below or above any limit
    first = np.zeros((n_frames + 1, values.shape[1]), np.float32)
    second = np.zeros_like(first)
    squared = np.square(deviation)
    for k in range(n_frames):  # rows past a column's count turn NaN, and are never read
        np.add(first[k], deviation[k], out=first[k + 1])
        np.add(second[k], squared[k], out=second[k + 1])
    return SortedStack(values, counts, origin, deviation, first, second)


def range_quantile(block: SortedStack, columns: np.ndarray, low: np.ndarray, high: np.ndarray,
                   fraction: float) -> np.ndarray:
    """(p,) float64 interpolated quantile of the deviations in [low, high) of the given columns."""
    position = low + fraction * (high - low - 1)
    below = position.astype(np.intp)
    above = np.minimum(below + 1, high - 1)
    a = block.take(block.deviation, below, columns).astype(np.float64)
    b = block.take(block.deviation, above, columns).astype(np.float64)
    return a + (position - below) * (b - a)


def range_sums(block: SortedStack, columns: np.ndarray, low: np.ndarray, high: np.ndarray):
    """Sum and sum of squares (float64) of the deviations in [low, high) of the given columns."""
    return (block.take(block.first, high, columns) - block.take(block.first, low, columns),
            block.take(block.second, high, columns) - block.take(block.second, low, columns))


def count_below(deviation: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Per column of sorted (N, p) deviations: how many are < limit (p,), i.e. the first index ≥ limit."""
    return count_true(deviation < limit.astype(np.float32))


def count_up_to(deviation: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Per column of sorted (N, p) deviations: how many are ≤ limit (p,)."""
    return count_true(deviation <= limit.astype(np.float32))


def plain_sigma(block: SortedStack, deviation: np.ndarray, columns: np.ndarray, low: np.ndarray,
                high: np.ndarray, center: np.ndarray) -> np.ndarray:
    """(p,) float64 standard deviation of the values in [low, high) of each of `columns`
    (the other arguments are those of `winsorized_sigma`)."""
    total, total_sq = range_sums(block, columns, low, high)
    m = high - low
    return np.sqrt(np.maximum(total_sq / m - (total / m) ** 2, 0.0))


def clamped_variance(block: SortedStack, deviation: np.ndarray, columns: np.ndarray, low: np.ndarray,
                     high: np.ndarray, center: np.ndarray, beta: np.ndarray):
    """Variance of the values in [low, high) of each of `columns` once clamped to center ± beta.

    Arguments as for `winsorized_sigma`, beta (p,) > 0. Returns the clamped run, first_inside and
    past_inside (p,), and the coefficients a0, a1, a2 (p,) float64 of the variance as a function of the
    clamp: a0 + a1·β + a2·β², which holds for every β that clamps the same values.
    """
    n = (high - low).astype(np.float64)
    first_inside = np.clip(count_below(deviation, center - beta), low, high)
    past_inside = np.clip(count_up_to(deviation, center + beta), low, high)
    inner, inner_sq = range_sums(block, columns, first_inside, past_inside)
    # k_low values sit at c - β and k_high at c + β
    both = (first_inside - low + high - past_inside).astype(np.float64)
    skew = (high - past_inside - first_inside + low).astype(np.float64)
    u, v = both * center + inner, both * center ** 2 + inner_sq
    a0 = np.maximum(v / n - (u / n) ** 2, 0.0)
    a1 = 2 * skew * (center / n - u / n ** 2)
    a2 = both / n - (skew / n) ** 2
    return first_inside, past_inside, a0, a1, a2


def winsorized_step(a0: np.ndarray, a1: np.ndarray, a2: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """One step of the winsorized iteration: 1.134 · std of the values clamped to ± beta = 1.5σ."""
    return WINSOR_CORRECTION * np.sqrt(np.maximum(a0 + a1 * beta + a2 * beta ** 2, 0.0))


def winsorized_sigma(block: SortedStack, deviation: np.ndarray, columns: np.ndarray, low: np.ndarray,
                     high: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Winsorized standard deviation of the values in [low, high) of each of `columns`.

    block: the sorted block; deviation: its deviation rows for `columns` only, (N, p); low, high and
    center (deviation units): (p,). Returns (p,) float64: the σ that iterating
    σ ← 1.134 · std(values clamped to center ± 1.5σ) from the standard deviation settles on (Siril's
    procedure). While the set of clamped values stays the same, that map is the square root of a
    quadratic in σ: when its fixed point lies where the clamping holds it is taken directly, and when
    it does not, σ moves at least to where the clamping changes, so a few steps reach the same limit
    as the plain iteration.
    """
    sigma = plain_sigma(block, deviation, columns, low, high, center)
    result = sigma.copy()
    todo = np.arange(len(columns))
    kappa2 = WINSOR_CORRECTION ** 2
    for _ in range(WINSOR_MAX_STEPS):
        lo, hi, c, col = low[todo], high[todo], center[todo], columns[todo]
        beta = WINSOR_LIMIT * sigma
        first_inside, past_inside, a0, a1, a2 = clamped_variance(block, deviation, col, lo, hi, c, beta)
        step = winsorized_step(a0, a1, a2, beta)
        # fixed point of this clamping: (1 - 2.25κ²a2)σ² - 1.5κ²a1·σ - κ²a0 = 0, positive root
        qa = 1 - WINSOR_LIMIT ** 2 * kappa2 * a2
        qb = -WINSOR_LIMIT * kappa2 * a1
        root = (-qb + np.sqrt(np.maximum(qb * qb + 4 * qa * kappa2 * a0, 0.0))) / (2 * np.where(qa > 0, qa, 1.0))
        # the clamping holds while 1.5σ covers every value inside and none outside
        reach = np.maximum(c - block.take(block.deviation, np.minimum(first_inside, past_inside - 1), col),
                           block.take(block.deviation, np.maximum(past_inside - 1, first_inside), col) - c)
        reach = np.where(past_inside > first_inside, reach, 0.0)
        below_out = np.where(first_inside > lo, c - block.take(block.deviation, np.maximum(first_inside - 1, 0), col),
                             np.inf)
        last_row = len(block.values) - 1
        above_out = np.where(past_inside < hi,
                             block.take(block.deviation, np.minimum(past_inside, last_row), col) - c, np.inf)
        lower_edge = reach / WINSOR_LIMIT * (1 - EDGE_MARGIN)        # below it one more value is clamped
        upper_edge = np.minimum(below_out, above_out) / WINSOR_LIMIT  # from it one fewer value is
        exact = (qa > 0) & (root >= lower_edge) & (root < upper_edge)
        # with no fixed point under this clamping, the iteration is bound to leave it: skip to its edge
        walk = np.where(step < sigma, np.minimum(step, lower_edge), np.maximum(step, upper_edge))
        new_sigma = np.where(exact, root, np.where(qa > 0, walk, step))
        settled = exact | (np.abs(step - sigma) <= WINSOR_TOLERANCE * sigma)
        new_sigma = np.where(settled & ~exact, step, new_sigma)
        result[todo] = new_sigma
        if settled.all():
            break
        going_on = np.flatnonzero(~settled)
        todo, sigma = todo[going_on], new_sigma[going_on]
        deviation = np.take(deviation, going_on, axis=1)
    return result


def whole_stacks_kept(values: np.ndarray, sigma_low: float, sigma_high: float) -> np.ndarray:
    """(P,) True for the pixels whose first winsorized pass certainly keeps every value, decided on
    whole rows of the sorted block (N, P) float32, before any prefix sum is built.

    The same bound as `winsorized_keeps_all`, for stacks that no frame is missing from (a stack with
    NaN gives False): median, standard deviation and the clamped spread come from row operations,
    which is what makes this the cheap first look at every pixel.
    """
    n_frames = len(values)
    if n_frames < MIN_VALUES_TO_CLIP:
        return np.zeros(values.shape[1], bool)
    origin = values[(n_frames - 1) // 2]
    deviation = values - origin
    center = 0.5 * (deviation[(n_frames - 1) // 2].astype(np.float64) + deviation[n_frames // 2])
    spread = _std(deviation)
    needed = _sigma_keeping_all(center, deviation[0], deviation[-1], sigma_low, sigma_high, n_frames)
    beta = WINSOR_LIMIT * needed
    clamped = np.minimum(np.maximum(deviation, (center - beta).astype(np.float32)), (center + beta).astype(np.float32))
    with np.errstate(invalid="ignore"):  # NaN in a column: its comparisons are False
        return (needed <= spread) & (WINSOR_CORRECTION * _std(clamped) >= needed)


def _sigma_keeping_all(center: np.ndarray, lowest: np.ndarray, highest: np.ndarray, sigma_low: float,
                       sigma_high: float, n_frames: int) -> np.ndarray:
    """(p,) float64 the smallest σ whose limits, center - sigma_low·σ and center + sigma_high·σ, hold
    every value from lowest to highest; a little wider, as the bound must not promise what rounding may
    take back: sums of n float32 values (σ here and in the full procedure) are good to about n·2⁻²⁴
    relative, and the limits are compared in float32."""
    needed = np.maximum((center - lowest) / sigma_low, (highest - center) / sigma_high)
    return needed * (1 + BOUND_MARGIN * (1 + n_frames / 100))


def _std(rows: np.ndarray) -> np.ndarray:
    """(P,) float64 population standard deviation of each column of an (N, P) float32 array whose
    values lie around 0 (deviations from the median), summed in float32."""
    n = len(rows)
    total = rows.sum(axis=0).astype(np.float64)
    squares = np.square(rows).sum(axis=0).astype(np.float64)
    return np.sqrt(np.maximum(squares / n - (total / n) ** 2, 0.0))


def winsorized_keeps_all(block: SortedStack, deviation: np.ndarray, columns: np.ndarray, low: np.ndarray,
                         high: np.ndarray, center: np.ndarray, sigma_low: float, sigma_high: float) -> np.ndarray:
    """(p,) True where a winsorized clipping pass over [low, high) certainly keeps every value, so the
    pixel is finished without its winsorized σ being computed. Arguments as for `winsorized_sigma`.

    With g(σ) = 1.134 · std(values clamped to center ± 1.5σ), which never decreases as σ grows (a wider
    clamp only spreads the values further), the iteration σ ← g(σ) from the standard deviation s0
    cannot end below any s ≤ s0 with g(s) ≥ s: every step from above s lands at g(·) ≥ g(s) ≥ s.
    Taking for s the smallest σ whose limits hold every value, a pixel with s ≤ s0 and g(s) ≥ s keeps
    all its values. On sky, where nothing is an outlier, that is most pixels.
    """
    spread = plain_sigma(block, deviation, columns, low, high, center)
    lowest = block.take(block.deviation, low, columns).astype(np.float64)
    highest = block.take(block.deviation, high - 1, columns).astype(np.float64)
    needed = _sigma_keeping_all(center, lowest, highest, sigma_low, sigma_high, len(block.values))
    beta = WINSOR_LIMIT * np.maximum(needed, np.finfo(np.float64).tiny)
    *_, a0, a1, a2 = clamped_variance(block, deviation, columns, low, high, center, beta)
    return (needed <= spread) & (winsorized_step(a0, a1, a2, beta) >= needed)


def clip_ranges(block: SortedStack, spread, sigma_low: float, sigma_high: float, max_iterations: int,
                keeps_all=None) -> tuple[np.ndarray, np.ndarray]:
    """Iterative sigma clipping on a sorted block.

    Each pass takes, for every pixel still being clipped, the median of its kept run and
    σ = spread(...), then keeps only values within [median - sigma_low·σ, median + sigma_high·σ].
    Pixels stop when a pass keeps everything or fewer than 3 values remain. keeps_all(..., sigma_low,
    sigma_high), called like spread from the second pass on, may tell beforehand which pixels a pass
    would leave as they are: those stop without their σ being computed (which pixels the first pass
    needs is the caller's to settle: winsorized_limits does it on whole rows).
    Returns (low, high): (P,) the kept run of each pixel's sorted values.
    """
    low = np.zeros_like(block.counts)
    high = block.counts.copy()
    columns = np.flatnonzero(block.counts >= MIN_VALUES_TO_CLIP)
    deviation = block.deviation if len(columns) == len(high) else np.take(block.deviation, columns, axis=1)
    for iteration in range(max_iterations):
        if len(columns) == 0:
            break
        lo, hi = low[columns], high[columns]
        center = range_quantile(block, columns, lo, hi, 0.5)
        if keeps_all is not None and iteration > 0:
            unsure = np.flatnonzero(~keeps_all(block, deviation, columns, lo, hi, center, sigma_low, sigma_high))
            columns, lo, hi, center = columns[unsure], lo[unsure], hi[unsure], center[unsure]
            deviation = np.take(deviation, unsure, axis=1)
        sigma = spread(block, deviation, columns, lo, hi, center)
        new_lo = np.clip(count_below(deviation, center - sigma_low * sigma), lo, hi)
        new_hi = np.clip(count_up_to(deviation, center + sigma_high * sigma), lo, hi)
        low[columns], high[columns] = new_lo, new_hi
        going_on = ((new_lo != lo) | (new_hi != hi)) & (new_hi - new_lo >= MIN_VALUES_TO_CLIP)
        columns = columns[going_on]
        deviation = np.take(deviation, np.flatnonzero(going_on), axis=1)
    return low, high


def range_limits(block: SortedStack, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P,) value limits of each pixel's kept run (NaN for an empty stack: nothing is within)."""
    columns = np.arange(len(low))
    lowest = block.take(block.values, np.minimum(low, len(block.values) - 1), columns)
    highest = block.take(block.values, np.maximum(high - 1, 0), columns)
    empty = high <= low
    lowest[empty] = np.nan
    highest[empty] = np.nan
    return lowest, highest


def winsorized_limits(stack: np.ndarray, sigma_low: float = 3.0, sigma_high: float = 3.0,
                      max_iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Winsorized sigma clipping. stack: (N, P) float32 with NaN. Returns (P,) low and high limits."""
    values = sort_frames(stack)
    lowest, highest = values[0].copy(), values[-1].copy()   # a stack kept whole: its extremes
    unsure = np.flatnonzero(~whole_stacks_kept(values, sigma_low, sigma_high))
    block = sorted_stack(np.take(values, unsure, axis=1))
    lowest[unsure], highest[unsure] = range_limits(
        block, *clip_ranges(block, winsorized_sigma, sigma_low, sigma_high, max_iterations, winsorized_keeps_all))
    return lowest, highest


def sigma_limits(stack: np.ndarray, sigma_low: float = 3.0, sigma_high: float = 3.0,
                 max_iterations: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Plain iterative sigma clipping about the median, σ = standard deviation of the kept values.
    stack: (N, P) float32 with NaN. Returns (P,) low and high limits."""
    block = sort_stack(stack)
    return range_limits(block, *clip_ranges(block, plain_sigma, sigma_low, sigma_high, max_iterations))


def percentile_limits(stack: np.ndarray, low: float = 0.2, high: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Percentile clipping (one pass): keep values from (1 - low)·median to (1 + high)·median, for
    small stacks where σ means little. stack: (N, P) float32 with NaN. Returns (P,) limits."""
    block = sort_stack(stack)
    columns = np.arange(stack.shape[1])
    median = block.origin + range_quantile(block, columns, np.zeros_like(block.counts),
                                           np.maximum(block.counts, 1), 0.5)
    magnitude = np.abs(median)
    short = block.counts < MIN_VALUES_TO_CLIP
    return (np.where(short, -np.inf, median - low * magnitude).astype(np.float32),
            np.where(short, np.inf, median + high * magnitude).astype(np.float32))


def no_limits(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep every value that is there. Returns (P,) limits -inf, +inf."""
    return np.full(stack.shape[1], -np.inf, np.float32), np.full(stack.shape[1], np.inf, np.float32)


def weighted_mean(stack: np.ndarray, lowest: np.ndarray, highest: np.ndarray,
                  weights: np.ndarray) -> tuple[np.ndarray, int]:
    """Weighted mean of the values of each pixel stack within [lowest, highest].

    stack: (N, P) float32 with NaN (never within any limits); lowest, highest: (P,); weights: (N,) float32.
    Returns ((P,) float32 mean, NaN where nothing is kept; number of present values left out).
    """
    keep = (stack >= lowest) & (stack <= highest)
    total = np.einsum("n,np->p", weights, np.where(keep, stack, np.float32(0)))
    weight_sum = np.einsum("n,np->p", weights, keep.astype(np.float32))
    rejected = int(np.count_nonzero(~np.isnan(stack))) - int(np.count_nonzero(keep))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / weight_sum).astype(np.float32), rejected


def combine(stack: np.ndarray, weights: np.ndarray, *, rejection: str = "winsorized",
            sigma_low: float = 3.0, sigma_high: float = 3.0, percentile_low: float = 0.2,
            percentile_high: float = 0.1, max_iterations: int = 5) -> tuple[np.ndarray, int]:
    """Reject, then average, a block of pixel stacks.

    stack: (N, P) float32, normalised, NaN where a frame does not cover a pixel; weights: (N,) float32.
    Returns (mean (P,) float32, NaN where no frame covers; number of values present but rejected).
    The block is worked through in cache-sized column chunks.
    """
    n_frames, n_pixels = stack.shape
    mean = np.empty(n_pixels, np.float32)
    rejected = 0
    # An odd chunk width: with a power-of-two row stride every frame's row of a chunk falls in the same
    # cache sets, which makes sorting along the frame axis three times slower.
    width = (CHUNK_ELEMENTS // n_frames) | 1
    for start in range(0, n_pixels, width):
        part = np.ascontiguousarray(stack[:, start:start + width])
        if rejection == "winsorized":
            limits = winsorized_limits(part, sigma_low, sigma_high, max_iterations)
        elif rejection == "sigma":
            limits = sigma_limits(part, sigma_low, sigma_high, max_iterations)
        elif rejection == "percentile":
            limits = percentile_limits(part, percentile_low, percentile_high)
        elif rejection == "none":
            limits = no_limits(part)
        else:
            raise ValueError(f"unknown rejection {rejection!r}")
        mean[start:start + width], dropped = weighted_mean(part, *limits, weights)
        rejected += dropped
    return mean, rejected
