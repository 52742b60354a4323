"""Normalisation: put every frame on the reference frame's sky level and brightness scale, per channel,
so that pixel rejection compares like with like and the noise weights mean something.

    normalised = (frame - sky_frame) / transparency + sky_reference  =  gain · frame + offset

sky is a robust level (median) of each channel; transparency is the median ratio of paired stars'
fluxes, frame over reference, per channel: a frame shot through thin cloud has its stars scaled up
(and its noise with them), which is what then lowers its inverse-variance weight.
"""
from __future__ import annotations

import numpy as np

MAD_TO_SIGMA = 1.4826
SKY_SAMPLE_STRIDE = 8       # every 8th pixel both ways: 32 000 samples of a Seestar frame, plenty
MIN_FLUX_PAIRS = 3          # fewer usable star pairs than this and the scale falls back to the noise ratio


def sky_level_and_noise(plane: np.ndarray) -> tuple[float, float]:
    """Robust sky statistics of one colour plane.

    plane: (H, W) float ADU (NaN ignored). Returns (median, 1.4826·MAD) in the same units. Stars and a
    small galaxy barely move either; the MAD of a sky-dominated frame is its pixel noise.
    """
    sample = plane[::SKY_SAMPLE_STRIDE, ::SKY_SAMPLE_STRIDE]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return float("nan"), float("nan")
    level = float(np.median(sample))
    return level, MAD_TO_SIGMA * float(np.median(np.abs(sample - level)))


def transparency(frame_flux: np.ndarray, ref_flux: np.ndarray) -> np.ndarray:
    """Per-channel brightness of a frame relative to the reference, from paired stars.

    frame_flux, ref_flux: (m, 3) background-subtracted fluxes of the same m stars (NaN allowed).
    Returns (3,) median of frame/ref over stars with positive flux in both; NaN for a channel with
    fewer than MIN_FLUX_PAIRS such stars.
    """
    ratio = np.full(3, np.nan)
    for c in range(3):
        ok = np.isfinite(frame_flux[:, c]) & np.isfinite(ref_flux[:, c]) & (frame_flux[:, c] > 0) \
            & (ref_flux[:, c] > 0)
        if ok.sum() >= MIN_FLUX_PAIRS:
            ratio[c] = float(np.median(frame_flux[ok, c] / ref_flux[ok, c]))
    return ratio


def normalization(mode: str, sky: np.ndarray, noise: np.ndarray, ratio: np.ndarray,
                  ref_sky: np.ndarray, ref_noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gain and offset that map a frame onto the reference, per channel.

    mode: "addscale", "add" or "none". sky, noise, ratio: the frame's (3,) sky level, sky noise and
    transparency (from `transparency`); ref_sky, ref_noise: the reference's. Where the transparency is
    unknown (NaN) the scale falls back to the ratio of sky noise, as Siril's addscale does.
    Returns (gain (3,), offset (3,)) with normalised = gain · frame + offset.
    """
    if mode == "none":
        return np.ones(3), np.zeros(3)
    if mode == "add":
        return np.ones(3), ref_sky - sky
    scale = np.where(np.isfinite(ratio) & (ratio > 0), ratio, noise / ref_noise)
    gain = 1.0 / scale
    return gain, ref_sky - gain * sky


def noise_weights(noise: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Inverse-variance weights of normalised frames.

    noise: (N, 3) sky noise of each frame and channel before normalisation; gain: (N, 3) from
    `normalization`. Returns (N, 3) float32 weights 1/(gain·noise)², scaled so their maximum per channel is 1.
    """
    weight = 1.0 / np.square(gain * noise)
    return (weight / weight.max(axis=0, keepdims=True)).astype(np.float32)
