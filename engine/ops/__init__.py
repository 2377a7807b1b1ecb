"""Tensor operations shared by explainers. Compiled kernels replace these when built (see ``cpp_ext/``)."""

from __future__ import annotations

from torch import Tensor


def mask_tokens(tokens: Tensor, masks: Tensor) -> Tensor:
    """Batched token masking: tokens (B, T, D) x masks (N, T) -> (B*N, T, D), copy b*N+n = masks[n] * tokens[b].

    Works for CNN feature maps too: pass (B, C, h*w) transposed as tokens, or use ``mask_feature_map``.
    """
    b, t, d = tokens.shape
    n = masks.shape[0]
    return (tokens[:, None] * masks[None, :, :, None]).reshape(b * n, t, d)


def mask_feature_map(features: Tensor, masks: Tensor) -> Tensor:
    """features (B, C, h, w) x masks (N, h*w) -> (B*N, C, h, w), copy b*N+n = features[b] * masks[n] (per position)."""
    b, c, h, w = features.shape
    n = masks.shape[0]
    return (features[:, None] * masks.view(1, n, 1, h, w)).reshape(b * n, c, h, w)
