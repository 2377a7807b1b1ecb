"""ROAD (Rong et al. 2022): remove pixels by saliency order, fill them by noisy linear imputation, re-classify.

Noisy linear imputation (:func:`noisy_linear_impute`): every removed pixel equals the weighted mean of its in-image
8 neighbours (weight 1/6 for the 4 side neighbours, 1/12 for the 4 diagonal ones, renormalised at the border), where
neighbours may themselves be removed; all removed pixels of one image are solved together as ONE sparse linear system
(scipy.sparse, all channels as right-hand sides). Then N(0, noise_std^2) noise (std 0.01 by default) is added to the
imputed pixels only, in normalised space (the imputation itself is affine-equivariant per channel, so only the
noise's scale depends on the space). Noise is drawn from ``numpy.random.default_rng(seed)``.

Removal percentages p = 10, 20, ..., 90; MoRF removes the most relevant pixels, LeRF the least relevant. Presets:

* ``tame`` (T-TAME, which uses the ROAD authors' code): k = floor(H*W * p / 100) pixels removed, chosen by the stable
  descending rank (ties by flat index; ROAD instead breaks ties with a fixed 1e-4 random jitter); score = top-1
  agreement with the prediction on the original image, per image 100 * mean over p (so the value is the agreement
  rate in percent, 100/N sum). The probability of the originally predicted class per p (the paper's psi) is kept in
  ``extras["confidence"]``; agreement per p in ``extras["agreement"]``.
* ``gradcam`` (pytorch-grad-cam 1.5.7 ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst``): its percentile
  convention: with the map min-max scaled to [0, 1] and q = 100 - p, MoRF keeps the pixels with
  ``s < np.percentile(s, q)`` and LeRF those with ``1 - s < np.percentile(1 - s, q)`` (so pixels tied at the
  threshold are removed and the removed count follows numpy's interpolated percentile); score = softmax confidence of
  the class (``targets`` if given, else the predicted class) after imputation minus before, averaged over p (as
  ``ROADMostRelevantFirstAverage``). ``road_combined`` = (LeRF - MoRF) / 2 as ``ROADCombined``. Differences from
  pytorch-grad-cam: the noise comes from a seeded numpy generator instead of the global torch RNG, so noisy runs
  agree only in distribution (with ``noise_std=0`` they agree to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine import ops
from engine.errors import InputError

from .base import (
    DEFAULT_BATCH_SIZE,
    BatchRunner,
    MetricResult,
    ModelFn,
    check_inputs,
    check_preset,
    check_targets,
    make_result,
    minmax,
    normalise,
    predict,
)

NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12),
    (-1, 0, 1 / 6),
    (-1, 1, 1 / 12),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (1, -1, 1 / 12),
    (1, 0, 1 / 6),
    (1, 1, 1 / 12),
)
PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
PRESETS: dict[str, dict[str, Any]] = {
    "tame": {
        "score": "top1_agreement_with_original_prediction",
        "scale": "percent",
        "selection": "rank: k = floor(H*W*p/100), ties by index",
        "percentages": list(PERCENTAGES),
    },
    "gradcam": {
        "score": "softmax_confidence_after_minus_before",
        "class": "target_or_predicted",
        "selection": "pytorch-grad-cam percentile: keep s < percentile(s, 100-p) (LeRF on 1-s)",
        "percentages": list(PERCENTAGES),
    },
}
_COMMON = {"imputation": "noisy_linear", "weights": "1/6 sides, 1/12 diagonals", "space": "normalised",
           "upsample": "bilinear"}  # fmt: skip


def _scipy_sparse() -> tuple[Any, Any]:
    try:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError as e:
        raise ImportError(
            "ROAD's noisy linear imputation solves a sparse linear system with scipy, which is not installed; "
            "fix: pip install scipy"
        ) from e
    return csc_matrix, spsolve


def noisy_linear_impute(
    image: np.ndarray, removed: np.ndarray, noise_std: float = 0.01, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Fill the removed pixels of one image by the weighted mean of their 8 neighbours, plus Gaussian noise.

    Args:
        image: the image (C, H, W) (normalised space in ROAD).
        removed: (H, W) bool, True where the pixel is removed.
        noise_std: standard deviation of the noise added to each imputed value (0: none).
        rng: the noise's generator (default ``np.random.default_rng(0)``).

    Returns:
        The imputed image (C, H, W), same dtype as ``image``; pixels not removed are unchanged.
    """
    csc_matrix, spsolve = _scipy_sparse()
    c, h, w = image.shape
    if removed.shape != (h, w):
        raise InputError(f"removed mask must be (H, W) = {(h, w)}, got {removed.shape}.")
    rem = removed.reshape(-1).astype(bool)
    unknown = np.flatnonzero(rem)
    n = unknown.shape[0]
    if n == 0:
        return image.copy()
    if n == h * w:
        raise InputError("cannot impute an image with every pixel removed; use removal percentages below 100.")
    flat = image.reshape(c, -1).astype(np.float64)
    vid = np.full(h * w, -1, dtype=np.int64)
    vid[unknown] = np.arange(n)
    r, col = unknown // w, unknown % w
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    rows, cols, vals = [], [], []
    ids = np.arange(n)
    for dr, dc, wt in NEIGHBOURS:
        rr, cc = r + dr, col + dc
        valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        j = rr[valid] * w + cc[valid]
        eq = ids[valid]
        diag[eq] += wt
        known = ~rem[j]
        np.add.at(rhs, eq[known], wt * flat[:, j[known]].T)
        rows.append(eq[~known])
        cols.append(vid[j[~known]])
        vals.append(np.full(int((~known).sum()), -wt))
    rows.append(ids)
    cols.append(ids)
    vals.append(diag)
    a = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    sol = np.asarray(spsolve(a, rhs)).reshape(n, c)
    out = flat.copy()
    out[:, unknown] = sol.T
    if noise_std > 0:
        gen = rng if rng is not None else np.random.default_rng(0)
        out[:, unknown] += gen.normal(0.0, noise_std, size=(c, n))
    return out.reshape(c, h, w).astype(image.dtype)


def removal_mask(saliency: torch.Tensor, percent: float, order: str, preset: str) -> np.ndarray:
    """Pixels (H, W) bool to remove at ``percent`` for ``order`` ("morf" | "lerf") under the preset's convention."""
    h, w = saliency.shape
    if preset == "tame":
        rank = ops.saliency_rank(saliency.contiguous()).reshape(-1).numpy()
        k = int(h * w * percent // 100)
        sel = rank < k if order == "morf" else rank >= h * w - k
        return sel.reshape(h, w)
    s = minmax(saliency[None])[0].numpy().astype(np.float32)
    m = s if order == "morf" else (np.float32(1.0) - s)
    thr = np.float32(np.percentile(m, 100 - percent))
    return ~(m < thr)


def road(
    model: ModelFn,
    images: np.ndarray,
    saliency: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    preset: str = "tame",
    targets: Sequence[int] | np.ndarray | None = None,
    percentages: Sequence[float] = PERCENTAGES,
    noise_std: float = 0.01,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_kind: str | None = None,
) -> dict[str, MetricResult]:
    """ROAD MoRF and LeRF scores.

    Args:
        model: normalised batch (B, C, H, W) -> logits (B, K).
        images: raw images (N, C, H, W) in [0, 1].
        saliency: maps (N, h, w), upsampled bilinearly to H x W.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        preset: ``"tame"`` or ``"gradcam"`` (see the module docstring).
        targets: class ids (N,) for ``gradcam`` (default: the predicted class); ignored by ``tame``.
        percentages: removal percentages (default 10..90).
        noise_std: std of the imputation noise in normalised space (0 turns it off).
        seed: seed of the noise generator.
        batch_size: images per model call; all imputed images of all images share batches.
        model_kind: ``"cnn"`` or ``"vit"``; accepted so that every metric takes the same arguments, unused here
            (this metric perturbs both kinds the same way).

    Returns:
        ``{"road_morf": ..., "road_lerf": ...}`` (``gradcam`` adds ``"road_combined"``); ``extras`` holds the
        per-percentage scores (N, P).
    """
    check_preset("road", preset, PRESETS)
    pcts = [float(p) for p in percentages]
    if not pcts or any(not (0 < p < 100) for p in pcts):
        raise InputError(f"percentages must be in (0, 100), got {pcts}.")
    if not (noise_std >= 0):
        raise InputError(f"noise_std must be >= 0, got {noise_std}.")
    _scipy_sparse()
    ci = check_inputs(images, saliency, mean, std, batch_size, model_kind)
    raw, sal, m, s, batch_size = ci.raw, ci.saliency, ci.mean, ci.std, ci.batch_size
    n, c, h, w = ci.shape
    tgt = check_targets(targets, n, None) if preset == "gradcam" else None
    x_norm = normalise(raw, m, s)

    before, top1, cls, calls = predict(model, x_norm, batch_size, tgt)
    if preset == "tame":
        cls = top1
    rng = np.random.default_rng(seed)
    runner = BatchRunner(model, batch_size)
    orders = ("morf", "lerf")
    for i in range(n):
        img = x_norm[i].numpy()
        stack = []
        for order in orders:
            for pct in pcts:
                removed = removal_mask(sal[i], pct, order, preset)
                stack.append(noisy_linear_impute(img, removed, noise_std, rng))
        runner.add(torch.from_numpy(np.stack(stack)), int(cls[i]))
    after, after_top1 = runner.finish()
    after = after.reshape(n, len(orders), len(pcts))
    after_top1 = after_top1.reshape(n, len(orders), len(pcts))

    params = {**_COMMON, **PRESETS[preset], "percentages": pcts, "noise_std": float(noise_std), "seed": int(seed),
              "batch_size": batch_size, "model_calls": calls + runner.calls}  # fmt: skip
    params["class_used"] = "target" if tgt is not None else "predicted"
    if targets is not None and preset == "tame":
        params["targets"] = "ignored (tame scores agreement with the predicted class)"
    results: dict[str, MetricResult] = {}
    for oi, order in enumerate(orders):
        if preset == "tame":
            agree = (after_top1[:, oi] == top1[:, None]).astype(np.float64)
            per_image = 100.0 * agree.mean(axis=1)
            extras = {"agreement": agree, "confidence": after[:, oi], "percentages": np.array(pcts)}
        else:
            diff = after[:, oi] - before[:, None]
            per_image = diff.mean(axis=1)
            extras = {"score": diff, "confidence": after[:, oi], "percentages": np.array(pcts)}
        extras["classes"] = cls
        results[f"road_{order}"] = make_result(f"road_{order}", preset, per_image, {**params, "order": order},
                                               extras=extras)  # fmt: skip
    if preset == "gradcam":
        combined = (results["road_lerf"].per_image - results["road_morf"].per_image) / 2
        results["road_combined"] = make_result("road_combined", preset, combined, dict(params))
    return results
