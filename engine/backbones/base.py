"""Backbone adapter: one interface over timm, torchvision and open_clip classifiers.

An adapter is an ``nn.Module`` whose ``forward`` is the plain classifier (image -> logits). It also exposes the pieces
that explainers need:

* ViTs: :meth:`vit_parts` returns the split of the network at the first LayerNorm of the last encoder block
  (ViT-ReciproCAM's split point), plus the raw q/k/v weights the exact fast form needs.
* CNNs: :meth:`cnn_features` / :meth:`cnn_head` split the network at its last feature map; :meth:`cnn_head_parts`
  describes the head as ``pointwise -> reduce -> post`` when it has that shape (ReciproCAM's fast form).
* Every backbone: :meth:`forward_taps` returns logits plus named intermediate feature maps (trainable explainers);
  :meth:`encoder_taps` names the encoder's sequence of maps h^(0..k) (ALA's taps).
* ViTs: :meth:`set_input_size` resizes the absolute position embedding to another input resolution.
* The slot for trainable deltas: :meth:`add_lora` / :meth:`lora_targets` (LoRA, merged into the weights at export).
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

from ..errors import InputError, UnsupportedModelError
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
            tokens = out if self._tap_batch_first(tap) else out.transpose(0, 1)
            patches = tokens[:, self.prefix_tokens :]  # (B, N, D)
            h, w = self._token_grid(tap, int(tokens.shape[1]))
            return patches.transpose(1, 2).reshape(-1, patches.shape[-1], h, w)
        raise UnsupportedModelError(
            f"tap {tap!r} outputs shape {tuple(out.shape)}; taps must give (B, C, h, w) maps or (B, T, D) "
            "tokens. Choose another module (adapter.tap_names())."
        )

    def _tap_batch_first(self, tap: str) -> bool:
        """Whether this tap's token output is (B, T, D); :attr:`tokens_batch_first` unless an adapter knows better."""
        return self.tokens_batch_first

    def _token_grid(self, tap: str, tokens: int) -> tuple[int, int]:
        prefix = self.prefix_tokens
        n = tokens - prefix
        grid = self.patch_grid
        if grid is not None and grid[0] * grid[1] == n:  # the model's own grid (also a non-square one)
            return grid
        side = math.isqrt(max(n, 0))
        if n > 0 and side * side == n:
            return side, side
        raise UnsupportedModelError(
            f"tap {tap!r} has {tokens} tokens; with {prefix} prefix token(s) the {n} patch tokens do "
            f"not form a square grid. Tap an encoder block of {self.library}/{self.name}."
        )

    # --- the encoder as a sequence of maps (ALA's taps) ---------------------------------------------------------------
    def encoder_taps(self) -> list[str]:
        """The encoder's tap sequence h^(0), h^(1), ..., h^(k), as dotted module names of the wrapped model.

        h^(0) is the input of the first encoder block (ViT: the embedded tokens, after the pre-norm; CNN: the stem's
        output) and h^(i) the output of block (CNN: stage) i, so the last name is the encoder's last block. Every
        name's output becomes a (B, C, h, w) map through :meth:`tap_maps`.

        Raises:
            UnsupportedModelError: the adapter knows no tap sequence for this model; the message says to pass the
                tap module names explicitly.
        """
        raise UnsupportedModelError(
            f"{self.library}/{self.name}: no encoder tap sequence is known for this model; pass the tap module names "
            "explicitly (ALA: option tap_modules; list them with adapter.tap_names())."
        )

    def _unknown_encoder(self, what: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.library}/{self.name}: no encoder tap sequence is known for {what}; pass the tap module names "
            "explicitly (ALA: option tap_modules, the stem's output and each stage's output in order; list the names "
            "with adapter.tap_names())."
        )

    # --- input resolution (ViTs: the patch grid of the position embedding) -------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int] | None:
        """A ViT's patch size (height, width); None for a CNN."""
        return None

    @property
    def native_input_size(self) -> tuple[int, int] | None:
        """The input size (height, width) the model is set up for: a ViT's patch grid times its patch size (changed
        by :meth:`set_input_size`); None for a CNN, which takes any size."""
        return None

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """A ViT's patch grid (rows, columns) at :attr:`native_input_size`; None for a CNN."""
        size, patch = self.native_input_size, self.patch_size
        if size is None or patch is None:
            return None
        return size[0] // patch[0], size[1] // patch[1]

    #: Whether the library accepts only square inputs (torchvision's ViT checks height == width == image_size).
    square_inputs_only: ClassVar[bool] = False

    def set_input_size(self, size: int | tuple[int, int]) -> None:
        """Make a ViT accept inputs of ``size`` (height, width): resample its absolute position embedding over the
        patch grid and update the size attributes the library checks. A no-op for CNNs and when the size is already
        the model's.

        The patch-grid part of the position embedding is resampled with :func:`resample_patch_grid` (bicubic,
        ``align_corners=False``, antialiased: the rule of timm's and open_clip's own resampling); the prefix-token
        entries (class token, ...) are kept as they are. The change is in place (the same ``nn.Parameter`` holds the
        new values) and deterministic.

        Raises:
            InputError: a side is not a positive multiple of the patch size (the message names the valid sizes
                nearby), or a non-square size for a library that accepts only square inputs.
        """
        if self.kind != "vit":
            return
        size = self._checked_input_size(size)
        if size == self.native_input_size:
            return
        old_grid = self.patch_grid
        patch = self.patch_size
        self._set_input_size(size, (size[0] // patch[0], size[1] // patch[1]), old_grid)

    def _set_input_size(self, size: tuple[int, int], grid: tuple[int, int], old_grid: tuple[int, int]) -> None:
        raise UnsupportedModelError(f"{self.library}/{self.name}: changing the input size is not supported.")

    def _checked_input_size(self, size: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (
            not isinstance(size, tuple | list)
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        ):
            raise InputError(f"input size must be an int or a (height, width) pair of ints, got {size!r}.")
        size = (int(size[0]), int(size[1]))
        patch = self.patch_size
        for side, p in zip(size, patch, strict=True):
            if side > 0 and side % p == 0:
                continue
            lower, upper = (side // p) * p, (side // p + 1) * p
            nearby = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise InputError(
                f"{self.library}/{self.name} cannot take input size {size[0]}x{size[1]}: {side} is not a positive "
                f"multiple of the patch size {p}; use {nearby}."
            )
        if self.square_inputs_only and size[0] != size[1]:
            raise InputError(
                f"{self.library}/{self.name} accepts square inputs only, got {size[0]}x{size[1]}; use "
                f"{size[0]}x{size[0]} or {size[1]}x{size[1]}."
            )
        return size

    # --- the slot for trainable deltas (LoRA), see engine/backbones/lora.py ------------------------------------------
    def add_lora(
        self,
        targets: list[str] | list[tuple[str, list[str] | None]],
        rank: int = 8,
        alpha: float = 16.0,
        parts: list[str] | None = None,
    ) -> list[str]:
        """Put LoRA deltas on modules of the wrapped model (Linear, 1x1 conv, or attention q/k/v rows).

        The frozen weights stay; the deltas train, are saved with the explainer head (:meth:`delta_state_dict`) and
        are merged into the weights at export (:meth:`merge_deltas`).

        Args:
            targets: module names, or ``(name, parts)`` pairs as :meth:`lora_targets` gives them (a pair's parts
                win over ``parts``).
            rank: LoRA rank r.
            alpha: LoRA alpha (the delta is scaled by alpha / r).
            parts: q, k and/or v rows for attention modules and fused qkv Linears (see :func:`lora.add`).

        Returns:
            The target module names.
        """
        return lora.add(self.model, targets, rank, alpha, parts)

    def add_lora_block(self, block: str | None = None, rank: int = 8, alpha: float = 16.0) -> list[str]:
        """LoRA on :meth:`lora_targets` ``(block)`` (default: the last encoder block's attention q and v); returns the
        target module names."""
        return self.add_lora(self.lora_targets(block), rank, alpha)

    def lora_targets(self, block: str | None = None) -> list[tuple[str, list[str] | None]]:
        """The ``(module name, parts)`` pairs that put LoRA on one encoder block (for :meth:`add_lora`).

        ViTs: the block's attention q and v projections (timm: the fused ``attn.qkv`` Linear; open_clip and
        torchvision: the ``nn.MultiheadAttention``), parts ``["q", "v"]``. CNNs: every 1x1 ``nn.Conv2d`` with
        ``groups=1`` and every ``nn.Linear`` inside the block, parts None.

        Args:
            block: a dotted module name of the wrapped model. ViTs: one of the encoder blocks
                (``encoder_taps()[1:]``); default the last. CNNs: any module; default the last of
                :meth:`encoder_taps` that holds such layers (e.g. ``blocks.6`` of ``tf_efficientnet_lite0``).

        Raises:
            UnsupportedModelError: the block is unknown, or holds nothing LoRA applies to (the message names blocks
                that do, or says to pass targets to :meth:`add_lora` explicitly).
        """
        modules = dict(self.model.named_modules())
        if block is not None and block not in modules:
            close = difflib.get_close_matches(block, list(modules), n=3)
            raise UnsupportedModelError(
                f"{self.library}/{self.name} has no block {block!r} for LoRA; closest names: {close}. "
                "Encoder blocks: adapter.encoder_taps()."
            )
        if self.kind == "vit":
            blocks = self.encoder_taps()[1:]
            block = blocks[-1] if block is None else block
            if block not in blocks:
                raise UnsupportedModelError(
                    f"{block!r} is not an encoder block of {self.library}/{self.name}; LoRA on a ViT goes on a "
                    f"block's attention: name one of {blocks[0]} ... {blocks[-1]} (adapter.encoder_taps()[1:]), or "
                    "pass targets to add_lora() explicitly."
                )
            return self._vit_lora_targets(block)
        if block is not None:
            found = _cnn_lora_targets(self.model, block)
            if not found:
                raise UnsupportedModelError(
                    f"block {block!r} of {self.library}/{self.name} has no 1x1 nn.Conv2d (groups=1) or nn.Linear to "
                    f"put LoRA on; blocks that have: {self._cnn_blocks_with_lora_targets()}, or pass targets to "
                    "add_lora() explicitly."
                )
            return found
        for tap in reversed(self.encoder_taps()):
            found = _cnn_lora_targets(self.model, tap)
            if found:
                return found
        raise UnsupportedModelError(
            f"no encoder stage of {self.library}/{self.name} has a 1x1 nn.Conv2d (groups=1) or an nn.Linear for LoRA "
            f"(stages: {self.encoder_taps()}); pass targets to add_lora() explicitly (LoRA applies to nn.Linear, 1x1 "
            "nn.Conv2d and nn.MultiheadAttention modules)."
        )

    def _cnn_blocks_with_lora_targets(self) -> list[str]:
        try:
            taps = self.encoder_taps()
        except UnsupportedModelError:
            return []
        return [t for t in taps if _cnn_lora_targets(self.model, t)]

    def _vit_lora_targets(self, block: str) -> list[tuple[str, list[str] | None]]:
        raise UnsupportedModelError(f"{self.library}/{self.name}: no LoRA targets are known; pass them to add_lora().")

    def _attention_target(self, name: str) -> list[tuple[str, list[str] | None]]:
        """``[(name, ["q", "v"])]`` after checking that ``name`` is a packed q/k/v projection LoRA can split."""
        module = dict(self.model.named_modules()).get(name)
        fused = isinstance(module, nn.Linear) and module.out_features == 3 * module.in_features
        packed = isinstance(module, nn.MultiheadAttention) and getattr(module, "_qkv_same_embed_dim", False)
        if not (fused or packed):
            raise UnsupportedModelError(
                f"{self.library}/{self.name}: {name!r} is {type(module).__name__ if module is not None else 'missing'}"
                ", not a packed q/k/v projection (a fused qkv nn.Linear or an nn.MultiheadAttention); pass LoRA "
                "targets to add_lora() explicitly."
            )
        return [(name, ["q", "v"])]

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


def resample_patch_grid(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], prefix: int) -> Tensor:
    """A position embedding resampled from one patch grid to another; the first ``prefix`` entries are kept.

    Args:
        pos: ``(N, D)`` or ``(1, N, D)`` with ``N = prefix + old_grid[0] * old_grid[1]`` (row-major grid).
        old_grid: the (rows, columns) the embedding is laid out on.
        new_grid: the (rows, columns) wanted.
        prefix: entries in front of the grid (class token, ...), which are not interpolated.

    Returns:
        The same layout with ``prefix + new_grid[0] * new_grid[1]`` entries: bicubic interpolation of the grid
        (``align_corners=False``, antialiased; float64 stays float64, other dtypes are computed in float32).
    """
    squeeze = pos.ndim == 2
    p = pos[None] if squeeze else pos
    n, d = int(p.shape[1]), int(p.shape[2])
    if n != prefix + old_grid[0] * old_grid[1]:
        raise UnsupportedModelError(
            f"the position embedding has {n} entries, not {prefix} prefix + {old_grid[0]}x{old_grid[1]} grid entries."
        )
    head, grid = p[:, :prefix], p[:, prefix:]
    work = grid if grid.dtype == torch.float64 else grid.float()
    work = work.reshape(p.shape[0], old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    work = nn.functional.interpolate(work, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    work = work.permute(0, 2, 3, 1).reshape(p.shape[0], new_grid[0] * new_grid[1], d).to(grid.dtype)
    out = torch.cat([head, work], dim=1)
    return out[0] if squeeze else out


def _cnn_lora_targets(model: nn.Module, block: str) -> list[tuple[str, list[str] | None]]:
    """Every 1x1 ``nn.Conv2d`` with ``groups=1`` and every ``nn.Linear`` inside ``model``'s module ``block``."""
    found = []
    for name, mod in model.get_submodule(block).named_modules():
        pointwise = isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1) and mod.groups == 1
        if pointwise or isinstance(mod, nn.Linear):
            found.append((".".join(n for n in (block, name) if n), None))
    return found


def children_names(model: nn.Module, path: str, kind: type[nn.Module] | None = None) -> list[str]:
    """Dotted names of the children of ``model``'s module ``path`` (only those of class ``kind`` when given)."""
    container = model.get_submodule(path)
    return [f"{path}.{n}" for n, m in container.named_children() if kind is None or isinstance(m, kind)]


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
