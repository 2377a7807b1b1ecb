"""Saliency post-processing: map a low-resolution saliency map back onto the original image
(:func:`saliency_to_image`)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .transform import ImageMeta

__all__ = ["saliency_to_image"]


# --------------------------------------------------------------------------------------------------------------------
# saliency_to_image
# --------------------------------------------------------------------------------------------------------------------


def saliency_to_image(saliency: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Upsample a low-resolution saliency map onto the original image.

    The map covers ``meta.crop_box``. Each original pixel whose centre lies inside the box gets the bilinear
    interpolation of the map at that centre, with ``align_corners=False`` semantics (identical to
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` when the box is the whole image).
    Pixels outside the box are 0: the network never saw them, so the map says nothing about them.

    Args:
        saliency: a 2-D ``(h, w)`` map, nominally in [0, 1].
        meta: the :class:`ImageMeta` the preprocessor returned for the image.

    Returns:
        A float32 ``(height, width)`` array at the original image size, clipped to [0, 1].

    Raises:
        InputError: the map is not a non-empty 2-D numeric array, holds NaN or inf, or the crop box is empty.
    """
    s = np.asarray(saliency)
    if s.ndim != 2 or s.size == 0:
        raise InputError(
            f"saliency must be a non-empty 2-D (h, w) map, got shape {s.shape}. Squeeze batch/channel axes first, "
            "e.g. saliency[0, 0]."
        )
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer) or s.dtype == np.bool_):
        raise InputError(f"saliency must be numeric, got dtype {s.dtype}. Pass a float32 array.")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise InputError(
            "saliency holds NaN or infinite values; the explainer produced an invalid map. Check the model output "
            "or replace them with np.nan_to_num before mapping."
        )
    width, height = (int(v) for v in meta.original_size)
    left, top, right, bottom = (float(v) for v in meta.crop_box)
    if right <= left or bottom <= top:
        raise InputError(
            f"meta.crop_box {meta.crop_box} is empty; it must be (left, top, right, bottom) with right > left."
        )
    out = np.zeros((height, width), dtype=np.float32)
    rows = _axis_weights(height, top, bottom, s.shape[0])
    cols = _axis_weights(width, left, right, s.shape[1])
    if rows is None or cols is None:
        return out
    (y_lo, y_hi, y0, y1, wy), (x_lo, x_hi, x0, x1, wx) = rows, cols
    tmp = s[y0] * (1.0 - wy)[:, None] + s[y1] * wy[:, None]
    sub = tmp[:, x0] * (1.0 - wx) + tmp[:, x1] * wx
    out[y_lo:y_hi, x_lo:x_hi] = np.clip(sub, 0.0, 1.0)
    return out


def _axis_weights(
    n_out: int, start: float, stop: float, n_in: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None:
    """Bilinear (align_corners=False) source indices/weights for the output pixels whose centre is in [start, stop)."""
    centres = np.arange(n_out, dtype=np.float64) + 0.5
    inside = np.nonzero((centres >= start) & (centres < stop))[0]
    if inside.size == 0:
        return None
    lo, hi = int(inside[0]), int(inside[-1]) + 1
    src = (centres[lo:hi] - start) * (n_in / (stop - start)) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    weight = src - i0
    return lo, hi, i0, i1, weight
