"""Torch references of the kernels in ``cpp_ext/``: the definition every compiled kernel must reproduce exactly.

These are plain differentiable, traceable torch code (ONNX export goes through them). The public functions in
``engine.ops`` check their arguments and then call either these or a compiled kernel; call these directly to time
or test the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_tokens(tokens: Tensor, masks: Tensor) -> Tensor:
    """Batched token masking: (B, T, D) x (N, T) -> (B*N, T, D), copy b*N+n = masks[n] * tokens[b].

    Args:
        tokens: token embeddings (B, T, D).
        masks: one mask per copy (N, T), broadcast over D.
    """
    b, t, d = tokens.shape
    n = masks.shape[0]
    return (tokens[:, None] * masks[None, :, :, None]).reshape(b * n, t, d)


def mask_feature_map(features: Tensor, masks: Tensor) -> Tensor:
    """(B, C, h, w) x (N, h*w) -> (B*N, C, h, w), copy b*N+n = features[b] * masks[n] (per position).

    Args:
        features: feature maps (B, C, h, w).
        masks: one spatial mask per copy (N, h*w), broadcast over C.
    """
    b, c, h, w = features.shape
    n = masks.shape[0]
    return (features[:, None] * masks.view(1, n, 1, h, w)).reshape(b * n, c, h, w)


def saliency_rank(saliency: Tensor) -> Tensor:
    """Rank of each pixel (0 = most salient): (..., H, W) -> (..., H*W) int64.

    The order is a stable descending sort: higher saliency first, NaN before everything, -0.0 ties with +0.0, and
    ties break by flat index ascending.

    Args:
        saliency: one or more saliency maps (..., H, W).
    """
    flat = saliency.flatten(-2)
    order = torch.argsort(flat, dim=-1, descending=True, stable=True)
    ranks = torch.arange(flat.shape[-1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def perturb_from_rank(images: Tensor, rank: Tensor, baselines: Tensor, counts: Tensor, insertion: bool) -> Tensor:
    """Insertion/deletion perturbation stack: (B, C, H, W) x ranks (B, H*W) x counts (S,) -> (B, S, C, H, W).

    Step s with k = clamp(counts[s], 0, H*W): insertion takes the pixels with rank < k (all channels) from the image
    and the rest from the baseline; deletion takes them from the baseline and the rest from the image.

    Args:
        images: the images (B, C, H, W).
        rank: pixel ranks (B, H*W) int64, as from ``saliency_rank``.
        baselines: the replacement images (B, C, H, W).
        counts: number of top-ranked pixels per step (S,) int64.
        insertion: True for insertion, False for deletion.
    """
    b, c, h, w = images.shape
    k = counts.to(device=rank.device, dtype=torch.int64).clamp(0, h * w)
    inside = (rank[:, None, :] < k[None, :, None]).view(b, -1, 1, h, w)  # (B, S, 1, H, W)
    first, second = (images, baselines) if insertion else (baselines, images)
    return torch.where(inside, first[:, None], second[:, None])


def auc(scores: Tensor, x: Tensor | None, rule: str) -> Tensor:
    """Area under each row of ``scores`` (N, S) -> (N,), computed in float64, returned in the scores' dtype.

    Args:
        scores: one score curve per row (N, S), S >= 2.
        x: the curve's abscissae (S,) for ``"trapezoid"`` (None: linspace(0, 1, S)); must be None for ``"rise"``.
        rule: ``"trapezoid"``: trapezoid rule divided by x[-1] - x[0]; ``"rise"``: (sum - a_0/2 - a_{S-1}/2) / (S-1).
    """
    y = scores.double()
    s = y.shape[-1]
    if rule == "rise":
        return ((y.sum(-1) - (y[:, 0] + y[:, -1]) / 2) / (s - 1)).to(scores.dtype)
    xs = torch.linspace(0, 1, s, dtype=torch.float64, device=y.device) if x is None else x.to(y.device, torch.float64)
    return (torch.trapezoid(y, xs, dim=-1) / (xs[-1] - xs[0])).to(scores.dtype)
