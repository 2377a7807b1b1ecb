"""T-TAME's part of training (METHODS.md section 2; t-tame.txt sections III-C3 and III-D): its loss, its
initialisation and its schedule. The generic loop, split, checkpoints and artifact writer are in ``core.py``.

Per step, for a batch of ``B`` normalised images ``x``:

1. ``logits, raw = explainer.training_forward(backbone, x)``; ``E = sigmoid(raw)`` (B, Cls, h, w);
   ``y = argmax logits`` (the backbone's own prediction, "model truth": no labels are used).
2. ``Psi`` (Eq. 12): for each image, the map of its predicted class ``E_y`` plus ``B - 1`` maps of random other
   classes (drawn with the run's seeded generator): a (B, B, h, w) tensor.
3. Masking (Eqs. 13-14, ``engine.metrics.confidence.tame_mask``, the same function the AD/IC metric masks with),
   with ``E_y`` upsampled bilinearly to the input size: CNN ``standardise(E_y * raw01)``, ViT
   ``E_y * standardise(raw01)``; ``logits_m = backbone(masked)``.
4. Loss (Eqs. 11, 15-17)::

       Loss = l1 * CE(logits_m, y) + l2 * TV'(Psi)            (11)
       TV'(Psi) = E(Psi) + l3 * V(Psi)                         (15)
       E(Psi) = 1/S * sum_{n,j,k} Psi[n,j,k] ** l4            (16)
       V(Psi) = 1/(2S) * sum_{n,j,k} (Psi[n,j+1,k] - Psi[n,j,k])**2 + (Psi[n,j,k+1] - Psi[n,j,k])**2   (17)

   with ``S`` the number of values summed in Eq. 16 (``Psi.numel()``), so ``E`` is the mean of ``Psi ** l4``;
   differences that would cross the map's border are left out of Eq. 17. Defaults l1=1.5, l2=2, l3=0.005, l4=0.3.

What trains: every parameter of the explainer (the backbone stays frozen). Schedule: SGD (momentum 0.9, weight decay
5e-4; the paper gives neither, these are TAME's values) with OneCycleLR (max LR ``lr``, torch's defaults otherwise,
which also cycle the momentum between 0.85 and 0.95) over ``epochs * steps_per_epoch`` steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import InputError
from engine.graph import ExplainGraph
from engine.metrics.confidence import tame_mask

from .core import StepContext, TrainConfig, TrainingError, TrainingMethod

FUSION_INITS = ("random", "classifier")


@dataclass
class LossWeights:
    """The loss hyper-parameters of T-TAME (Eqs. 11, 15, 16); defaults are the paper's."""

    lambda1: float = 1.5
    lambda2: float = 2.0
    lambda3: float = 0.005
    lambda4: float = 0.3


@dataclass
class TameConfig(TrainConfig):
    """A T-TAME training run: the generic :class:`~training.core.TrainConfig` plus T-TAME's own options.

    Attributes:
        taps: the backbone layers T-TAME reads; ``None`` = the backbone's default.
        momentum: SGD momentum (OneCycleLR cycles it between 0.85 and 0.95).
        loss: the loss weights.
        fusion_init: ``"random"`` (the paper's) or ``"classifier"`` (start from the backbone's CAM, see
            :func:`init_fusion_from_classifier`).
    """

    taps: list[str] | None = None
    momentum: float = 0.9
    loss: LossWeights = field(default_factory=LossWeights)
    fusion_init: str = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loss, dict):
            self.loss = LossWeights(**self.loss)
        if self.taps is not None:
            self.taps = [str(t) for t in self.taps]
            if not self.taps or any(not t for t in self.taps):
                raise InputError("taps must name at least one layer (comma-separated module paths, no empty names).")
        if self.fusion_init not in FUSION_INITS:
            raise InputError(f"fusion_init must be one of {FUSION_INITS}, got {self.fusion_init!r}.")

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        loss = ident.pop("loss")
        ident.update({f"loss.{k}": v for k, v in loss.items()})  # differing lambdas are named one by one
        if ident["fusion_init"] == "random":  # absent at its default: older checkpoints still resume
            del ident["fusion_init"]
        return ident


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


def area_term(psi: Tensor, lambda4: float) -> Tensor:
    """E(Psi) of Eq. 16: the mean of ``Psi ** lambda4`` (S = the number of values summed)."""
    return psi.clamp_min(1e-12).pow(lambda4).mean()


def variation_term(psi: Tensor) -> Tensor:
    """V(Psi) of Eq. 17: squared differences to the next row and the next column, summed, over ``2 S``.

    Args:
        psi: maps (..., h, w); ``S = psi.numel()``. Differences that would leave the map are not counted.
    """
    dj = (psi[..., 1:, :] - psi[..., :-1, :]).pow(2).sum()
    dk = (psi[..., :, 1:] - psi[..., :, :-1]).pow(2).sum()
    return (dj + dk) / (2 * psi.numel())


def tame_loss(logits_masked: Tensor, y: Tensor, psi: Tensor, w: LossWeights) -> tuple[Tensor, dict[str, float]]:
    """The T-TAME loss, Eqs. 11 and 15-17.

    Args:
        logits_masked: the backbone's logits on the masked images (B, Cls).
        y: the backbone's predictions on the clean images (B,).
        psi: the selected sigmoid maps (..., h, w) in (0, 1).
        w: the loss weights.

    Returns:
        ``(loss, terms)`` where ``terms`` holds floats ``loss``, ``ce``, ``area`` (E), ``variation`` (V) and ``tv``
        (TV' = E + lambda3 V).
    """
    ce = F.cross_entropy(logits_masked, y)
    area = area_term(psi, w.lambda4)
    var = variation_term(psi)
    tv = area + w.lambda3 * var
    loss = w.lambda1 * ce + w.lambda2 * tv
    terms = {"loss": loss.item(), "ce": ce.item(), "area": area.item(), "variation": var.item(), "tv": tv.item()}
    return loss, terms


def select_psi(maps: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    """Psi of Eq. 12: per image, the map of its predicted class and ``B - 1`` maps of random other classes.

    Args:
        maps: sigmoid maps of every class (B, Cls, h, w).
        y: predicted classes (B,).
        generator: a CPU generator for the random classes.

    Returns:
        (B, B, h, w); ``[:, 0]`` are the maps of the predicted classes.
    """
    b, cls = maps.shape[:2]
    if b == 1 or cls == 1:
        return maps[torch.arange(b, device=maps.device), y][:, None]
    rand = torch.randint(0, cls - 1, (b, b - 1), generator=generator).to(maps.device)
    rand = rand + (rand >= y[:, None]).long()  # skip the predicted class
    idx = torch.cat([y[:, None], rand], dim=1)
    return torch.gather(maps, 1, idx[:, :, None, None].expand(-1, -1, *maps.shape[2:]))


def mask_images(x_norm: Tensor, e_y: Tensor, mean: Tensor, std: Tensor, kind: str) -> Tensor:
    """Mask a normalised batch with one map per image (Eqs. 13-14, :func:`engine.metrics.confidence.tame_mask`).

    Args:
        x_norm: normalised images (B, 3, H, W).
        e_y: maps (B, h, w) in [0, 1], upsampled bilinearly to (H, W) here.
        mean: per-channel mean (3,).
        std: per-channel std (3,).
        kind: the backbone kind, ``"cnn"`` or ``"vit"``.
    """
    m = F.interpolate(e_y[:, None], size=x_norm.shape[-2:], mode="bilinear", align_corners=False)
    return tame_mask(x_norm, m, mean.view(1, -1, 1, 1).to(x_norm), std.view(1, -1, 1, 1).to(x_norm), kind)


# ----------------------------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def init_fusion_from_classifier(graph: ExplainGraph, x_probe: Tensor) -> dict[str, Any]:
    """``fusion_init="classifier"``: start T-TAME from the backbone's class activation maps (CAM).

    Needs a tap whose global average pool feeds the classifier's last linear layer directly (EfficientNet-Lite's
    ``bn2``, MobileNetV2's ``features.18``, ResNet's ``layer4``); this is checked on ``x_probe`` (logits must equal
    ``linear(avgpool(tap))``). Then: every feature branch's BatchNorm scale is zeroed, so the branches start as
    ``ReLU(x)`` (identity on those post-activation maps); the fusion conv's columns of that tap get the classifier's
    weights, the other columns zero; and a scale ``s`` and shift ``c`` (fusion row ``s * w_k``, bias ``-c``) make the
    predicted class's map standardised (zero mean, unit variance) on the probe batch, so the training sigmoid starts
    unsaturated.

    Why: with one training image per class (``imagenet-sample``) the held-out images' classes are never the
    predicted class in training, so their fusion rows get no cross-entropy signal; from a random init they stay
    noise, from this init they stay the classifier's CAM. The paper initialises randomly (``fusion_init="random"``,
    the default) and trains on all of ImageNet.

    Returns:
        A JSON-ready record (tap, scale, shift) for the manifest.

    Raises:
        TrainingError: no tap feeds the classifier that way (e.g. VGG-16's fully connected head, ViTs).
    """
    explainer = graph.explainer
    backbone = graph.backbone
    linears = [m for m in backbone.model.modules() if isinstance(m, nn.Linear)]
    backbone.eval()
    logits, maps = backbone.tap_maps(x_probe, explainer.taps)
    offset, found = 0, None
    for i, (tap, (channels, _, _)) in enumerate(zip(explainer.taps, explainer.shapes, strict=True)):
        if linears and backbone.kind == "cnn" and channels == linears[-1].in_features:
            pooled = maps[tap].mean(dim=(2, 3))
            if torch.allclose(linears[-1](pooled), logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max())):
                found = (i, tap, offset, channels)
        offset += channels
    if found is None:
        raise TrainingError(
            f"fusion_init='classifier' needs a tap whose global average pool feeds {backbone.library}/"
            f"{backbone.name}'s last linear layer directly (taps {explainer.taps}); this backbone has none. "
            "Use fusion_init='random' (the paper's), or add such a tap (e.g. the last feature map) with --taps."
        )
    i, tap, offset, channels = found
    linear = linears[-1]
    for branch in explainer.branches:
        branch.bn.weight.zero_()
        branch.bn.bias.zero_()
    fusion = explainer.fusion
    fusion.weight.zero_()
    fusion.weight[:, offset : offset + channels, 0, 0] = linear.weight
    fusion.bias.zero_()
    feats = explainer.features(backbone, x_probe)[1]
    cam = fusion(feats)  # (B, K, h, w)
    top = cam[torch.arange(len(cam)), logits.argmax(1)]
    scale = 1.0 / float(top.std().clamp_min(1e-6))
    shift = float(top.mean()) * scale
    fusion.weight.mul_(scale)
    fusion.bias.fill_(-shift)
    return {"fusion_init": "classifier", "tap": tap, "scale": scale, "shift": shift}


# ----------------------------------------------------------------------------------------------------------------
# The method's part
# ----------------------------------------------------------------------------------------------------------------


class TTAMETraining(TrainingMethod):
    """T-TAME: every explainer parameter trains; SGD + OneCycleLR; the loss of Eqs. 11-17."""

    method = "tame"
    config_class = TameConfig

    def __init__(self, loss_weights: LossWeights | None = None):
        self.loss_weights = loss_weights or LossWeights()

    def explainer_options(self, cfg: TameConfig) -> dict[str, Any]:
        return {} if cfg.taps is None else {"taps": list(cfg.taps)}

    def prepare(self, graph: ExplainGraph, cfg: TameConfig, probe: Callable[[], Tensor]) -> dict[str, Any]:
        if cfg.fusion_init == "classifier":
            return init_fusion_from_classifier(graph, probe())
        return {"fusion_init": "random"}

    def optimizer(self, params: list[nn.Parameter], cfg: TameConfig, total_steps: int) -> tuple[Any, Any]:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps)
        return optimizer, scheduler

    def loss(self, graph: ExplainGraph, x: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        explainer, backbone = graph.explainer, graph.backbone
        logits, raw = explainer.training_forward(backbone, x)
        y = logits.detach().argmax(dim=-1)
        psi = select_psi(torch.sigmoid(raw), y, ctx.generator)
        masked = mask_images(x, psi[:, 0], ctx.mean, ctx.std, backbone.kind)
        return tame_loss(backbone(masked), y, psi, self.loss_weights)

    def artifact_options(self, graph: ExplainGraph) -> dict[str, Any]:
        return {**graph.explainer.options_dict(), "taps": list(graph.explainer.taps)}  # the resolved taps

    def manifest_record(self, cfg: TameConfig) -> dict[str, Any]:
        return {
            "optimizer": {
                "name": "SGD",
                "momentum": cfg.momentum,
                "weight_decay": cfg.weight_decay,
                "schedule": "OneCycleLR",
                "max_lr": cfg.lr,
            },
            "loss": dataclasses.asdict(cfg.loss),
        }


def train(cfg: TameConfig, echo: Callable[[str], None] = print):
    """Run (or resume) a T-TAME training and write the artifact (see :func:`training.core.train`)."""
    from .core import train as run

    return run(TTAMETraining(cfg.loss), cfg, echo)
