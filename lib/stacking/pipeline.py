"""The pipeline proper (stack_files in runner.py decides which process runs it): raw FITS frames in,
one stacked colour image out.

    measure    every frame, in parallel: read, luminance straight from the mosaic, stars, sky
    grade      the session against itself: outliers out, the best frame becomes the reference
    register   every graded frame, in parallel: match stars, demosaic, warp, write into the cube
    normalise  sky offset and star-flux scale per frame and channel, inverse-variance weights
    combine    row block by row block, in parallel: reject outliers, weighted mean
    drizzle    only when asked (options.drizzle > 1): the raw frames again, band by band onto a finer
               grid, each drop checked against the combined stack (see drizzle.py)

File reading happens only here; the steps themselves are pure functions in the sibling modules. Worker
processes hold one frame (or one row block) at a time and the frames live in a disk-backed cube, so
memory does not grow with the number of frames.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from . import combine as combine_step
from . import drizzle as drizzle_step
from .cube import DiskArray
from .debayer import cfa_luminance, debayer
from .fitsio import FrameHeader, FrameReadError, FrameRow, exposure_end, format_date, read_frame, write_stack
from .grade import FrameMetrics, grade_frames, pick_reference
from .normalize import noise_weights, normalization, sky_level_and_noise, transparency
from .options import FrameVerdict, StackingError, StackOptions, StackResult
from .preview import encode_png, plan_rendering, render
from .register import Registration, RegistrationError, find_registration, warp
from .runner import Progress, releases_memory
from . import photometry
from .solve import celestial_wcs, hint_from_header, solve_luminance
from .stars import StarField, aperture_fluxes, detect_stars

log = logging.getLogger(__name__)

ADU_SCALE = np.float32(1 / 65535)    # the cube and the stack hold ADU/65535, as Siril does
SATURATION_ADU = 60000.0
CHUNK_OVERHEAD = 20 * 2**20          # combine's per-worker temporaries besides the block (CHUNK_ELEMENTS)
CV_TYPES = {"float16": cv2.CV_16F, "float32": cv2.CV_32F}
PROGRESS_MEASURED, PROGRESS_REGISTERED = 0.3, 0.75   # fractions of the run at the end of each stage
PROGRESS_COMBINED_BEFORE_DRIZZLE = 0.85

# ------------------------------------------------------------------------------- worker-side steps

@dataclass
class Measured:
    """Stage 1 of one frame: header and star field, or why it cannot be used."""

    index: int
    header: FrameHeader | None = None
    stars: StarField | None = None
    error: str | None = None


@dataclass
class Registered:
    """Stage 2 of one frame: where its stars went, its sky and star fluxes per channel (ADU)."""

    index: int
    registration: Registration | None = None
    sky: np.ndarray | None = None          # (3,)
    noise: np.ndarray | None = None        # (3,)
    fluxes: np.ndarray | None = None       # (m, 3) of the stars paired with the reference
    error: str | None = None


@releases_memory
def _measure(task: tuple[int, str, StackOptions]) -> Measured:
    index, path, options = task
    try:
        raw, header = read_frame(Path(path))
    except FrameReadError as exc:
        return Measured(index, error=str(exc))
    luminance = cfa_luminance(raw)
    del raw  # not needed to find stars: freed, it does not add to the detection's peak
    stars = detect_stars(luminance, detect_sigma=options.detect_sigma, max_stars=options.max_stars,
                         saturation=SATURATION_ADU)
    return Measured(index, header, stars)


@releases_memory
def _register(task) -> Registered:
    index, slot, path, frame_xy, frame_flux, ref_xy, is_reference, aperture, options, cube = task
    try:
        raw, header = read_frame(Path(path))
    except FrameReadError as exc:  # it was readable a moment ago; it may have been replaced since
        return Registered(index, error=str(exc))
    if is_reference:
        registration = Registration.identity(len(ref_xy))
    else:
        try:
            registration = find_registration(frame_xy, ref_xy, frame_flux, min_matches=options.min_matches,
                                             max_residual_px=options.max_residual_px,
                                             max_scale_error=options.max_scale_error)
        except RegistrationError as exc:
            return Registered(index, error=str(exc))
    paired = frame_xy[registration.frame_index]
    sky, noise, fluxes = np.empty(3), np.empty(3), np.empty((len(paired), 3))
    frames = cube.map(writable=True)
    for c, plane in enumerate(debayer(raw, header.pattern)):             # (H, W) float32 ADU each
        sky[c], noise[c] = sky_level_and_noise(plane)
        fluxes[:, c] = aperture_fluxes(plane, paired[:, 0], paired[:, 1], aperture)
        warped = plane if is_reference else warp(plane, registration.matrix, header.shape, options.interpolation)
        # scaled to ADU/65535 and converted to the cube's type in one pass, straight into the cube
        cv2.multiply(warped, float(ADU_SCALE), dst=frames[slot, c], dtype=CV_TYPES[options.cube_dtype])
    return Registered(index, registration, sky, noise, fluxes)


def _combine_rows(task) -> int:
    rows, slots, gain, offset, weights, options, cube, output, coverage = task
    count, width = len(slots), cube.shape[3]
    block = np.empty((count, 3, rows[1] - rows[0], width), np.float32)
    source = np.empty((rows[1] - rows[0], width), cube.dtype)
    with cube.open() as handle:
        for k, slot in enumerate(slots):  # frame by frame: no second, cube-typed copy of the block
            for c in range(3):  # gain · value + offset, converted to float32, in one pass (OpenCV: 5x numpy)
                cube.read_rows(handle, (slot, c), rows, source)
                cv2.addWeighted(source, float(gain[k, c]), source, 0.0, float(offset[k, c]), dst=block[k, c],
                                dtype=cv2.CV_32F)
    image = output.map(writable=True)
    rejected = 0
    for c in range(3):
        mean, dropped = combine_step.combine(
            block[:, c].reshape(count, -1), weights[:, c], rejection=options.rejection,
            sigma_low=options.sigma_low, sigma_high=options.sigma_high,
            percentile_low=options.percentile_low, percentile_high=options.percentile_high,
            max_iterations=options.max_clip_iterations)
        image[c, rows[0]:rows[1]] = np.nan_to_num(mean, nan=0.0).reshape(-1, width)
        rejected += dropped
    covered = coverage.map(writable=True)
    covered[rows[0]:rows[1]] = np.count_nonzero(~np.isnan(block[:, 1]), axis=0)
    return rejected


# ---------------------------------------------------------------------------------- orchestration

def run_pipeline(paths: list[Path], names: list[str], report: Progress, options: StackOptions, pool,
                 workdir: Path, workers: int) -> StackResult:
    """The pipeline proper. pool runs the per-frame and per-block steps (imap_unordered); workdir is
    scratch space for the frame cube and the output."""
    measured: list[Measured] = [Measured(i) for i in range(len(paths))]
    tasks = [(i, str(p), options) for i, p in enumerate(paths)]
    for done, result in enumerate(pool.imap_unordered(_measure, tasks), 1):
        measured[result.index] = result
        report(PROGRESS_MEASURED * done / len(paths), f"measured {done}/{len(paths)}")

    reasons, reference = _grade(measured, options)
    candidates = [i for i, reason in enumerate(reasons) if reason is None]
    if not candidates:
        raise StackingError(_nothing_usable(names, reasons))

    shape = measured[reference].header.shape
    cube = DiskArray.create(workdir / "frames.cube", options.cube_dtype, (len(candidates), 3, *shape))
    ref_xy = measured[reference].stars.xy
    fwhm = np.nanmedian([measured[i].stars.fwhm_px for i in candidates])
    aperture = float(np.clip(2.0 * fwhm, 3.0, 15.0)) if np.isfinite(fwhm) else 6.0
    tasks = [(i, slot, str(paths[i]), measured[i].stars.xy, measured[i].stars.flux, ref_xy, i == reference,
              aperture, options, cube) for slot, i in enumerate(candidates)]
    registered: dict[int, Registered] = {}
    for done, result in enumerate(pool.imap_unordered(_register, tasks), 1):
        registered[result.index] = result
        if result.error:
            reasons[result.index] = result.error
        report(PROGRESS_MEASURED + (PROGRESS_REGISTERED - PROGRESS_MEASURED) * done / len(tasks),
               f"registered {done}/{len(tasks)}")

    used = [i for i in candidates if reasons[i] is None]
    if reference not in used:  # it was read a moment ago; only a file replaced meanwhile gets here
        raise StackingError(f"the reference frame {names[reference]} could not be read again: {reasons[reference]}")
    slots = np.array([candidates.index(i) for i in used])
    gain, offset, weights = _normalise(used, reference, registered, options)

    output = DiskArray.create(workdir / "stack.f32", "float32", (3, *shape))
    coverage = DiskArray.create(workdir / "coverage.i16", "int16", shape)
    blocks = _row_blocks(shape, len(used), workers, options.mem_limit)
    tasks = [(rows, slots, gain, offset, weights, options, cube, output, coverage) for rows in blocks]
    rejected = 0
    combined = PROGRESS_COMBINED_BEFORE_DRIZZLE if options.drizzle > 1 else 1.0
    for done, dropped in enumerate(pool.imap_unordered(_combine_rows, tasks), 1):
        rejected += dropped
        report(PROGRESS_REGISTERED + (combined - PROGRESS_REGISTERED) * done / len(tasks),
               f"combined block {done}/{len(tasks)}")
    image, cover, drizzled = np.array(output.map()), np.array(coverage.map()), None
    if options.drizzle > 1:
        frames = [drizzle_step.DrizzleFrame(str(paths[i]), registered[i].registration.matrix, gain[k], offset[k],
                                            weights[k]) for k, i in enumerate(used)]
        image, cover, drizzled = _drizzle(image, cover, output, frames, measured[reference].header.pattern,
                                          options, pool, workdir, workers, report)
    pool.close()  # the workers' memory is no longer needed while the result is put together
    return _result(image, cover, names, measured, registered, reasons, used, reference, weights, rejected,
                   options, workdir, drizzled)


@dataclass
class Drizzled:
    """What the drizzle step did: raw pixels dropped and rejected, share of fine pixels per colour
    that no drop reached."""

    dropped: int
    rejected: int
    holes: np.ndarray    # (3,) fractions


def _drizzle(stack, cover, stack_file: DiskArray, frames, pattern: str, options: StackOptions, pool,
             workdir: Path, workers: int, report: Progress) -> tuple[np.ndarray, np.ndarray, Drizzled]:
    """The (3, f·H, f·W) drizzled image, its (f·H, f·W) coverage and what it did, from the combined
    (3, H, W) stack (also in stack_file, which the workers map) and the used frames."""
    factor = options.drizzle
    bounds = DiskArray.create(workdir / "envelope.f32", "float32", (2, *stack.shape))
    bounds.map(writable=True)[:] = drizzle_step.envelope(stack)
    covered = cover > 0
    sky = np.array([np.median(plane[covered][::7]) if covered.any() else 0.0 for plane in stack], np.float32)
    fine_shape = (stack.shape[1] * factor, stack.shape[2] * factor)
    fine = DiskArray.create(workdir / "drizzle.f32", "float32", (3, *fine_shape))
    clip = options.rejection != "none"
    low, high = (options.sigma_low, options.sigma_high) if clip else (np.inf, np.inf)
    tasks = [(rows, frames, pattern, factor, options.pixfrac, low, high, stack_file, bounds, sky, fine)
             for rows in drizzle_step.band_rows(fine_shape, workers, options.mem_limit)]
    dropped = rejected = 0
    holes = np.zeros(3)
    for done, counts in enumerate(pool.imap_unordered(drizzle_step.drizzle_band, tasks), 1):
        dropped, rejected, holes = dropped + counts.dropped, rejected + counts.rejected, holes + counts.holes
        report(PROGRESS_COMBINED_BEFORE_DRIZZLE + (1 - PROGRESS_COMBINED_BEFORE_DRIZZLE) * done / len(tasks),
               f"drizzled band {done}/{len(tasks)}")
    # a fine pixel lies on the frames that cover the reference pixel it is part of
    fine_cover = np.repeat(np.repeat(cover, factor, axis=0), factor, axis=1)
    # read, not mapped and copied: the mapped pages would add the image's size again to this process
    image = np.fromfile(fine.path, dtype=np.float32).reshape(fine.shape)
    return image, fine_cover, Drizzled(dropped, rejected, holes / (fine_shape[0] * fine_shape[1]))


def _grade(measured: list[Measured], options: StackOptions) -> tuple[list[str | None], int]:
    """Reasons (None = fine so far) for every frame, and the reference frame's index.

    Frames must agree on shape and Bayer pattern with the majority; those with too few stars to
    register are out before grading so that they do not drag the session's medians down.
    """
    reasons: list[str | None] = [m.error for m in measured]
    readable = [m for m in measured if m.error is None]
    if not readable:
        return reasons, -1
    layouts = [(m.header.shape, m.header.pattern) for m in readable]
    shape, pattern = max(set(layouts), key=lambda layout: (layouts.count(layout), -layouts.index(layout)))
    for m in readable:
        if m.header.shape != shape:
            reasons[m.index] = f"frame is {m.header.shape[1]}x{m.header.shape[0]}, the session's frames are " \
                               f"{shape[1]}x{shape[0]}"
        elif m.header.pattern != pattern:
            reasons[m.index] = f"Bayer pattern {m.header.pattern} differs from the session's {pattern}"
        elif m.stars.count < options.min_stars:
            reasons[m.index] = f"too few stars to register: {m.stars.count} detected (need {options.min_stars})"
    graded = [m.index for m in readable if reasons[m.index] is None]
    if not graded:
        return reasons, -1
    metrics = [FrameMetrics(measured[i].stars.count, measured[i].stars.fwhm_px, measured[i].stars.elongation,
                            measured[i].stars.background, measured[i].stars.noise) for i in graded]
    if options.grading:
        for i, reason in zip(graded, grade_frames(metrics, options.grade_k)):
            reasons[i] = reason
    passed = [k for k, i in enumerate(graded) if reasons[i] is None]
    if not passed:
        return reasons, -1
    return reasons, graded[pick_reference(metrics, passed)]


def _normalise(used: list[int], reference: int, registered: dict[int, Registered],
               options: StackOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(M, 3) gain, offset (in the cube's ADU/65535) and weight of each used frame."""
    ref = registered[reference]
    gains, offsets, noises = [], [], []
    for i in used:
        r = registered[i]
        ratio = transparency(r.fluxes, ref.fluxes[r.registration.ref_index])
        gain, offset = normalization(options.normalization, r.sky, r.noise, ratio, ref.sky, ref.noise)
        gains.append(gain)
        offsets.append(offset * ADU_SCALE)
        noises.append(r.noise)
    gain, offset, noise = np.array(gains), np.array(offsets), np.array(noises)
    if options.weighting == "noise":
        weights = noise_weights(noise, gain)
    else:
        weights = np.ones_like(gain, dtype=np.float32)
    return gain.astype(np.float32), offset.astype(np.float32), weights


def _row_blocks(shape: tuple[int, int], frames: int, workers: int, mem_limit: int) -> list[tuple[int, int]]:
    """Row ranges sized so that all workers' blocks together stay within mem_limit bytes.

    A block costs frames × 3 × rows × W float32 values plus CHUNK_OVERHEAD of temporaries per worker;
    there are at least 2 blocks per worker so that nobody idles at the end.
    """
    height, width = shape
    per_worker = max(mem_limit // workers - CHUNK_OVERHEAD, 2**20)
    rows = max(1, per_worker // (frames * 3 * width * 4))
    rows = min(rows, max(1, -(-height // (2 * workers))))
    return [(start, min(start + rows, height)) for start in range(0, height, rows)]


def _nothing_usable(names: list[str], reasons: list[str | None]) -> str:
    listed = "; ".join(f"{name}: {reason}" for name, reason in zip(names, reasons))
    return f"no frame could be used ({len(names)} given): {listed}"


def _result(image, cover, names, measured, registered, reasons, used, reference, weights, rejected,
            options, workdir: Path, drizzled: Drizzled | None = None) -> StackResult:
    weight_of = {i: float(weights[k].mean()) for k, i in enumerate(used)}
    verdicts, rows = [], []
    for i, name in enumerate(names):
        m, r = measured[i], registered.get(i)
        stars = m.stars
        residual = r.registration.residual_px if r is not None and r.registration is not None else None
        verdicts.append(FrameVerdict(
            name=name, used=i in weight_of, reason=reasons[i],
            fwhm_px=_finite(stars.fwhm_px) if stars else None, stars=stars.count if stars else None,
            background=stars.background if stars else None, noise=stars.noise if stars else None,
            residual_px=residual, weight=weight_of.get(i)))
        rows.append(FrameRow(name, i in weight_of, reasons[i],
                             format_date(m.header.date_obs) if m.header else None,
                             m.header.exptime if m.header else None, verdicts[-1].fwhm_px,
                             verdicts[-1].stars, verdicts[-1].background, verdicts[-1].noise, residual,
                             weight_of.get(i)))

    headers = [measured[i].header for i in used]
    start = min(h.date_obs for h in headers)
    end = max(exposure_end(h.date_obs, h.exptime) for h in headers)
    # measured like the frames: 0.25 R + 0.5 G + 0.25 B through the same 3x3 kernel, in ADU, so that
    # the stack's noise and FWHM compare directly with each frame's
    luminance = cfa_luminance((image[0] + 2 * image[1] + image[2]) * np.float32(0.25 / ADU_SCALE))
    found = detect_stars(luminance, detect_sigma=options.detect_sigma, max_stars=options.max_stars,
                         saturation=np.inf)
    star_fluxes = np.column_stack([aperture_fluxes(plane, found.x[:50], found.y[:50], 6.0) for plane in image])
    reference_header = measured[reference].header
    exptime_total = float(sum(h.exptime for h in headers))
    date_beg, date_end = format_date(start), format_date(end)
    history = [f"CrowdSky stack of {len(used)} of {len(names)} frames",
               f"registration: star triangles + similarity fit, {options.interpolation} warp onto {names[reference]}",
               f"normalisation: {options.normalization}; weights: {options.weighting}",
               f"rejection: {options.rejection} (low {options.sigma_low}, high {options.sigma_high}), "
               f"{rejected} values rejected",
               *[f"frame used: {names[i]}" for i in used]]
    factor = options.drizzle if drizzled is not None else 1
    written_header = reference_header
    if drizzled is not None:
        history[4:4] = [f"Bayer drizzle x{factor}, pixfrac {options.pixfrac}, square kernel",
                        f"drizzle: {drizzled.rejected} of {drizzled.dropped + drizzled.rejected} raw px rejected",
                        "drizzle: px no drop reached (R, G, B): " + ", ".join(f"{100 * h:.1f} %"
                                                                              for h in drizzled.holes)]
        # the pixel size the plate scale is computed from (206.265 XPIXSZ / FOCALLEN) is the fine grid's
        carried = tuple((key, value / factor, "[um] effective pixel size after drizzle")
                        if key in ("XPIXSZ", "YPIXSZ") and isinstance(value, (int, float)) else (key, value, comment)
                        for key, value, comment in reference_header.carried)
        written_header = replace(reference_header, carried=(
            *carried,
            ("DRIZZLE", factor, "Bayer drizzle: output grid factor x finer"),
            ("PIXFRAC", options.pixfrac, "drizzle drop side, fraction of a raw pixel")))
    # the files are rendered here, where the libraries are loaded, so that the caller needs none of them;
    # the preview in a thread (numpy and OpenCV let go of the GIL) while the plate solver (a child
    # process) runs and astropy writes the FITS; the rendering's factors are measured first (a few tens
    # of ms) so that the FITS header records them
    rendering = plan_rendering(image, cover, star_fluxes)
    with ThreadPoolExecutor(1) as threads:
        png = threads.submit(lambda: encode_png(render(image, rendering)))
        solution = None
        if options.plate_solve:
            hint = hint_from_header({key: value for key, value, _ in reference_header.carried})
            if hint is not None and hint.scale_arcsec:  # a drizzled stack's pixels are factor x finer
                hint = replace(hint, scale_arcsec=hint.scale_arcsec / factor)
            # in the stack's scratch folder: removed with it, even after a crash (see runner.py)
            solution = solve_luminance(luminance, hint, time_limit=options.solve_time_limit, tmp_dir=str(workdir))
        measured_photometry = _photometry(image, cover, solution, reference_header.exptime)
        fits_file = io.BytesIO()
        write_stack(fits_file, image, cover, reference=written_header, reference_name=names[reference],
                    ncombine=len(used), exptime_total=exptime_total, date_beg=date_beg, date_end=date_end,
                    frames=rows, history=history, extra_cards=rendering.header_cards() + _temperature_card(headers),
                    solution=solution, photometry=measured_photometry)
        png_bytes = png.result()
    return StackResult(
        frames=verdicts, ncombine=len(used), exptime_total=exptime_total,
        date_beg=date_beg, date_end=date_end, object=_text(reference_header.value("OBJECT")),
        instrument=_text(reference_header.value("INSTRUME")), reference_name=names[reference],
        noise=found.noise, fwhm_px=found.fwhm_px, stars=found.count,
        fits_bytes=fits_file.getvalue(), png_bytes=png_bytes,
        plate_solved=bool(solution and solution.solved), solve_reason=solution.reason if solution else "not tried",
        solve_seconds=solution.seconds if solution else 0.0,
        drizzle=factor, drizzle_holes=float(drizzled.holes.mean()) if drizzled is not None else 0.0)


def _photometry(image: np.ndarray, cover: np.ndarray, solution, exposure_s: float):
    """The stack's photometry (lib/stacking/photometry.py) on its green plane, calibrated on the Tycho-2
    stars its WCS places; None when it is not plate solved or no catalogue is installed."""
    if solution is None or not solution.solved:
        return None
    wcs = celestial_wcs(solution.wcs)
    catalogue = photometry.field_catalogue(wcs, image.shape[2], image.shape[1])
    if catalogue is None:
        return None
    try:
        return photometry.measure(image[1] / ADU_SCALE, wcs, exposure_s, coverage=cover, catalogue=catalogue)
    except Exception as exc:   # the numbers are a description of the stack: never a reason to lose it
        log.warning("photometry not measured: %s: %s", type(exc).__name__, exc)
        return None


def _temperature_card(headers: list[FrameHeader]) -> list[tuple[str, object, str]]:
    """CCD-TEMP of the stack: the median sensor temperature of the combined frames (none if unknown)."""
    temperatures = [h.temperature for h in headers if h.temperature is not None]
    if not temperatures:
        return []
    return [("CCD-TEMP", round(float(np.median(temperatures)), 2), "[C] median sensor temperature of the frames")]


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _text(value: object | None) -> str | None:
    return None if value is None else str(value).strip()
