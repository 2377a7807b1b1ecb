"""ADCC (Poppi et al. 2021): harmonic mean of coherency, 1 - complexity and 1 - average drop; preset ``reference``.

Per image, with s the saliency map upsampled bilinearly to H x W (min-max scaled only if it leaves [0, 1], as
openvino-xai does; the reference takes maps already in [0, 1]) and c the class (``targets`` if given, else the class
predicted on the original image, as the reference does):

* explanation map e = x * s, where x is the **normalised** image (``mask_space="normalised"``, the reference code:
  ``image * saliency_map`` on the normalised tensor) or the raw image, normalised afterwards (``mask_space="raw"``,
  openvino-xai 1.1);
* average drop AD = max(0, Y - O) / Y, with Y = softmax_c(x), O = softmax_c(e), as a fraction in [0, 1]
  (Y = 0 can only come from float underflow of a non-predicted target: then AD = 0, nothing can drop);
* coherency = (Pearson(s, s') + 1) / 2, where s' = ``explain_fn(e, c)`` upsampled to H x W; when either map is
  constant the correlation is undefined and coherency = 0 (the reference sets 0 when it sees NaN);
* complexity = ||s||_1 / (H W);
* ADCC = 3 / (1/coherency + 1/(1 - complexity) + 1/(1 - AD)), and 0 when a term is infinite (coherency = 0,
  complexity = 1 or AD = 1), its limit.

The value is the mean of the per-image ADCC (the reference's per-image formula, averaged); the paper reports it
times 100. Difference: openvino-xai's ``ADCC.evaluate`` instead plugs the *means* of the three parts into the formula;
its per-image ``__call__`` matches ours (with ``mask_space="raw"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.errors import InputError

from .base import (
    DEFAULT_BATCH_SIZE,
    BatchRunner,
    ExplainFn,
    MetricResult,
    ModelFn,
    check_inputs,
    check_preset,
    check_targets,
    make_result,
    minmax,
    normalise,
    predict,
    resize_maps,
)

PRESETS: dict[str, dict[str, Any]] = {
    "reference": {
        "class": "target_or_predicted",
        "average_drop": "max(0, Y - O) / Y, fraction",
        "coherency": "(pearson + 1) / 2; 0 if a map is constant",
        "complexity": "L1 / (H W)",
        "aggregate": "mean of per-image ADCC",
        "mask_space": "normalised",
        "map_scaling": "minmax only if outside [0, 1]",
        "upsample": "bilinear",
    }
}
MASK_SPACES = ("normalised", "raw")


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (N, D) arrays in float64; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    r[den == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def adcc_from_parts(coherency: np.ndarray, complexity: np.ndarray, average_drop: np.ndarray) -> np.ndarray:
    """3 / (1/coh + 1/(1 - com) + 1/(1 - AD)) elementwise, 0 where a term is infinite."""
    coh, com, ad = (np.asarray(v, dtype=np.float64) for v in (coherency, complexity, average_drop))
    ok = (coh > 0) & (com < 1) & (ad < 1)
    out = np.zeros(np.broadcast(coh, com, ad).shape)
    with np.errstate(divide="ignore"):
        val = 3.0 / (1.0 / coh + 1.0 / (1.0 - com) + 1.0 / (1.0 - ad))
    out[ok] = val[ok]
    return out


def adcc(
    model: ModelFn,
    images: np.ndarray,
    saliency: np.ndarray,
    explain_fn: ExplainFn,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    preset: str = "reference",
    targets: Sequence[int] | np.ndarray | None = None,
    mask_space: str = "normalised",
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_kind: str | None = None,
) -> dict[str, MetricResult]:
    """ADCC and its three parts.

    Args:
        model: normalised batch (B, C, H, W) -> logits (B, K).
        images: raw images (N, C, H, W) in [0, 1].
        saliency: maps (N, h, w) for the scored class.
        explain_fn: (normalised batch (B, C, H, W) float32, classes (B,) int64) -> maps (B, h', w'); re-run on the
            explanation maps x * s, in batches of ``batch_size``.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        preset: ``"reference"``.
        targets: class ids (N,), default the predicted class.
        mask_space: ``"normalised"`` (reference) or ``"raw"`` (openvino-xai).
        batch_size: images per model / explain_fn call.
        model_kind: ``"cnn"`` or ``"vit"``; accepted so that every metric takes the same arguments, unused here
            (this metric masks both kinds as ``mask_space`` says).

    Returns:
        ``{"adcc": ..., "coherency": ..., "complexity": ..., "average_drop": ...}`` (per-image fractions).
    """
    check_preset("adcc", preset, PRESETS)
    if mask_space not in MASK_SPACES:
        raise InputError(f"mask_space must be 'normalised' or 'raw', got {mask_space!r}.")
    if not callable(explain_fn):
        raise InputError("adcc needs explain_fn(normalised_batch, classes) -> maps to re-explain the masked images.")
    ci = check_inputs(images, saliency, mean, std, batch_size, model_kind)
    raw, sal, m, s, batch_size = ci.raw, ci.saliency, ci.mean, ci.std, ci.batch_size
    n, c, h, w = ci.shape
    flat = sal.reshape(n, -1)
    outside = (flat.min(dim=1).values < 0) | (flat.max(dim=1).values > 1)
    sal = torch.where(outside[:, None, None], minmax(sal), sal)
    tgt = check_targets(targets, n, None)
    x_norm = normalise(raw, m, s)

    y, _, cls, calls = predict(model, x_norm, batch_size, tgt)
    masked = (x_norm * sal[:, None]).contiguous() if mask_space == "normalised" else normalise(raw * sal[:, None], m, s)
    runner = BatchRunner(model, batch_size)
    runner.add(masked, torch.from_numpy(cls))
    o, _ = runner.finish()

    second = []
    for i in range(0, n, batch_size):
        batch = np.ascontiguousarray(masked[i : i + batch_size].numpy())
        out = explain_fn(batch, cls[i : i + batch_size].copy())
        arr = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        if arr.ndim != 3 or arr.shape[0] != batch.shape[0] or not np.all(np.isfinite(arr)):
            raise InputError(
                f"explain_fn must return finite maps (B, h, w) for a batch of B={batch.shape[0]}, got shape "
                f"{arr.shape}{' with NaN/inf' if arr.ndim == 3 and arr.shape[0] == batch.shape[0] else ''}."
            )
        second.append(resize_maps(torch.from_numpy(arr.astype(np.float32)), (h, w)))
    s2 = torch.cat(second).reshape(n, -1).double().numpy()
    s1 = sal.reshape(n, -1).double().numpy()

    with np.errstate(divide="ignore", invalid="ignore"):
        ad = np.where(y > 0, np.maximum(0.0, y - o) / np.where(y > 0, y, 1.0), 0.0)
    r = _pearson(s1, s2)
    coh = np.where(np.isnan(r), 0.0, (r + 1.0) / 2.0)
    com = np.abs(s1).mean(axis=1)
    score = adcc_from_parts(coh, com, ad)

    params = {**PRESETS[preset], "mask_space": mask_space, "batch_size": batch_size,
              "model_calls": calls + runner.calls}  # fmt: skip
    params["class_used"] = "target" if tgt is not None else "predicted"
    extras = {"classes": cls, "confidence_original": y, "confidence_masked": o}
    return {
        "adcc": make_result("adcc", preset, score, dict(params), extras=extras),
        "coherency": make_result("coherency", preset, coh, dict(params)),
        "complexity": make_result("complexity", preset, com, dict(params)),
        "average_drop": make_result("average_drop", preset, ad, dict(params)),
    }
