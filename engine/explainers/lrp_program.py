"""The LRP program: a CNN walked, once, into a tree of layer records that run forward and then relevance backward.

:func:`build_program` walks a backbone's module tree (torchvision ResNets, VGGs, MobileNetV2; timm ResNets and
EfficientNet-family models such as EfficientNet-Lite and MobileNetV2) into a :class:`Sequence` of records:

* :class:`Conv` (a ``Conv2d``, timm's TF-"SAME" ``Conv2dSame`` included, with the BatchNorm that follows it **folded
  in**: ``W' = W * g / sqrt(v + e)``, ``b' = (b - m) * g / sqrt(v + e) + beta``; depthwise and grouped convs are
  grouped transposed convs in the relevance pass), :class:`Linear`;
* :class:`Act` (ReLU, ReLU6, SiLU, Identity, Dropout in eval: relevance passes through unchanged);
* :class:`MaxPool`, :class:`AvgPool`, :class:`AdaptiveAvgPool`, :class:`Flatten`;
* :class:`Residual`: ``post(branch(x) + shortcut(x))`` with the shortcut the identity or a downsample path; the
  relevance is split at the junction (the ``split`` option) and each part goes back through its own path to ``x``.

A layer the walker does not know is refused with its dotted name and type, a block whose skip junction it cannot see
(an unknown block class, a Sequential with its own ``forward``) likewise, before any work. The records hold
references to the backbone's own modules (not copies, and not registered as submodules: the explainer has no state of
its own) and read their weights at every call, so a ``.double()`` or ``.to(device)`` of the graph carries over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .lrp_rules import (
    RuleConfig,
    adaptive_avg_pool,
    adaptive_avg_rule,
    avg_window_rule,
    branch_ratio,
    conv_ops,
    crop,
    linear_rule,
    pad,
    stabilize,
    window_pads,
    winner_rule,
)

SPLITS = ("downsample_only", "all", "half", "none")
MAX_POOLS = ("avg", "avg2x2", "winner")


@dataclass
class Context:
    """What the relevance pass needs besides the tensors: the rule, the pooling and splitting options, and an optional
    trace of ``(name, total relevance out, total relevance in)`` per record (the conservation tests read it)."""

    rules: RuleConfig
    split: str = "downsample_only"
    max_pool: str = "avg"
    trace: list[tuple[str, Tensor, Tensor]] | None = None

    def record(self, name: str, r_out: Tensor, r_in: Tensor) -> None:
        if self.trace is not None:
            self.trace.append((name, _total(r_out), _total(r_in)))


def _total(r: Tensor) -> Tensor:
    return r.reshape(r.shape[0], -1).sum(dim=1)


class Node:
    """One record: ``forward(x) -> (out, cache)`` and ``relevance(r, cache, ctx, ones) -> r_in``.

    ``ones``: the record is the network's first and the ``input="ones"`` option replaces its input by ones in the
    rule (the LRP-for-ResNet authors' choice); only conv and linear records use it.
    """

    name: str

    def forward(self, x: Tensor) -> tuple[Tensor, object]:
        raise NotImplementedError

    def relevance(self, r: Tensor, cache: object, ctx: Context, ones: bool = False) -> Tensor:
        raise NotImplementedError

    def lines(self, indent: str = "") -> list[str]:
        return [f"{indent}{self.name}: {self.describe()}"]

    def describe(self) -> str:
        return type(self).__name__


@dataclass
class Sequence(Node):
    name: str
    nodes: list[Node] = field(default_factory=list)

    def forward(self, x: Tensor) -> tuple[Tensor, list]:
        caches = []
        for node in self.nodes:
            x, cache = node.forward(x)
            caches.append(cache)
        return x, caches

    def relevance(self, r: Tensor, cache: list, ctx: Context, ones: bool = False) -> Tensor:
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            r_in = node.relevance(r, cache[i], ctx, ones and i == 0)
            if not isinstance(node, Sequence | Residual):  # those record their own parts
                ctx.record(node.name, r, r_in)
            r = r_in
        return r

    def lines(self, indent: str = "") -> list[str]:
        return [line for node in self.nodes for line in node.lines(indent)]


@dataclass
class Conv(Node):
    """A Conv2d with the BatchNorm after it folded in. ``same``: timm's ``Conv2dSame`` (TF "SAME" padding, computed
    from the input size). ``nonneg``: the input is known to be >= 0 (it follows a ReLU), which lets the sign-aware
    rules skip their negative-input terms."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None = None
    same: bool = False
    nonneg: bool = False

    def weights(self) -> tuple[Tensor, Tensor | None]:
        w, b = self.conv.weight, self.conv.bias
        bn = self.bn
        if bn is None:
            return w, b
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if b is not None:
            shift = shift + b * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        return w * scale.reshape(-1, 1, 1, 1), shift

    def pads(self, hw: tuple[int, int]) -> tuple[int, int, int, int]:
        c = self.conv
        k, s, d = c.kernel_size, c.stride, c.dilation
        out = []
        for i in (1, 0):  # width first: F.pad's order
            if self.same:  # timm's pad_same
                total = max((-(-hw[i] // s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - hw[i], 0)
                out += [total // 2, total - total // 2]
            elif isinstance(c.padding, str):
                total = 0 if c.padding == "valid" else d[i] * (k[i] - 1)
                out += [total // 2, total - total // 2]
            else:
                out += [c.padding[i], c.padding[i]]
        return (out[0], out[1], out[2], out[3])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w, b = self.weights()
        c = self.conv
        pads = self.pads((x.shape[-2], x.shape[-1]))
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: the conv's own padding (a cleaner graph)
            return F.conv2d(x, w, b, c.stride, (pads[2], pads[0]), c.dilation, c.groups), x
        return F.conv2d(pad(x, pads), w, b, c.stride, 0, c.dilation, c.groups), x

    def relevance(self, r: Tensor, x: Tensor, ctx: Context, ones: bool = False) -> Tensor:
        w, b = self.weights()
        c = self.conv
        pads = self.pads((x.shape[-2], x.shape[-1]))
        a = torch.ones_like(x) if ones else x
        if pads[0] == pads[1] and pads[2] == pads[3] and tuple(c.stride) == (1, 1):  # the convs pad (no Pad/Slice)
            fwd, bwd = conv_ops(c.stride, c.dilation, c.groups, (a.shape[-2], a.shape[-1]), (pads[2], pads[0]))
            return linear_rule(a, r, w, b, fwd, bwd, ctx.rules, self.nonneg or ones)
        ap = pad(a, pads)
        fwd, bwd = conv_ops(c.stride, c.dilation, c.groups, (ap.shape[-2], ap.shape[-1]))
        return crop(linear_rule(ap, r, w, b, fwd, bwd, ctx.rules, self.nonneg or ones), pads)

    def describe(self) -> str:
        c = self.conv
        kind = "depthwise conv" if c.groups == c.in_channels == c.out_channels and c.groups > 1 else "conv"
        bn = " + folded BatchNorm" if self.bn is not None else ""
        return f"{kind} {c.in_channels}->{c.out_channels} k{tuple(c.kernel_size)} s{tuple(c.stride)}{bn}"


@dataclass
class Linear(Node):
    name: str
    linear: nn.Linear
    nonneg: bool = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.linear(x, self.linear.weight, self.linear.bias), x

    def relevance(self, r: Tensor, x: Tensor, ctx: Context, ones: bool = False) -> Tensor:
        a = torch.ones_like(x) if ones else x
        w, b = self.linear.weight, self.linear.bias
        fwd = lambda v, m: torch.matmul(v, m.t())  # noqa: E731
        bwd = lambda s, m: torch.matmul(s, m)  # noqa: E731
        return linear_rule(a, r, w, b, fwd, bwd, ctx.rules, self.nonneg or ones)

    def describe(self) -> str:
        return f"linear {self.linear.in_features}->{self.linear.out_features}"


ACTS = {"relu": F.relu, "relu6": lambda x: F.hardtanh(x, 0.0, 6.0), "silu": F.silu, "identity": lambda x: x}


@dataclass
class Act(Node):
    """An elementwise activation (or an eval-mode Dropout / Identity): relevance passes through unchanged."""

    name: str
    kind: str

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return ACTS[self.kind](x), None

    def relevance(self, r: Tensor, cache: None, ctx: Context, ones: bool = False) -> Tensor:
        return r

    def describe(self) -> str:
        return f"{self.kind} (pass-through)"


@dataclass
class Flatten(Node):
    name: str

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        return x.flatten(1), tuple(x.shape[1:])

    def relevance(self, r: Tensor, shape: tuple[int, ...], ctx: Context, ones: bool = False) -> Tensor:
        return r.reshape(r.shape[0], *shape)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass
class MaxPool(Node):
    """Relevance by the ``max_pool`` option: ``avg`` (as an average over the pool's own windows, in proportion to the
    inputs), ``avg2x2`` (as a 2x2 stride-2 average whatever the pool's window: the authors' code) or ``winner``
    (winner-takes-all)."""

    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool = False

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        y = F.max_pool2d(x, self.kernel, self.stride, self.padding, ceil_mode=self.ceil_mode)
        return y, (x, y)

    def relevance(self, r: Tensor, cache, ctx: Context, ones: bool = False) -> Tensor:
        x, y = cache
        hw, out = (x.shape[-2], x.shape[-1]), (y.shape[-2], y.shape[-1])
        if ctx.max_pool == "winner":
            pads = window_pads(hw, self.kernel, self.stride, self.padding, (1, 1), out)
            return winner_rule(x, y, r, self.kernel, self.stride, pads)
        kernel, stride, padding = (
            ((2, 2), (2, 2), (0, 0)) if ctx.max_pool == "avg2x2" else (self.kernel, self.stride, self.padding)
        )
        pads = window_pads(hw, kernel, stride, padding, (1, 1), out)
        return avg_window_rule(x, r, kernel, stride, pads, ctx.rules.epsilon)

    def describe(self) -> str:
        return f"max pool k{self.kernel} s{self.stride} p{self.padding}"


@dataclass
class AvgPool(Node):
    """An average pool; relevance in proportion to the inputs over the same windows."""

    name: str
    module: nn.AvgPool2d
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, tuple[int, int]]]:
        y = self.module(x)
        return y, (x, (y.shape[-2], y.shape[-1]))

    def relevance(self, r: Tensor, cache, ctx: Context, ones: bool = False) -> Tensor:
        x, out = cache
        pads = window_pads((x.shape[-2], x.shape[-1]), self.kernel, self.stride, self.padding, (1, 1), out)
        return avg_window_rule(x, r, self.kernel, self.stride, pads, ctx.rules.epsilon)

    def describe(self) -> str:
        return f"avg pool k{self.kernel} s{self.stride}"


@dataclass
class AdaptiveAvgPool(Node):
    name: str
    output_size: tuple[int, int]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return adaptive_avg_pool(x, self.output_size), x

    def relevance(self, r: Tensor, x: Tensor, ctx: Context, ones: bool = False) -> Tensor:
        return adaptive_avg_rule(x, r, ctx.rules.epsilon)

    def describe(self) -> str:
        return f"adaptive avg pool to {self.output_size}"


@dataclass
class Residual(Node):
    """``post(branch(x) + shortcut(x))``; ``shortcut`` None is an identity skip.

    Relevance Splitting (option ``split``) at the junction, on the relevance ``R`` of the sum ``y = F + S``:

    * ``downsample_only`` (the authors' default): ``ratio = |F| / (|F| + |S|)`` where the shortcut is a downsample,
      ``ratio = 1`` at an identity skip (everything through the branch);
    * ``all``: ``|F| / (|F| + |S|)`` at every junction;
    * ``half``: 0.5 at every junction;
    * ``none`` (plain LRP, the baseline): the sum as a layer of its own, ``R_F = F / stab(y) R`` and
      ``R_S = S / stab(y) R`` (LRP-0 on the addition; zennit's ResNet canonizer does the same).

    The branch gets ``ratio * R``, the shortcut ``R - ratio * R``; each goes back through its own path to ``x`` (the
    shortcut's part through the downsample where there is one) and the two relevances of ``x`` are summed.
    """

    name: str
    branch: Sequence
    shortcut: Sequence | None = None
    post: Act | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple]:
        f, cb = self.branch.forward(x)
        if self.shortcut is None:
            s, cs = x, None
        else:
            s, cs = self.shortcut.forward(x)
        y = f + s
        out = y if self.post is None else self.post.forward(y)[0]
        return out, (cb, cs, f, s)

    def relevance(self, r: Tensor, cache, ctx: Context, ones: bool = False) -> Tensor:
        cb, cs, f, s = cache
        mode = ctx.split
        if mode == "downsample_only" and self.shortcut is None:
            rf, rs = r, None
        elif mode in ("downsample_only", "all"):
            rf = branch_ratio(f, s) * r
            rs = r - rf
        elif mode == "half":
            rf = 0.5 * r
            rs = r - rf
        else:  # "none": LRP-0 on the sum
            z = stabilize(f + s, ctx.rules.epsilon)
            rf, rs = r * (f / z), r * (s / z)
        if rs is not None:
            ctx.record(f"{self.name}:split", r, rf + rs)
        rx = self.branch.relevance(rf, cb, ctx)
        ctx.record(f"{self.name}:branch", rf, rx)
        if rs is not None:
            if self.shortcut is not None:
                rsx = self.shortcut.relevance(rs, cs, ctx)
                ctx.record(f"{self.name}:shortcut", rs, rsx)
                rs = rsx
            rx = rx + rs
        return rx

    def lines(self, indent: str = "") -> list[str]:
        skip = "identity skip" if self.shortcut is None else "downsample skip"
        out = [f"{indent}{self.name}: residual block ({skip})"]
        out += self.branch.lines(indent + "  branch ")
        if self.shortcut is not None:
            out += self.shortcut.lines(indent + "  shortcut ")
        return out


# --- the walker ------------------------------------------------------------------------------------------------------
def _unsupported(name: str, module: nn.Module, why: str = "") -> UnsupportedModelError:
    return UnsupportedModelError(
        f"lrp: unsupported layer {name!r} ({type(module).__name__}){': ' + why if why else ''}. LRP here supports "
        "Conv2d (incl. depthwise and timm's Conv2dSame) with BatchNorm folded in, Linear, ReLU/ReLU6/SiLU, "
        "max/average/adaptive-average pooling, Dropout, Flatten and the residual blocks of ResNets and inverted "
        "residuals (MobileNetV2, EfficientNet-Lite); squeeze-excitation, other activations and normalisations are not."
    )


def _no_junctions(name: str, module: nn.Module) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"lrp: cannot find the skip junctions of {name!r} ({type(module).__name__}): LRP splits relevance where a skip "
        "connection meets a residual branch, and knows those junctions only in torchvision's BasicBlock/Bottleneck/"
        "InvertedResidual and timm's ResNet blocks, DepthwiseSeparableConv and InvertedResidual."
    )


_SAME_CONVS = ("Conv2dSame", "Conv2dSameExport")
_IDENTITY_NAMES = ("DropPath", "DropBlock2d")  # identities in eval mode


class _Walker:
    """Builds records from (name, module) pairs in forward order, folding BatchNorm into the conv before it and
    tracking whether the current activation is known to be >= 0 (after a ReLU)."""

    def __init__(self) -> None:
        self.nonneg = False

    def seq(self, name: str, items: Iterable[tuple[str, nn.Module | None]]) -> Sequence:
        out = Sequence(name)
        for child_name, module in items:
            if module is not None:
                self.add(out, child_name, module)
        return out

    def add(self, out: Sequence, name: str, m: nn.Module) -> None:
        kind = type(m).__name__
        if isinstance(m, nn.Sequential):
            if type(m).forward is not nn.Sequential.forward:
                raise _no_junctions(name, m)
            for child, sub in m.named_children():
                self.add(out, f"{name}.{child}", sub)
        elif isinstance(m, nn.Conv2d):
            if type(m) is not nn.Conv2d and kind not in _SAME_CONVS:
                raise _unsupported(name, m, "a Conv2d subclass with its own forward")
            if m.padding_mode != "zeros":
                raise _unsupported(name, m, f"padding_mode={m.padding_mode!r}; only zero padding")
            out.nodes.append(Conv(name, m, same=kind in _SAME_CONVS, nonneg=self.nonneg))
            self.nonneg = False
        elif isinstance(m, nn.BatchNorm2d):
            last = out.nodes[-1] if out.nodes else None
            if not isinstance(last, Conv) or last.bn is not None:
                raise _unsupported(name, m, "a BatchNorm that does not follow a convolution cannot be folded into one")
            if m.running_mean is None or m.running_var is None:
                raise _unsupported(name, m, "a BatchNorm without running statistics")
            last.bn = m
            if kind == "BatchNormAct2d":  # timm: BatchNorm, then drop, then act
                for part in ("drop", "act"):
                    sub = getattr(m, part, None)
                    if sub is not None:
                        self.add(out, f"{name}.{part}", sub)
            elif type(m) is not nn.BatchNorm2d:
                raise _unsupported(name, m, "a BatchNorm2d subclass with its own forward")
        elif isinstance(m, nn.ReLU | nn.ReLU6):
            out.nodes.append(Act(name, "relu" if isinstance(m, nn.ReLU) else "relu6"))
            self.nonneg = True
        elif isinstance(m, nn.SiLU):
            out.nodes.append(Act(name, "silu"))
            self.nonneg = False
        elif isinstance(m, nn.Identity | nn.Dropout) or kind in _IDENTITY_NAMES:
            pass  # identities at inference
        elif isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation) != (1, 1) or m.return_indices:
                raise _unsupported(name, m, "a dilated max pool, or one that returns indices")
            stride = m.stride if m.stride is not None else m.kernel_size
            out.nodes.append(MaxPool(name, _pair(m.kernel_size), _pair(stride), _pair(m.padding), bool(m.ceil_mode)))
        elif isinstance(m, nn.AvgPool2d):
            stride = m.stride if m.stride is not None else m.kernel_size
            out.nodes.append(AvgPool(name, m, _pair(m.kernel_size), _pair(stride), _pair(m.padding)))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            size = m.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if None in size:
                raise _unsupported(name, m, "an adaptive pool with a free output dimension")
            out.nodes.append(AdaptiveAvgPool(name, (int(size[0]), int(size[1]))))
        elif kind == "SelectAdaptivePool2d":  # timm's head pool
            if m.pool_type != "avg":
                raise _unsupported(name, m, f"pool_type={m.pool_type!r}; only 'avg'")
            out.nodes.append(AdaptiveAvgPool(name, (1, 1)))
            if isinstance(m.flatten, nn.Flatten):
                out.nodes.append(Flatten(f"{name}.flatten"))
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(name, m, "only Flatten(start_dim=1)")
            out.nodes.append(Flatten(name))
        elif isinstance(m, nn.Linear):
            if type(m) is not nn.Linear:
                raise _unsupported(name, m, "a Linear subclass with its own forward")
            out.nodes.append(Linear(name, m, nonneg=self.nonneg))
            self.nonneg = False
        else:
            raise _unsupported(name, m)

    def residual(
        self,
        name: str,
        branch: Iterable[tuple[str, nn.Module | None]],
        shortcut: nn.Module | None,
        post: nn.Module | None,
    ) -> Residual:
        start = self.nonneg
        b = self.seq(f"{name}:branch", branch)
        s = None
        if shortcut is not None and not isinstance(shortcut, nn.Identity):
            self.nonneg = start
            s = self.seq(f"{name}:shortcut", [(f"{name}.downsample", shortcut)])
        p = None
        self.nonneg = False
        if post is not None:
            tmp = Sequence(name)
            self.add(tmp, f"{name}.post", post)
            if tmp.nodes:
                if len(tmp.nodes) != 1 or not isinstance(tmp.nodes[0], Act):
                    raise _unsupported(f"{name}.post", post, "the activation after a residual sum")
                p = tmp.nodes[0]
        self.nonneg = p is not None and p.kind in ("relu", "relu6")
        return Residual(name, b, s, p)


def _attrs(block: nn.Module, prefix: str, names: Iterable[str]) -> list[tuple[str, nn.Module | None]]:
    return [(f"{prefix}.{n}", getattr(block, n, None)) for n in names]


def _family(backbone: nn.Module) -> str:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    m = backbone.model
    if backbone.library == "torchvision":
        import torchvision.models as tvm

        for fam, cls in (("tv_resnet", tvm.ResNet), ("tv_vgg", tvm.VGG), ("tv_mobilenet_v2", tvm.MobileNetV2)):
            if isinstance(m, cls):
                return fam
    elif backbone.library == "timm":
        from timm.models.efficientnet import EfficientNet
        from timm.models.resnet import ResNet

        if isinstance(m, ResNet):
            return "timm_resnet"
        if isinstance(m, EfficientNet):
            return "timm_efficientnet"
    raise UnsupportedModelError(
        f"lrp does not know the layer layout of {backbone.library}/{backbone.name} ({type(m).__name__}). Supported: "
        "torchvision ResNets, VGGs and MobileNetV2; timm ResNets and EfficientNet-family models without "
        "squeeze-excitation (EfficientNet-Lite, MobileNetV2)."
    )


def build_program(backbone: nn.Module) -> Sequence:
    """Walk a CNN backbone adapter's model into an LRP program; raises :class:`UnsupportedModelError` naming the
    first layer or block it cannot handle."""
    fam = _family(backbone)
    m = backbone.model
    w = _Walker()
    prog = Sequence("model")
    if fam == "tv_resnet":
        from torchvision.models.resnet import BasicBlock, Bottleneck

        prog.nodes += w.seq("stem", _attrs(m, "", ["conv1", "bn1", "relu", "maxpool"])).nodes
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i, blk in enumerate(getattr(m, stage)):
                name = f"{stage}.{i}"
                if isinstance(blk, Bottleneck):
                    parts = ["conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"]
                elif isinstance(blk, BasicBlock):
                    parts = ["conv1", "bn1", "relu", "conv2", "bn2"]
                else:
                    raise _no_junctions(name, blk)
                prog.nodes.append(w.residual(name, _attrs(blk, name, parts), blk.downsample, blk.relu))
        prog.nodes += w.seq("head", [("avgpool", m.avgpool), ("flatten", nn.Flatten()), ("fc", m.fc)]).nodes
    elif fam == "tv_vgg":
        prog.nodes += w.seq("vgg", [("features", m.features), ("avgpool", m.avgpool), ("flatten", nn.Flatten())]).nodes
        prog.nodes += w.seq("head", [("classifier", m.classifier)]).nodes
    elif fam == "tv_mobilenet_v2":
        from torchvision.models.mobilenetv2 import InvertedResidual

        for i, blk in enumerate(m.features):
            name = f"features.{i}"
            if isinstance(blk, InvertedResidual):
                if blk.use_res_connect:
                    prog.nodes.append(w.residual(name, [(f"{name}.conv", blk.conv)], None, None))
                else:
                    prog.nodes += w.seq(name, [(f"{name}.conv", blk.conv)]).nodes
            elif type(blk).__name__ == "InvertedResidual":  # another family's block (MobileNetV3)
                raise _no_junctions(name, blk)
            else:
                prog.nodes += w.seq(name, [(name, blk)]).nodes
        pool = [AdaptiveAvgPool("avgpool", (1, 1)), Flatten("flatten")]
        prog.nodes += pool + w.seq("head", [("classifier", m.classifier)]).nodes
    elif fam == "timm_resnet":
        from timm.models.resnet import BasicBlock, Bottleneck

        prog.nodes += w.seq("stem", _attrs(m, "", ["conv1", "bn1", "act1", "maxpool"])).nodes
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i, blk in enumerate(getattr(m, stage)):
                name = f"{stage}.{i}"
                if type(blk) is Bottleneck:
                    parts = ["conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"]
                    post = blk.act3
                elif type(blk) is BasicBlock:
                    parts = ["conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2"]
                    post = blk.act2
                else:
                    raise _no_junctions(name, blk)
                parts += ["se", "drop_path"]
                prog.nodes.append(w.residual(name, _attrs(blk, name, parts), blk.downsample, post))
        head = [("global_pool", m.global_pool), ("fc", m.fc)]
        prog.nodes += w.seq("head", head).nodes
    else:  # timm EfficientNet family
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

        prog.nodes += w.seq("stem", _attrs(m, "", ["conv_stem", "bn1"])).nodes
        for s, stage in enumerate(m.blocks):
            for i, blk in enumerate(stage):
                name = f"blocks.{s}.{i}"
                if getattr(blk, "conv_s2d", None) is not None:
                    raise _unsupported(f"{name}.conv_s2d", blk.conv_s2d, "space-to-depth convs")
                if type(blk) is InvertedResidual:
                    parts = ["conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3"]
                elif type(blk) is DepthwiseSeparableConv:
                    parts = ["conv_dw", "bn1", "aa", "se", "conv_pw", "bn2"]
                else:
                    raise _no_junctions(name, blk)
                items = _attrs(blk, name, parts)
                if blk.has_skip:
                    items.append((f"{name}.drop_path", blk.drop_path))
                    prog.nodes.append(w.residual(name, items, None, None))
                else:
                    prog.nodes += w.seq(name, items).nodes
        head = _attrs(m, "", ["conv_head", "bn2", "global_pool", "classifier"])
        prog.nodes += w.seq("head", head).nodes
    _strip_names(prog)
    return prog


def negative_inputs(node: Node, cache: object) -> list[str]:
    """The conv and linear records marked ``nonneg`` whose cached input (from a forward pass) has a negative value:
    none, if the walker's tracking of ReLU outputs is right (the explainer checks it on its probe)."""
    if isinstance(node, Sequence):
        return [n for sub, c in zip(node.nodes, cache, strict=True) for n in negative_inputs(sub, c)]
    if isinstance(node, Residual):
        cb, cs = cache[0], cache[1]
        out = negative_inputs(node.branch, cb)
        return out + (negative_inputs(node.shortcut, cs) if node.shortcut is not None else [])
    if isinstance(node, Conv | Linear) and node.nonneg and bool((cache < 0).any()):
        return [node.name]
    return []


def _strip_names(node: Node) -> None:
    """Names as the model's own dotted module names (no leading dot)."""
    node.name = node.name.lstrip(".")
    if isinstance(node, Sequence):
        for n in node.nodes:
            _strip_names(n)
    elif isinstance(node, Residual):
        _strip_names(node.branch)
        if node.shortcut is not None:
            _strip_names(node.shortcut)
