"""Plain-torch stand-ins for ``engine.ops.perturb_by_rank`` / ``auc``, used only if ``engine.ops`` lacks them.

Same semantics as the ops: pixel order = saliency descending, ties by flat index ascending (stable sort); step with
count k: insertion takes the k top pixels (all channels) from the image and the rest from the baseline, deletion
takes them from the baseline and the rest from the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

import engine.ops as _ops

_OPS_RANK = getattr(_ops, "saliency_rank", None)
_OPS_FROM_RANK = getattr(_ops, "perturb_from_rank", None)
_OPS_PERTURB = getattr(_ops, "perturb_by_rank", None)
_OPS_AUC = getattr(_ops, "auc", None)


def _saliency_rank(saliency: Tensor) -> Tensor:
    """Rank (0 = most salient) of each pixel of one map (H, W) -> (H*W,) int64."""
    flat = saliency.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), dtype=order.dtype)
    return rank


def _perturb_from_rank(image: Tensor, rank: Tensor, baseline: Tensor, counts: Tensor, mode: str) -> Tensor:
    c, h, w = image.shape
    k = counts.to(torch.int64).clamp(0, h * w)
    inside = (rank[None, :] < k[:, None]).view(-1, 1, h, w)
    first, second = (image, baseline) if mode == "insertion" else (baseline, image)
    return torch.where(inside, first[None], second[None])


def _perturb_by_rank(image: Tensor, saliency: Tensor, baseline: Tensor, counts: Tensor, mode: str) -> Tensor:
    """Fallback of ``engine.ops.perturb_by_rank``: (C, H, W) x (H, W) x (C, H, W) x (S,) -> (S, C, H, W)."""
    return _perturb_from_rank(image, _saliency_rank(saliency), baseline, counts, mode)


def _auc(scores: Tensor, x: Tensor | Sequence[float] | None = None, rule: str = "trapezoid") -> Tensor:
    """Fallback of ``engine.ops.auc``: rows (N, S) -> (N,) float64.

    ``"rise"``: (sum - a_0/2 - a_{S-1}/2) / (S - 1); ``"trapezoid"``: trapezoid rule over x (default linspace(0, 1, S))
    divided by x[-1] - x[0].
    """
    y = scores.double()
    s = y.shape[1]
    if rule == "rise":
        return (y.sum(1) - (y[:, 0] + y[:, -1]) / 2) / (s - 1)
    xs = torch.linspace(0, 1, s, dtype=torch.float64) if x is None else torch.as_tensor(x, dtype=torch.float64)
    return torch.trapezoid(y, xs, dim=1) / (xs[-1] - xs[0])


def rank_pixels(saliency: Tensor) -> Tensor:
    """Pixel ranks of one map (H, W) -> (H*W,) int64, with ``engine.ops.saliency_rank`` when it exists."""
    if _OPS_RANK is not None:
        return _OPS_RANK(saliency.contiguous()).reshape(-1)
    return _saliency_rank(saliency)


def perturb(image: Tensor, saliency: Tensor, rank: Tensor, baseline: Tensor, counts: Tensor, mode: str) -> Tensor:
    """Perturbation stack (S, C, H, W) of one image: ``engine.ops`` when it exists, else the fallback above.

    Args:
        image: the image (C, H, W), float32.
        saliency: its map (H, W) (used when only ``perturb_by_rank`` exists).
        rank: its precomputed pixel ranks (H*W,) from :func:`rank_pixels`.
        baseline: the replacement (C, H, W).
        counts: pixels per step (S,) int64.
        mode: ``"insertion"`` or ``"deletion"``.
    """
    if _OPS_FROM_RANK is not None and _OPS_RANK is not None:
        return _OPS_FROM_RANK(image, rank, baseline, counts, mode)
    if _OPS_PERTURB is not None:
        return _OPS_PERTURB(image, saliency, baseline, counts, mode)
    return _perturb_from_rank(image, rank, baseline, counts, mode)


def auc(scores: Tensor, x: Tensor | None, rule: str) -> Tensor:
    """``engine.ops.auc`` when it exists, else the fallback; float64 (N,)."""
    if _OPS_AUC is not None:
        return _OPS_AUC(scores.double(), x, rule).double()
    return _auc(scores, x, rule)
