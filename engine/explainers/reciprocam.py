"""ReciproCAM (CNNs) and ViT-ReciproCAM: gradient-free saliency by feature masking, in exact fast form.

Both build N = h*w spatial masks on the last feature map (a 3x3 Gaussian kernel [[1,2,1],[2,4,2],[1,2,1]]/16
centred on each position, truncated at the borders, or a 1x1 "dirac" kernel), feed the N masked copies through the
rest of the network, and take the softmax probability of the target class of each copy, min-max normalised over the
copies, as the saliency of that position. A row of ones is prepended to the masks: copy 0 is the unmasked network, so
one pass gives the logits and the map.

``impl="reference"`` runs the N masked copies as one batch through the real modules of the network's tail: the test
oracle, and the path for heads the fast form does not cover. ``impl="fast"`` (the default) is exact algebra:

* ViT (METHODS.md section 1): masking is a per-token scalar, so it commutes with the k/v projections; with a head that
  reads only the class token, only the class-token query matters. The tail then runs on N vectors, not N x T tokens.
* CNN: the masks take only a few distinct values per position (0, 1/16, 1/8, 1/4 and 1 for the unmasked copy). A
  per-position non-linear part of the head is evaluated once per distinct value, and each copy's pooled features are
  a one-hot gather-sum of those; a flatten-then-linear head (VGG) sums per-position contributions of its first Linear
  the same way. With no per-position non-linearity (the usual pool-then-classify head) the masks act linearly: the
  N pooled vectors are one (N+1, hw) @ (hw, C) matmul.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from ..ops import mask_feature_map, mask_tokens
from .base import Explainer, minmax_normalise, register_explainer, resolve_target

GAUSSIAN_3X3 = ((1.0, 2.0, 1.0), (2.0, 4.0, 2.0), (1.0, 2.0, 1.0))


def spatial_masks(grid: tuple[int, int], kernel: str = "gaussian") -> Tensor:
    """The N = h*w spatial masks (N, h*w): kernel centred on position n, zero elsewhere, truncated at the borders."""
    h, w = grid
    if kernel == "dirac":
        return torch.eye(h * w)
    if kernel != "gaussian":
        raise InputError(f"kernel must be 'gaussian' or 'dirac', got {kernel!r}.")
    masks = torch.zeros(h * w, h, w)
    for i in range(h):
        for j in range(w):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        masks[i * w + j, i + di, j + dj] = GAUSSIAN_3X3[di + 1][dj + 1] / 16.0
    return masks.reshape(h * w, h * w)


def _saliency(logits_all: Tensor, target: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Copy 0 gives the logits; copies 1..N the target-class probabilities, min-max normalised into the map."""
    logits = logits_all[:, 0]
    t = resolve_target(logits, target)
    probs = logits_all[:, 1:].softmax(dim=-1)
    b, n, _ = probs.shape
    scores = probs.gather(-1, t.view(b, 1, 1).expand(b, n, 1)).squeeze(-1)
    return logits, minmax_normalise(scores).reshape(b, grid[0], grid[1])


def _chunks(batch: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunks of the batch for the reference path in eager mode; the whole batch while tracing for export."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or chunk_size <= 0:
        return [(0, batch)]
    return [(s, min(s + chunk_size, batch)) for s in range(0, batch, chunk_size)]


def _check_impl(impl: str) -> None:
    if impl not in ("fast", "reference"):
        raise InputError(f"impl must be 'fast' or 'reference', got {impl!r}.")


@register_explainer("vit-reciprocam")
class ViTReciproCAM(Explainer):
    """ViT-ReciproCAM (Byun & Lee): token masking at the first LayerNorm of the last encoder block."""

    backbone_kinds = ("vit",)

    @dataclasses.dataclass
    class Options:
        """Attributes:
        kernel: ``"gaussian"`` (3x3, the paper's default) or ``"dirac"`` (one token).
        cls_weight: mask weight of the class token (1, the paper's default, or 0).
        residual: ``"unmasked"`` (the last block's skip connection carries the unmodified block input, the paper's
            reading) or ``"masked"`` (the block input is masked like the LayerNorm output). Identical logits for a
            class-token head with ``cls_weight=1``.
        impl: ``"fast"`` (exact single-pass algebra) or ``"reference"`` (N masked copies through the real tail).
        chunk_size: images per reference batch in eager mode (bounds memory); ignored by the fast form.
        """

        kernel: str = "gaussian"
        cls_weight: float = 1.0
        residual: str = "unmasked"
        impl: str = "fast"
        chunk_size: int = 1

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        _check_impl(options.impl)
        if options.residual not in ("unmasked", "masked"):
            raise InputError(f"residual must be 'unmasked' or 'masked', got {options.residual!r}.")
        parts = backbone.vit_parts()
        reason = parts.fast_unsupported_reason
        if options.impl == "fast" and reason:
            raise UnsupportedModelError(
                f"the fast ViT-ReciproCAM does not apply to {backbone.library}/{backbone.name}: {reason}. "
                "Use the option impl='reference'."
            )
        self.grid = parts.grid
        spatial = spatial_masks(parts.grid, options.kernel)
        n, p = spatial.shape[0], parts.num_prefix_tokens
        masks = torch.cat([torch.full((n, p), float(options.cls_weight)), spatial], dim=1)
        masks = torch.cat([torch.ones(1, masks.shape[1]), masks], dim=0)  # copy 0: the unmasked network
        dtype = next(backbone.parameters()).dtype
        self.register_buffer("masks", masks.to(dtype), persistent=False)
        self.shared_query = bool((masks[:, :p] == 1).all())

    def forward(self, backbone: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        parts = backbone.vit_parts()
        tokens = parts.prefix(x)
        f = parts.norm1(tokens)
        if self.options.impl == "fast":
            logits_all = self._fast(parts, tokens, f)
        else:
            logits_all = torch.cat([self._reference(parts, tokens[a:b], f[a:b]) for a, b in self._chunks(x)], dim=0)
        return _saliency(logits_all, target, self.grid)

    def _chunks(self, x: Tensor) -> list[tuple[int, int]]:
        return _chunks(x.shape[0], self.options.chunk_size)

    def _fast(self, parts, tokens: Tensor, f: Tensor) -> Tensor:
        aw = parts.attn_weights
        b, t, d = f.shape
        heads = aw.num_heads
        dh = d // heads
        m = self.masks  # (N+1, T)
        k = F.linear(f, aw.wk).reshape(b, t, heads, dh)  # F Wk^T: the key bias only shifts all scores equally
        v = F.linear(f, aw.wv).reshape(b, t, heads, dh)  # F Wv^T: the value bias is added after the weighted sum
        mm = m[None, :, None, :]  # (1, N+1, 1, T)
        if self.shared_query:  # every copy keeps the class token whole: one query for all copies
            q = F.linear(f[:, 0], aw.wq, aw.bq).reshape(b, heads, dh)
            a = torch.einsum("bhd,bthd->bht", q, k)[:, None] * (dh**-0.5)  # (B, 1, H, T)
        else:  # copy n's class-token query is M_n,cls (F_cls Wq^T) + bq
            q = m[None, :, 0:1] * F.linear(f[:, 0], aw.wq)[:, None] + aw.bq  # (B, N+1, D)
            a = torch.einsum("bnhd,bthd->bnht", q.reshape(b, -1, heads, dh), k) * (dh**-0.5)  # (B, N+1, H, T)
        p = (mm * a).softmax(dim=-1) * mm  # softmax_j(M_nj a_hj) * M_nj
        o = torch.einsum("bnht,bthd->bnhd", p, v).reshape(b, m.shape[0], d) + aw.bv
        o = aw.proj(o)
        cls = tokens[:, None, 0]  # (B, 1, D)
        res = cls if self.options.residual == "unmasked" else cls * m[None, :, 0:1]
        y = res + parts.ls1(o)
        y = y + parts.ls2(parts.mlp(parts.norm2(y)))
        return parts.head_cls(y)  # (B, N+1, C)

    def _reference(self, parts, tokens: Tensor, f: Tensor) -> Tensor:
        b = f.shape[0]
        n1 = self.masks.shape[0]
        fm = mask_tokens(f, self.masks)
        if self.options.residual == "unmasked":
            res = tokens.repeat_interleave(n1, dim=0)
        else:
            res = mask_tokens(tokens, self.masks)
        y = res + parts.ls1(parts.attention(fm))
        y = y + parts.ls2(parts.mlp(parts.norm2(y)))
        return parts.head_tokens(y).reshape(b, n1, -1)


@register_explainer("reciprocam")
class ReciproCAM(Explainer):
    """ReciproCAM (Byun & Lee) for CNNs: spatial masks on the last feature map, fed through the rest of the head."""

    backbone_kinds = ("cnn",)

    @dataclasses.dataclass
    class Options:
        """Attributes:
        kernel: ``"gaussian"`` (3x3) or ``"dirac"``.
        impl: ``"fast"`` (distinct-mask-value algebra) or ``"reference"`` (N masked copies through the real head).
        layer: which feature map to mask: ``"features"`` (the last one) or a backbone-specific earlier one
            (``"pre_head"`` for timm EfficientNets: before the 1x1 head conv, so the head is non-linear per position;
            on real EfficientNet weights the masked copies there barely differ, so prefer ``"features"``).
        chunk_size: images per reference batch in eager mode.
        """

        kernel: str = "gaussian"
        impl: str = "fast"
        layer: str = "features"
        chunk_size: int = 1

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        _check_impl(options.impl)
        with torch.no_grad():
            probe = next(backbone.parameters())
            a = backbone.cnn_features(
                torch.zeros(1, 3, *input_size, dtype=probe.dtype, device=probe.device), options.layer
            )
        self.grid = (int(a.shape[2]), int(a.shape[3]))
        self.parts = backbone.cnn_head_parts(options.layer) if options.impl == "fast" else None
        if options.impl == "fast" and self.parts is None:
            raise UnsupportedModelError(
                f"the fast ReciproCAM does not know the head of {backbone.library}/{backbone.name}. "
                "Use the option impl='reference'."
            )
        spatial = spatial_masks(self.grid, options.kernel)
        masks = torch.cat([torch.ones(1, spatial.shape[1]), spatial], dim=0)  # copy 0: the unmasked network
        values = torch.unique(masks)  # the few distinct mask values
        onehot = (masks[:, :, None] == values[None, None, :]).to(masks.dtype)  # (N+1, hw, K)
        self.register_buffer("masks", masks.to(probe.dtype), persistent=False)
        self.register_buffer("values", values.to(probe.dtype), persistent=False)
        self.register_buffer("onehot", onehot.to(probe.dtype), persistent=False)
        if self.parts is not None and self.parts.reduce == "flatten":
            # first Linear of a flatten head, laid out (hw, C, O) once, so each position's contribution is a matmul
            # (a cache of a frozen weight: rebuild the explainer if that weight changes)
            first = self.parts.post[0]
            weight = first.weight.detach().reshape(first.out_features, -1, self.grid[0] * self.grid[1])
            self.register_buffer("flat_weight", weight.permute(2, 1, 0).contiguous(), persistent=False)

    def forward(self, backbone: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        a = backbone.cnn_features(x, self.options.layer)
        if self.options.impl == "fast":
            logits_all = self._fast(a)
        else:
            chunks = _chunks(x.shape[0], self.options.chunk_size)
            logits_all = torch.cat([self._reference(backbone, a[s:e]) for s, e in chunks], dim=0)
        return _saliency(logits_all, target, self.grid)

    def _fast(self, a: Tensor) -> Tensor:
        parts = self.parts
        b, c, h, w = a.shape
        k = self.values.shape[0]
        if parts.pointwise is None and parts.reduce == "avg":
            # no per-position non-linearity: the masks act linearly, one (N+1, hw) @ (hw, C) matmul per image
            pooled = torch.matmul(self.masks, a.flatten(2).transpose(1, 2)) / (h * w)  # (B, N+1, C)
            return parts.post(pooled)
        scaled = a[:, None] * self.values.view(1, k, 1, 1, 1)  # (B, K, C, h, w): each distinct mask value once
        if parts.pointwise is not None:
            scaled = parts.pointwise(scaled.reshape(b * k, c, h, w))
            scaled = scaled.reshape(b, k, *scaled.shape[1:])
        per_pos = scaled.flatten(3)  # (B, K, C', hw)
        if parts.reduce == "avg":
            # each copy's pooled features: a one-hot gather-sum over (position, distinct value), as one matmul
            gathered = per_pos.permute(0, 3, 1, 2).reshape(b, h * w * k, -1)  # (B, hw*K, C')
            pooled = torch.matmul(self.onehot.reshape(self.onehot.shape[0], -1), gathered) / (h * w)
            return parts.post(pooled)
        first = parts.post[0]  # flatten then Linear: sum the per-position contributions of the first layer
        contrib = torch.matmul(per_pos.permute(3, 0, 1, 2).reshape(h * w, b * k, -1), self.flat_weight)  # (hw, BK, O)
        hidden = torch.einsum("npk,bkpo->bno", self.onehot, contrib.reshape(h * w, b, k, -1).permute(1, 2, 0, 3))
        if first.bias is not None:
            hidden = hidden + first.bias
        return parts.post[1:](hidden)

    def _reference(self, backbone: nn.Module, a: Tensor) -> Tensor:
        b = a.shape[0]
        n1 = self.masks.shape[0]
        return backbone.cnn_head(mask_feature_map(a, self.masks), self.options.layer).reshape(b, n1, -1)
