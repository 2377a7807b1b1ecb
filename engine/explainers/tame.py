"""T-TAME (Ntrougkas et al.): a trainable attention mechanism over three feature maps of a frozen classifier.

Architecture (METHODS.md section 2, ``t-tame.txt`` section III):

* Feature-map adapter: CNN maps (B, C, h, w) pass unchanged; ViT tokens (B, P+N, D) drop the P prefix (class /
  register) tokens and become (B, D, sqrt(N), sqrt(N)).
* One feature branch per tapped map: 1x1 conv (C_i -> C_i), BatchNorm, skip connection (adds the branch input), ReLU,
  then a bilinear upsample (``align_corners=False``) to the largest map's size.
* Fusion: concatenate the branches and a 1x1 conv to ``num_classes`` channels, one map per class. Training applies a
  sigmoid to :meth:`TTAME.maps_all`; inference (:meth:`TTAME.forward`) computes only the target class's row of the
  fusion conv and min-max normalises it per image instead.

Default taps (:data:`DEFAULT_TAPS`, dotted module names of the wrapped model) with their shapes at 224x224:

=============================================  =========================================================================
backbone                                       taps (C x h x w)
=============================================  =========================================================================
torchvision ``vgg*``                           the last three max-pools of ``features``; vgg16: ``features.16``
                                               (256x28x28), ``features.23`` (512x14x14), ``features.30`` (512x7x7)
torchvision / timm ``resnet*``, ``resnext*``   ``layer2`` (512x28x28), ``layer3`` (1024x14x14), ``layer4`` (2048x7x7)
timm ``vit_*`` / ``deit*``                     the last three of ``blocks`` (ViT-B/16: ``blocks.9..11``, D x 14 x 14)
torchvision ``vit_*``                          the last three ``encoder.layers.encoder_layer_*`` (ViT-B/16: 9..11)
open_clip (ViT)                                the last three ``visual.transformer.resblocks.*``
timm ``tf_efficientnet_lite*``                 ``blocks.4`` (112x14x14), ``blocks.5`` (192x7x7), ``bn2`` (1280x7x7)
torchvision ``mobilenet_v2``                   ``features.13`` (96x14x14), ``features.17`` (320x7x7),
                                               ``features.18`` (1280x7x7)
=============================================  =========================================================================

The EfficientNet-Lite and MobileNetV2 taps follow the paper's ResNet choice (outputs of the last stages, decreasing
resolution): the last stage at stride 16 (the 14x14 map), the last inverted-residual stage at stride 32 (7x7) and
the final 1x1 head conv's activated output (``bn2`` in timm is BatchNorm + ReLU6; ``features.18`` in torchvision is
conv + BN + ReLU6), i.e. the very map the classifier pools. The explanation map then has the 14x14 resolution of the
largest tap.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from .base import Explainer, minmax_normalise, register_explainer, resolve_target


def _last_children(path: str, count: int = 3) -> Callable[[nn.Module], list[str]]:
    """Taps: the last ``count`` children of the container at ``path`` (e.g. a ViT's encoder blocks)."""

    def taps(model: nn.Module) -> list[str]:
        container = model.get_submodule(path)
        names = [name for name, _ in container.named_children()]
        return [f"{path}.{name}" for name in names[-count:]]

    return taps


def _last_maxpools(path: str = "features", count: int = 3) -> Callable[[nn.Module], list[str]]:
    """Taps: the last ``count`` ``MaxPool2d`` children of the container at ``path`` (VGG)."""

    def taps(model: nn.Module) -> list[str]:
        container = model.get_submodule(path)
        names = [name for name, mod in container.named_children() if isinstance(mod, nn.MaxPool2d)]
        return [f"{path}.{name}" for name in names[-count:]]

    return taps


_RESNET_TAPS = ["layer2", "layer3", "layer4"]

#: Default taps keyed by (library, fnmatch pattern of the model name); the first match wins. A value is a list of
#: dotted module names of the wrapped model, or a function of the wrapped model returning one.
DEFAULT_TAPS: dict[tuple[str, str], list[str] | Callable[[nn.Module], list[str]]] = {
    ("torchvision", "vgg*"): _last_maxpools("features"),
    ("torchvision", "resnet*"): _RESNET_TAPS,
    ("torchvision", "resnext*"): _RESNET_TAPS,
    ("torchvision", "wide_resnet*"): _RESNET_TAPS,
    ("timm", "resnet*"): _RESNET_TAPS,
    ("timm", "resnext*"): _RESNET_TAPS,
    ("timm", "vit_*"): _last_children("blocks"),
    ("timm", "deit*"): _last_children("blocks"),
    ("torchvision", "vit_*"): _last_children("encoder.layers"),
    ("open_clip", "*"): _last_children("visual.transformer.resblocks"),
    ("timm", "tf_efficientnet_lite*"): ["blocks.4", "blocks.5", "bn2"],
    ("timm", "efficientnet_lite*"): ["blocks.4", "blocks.5", "bn2"],
    ("torchvision", "mobilenet_v2"): ["features.13", "features.17", "features.18"],
}


def default_taps(backbone: nn.Module) -> list[str] | None:
    """The default taps of a backbone adapter from :data:`DEFAULT_TAPS`; None when it has none."""
    for (library, pattern), taps in DEFAULT_TAPS.items():
        if library == backbone.library and fnmatch.fnmatchcase(backbone.name, pattern):
            try:
                return list(taps(backbone.model)) if callable(taps) else list(taps)
            except AttributeError:  # the container the rule expects is missing
                return None
    return None


def _num_prefix_tokens(backbone: nn.Module) -> int:
    """Class/register tokens in front of a ViT's patch tokens."""
    count = getattr(backbone.model, "num_prefix_tokens", None)
    if count is not None:
        return int(count)
    try:
        return int(backbone.vit_parts().num_prefix_tokens)
    except UnsupportedModelError:
        return 1


class FeatureBranch(nn.Module):
    """1x1 conv (C -> C), BatchNorm, optional skip connection (adds the input), ReLU."""

    def __init__(self, channels: int, skip: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        if self.skip:
            y = y + x
        return F.relu(y)


@register_explainer("tame")
class TTAME(Explainer):
    """T-TAME: feature branches on tapped maps of the frozen backbone, fused by a 1x1 conv into one map per class."""

    trainable = True

    @dataclasses.dataclass
    class Options:
        """Attributes:
        taps: dotted module names of the wrapped model whose outputs feed the attention mechanism (three in the
            paper); None takes the backbone's default from :data:`DEFAULT_TAPS`. List names with
            ``adapter.tap_names()``.
        num_classes: maps produced by the fusion conv; None (the default) = the backbone's number of logits, which
            it must equal (the target indexes both).
        skip: skip connection in the feature branches (the paper's architecture).
        """

        taps: list[str] | None = None
        num_classes: int | None = None
        skip: bool = True

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        self.taps = self._resolve_taps(options.taps, backbone)
        probe = next(backbone.parameters())
        x = torch.zeros(1, 3, *input_size, dtype=probe.dtype, device=probe.device)
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                logits, feats = backbone.forward_taps(x, self.taps)
        finally:
            backbone.train(was_training)
        n_logits = int(logits.shape[-1])
        num_classes = n_logits if options.num_classes is None else int(options.num_classes)
        if num_classes != n_logits:
            raise InputError(
                f"tame: num_classes={options.num_classes} but {backbone.library}/{backbone.name} outputs {n_logits} "
                "logits; leave num_classes unset (it defaults to the backbone's classes)."
            )
        self.num_classes = num_classes
        prefix = _num_prefix_tokens(backbone) if backbone.kind == "vit" else 0
        self.layouts: list[tuple[str, int, int, int]] = []  # per tap: (layout, prefix tokens, grid h, grid w)
        shapes = []
        for tap in self.taps:
            layout, grid, channels = self._layout(tap, feats[tap], prefix, backbone)
            self.layouts.append((layout, prefix, *grid))
            shapes.append((channels, *grid))
        self.shapes = shapes  # (C_i, h_i, w_i) per tap
        self.out_size = (max(s[1] for s in shapes), max(s[2] for s in shapes))
        self.branches = nn.ModuleList([FeatureBranch(c, options.skip) for c, _, _ in shapes])
        self.fusion = nn.Conv2d(sum(c for c, _, _ in shapes), num_classes, kernel_size=1)
        self.to(device=probe.device, dtype=probe.dtype)

    @staticmethod
    def _resolve_taps(taps: list[str] | None, backbone: nn.Module) -> list[str]:
        """The given taps, checked against the backbone's submodules, or the backbone's defaults."""
        if taps is None:
            found = default_taps(backbone)
            if not found:
                patterns = sorted(f"{lib}/{pat}" for lib, pat in DEFAULT_TAPS)
                raise UnsupportedModelError(
                    f"tame has no default taps for {backbone.library}/{backbone.name} (defaults exist for "
                    f"{patterns}); pass the option taps=[three module names], e.g. the outputs of its last three "
                    "stages or blocks. List the names with adapter.tap_names()."
                )
            return found
        if isinstance(taps, str) or not taps or not all(isinstance(t, str) for t in taps):
            raise InputError(f"tame: taps must be a non-empty list of module names, got {taps!r}.")
        if len(set(taps)) != len(taps):
            raise InputError(f"tame: taps {taps} name a module twice; give distinct modules.")
        names = backbone.tap_names()
        known = set(names)
        missing = [t for t in taps if t not in known]
        if missing:
            hints = {t: difflib.get_close_matches(t, names, n=5, cutoff=0.5) for t in missing}
            raise UnsupportedModelError(
                f"{backbone.library}/{backbone.name} has no submodule(s) {missing} to tap; closest names: {hints}. "
                "Fix the option taps (list all names with adapter.tap_names())."
            )
        return list(taps)

    @staticmethod
    def _layout(tap: str, out: Tensor, prefix: int, backbone: nn.Module) -> tuple[str, tuple[int, int], int]:
        """How to turn a tap's output into a (B, C, h, w) map: ``"map"``, ``"tokens"`` or ``"tokens_seq_first"``."""
        if isinstance(out, tuple | list):
            out = out[0]
        if not isinstance(out, Tensor):
            raise UnsupportedModelError(f"tame: tap {tap!r} does not output a tensor; choose another module.")
        if out.ndim == 4:
            return "map", (int(out.shape[2]), int(out.shape[3])), int(out.shape[1])
        if out.ndim == 3:
            if out.shape[0] == 1:  # probe batch 1: (1, T, D)
                layout, tokens = "tokens", int(out.shape[1])
            elif out.shape[1] == 1:  # (T, 1, D): sequence-first transformer
                layout, tokens = "tokens_seq_first", int(out.shape[0])
            else:
                raise UnsupportedModelError(f"tame: cannot tell the batch axis of tap {tap!r} {tuple(out.shape)}.")
            n = tokens - prefix
            side = math.isqrt(max(n, 0))
            if n <= 0 or side * side != n:
                raise UnsupportedModelError(
                    f"tame: tap {tap!r} has {tokens} tokens; with {prefix} prefix token(s) the {n} patch tokens do "
                    f"not form a square grid. Tap an encoder block of {backbone.library}/{backbone.name}."
                )
            return layout, (side, side), int(out.shape[2])
        raise UnsupportedModelError(
            f"tame: tap {tap!r} outputs shape {tuple(out.shape)}; taps must give (B, C, h, w) maps or (B, T, D) "
            "tokens. Choose another module (adapter.tap_names())."
        )

    def _adapt(self, out: Tensor | tuple, layout: tuple[str, int, int, int]) -> Tensor:
        """Feature-map adapter: a tap's output as a (B, C, h, w) map."""
        if isinstance(out, tuple | list):
            out = out[0]
        kind, prefix, h, w = layout
        if kind == "map":
            return out
        if kind == "tokens_seq_first":
            out = out.transpose(0, 1)
        patches = out[:, prefix:]  # (B, N, D)
        return patches.transpose(1, 2).reshape(-1, patches.shape[-1], h, w)

    def features(self, backbone: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of the backbone and the concatenated, upsampled feature-branch outputs (B, sum C_i, h, w).

        The tapped maps are detached: the backbone stays frozen and no graph is built through it.
        """
        logits, taps = backbone.forward_taps(x, self.taps)
        parts = []
        for tap, layout, branch in zip(self.taps, self.layouts, self.branches, strict=True):
            a = branch(self._adapt(taps[tap], layout).detach())
            if tuple(a.shape[-2:]) != self.out_size:
                a = F.interpolate(a, size=self.out_size, mode="bilinear", align_corners=False)
            parts.append(a)
        return logits, torch.cat(parts, dim=1)

    def maps_all(self, backbone: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (B, num_classes) and the raw, pre-sigmoid fusion output (B, num_classes, h, w); for training."""
        logits, feats = self.features(backbone, x)
        return logits, self.fusion(feats)

    def forward(self, backbone: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the target class's map (B, h, w), min-max normalised per image.

        Only the target's row of the fusion conv is computed, and before the upsampling: the fusion conv and the
        bilinear upsample are both linear and the upsample acts on each channel alike, so
        ``row . up(a_i) = up(row_i . a_i)`` for each branch ``a_i``. Each branch is projected onto its slice of
        the row at its own resolution (a gather and a batched matmul) and only the one-channel result is
        upsampled: exact up to float rounding, and the 1280-channel maps are never upsampled.
        """
        logits, taps = backbone.forward_taps(x, self.taps)
        t = resolve_target(logits, target)
        weight = self.fusion.weight.flatten(1)[t]  # (B, sum C_i)
        h, w = self.out_size
        scores = None
        offset = 0
        for tap, layout, branch in zip(self.taps, self.layouts, self.branches, strict=True):
            a = branch(self._adapt(taps[tap], layout).detach())  # (B, C_i, h_i, w_i)
            c = a.shape[1]
            s_i = torch.matmul(weight[:, None, offset : offset + c], a.flatten(2))  # (B, 1, h_i * w_i)
            s_i = s_i.reshape(-1, 1, *a.shape[-2:])
            if tuple(a.shape[-2:]) != self.out_size:
                s_i = F.interpolate(s_i, size=self.out_size, mode="bilinear", align_corners=False)
            scores = s_i if scores is None else scores + s_i
            offset += c
        scores = scores.flatten(1)  # (B, h * w)
        if self.fusion.bias is not None:
            scores = scores + self.fusion.bias[t].unsqueeze(1)
        return logits, minmax_normalise(scores).reshape(-1, h, w)
