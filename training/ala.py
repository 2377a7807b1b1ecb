"""ALA's part of training (METHODS.md section 3; ``ala_iconip2025.txt`` section 4.3): the Alternating Epoch
Architect, the loss, the optimiser. The generic loop, split, checkpoints, early stopping and artifact writer are in
``core.py``.

AEA, with epochs counted from 1 as in the paper:

* odd epochs: ``h_ALA = alpha``; ALA (adapter, f1, f2), the perception branch and the encoder's LoRA deltas train;
  loss ``CE(p_PB, y) + lambda * CE(p_ALA, y)``;
* even epochs: ``h_ALA = 1`` (all ones); ALA's parameters are frozen (no gradient, so AdamW leaves them bit for bit;
  ALA is not even run, so its BatchNorm statistics stay too); the perception branch and LoRA train on
  ``CE(p_PB, y)``.

``aea=False`` (``--no-aea``) trains every epoch as an odd one (the paper's ablation). Labels are the dataset's
ground truth. Optimiser: AdamW (lr 5e-5, betas 0.9 / 0.999, weight decay 1e-4) at a constant rate; augmentation:
random crops (scale 0.75, the prototype's "resize 510, crop 384") and horizontal flips; early stopping with
patience 5 on the validation loss. Validation (always with alpha, as at inference): the perception branch's loss
and accuracy, the ALA classifier's accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import PreprocessConfig
from engine.errors import InputError
from engine.graph import ExplainGraph

from .core import Split, StepContext, TrainConfig, TrainingError, TrainingMethod

#: The loss weight of the ALA classifier. The paper gives none; the prototype used 1/15. The default was chosen on the
#: validation part of the kahikatea split (EfficientNet-Lite0 encoder): validation mIoU 0.329 at lambda = 1 against
#: 0.324 at 1/15 (the two within each other's 95 % intervals; ``benchmarks/results/ala-kahikatea/lambda.json``,
#: ``benchmarks/ala_lambda.py``).
DEFAULT_LAMBDA = 1.0


@dataclass
class ALAConfig(TrainConfig):
    """An ALA training run: the generic :class:`~training.core.TrainConfig` plus ALA's own options.

    The defaults differ from the generic ones where the paper says so: AdamW lr 5e-5, weight decay 1e-4, batch 8,
    up to 120 epochs, early stopping with patience 5, random crops (scale 0.75) and flips, input 384 (the preset's).

    Attributes:
        preset: ``cub`` or ``imagenet-s`` (adapter size, the paper's Table 1).
        dim, depth, heads: override the preset's adapter size.
        taps: ``paper``, ``spread``, ``none`` or a list of encoder tap indices (see ``engine/explainers/ala.py``).
        lora_rank: LoRA rank on the encoder (0 = no LoRA, the ablation).
        lora_alpha: LoRA scale numerator.
        lora_block: the encoder block with LoRA (None: the last block's attention q/v, a CNN's last stage).
        classes: classes of the perception branch (None: the dataset's).
        pb_channels: the perception branch's width.
        lam: lambda, the weight of CE(p_ALA) in the loss.
        aea: alternate epochs (the paper's AEA); False trains every epoch with alpha.
        beta1, beta2: AdamW's betas.
    """

    lr: float = 5e-5
    weight_decay: float = 1e-4
    batch_size: int = 8
    epochs: int = 120
    crop_scale: float | None = 0.75
    patience: int | None = 5
    preset: str = "cub"
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    taps: list[int] | str = "paper"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_block: str | None = None
    classes: int | None = None
    pb_channels: int = 128
    lam: float = DEFAULT_LAMBDA
    aea: bool = True
    beta1: float = 0.9
    beta2: float = 0.999

    def __post_init__(self) -> None:
        from engine.explainers.ala import PRESETS

        if self.preset not in PRESETS:
            raise InputError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}.")
        if self.input_size is None:  # the paper's resolution (the ViT's position embedding is interpolated to it)
            self.input_size = PRESETS[self.preset]["input_size"]
        super().__post_init__()
        if not (self.lam >= 0):
            raise InputError(f"lambda must be >= 0, got {self.lam!r}.")
        if self.classes is not None and (isinstance(self.classes, bool) or self.classes < 1):
            raise InputError(f"classes must be a positive integer, got {self.classes!r}.")


class ALATraining(TrainingMethod):
    """ALA with AEA: AdamW at a constant rate, CE(PB) + lambda CE(ALA) on ground-truth labels."""

    method = "ala"
    config_class = ALAConfig

    def __init__(self, aea: bool = True, lam: float = DEFAULT_LAMBDA) -> None:
        self.aea = bool(aea)
        self.lam = lam
        self.use_alpha = True
        self.classes: int | None = None

    # --- data and model --------------------------------------------------------------------------------------------
    def check_data(self, split: Split, cfg: ALAConfig) -> None:
        unlabelled = [p for p in [*split.train, *split.val] if p not in split.labels]
        if unlabelled:
            raise TrainingError(
                f"ALA trains on ground-truth labels, but {len(unlabelled)} image(s) have none (e.g. {unlabelled[0]}). "
                "Use a labelled dataset (kahikatea, cub, imagenet-s, a class-per-folder tree)."
            )
        names = split.class_names
        classes = cfg.classes or (len(names) if names else max(split.labels.values()) + 1)
        bad = sorted({v for v in split.labels.values() if not 0 <= v < classes})
        if bad:
            raise TrainingError(
                f"labels {bad[:5]} are outside the {classes} classes (0..{classes - 1}); pass --classes N with N "
                "above the largest label, or fix the labels."
            )
        self.classes = classes

    def class_names(self, cfg: ALAConfig, split: Split) -> list[str] | None:
        names = split.class_names
        return list(names) if names and len(names) == self.classes else None

    def explainer_options(self, cfg: ALAConfig) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "preset": cfg.preset,
            "taps": cfg.taps,
            "lora_rank": cfg.lora_rank,
            "lora_alpha": cfg.lora_alpha,
            "lora_block": cfg.lora_block,
            "num_classes": self.classes if self.classes is not None else cfg.classes,
            "pb_channels": cfg.pb_channels,
        }
        opts.update({k: getattr(cfg, k) for k in ("dim", "depth", "heads") if getattr(cfg, k) is not None})
        return opts

    def prepare(self, graph: ExplainGraph, cfg: ALAConfig, probe: Callable[[], Tensor]) -> dict[str, Any]:
        e = graph.explainer
        return {
            "lattice_taps": list(e.lattice_taps),
            "last_tap": e.last_tap,
            "lora_targets": list(e.lora_targets),
            "grid": list(e.grid),
            "parameters": {
                "ala": sum(p.numel() for p in e.ala.parameters()),
                "perception_branch": sum(p.numel() for p in e.pb.parameters()),
                "lora": sum(p.numel() for p in graph.backbone.delta_parameters()),
            },
        }

    def optimizer(self, params: list[nn.Parameter], cfg: ALAConfig, total_steps: int) -> tuple[Any, Any]:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        return optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)

    # --- AEA -------------------------------------------------------------------------------------------------------
    @staticmethod
    def alpha_epoch(epoch: int, aea: bool) -> bool:
        """Whether 0-based ``epoch`` is an odd epoch in the paper's 1-based count (h_ALA = alpha, ALA trains)."""
        return not aea or epoch % 2 == 0

    def on_epoch_start(self, graph: ExplainGraph, epoch: int) -> None:
        self.use_alpha = self.alpha_epoch(epoch, self.aea)
        for p in graph.explainer.ala_parameters():
            p.requires_grad_(self.use_alpha)

    def set_train_mode(self, graph: ExplainGraph) -> None:
        graph.explainer.train()
        graph.backbone.eval()
        if not self.use_alpha:
            graph.explainer.ala.eval()  # frozen epochs: nothing of ALA moves, not even BatchNorm statistics

    def loss(self, graph: ExplainGraph, x: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        if ctx.labels is None:
            raise TrainingError("ALA needs the batch's ground-truth labels; the dataset gave none.")
        y = ctx.labels
        out = graph.explainer.training_forward(graph.backbone, x, use_alpha=self.use_alpha)
        ce_pb = F.cross_entropy(out["pb"], y)
        terms = {"ce_pb": ce_pb.item(), "alpha_epoch": float(self.use_alpha)}
        loss = ce_pb
        if self.use_alpha:
            ce_ala = F.cross_entropy(out["ala"], y)
            loss = ce_pb + self.lam * ce_ala
            terms.update(ce_ala=ce_ala.item(), alpha_mean=out["alpha"].mean().item())
        terms["loss"] = loss.item()
        return loss, terms

    # --- validation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(
        self, graph: ExplainGraph, x_val: Tensor, pre: PreprocessConfig, batch: int, labels: Tensor | None = None
    ) -> dict[str, float]:
        if labels is None:
            raise TrainingError("ALA validates on ground-truth labels; the validation images have none.")
        graph.eval()
        pb, ala = [], []
        for i in range(0, len(x_val), batch):
            out = graph.explainer.training_forward(graph.backbone, x_val[i : i + batch], use_alpha=True)
            pb.append(out["pb"])
            ala.append(out["ala"])
        pb_t, ala_t = torch.cat(pb).float(), torch.cat(ala).float()
        ce_pb = float(F.cross_entropy(pb_t, labels))
        ce_ala = float(F.cross_entropy(ala_t, labels))
        return {
            "loss": ce_pb + self.lam * ce_ala,
            "ce_pb": ce_pb,
            "ce_ala": ce_ala,
            "acc": float((pb_t.argmax(1) == labels).float().mean()),
            "acc_ala": float((ala_t.argmax(1) == labels).float().mean()),
        }

    def score(self, val: dict[str, float]) -> float:
        """Early stopping keeps the epoch with the lowest validation loss."""
        return -val["loss"]

    def artifact_options(self, graph: ExplainGraph) -> dict[str, Any]:
        return graph.explainer.options_dict()

    def manifest_record(self, cfg: ALAConfig) -> dict[str, Any]:
        return {
            "optimizer": {
                "name": "AdamW",
                "lr": cfg.lr,
                "betas": [cfg.beta1, cfg.beta2],
                "weight_decay": cfg.weight_decay,
                "schedule": "constant",
            },
            "loss": {"formula": "CE(PB) + lambda * CE(ALA)", "lambda": cfg.lam, "labels": "ground truth"},
            "aea": cfg.aea,
            "augmentation": {"flip": cfg.flip, "crop_scale": cfg.crop_scale},
            "early_stopping_score": "-validation loss",  # the run's record (patience, best epoch) is "early_stopping"
        }


def train(cfg: ALAConfig, echo: Callable[[str], None] = print):
    """Run (or resume) an ALA training and write the artifact (see :func:`training.core.train`)."""
    from .core import train as run

    return run(ALATraining(cfg.aea, cfg.lam), cfg, echo)
