"""LRP with Relevance Splitting (LRP for ResNet, ECCV 2024; METHODS.md section 5) as an explicit relevance pass.

Every LRP we know of (captum, zennit, the authors' code) runs as a modified autograd backward pass, eagerly, in one
framework. Here the explain graph does a forward pass and then one explicit relevance pass written with ordinary ops
(convolutions, grouped transposed convolutions, matmuls, pads, slices; see :mod:`.lrp_rules`), so tracing exports it
to ONNX and OpenVINO like every other method. No autograd is used anywhere in the graph.

At construction the backbone is walked into an LRP program (:mod:`.lrp_program`): conv + folded BatchNorm, linear,
activation, pooling and residual-block records. A layer or block it cannot handle is refused with its name, before
any work; the program's logits are then checked against the backbone's on a seeded probe, so a skip connection that
the module tree hides cannot pass silently.

Conventions (stated because peers differ):

* **Start**: the relevance starts at the target logit only (``R = logit_t * e_t``; ``start="softmax"``: the target's
  softmax probability, as the authors' code does for its top-1 class). As every rule is linear in ``R``, the start
  only scales the map, but its sign matters: with ``z_plus`` a negative target logit gives a map that is <= 0
  everywhere (its positive part is empty).
* **Rules** (:mod:`.lrp_rules`): ``z_plus`` (default) ignores biases and is sign-aware on signed inputs (positive
  contributions ``a+ w+ + a- w-``; for ``a >= 0`` the authors' ``a w+``); ``epsilon`` keeps the bias in ``z``;
  ``alpha_beta`` ignores biases and needs ``alpha - beta = 1``. Stabiliser ``eps * sign(z)``, ``sign(0) = +1``.
* **BatchNorm** is folded into the conv before it. The authors pass relevance through BatchNorm unchanged and apply
  z+ to the conv alone; with a positive BatchNorm scale the two agree as eps -> 0 (z+ normalises per output
  channel), with a negative scale folding flips which weights count as positive.
* **Activations** (ReLU, ReLU6, SiLU) pass relevance through unchanged.
* **The first layer's input** (``input``): ``ones`` (the default, the authors' code) replaces the pixels by ones in
  the first layer's rule, so that layer spreads relevance by its positive weights alone; ``image`` uses the
  normalised pixels (sign-aware z+, like zennit's ``ZPlus``).
* **Output**: the input relevance summed over the colour channels at input resolution, ``(B, H, W)``; the graph gives
  its positive part (``output="positive"``) or the signed map (``output="signed"``), min-max scaled to [0, 1].
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from ..numeric import minmax
from .base import Explainer, register_explainer, resolve_target
from .lrp_program import MAX_POOLS, SPLITS, Context, Sequence, build_program, negative_inputs
from .lrp_rules import RuleConfig

RULES = ("z_plus", "epsilon", "alpha_beta")
OUTPUTS = ("positive", "signed")
INPUTS = ("image", "ones")
STARTS = ("logit", "softmax")


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise InputError(f"lrp: option {name} must be one of {list(choices)}, got {value!r}.")


@register_explainer("lrp")
class LRP(Explainer):
    """Layer-wise Relevance Propagation with Relevance Splitting at skip junctions, in one traceable graph."""

    backbone_kinds = ("cnn",)

    @dataclasses.dataclass
    class Options:
        """Attributes:
        rule: conv and linear layers: ``"z_plus"`` (the authors' default), ``"epsilon"`` or ``"alpha_beta"``.
        split: ``"downsample_only"`` (the authors' default: split by ``|F| / (|F| + |S|)`` where the shortcut is a
            downsample; an identity skip sends everything through the branch), ``"all"`` (that ratio at identity
            skips too), ``"half"`` (a fixed 0.5 at every junction) or ``"none"`` (plain LRP: LRP-0 on the sum).
        max_pool: ``"avg"`` (as an average pool over the max pool's own windows, in proportion to the inputs),
            ``"avg2x2"`` (as a 2x2 stride-2 average pool whatever the window: the authors' code, the same as ``avg``
            on VGG's 2x2 pools; on ResNet's 3x3 stem pool it loses relevance where a 2x2 window is all zero) or
            ``"winner"`` (winner-takes-all, ties shared).
        epsilon: the stabiliser of every denominator (sign-aware); the epsilon of ``rule="epsilon"``.
        alpha, beta: ``alpha_beta``'s weights of positive and negative contributions (``alpha - beta = 1``;
            ``alpha=1, beta=0`` is ``z_plus``).
        output: ``"positive"`` (the positive part of the map) or ``"signed"``; both min-max scaled.
        input: the first layer's input in its rule: ``"ones"`` (the authors' code: that layer spreads relevance by
            its positive weights alone) or ``"image"`` (the normalised pixels, sign-aware; zennit's convention).
        start: the relevance at the target logit: ``"logit"`` (its value) or ``"softmax"`` (its probability).
        """

        rule: str = "z_plus"
        split: str = "downsample_only"
        max_pool: str = "avg"
        epsilon: float = 1e-5
        alpha: float = 2.0
        beta: float = 1.0
        output: str = "positive"
        input: str = "ones"
        start: str = "logit"

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        o = options
        _choice("rule", o.rule, RULES)
        _choice("split", o.split, SPLITS)
        _choice("max_pool", o.max_pool, MAX_POOLS)
        _choice("output", o.output, OUTPUTS)
        _choice("input", o.input, INPUTS)
        _choice("start", o.start, STARTS)
        if not float(o.epsilon) > 0:
            raise InputError(f"lrp: epsilon must be > 0, got {o.epsilon!r}.")
        if o.rule == "alpha_beta" and (o.alpha < 0 or o.beta < 0 or abs(o.alpha - o.beta - 1) > 1e-12):
            raise InputError(
                f"lrp: alpha_beta needs alpha >= 0, beta >= 0 and alpha - beta = 1 (conservation), got alpha={o.alpha},"
                f" beta={o.beta}; e.g. alpha=1, beta=0 or alpha=2, beta=1."
            )
        self.rules = RuleConfig(o.rule, float(o.epsilon), float(o.alpha), float(o.beta))
        self.program: Sequence = build_program(backbone)
        self.num_classes = self._check_program(backbone, input_size)

    def _check_program(self, backbone: nn.Module, input_size: tuple[int, int]) -> int:
        """The program must reproduce the backbone's logits on a seeded probe (else a skip connection or another
        operation is not visible in the module tree); returns the number of classes."""
        probe = next(backbone.parameters())
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, *input_size, generator=g).to(dtype=probe.dtype, device=probe.device)
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                expected = backbone(x)
                got, cache = self.program.forward(x)
        finally:
            backbone.train(was_training)
        wrong = negative_inputs(self.program, cache)
        if wrong:  # an internal invariant: the rules skip negative-input terms only where the input follows a ReLU
            raise UnsupportedModelError(f"lrp: layers {wrong} were taken to follow a ReLU but see negative inputs.")
        gap = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
        scale = max(1.0, expected.abs().max().item())
        if not gap <= 1e-3 * scale:
            raise UnsupportedModelError(
                f"lrp: the LRP program walked from {backbone.library}/{backbone.name} does not reproduce its logits "
                f"(max difference {gap:.3g}): its forward does something the module tree does not show, such as a "
                "skip connection, so its skip junctions cannot be found. Supported: torchvision ResNets, VGGs, "
                "MobileNetV2; timm ResNets and EfficientNet-Lite/MobileNetV2."
            )
        return int(expected.shape[1])

    def describe(self) -> str:
        """The program, one record per line (the layers and blocks the relevance pass goes through)."""
        return "\n".join(self.program.lines())

    def _check_target(self, target: Tensor) -> None:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        bad = target[(target < -1) | (target >= self.num_classes)]
        if bad.numel():
            raise InputError(
                f"lrp: target class(es) {bad.tolist()} out of range: this model has {self.num_classes} classes "
                f"(0..{self.num_classes - 1}; -1 = the predicted class)."
            )

    def relevance(self, x: Tensor, target: Tensor, trace: list | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The raw relevance pass: ``(logits (B, C), input relevance (B, 3, H, W), start relevance (B,))``.

        ``trace``: a list that receives ``(record name, total relevance out, total relevance in)`` per record and per
        split, in relevance order (conservation checks).
        """
        self._check_target(target)
        logits, cache = self.program.forward(x)
        t = resolve_target(logits, target).reshape(-1, 1)
        source = logits if self.options.start == "logit" else logits.softmax(dim=-1)
        start = source.gather(1, t)
        r = torch.zeros_like(logits).scatter(1, t, start)
        ctx = Context(self.rules, self.options.split, self.options.max_pool, trace)
        r_in = self.program.relevance(r, cache, ctx, self.options.input == "ones")
        return logits, r_in, start.reshape(-1)

    def relevance_map(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, pixel relevance (B, H, W))``: the input relevance summed over channels, unscaled and signed."""
        logits, r_in, _ = self.relevance(x, target)
        return logits, r_in.sum(dim=1)

    def forward(self, backbone: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        logits, rel = self.relevance_map(x, target)
        if self.options.output == "positive":
            rel = rel.clamp(min=0)
        b = rel.shape[0]
        return logits, minmax(rel.reshape(b, -1)).reshape(rel.shape)
