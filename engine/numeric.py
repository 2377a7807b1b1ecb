"""Small numeric helpers with one home each: min-max scaling (torch, traceable) and a row softmax (NumPy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the helpers use tensor methods only: importing this module does not import torch
    from torch import Tensor


def minmax(x: Tensor, dim: int | tuple[int, ...] = -1, eps: float = 1e-12) -> Tensor:
    """Min-max scale ``x`` to [0, 1] over ``dim``; a constant slice becomes all zeros.

    Plain tensor ops (no data-dependent branches), so it traces into ONNX inside an explain graph.

    Args:
        x: any floating tensor.
        dim: the dimension(s) scaled together (e.g. ``-1`` for rows, ``(1, 2)`` for (N, h, w) maps).
        eps: the smallest span divided by; a span below it (a constant slice) gives zeros.
    """
    lo = x.amin(dim=dim, keepdim=True)
    hi = x.amax(dim=dim, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(eps)


def softmax(logits: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
    """Softmax over the last axis (stable: the row maximum is subtracted first).

    Args:
        logits: (..., K) scores.
        dtype: compute (and return) in this dtype; default the input's floating dtype (float32 for integers).
    """
    z = np.asarray(logits)
    z = z.astype(dtype if dtype is not None else (z.dtype if np.issubdtype(z.dtype, np.floating) else np.float32))
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    """A float32 or int NumPy view of a tensor (moved to the CPU) or an array, unchanged otherwise."""
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
