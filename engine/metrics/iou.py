"""Mean IoU between binarised saliency maps and ground-truth masks; presets are the binarisation rules.

Per image: the map is upsampled bilinearly to the mask's H x W (maps at any resolution are accepted; the mask's size
is the reference, and images, when passed, must have that size too), min-max scaled to [0, 1], and binarised:

* ``mean``: foreground = s >= mean(s);
* ``0.5``: foreground = s >= 0.5;
* ``otsu``: Otsu's threshold on a 256-bin histogram of s over [0, 1] (:func:`otsu_threshold`); foreground = the
  pixels whose bin index is >= the threshold bin.

A constant map carries no localisation: its foreground is empty (all rules). IoU = |P & G| / |P | G|, and 1.0 when both
masks are empty (they agree). The value is the mean IoU over images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.errors import InputError

from .base import MetricResult, check_images, check_preset, check_saliency, make_result, minmax, resize_maps

PRESETS: dict[str, dict[str, Any]] = {
    "mean": {"rule": "s >= mean(s)"},
    "0.5": {"rule": "s >= 0.5"},
    "otsu": {"rule": "otsu, 256 bins over [0, 1], foreground = bin >= threshold bin"},
}
_COMMON = {"map_scaling": "minmax", "upsample": "bilinear to the mask size", "constant_map": "empty foreground",
           "empty_union": 1.0}  # fmt: skip


def otsu_threshold(values: np.ndarray, bins: int = 256) -> tuple[float, int] | None:
    """Otsu's threshold of values in [0, 1] on a ``bins``-bin histogram.

    Bin b holds [b/bins, (b+1)/bins) (the last bin also holds 1.0). The split k (1 <= k < bins) puts bins < k in the
    background and bins >= k in the foreground, and maximises the between-class variance w0 w1 (mu0 - mu1)^2 over
    bin centres; the first maximum wins.

    Args:
        values: values in [0, 1] (any shape).
        bins: number of histogram bins.

    Returns:
        (threshold k / bins, k), or None when all values fall in one bin (no split exists).
    """
    idx = np.clip(np.floor(np.asarray(values, dtype=np.float64).reshape(-1) * bins), 0, bins - 1).astype(np.int64)
    hist = np.bincount(idx, minlength=bins).astype(np.float64)
    p = hist / hist.sum()
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(p)[:-1]
    mu = np.cumsum(p * centres)[:-1]
    mu_t = float((p * centres).sum())
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (mu_t * w0 - mu) ** 2 / (w0 * w1)
    var[(w0 <= 1e-12) | (w1 <= 1e-12)] = 0.0
    if not np.any(var > 0):
        return None
    k = int(np.argmax(var)) + 1
    return k / bins, k


def binarise(saliency: np.ndarray, rule: str) -> np.ndarray:
    """Foreground mask (bool) of one min-max scaled map (values in [0, 1]) under ``rule`` (``mean``, ``0.5``, ``otsu``).

    A constant map gives an empty foreground.
    """
    s = np.asarray(saliency, dtype=np.float64)
    if s.size == 0 or s.max() == s.min():
        return np.zeros(s.shape, dtype=bool)
    if rule == "mean":
        return s >= s.mean()
    if rule == "0.5":
        return s >= 0.5
    if rule == "otsu":
        found = otsu_threshold(s)
        if found is None:
            return np.zeros(s.shape, dtype=bool)
        idx = np.clip(np.floor(s * 256), 0, 255)
        return idx >= found[1]
    raise InputError(f"unknown binarisation rule {rule!r}; choose 'mean', '0.5' or 'otsu'.")


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P & G| / |P | G| of two bool masks; 1.0 when both are empty."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def mean_iou(
    saliency: np.ndarray,
    masks: np.ndarray,
    *,
    preset: str = "mean",
    images: np.ndarray | None = None,
    model: Any = None,
    mean: Any = None,
    std: Any = None,
    targets: Any = None,
    batch_size: Any = None,
    model_kind: Any = None,
) -> dict[str, MetricResult]:
    """Mean IoU of binarised maps against ground-truth masks.

    Args:
        saliency: maps (N, h, w), any resolution (upsampled bilinearly to the mask size).
        masks: ground-truth masks (N, H, W), bool or 0/1.
        preset: the binarisation rule: ``"mean"``, ``"0.5"`` or ``"otsu"``.
        images: optional raw images (N, C, H, W); only checked to have the masks' count and size.
        model: unused (IoU needs no model); like ``mean``, ``std``, ``targets``, ``batch_size`` and ``model_kind`` it
            is accepted so that every metric takes the same keyword arguments.
        mean: unused.
        std: unused.
        targets: unused.
        batch_size: unused.
        model_kind: unused.

    Returns:
        ``{"miou": ...}`` with the rule in ``params["rule"]``.
    """
    check_preset("miou", preset, PRESETS)
    gt = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if gt.ndim != 3:
        raise InputError(f"masks must be (N, H, W), got shape {gt.shape}; stack one 2-D mask per image.")
    if gt.shape[0] == 0:
        raise InputError("the dataset is empty (N = 0 masks): there is nothing to evaluate; pass at least one mask.")
    if gt.dtype != bool:
        if not np.all(np.isin(gt, (0, 1))):
            raise InputError("masks must be bool or 0/1; binarise them first (e.g. masks > 0).")
        gt = gt.astype(bool)
    n, h, w = gt.shape
    if images is not None:
        img = check_images(images)
        if img.shape[0] != n or tuple(img.shape[2:]) != (h, w):
            raise InputError(
                f"images {tuple(img.shape)} and masks {gt.shape} differ in count or size; resize the masks with the "
                "images (nearest neighbour) so that both are at the network input size."
            )
    sal = minmax(resize_maps(check_saliency(saliency, n), (h, w))).double().numpy()
    per = np.array([iou(binarise(sal[i], preset), gt[i]) for i in range(n)])
    return {"miou": make_result("miou", preset, per, {**_COMMON, **PRESETS[preset], "binarisation": preset})}
