"""T-TAME (Ntrougkas et al.): a trainable attention mechanism over three feature maps of a frozen classifier.

Architecture (METHODS.md section 2, ``t-tame.txt`` section III):

* Feature-map adapter (owned by the backbone, ``adapter.tap_maps``): CNN maps (B, C, h, w) pass unchanged; ViT tokens
  (B, P+N, D) drop the P prefix (class / register) tokens and become (B, D, sqrt(N), sqrt(N)).
* One feature branch per tapped map: 1x1 conv (C_i -> C_i), BatchNorm, skip connection (adds the branch input), ReLU,
  then a bilinear upsample (``align_corners=False``) to the largest map's size.
* Fusion: concatenate the branches and a 1x1 conv to ``num_classes`` channels, one map per class. Training applies a
  sigmoid to :meth:`TTAME.maps_all`; inference (:meth:`TTAME.forward`) computes only the target class's row of the
  fusion conv and min-max normalises it per image instead.

Taps: the backbone's own (``adapter.default_taps()``, table in ``engine/backbones/taps.py``), or any three modules
given by the option ``taps``; the backbone turns each tap's output into a map (``adapter.tap_maps``). The
explanation map has the resolution of the largest tap.
"""

from __future__ import annotations

import dataclasses
import difflib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from ..numeric import minmax
from .base import Explainer, probe_taps, register_explainer, resolve_target


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
    """T-TAME: feature branches on tapped maps of the frozen backbone, fused by a 1x1 conv into one map per class.

    Trainable (``training/train_tame.py``): every parameter of the explainer trains, the backbone stays frozen, and
    the head saved with an artifact is the explainer's state.
    """

    @dataclasses.dataclass
    class Options:
        """Attributes:
        taps: dotted module names of the wrapped model whose outputs feed the attention mechanism (three in the
            paper); None takes the backbone's default (``adapter.default_taps()``). List names with
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
        logits, maps = probe_taps(backbone, self.taps, input_size)
        n_logits = int(logits.shape[-1])
        num_classes = n_logits if options.num_classes is None else int(options.num_classes)
        if num_classes != n_logits:
            raise InputError(
                f"tame: num_classes={options.num_classes} but {backbone.library}/{backbone.name} outputs {n_logits} "
                "logits; leave num_classes unset (it defaults to the backbone's classes)."
            )
        self.num_classes = num_classes
        shapes = [(int(maps[t].shape[1]), int(maps[t].shape[2]), int(maps[t].shape[3])) for t in self.taps]
        self.shapes = shapes  # (C_i, h_i, w_i) per tap
        self.out_size = (max(s[1] for s in shapes), max(s[2] for s in shapes))
        self.branches = nn.ModuleList([FeatureBranch(c, options.skip) for c, _, _ in shapes])
        self.fusion = nn.Conv2d(sum(c for c, _, _ in shapes), num_classes, kernel_size=1)
        self.to(device=probe.device, dtype=probe.dtype)

    @staticmethod
    def _resolve_taps(taps: list[str] | None, backbone: nn.Module) -> list[str]:
        """The given taps, checked against the backbone's submodules, or the backbone's defaults."""
        if taps is None:
            found = backbone.default_taps()
            if not found:
                from ..backbones.taps import default_tap_patterns

                patterns = default_tap_patterns()
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

    def features(self, backbone: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of the backbone and the concatenated, upsampled feature-branch outputs (B, sum C_i, h, w).

        The tapped maps are detached: the backbone stays frozen and no graph is built through it.
        """
        logits, maps = backbone.tap_maps(x, self.taps)
        parts = []
        for tap, branch in zip(self.taps, self.branches, strict=True):
            a = branch(maps[tap].detach())
            if tuple(a.shape[-2:]) != self.out_size:
                a = F.interpolate(a, size=self.out_size, mode="bilinear", align_corners=False)
            parts.append(a)
        return logits, torch.cat(parts, dim=1)

    def trainable_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """All of the explainer's parameters (the backbone stays frozen)."""
        return list(self.parameters())

    def training_forward(self, backbone: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`maps_all`: the logits and every class's raw (pre-sigmoid) map."""
        return self.maps_all(backbone, x)

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
        logits, maps = backbone.tap_maps(x, self.taps)
        t = resolve_target(logits, target)
        weight = self.fusion.weight.flatten(1)[t]  # (B, sum C_i)
        h, w = self.out_size
        scores = None
        offset = 0
        for tap, branch in zip(self.taps, self.branches, strict=True):
            a = branch(maps[tap].detach())  # (B, C_i, h_i, w_i)
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
        return logits, minmax(scores).reshape(-1, h, w)
