"""Average Drop (AD) and Increase in Confidence (IC) at v = 100, 50, 15 %: preset ``tame`` (T-TAME, Eqs. 18-21).

Per image: Y = softmax probability of the class predicted on the original image; the map is min-max normalised
(a constant map becomes all zeros), upsampled bilinearly to H x W, and values below its (100 - v) % quantile
(numpy's linear interpolation) are set to 0, the rest kept soft (v = 100 keeps the whole map). The image is masked:

* ``model_kind="cnn"``: in raw [0, 1] space, then standardised: ``(x * m - mean) / std`` (T-TAME Eq. 13);
* ``model_kind="vit"``: the standardised image is masked: ``((x - mean) / std) * m`` (Eq. 14).

O = softmax probability of the same class on the masked image. AD(v) = 100/N sum max(0, Y - O) / Y and
IC(v) = 100/N sum [O > Y]; the per-image values are 100 max(0, Y - O) / Y and 100 [O > Y], so each result's value
is their mean. Y >= 1/K > 0 always (it is the top-1 probability), so there is no division by zero.
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
    MetricResult,
    ModelFn,
    check_inputs,
    check_preset,
    make_result,
    normalise,
    predict,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tame": {
        "class": "predicted",
        "levels": [100, 50, 15],
        "map_scaling": "minmax",
        "upsample": "bilinear",
        "threshold": "values < quantile(1 - v/100) (linear) set to 0, rest kept soft",
        "score": "softmax",
        "scale": "percent",
    }
}


def tame_mask(
    x_norm: torch.Tensor,
    maps: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    model_kind: str,
    raw: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask images with saliency maps as T-TAME does (Eqs. 13-14); the one implementation of the masking, used by
    the AD/IC metric and by T-TAME's training loss.

    Args:
        x_norm: the normalised batch (B, C, H, W).
        maps: masks at the images' size, (B, 1, H, W) (or anything that broadcasts against the batch).
        mean: per-channel mean, broadcastable to (B, C, H, W) (e.g. (C, 1, 1) or (1, C, 1, 1)).
        std: per-channel std, same shape.
        model_kind: ``"cnn"``: mask the raw image, then standardise: ``(raw * m - mean) / std`` (Eq. 13);
            ``"vit"``: mask the standardised image: ``x_norm * m`` (Eq. 14).
        raw: the raw [0, 1] batch when the caller has it (else ``x_norm * std + mean``).
    """
    if model_kind == "vit":
        return (x_norm * maps).contiguous()
    raw = x_norm * std + mean if raw is None else raw
    return ((raw * maps - mean) / std).contiguous()


def threshold_maps(maps: torch.Tensor, level: float) -> torch.Tensor:
    """Keep the top ``level`` % of each map (N, H, W): values below the (100 - level) % quantile become 0.

    Args:
        maps: min-max normalised maps (N, H, W).
        level: v in (0, 100].
    """
    if level >= 100:
        return maps
    flat = maps.reshape(maps.shape[0], -1).double().numpy()
    thr = np.quantile(flat, 1.0 - level / 100.0, axis=1)[:, None]
    kept = np.where(flat < thr, 0.0, flat).astype(np.float32)
    return torch.from_numpy(kept).reshape(maps.shape)


def ad_ic(
    model: ModelFn,
    images: np.ndarray,
    saliency: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    preset: str = "tame",
    model_kind: str = "cnn",
    levels: Sequence[float] | None = None,
    targets: Sequence[int] | np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, MetricResult]:
    """AD and IC at each level.

    Args:
        model: normalised batch (B, C, H, W) -> logits (B, K).
        images: raw images (N, C, H, W) in [0, 1].
        saliency: maps (N, h, w) of the predicted class.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        preset: ``"tame"``.
        model_kind: ``"cnn"`` (mask raw pixels, then standardise) or ``"vit"`` (mask the standardised image).
        levels: v values in percent (default the preset's 100, 50, 15).
        targets: ignored: the preset scores the predicted class ("model truth"); recorded in params when given.
        batch_size: images per model call.

    Returns:
        ``{"ad@100": ..., "ic@100": ..., "ad@50": ..., "ic@50": ..., "ad@15": ..., "ic@15": ...}``.
    """
    check_preset("ad_ic", preset, PRESETS)
    p = PRESETS[preset]
    lv = [float(v) for v in (levels if levels is not None else p["levels"])]
    if not lv or any(not (0 < v <= 100) for v in lv):
        raise InputError(f"levels must be percentages in (0, 100], got {lv}.")
    ci = check_inputs(images, saliency, mean, std, batch_size, model_kind, minmax_before_resize=True)
    raw, sal, m, s, batch_size = ci.raw, ci.saliency, ci.mean, ci.std, ci.batch_size
    n, c, h, w = ci.shape
    x_norm = normalise(raw, m, s)

    y, _, cls, calls = predict(model, x_norm, batch_size)
    runner = BatchRunner(model, batch_size)
    classes = torch.from_numpy(cls)
    for v in lv:
        kept = threshold_maps(sal, v)[:, None]
        masked = tame_mask(x_norm, kept, m, s, model_kind, raw=raw)
        runner.add(masked, classes)
    o, _ = runner.finish()
    o = o.reshape(len(lv), n)

    params = {**p, "levels": lv, "model_kind": model_kind, "batch_size": batch_size,
              "model_calls": calls + runner.calls}  # fmt: skip
    if targets is not None:
        params["targets"] = "ignored (tame scores the predicted class)"
    results: dict[str, MetricResult] = {}
    for i, v in enumerate(lv):
        tag = f"{v:g}"
        ad = 100.0 * np.maximum(0.0, y - o[i]) / y
        ic = 100.0 * (o[i] > y).astype(np.float64)
        extras = {"confidence_original": y, "confidence_masked": o[i], "classes": cls}
        results[f"ad@{tag}"] = make_result(f"ad@{tag}", preset, ad, {**params, "level": v}, extras=extras)
        results[f"ic@{tag}"] = make_result(f"ic@{tag}", preset, ic, {**params, "level": v}, extras=extras)
    return results
