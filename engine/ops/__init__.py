"""Tensor operations shared by explainers and metrics: compiled kernels when built, else the torch reference.

Each function checks its arguments, then runs a compiled kernel from ``cpp_ext/`` when one applies (the CPU kernels
build just in time on first use, see ``engine.ops._ext``; the CUDA ones after ``engine.ops._ext.load_cuda()``) and
the torch reference in ``engine.ops.reference`` otherwise. Both give bit-identical results (the AUC to float64
rounding). The torch reference always runs while tracing or exporting (``torch.jit.trace``, ONNX export,
``torch.compile``/``torch.export``), when an input needs a gradient, and for inputs that are not contiguous float32.
``XAI_ENGINE_NO_EXT=1`` forces the torch reference everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from ..errors import InputError
from . import _ext, reference

__all__ = [
    "auc",
    "backend_name",
    "mask_feature_map",
    "mask_tokens",
    "perturb_by_rank",
    "perturb_by_rank_batch",
    "perturb_from_rank",
    "saliency_rank",
]

MODES = ("insertion", "deletion")
AUC_RULES = ("trapezoid", "rise")


def backend_name() -> str:
    """``"cpp"`` when the compiled CPU kernels are loaded (building them on the first call), else ``"torch"``."""
    return "cpp" if _ext.load() is not None else "torch"


def _tracing() -> bool:
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


def _kernels(*tensors: Tensor) -> ModuleType | None:
    """The kernel module for these float32 inputs (CPU or, once loaded, CUDA), or None for the torch reference."""
    if _tracing():
        return None
    device = tensors[0].device
    for t in tensors:
        # exact type: FakeTensor/FunctionalTensor (torch.export) and Parameters take the reference path
        if type(t) is not Tensor or t.dtype != torch.float32 or t.device != device or not t.is_contiguous():
            return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if device.type == "cpu":
        return _ext.load()
    if device.type == "cuda":
        return _ext.cuda_module()
    return None


def mask_tokens(tokens: Tensor, masks: Tensor) -> Tensor:
    """Batched token masking: copy b*N+n of the output is ``masks[n]`` (broadcast over D) times ``tokens[b]``.

    Works for CNN feature maps too (see ``mask_feature_map``).

    Args:
        tokens: token embeddings (B, T, D).
        masks: one mask per copy (N, T).

    Returns:
        The masked copies (B*N, T, D).
    """
    tracing = _tracing()  # checks on traced sizes would raise TracerWarnings; the reference checks shapes itself
    if not tracing and (tokens.dim() != 3 or masks.dim() != 2 or masks.shape[1] != tokens.shape[1]):
        raise InputError(
            f"mask_tokens needs tokens (B, T, D) and masks (N, T) with the same T; got {tuple(tokens.shape)} and "
            f"{tuple(masks.shape)}. Reshape the masks to (N, T)."
        )
    if tracing:
        return reference.mask_tokens(tokens, masks)
    ext = _kernels(tokens, masks)
    return ext.mask_tokens(tokens, masks) if ext is not None else reference.mask_tokens(tokens, masks)


def mask_feature_map(features: Tensor, masks: Tensor) -> Tensor:
    """Batched feature-map masking: copy b*N+n of the output is ``features[b]`` times ``masks[n]`` per position.

    Args:
        features: feature maps (B, C, h, w).
        masks: one spatial mask per copy (N, h*w), broadcast over C.

    Returns:
        The masked copies (B*N, C, h, w).
    """
    tracing = _tracing()
    if not tracing and (
        features.dim() != 4 or masks.dim() != 2 or masks.shape[1] != features.shape[2] * features.shape[3]
    ):
        raise InputError(
            f"mask_feature_map needs features (B, C, h, w) and masks (N, h*w); got {tuple(features.shape)} and "
            f"{tuple(masks.shape)}. Flatten the masks' spatial dimensions: masks.flatten(1)."
        )
    if tracing:
        return reference.mask_feature_map(features, masks)
    ext = _kernels(features, masks)
    return ext.mask_feature_map(features, masks) if ext is not None else reference.mask_feature_map(features, masks)


def saliency_rank(saliency: Tensor) -> Tensor:
    """Rank of every pixel by saliency, 0 = most salient; sorted once, ties broken by flat index ascending.

    The order is ``torch.argsort(saliency.flatten(), descending=True, stable=True)`` (NaN first, -0.0 ties +0.0).

    Args:
        saliency: one map (H, W) or a batch (B, H, W).

    Returns:
        int64 ranks (H*W,) or (B, H*W).
    """
    if saliency.dim() not in (2, 3):
        raise InputError(f"saliency must be (H, W) or (B, H, W), got {tuple(saliency.shape)}; squeeze other dims.")
    ext = _kernels(saliency)
    if ext is None:
        return reference.saliency_rank(saliency)
    return ext.saliency_rank(saliency[None] if saliency.dim() == 2 else saliency).view(*saliency.shape[:-2], -1)


def _insertion(mode: str) -> bool:
    if mode not in MODES:
        raise InputError(f"mode must be 'insertion' or 'deletion', got {mode!r}.")
    return mode == "insertion"


def _counts(counts: Tensor | Sequence[int]) -> Tensor:
    c = counts if isinstance(counts, Tensor) else torch.as_tensor(list(counts), dtype=torch.int64)
    if c.dim() != 1 or c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise InputError(
            f"counts must be a 1-D sequence of integers (pixels per step), got dtype {c.dtype} and shape "
            f"{tuple(c.shape)}; e.g. torch.arange(0, H * W + 1, step)."
        )
    return c.to(device="cpu", dtype=torch.int64).contiguous()


def _check_images(images: Tensor, baselines: Tensor, what: str) -> None:
    if images.dim() != 4 or baselines.shape != images.shape:
        raise InputError(
            f"{what} needs images and baselines of the same shape (B, C, H, W); got {tuple(images.shape)} and "
            f"{tuple(baselines.shape)}. Expand the baseline to the image's shape (e.g. torch.zeros_like(image))."
        )


def _perturb_batch(images: Tensor, rank: Tensor, baselines: Tensor, counts: Tensor, insertion: bool) -> Tensor:
    ext = _kernels(images, baselines)
    rank_ok = type(rank) is Tensor and rank.dtype == torch.int64 and rank.device == images.device
    rank_ok = rank_ok and rank.is_contiguous()
    if ext is not None and rank_ok:
        return ext.perturb_from_rank(images, rank, baselines, counts.to(images.device), insertion)
    return reference.perturb_from_rank(images, rank, baselines, counts, insertion)


def perturb_by_rank_batch(
    images: Tensor, saliency: Tensor, baselines: Tensor, counts: Tensor | Sequence[int], mode: str = "insertion"
) -> Tensor:
    """Insertion/deletion perturbation stacks for a batch of images, each ranked by its own saliency map.

    Args:
        images: the images (B, C, H, W).
        saliency: one saliency map per image (B, H, W).
        baselines: the replacement images (B, C, H, W), e.g. a blurred copy (insertion) or zeros (deletion).
        counts: pixels per step (S,), clamped to [0, H*W]; repeats and any order are fine.
        mode: ``"insertion"`` (top-k pixels from the image, the rest from the baseline) or ``"deletion"`` (top-k
            pixels from the baseline, the rest from the image).

    Returns:
        The perturbed images (B, S, C, H, W).
    """
    insertion = _insertion(mode)
    _check_images(images, baselines, "perturb_by_rank_batch")
    if saliency.dim() != 3 or saliency.shape != (images.shape[0], *images.shape[2:]):
        raise InputError(
            f"saliency must be (B, H, W) = {(images.shape[0], *images.shape[2:])}, got {tuple(saliency.shape)}; "
            "resize the saliency maps to the image size first."
        )
    return _perturb_batch(images, saliency_rank(saliency), baselines, _counts(counts), insertion)


def perturb_by_rank(
    image: Tensor, saliency: Tensor, baseline: Tensor, counts: Tensor | Sequence[int], mode: str = "insertion"
) -> Tensor:
    """Insertion/deletion perturbation stack of one image: step s replaces its ``counts[s]`` most salient pixels.

    Pixels are ranked once by ``saliency_rank`` (descending saliency, ties by flat index ascending).

    Args:
        image: the image (C, H, W).
        saliency: its saliency map (H, W).
        baseline: the replacement image (C, H, W).
        counts: pixels per step (S,), clamped to [0, H*W].
        mode: ``"insertion"`` or ``"deletion"`` (see ``perturb_by_rank_batch``).

    Returns:
        The perturbed images (S, C, H, W).
    """
    if image.dim() != 3 or saliency.dim() != 2:
        raise InputError(
            f"perturb_by_rank needs image (C, H, W) and saliency (H, W), got {tuple(image.shape)} and "
            f"{tuple(saliency.shape)}; use perturb_by_rank_batch for batches."
        )
    return perturb_by_rank_batch(image[None], saliency[None], baseline[None], counts, mode)[0]


def perturb_from_rank(
    image: Tensor, rank: Tensor, baseline: Tensor, counts: Tensor | Sequence[int], mode: str = "insertion"
) -> Tensor:
    """``perturb_by_rank`` with precomputed ranks: rank once, then generate the steps in chunks (e.g. per batch).

    Args:
        image: the image (C, H, W).
        rank: its pixel ranks (H*W,) int64 from ``saliency_rank``.
        baseline: the replacement image (C, H, W).
        counts: pixels per step (S,), clamped to [0, H*W].
        mode: ``"insertion"`` or ``"deletion"`` (see ``perturb_by_rank_batch``).

    Returns:
        The perturbed images (S, C, H, W).
    """
    insertion = _insertion(mode)
    _check_images(image[None], baseline[None], "perturb_from_rank")
    if rank.shape != (image.shape[1] * image.shape[2],) or rank.dtype != torch.int64:
        raise InputError(
            f"rank must be int64 of shape (H*W,) = ({image.shape[1] * image.shape[2]},), got {rank.dtype} "
            f"{tuple(rank.shape)}; compute it with saliency_rank(saliency)."
        )
    return _perturb_batch(image[None], rank[None], baseline[None], _counts(counts), insertion)[0]


def auc(scores: Tensor, x: Tensor | Sequence[float] | None = None, rule: str = "trapezoid") -> Tensor:
    """Area under insertion/deletion curves, one per row, computed in float64.

    Args:
        scores: one curve per row (N, S), S >= 2 (e.g. the target class's probability per step).
        x: abscissae (S,) for ``"trapezoid"``; None means linspace(0, 1, S). The area is divided by x[-1] - x[0],
            so x given in pixels gives the same AUC as the fraction of pixels.
        rule: ``"trapezoid"`` (normalised trapezoid rule) or ``"rise"`` (RISE's formula
            (sum - a_0/2 - a_{S-1}/2) / (S-1), evenly spaced steps, no x).

    Returns:
        The AUC per row (N,), in the scores' dtype.
    """
    if rule not in AUC_RULES:
        raise InputError(f"rule must be 'trapezoid' or 'rise', got {rule!r}.")
    if scores.dim() != 2 or scores.shape[1] < 2 or not scores.is_floating_point():
        raise InputError(
            f"scores must be a floating (N, S) tensor with S >= 2, got {scores.dtype} {tuple(scores.shape)}; "
            "pass one curve as scores[None]."
        )
    xs: Tensor | None = None
    if x is not None:
        if rule == "rise":
            raise InputError("rule='rise' assumes evenly spaced steps and takes no x; pass x=None or rule='trapezoid'.")
        xs = torch.as_tensor(x, dtype=torch.float64, device=scores.device)
        if xs.shape != (scores.shape[1],) or xs[-1] == xs[0]:
            raise InputError(
                f"x must be (S,) = ({scores.shape[1]},) with x[-1] != x[0], got {tuple(xs.shape)}; "
                "pass x=None for evenly spaced steps."
            )
    ext = _kernels(scores)
    if ext is None:
        return reference.auc(scores, xs, rule)
    return ext.auc(scores, None if xs is None else xs.contiguous(), AUC_RULES.index(rule))
