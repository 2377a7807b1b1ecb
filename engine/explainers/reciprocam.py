"""ReciproCAM (CNNs) and ViT-ReciproCAM: gradient-free saliency by feature masking, in exact fast form.

Both build N = h*w spatial masks on the last feature map (a 3x3 Gaussian kernel [[1,2,1],[2,4,2],[1,2,1]]/16
centred on each position, truncated at the borders, or a 1x1 "dirac" kernel), feed the N masked copies through the
rest of the network, and take the softmax probability of the target class of each copy, min-max normalised over the
copies, as the saliency of that position. A row of ones is prepended to the masks: copy 0 is the unmasked network, so
one pass gives the logits and the map.

``impl="reference"`` runs the N masked copies as one batch through the real modules of the network's tail: the test
oracle, and the path for heads the fast form does not cover. ``impl="fast"`` is exact algebra; ``impl="auto"`` (the
default) takes the fast form where it applies and otherwise the reference form, with one warning:

* ViT (METHODS.md section 1): masking is a per-token scalar, so it commutes with the k/v projections; with a head that
  reads only R prefix tokens (the class token; DeiT's class and distillation tokens), only their R queries matter. The
  tail then runs on N x R vectors, not N x T tokens.
* CNN: the masks take only a few distinct values per position (0, 1/16, 1/8, 1/4 and 1 for the unmasked copy). A
  per-position non-linear part of the head is evaluated once per distinct value, and each copy's pooled features are
  a one-hot gather-sum of those; a flatten-then-linear head (VGG) sums per-position contributions of its first Linear
  the same way. With no per-position non-linearity (the usual pool-then-classify head) the masks act linearly: the
  N pooled vectors are one (N+1, hw) @ (hw, C) matmul.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from ..numeric import minmax
from ..ops import mask_feature_map, mask_tokens
from .base import Explainer, register_explainer, resolve_target

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
    # [..., 0], not .squeeze(-1): with a dynamic batch the exporter cannot see that size and writes an If whose
    # branches (squeezed, not squeezed) differ in rank, which TensorRT's ONNX parser rejects (engine/trt_gate.py)
    scores = probs.gather(-1, t.view(b, 1, 1).expand(b, n, 1))[..., 0]
    return logits, minmax(scores).reshape(b, grid[0], grid[1])


def _chunks(batch: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunks of the batch for the reference path in eager mode; the whole batch while tracing for export."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or chunk_size <= 0:
        return [(0, batch)]
    return [(s, min(s + chunk_size, batch)) for s in range(0, batch, chunk_size)]


IMPLS = ("auto", "fast", "reference")


def _resolve_impl(impl: str, reason: str | None, method: str, backbone: nn.Module) -> str:
    """The form to run: ``"fast"`` or ``"reference"``.

    ``impl="auto"`` takes the fast form where it applies (``reason`` is None), else the reference form with one
    ``UserWarning`` naming the model and the reason; ``impl="fast"`` on a model it does not apply to raises.
    """
    if impl not in IMPLS:
        raise InputError(f"impl must be one of {IMPLS}, got {impl!r}.")
    if reason is None or impl == "reference":
        return impl if impl == "reference" else "fast"
    model = f"{backbone.library}/{backbone.name}"
    if impl == "fast":
        raise UnsupportedModelError(
            f"the fast {method} does not apply to {model}: {reason}. "
            "Use the option impl='reference' (or impl='auto', which falls back to it)."
        )
    warnings.warn(
        f"{method}: the exact fast form does not apply to {model}: {reason}. impl='auto' therefore runs the "
        "reference form (N masked copies through the real tail, many times the cost of one forward pass); "
        "pass impl='reference' to choose it explicitly and silence this warning.",
        UserWarning,
        stacklevel=5,  # the caller of build_graph (-> build_explainer -> __init__ -> here)
    )
    return "reference"


@register_explainer("vit-reciprocam")
class ViTReciproCAM(Explainer):
    """ViT-ReciproCAM (Byun & Lee): token masking at the first LayerNorm of the last encoder block.

    Masks: copy n multiplies the spatial mask of patch n into the patch tokens; every prefix token (class,
    distillation and register tokens alike) gets the weight ``cls_weight``, as the paper does for the class token;
    spatial masks apply to patch tokens only. The fast and the reference forms apply exactly these masks.

    The fast form needs a head that reads only some prefix tokens (``ViTParts.read_tokens``, e.g. the class token, or
    DeiT's class and distillation tokens; register tokens are masked but not read) and a plain multi-head attention in
    the last block. It computes the queries of the R read tokens only: copy n's query of read token r is
    ``M_n,r (F_r Wq^T) + bq`` (one shared query when every prefix mask value is 1), the attention scores are
    ``M_n,j (q_r . k_j)`` over all keys j, and the tail (output projection, residual, ls1, norm2, MLP, ls2) runs on
    (B, N+1, R, D) vectors before ``head_prefix``. ``self.impl`` is the form chosen (``options.impl`` stays as
    given: ``"auto"`` resolves per model).
    """

    backbone_kinds = ("vit",)

    @dataclasses.dataclass
    class Options:
        """Attributes:
        kernel: ``"gaussian"`` (3x3, the paper's default) or ``"dirac"`` (one token).
        cls_weight: mask weight of the class token (1, the paper's default, or 0). It applies to EVERY prefix
            token: the class token, DeiT's distillation token and register tokens; spatial masks apply to patch
            tokens only.
        residual: ``"unmasked"`` (the last block's skip connection carries the unmodified block input, the paper's
            reading) or ``"masked"`` (the block input is masked like the LayerNorm output). Identical logits for a
            prefix-token head with ``cls_weight=1``.
        impl: ``"auto"`` (the default: the fast form where it applies, else the reference form with one warning),
            ``"fast"`` (exact single-pass algebra; raises on a model it does not apply to, e.g. a head that averages
            all tokens) or ``"reference"`` (N masked copies through the real tail).
        chunk_size: images per reference batch in eager mode (bounds memory); ignored by the fast form.
        """

        kernel: str = "gaussian"
        cls_weight: float = 1.0
        residual: str = "unmasked"
        impl: str = "auto"
        chunk_size: int = 1

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        if options.residual not in ("unmasked", "masked"):
            raise InputError(f"residual must be 'unmasked' or 'masked', got {options.residual!r}.")
        parts = backbone.vit_parts()
        self.impl = _resolve_impl(options.impl, parts.fast_unsupported_reason, "ViT-ReciproCAM", backbone)
        self.read_tokens = tuple(int(r) for r in parts.read_tokens)  # non-empty where the fast form applies
        # a slice where the read tokens are contiguous (exports as Slice, not Gather), else an index list
        read = self.read_tokens
        contiguous = bool(read) and read == tuple(range(read[0], read[-1] + 1))
        self._read_index = slice(read[0], read[-1] + 1) if contiguous else list(read)
        self.grid = parts.grid
        spatial = spatial_masks(parts.grid, options.kernel)
        n, p = spatial.shape[0], parts.num_prefix_tokens
        masks = torch.cat([torch.full((n, p), float(options.cls_weight)), spatial], dim=1)
        masks = torch.cat([torch.ones(1, masks.shape[1]), masks], dim=0)  # copy 0: the unmasked network
        dtype = next(backbone.parameters()).dtype
        self.register_buffer("masks", masks.to(dtype), persistent=False)
        self.shared_query = bool((masks[:, :p] == 1).all())

    def forward(self, backbone: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return _saliency(self.copy_logits(backbone, x), target, self.grid)

    def copy_logits(self, backbone: nn.Module, x: Tensor) -> Tensor:
        """The logits of every copy (B, N+1, C): copy 0 is the unmasked network, copy n is masked around patch n."""
        parts = backbone.vit_parts()
        tokens = parts.prefix(x)
        f = parts.norm1(tokens)
        if self.impl == "fast":
            return self._fast(parts, tokens, f)
        return torch.cat([self._reference(parts, tokens[a:b], f[a:b]) for a, b in self._chunks(x)], dim=0)

    def _chunks(self, x: Tensor) -> list[tuple[int, int]]:
        return _chunks(x.shape[0], self.options.chunk_size)

    def _fast(self, parts, tokens: Tensor, f: Tensor) -> Tensor:
        aw = parts.attn_weights
        b, t, d = f.shape
        heads = aw.num_heads
        dh = d // heads
        m = self.masks  # (N+1, T)
        n1 = m.shape[0]
        read = self._read_index  # the R prefix tokens the head reads
        r = len(self.read_tokens)
        k = F.linear(f, aw.wk).reshape(b, t, heads, dh)  # F Wk^T: the key bias only shifts all scores equally
        v = F.linear(f, aw.wv).reshape(b, t, heads, dh)  # F Wv^T: the value bias is added after the weighted sum
        mm = m[None, :, None, None, :]  # (1, N+1, 1, 1, T)
        mr = m[:, read]  # (N+1, R): the read tokens' mask values
        if self.shared_query:  # every copy keeps the prefix tokens whole: one query per read token for all copies
            q = F.linear(f[:, read], aw.wq, aw.bq).reshape(b, r, heads, dh)
            a = torch.einsum("brhd,bthd->brht", q, k)[:, None] * (dh**-0.5)  # (B, 1, R, H, T)
        else:  # copy n's query of read token r is M_n,r (F_r Wq^T) + bq
            q = mr[None, :, :, None] * F.linear(f[:, read], aw.wq)[:, None] + aw.bq  # (B, N+1, R, D)
            a = torch.einsum("bnrhd,bthd->bnrht", q.reshape(b, n1, r, heads, dh), k) * (dh**-0.5)  # (B,N+1,R,H,T)
        p = (mm * a).softmax(dim=-1) * mm  # softmax_j(M_nj a_rhj) * M_nj
        o = torch.einsum("bnrht,bthd->bnrhd", p, v).reshape(b, n1, r, d) + aw.bv
        o = aw.proj(o)
        pre = tokens[:, None, read]  # (B, 1, R, D): the read tokens' block input
        res = pre if self.options.residual == "unmasked" else pre * mr[None, :, :, None]
        y = res + parts.ls1(o)
        y = y + parts.ls2(parts.mlp(parts.norm2(y)))
        return parts.head_prefix(y)  # (B, N+1, C)

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
        impl: ``"auto"`` (the default: the fast form where the backbone describes its head, else the reference
            form with one warning), ``"fast"`` (distinct-mask-value algebra; raises where the head is unknown) or
            ``"reference"`` (N masked copies through the real head).
        layer: which feature map to mask: ``"features"`` (the last one) or a backbone-specific earlier one
            (``"pre_head"`` for timm EfficientNets: before the 1x1 head conv, so the head is non-linear per position;
            on real EfficientNet weights the masked copies there barely differ, so prefer ``"features"``).
        chunk_size: images per reference batch in eager mode.
        """

        kernel: str = "gaussian"
        impl: str = "auto"
        layer: str = "features"
        chunk_size: int = 1

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        if options.impl not in IMPLS:
            raise InputError(f"impl must be one of {IMPLS}, got {options.impl!r}.")
        with torch.no_grad():
            probe = next(backbone.parameters())
            a = backbone.cnn_features(
                torch.zeros(1, 3, *input_size, dtype=probe.dtype, device=probe.device), options.layer
            )
        self.grid = (int(a.shape[2]), int(a.shape[3]))
        parts = backbone.cnn_head_parts(options.layer) if options.impl != "reference" else None
        reason = None if parts is not None else "its head is not of a known pointwise -> pool/flatten -> Linear form"
        # the resolved form (options.impl stays as given: "auto" resolves per model)
        self.impl = _resolve_impl(options.impl, reason, "ReciproCAM", backbone)
        self.parts = parts if self.impl == "fast" else None
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
        if self.impl == "fast":
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
