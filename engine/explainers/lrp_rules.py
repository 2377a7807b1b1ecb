"""LRP rules as explicit tensor ops (no autograd): the relevance of one layer's input from its output's relevance.

Every rule here is written with ordinary, traceable ops (convolutions, transposed convolutions, matmuls, pads and
slices), so that a relevance pass built from them exports to ONNX and OpenVINO like any forward pass. Shapes that the
ops depend on (paddings, output sizes) are read off the tensors as Python ints: constants in a traced graph, whose
spatial size is fixed (only the batch axis is dynamic).

Conventions (the rules of Montavon et al., "Layer-wise relevance propagation: an overview", in the forms that the LRP
for ResNet authors and zennit use; ``a`` the layer input, ``W`` its weight, ``R`` the relevance of its output):

* ``epsilon``: ``R_in = a * W^T (R / stab(W a + b))``; the bias is part of ``z``, so it absorbs relevance.
* ``z_plus``: the positive contributions only, ``z+_ij = a+_i w+_ij + a-_i w-_ij`` (for ``a >= 0``, the usual
  ``a_i w+_ij``); ``R_in = sum_j z+_ij / (z+_j + eps) R_j``. The bias is ignored (the authors zero the Linear bias;
  zennit's ``ZPlus(zero_params="bias")``), so as ``eps -> 0`` the rule conserves wherever ``z+_j > 0``.
* ``alpha_beta``: ``R_in = sum_j (alpha z+_ij / stab(z+_j) - beta z-_ij / stab(z-_j)) R_j`` with ``z-`` the negative
  contributions; bias ignored; ``alpha - beta = 1``.
* ``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1`` (zennit's stabiliser): the sign-aware epsilon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), F.pad's order for the last two dims


def stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps * sign(z)`` with ``sign(0) = +1``: a denominator that is never 0 and keeps ``z``'s sign."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


@dataclass(frozen=True)
class RuleConfig:
    """The rule of the conv and linear layers and its parameters (see the module docstring)."""

    rule: str = "z_plus"
    epsilon: float = 1e-5
    alpha: float = 1.0
    beta: float = 0.0


Op = Callable[[Tensor, Tensor], Tensor]


def linear_rule(a: Tensor, r: Tensor, w: Tensor, b: Tensor | None, fwd: Op, bwd: Op, cfg: RuleConfig, nonneg: bool):
    """The relevance of a linear map's input ``a`` (a conv or a Linear, given as ``fwd(a, w)`` and its transpose
    ``bwd(s, w)``) from its output's relevance ``r``.

    ``nonneg``: the caller knows ``a >= 0`` (after a ReLU), so the terms of negative inputs are skipped (exactly 0).

    The transposed ops get weights of their own (:func:`split_weights`), so that a traced graph never feeds one weight
    node to both a convolution and a transposed convolution: OpenVINO 2026.4's CPU plugin computes such a shared
    weight's transposed convolution wrongly (found here; the ONNX Runtime result is right).
    """
    eps = cfg.epsilon
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    tp, tn, tw = split_weights(w)
    if cfg.rule == "epsilon":
        z = fwd(a, w)
        if b is not None:
            z = z + _bias_view(b, z)
        return a * bwd(r / stabilize(z, eps), tw)
    if nonneg:
        zp = fwd(a, wp)
        pos = lambda s: a * bwd(s, tp)  # noqa: E731
    else:
        ap, an = a.clamp(min=0), a.clamp(max=0)
        zp = fwd(ap, wp) + fwd(an, wn)
        pos = lambda s: ap * bwd(s, tp) + an * bwd(s, tn)  # noqa: E731
    # z+ >= 0 and z- <= 0 by construction, so their stabilisers are + eps and - eps: stabilize()'s sign test
    # (two elementwise ops per layer, a tenth of an exported graph's time) is not needed. Equal values: a z+ of 0
    # gets + eps either way, and where z- is 0 every negative contribution is 0, whatever the denominator.
    if cfg.rule == "z_plus" or cfg.beta == 0:
        out = pos(r / (zp + eps))
        return out if cfg.rule == "z_plus" or cfg.alpha == 1 else cfg.alpha * out
    if nonneg:
        zn = fwd(a, wn)
        neg = lambda s: a * bwd(s, tn)  # noqa: E731
    else:
        zn = fwd(ap, wn) + fwd(an, wp)
        neg = lambda s: ap * bwd(s, tn) + an * bwd(s, tp)  # noqa: E731
    return cfg.alpha * pos(r / (zp + eps)) - cfg.beta * neg(r / (zn - eps))


def split_weights(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(w+, w-, w)`` for the transposed ops, computed as ``(w + |w|) / 2``, ``(w - |w|) / 2`` and their sum:
    bit-identical to ``clamp(w, min=0)``, ``clamp(w, max=0)`` and ``w`` (halving and adding a zero are exact), but
    other nodes in a traced graph than the forward ops' weights (see :func:`linear_rule`)."""
    mag = w.abs()
    tp, tn = (w + mag) * 0.5, (w - mag) * 0.5
    return tp, tn, tp + tn


def _bias_view(b: Tensor, z: Tensor) -> Tensor:
    return b.view(1, -1, 1, 1) if z.ndim == 4 else b


# --- convolutions over an explicitly padded input -------------------------------------------------------------------
def conv_ops(stride, dilation, groups: int, padded_hw: tuple[int, int], padding=(0, 0)) -> tuple[Op, Op]:
    """``fwd(a_p, w)``: the convolution of an already padded input; ``bwd(s, w)``: its transpose, back to the padded
    input's size (a grouped transposed convolution: depthwise convs included).

    With stride 1 the transpose is written as an ordinary convolution (:func:`transposed_weight`: in and out channels
    swapped per group, the kernel flipped; the input padded by the dilated kernel's extent less one): the same sums,
    and the runtimes' convolutions are several times faster than their transposed ones (ONNX Runtime and OpenVINO on
    the CPU). The weight transform is on constants, so an exported graph folds it away.

    ``padding``: symmetric zero padding done by the convolutions themselves (then ``padded_hw`` is the unpadded
    input's size and nothing is padded or cropped around them)."""
    padding = tuple(padding)

    def fwd(a: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(a, w, None, stride, padding, dilation, groups)

    def bwd(s: Tensor, w: Tensor) -> Tensor:
        if tuple(stride) == (1, 1):
            kh, kw = w.shape[-2], w.shape[-1]
            ph, pw = dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1]
            if ph < 0 or pw < 0:  # padding wider than the kernel: the transposed form
                return fit(F.conv_transpose2d(s, w, None, 1, padding, 0, groups, dilation), padded_hw)
            return fit(F.conv2d(s, transposed_weight(w, groups), None, 1, (ph, pw), dilation, groups), padded_hw)
        return fit(F.conv_transpose2d(s, w, None, stride, padding, 0, groups, dilation), padded_hw)

    return fwd, bwd


def transposed_weight(w: Tensor, groups: int) -> Tensor:
    """The weight of the convolution that computes ``conv_transpose2d(·, w, groups=groups)`` at stride 1: (C_out,
    C_in/g, kh, kw) -> (C_in, C_out/g, kh, kw), each group's channel axes swapped and the kernel flipped."""
    c_out, c_in_g, kh, kw = w.shape
    if (kh, kw) != (1, 1):
        w = torch.flip(w, dims=(2, 3))
    if groups == 1:
        return w.transpose(0, 1)
    return w.reshape(groups, c_out // groups, c_in_g, kh, kw).transpose(1, 2).reshape(groups * c_in_g, -1, kh, kw)


def fit(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """Zero-pad or crop the last two dims (at the bottom and right) to ``hw``: a transposed convolution reaches only
    the input rows and columns that some window covers; the others get no relevance."""
    dh, dw = hw[0] - x.shape[-2], hw[1] - x.shape[-1]
    if dh > 0 or dw > 0:
        x = F.pad(x, (0, max(dw, 0), 0, max(dh, 0)))
    if dh < 0 or dw < 0:
        x = x[..., : hw[0], : hw[1]]
    return x


def pad(x: Tensor, pads: Pads, value: float = 0.0) -> Tensor:
    return F.pad(x, pads, value=value) if any(pads) else x


def crop(x: Tensor, pads: Pads) -> Tensor:
    """Undo :func:`pad` (positive pads only)."""
    left, right, top, bottom = pads
    if not any(pads):
        return x
    h, w = x.shape[-2], x.shape[-1]
    return x[..., top : h - bottom, left : w - right]


def window_pads(size: tuple[int, int], kernel, stride, padding, dilation, out: tuple[int, int]) -> Pads:
    """The pads that give a window op over ``size`` exactly ``out`` outputs without implicit padding: ``padding`` on
    the left/top, and on the right/bottom what the last window (``ceil_mode``, SAME padding) reaches past the input."""
    pads = []
    for i in (1, 0):  # width first: F.pad's order
        need = (out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
        pads += [padding[i], max(need - size[i] - padding[i], 0)]
    return (pads[0], pads[1], pads[2], pads[3])


def _constant(values: list, like: Tensor) -> Tensor:
    """A tensor from nested lists, in ``like``'s dtype and device: a constant of known shape when traced (a kernel
    built with tensor ops would be an op whose shape the ONNX exporter cannot see)."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)


# --- pooling -------------------------------------------------------------------------------------------------------
def avg_window_rule(a: Tensor, r: Tensor, kernel, stride, pads: Pads, eps: float) -> Tensor:
    """Relevance through a window average, in proportion to the inputs: ``R_i = sum_j a_i / (k^2 stab(mean_j)) R_j``
    (zennit's ``Norm`` rule on an average pool). ``mean_j`` is recomputed here as a depthwise convolution over the
    padded input, so numerator and denominator see the same windows whatever the pool's own divisor."""
    c = a.shape[1]
    ap = pad(a, pads)
    w = _constant([[[[1.0 / (kernel[0] * kernel[1])] * kernel[1]] * kernel[0]]] * c, a)  # (C, 1, kh, kw)
    fwd, bwd = conv_ops(stride, (1, 1), c, (ap.shape[-2], ap.shape[-1]))
    z = fwd(ap, w)
    if z.shape[-2:] != r.shape[-2:]:
        raise RuntimeError(f"pooling windows give {tuple(z.shape[-2:])} outputs, the layer {tuple(r.shape[-2:])}")
    return crop(ap * bwd(r / stabilize(z, eps), w), pads)


def winner_rule(a: Tensor, m: Tensor, r: Tensor, kernel, stride, pads: Pads) -> Tensor:
    """Winner-takes-all through a max pool: each window's relevance goes to the input(s) holding its maximum ``m``
    (shared equally among ties). Written as one comparison per window offset and one grouped transposed convolution
    with one-hot kernels, so it traces to plain ops (no MaxUnpool)."""
    b, c, ho, wo = m.shape
    kh, kw = kernel
    sh, sw = stride
    low = torch.finfo(a.dtype).min  # padding never wins
    ap = pad(a, pads, value=low)
    hits = []
    for di in range(kh):
        for dj in range(kw):
            v = ap[:, :, di : di + (ho - 1) * sh + 1 : sh, dj : dj + (wo - 1) * sw + 1 : sw]
            hits.append((v == m).to(a.dtype))
    hit = torch.stack(hits, dim=2)  # (B, C, k*k, ho, wo)
    share = hit * (r / hit.sum(dim=2).clamp_min(1.0)).unsqueeze(2)
    # each window offset's share back to its input position: a transposed conv with one-hot kernels, per channel
    onehot = [
        [[[1.0 if (i, j) == divmod(o, kw) else 0.0 for j in range(kw)] for i in range(kh)]] for o in range(kh * kw)
    ]
    kernel = _constant(onehot, a)  # (k*k, 1, kh, kw)
    out = F.conv_transpose2d(share.reshape(b * c, kh * kw, ho, wo), kernel, None, stride)
    out = fit(out, (ap.shape[-2], ap.shape[-1]))
    return crop(out.reshape(b, c, out.shape[-2], out.shape[-1]), pads)


def adaptive_matrix(size: int, out: int, like: Tensor) -> Tensor:
    """(out, size): row i averages the inputs of adaptive-average-pool window i, ``[floor(i*size/out),
    ceil((i+1)*size/out))``, as ``F.adaptive_avg_pool*d`` does."""
    rows = []
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        rows.append([1.0 / (hi - lo) if lo <= j < hi else 0.0 for j in range(size)])
    return _constant(rows, like)


def adaptive_avg_pool(x: Tensor, out: tuple[int, int]) -> Tensor:
    """``F.adaptive_avg_pool2d`` as a mean (global) or two matmuls with :func:`adaptive_matrix`: it exports whatever
    the sizes (the ONNX exporter refuses an adaptive pool whose input size it cannot see)."""
    if out == (1, 1):
        return x.mean(dim=(2, 3), keepdim=True)
    ph, pw = adaptive_matrix(x.shape[-2], out[0], x), adaptive_matrix(x.shape[-1], out[1], x)
    return torch.matmul(torch.matmul(ph, x), pw.t())


def adaptive_avg_rule(a: Tensor, r: Tensor, eps: float) -> Tensor:
    """Relevance through an adaptive average pool (a global one included), in proportion to the inputs."""
    h, w = a.shape[-2], a.shape[-1]
    oh, ow = r.shape[-2], r.shape[-1]
    if (oh, ow) == (1, 1):
        z = a.mean(dim=(2, 3), keepdim=True)
        return a * (r / stabilize(z, eps)) / (h * w)
    ph = adaptive_matrix(h, oh, a)
    pw = adaptive_matrix(w, ow, a)
    z = torch.matmul(torch.matmul(ph, a), pw.t())
    s = r / stabilize(z, eps)
    return a * torch.matmul(torch.matmul(ph.t(), s), pw)


# --- relevance splitting at a skip junction ---------------------------------------------------------------------------
def branch_ratio(f: Tensor, s: Tensor) -> Tensor:
    """``|f| / (|f| + |s|)`` elementwise (the Relevance Splitting ratio); 1 where both are 0 (no relevance reaches
    such a point: it carries no activation)."""
    af, den = f.abs(), f.abs() + s.abs()
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, af / safe, torch.ones_like(den))
