"""ALA on kahikatea: the fine-tuned Lite0 classifier, its baselines (Grad-CAM, ReciproCAM, T-TAME) and the evaluation.

Every run shares one fixed, seeded, stratified split (``benchmarks/results/ala-kahikatea/split.json``, see
``training/splits.py``): training reads its ``train`` part, validation its ``val`` part, and only ``evaluate`` reads
its ``test`` part. ::

    # 1. fine-tune timm/tf_efficientnet_lite0 (ImageNet weights) as a 2-class kahikatea classifier
    python benchmarks/ala_kahikatea.py finetune --split benchmarks/results/ala-kahikatea/split.json
    # 2. the baselines on that classifier: a ReciproCAM artifact, and T-TAME trained on it
    python benchmarks/ala_kahikatea.py baselines --split benchmarks/results/ala-kahikatea/split.json
    # 3. evaluate ALA (and its ablations) against the baselines on the test part
    python benchmarks/ala_kahikatea.py evaluate --split benchmarks/results/ala-kahikatea/split.json \\
        --method ala=artifacts/ala-lite0-kahikatea --method ala-no-aea=... --out benchmarks/results/ala-kahikatea

``WORK`` (default ``benchmarks/results/ala-kahikatea/work/``, git-ignored) holds the weights: ``finetune/``
(``classifier.safetensors``, ``train_log.jsonl``, ``summary.json``), ``reciprocam/`` and ``tame/`` (artifacts) and
``eval/`` (cached per-method results, reused while the artifact, the split and the settings are unchanged).

Evaluation protocol (``evaluate``), per method, each with ITS OWN model:

* images are preprocessed with the method's artifact preprocess (timm's eval transform: resize the shorter side to
  ``input / crop_pct``, centre crop); the ground-truth masks get the same resize (nearest neighbour) and crop, so
  everything is measured on the crop the classifier sees; saliency maps are upsampled bilinearly to it;
* accuracy on every test image (the method's own logits; the baselines share the fine-tuned classifier);
* on the test images with a mask (the positives): mean IoU under the three binarisation rules of
  ``engine.metrics`` (``mean``: s >= mean(s); ``0.5``; ``otsu``; maps min-max scaled first), and insertion,
  deletion and ID (insertion - deletion) with the ``keio`` preset, scoring the ground-truth class; the baselines
  explain the ground-truth class; the metrics' model is the method's full forward (for ALA the whole ALA model);
* each value with a seeded 95 % percentile-bootstrap interval over images, and the mIoU difference of every method to
  Grad-CAM with a paired bootstrap interval.

Writes ``results.csv``, ``results.json``, ``miou.png`` (mIoU per rule with the intervals) and ``overlays.jpg``
(photo, ground truth, each method's map on a few test positives) in ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "benchmarks")):  # the repository (engine, training) and the peers' helpers
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import engine  # noqa: E402, F401  (first: engine/_compat.py settles the torchvision clash before timm loads)
from engine.artifact import sha256_file  # noqa: E402
from engine.config import PreprocessConfig  # noqa: E402
from engine.errors import ArtifactError, EngineError, InputError  # noqa: E402
from engine.fileio import atomic_write  # noqa: E402
from engine.report import (  # noqa: E402
    METRIC_COLUMNS,
    bootstrap_ci,
    format_table,
    paired_bootstrap_diff,
    write_csv,
    write_json,
)  # noqa: E402

BACKBONE = "timm/tf_efficientnet_lite0"
CLASS_NAMES = ["absent", "present"]
RESULTS = ROOT / "benchmarks" / "results" / "ala-kahikatea"
DEFAULT_SPLIT = RESULTS / "split.json"
DEFAULT_WORK = RESULTS / "work"
BASELINES = ("gradcam", "reciprocam", "tame")
RULES = ("mean", "0.5", "otsu")
ID_PRESET = "keio"
CLASSIFIER_FILE = "classifier.safetensors"
SUMMARY_FILE = "summary.json"
LOG_FILE = "train_log.jsonl"
EVAL_VERSION = 1  # bump when the evaluation changes what a cached result means
CSV_COLUMNS = [*METRIC_COLUMNS, "diff_vs_gradcam", "diff_ci95_low", "diff_ci95_high", "artifact"]


def log(msg: str) -> None:
    print(f"[ala-kahikatea {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel(path: str | Path) -> str:
    """A path relative to the repository when it is inside it (what the committed JSON records), else absolute."""
    p = Path(path).expanduser().resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """The dataset's samples of each part of a split file."""

    file: Path
    sha256: str
    root: Path
    parts: dict[str, list]  # part -> [engine.data.Sample]

    def record(self) -> dict[str, Any]:
        return {
            "file": rel(self.file),
            "sha256": self.sha256,
            "sizes": {p: len(s) for p, s in self.parts.items()},
            "dataset_root": str(self.root),
        }


def load_split(split: str | Path, data: str = "kahikatea", data_root: str | None = None) -> SplitData:
    """Open the dataset and resolve a split file's parts to its samples.

    Raises:
        EngineError: the dataset is missing, or the split is unreadable or names images the dataset lacks.
    """
    from engine.data import open_dataset
    from training.splits import read_split, resolve_split

    doc = read_split(split)
    ds = open_dataset(data, data_root)
    paths = resolve_split(doc, ds)
    by_path = {Path(s.path): s for s in ds}
    parts = {part: [by_path[p] for p in names] for part, names in paths.items()}
    return SplitData(Path(split), sha256_file(split), Path(ds.root), parts)


def mask_to_input(mask: np.ndarray, pre: PreprocessConfig) -> np.ndarray:
    """A ground-truth mask through the preprocess geometry of its image: the same resize (nearest neighbour instead of
    the image's filter) and the same crop (:meth:`engine.preprocess.Preprocessor.plan`); pixels a padded crop adds
    are background.

    Args:
        mask: (H, W) bool at the image's size.
        pre: the preprocess the image goes through.

    Returns:
        (input_h, input_w) bool, aligned pixel for pixel with the network input.
    """
    from engine.preprocess import Preprocessor

    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"a mask must be 2-D (H, W), got shape {m.shape}.")
    h, w = m.shape
    (new_w, new_h), box = Preprocessor(pre).plan((w, h))
    img = Image.fromarray(m.astype(np.uint8) * 255, mode="L")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.NEAREST)
    if tuple(box) != (0, 0, new_w, new_h):
        img = img.crop(tuple(box))  # outside the image: 0 (as the image's zero padding)
    return np.asarray(img) >= 128


@dataclass
class Inputs:
    """The test images through one preprocess: every image normalised, and the positives' raw pixels and masks."""

    pre: PreprocessConfig
    names: list[str]  # every test image (dataset-relative)
    labels: np.ndarray  # (N,)
    x: np.ndarray  # (N, 3, H, W) normalised
    pos: np.ndarray  # indices of the images with a mask
    raw_pos: np.ndarray  # (P, 3, H, W) in [0, 1]
    masks_pos: np.ndarray  # (P, H, W) bool

    @property
    def pos_names(self) -> list[str]:
        return [self.names[i] for i in self.pos]


def prepare_inputs(
    samples: Sequence, root: Path, pre: PreprocessConfig, batch: int = 32, progress: bool = True
) -> Inputs:
    """Decode and preprocess the test images and masks for one preprocess config."""
    from tqdm import tqdm

    from engine.data import image_name
    from engine.preprocess import Preprocessor

    if not samples:
        raise InputError("the split's test part is empty: there is nothing to evaluate.")
    proc = Preprocessor(pre)
    xs = []
    bar = tqdm(range(0, len(samples), batch), desc="preprocess", file=sys.stderr, leave=False, disable=not progress)
    for i in bar:
        xs.append(proc([s.image() for s in samples[i : i + batch]])[0])
    x = np.concatenate(xs)
    labels = np.array([-1 if s.label is None else int(s.label) for s in samples], dtype=np.int64)
    if (labels < 0).any():
        raise InputError("every test image needs a label (accuracy and the keio preset score the ground truth).")
    pos = np.array([i for i, s in enumerate(samples) if s.has_mask], dtype=np.int64)
    if len(pos) == 0:
        raise InputError("no test image has a ground-truth mask: mIoU and insertion/deletion need the positives.")
    masks = np.stack([mask_to_input(samples[i].mask, pre) for i in pos])
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    raw = np.clip(x[pos] * std + mean, 0.0, 1.0).astype(np.float32)
    names = [image_name(Path(s.path), root) for s in samples]
    return Inputs(pre, names, labels, x, pos, raw, masks)


# ----------------------------------------------------------------------------------------------------------------
# 1. finetune
# ----------------------------------------------------------------------------------------------------------------


def build_classifier(source: str = "package", seed: int = 0, num_classes: int = 2):
    """Lite0 with its ImageNet weights (``source="package"``; ``"random"`` for tests) and a seeded new linear head of
    ``num_classes`` outputs in place of ImageNet's."""
    from torch import nn

    from engine.backbones import build_backbone, parse_spec
    from engine.config import BackboneConfig

    library, name = parse_spec(BACKBONE)
    adapter = build_backbone(BackboneConfig(library, name, 1000, source, {}), seed=seed)
    old = adapter.model.classifier
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter.model.classifier = nn.Linear(old.in_features, num_classes)
    adapter.model.num_classes = num_classes
    adapter.num_classes = num_classes
    return adapter.eval()


def load_classifier(path: str | Path):
    """The fine-tuned 2-class classifier from its safetensors state dict (timm keys)."""
    from engine.state import load_weights, read_safetensors

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no fine-tuned classifier at {path}; run `benchmarks/ala_kahikatea.py finetune` first.")
    adapter = build_classifier("random", 0, len(CLASS_NAMES))
    problems = load_weights(adapter.model, read_safetensors(path, "the fine-tuned classifier"))
    if problems:
        raise ArtifactError(f"{path} does not fit {BACKBONE} with {len(CLASS_NAMES)} classes: {problems}.")
    return adapter.eval()


def read_summary(work: Path) -> dict[str, Any]:
    path = work / "finetune" / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"no {path}; run `python benchmarks/ala_kahikatea.py finetune --out {work / 'finetune'}`.")
    return json.loads(path.read_text(encoding="utf-8"))


def summary_preprocess(work: Path) -> PreprocessConfig:
    """The preprocess the classifier was fine-tuned with (recorded in its summary)."""
    return PreprocessConfig(**read_summary(work)["preprocess"])


def _state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})


@torch.no_grad()
def _predict(model, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def finetune(
    split: str | Path,
    out: str | Path,
    *,
    data: str = "kahikatea",
    data_root: str | None = None,
    epochs: int = 30,
    patience: int = 5,
    lr: float = 1e-4,
    weight_decay: float = 1e-2,
    batch_size: int = 16,
    seed: int = 0,
    crop_scale: float = 0.75,
    flip: bool = True,
    source: str = "package",
    input_size: int | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    threads: int = 4,
    command: str | None = None,
) -> dict[str, Any]:
    """Fine-tune Lite0 (every layer) as a 2-class kahikatea classifier on the split's train part.

    AdamW, cross-entropy with the dataset labels, random crops (sides uniform in ``[crop_scale, 1]``, resized back)
    and horizontal flips (``training.core.augment``) of the preprocessed training images; after each epoch the val
    part is scored; the best epoch by val accuracy (ties: lower val loss) is kept; training stops after ``patience``
    epochs without a better one. Writes ``classifier.safetensors`` (the timm state dict of the 2-class model),
    ``train_log.jsonl`` and ``summary.json`` in ``out``.

    Returns:
        The summary.
    """
    from tqdm import tqdm

    from engine.create import default_preprocess
    from training.core import Loader, augment

    for name, value in (("epochs", epochs), ("patience", patience), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}.")
    if not 0 < crop_scale <= 1:
        raise InputError(f"crop_scale must be in (0, 1], got {crop_scale!r}.")
    t0 = time.time()
    out = Path(out)
    sd = load_split(split, data, data_root)
    train_s, val_s = sd.parts["train"], sd.parts["val"]
    if not train_s or not val_s:
        raise InputError(f"the split {split} needs train and val images (it has {len(train_s)} and {len(val_s)}).")
    if any(s.label is None for s in train_s + val_s):
        raise InputError("fine-tuning needs a label on every train and val image.")
    torch.manual_seed(seed)
    adapter = build_classifier(source, seed, len(CLASS_NAMES))
    pre = default_preprocess(adapter)
    if input_size is not None:
        pre = dataclasses.replace(pre, input_size=(input_size, input_size))
    loader = Loader(pre, threads)

    def load(samples: list, what: str) -> torch.Tensor:
        chunks = []
        for i in tqdm(range(0, len(samples), 32), desc=f"load {what}", disable=not progress, file=sys.stderr):
            chunks.append(loader.load([Path(s.path) for s in samples[i : i + 32]]))
        return torch.cat(chunks)

    x_train, x_val = load(train_s, "train"), load(val_s, "val")
    y_train = torch.tensor([int(s.label) for s in train_s])
    y_val = torch.tensor([int(s.label) for s in val_s])
    aug = SimpleNamespace(crop_scale=crop_scale if crop_scale < 1 else None, flip=flip)
    model = adapter.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed + 1)
    loss_fn = torch.nn.CrossEntropyLoss()
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "acc": -1.0, "loss": float("inf"), "state": None}
    bad, steps = 0, 0
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, epochs + 1):
        t_epoch = time.time()
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        n_batches = -(-len(order) // batch_size)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{epochs}", disable=not progress, file=sys.stderr)
        for b in bar:
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb = augment(x_train[idx], aug, generator)
            logits = model(xb)
            loss = loss_fn(logits, y_train[idx])
            if not torch.isfinite(loss):
                raise EngineError(f"the loss became {loss.item()} in epoch {epoch}; lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_train[idx]).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if max_steps is not None and steps >= max_steps:
                break
        bar.close()
        model.eval()
        val_logits = _predict(model, x_val, 64)
        val_loss = float(loss_fn(val_logits, y_val))
        val_acc = float((val_logits.argmax(1) == y_val).float().mean())
        improved = val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best["loss"])
        if improved:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = {"epoch": epoch, "acc": val_acc, "loss": val_loss, "state": state}
            bad = 0
        else:
            bad += 1
        record = {
            "epoch": epoch,
            "steps": steps,
            "train_loss": loss_sum / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "best": improved,
            "epoch_time_s": round(time.time() - t_epoch, 2),
        }
        history.append(record)
        log(json.dumps(record))
        atomic_write(out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in history))
        if bad >= patience or (max_steps is not None and steps >= max_steps):
            break
    assert best["state"] is not None
    atomic_write(out / CLASSIFIER_FILE, _state_bytes(best["state"]))
    summary = {
        "command": command if command is not None else shlex.join(["python", *sys.argv]),
        "backbone": BACKBONE,
        "weights_source": source,
        "num_classes": len(CLASS_NAMES),
        "class_names": CLASS_NAMES,
        "head": "seeded nn.Linear(1280, 2) in place of ImageNet's classifier; every layer trains",
        "seed": seed,
        "data": data,
        "split": sd.record(),
        "train_images": len(train_s),
        "val_images": len(val_s),
        "optimizer": {"name": "AdamW", "lr": lr, "weight_decay": weight_decay, "schedule": "constant"},
        "loss": "cross-entropy with the dataset labels",
        "batch_size": batch_size,
        "augmentation": {"random_crop_scale": [crop_scale, 1.0] if crop_scale < 1 else None, "hflip": flip},
        "preprocess": dataclasses.asdict(pre),
        "epochs": epochs,
        "epochs_done": len(history),
        "steps": steps,
        "early_stopping": {"patience": patience, "monitor": "val accuracy, then val loss", "best_epoch": best["epoch"]},
        "val_accuracy": best["acc"],
        "val_loss": best["loss"],
        "wall_time_s": round(time.time() - t0, 1),
        "torch_threads": torch.get_num_threads(),
        "classifier": CLASSIFIER_FILE,
        "classifier_sha256": sha256_file(out / CLASSIFIER_FILE),
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# 2. baselines
# ----------------------------------------------------------------------------------------------------------------


def make_reciprocam(work: Path) -> Any:
    """The ReciproCAM artifact on the fine-tuned classifier (training-free; the whole graph is stored)."""
    from engine.create import create_artifact

    classifier = work / "finetune" / CLASSIFIER_FILE
    if not classifier.is_file():
        raise InputError(f"no fine-tuned classifier at {classifier}; run the finetune step first.")
    return create_artifact(
        "reciprocam",
        BACKBONE,
        work / "reciprocam",
        weights=classifier,
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        preprocess=summary_preprocess(work),
    )


def train_tame(
    work: Path,
    split: str | Path,
    *,
    data: str = "kahikatea",
    data_root: str | None = None,
    epochs: int = 8,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    fusion_init: str = "random",
    max_steps: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Any:
    """T-TAME trained on the fine-tuned classifier (``training.tame``: the model's own predictions, no labels), on
    the split's train part, validated on its val part; the artifact names the classifier by path and sha256."""
    import shutil

    from training.tame import TameConfig
    from training.tame import train as tame_train

    classifier = work / "finetune" / CLASSIFIER_FILE
    if not classifier.is_file():
        raise InputError(f"no fine-tuned classifier at {classifier}; run the finetune step first.")
    pre = summary_preprocess(work)
    out, workdir = work / "tame", work / "tame-work"
    if overwrite:
        for p in (out, workdir):
            if p.exists():
                shutil.rmtree(p)
    argv = [
        "--backbone", BACKBONE, "--weights", str(classifier), "--num-classes", str(len(CLASS_NAMES)), "--data", data,
        "--split", str(split), "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", str(lr),
        "--seed", str(seed), "--fusion-init", fusion_init, "--input-size", str(pre.input_size[0]), "--out", str(out),
    ]  # fmt: skip
    cfg = TameConfig(
        backbone=BACKBONE,
        out=str(out),
        weights=str(classifier),
        num_classes=len(CLASS_NAMES),
        data=data,
        data_root=data_root,
        split=str(split),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        input_size=pre.input_size[0] if pre.input_size[0] == pre.input_size[1] else None,
        fusion_init=fusion_init,
        workdir=str(workdir),
        max_steps=max_steps,
        progress=progress,
        command=shlex.join(["python", "training/train_tame.py", *argv]),
    )
    return tame_train(cfg, echo=log)


# ----------------------------------------------------------------------------------------------------------------
# 3. evaluate
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MethodSpec:
    """One method to evaluate: a name and an artifact folder (``gradcam``: the fine-tuned classifier's file)."""

    name: str
    path: Path
    kind: str = "artifact"  # "artifact" or "gradcam"
    auto: bool = False  # a baseline found in WORK


def parse_method(spec: str) -> MethodSpec:
    """``NAME=ARTIFACT_DIR`` -> :class:`MethodSpec`; a clear error for anything else or a folder that is no artifact."""
    from engine.artifact import MANIFEST

    name, sep, path = spec.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise InputError(f"--method {spec!r}: expected NAME=ARTIFACT_DIR, e.g. --method ala=artifacts/ala-lite0.")
    if not all(c.isalnum() or c in "-_." for c in name):
        raise InputError(f"--method {spec!r}: the name {name!r} may hold only letters, digits, '-', '_' and '.'.")
    if name == "gradcam":
        raise InputError("--method: the name 'gradcam' is the Grad-CAM baseline (found in WORK); choose another.")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"--method {spec!r}: {p} is not a folder (it should be an artifact folder).")
    if not (p / MANIFEST).is_file():
        raise InputError(f"--method {spec!r}: {p} has no {MANIFEST}; it is not an artifact folder.")
    return MethodSpec(name, p)


def collect_methods(specs: Sequence[str], work: Path, baselines: Sequence[str]) -> list[MethodSpec]:
    """The methods of the command line, in order, then the baselines found in WORK (a baseline not there is skipped
    with a note; one given on the command line under the same name wins)."""
    from engine.artifact import MANIFEST

    names = [s.partition("=")[0].strip() for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--method names must be unique; given more than once: {dup}.")
    methods = [parse_method(s) for s in specs]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InputError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)} (or none).")
    for b in baselines:
        if b in names:
            log(f"baseline {b}: the --method of that name is used")
            continue
        path = work / "finetune" / CLASSIFIER_FILE if b == "gradcam" else work / b
        found = path.is_file() if b == "gradcam" else (path / MANIFEST).is_file()
        if not found:
            log(f"baseline {b}: not in {work} ({path} missing); run finetune / baselines to include it")
            continue
        methods.append(MethodSpec(b, path, "gradcam" if b == "gradcam" else "artifact", auto=True))
    if not methods:
        raise InputError(f"nothing to evaluate: no --method was given and no baseline is in {work}.")
    return methods


def training_summary(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's training record without its long lists (the held-out names)."""
    t = manifest.get("training")
    if not isinstance(t, dict):
        return None
    keep = ("command", "seed", "epochs", "epochs_done", "steps", "batch_size", "optimizer", "loss", "init",
            "early_stopping", "wall_time_s", "total_time_s", "final_val", "backbone_source")  # fmt: skip
    out = {k: t[k] for k in keep if k in t}
    data = t.get("data")
    if isinstance(data, dict):
        out["data"] = {k: v for k, v in data.items() if k != "root"}
    return out


class ModelFn:
    """The metrics' model: a normalised batch -> logits, on an engine backend (fp32), falling back to torch."""

    def __init__(self, module: torch.nn.Module, input_size: tuple[int, int], backend: str, batch: int):
        self.batch = batch
        self.backend_name = "torch"
        self.module = module
        self.backend = None
        if backend != "torch":
            from engine.backends import open_backend

            try:
                self.backend = open_backend(backend, module, precision="fp32", input_size=tuple(input_size))
                self.backend_name = backend
            except Exception as e:  # noqa: BLE001  (an export or runtime failure: torch still gives the same model)
                log(f"{backend} could not run this model ({type(e).__name__}: {str(e)[:160]}); using torch")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), self.batch):
            xb = np.ascontiguousarray(x[i : i + self.batch], dtype=np.float32)
            if self.backend is not None:
                outs.append(self.backend.classify(xb))
            else:
                with torch.no_grad():
                    out = self.module(torch.from_numpy(xb))
                outs.append((out[0] if isinstance(out, tuple) else out).float().numpy())
        return np.concatenate(outs)


class _Logits(torch.nn.Module):
    """An explain graph's logits only (what the metrics perturb: the full forward)."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0]


def default_model_backend() -> str:
    import importlib.util

    for name in ("openvino", "onnxruntime"):
        if importlib.util.find_spec(name):
            return name
    return "torch"


@dataclass
class MethodResult:
    """What one method gave on the test part (per image), and where it came from."""

    name: str
    fingerprint: str
    info: dict[str, Any]  # artifact, method, backbone, training record, model function, timings
    logits: np.ndarray  # (N, K) every test image
    saliency: np.ndarray  # (P, h, w) the positives' maps
    per_image: dict[str, np.ndarray] = field(default_factory=dict)  # metric key -> (P,) or (N,) for accuracy
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric key -> preset params


def metric_keys() -> list[tuple[str, str, str]]:
    """(key, metric, preset) of every reported metric, in report order."""
    keys = [("accuracy", "accuracy", "top1")]
    keys += [(f"miou@{r}", "miou", r) for r in RULES]
    keys += [(m, m, ID_PRESET) for m in ("insertion", "deletion", "id")]
    return keys


def fingerprint(spec: MethodSpec, sd: SplitData, settings: dict[str, Any]) -> str:
    """What a cached result depends on: the artifact's manifest (it pins every weight file by sha256) or the
    classifier's sha256, the split file, the test images, the settings and this evaluation's version."""
    from engine.artifact import MANIFEST

    ident = spec.path / MANIFEST if spec.kind == "artifact" else spec.path
    doc = {
        "version": EVAL_VERSION,
        "kind": spec.kind,
        "source": sha256_file(ident),
        "split": sd.sha256,
        "root": str(sd.root),
        "settings": settings,
    }
    if spec.kind == "artifact":
        manifest = json.loads((spec.path / MANIFEST).read_text(encoding="utf-8"))
        external = manifest.get("backbone", {}).get("weights_sha256")
        if external:
            doc["external"] = external
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _cache_path(work: Path, name: str) -> Path:
    return work / "eval" / f"{name}.npz"


def load_cached(work: Path, name: str, fp: str) -> MethodResult | None:
    path = _cache_path(work, name)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fp:
                return None
            per = {k: z[f"per__{k}"] for k, _, _ in metric_keys() if f"per__{k}" in z}
            return MethodResult(name, fp, meta["info"], z["logits"], z["saliency"], per, meta["params"])
    except (OSError, KeyError, ValueError) as e:
        log(f"{path} is unreadable ({e}); recomputing")
        return None


def save_cached(work: Path, res: MethodResult) -> None:
    meta = json.dumps({"fingerprint": res.fingerprint, "info": res.info, "params": res.params})
    arrays = {f"per__{k}": v for k, v in res.per_image.items()}

    def write(fh) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.array(meta), logits=res.logits, saliency=res.saliency, **arrays)
        fh.write(buf.getvalue())

    atomic_write(_cache_path(work, res.name), write)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _batched(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: np.ndarray, t: np.ndarray, batch: int):
    out = []
    for i in range(0, len(x), batch):
        out.append(fn(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])), torch.from_numpy(t[i : i + batch])))
    return torch.cat(out).float().numpy()


def run_method(
    spec: MethodSpec,
    sd: SplitData,
    inputs_for: Callable[[PreprocessConfig], Inputs],
    *,
    model_backend: str,
    batch_size: int,
) -> MethodResult:
    """Explain the test positives with the method's own model and compute every metric."""
    from engine.artifact import load_artifact
    from engine.graph import ClassifyGraph, graph_from_artifact
    from engine.metrics import evaluate

    t0 = time.perf_counter()
    info: dict[str, Any] = {"source": rel(spec.path), "baseline": spec.auto or spec.name in BASELINES}
    if spec.kind == "gradcam":
        from peers_grad_cam import cam_maps

        adapter = load_classifier(spec.path)
        pre = summary_preprocess(spec.path.parent.parent)
        inp = inputs_for(pre)
        info.update(
            method=f"gradcam (pytorch-grad-cam {_version('grad-cam')} GradCAM on the last feature map, bn2)",
            backbone=BACKBONE,
            classifier_sha256=sha256_file(spec.path),
            training=None,
        )
        with torch.no_grad():
            logits = _batched(lambda xb, _t: adapter(xb), inp.x, inp.labels, batch_size)
        t_maps = time.perf_counter()
        saliency = cam_maps(adapter, inp.x[inp.pos], inp.labels[inp.pos], "gradcam", batch_size=16)
        maps_s = time.perf_counter() - t_maps
        model_module: torch.nn.Module = ClassifyGraph(adapter, tuple(pre.input_size))
        info["model_fn"] = "the fine-tuned classifier"
    else:
        art = load_artifact(spec.path)
        graph = graph_from_artifact(art).eval()
        pre = art.preprocess
        inp = inputs_for(pre)
        info.update(
            method=art.method,
            backbone=art.backbone.spec,
            backbone_weights=art.backbone.weights,
            artifact_options=art.explainer.options,
            class_names=art.class_names,
            training=training_summary(art.manifest),
        )
        with torch.no_grad():
            logits = _batched(lambda xb, _t: graph(xb)[0], inp.x, inp.labels, batch_size)
            t_maps = time.perf_counter()
            saliency = _batched(lambda xb, tb: graph(xb, tb)[1], inp.x[inp.pos], inp.labels[inp.pos], batch_size)
            maps_s = time.perf_counter() - t_maps
            backbone_logits = _batched(lambda xb, _t: graph.backbone(xb), inp.x, inp.labels, batch_size)
        scale = max(1.0, float(np.abs(logits).max()))
        same = backbone_logits.shape == logits.shape and np.allclose(backbone_logits, logits, atol=1e-4 * scale)
        if same:  # the explainer returns the backbone's logits: the plain classifier is the same model, and cheaper
            model_module = ClassifyGraph(graph.backbone, tuple(pre.input_size))
            info["model_fn"] = "the artifact's backbone (checked equal to the explain graph's logits)"
        else:
            model_module = _Logits(graph)
            info["model_fn"] = "the artifact's full explain graph (its logits differ from the bare backbone's)"
    if logits.ndim != 2 or logits.shape[1] != len(CLASS_NAMES):
        raise ArtifactError(
            f"{spec.name}: the model has {logits.shape[-1]} outputs; a kahikatea classifier needs "
            f"{len(CLASS_NAMES)} ({CLASS_NAMES})."
        )
    saliency = np.nan_to_num(np.asarray(saliency, dtype=np.float32))
    model = ModelFn(model_module, tuple(pre.input_size), model_backend, batch_size)
    info["model_backend"] = model.backend_name
    h, w = pre.input_size
    if pre.resize_mode == "crop":
        scale = f"floor({h}/{pre.crop_pct})"
        geometry = f"the {h}x{w} centre crop the classifier sees (the shorter side resized to {scale}, "
    else:
        geometry = f"the {h}x{w} input the classifier sees (the whole image resized, "
    info["input"] = (
        f"evaluated on {geometry}{pre.interpolation}; masks: the same geometry, nearest neighbour); saliency "
        f"{saliency.shape[1]}x{saliency.shape[2]} upsampled bilinearly to {h}x{w}"
    )
    info["preprocess"] = dataclasses.asdict(pre)
    res = MethodResult(spec.name, "", info, logits, saliency)
    res.per_image["accuracy"] = (logits.argmax(1) == inp.labels).astype(np.float64)
    res.params["accuracy"] = {"images": "every test image", "prediction": "argmax of the method's own logits"}
    for rule in RULES:
        r = evaluate("miou", rule, saliency, inp.masks_pos)["miou"]
        res.per_image[f"miou@{rule}"], res.params[f"miou@{rule}"] = r.per_image, r.params
    t_id = time.perf_counter()
    out = evaluate(
        "id", ID_PRESET, model, inp.raw_pos, saliency, targets=inp.labels[inp.pos], mean=pre.mean, std=pre.std,
        batch_size=batch_size,
    )  # fmt: skip
    for k in ("insertion", "deletion", "id"):
        res.per_image[k], res.params[k] = out[k].per_image, out[k].params
    info["seconds"] = {
        "maps": round(maps_s, 2),
        "maps_per_image_ms": round(1000 * maps_s / len(inp.pos), 2),
        "insertion_deletion": round(time.perf_counter() - t_id, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    info["n_test"], info["n_masked"] = len(inp.names), len(inp.pos)
    return res


def summarise(results: list[MethodResult], resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per method, per metric: mean, 95 % interval, n; and the paired mIoU difference to Grad-CAM."""
    ref = next((r for r in results if r.name == "gradcam"), None)
    table: dict[str, dict[str, Any]] = {}
    for r in results:
        metrics: dict[str, Any] = {}
        for key, metric, preset in metric_keys():
            v = r.per_image[key]
            lo, hi = bootstrap_ci(v, resamples, seed)
            entry = {"metric": metric, "preset": preset, "value": float(np.mean(v)), "ci95": [lo, hi],
                     "n_images": int(len(v))}  # fmt: skip
            if metric == "miou":
                entry["rule"] = r.params[key].get("rule")
            if ref is not None and metric == "miou" and r is not ref:
                d, dlo, dhi = paired_bootstrap_diff(v, ref.per_image[key], resamples, seed)
                entry["diff_vs_gradcam"] = {"value": d, "ci95": [dlo, dhi], "paired_bootstrap": True}
            metrics[key] = entry
        table[r.name] = metrics
    return table


def target_check(table: dict[str, dict[str, Any]], name: str = "ala") -> dict[str, Any] | None:
    """The issue's target for ``name``: the best mIoU (mean rule) of all methods, >= 0.2 above Grad-CAM."""
    if name not in table:
        return None
    key = "miou@mean"
    best = max(table, key=lambda m: table[m][key]["value"])
    diff = table[name][key].get("diff_vs_gradcam")
    return {
        "method": name,
        "rule": "mean",
        "best_miou": best == name,
        "best_method": best,
        "diff_vs_gradcam": diff,
        "diff_at_least_0.2": None if diff is None else diff["value"] >= 0.2,
        "diff_ci95_above_0.2": None if diff is None else diff["ci95"][0] >= 0.2,
        "met": None if diff is None else bool(best == name and diff["value"] >= 0.2),
    }


def csv_rows(results: list[MethodResult], table: dict[str, dict[str, Any]], data: str) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        for key, metric, preset in metric_keys():
            e = table[r.name][key]
            diff = e.get("diff_vs_gradcam") or {}
            rows.append(
                {
                    "dataset": data,
                    "model": r.info.get("backbone"),
                    "method": r.name,
                    "metric": metric,
                    "preset": preset,
                    "value": round(e["value"], 6),
                    "ci95_low": round(e["ci95"][0], 6),
                    "ci95_high": round(e["ci95"][1], 6),
                    "n_images": e["n_images"],
                    "diff_vs_gradcam": round(diff["value"], 6) if diff else None,
                    "diff_ci95_low": round(diff["ci95"][0], 6) if diff else None,
                    "diff_ci95_high": round(diff["ci95"][1], 6) if diff else None,
                    "artifact": r.info.get("source"),
                }
            )
    return rows


def plot_miou(table: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: mIoU per method, one bar per binarisation rule, with the 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(methods) + 2), 3.6))
    width = 0.8 / len(RULES)
    colours = plt.get_cmap("tab10")
    for j, rule in enumerate(RULES):
        vals = [table[m][f"miou@{rule}"]["value"] for m in methods]
        lo = [v - table[m][f"miou@{rule}"]["ci95"][0] for m, v in zip(methods, vals, strict=True)]
        hi = [table[m][f"miou@{rule}"]["ci95"][1] - v for m, v in zip(methods, vals, strict=True)]
        xs = np.arange(len(methods)) + (j - (len(RULES) - 1) / 2) * width
        ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, color=colours(j), label=f"rule {rule}")
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=9)
    ax.set_ylabel("mean IoU ↑")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncols=len(RULES), loc="upper right")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def _heat(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map upsampled bilinearly to (H, W) and min-max scaled, as the metrics see it."""
    from engine.metrics.base import minmax, resize_maps

    t = resize_maps(torch.from_numpy(np.asarray(saliency, np.float32))[None], size)
    return minmax(t)[0].numpy()


def overlay_sheet(
    results: list[MethodResult], inputs_for: Callable[[PreprocessConfig], Inputs], n: int, seed: int, tile: int = 224
) -> Image.Image:
    """Rows: ``n`` seeded test positives; columns: the photo (the classifier's crop), the ground-truth mask, then each
    method's map as a jet overlay with its IoU (mean rule)."""
    from engine.explanation import colormap_lut
    from engine.metrics.iou import binarise, iou

    lut = colormap_lut("jet")
    first = inputs_for(PreprocessConfig(**results[0].info["preprocess"]))
    rows = sorted(random.Random(seed).sample(range(len(first.pos)), min(n, len(first.pos))))
    head, cap = 20, 16
    cols = 2 + len(results)
    sheet = Image.new("RGB", (cols * tile, head + len(rows) * (tile + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(["photo (classifier crop)", "ground truth", *[r.name for r in results]]):
        draw.text((c * tile + 4, 4), title[:36], fill="black")
    for ri, p in enumerate(rows):
        y = head + ri * (tile + cap)
        photo = Image.fromarray((first.raw_pos[p].transpose(1, 2, 0) * 255).round().astype(np.uint8))
        mask = first.masks_pos[p]
        tinted = np.asarray(photo, np.float32)
        tinted[mask] = 0.45 * tinted[mask] + 0.55 * np.array([255, 40, 40], np.float32)
        tiles = [photo, Image.fromarray(tinted.round().astype(np.uint8))]
        captions = [first.pos_names[p].split("/")[-1][:36], f"{mask.mean():.0%} of the crop"]
        for r in results:
            inp = inputs_for(PreprocessConfig(**r.info["preprocess"]))
            base = Image.fromarray((inp.raw_pos[p].transpose(1, 2, 0) * 255).round().astype(np.uint8))
            s = _heat(r.saliency[p], inp.masks_pos[p].shape)
            heat = Image.fromarray(lut[np.rint(np.clip(s, 0, 1) * 255).astype(np.intp)])
            tiles.append(Image.blend(base, heat, 0.5))
            captions.append(f"IoU {iou(binarise(s, 'mean'), inp.masks_pos[p]):.2f} (mean rule)")
        for c, (im, text) in enumerate(zip(tiles, captions, strict=True)):
            sheet.paste(im.resize((tile, tile), Image.Resampling.BILINEAR), (c * tile, y + cap))
            draw.text((c * tile + 4, y + 2), text, fill="black")
    return sheet


def evaluate_methods(
    split: str | Path,
    work: str | Path,
    out: str | Path,
    method_specs: Sequence[str] = (),
    *,
    baselines: Sequence[str] = BASELINES,
    data: str = "kahikatea",
    data_root: str | None = None,
    model_backend: str | None = None,
    batch_size: int = 32,
    resamples: int = 2000,
    seed: int = 0,
    overlays: int = 6,
    use_cache: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the evaluation (see the module docstring) and write results.csv, results.json, miou.png, overlays.jpg."""
    from tqdm import tqdm

    t0 = time.time()
    work, out = Path(work), Path(out)
    methods = collect_methods(method_specs, work, baselines)
    sd = load_split(split, data, data_root)
    test = sd.parts["test"]
    model_backend = model_backend or default_model_backend()
    cache: dict[tuple, Inputs] = {}

    def inputs_for(pre: PreprocessConfig) -> Inputs:
        key = tuple(sorted(dataclasses.asdict(pre).items()))
        if key not in cache:
            cache[key] = prepare_inputs(test, sd.root, pre, progress=progress)
        return cache[key]

    settings = {"batch_size": batch_size, "preset": ID_PRESET, "rules": list(RULES), "target": "ground truth"}
    results: list[MethodResult] = []
    bar = tqdm(methods, desc="methods", unit="method", file=sys.stderr, disable=not progress)
    for spec in bar:
        bar.set_description(spec.name)
        fp = fingerprint(spec, sd, settings)
        res = load_cached(work, spec.name, fp) if use_cache else None
        if res is not None:
            log(f"{spec.name}: cached result reused ({_cache_path(work, spec.name)})")
        else:
            log(f"{spec.name}: explaining and scoring ({spec.path})")
            res = run_method(spec, sd, inputs_for, model_backend=model_backend, batch_size=batch_size)
            res.fingerprint = fp
            save_cached(work, res)
        results.append(res)
    bar.close()
    names0 = inputs_for(PreprocessConfig(**results[0].info["preprocess"])).pos_names
    for r in results:  # the paired comparisons need the same images in the same order
        if inputs_for(PreprocessConfig(**r.info["preprocess"])).pos_names != names0:
            raise EngineError(f"{r.name} was scored on other images than {results[0].name}; please report this.")
    table = summarise(results, resamples, seed)
    n_test, n_pos = len(test), len(names0)
    pre0 = PreprocessConfig(**results[0].info["preprocess"])
    h, w = pre0.input_size
    doc: dict[str, Any] = {
        "description": "ALA vs baselines on kahikatea (test part of the fixed split): accuracy on every test image; "
        "mIoU (three binarisation rules) and insertion / deletion / ID (keio preset, ground-truth class) on the "
        "test images with a ground-truth mask. Each method explains with its own model.",
        "command": command if command is not None else shlex.join(["python", *sys.argv]),
        "dataset": data,
        "split": sd.record(),
        "n_test_images": n_test,
        "n_masked_images": n_pos,
        "masked_images": names0,
        "evaluated_on": f"the {h}x{w} centre crop the classifier sees: each image goes through its method's artifact "
        "preprocess (resize the shorter side, centre crop); each ground-truth mask through the same resize (nearest "
        "neighbour) and crop; saliency maps are upsampled bilinearly to the crop",
        "binarisation": {rule: results[0].params[f"miou@{rule}"].get("rule") for rule in RULES}
        | {"map_scaling": "min-max per map, after the bilinear upsampling"},
        "insertion_deletion": {"preset": ID_PRESET, "params": results[0].params["insertion"], "target": "ground truth"},
        "bootstrap": {
            "kind": "percentile, 95 %",
            "resamples": resamples,
            "seed": seed,
            "diff_vs_gradcam": "paired: the same resampled images for both methods",
        },  # fmt: skip
        "methods": {
            r.name: {**r.info, "metrics": table[r.name], "cache": rel(_cache_path(work, r.name))} for r in results
        },
        "classifier": _classifier_record(work),
        "target": target_check(table),
        "wall_time_s": round(time.time() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", doc)
    write_csv(out / "results.csv", csv_rows(results, table, data), CSV_COLUMNS)
    plot_miou(table, out / "miou.png", f"kahikatea test positives (n={n_pos}): mIoU per binarisation rule, 95% CI")
    if overlays > 0:
        sheet = overlay_sheet(results, inputs_for, overlays, seed)
        atomic_write(out / "overlays.jpg", lambda fh: sheet.save(fh, format="JPEG", quality=88))
    print(format_report(table))
    return doc


def _classifier_record(work: Path) -> dict[str, Any] | None:
    try:
        s = read_summary(work)
    except InputError:
        return None
    keep = ("command", "seed", "epochs", "epochs_done", "steps", "optimizer", "batch_size", "augmentation",
            "early_stopping", "val_accuracy", "val_loss", "wall_time_s", "classifier_sha256")  # fmt: skip
    return {k: s[k] for k in keep if k in s}


def format_report(table: dict[str, dict[str, Any]]) -> str:
    """The results as a text table: value [95 % interval] per metric, and the mIoU (mean rule) gain over Grad-CAM."""

    def cell(e: dict[str, Any]) -> str:
        return f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"

    rows = []
    for name, metrics in table.items():
        row = {"method": name}
        for key, _, _ in metric_keys():
            row[key] = cell(metrics[key])
        d = metrics["miou@mean"].get("diff_vs_gradcam")
        row["Δmiou@mean vs gradcam"] = f"{d['value']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else None
        rows.append(row)
    cols = ["method", *[k for k, _, _ in metric_keys()], "Δmiou@mean vs gradcam"]
    return format_table(rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ala_kahikatea.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--split", default=str(DEFAULT_SPLIT), help=f"split file (default {rel(DEFAULT_SPLIT)})")
        sp.add_argument("--data", default="kahikatea", help="engine.data dataset (default kahikatea)")
        sp.add_argument("--data-root", default=None, help="dataset folder (default ../shared/data/kahikatea)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    f = sub.add_parser("finetune", help="fine-tune Lite0 as the 2-class kahikatea classifier")
    common(f)
    f.add_argument("--out", default=str(DEFAULT_WORK / "finetune"), help="folder for the classifier, log, summary")
    f.add_argument("--epochs", type=_positive_int, default=30)
    f.add_argument("--patience", type=_positive_int, default=5, help="early stopping on val accuracy (then loss)")
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--weight-decay", type=float, default=1e-2)
    f.add_argument("--batch-size", type=_positive_int, default=16)
    f.add_argument("--crop-scale", type=float, default=0.75, help="random crops: sides in [SCALE, 1] (1 = none)")
    f.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    f.add_argument("--source", choices=("package", "random"), default="package", help="Lite0 weights (random: tests)")
    f.add_argument("--input-size", type=_positive_int, default=None, help="override the 224 px input (smoke runs)")
    f.add_argument("--max-steps", type=_positive_int, default=None, help="stop after N optimiser steps (smoke runs)")

    b = sub.add_parser("baselines", help="ReciproCAM artifact and T-TAME training on the fine-tuned classifier")
    common(b)
    b.add_argument("--work", default=str(DEFAULT_WORK), help=f"work folder (default {rel(DEFAULT_WORK)})")
    b.add_argument("--tame-epochs", type=_positive_int, default=8)
    b.add_argument("--tame-lr", type=float, default=1e-3, help="T-TAME's OneCycleLR maximum")
    b.add_argument("--tame-batch-size", type=_positive_int, default=16)
    b.add_argument("--tame-fusion-init", choices=("random", "classifier"), default="random")
    b.add_argument("--tame-max-steps", type=_positive_int, default=None, help="smoke runs")
    b.add_argument("--skip-tame", action="store_true", help="only the ReciproCAM artifact")
    b.add_argument("--overwrite", action="store_true", help="replace existing baseline artifacts")

    e = sub.add_parser("evaluate", help="evaluate the methods on the test part and write the results")
    common(e)
    e.add_argument("--work", default=str(DEFAULT_WORK), help=f"work folder (default {rel(DEFAULT_WORK)})")
    e.add_argument("--method", action="append", default=[], metavar="NAME=ARTIFACT_DIR", help="repeatable")
    e.add_argument("--baselines", default=",".join(BASELINES), help="which baselines of WORK to add ('none': none)")
    e.add_argument("--out", default=str(RESULTS), help=f"results folder (default {rel(RESULTS)})")
    e.add_argument(
        "--model-backend",
        choices=("openvino", "onnxruntime", "torch"),
        default=None,
        help="runtime of the metrics' model calls, fp32 (default: openvino, else onnxruntime, else torch)",
    )
    e.add_argument("--batch-size", type=_positive_int, default=32)
    e.add_argument("--resamples", type=_positive_int, default=2000, help="bootstrap resamples")
    e.add_argument("--overlays", type=int, default=6, help="test positives in overlays.jpg (0: no sheet)")
    e.add_argument("--no-cache", action="store_true", help="recompute every method (ignore WORK/eval)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/ala_kahikatea.py", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.time()
    try:
        if args.command == "finetune":
            s = finetune(
                args.split, args.out, data=args.data, data_root=args.data_root, epochs=args.epochs,
                patience=args.patience, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                seed=args.seed, crop_scale=args.crop_scale, flip=not args.no_flip, source=args.source,
                input_size=args.input_size, max_steps=args.max_steps, progress=not args.no_progress, command=command,
            )  # fmt: skip
            print(
                f"wrote {Path(args.out) / CLASSIFIER_FILE}: best epoch {s['early_stopping']['best_epoch']} of "
                f"{s['epochs_done']}, val accuracy {s['val_accuracy']:.3f}, {s['wall_time_s']:.0f} s"
            )
        elif args.command == "baselines":
            work = Path(args.work)
            from engine.artifact import MANIFEST

            if (work / "reciprocam" / MANIFEST).is_file() and not args.overwrite:
                log(f"{work / 'reciprocam'} exists (--overwrite replaces it)")
            else:
                art = make_reciprocam(work)
                log(f"wrote {art.path}")
            if args.skip_tame:
                pass
            elif (work / "tame" / MANIFEST).is_file() and not args.overwrite:
                log(f"{work / 'tame'} exists (--overwrite retrains it)")
            else:
                art = train_tame(
                    work, args.split, data=args.data, data_root=args.data_root, epochs=args.tame_epochs,
                    lr=args.tame_lr, batch_size=args.tame_batch_size, seed=args.seed,
                    fusion_init=args.tame_fusion_init, max_steps=args.tame_max_steps, progress=not args.no_progress,
                    overwrite=args.overwrite,
                )  # fmt: skip
                v = art.manifest["training"]["final_val"]
                log(f"wrote {art.path}: val AD@15 {v['ad@15']:.2f}, IC@15 {v['ic@15']:.2f}")
            print(f"baselines ready in {work} ({time.time() - t0:.0f} s)")
        else:
            baselines = [] if args.baselines.strip() in ("", "none") else [b.strip() for b in args.baselines.split(",")]
            evaluate_methods(
                args.split, args.work, args.out, args.method, baselines=baselines, data=args.data,
                data_root=args.data_root, model_backend=args.model_backend, batch_size=args.batch_size,
                resamples=args.resamples, seed=args.seed, overlays=args.overlays, use_cache=not args.no_cache,
                progress=not args.no_progress, command=command,
            )  # fmt: skip
            files = "results.csv, results.json, miou.png" + (", overlays.jpg" if args.overlays > 0 else "")
            print(f"wrote {files} in {args.out} ({time.time() - t0:.0f} s)")
    except EngineError as e:
        print(f"ala_kahikatea {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
