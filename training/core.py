"""Training loop of T-TAME (METHODS.md section 2; t-tame.txt sections III-C3 and III-D).

The explainer (``engine.explainers.tame.TTAME``) learns on a **frozen** backbone: the backbone's parameters have
``requires_grad=False`` and it stays in eval mode throughout (its BatchNorm statistics are never updated), while the
explainer's own BatchNorms train. Per step, for a batch of ``B`` normalised images ``x``:

1. ``logits, raw = explainer.maps_all(backbone, x)``; ``E = sigmoid(raw)`` (B, Cls, h, w); ``y = argmax logits``
   (the backbone's own prediction, "model truth": no labels are used).
2. ``Psi`` (Eq. 12): for each image, the map of its predicted class ``E_y`` plus ``B - 1`` maps of random other
   classes (drawn with the run's seeded generator): a (B, B, h, w) tensor.
3. Masking (Eqs. 13-14), with ``E_y`` upsampled bilinearly to the input size: CNN ``standardise(E_y * raw01)``,
   ViT ``E_y * standardise(raw01)``; ``logits_m = backbone(masked)``.
4. Loss (Eqs. 11, 15-17)::

       Loss = l1 * CE(logits_m, y) + l2 * TV'(Psi)            (11)
       TV'(Psi) = E(Psi) + l3 * V(Psi)                         (15)
       E(Psi) = 1/S * sum_{n,j,k} Psi[n,j,k] ** l4            (16)
       V(Psi) = 1/(2S) * sum_{n,j,k} (Psi[n,j+1,k] - Psi[n,j,k])**2 + (Psi[n,j,k+1] - Psi[n,j,k])**2   (17)

   with ``S`` the number of values summed in Eq. 16 (``Psi.numel()``), so ``E`` is the mean of ``Psi ** l4``;
   differences that would cross the map's border are left out of Eq. 17. Defaults l1=1.5, l2=2, l3=0.005, l4=0.3.

Optimiser: SGD (momentum 0.9, weight decay 5e-4; the paper gives neither, these are TAME's values) over the
explainer's parameters, with OneCycleLR (max LR ``lr``, torch's defaults otherwise, which also cycle the momentum
between 0.85 and 0.95) over ``epochs * steps_per_epoch`` steps.

Data: an ``engine.data`` dataset (``folder``, ``imagenet-sample``, ...), preprocessed with the backbone's own
evaluation transform (``engine.create.default_preprocess``; ``input_size`` may override the size). A fixed held-out
validation split of ``val_size`` images is drawn with the seed; the rest trains, with random horizontal flips
(``flip=True``; the paper random-crops instead, a flip keeps the evaluation geometry). After each epoch the loop
logs the train loss and its terms and the validation AD(15%) / IC(15%) (``engine.metrics`` preset ``tame``) to
stdout and ``WORKDIR/train_log.jsonl``, and saves a checkpoint (safetensors + JSON, no pickle) from which
``resume=True`` continues. The result is an artifact folder that ``Engine.load`` and ``export/to_onnx.py`` accept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.artifact import HEAD_WEIGHTS, WEIGHTS, Artifact, new_manifest, write_artifact
from engine.config import BackboneConfig, ExplainerConfig, PreprocessConfig
from engine.data import image_name
from engine.errors import EngineError, InputError
from engine.graph import ExplainGraph

METHOD = "tame"
CHECKPOINT_TENSORS = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
LOG_FILE = "train_log.jsonl"
HELDOUT_FILE = "heldout.json"
CHECKPOINT_FORMAT = 1

# Keys of TrainConfig that may differ between a run and its resumption (they do not change what is trained).
RUNTIME_KEYS = frozenset(
    {"out", "workdir", "resume", "max_steps", "command", "progress", "loader_threads", "embed_backbone"}
)


class TrainingError(EngineError, ValueError):
    """A training run cannot start or continue (bad data, a mismatched checkpoint, ...)."""


@dataclass
class LossWeights:
    """The loss hyper-parameters of T-TAME (Eqs. 11, 15, 16); defaults are the paper's."""

    lambda1: float = 1.5
    lambda2: float = 2.0
    lambda3: float = 0.005
    lambda4: float = 0.3


@dataclass
class TrainConfig:
    """Everything that defines a T-TAME training run.

    Attributes:
        backbone: ``LIBRARY/NAME``, e.g. ``timm/tf_efficientnet_lite0``.
        out: the artifact folder to write.
        source: backbone weights: ``package``, ``pretrained`` or ``random``; ``None`` = ``package`` where one is
            known, else ``pretrained`` (as ``engine.create.create_artifact``).
        weights: a local safetensors file with the classifier's state dict (overrides ``source``).
        num_classes: classifier outputs.
        backbone_kwargs: extra constructor arguments of the backbone (e.g. ``{"fused": True}`` for the
            BatchNorm-folded torchvision MobileNetV2 of ``../shared/weights``).
        taps: the backbone layers T-TAME reads; ``None`` = the explainer's default for this backbone.
        data: an ``engine.data`` dataset name (``folder``, ``imagenet-sample``, ...).
        data_root: the dataset folder (``None``: the dataset's default folder under ``../shared/data``).
        val_size: images held out for validation (drawn once with ``seed``).
        epochs: training epochs.
        batch_size: images per optimiser step.
        lr: the maximum learning rate of OneCycleLR.
        momentum: SGD momentum (OneCycleLR cycles it between 0.85 and 0.95).
        weight_decay: SGD weight decay.
        seed: seeds the backbone's random init (``source="random"``), the split, the shuffling, the flips, the
            random classes of Psi and torch's global generator.
        input_size: overrides the preprocess size (square side); ``None`` = the backbone's own.
        flip: random horizontal flips of training images.
        loss: the loss weights.
        workdir: where the checkpoint and the log go; ``None`` = ``<out>-work`` beside ``out``.
        resume: continue from the checkpoint in ``workdir``.
        max_steps: stop this invocation after this many optimiser steps (tests, smoke runs); the epoch in which it
            stops counts as finished.
        command: the command line, recorded in the manifest.
        progress: show tqdm progress bars.
        loader_threads: threads decoding images.
        fusion_init: ``"random"`` (the paper's) or ``"classifier"`` (start from the backbone's CAM, see
            :func:`init_fusion_from_classifier`).
        embed_backbone: store the whole graph (backbone included) in the artifact. By default an artifact whose
            backbone comes from a package, the library's ``pretrained`` or a ``weights`` file stores only the
            trained head (``explainer.safetensors``, a few MB) and names the backbone's source (a weights file by
            its path and sha256); a random backbone is always embedded.
    """

    backbone: str
    out: str
    source: str | None = None
    weights: str | None = None
    num_classes: int = 1000
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    taps: list[str] | None = None
    data: str = "folder"
    data_root: str | None = None
    val_size: int = 200
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    input_size: int | None = None
    flip: bool = True
    loss: LossWeights = field(default_factory=LossWeights)
    workdir: str | None = None
    resume: bool = False
    max_steps: int | None = None
    command: str | None = None
    progress: bool = True
    loader_threads: int = 4
    embed_backbone: bool = False
    fusion_init: str = "random"

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossWeights(**self.loss)
        for name in ("val_size", "epochs", "batch_size", "num_classes", "loader_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}.")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise InputError(f"max_steps must be a positive integer or None, got {self.max_steps!r}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be a positive number, got {self.lr!r}.")
        if self.input_size is not None and self.input_size < 8:
            raise InputError(f"input_size must be at least 8 pixels, got {self.input_size}.")
        if self.taps is not None:
            self.taps = [str(t) for t in self.taps]
            if not self.taps or any(not t for t in self.taps):
                raise InputError("taps must name at least one layer (comma-separated module paths, no empty names).")
        if self.fusion_init not in FUSION_INITS:
            raise InputError(f"fusion_init must be one of {FUSION_INITS}, got {self.fusion_init!r}.")
        if self.source is not None and self.source not in ("package", "pretrained", "random"):
            raise InputError(f"source must be package, pretrained or random, got {self.source!r}.")

    @property
    def workdir_path(self) -> Path:
        if self.workdir is not None:
            return Path(self.workdir)
        out = Path(self.out)
        return out.with_name(out.name + "-work")

    def identity(self) -> dict[str, Any]:
        """The keys a resumed run must share with the checkpoint (JSON-ready)."""
        d = dataclasses.asdict(self)
        ident = {k: v for k, v in d.items() if k not in RUNTIME_KEYS and k != "loss"}
        ident.update({f"loss.{k}": v for k, v in d["loss"].items()})  # differing lambdas are named one by one
        # absent at their defaults: checkpoints from before these options still resume
        if not ident["backbone_kwargs"]:
            del ident["backbone_kwargs"]
        if ident["fusion_init"] == "random":
            del ident["fusion_init"]
        for k in ("weights", "data_root"):
            if ident[k] is not None:
                ident[k] = str(Path(ident[k]).expanduser().resolve())
        return json.loads(json.dumps(ident))


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
    """Mask a normalised batch with one map per image (Eqs. 13-14).

    Args:
        x_norm: normalised images (B, 3, H, W).
        e_y: maps (B, h, w) in [0, 1], upsampled bilinearly to (H, W) here.
        mean: per-channel mean (3,).
        std: per-channel std (3,).
        kind: ``"cnn"``: ``standardise(E * raw)``; ``"vit"``: ``E * standardise(raw)``.
    """
    m = F.interpolate(e_y[:, None], size=x_norm.shape[-2:], mode="bilinear", align_corners=False)
    mean = mean.view(1, -1, 1, 1).to(x_norm)
    std = std.view(1, -1, 1, 1).to(x_norm)
    if kind == "vit":
        return x_norm * m
    raw = x_norm * std + mean
    return (raw * m - mean) / std


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


FUSION_INITS = ("random", "classifier")


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
    logits, taps = backbone.forward_taps(x_probe, explainer.taps)
    offset, found = 0, None
    for i, (tap, (channels, _, _)) in enumerate(zip(explainer.taps, explainer.shapes, strict=True)):
        if linears and explainer.layouts[i][0] == "map" and channels == linears[-1].in_features:
            pooled = explainer._adapt(taps[tap], explainer.layouts[i]).mean(dim=(2, 3))
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


def freeze_backbone(graph: ExplainGraph) -> list[nn.Parameter]:
    """Freeze the backbone (no grads, eval mode) and return the explainer's trainable parameters."""
    backbone_ids = set()
    for p in graph.backbone.parameters():
        p.requires_grad_(False)
        backbone_ids.add(id(p))
    params = [p for p in graph.explainer.parameters() if id(p) not in backbone_ids]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise TrainingError(f"the {METHOD} explainer has no trainable parameters; is the explainer trainable?")
    set_train_mode(graph)
    return params


def set_train_mode(graph: ExplainGraph) -> None:
    """Explainer in train mode (its BatchNorms learn), backbone in eval mode (its statistics stay fixed)."""
    graph.explainer.train()
    graph.backbone.eval()


def train_step(
    graph: ExplainGraph,
    x: Tensor,
    optimizer: torch.optim.Optimizer,
    weights: LossWeights,
    generator: torch.Generator,
    mean: Tensor,
    std: Tensor,
) -> dict[str, float]:
    """One optimiser step on a normalised batch ``x``; returns the loss terms."""
    set_train_mode(graph)
    explainer, backbone = graph.explainer, graph.backbone
    logits, raw = explainer.maps_all(backbone, x)
    y = logits.detach().argmax(dim=-1)
    maps = torch.sigmoid(raw)
    psi = select_psi(maps, y, generator)
    masked = mask_images(x, psi[:, 0], mean, std, backbone.kind)
    logits_m = backbone(masked)
    loss, terms = tame_loss(logits_m, y, psi, weights)
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()}; lower --lr (now the step's terms are {terms}).")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """The held-out validation images and the training images (paths), drawn once with the seed."""

    root: Path
    train: list[Path]
    val: list[Path]

    def val_names(self) -> list[str]:
        return [image_name(p, self.root) for p in self.val]


def make_split(cfg: TrainConfig) -> Split:
    """Open the dataset and draw the fixed held-out split.

    Raises:
        TrainingError: the dataset is missing, empty or too small for ``val_size``.
    """
    from engine.data import DatasetError, open_dataset

    try:
        ds = open_dataset(cfg.data, cfg.data_root)
    except DatasetError as e:
        raise TrainingError(f"cannot read the training data ({cfg.data}, {cfg.data_root}): {e}") from e
    paths = sorted({s.path for s in ds})
    if cfg.val_size >= len(paths):
        raise TrainingError(
            f"--val-size {cfg.val_size} leaves no training images: the dataset at {ds.root} has {len(paths)} "
            f"images. Pass --val-size below {len(paths)} or add images."
        )
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(paths), generator=g).tolist()
    val_idx = sorted(perm[: cfg.val_size])
    val_set = set(val_idx)
    return Split(
        root=Path(ds.root),
        train=[paths[i] for i in range(len(paths)) if i not in val_set],
        val=[paths[i] for i in val_idx],
    )


class Loader:
    """Decode and preprocess images into normalised float32 batches (threads decode in parallel)."""

    def __init__(self, pre: PreprocessConfig, threads: int):
        from engine.preprocess import Preprocessor

        self.pre = Preprocessor(pre)
        self.threads = threads

    def load(self, paths: Sequence[Path]) -> Tensor:
        from engine.errors import ImageDecodeError
        from engine.preprocess import load_image

        def one(p: Path):
            try:
                return load_image(p)
            except ImageDecodeError as e:
                raise TrainingError(f"cannot read training image {p}: {e}. Remove or replace the file.") from e

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            images = list(pool.map(one, paths))
        batch, _ = self.pre(images)
        return torch.from_numpy(batch)


def check_images(paths: Sequence[Path]) -> None:
    """Open the header of every image (cheap) so an unreadable file fails before training starts."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018
        except (OSError, UnidentifiedImageError, ValueError) as e:
            bad.append(f"{p} ({type(e).__name__})")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TrainingError(f"unreadable image file(s): {shown}. Remove or replace them, then run again.")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint (safetensors + JSON, no pickle)
# ----------------------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def save_checkpoint(
    workdir: Path,
    graph: ExplainGraph,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    meta: dict[str, Any],
) -> None:
    """Write ``checkpoint.safetensors`` + ``checkpoint.json`` atomically (temp files, then ``os.replace``).

    Tensors: the explainer's state (``explainer.*``), the optimiser's per-parameter state (``optim.<i>.<key>``),
    torch's global RNG state and the run generator's state. JSON: the rest (optimiser param groups, scheduler state,
    epoch, step, config, log), plus the sha256 of the tensor file so a torn pair is detected.
    """
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for k, v in graph.explainer.state_dict().items():
        tensors[f"explainer.{k}"] = v.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, val in state.items():
            if isinstance(val, Tensor):
                tensors[f"optim.{idx}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                opt_scalars.setdefault(str(idx), {})[key] = val
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    sched = {k: v for k, v in scheduler.state_dict().items() if _jsonable(v)}
    workdir.mkdir(parents=True, exist_ok=True)
    fd, tmp_t = tempfile.mkstemp(prefix=".ckpt-", suffix=".safetensors", dir=workdir)
    os.close(fd)
    fd, tmp_j = tempfile.mkstemp(prefix=".ckpt-", suffix=".json", dir=workdir)
    os.close(fd)
    try:
        save_file(tensors, tmp_t)
        doc = {
            "format": CHECKPOINT_FORMAT,
            **meta,
            "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
            "scheduler": sched,
            "tensors_sha256": _sha256(Path(tmp_t)),
        }
        Path(tmp_j).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp_t, workdir / CHECKPOINT_TENSORS)
        os.replace(tmp_j, workdir / CHECKPOINT_JSON)
    finally:
        for t in (tmp_t, tmp_j):
            if os.path.exists(t):
                os.unlink(t)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint_meta(workdir: Path) -> dict[str, Any]:
    """The checkpoint's JSON half (config, epoch, ...).

    Raises:
        TrainingError: no checkpoint, or a damaged / mismatched pair.
    """
    jpath, tpath = workdir / CHECKPOINT_JSON, workdir / CHECKPOINT_TENSORS
    if not jpath.is_file() or not tpath.is_file():
        raise TrainingError(
            f"--resume: no checkpoint in {workdir} (expected {CHECKPOINT_JSON} and {CHECKPOINT_TENSORS}). "
            "Drop --resume to start a new run, or pass the --workdir of the run to continue."
        )
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{jpath} is not readable JSON ({e}); delete the workdir and start again.") from e
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{jpath} has checkpoint format {doc.get('format')!r}, expected {CHECKPOINT_FORMAT}.")
    if doc.get("tensors_sha256") != _sha256(tpath):
        raise TrainingError(
            f"{tpath} does not match {jpath} (sha256 differs): the checkpoint is damaged. Delete both and start again."
        )
    return doc


def load_checkpoint(
    workdir: Path,
    doc: dict[str, Any],
    graph: ExplainGraph,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> None:
    """Restore the explainer, optimiser, scheduler and RNG states from a checkpoint (safetensors, no pickle)."""
    from safetensors.torch import load_file

    tensors = load_file(str(workdir / CHECKPOINT_TENSORS))
    state = {k[len("explainer.") :]: v for k, v in tensors.items() if k.startswith("explainer.")}
    result = graph.explainer.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrainingError(
            f"the checkpoint in {workdir} does not fit this explainer (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}); start a new run in another --workdir."
        )
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            opt_state.setdefault(int(idx), {})[key] = v
    for idx, scalars in doc["optimizer"]["scalars"].items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": opt_state, "param_groups": doc["optimizer"]["param_groups"]})
    scheduler.load_state_dict({**scheduler.state_dict(), **doc["scheduler"]})
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between a checkpoint's config and this run's: ``{key: (saved, current)}``."""
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(graph: ExplainGraph, x_val: Tensor, mean: Sequence[float], std: Sequence[float], batch: int) -> dict:
    """AD(15%) and IC(15%) (``engine.metrics`` preset ``tame``) of the explainer's inference maps on ``x_val``."""
    from engine.metrics import evaluate

    graph.eval()
    sal = []
    for i in range(0, len(x_val), batch):
        xb = x_val[i : i + batch]
        target = torch.full((len(xb),), -1, dtype=torch.long)
        sal.append(graph(xb, target)[1].float())
    saliency = torch.cat(sal).numpy()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    raw01 = (x_val * s + m).clamp(0, 1).numpy()
    backbone = graph.backbone

    def model(xb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return backbone(torch.from_numpy(xb)).float().numpy()

    res = evaluate(
        "ad_ic", "tame", model=model, images=raw01, saliency=saliency, mean=mean, std=std,
        model_kind=backbone.kind, levels=[15], batch_size=batch,
    )  # fmt: skip
    set_train_mode(graph)
    return {"ad@15": float(res["ad@15"].value), "ic@15": float(res["ic@15"].value)}


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def build_training_graph(cfg: TrainConfig) -> tuple[ExplainGraph, BackboneConfig, PreprocessConfig]:
    """Build the backbone (seeded), the preprocess config and the explain graph (the explainer checks the taps).

    Raises:
        UnsupportedModelError: the backbone lacks a named tap (from the explainer / the adapter).
    """
    from engine.backbones import WEIGHT_PACKAGES, build_backbone, parse_spec
    from engine.create import _load_user_weights, default_preprocess
    from engine.explainers import get_explainer_class
    from engine.graph import build_graph

    _register_tame()
    get_explainer_class(METHOD)
    library, name = parse_spec(cfg.backbone)
    source = cfg.source
    if cfg.weights is not None:
        source = "random"
    elif source is None:
        source = "package" if library == "timm" and name in WEIGHT_PACKAGES else "pretrained"
    bb_cfg = BackboneConfig(library, name, cfg.num_classes, source, dict(cfg.backbone_kwargs))
    torch.manual_seed(cfg.seed)
    adapter = build_backbone(bb_cfg, seed=cfg.seed)
    if cfg.weights is not None:
        _load_user_weights(adapter, cfg.weights)
    pre = default_preprocess(adapter)
    if cfg.input_size is not None:
        pre = dataclasses.replace(pre, input_size=(cfg.input_size, cfg.input_size))
    options: dict[str, Any] = {}
    if cfg.taps is not None:
        options["taps"] = list(cfg.taps)
    torch.manual_seed(cfg.seed)
    graph = build_graph(adapter, ExplainerConfig(METHOD, options), pre.input_size)  # checks the taps
    return graph, bb_cfg, pre


def _register_tame() -> None:
    import importlib

    importlib.import_module("engine.explainers.tame")


def _log(workdir: Path, record: dict[str, Any], echo: Callable[[str], None]) -> None:
    with open(workdir / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    echo(json.dumps(record))


def train(cfg: TrainConfig, echo: Callable[[str], None] = print) -> Artifact:
    """Run (or resume) a T-TAME training and write the artifact.

    Args:
        cfg: the run.
        echo: where progress lines go (stdout by default).

    Returns:
        The written artifact.

    Raises:
        TrainingError: bad data, a checkpoint that belongs to another config, an existing checkpoint without
            ``resume``, ...
        UnsupportedModelError: the backbone lacks a named tap.
    """
    from tqdm import tqdm

    t_start = time.time()
    workdir = cfg.workdir_path
    ident = cfg.identity()
    # 1. checks that need no model: the checkpoint's config, the data
    doc: dict[str, Any] | None = None
    if cfg.resume:
        doc = read_checkpoint_meta(workdir)
        diff = config_differences(doc["config"], ident)
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise TrainingError(
                f"--resume: this run's config differs from the checkpoint in {workdir} in {sorted(diff)} ({lines}). "
                "Pass the same options as the original run, or drop --resume and use a new --workdir."
            )
    elif (workdir / CHECKPOINT_JSON).exists():
        raise TrainingError(
            f"{workdir} already holds a checkpoint. Pass --resume to continue it, or choose another --workdir."
        )
    split = make_split(cfg)
    if doc is not None and doc.get("heldout") != split.val_names():
        raise TrainingError(
            f"--resume: the held-out split drawn now differs from the checkpoint's (the data in {split.root} "
            "changed). Restore the data or start a new run in another --workdir."
        )
    check_images(split.train + split.val)
    out = Path(cfg.out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file())):
        raise TrainingError(f"{out} exists and is not an artifact folder; choose a new --out folder.")

    # 2. the model (a missing tap fails here)
    graph, bb_cfg, pre = build_training_graph(cfg)
    loader = Loader(pre, cfg.loader_threads)
    init: dict[str, Any] = {"fusion_init": "random"}
    if cfg.fusion_init == "classifier" and doc is None:
        init = init_fusion_from_classifier(graph, loader.load(split.train[: min(len(split.train), 32)]))
    elif doc is not None:
        init = doc.get("init", init)
    params = freeze_backbone(graph)
    mean_t, std_t = torch.tensor(pre.mean), torch.tensor(pre.std)
    steps_per_epoch = math.ceil(len(split.train) / cfg.batch_size)
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    epoch, global_step, history, wall = 0, 0, [], 0.0
    if doc is not None:
        load_checkpoint(workdir, doc, graph, optimizer, scheduler, generator)
        epoch, global_step, history, wall = doc["epoch"], doc["step"], doc.get("history", []), doc["wall_time_s"]
        echo(f"resumed from {workdir} after epoch {epoch} (step {global_step})")
    workdir.mkdir(parents=True, exist_ok=True)

    x_val = loader.load(split.val)
    val: dict[str, float] | None = history[-1]["val"] if history else None
    steps_now = 0
    stop = False
    while epoch < cfg.epochs and not stop:
        t_epoch = time.time()
        order = torch.randperm(len(split.train), generator=generator).tolist()
        sums: dict[str, float] = {}
        n_steps = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress)
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = loader.load([split.train[j] for j in idx])
            if cfg.flip:
                flip = torch.rand(len(x), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            terms = train_step(graph, x, optimizer, cfg.loss, generator, mean_t, std_t)
            scheduler.step()
            n_steps += 1
            global_step += 1
            steps_now += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if cfg.max_steps is not None and steps_now >= cfg.max_steps:
                stop = True
                break
        bar.close()
        epoch += 1
        val = validate(graph, x_val, pre.mean, pre.std, cfg.batch_size)
        wall += time.time() - t_epoch
        record = {
            "epoch": epoch,
            "step": global_step,
            "lr": scheduler.get_last_lr()[0],
            "train": {k: v / max(n_steps, 1) for k, v in sums.items()},
            "val": val,
            "epoch_time_s": round(time.time() - t_epoch, 3),
        }
        history.append(record)
        _log(workdir, record, echo)
        meta = {
            "config": ident,
            "epoch": epoch,
            "step": global_step,
            "wall_time_s": wall,
            "heldout": split.val_names(),
            "history": history,
            "init": init,
        }
        save_checkpoint(workdir, graph, optimizer, scheduler, generator, meta)

    if val is None:
        val = validate(graph, x_val, pre.mean, pre.std, cfg.batch_size)
    return write_tame_artifact(cfg, graph, bb_cfg, pre, split, epoch, global_step, wall, val, t_start, init=init)


def write_tame_artifact(
    cfg: TrainConfig,
    graph: ExplainGraph,
    bb_cfg: BackboneConfig,
    pre: PreprocessConfig,
    split: Split,
    epoch: int,
    step: int,
    wall: float,
    val: dict[str, float],
    t_start: float,
    *,
    init: dict[str, Any] | None = None,
) -> Artifact:
    """Write the artifact folder: the trained head (or the whole graph, see :func:`artifact_backbone`), the manifest
    with a ``training`` section, and ``heldout.json``."""
    from engine.create import imagenet_class_names, save_state

    graph.eval()
    bb_cfg, embed = artifact_backbone(cfg, bb_cfg)
    class_names = imagenet_class_names() if cfg.num_classes == 1000 else None
    options = {**graph.explainer.options_dict(), "taps": list(graph.explainer.taps)}  # the resolved taps
    manifest = new_manifest(bb_cfg, ExplainerConfig(METHOD, options), pre, class_names)
    heldout = split.val_names()
    manifest["training"] = {
        "command": cfg.command if cfg.command is not None else " ".join(sys.argv),
        "data": {
            "dataset": cfg.data,
            "root": str(split.root),
            "train_images": len(split.train),
            "val_images": len(split.val),
            "flip": cfg.flip,
        },
        "heldout": heldout,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_done": epoch,
        "steps": step,
        "batch_size": cfg.batch_size,
        "optimizer": {
            "name": "SGD",
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "schedule": "OneCycleLR",
            "max_lr": cfg.lr,
        },
        "loss": dataclasses.asdict(cfg.loss),
        "init": init or {"fusion_init": "random"},
        "backbone_source": (cfg.source or "default (package where known, else pretrained)")
        if cfg.weights is None
        else f"file {cfg.weights}",
        "wall_time_s": round(wall, 3),
        "total_time_s": round(time.time() - t_start, 3),
        "final_val": {"ad@15": val["ad@15"], "ic@15": val["ic@15"], "metric": "ad_ic preset tame"},
    }
    with tempfile.TemporaryDirectory(prefix="xai-train-tame-") as tmp:
        files: dict[str, Path] = {}
        if embed:
            files[WEIGHTS] = Path(tmp) / WEIGHTS
            save_state(graph, files[WEIGHTS])
        else:
            files[HEAD_WEIGHTS] = Path(tmp) / HEAD_WEIGHTS
            save_state(graph.explainer, files[HEAD_WEIGHTS])
        hpath = Path(tmp) / HELDOUT_FILE
        hpath.write_text(json.dumps(heldout, indent=1) + "\n", encoding="utf-8")
        files[HELDOUT_FILE] = hpath
        return write_artifact(manifest, cfg.out, files)


def artifact_backbone(cfg: TrainConfig, bb_cfg: BackboneConfig) -> tuple[BackboneConfig, bool]:
    """How the artifact names its backbone, and whether it embeds the whole graph.

    A random backbone (tests) or ``embed_backbone`` embeds everything (``weights = artifact``). Otherwise only the
    head is stored and the manifest names the backbone's source: the package, the library's ``pretrained``, or the
    ``weights`` file by its path (relative to the artifact folder when it can be) and sha256.
    """
    from engine.artifact import path_from, sha256_file

    if cfg.embed_backbone or (cfg.weights is None and bb_cfg.weights == "random"):
        return dataclasses.replace(bb_cfg, weights="artifact"), True
    if cfg.weights is None:
        return bb_cfg, False
    rel = path_from(cfg.out, cfg.weights)
    return dataclasses.replace(
        bb_cfg, weights="external", weights_file=rel, weights_sha256=sha256_file(Path(cfg.weights).expanduser())
    ), False
