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

import difflib
import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from . import lora


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

    The first ``num_prefix_tokens`` tokens are prefix tokens (class, distillation and register tokens); the rest are
    the ``grid`` of patch tokens. When the head reads only some prefix tokens, ``read_tokens`` lists their indices and
    ``head_prefix`` maps their output vectors to the logits, so ``head_prefix(y[:, read_tokens])`` equals
    ``head_tokens(y)``: (0,) for a class-token head, (0, 1) for DeiT's distilled head (class and distillation tokens);
    register tokens are prefix tokens that the head does not read. ``head_prefix`` is None when the head pools all
    tokens (average or attention pooling), where no cheap exact form exists.
    """

    prefix: Callable[[Tensor], Tensor]  # image (B,3,H,W) -> input tokens of the last block (B,T,D)
    norm1: nn.Module
    attention: Callable[[Tensor], Tensor]  # the real attention module: (B,T,D) -> (B,T,D)
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    head_tokens: Callable[[Tensor], Tensor]  # output tokens of the last block (B,T,D) -> logits (B,C)
    head_prefix: Callable[[Tensor], Tensor] | None  # read prefix-token vectors (...,R,D) -> logits (...,C); None: pools
    read_tokens: tuple[int, ...]  # indices of the R prefix tokens that head_prefix reads, e.g. (0,) or (0, 1)
    attn_weights: AttentionWeights | None  # None when the attention is not a plain MHA (qk-norm, gates, ...)
    grid: tuple[int, int]
    num_prefix_tokens: int

    @property
    def fast_unsupported_reason(self) -> str | None:
        """Why the exact fast ViT-ReciproCAM does not apply to this model; None when it does."""
        if self.head_prefix is None:
            return "the classifier head pools all tokens (e.g. averages them) instead of reading prefix tokens only"
        if self.attn_weights is None:
            return "the last block's attention is not a plain multi-head attention (qk-norm, gate or custom op)"
        if not self.read_tokens or not all(0 <= r < self.num_prefix_tokens for r in self.read_tokens):
            return (
                f"the head reads tokens {tuple(self.read_tokens)}, which are not among the model's "
                f"{self.num_prefix_tokens} prefix tokens"
            )
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

    # --- taps: named intermediate outputs, as maps -------------------------------------------------------------------
    #: Default taps by fnmatch pattern of the model name, first match wins: a list of dotted module names of the
    #: wrapped model, or a function of the wrapped model that returns one. Each adapter sets its library's table.
    DEFAULT_TAPS: ClassVar[dict[str, list[str] | Callable[[nn.Module], list[str]]]] = {}

    @property
    def prefix_tokens(self) -> int:
        """Tokens in front of a ViT's patch tokens (class, distillation, register tokens); 0 for a CNN."""
        return 0

    @property
    def tokens_batch_first(self) -> bool:
        """Whether token outputs are (B, T, D) (else (T, B, D), a sequence-first transformer)."""
        return True

    def default_taps(self) -> list[str] | None:
        """Three taps that suit a trainable explainer (the outputs of the last stages or blocks, as T-TAME's paper
        chose them), from :attr:`DEFAULT_TAPS`; None when this model has none."""
        for pattern, taps in self.DEFAULT_TAPS.items():
            if fnmatch.fnmatchcase(self.name, pattern):
                try:
                    return list(taps(self.model)) if callable(taps) else list(taps)
                except AttributeError:  # the container the rule expects is missing
                    return None
        return None

    def tap_names(self) -> list[str]:
        """Names accepted by :meth:`forward_taps`: dotted module paths of the wrapped model."""
        return [n for n, _ in self.model.named_modules() if n]

    def forward_taps(self, x: Tensor, taps: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the classifier and capture the outputs of the named submodules (as the modules return them).

        Raises:
            UnsupportedModelError: a tap names no submodule; the message lists close names.
        """
        modules = dict(self.model.named_modules())
        missing = [t for t in taps if t not in modules]
        if missing:
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

    def tap_maps(self, x: Tensor, taps: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and each tap's output as a (B, C, h, w) map.

        CNN maps pass unchanged; ViT tokens drop the :attr:`prefix_tokens` and the patch tokens are reshaped to
        their grid (token-to-map), whatever the token layout (:attr:`tokens_batch_first`).

        Raises:
            UnsupportedModelError: a tap's output is not a map or tokens on a grid (the message names the tap).
        """
        logits, outs = self.forward_taps(x, taps)
        return logits, {t: self.tap_to_map(t, outs[t]) for t in taps}

    def tap_to_map(self, tap: str, out: Tensor | tuple) -> Tensor:
        """One tap's raw output as a (B, C, h, w) map (see :meth:`tap_maps`)."""
        if isinstance(out, tuple | list):
            out = out[0]
        if not isinstance(out, Tensor):
            raise UnsupportedModelError(f"tap {tap!r} does not output a tensor; choose another module.")
        if out.ndim == 4:
            return out
        if out.ndim == 3:
            tokens = out if self.tokens_batch_first else out.transpose(0, 1)
            patches = tokens[:, self.prefix_tokens :]  # (B, N, D)
            h, w = self._token_grid(tap, int(tokens.shape[1]))
            return patches.transpose(1, 2).reshape(-1, patches.shape[-1], h, w)
        raise UnsupportedModelError(
            f"tap {tap!r} outputs shape {tuple(out.shape)}; taps must give (B, C, h, w) maps or (B, T, D) "
            "tokens. Choose another module (adapter.tap_names())."
        )

    def _token_grid(self, tap: str, tokens: int) -> tuple[int, int]:
        prefix = self.prefix_tokens
        n = tokens - prefix
        side = math.isqrt(max(n, 0))
        if n > 0 and side * side == n:
            return side, side
        raise UnsupportedModelError(
            f"tap {tap!r} has {tokens} tokens; with {prefix} prefix token(s) the {n} patch tokens do "
            f"not form a square grid. Tap an encoder block of {self.library}/{self.name}."
        )

    # --- the slot for trainable deltas (LoRA), see engine/backbones/lora.py ------------------------------------------
    def add_lora(
        self, targets: list[str], rank: int = 8, alpha: float = 16.0, parts: list[str] | None = None
    ) -> list[str]:
        """Put LoRA deltas on modules of the wrapped model (Linear, 1x1 conv, or attention q/k/v rows).

        The frozen weights stay; the deltas train, are saved with the explainer head (:meth:`delta_state_dict`) and
        are merged into the weights at export (:meth:`merge_deltas`).
        """
        return lora.add(self.model, targets, rank, alpha, parts)

    def delta_parameters(self) -> list[nn.Parameter]:
        """The trainable delta parameters (empty without deltas)."""
        return lora.parameters(self.model)

    def delta_state_dict(self) -> dict[str, Tensor]:
        """The deltas by ``<module>.<part>.lora_a|lora_b`` (module names of the wrapped model)."""
        return lora.state_dict(self.model)

    def load_delta_state_dict(self, state: dict[str, Tensor]) -> str | None:
        """Load deltas; None if they fit, else what did not."""
        return lora.load_state_dict(self.model, state)

    def merge_deltas(self) -> int:
        """Fold the deltas into the frozen weights (exact), leaving a plain model; returns how many were merged."""
        return lora.merge(self.model)

    def base_state_dict(self) -> dict[str, Tensor]:
        """The adapter's state with deltas merged, under a plain model's keys (what a whole-graph file stores)."""
        return lora.base_state_dict(self)


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
