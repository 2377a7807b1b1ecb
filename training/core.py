"""The generic part of training an explainer: config, seeded split, loader, checkpoint and resume, validation,
artifact writer, progress. A method supplies only its own part (:class:`TrainingMethod`: its loss, which parameters
train, its optimiser and schedule); ``training/tame.py`` is T-TAME's.

The backbone is frozen: its parameters have ``requires_grad=False`` and it stays in eval mode (its BatchNorm
statistics never move), except the trainable deltas (LoRA) a method puts in the backbone's slot. Per step the loop
calls ``method.loss(graph, x, ctx)`` on a batch of normalised images, then steps the optimiser and the scheduler.

Data: an ``engine.data`` dataset (``folder``, ``imagenet-sample``, ...), preprocessed with the backbone's own
evaluation transform (``engine.create.default_preprocess``; ``input_size`` may override the size). A fixed held-out
validation split of ``val_size`` images is drawn with the seed; the rest trains, with random horizontal flips
(``flip=True``). After each epoch the loop logs the train loss terms and the validation metrics (AD(15%) / IC(15%),
``engine.metrics`` preset ``tame``, unless the method validates otherwise) to stdout and ``WORKDIR/train_log.jsonl``
and saves a checkpoint (safetensors + JSON, no pickle) from which ``resume=True`` continues. The result is an artifact
folder that ``Engine.load`` and ``export/*`` accept.
"""

from __future__ import annotations

import dataclasses
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

from engine.requires import require_torch

require_torch("training an explainer (training.core)")  # before `import torch` below

import numpy as np
import torch
from torch import Tensor, nn

from engine.artifact import HEAD_WEIGHTS, WEIGHTS, Artifact, new_manifest, sha256_file, write_artifact
from engine.config import BackboneConfig, ExplainerConfig, PreprocessConfig
from engine.data import image_name
from engine.errors import EngineError, InputError
from engine.graph import ExplainGraph

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
class TrainConfig:
    """What every training run has; a method's config subclasses it with its own options.

    Attributes:
        backbone: ``LIBRARY/NAME``, e.g. ``timm/tf_efficientnet_lite0``.
        out: the artifact folder to write.
        source: backbone weights: ``package``, ``pretrained`` or ``random``; ``None`` = ``package`` where one is
            known, else ``pretrained`` (as ``engine.create.create_artifact``).
        weights: a local safetensors file with the classifier's state dict (overrides ``source``).
        num_classes: classifier outputs.
        backbone_kwargs: extra constructor arguments of the backbone (e.g. ``{"fused": True}`` for the
            BatchNorm-folded torchvision MobileNetV2 of ``../shared/weights``).
        data: an ``engine.data`` dataset name (``folder``, ``imagenet-sample``, ...).
        data_root: the dataset folder (``None``: the dataset's default folder under ``../shared/data``).
        val_size: images held out for validation (drawn once with ``seed``).
        epochs: training epochs.
        batch_size: images per optimiser step.
        lr: the (maximum) learning rate of the method's schedule.
        weight_decay: the optimiser's weight decay.
        seed: seeds the backbone's random init (``source="random"``), the split, the shuffling, the flips, the
            method's random draws and torch's global generator.
        input_size: overrides the preprocess size (square side); ``None`` = the backbone's own.
        flip: random horizontal flips of training images.
        workdir: where the checkpoint and the log go; ``None`` = ``<out>-work`` beside ``out``.
        resume: continue from the checkpoint in ``workdir``.
        max_steps: stop this invocation after this many optimiser steps (tests, smoke runs); the epoch in which it
            stops counts as finished.
        command: the command line, recorded in the manifest.
        progress: show tqdm progress bars.
        loader_threads: threads decoding images.
        embed_backbone: store the whole graph (backbone included) in the artifact. By default an artifact whose
            backbone comes from a package, the library's ``pretrained`` or a ``weights`` file stores only the
            trained head (``explainer.safetensors``, a few MB) and names the backbone's source (a weights file by
            its path and sha256); a random backbone is always embedded.
        split: a split file (``training/make_split.py``, see ``training/splits.py``): its ``train`` images train,
            its ``val`` images validate, its ``test`` images are never read (``val_size`` is then unused).
        crop_scale: random-crop augmentation: each training image is cropped to a random square-ish window whose
            sides are a uniform fraction in ``[crop_scale, 1]`` of the input's, at a random place, and resized back
            (bilinear); ``None`` = no crops.
        patience: early stopping: stop after this many epochs without a better validation score (the method's
            :meth:`TrainingMethod.score`), and write the best epoch's head; ``None`` = train every epoch.
    """

    backbone: str
    out: str
    source: str | None = None
    weights: str | None = None
    num_classes: int = 1000
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "folder"
    data_root: str | None = None
    val_size: int = 200
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 5e-4
    seed: int = 0
    input_size: int | None = None
    flip: bool = True
    workdir: str | None = None
    resume: bool = False
    max_steps: int | None = None
    command: str | None = None
    progress: bool = True
    loader_threads: int = 4
    embed_backbone: bool = False
    split: str | None = None
    crop_scale: float | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
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
        if self.source is not None and self.source not in ("package", "pretrained", "random"):
            raise InputError(f"source must be package, pretrained or random, got {self.source!r}.")
        if self.crop_scale is not None and not (0 < self.crop_scale <= 1):
            raise InputError(f"crop_scale must be in (0, 1], got {self.crop_scale!r}.")
        if self.patience is not None and (
            isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1
        ):
            raise InputError(f"patience must be a positive integer or None, got {self.patience!r}.")

    @property
    def workdir_path(self) -> Path:
        if self.workdir is not None:
            return Path(self.workdir)
        out = Path(self.out)
        return out.with_name(out.name + "-work")

    def identity(self) -> dict[str, Any]:
        """The keys a resumed run must share with the checkpoint (JSON-ready): every field but the runtime ones,
        with an empty ``backbone_kwargs`` left out and paths resolved. Methods add or flatten their own keys."""
        ident = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}
        if not ident["backbone_kwargs"]:  # absent at its default: checkpoints from before the option still resume
            del ident["backbone_kwargs"]
        for k in ("split", "crop_scale", "patience"):  # likewise
            if ident[k] is None:
                del ident[k]
        for k in ("weights", "data_root", "split"):
            if k not in ident:
                continue
            if ident[k] is not None:
                ident[k] = str(Path(ident[k]).expanduser().resolve())
        if "split" in ident and Path(ident["split"]).is_file():  # a split file edited in place is another run
            ident["split_sha256"] = sha256_file(Path(ident["split"]))
        return json.loads(json.dumps(ident))


@dataclass
class StepContext:
    """What a method's loss gets besides the graph and the batch."""

    generator: torch.Generator  # the run's seeded generator (random classes, masks, ...)
    mean: Tensor  # (3,) preprocessing mean
    std: Tensor  # (3,) preprocessing std
    epoch: int  # 0-based epoch of this step
    labels: Tensor | None = None  # (B,) the dataset's labels of the batch (None where an image has none)


class TrainingMethod:
    """A trainable method's own part of training. Subclass it and override what differs.

    Attributes:
        method: the explainer's registered name.
        config_class: the method's :class:`TrainConfig` subclass.
    """

    method: str = ""
    config_class: type[TrainConfig] = TrainConfig

    def explainer_options(self, cfg: TrainConfig) -> dict[str, Any]:
        """The explainer's options for this run."""
        return {}

    def check_data(self, split: Split, cfg: TrainConfig) -> None:
        """Refuse data the method cannot train on, before any model is built (e.g. missing or bad labels)."""

    def class_names(self, cfg: TrainConfig, split: Split) -> list[str] | None:
        """The artifact's class names: ImageNet's for a 1000-class backbone, the dataset's when it has as many
        classes as the backbone (a classifier fine-tuned on it), else none."""
        from engine.create import imagenet_class_names

        if cfg.num_classes == 1000:
            return imagenet_class_names()
        names = split.class_names
        return list(names) if names and len(names) == cfg.num_classes else None

    def prepare(self, graph: ExplainGraph, cfg: TrainConfig, probe: Callable[[], Tensor]) -> dict[str, Any]:
        """Initialise a new run (not called on resume); ``probe()`` loads a batch of training images. Returns a
        JSON-ready record kept in the checkpoint and the manifest (``training.init``)."""
        return {}

    def parameters(self, graph: ExplainGraph) -> list[nn.Parameter]:
        """What trains: by default the explainer's own choice (``trainable_parameters``)."""
        return graph.explainer.trainable_parameters(graph.backbone)

    def optimizer(self, params: list[nn.Parameter], cfg: TrainConfig, total_steps: int) -> tuple[Any, Any]:
        """The optimiser and its schedule (a scheduler stepped once per optimiser step)."""
        raise NotImplementedError

    def loss(self, graph: ExplainGraph, x: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """The loss of one batch and its terms (floats, logged)."""
        raise NotImplementedError

    def on_epoch_start(self, graph: ExplainGraph, epoch: int) -> None:
        """Called before each epoch (0-based); e.g. for schedules that alternate what trains."""

    def set_train_mode(self, graph: ExplainGraph) -> None:
        """The explainer in train mode (its BatchNorms learn), the backbone in eval mode (its statistics fixed)."""
        graph.explainer.train()
        graph.backbone.eval()

    def validate(
        self, graph: ExplainGraph, x_val: Tensor, pre: PreprocessConfig, batch: int, labels: Tensor | None = None
    ) -> dict[str, float]:
        """Validation metrics of the inference maps on the held-out images: AD / IC at 15 % (preset ``tame``).

        ``labels`` are the held-out images' dataset labels (None when the dataset has none)."""
        return validate_ad_ic(graph, x_val, pre.mean, pre.std, batch)

    def score(self, val: dict[str, float]) -> float:
        """The number early stopping maximises (``patience``): by default IC(15%) - AD(15%)."""
        return val["ic@15"] - val["ad@15"]

    def artifact_options(self, graph: ExplainGraph) -> dict[str, Any]:
        """The explainer options recorded in the artifact (resolved, so loading rebuilds the same explainer)."""
        return graph.explainer.options_dict()

    def manifest_record(self, cfg: TrainConfig) -> dict[str, Any]:
        """Method-specific keys of the manifest's ``training`` section (optimiser, loss, ...)."""
        return {}


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def build_training_graph(
    method: TrainingMethod, cfg: TrainConfig
) -> tuple[ExplainGraph, BackboneConfig, PreprocessConfig]:
    """Build the backbone (seeded), the preprocess config and the explain graph (the explainer checks its options).

    Raises:
        UnsupportedModelError: the backbone lacks something the explainer needs (a named tap, ...).
    """
    from engine.backbones import build_backbone, parse_spec
    from engine.create import _load_user_weights, default_preprocess, default_source
    from engine.explainers import get_explainer_class
    from engine.graph import build_graph

    get_explainer_class(method.method)
    library, name = parse_spec(cfg.backbone)
    source = cfg.source
    if cfg.weights is not None:
        source = "random"
    elif source is None:
        source = default_source(library, name)
    bb_cfg = BackboneConfig(library, name, cfg.num_classes, source, dict(cfg.backbone_kwargs))
    torch.manual_seed(cfg.seed)
    adapter = build_backbone(bb_cfg, seed=cfg.seed)
    if cfg.weights is not None:
        _load_user_weights(adapter, cfg.weights)
    pre = default_preprocess(adapter)
    if cfg.input_size is not None:
        pre = dataclasses.replace(pre, input_size=(cfg.input_size, cfg.input_size))
    torch.manual_seed(cfg.seed)
    graph = build_graph(adapter, ExplainerConfig(method.method, method.explainer_options(cfg)), pre.input_size)
    return graph, bb_cfg, pre


def freeze_backbone(method: TrainingMethod, graph: ExplainGraph) -> list[nn.Parameter]:
    """Freeze everything but what the method trains (no grads, backbone in eval mode); return what trains."""
    params = method.parameters(graph)
    if not params:
        raise TrainingError(f"the {method.method} explainer has no trainable parameters; is it a trainable method?")
    trained = {id(p) for p in params}
    for p in graph.parameters():
        p.requires_grad_(id(p) in trained)
    method.set_train_mode(graph)
    return params


def train_step(
    method: TrainingMethod, graph: ExplainGraph, x: Tensor, optimizer: torch.optim.Optimizer, ctx: StepContext
) -> dict[str, float]:
    """One optimiser step on a normalised batch ``x``; returns the loss terms."""
    method.set_train_mode(graph)
    loss, terms = method.loss(graph, x, ctx)
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
    labels: dict[Path, int] = field(default_factory=dict)  # the dataset's label of each image that has one
    class_names: list[str] | None = None  # the dataset's class names, where it has them

    def val_names(self) -> list[str]:
        return [image_name(p, self.root) for p in self.val]

    def label_tensor(self, paths: Sequence[Path]) -> Tensor | None:
        """The labels of ``paths`` (int64), or None when any of them has none."""
        if not all(p in self.labels for p in paths):
            return None
        return torch.tensor([self.labels[p] for p in paths], dtype=torch.long)


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
    labels = {Path(s.path): int(s.label) for s in ds if s.label is not None}
    if cfg.split is not None:
        from .splits import SplitError, read_split, resolve_split

        try:
            parts = resolve_split(read_split(cfg.split), ds)
        except SplitError as e:
            raise TrainingError(str(e)) from e
        if not parts["val"]:
            raise TrainingError(f"the split {cfg.split} has no validation images; make one with --val above 0.")
        return Split(Path(ds.root), parts["train"], parts["val"], labels, ds.class_names)
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
        labels=labels,
        class_names=ds.class_names,
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


def augment(x: Tensor, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
    """The training augmentation of a normalised batch: random crops (``crop_scale``), then horizontal flips."""
    if cfg.crop_scale is not None and cfg.crop_scale < 1:
        x = random_crops(x, cfg.crop_scale, generator)
    if cfg.flip:
        flip = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def random_crops(x: Tensor, min_scale: float, generator: torch.Generator) -> Tensor:
    """Per image: a window with sides uniform in ``[min_scale, 1]`` of the image's (drawn independently), at a
    uniform place, resized back to the input size (bilinear). The prototype's "resize 510, crop 384" is one such
    window of scale 0.75."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    out = []
    for img in x:
        sh, sw = (min_scale + (1 - min_scale) * torch.rand(2, generator=generator)).tolist()
        ch, cw = max(1, round(h * sh)), max(1, round(w * sw))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = img[None, :, top : top + ch, left : left + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(out)


class EarlyStopping:
    """Keep the best epoch's head by the method's validation score; stop after ``patience`` epochs without a better one.

    With ``patience=None`` it does nothing (every epoch trains, the last head is written).
    """

    def __init__(self, patience: int | None, score: Callable[[dict[str, float]], float]):
        self.patience = patience
        self.score = score
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_val: dict[str, float] | None = None
        self.best_head: dict[str, Tensor] | None = None
        self.bad_epochs = 0

    def update(self, epoch: int, val: dict[str, float], graph: ExplainGraph) -> bool:
        """Record an epoch's validation; returns whether it is the best so far."""
        if self.patience is None:
            return False
        value = float(self.score(val))
        if value > self.best_score:
            self.best_score, self.best_epoch, self.best_val, self.bad_epochs = value, epoch, dict(val), 0
            self.best_head = {
                k: v.detach().cpu().clone() for k, v in graph.explainer.head_state_dict(graph.backbone).items()
            }
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        """JSON-ready state for the checkpoint (the best head goes in the tensor file, :meth:`best_tensors`)."""
        return {
            "patience": self.patience,
            "best_score": self.best_score if math.isfinite(self.best_score) else None,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "bad_epochs": self.bad_epochs,
            "has_best": self.best_head is not None,
        }

    def best_tensors(self) -> dict[str, Tensor]:
        return {f"best.{k}": v.contiguous() for k, v in (self.best_head or {}).items()}

    def restore(self, state: dict[str, Any] | None, tensors: dict[str, Tensor]) -> None:
        """Continue from a checkpoint's state and its tensors (the ``best.*`` head)."""
        if not state or self.patience is None:
            return
        score = state.get("best_score")
        self.best_score = -math.inf if score is None else float(score)
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_val = state.get("best_val")
        self.bad_epochs = int(state.get("bad_epochs", 0))
        if state.get("has_best"):
            self.best_head = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}


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
    extra: dict[str, Tensor] | None = None,
) -> None:
    """Write ``checkpoint.safetensors`` + ``checkpoint.json`` atomically (temp files, then ``os.replace``).

    Tensors: the explainer's head state (``explainer.*``: its state plus the backbone's trainable deltas), the
    optimiser's per-parameter state (``optim.<i>.<key>``), torch's global RNG state and the run generator's state.
    JSON: the rest (optimiser param groups, scheduler state, epoch, step, config, log), plus the sha256 of the tensor
    file so a torn pair is detected.
    """
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for k, v in graph.explainer.head_state_dict(graph.backbone).items():
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
    tensors.update(extra or {})  # e.g. the early-stopping best head (``best.*``)
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
            "tensors_sha256": sha256_file(tmp_t),
        }
        Path(tmp_j).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp_t, workdir / CHECKPOINT_TENSORS)
        os.replace(tmp_j, workdir / CHECKPOINT_JSON)
    finally:
        for t in (tmp_t, tmp_j):
            if os.path.exists(t):
                os.unlink(t)


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
    if doc.get("tensors_sha256") != sha256_file(tpath):
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
) -> dict[str, Tensor]:
    """Restore the explainer's head, optimiser, scheduler and RNG states from a checkpoint (safetensors, no pickle);
    returns the checkpoint's tensors (for what else they hold, e.g. the early-stopping best head)."""
    from safetensors.torch import load_file

    tensors = load_file(str(workdir / CHECKPOINT_TENSORS))
    state = {k[len("explainer.") :]: v for k, v in tensors.items() if k.startswith("explainer.")}
    problems = graph.explainer.load_head_state_dict(graph.backbone, state)
    if problems:
        raise TrainingError(
            f"the checkpoint in {workdir} does not fit this explainer ({problems}); start a new run in another "
            "--workdir."
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
    return tensors


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between a checkpoint's config and this run's: ``{key: (saved, current)}``."""
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate_ad_ic(graph: ExplainGraph, x_val: Tensor, mean: Sequence[float], std: Sequence[float], batch: int) -> dict:
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
    return {"ad@15": float(res["ad@15"].value), "ic@15": float(res["ic@15"].value)}


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


def _log(workdir: Path, record: dict[str, Any], echo: Callable[[str], None]) -> None:
    with open(workdir / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    echo(json.dumps(record))


def train(method: TrainingMethod, cfg: TrainConfig, echo: Callable[[str], None] = print) -> Artifact:
    """Run (or resume) a training of ``method`` and write the artifact.

    Args:
        method: the method's part (loss, parameters, schedule).
        cfg: the run (an instance of ``method.config_class``).
        echo: where progress lines go (stdout by default).

    Returns:
        The written artifact.

    Raises:
        TrainingError: bad data, a checkpoint that belongs to another config, an existing checkpoint without
            ``resume``, ...
        UnsupportedModelError: the backbone lacks something the explainer needs.
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
    method.check_data(split, cfg)
    out = Path(cfg.out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file())):
        raise TrainingError(f"{out} exists and is not an artifact folder; choose a new --out folder.")

    # 2. the model (a missing tap fails here)
    graph, bb_cfg, pre = build_training_graph(method, cfg)
    loader = Loader(pre, cfg.loader_threads)
    if doc is None:
        init = method.prepare(graph, cfg, lambda: loader.load(split.train[: min(len(split.train), 32)]))
    else:
        init = doc.get("init", {})
    params = freeze_backbone(method, graph)
    mean_t, std_t = torch.tensor(pre.mean), torch.tensor(pre.std)
    steps_per_epoch = math.ceil(len(split.train) / cfg.batch_size)
    optimizer, scheduler = method.optimizer(params, cfg, cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    epoch, global_step, history, wall = 0, 0, [], 0.0
    stopping = EarlyStopping(cfg.patience, method.score)
    if doc is not None:
        tensors = load_checkpoint(workdir, doc, graph, optimizer, scheduler, generator)
        stopping.restore(doc.get("early_stopping"), tensors)
        epoch, global_step, history, wall = doc["epoch"], doc["step"], doc.get("history", []), doc["wall_time_s"]
        echo(f"resumed from {workdir} after epoch {epoch} (step {global_step})")
    workdir.mkdir(parents=True, exist_ok=True)

    x_val = loader.load(split.val)
    y_val = split.label_tensor(split.val)
    val: dict[str, float] | None = history[-1]["val"] if history else None
    steps_now = 0
    stop = stopping.should_stop()
    while epoch < cfg.epochs and not stop:
        t_epoch = time.time()
        method.on_epoch_start(graph, epoch)
        order = torch.randperm(len(split.train), generator=generator).tolist()
        sums: dict[str, float] = {}
        n_steps = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress)
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            batch_paths = [split.train[j] for j in idx]
            x = augment(loader.load(batch_paths), cfg, generator)
            ctx = StepContext(generator, mean_t, std_t, epoch, split.label_tensor(batch_paths))
            terms = train_step(method, graph, x, optimizer, ctx)
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
        val = method.validate(graph, x_val, pre, cfg.batch_size, y_val)
        method.set_train_mode(graph)
        improved = stopping.update(epoch, val, graph)
        stop = stop or stopping.should_stop()
        wall += time.time() - t_epoch
        record = {
            "epoch": epoch,
            "step": global_step,
            "lr": scheduler.get_last_lr()[0],
            "train": {k: v / max(n_steps, 1) for k, v in sums.items()},
            "val": val,
            "epoch_time_s": round(time.time() - t_epoch, 3),
        }
        if cfg.patience is not None:
            record["score"] = method.score(val)
            record["best"] = improved
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
            "early_stopping": stopping.state(),
        }
        save_checkpoint(workdir, graph, optimizer, scheduler, generator, meta, stopping.best_tensors())

    if stopping.best_head is not None:  # write the best epoch's head, not the last one's
        problems = graph.explainer.load_head_state_dict(graph.backbone, stopping.best_head)
        if problems:
            raise TrainingError(f"the best epoch's head does not fit back ({problems}).")
        val = stopping.best_val
        echo(f"early stopping: the artifact holds epoch {stopping.best_epoch} (score {stopping.best_score:.4f})")
    if val is None:
        val = method.validate(graph, x_val, pre, cfg.batch_size, y_val)
    run = {"epochs_done": epoch, "steps": global_step, "wall_time_s": wall, "t_start": t_start, "init": init}
    if cfg.patience is not None:
        run["early_stopping"] = {k: v for k, v in stopping.state().items() if k != "has_best"}
    return write_trained_artifact(method, cfg, graph, bb_cfg, pre, split, val, run)


def write_trained_artifact(
    method: TrainingMethod,
    cfg: TrainConfig,
    graph: ExplainGraph,
    bb_cfg: BackboneConfig,
    pre: PreprocessConfig,
    split: Split,
    val: dict[str, float],
    run: dict[str, Any],
) -> Artifact:
    """Write the artifact folder: the trained head (or the whole graph, see :func:`artifact_backbone`), the manifest
    with a ``training`` section, and ``heldout.json``."""
    from engine.graph import save_graph
    from engine.state import save_tensors

    graph.eval()
    source = "file" if cfg.weights is not None else bb_cfg.weights  # pretrained, package or random (warns on load)
    bb_cfg, embed = artifact_backbone(cfg, bb_cfg)
    class_names = method.class_names(cfg, split)
    explainer = ExplainerConfig(method.method, method.artifact_options(graph))
    manifest = new_manifest(bb_cfg, explainer, pre, class_names, weights_source=source)
    heldout = split.val_names()
    manifest["training"] = {
        "command": cfg.command if cfg.command is not None else " ".join(sys.argv),
        "data": {
            "dataset": cfg.data,
            "root": str(split.root),
            "train_images": len(split.train),
            "val_images": len(split.val),
            "flip": cfg.flip,
            **({"crop_scale": cfg.crop_scale} if cfg.crop_scale is not None else {}),
            **({"split": split_record(cfg.split)} if cfg.split is not None else {}),
        },
        **({"early_stopping": run["early_stopping"]} if "early_stopping" in run else {}),
        "heldout": heldout,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_done": run["epochs_done"],
        "steps": run["steps"],
        "batch_size": cfg.batch_size,
        **method.manifest_record(cfg),
        "init": run["init"],
        "backbone_source": (cfg.source or "default (package where known, else pretrained)")
        if cfg.weights is None
        else f"file {cfg.weights}",
        "wall_time_s": round(run["wall_time_s"], 3),
        "total_time_s": round(time.time() - run["t_start"], 3),
        "final_val": {**val, "metric": "ad_ic preset tame"} if "ad@15" in val else dict(val),
    }
    with tempfile.TemporaryDirectory(prefix=f"xai-train-{method.method}-") as tmp:
        files: dict[str, Path] = {}
        if embed:
            files[WEIGHTS] = save_graph(graph, Path(tmp) / WEIGHTS)
        else:
            files[HEAD_WEIGHTS] = save_tensors(
                graph.explainer.head_state_dict(graph.backbone), Path(tmp) / HEAD_WEIGHTS
            )
        hpath = Path(tmp) / HELDOUT_FILE
        hpath.write_text(json.dumps(heldout, indent=1) + "\n", encoding="utf-8")
        files[HELDOUT_FILE] = hpath
        return write_artifact(manifest, cfg.out, files)


def split_record(path: str) -> dict[str, Any]:
    """How the manifest names a split file: its path and sha256, and the size of each part."""
    from .splits import read_split

    doc = read_split(path)
    return {
        "file": str(path),
        "sha256": sha256_file(Path(path).expanduser()),
        "sizes": {part: len(doc[part]) for part in ("train", "val", "test")},
    }


def artifact_backbone(cfg: TrainConfig, bb_cfg: BackboneConfig) -> tuple[BackboneConfig, bool]:
    """How the artifact names its backbone, and whether it embeds the whole graph.

    A random backbone (tests) or ``embed_backbone`` embeds everything (``weights = artifact``). Otherwise only the
    head is stored and the manifest names the backbone's source: the package, the library's ``pretrained``, or the
    ``weights`` file by its path (relative to the artifact folder when it can be) and sha256.
    """
    from engine.artifact import path_from

    if cfg.embed_backbone or (cfg.weights is None and bb_cfg.weights == "random"):
        return dataclasses.replace(bb_cfg, weights="artifact"), True
    if cfg.weights is None:
        return bb_cfg, False
    rel = path_from(cfg.out, cfg.weights)
    return dataclasses.replace(
        bb_cfg, weights="external", weights_file=rel, weights_sha256=sha256_file(Path(cfg.weights).expanduser())
    ), False
