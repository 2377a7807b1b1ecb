"""Backbone adapter: one interface over timm, torchvision and open_clip classifiers.

An adapter is an ``nn.Module`` whose ``forward`` is the plain classifier (image -> logits). It also exposes the pieces
that explainers need:

* ViTs: :meth:`vit_parts` returns the split of the network at the first LayerNorm of the last encoder block
  (ViT-ReciproCAM's split point), plus the raw q/k/v weights the exact fast form needs.
* CNNs: :meth:`cnn_features` / :meth:`cnn_head` split the network at its last feature map; :meth:`cnn_head_parts`
  describes the head as ``pointwise -> reduce -> post`` when it has that shape (ReciproCAM's fast form).
* Every backbone: :meth:`forward_taps` returns logits plus named intermediate feature maps (trainable explainers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError


@dataclass
class AttentionWeights:
    """The projections of a standard multi-head self-attention: ``q = F Wq^T + bq`` etc."""

    wq: Tensor
    bq: Tensor
    wk: Tensor
    bk: Tensor
    wv: Tensor
    bv: Tensor
    num_heads: int
    proj: nn.Module  # output projection (Linear)


@dataclass
class ViTParts:
    """A ViT split at the first LayerNorm of its last encoder block.

    ``head_tokens(block(prefix(x)))`` reproduces the classifier exactly, where the last block is
    ``y = x + ls1(attention(norm1(x))); y = y + ls2(mlp(norm2(y)))``.
    """

    prefix: Callable[[Tensor], Tensor]  # image (B,3,H,W) -> input tokens of the last block (B,T,D)
    norm1: nn.Module
    attention: Callable[[Tensor], Tensor]  # the real attention module: (B,T,D) -> (B,T,D)
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    head_tokens: Callable[[Tensor], Tensor]  # output tokens of the last block (B,T,D) -> logits (B,C)
    head_cls: Callable[[Tensor], Tensor] | None  # class-token vectors (...,D) -> logits; None if the head pools tokens
    attn_weights: AttentionWeights | None  # None when the attention is not a plain MHA (qk-norm, gates, ...)
    grid: tuple[int, int]
    num_prefix_tokens: int

    @property
    def fast_unsupported_reason(self) -> str | None:
        if self.head_cls is None:
            return "the classifier head pools all tokens, not only the class token"
        if self.attn_weights is None:
            return "the last block's attention is not a plain multi-head attention (qk-norm, gate or custom op)"
        if self.num_prefix_tokens != 1:
            return f"the model has {self.num_prefix_tokens} prefix tokens; the fast form supports exactly one"
        return None


@dataclass
class CNNHeadParts:
    """A CNN head of the form ``post(reduce(pointwise(A)))``.

    Attributes:
        pointwise: a per-position map on the feature map (1x1 convs, BatchNorm, activations); None for identity.
        reduce: ``"avg"`` (global average pool) or ``"flatten"`` (flatten in (C, h, w) order; ``post[0]`` is Linear).
        post: the rest of the head on vectors.
    """

    pointwise: nn.Module | None
    reduce: str
    post: nn.Module


class BackboneAdapter(nn.Module):
    """Base class of all backbone adapters. ``forward(x)`` returns the classifier's logits."""

    kind: str = ""  # "vit" or "cnn"
    library: str = ""

    def __init__(self, model: nn.Module, name: str, num_classes: int):
        super().__init__()
        self.model = model
        self.name = name
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    # --- ViT interface -------------------------------------------------------------------------------------------
    def vit_parts(self) -> ViTParts:
        raise UnsupportedModelError(f"{self.library}/{self.name} is not a ViT; use a CNN explainer (e.g. reciprocam).")

    # --- CNN interface -------------------------------------------------------------------------------------------
    def cnn_features(self, x: Tensor, layer: str = "features") -> Tensor:
        raise UnsupportedModelError(
            f"{self.library}/{self.name} is not a CNN; use a ViT explainer (e.g. vit-reciprocam)."
        )

    def cnn_head(self, a: Tensor, layer: str = "features") -> Tensor:
        raise UnsupportedModelError(f"{self.library}/{self.name} is not a CNN.")

    def cnn_head_parts(self, layer: str = "features") -> CNNHeadParts | None:
        return None

    # --- taps for trainable explainers ---------------------------------------------------------------------------
    def tap_names(self) -> list[str]:
        """Names accepted by :meth:`forward_taps`: dotted module paths of the wrapped model."""
        return [n for n, _ in self.model.named_modules() if n]

    def forward_taps(self, x: Tensor, taps: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the classifier and capture the outputs of the named submodules.

        Raises:
            UnsupportedModelError: a tap names no submodule; the message lists close names.
        """
        modules = dict(self.model.named_modules())
        missing = [t for t in taps if t not in modules]
        if missing:
            import difflib

            hints = {t: difflib.get_close_matches(t, list(modules), n=3) for t in missing}
            raise UnsupportedModelError(
                f"{self.library}/{self.name} has no submodule(s) {missing} to tap; closest names: {hints}. "
                "List them with adapter.tap_names()."
            )
        captured: dict[str, Tensor] = {}
        handles = [
            modules[t].register_forward_hook(lambda _m, _i, out, t=t: captured.__setitem__(t, out)) for t in taps
        ]
        try:
            logits = self.forward(x)
        finally:
            for h in handles:
                h.remove()
        return logits, captured


def mha_weights(mha: nn.MultiheadAttention) -> AttentionWeights | None:
    """q/k/v weights of a ``torch.nn.MultiheadAttention`` with packed in-projection; None if not packed."""
    if not getattr(mha, "_qkv_same_embed_dim", False) or mha.bias_k is not None or mha.add_zero_attn:
        return None
    d = mha.embed_dim
    w = mha.in_proj_weight
    b = mha.in_proj_bias if mha.in_proj_bias is not None else torch.zeros(3 * d, dtype=w.dtype, device=w.device)
    return AttentionWeights(
        w[:d], b[:d], w[d : 2 * d], b[d : 2 * d], w[2 * d :], b[2 * d :], mha.num_heads, mha.out_proj
    )


def mha_self_attention(mha: nn.MultiheadAttention) -> Callable[[Tensor], Tensor]:
    """Self-attention through the real module (batch-first tensors); the op the reference path runs."""

    def run(f: Tensor) -> Tensor:
        if mha.batch_first:
            return mha(f, f, f, need_weights=False)[0]
        ft = f.transpose(0, 1)
        return mha(ft, ft, ft, need_weights=False)[0].transpose(0, 1)

    return run
