"""The stacking pipeline: raw Seestar (Bayer) FITS frames in, one registered, graded, normalised and
outlier-rejected colour stack out. See docs/stacking.md.

    result = stack_files(paths, names=..., progress=..., options=StackOptions())
    result.write_fits(path); result.write_preview(path)
"""
from .options import FrameVerdict, StackingError, StackOptions, StackResult
from .runner import stack_files

__all__ = ["stack_files", "StackOptions", "StackResult", "FrameVerdict", "StackingError"]
