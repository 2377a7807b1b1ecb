"""The common interface of every metric: the model contract, the result type, input checks and batched inference.

Every metric takes the same kinds of inputs:

* ``model``: a :data:`ModelFn`, a callable from a **normalised** float32 batch (B, C, H, W) to logits (B, K). The
  metric applies softmax itself and always feeds batches of up to ``batch_size`` images (all perturbation steps of an
  image, or of several images, share batches), never one image at a time.
* ``images``: raw float32 images (N, C, H, W) with values in [0, 1], at the network's input size.
* ``saliency``: one float map per image (N, h, w), at any resolution; a metric upsamples it bilinearly
  (``align_corners=False``) to H x W when its preset needs it.
* ``targets``: class ids (N,), or None where the preset uses the class predicted on the original image.
* ``mean``, ``std``: the per-channel normalisation the model expects; the metric computes ``(x - mean) / std``.

Each metric function returns a ``dict[str, MetricResult]``: one :class:`MetricResult` per scalar quantity, keyed by
its metric name (``"insertion"``, ``"ad@15"``, ``"road_morf"``, ...), so a multi-valued metric (AD/IC at three
levels, ROAD MoRF and LeRF, ADCC and its three parts) is a set of plain results that all record the preset.

Bad input raises :class:`engine.errors.InputError` with the fix: a wrong number or shape of maps, NaN or inf in maps
or images, raw images outside [0, 1], an empty dataset (N = 0), missing targets where the preset needs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.errors import InputError
from engine.numeric import minmax as numeric_minmax
from engine.numeric import softmax

ModelFn = Callable[[np.ndarray], np.ndarray]
"""Normalised float32 batch (B, C, H, W) -> logits (B, K). The metric applies softmax itself."""

ExplainFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(normalised float32 batch (B, C, H, W), target class ids (B,) int64) -> saliency maps (B, h, w)."""

DEFAULT_BATCH_SIZE = 32


@dataclass
class MetricResult:
    """One scalar metric over a dataset, with its per-image values and the exact preset parameters used.

    Attributes:
        metric: the metric's name, e.g. ``"insertion"``, ``"ad@15"``, ``"road_morf"``, ``"adcc"``, ``"miou"``.
        preset: the preset it was computed with, e.g. ``"rise"``, ``"tame"``, ``"otsu"``.
        value: the aggregate the preset defines (the mean of ``per_image``; for AD/IC and the ``tame`` ROAD scores
            the per-image values are already in percent, so the mean is the paper's 100/N sum).
        per_image: one value per image (N,) float64.
        n_images: N.
        params: the preset's parameters as used (JSON-serialisable), including conventions chosen.
        curves: per-image score curves (N, S) for insertion/deletion, else None.
        extras: further per-image arrays, e.g. ROAD scores per removal percentage (N, P), and the curve abscissae.
    """

    metric: str
    preset: str
    value: float
    per_image: np.ndarray
    n_images: int
    params: dict[str, Any]
    curves: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def to_rows(self, dataset: str, model: str, method: str) -> list[dict[str, Any]]:
        """Rows for a results table (one row: the aggregate), e.g. the quality benchmark's CSV.

        Args:
            dataset: the dataset's name.
            model: the model's name.
            method: the explanation method's name.

        Returns:
            A list with one dict: dataset, model, method, metric, preset, value, n_images and params (as JSON).
        """
        return [
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "metric": self.metric,
                "preset": self.preset,
                "value": float(self.value),
                "n_images": int(self.n_images),
                "params": json.dumps(self.params, sort_keys=True),
            }
        ]


def results_to_rows(
    results: Mapping[str, MetricResult] | Iterable[MetricResult], dataset: str, model: str, method: str
) -> list[dict[str, Any]]:
    """Rows of several results (e.g. what :func:`engine.metrics.evaluate` returns), in order.

    Args:
        results: a dict of results (as returned by every metric) or an iterable of results.
        dataset: the dataset's name.
        model: the model's name.
        method: the explanation method's name.
    """
    items = results.values() if isinstance(results, Mapping) else results
    return [row for r in items for row in r.to_rows(dataset, model, method)]


def make_result(
    metric: str,
    preset: str,
    per_image: np.ndarray,
    params: dict[str, Any],
    curves: np.ndarray | None = None,
    extras: dict[str, np.ndarray] | None = None,
) -> MetricResult:
    """Build a :class:`MetricResult` whose value is the mean of ``per_image`` (never NaN: inputs are checked)."""
    per = np.asarray(per_image, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(per)):  # a bug, not bad input: every convention above keeps values finite
        raise RuntimeError(f"metric {metric!r} ({preset}) produced a non-finite per-image value; please report this.")
    return MetricResult(
        metric=metric,
        preset=preset,
        value=float(per.mean()),
        per_image=per,
        n_images=int(per.shape[0]),
        params=params,
        curves=curves,
        extras=extras or {},
    )


# ----------------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------------


def check_images(images: np.ndarray | Tensor) -> Tensor:
    """Raw images (N, C, H, W) in [0, 1] -> a contiguous float32 CPU tensor; InputError otherwise."""
    arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if arr.ndim != 4:
        raise InputError(
            f"images must be a raw batch (N, C, H, W), got shape {arr.shape}; add the batch axis with images[None]."
        )
    if arr.shape[0] == 0:
        raise InputError("the dataset is empty (N = 0 images): there is nothing to evaluate; pass at least one image.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"images must be float in [0, 1], got dtype {arr.dtype}; divide uint8 images by 255.")
    if not np.all(np.isfinite(arr)):
        raise InputError("images contain NaN or inf; fix the data loader or drop those images.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(
            f"images must be raw pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; pass the images before "
            "normalisation (the metric normalises with mean/std itself)."
        )
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def check_saliency(saliency: np.ndarray | Tensor, n: int) -> Tensor:
    """Saliency maps (N, h, w), finite -> a contiguous float32 CPU tensor; InputError otherwise."""
    arr = saliency.detach().cpu().numpy() if isinstance(saliency, Tensor) else np.asarray(saliency)
    if arr.ndim != 3:
        raise InputError(
            f"saliency must be one 2-D map per image (N, h, w), got shape {arr.shape}; squeeze channel axes and "
            "stack the maps along the first axis."
        )
    if arr.shape[0] != n:
        raise InputError(f"got {arr.shape[0]} saliency maps for {n} images; pass exactly one map per image.")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InputError(f"saliency maps must not be empty, got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"saliency must be numeric, got dtype {arr.dtype}.")
    arr = arr.astype(np.float32)
    bad = ~np.all(np.isfinite(arr.reshape(arr.shape[0], -1)), axis=1)
    if bad.any():
        raise InputError(
            f"saliency maps {np.flatnonzero(bad)[:10].tolist()} contain NaN or inf; fix the explainer's output "
            "(e.g. np.nan_to_num) or drop those images."
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_targets(targets: Sequence[int] | np.ndarray | Tensor | None, n: int, needed_by: str | None) -> Tensor | None:
    """Class ids (N,) -> int64 tensor, or None; InputError when ``needed_by`` names a preset that requires them."""
    if targets is None:
        if needed_by is not None:
            raise InputError(
                f"{needed_by} scores the ground-truth class: pass targets=<(N,) int class ids> "
                "(or choose a preset that uses the predicted class)."
            )
        return None
    arr = targets.detach().cpu().numpy() if isinstance(targets, Tensor) else np.asarray(targets)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"targets must be (N,) = ({n},) integers, got dtype {arr.dtype} shape {arr.shape}.")
    if (arr < 0).any():
        raise InputError(f"targets must be class ids >= 0, got {arr.min()}.")
    return torch.from_numpy(arr.astype(np.int64))


def check_norm(mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray, c: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std -> (C, 1, 1) float32 tensors; InputError on a wrong length or a std <= 0."""
    m = np.asarray(mean, dtype=np.float64).reshape(-1)
    s = np.asarray(std, dtype=np.float64).reshape(-1)
    if m.shape != (c,) or s.shape != (c,):
        raise InputError(
            f"mean and std need one value per channel ({c}), got {m.shape[0]} and {s.shape[0]}; "
            "e.g. mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225) for ImageNet models."
        )
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise InputError(f"std must be finite and > 0 (and mean finite), got mean={m.tolist()}, std={s.tolist()}.")
    return (
        torch.tensor(m, dtype=torch.float32).view(c, 1, 1),
        torch.tensor(s, dtype=torch.float32).view(c, 1, 1),
    )


MODEL_KINDS = ("cnn", "vit")


def check_model_kind(model_kind: str | None) -> str | None:
    """``"cnn"``, ``"vit"`` or None, else InputError."""
    if model_kind is not None and model_kind not in MODEL_KINDS:
        raise InputError(
            f"model_kind must be 'cnn' or 'vit', got {model_kind!r}; it selects how a preset masks the image "
            "(T-TAME: raw pixels for CNNs, the standardised image for ViTs)."
        )
    return model_kind


@dataclass
class CheckedInputs:
    """What every model-querying metric starts from, after its inputs are checked."""

    raw: Tensor  # (N, C, H, W) in [0, 1]
    saliency: Tensor  # (N, H, W), upsampled to the images' size
    mean: Tensor
    std: Tensor
    batch_size: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, c, h, w = self.raw.shape
        return n, c, h, w


def check_inputs(
    images: np.ndarray | Tensor,
    saliency: np.ndarray | Tensor,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    batch_size: int,
    model_kind: str | None,
    *,
    minmax_before_resize: bool = False,
) -> CheckedInputs:
    """The shared checks of the model-querying metrics: model kind, batch size, images, maps (upsampled to the
    images' size; min-max normalised first where the preset says so) and the normalisation."""
    check_model_kind(model_kind)
    batch_size = check_batch_size(batch_size)
    raw = check_images(images)
    n, c, h, w = raw.shape
    maps = check_saliency(saliency, n)
    sal = resize_maps(minmax(maps) if minmax_before_resize else maps, (h, w))
    m, s = check_norm(mean, std, c)
    return CheckedInputs(raw, sal, m, s, batch_size)


def check_batch_size(batch_size: int) -> int:
    """A positive int, else InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}.")
    return int(batch_size)


def check_preset(metric: str, preset: str, presets: Iterable[str]) -> str:
    """The preset if known for this metric, else InputError listing the known ones."""
    names = tuple(presets)
    if preset not in names:
        raise InputError(f"unknown preset {preset!r} for metric {metric!r}; choose one of {', '.join(names)}.")
    return preset


# ----------------------------------------------------------------------------------------------------------------
# Map helpers
# ----------------------------------------------------------------------------------------------------------------


def resize_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of maps (N, h, w) to (N, H, W); returned unchanged if already that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].contiguous()


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max scaling of (N, h, w) to [0, 1]; a constant map becomes all zeros (documented convention).
    The explainers' own scaling (:func:`engine.numeric.minmax`), per map."""
    return numeric_minmax(maps.reshape(maps.shape[0], -1), dim=-1).reshape(maps.shape).contiguous()


def normalise(raw: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel, float32."""
    return ((raw - mean) / std).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Batched inference
# ----------------------------------------------------------------------------------------------------------------


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (:func:`engine.numeric.softmax`)."""
    return softmax(logits, np.float64)


class BatchRunner:
    """Streams normalised images through the model in batches of exactly ``batch_size`` (the last one may be short).

    Images are added in any chunk sizes with one class id each (-1: the class the model predicts on that image);
    the runner keeps the softmax probability of that class and the top-1 class, in the order added. The number of
    model calls is ceil(total images / batch_size).
    """

    def __init__(self, model: ModelFn, batch_size: int, device: torch.device | None = None) -> None:
        """``device``: None, the model takes NumPy float32 batches; a torch device, the model takes the batches as
        tensors on that device (where the images were perturbed: no host round trip)."""
        self.model = model
        self.device = device
        self.batch_size = check_batch_size(batch_size)
        self.calls = 0
        self.n_classes: int | None = None
        self._x: list[Tensor] = []
        self._c: list[Tensor] = []
        self._pending = 0
        self._prob: list[np.ndarray] = []
        self._top1: list[np.ndarray] = []

    def add(self, x: Tensor, classes: Tensor | int) -> None:
        """Queue images (k, C, H, W) (normalised) with their class ids (k,) or one id for all."""
        if x.shape[0] == 0:
            return
        cls = torch.full((x.shape[0],), int(classes), dtype=torch.int64) if isinstance(classes, int) else classes
        self._x.append(x)
        self._c.append(cls.to(torch.int64).reshape(-1))
        self._pending += x.shape[0]
        if self._pending >= self.batch_size:
            xs, cs = torch.cat(self._x), torch.cat(self._c)
            n_full = (xs.shape[0] // self.batch_size) * self.batch_size
            for i in range(0, n_full, self.batch_size):
                self._run(xs[i : i + self.batch_size], cs[i : i + self.batch_size])
            self._x, self._c = [xs[n_full:]], [cs[n_full:]]
            self._pending = xs.shape[0] - n_full

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Run what is left; return (probability of each image's class (T,) float64, top-1 class (T,) int64)."""
        if self._pending:
            self._run(torch.cat(self._x), torch.cat(self._c))
        self._x, self._c, self._pending = [], [], 0
        prob = np.concatenate(self._prob) if self._prob else np.zeros(0)
        top1 = np.concatenate(self._top1) if self._top1 else np.zeros(0, dtype=np.int64)
        self._prob, self._top1 = [], []
        return prob, top1

    def _run(self, x: Tensor, cls: Tensor) -> None:
        if self.device is not None:
            batch = x.to(self.device, torch.float32).contiguous()
        else:
            batch = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        out = self.model(batch)
        self.calls += 1
        logits = out.detach().cpu().numpy() if isinstance(out, Tensor) else np.asarray(out)
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise InputError(
                f"the model must map a batch (B, C, H, W) to logits (B, K); for B={batch.shape[0]} it returned shape "
                f"{logits.shape}. Wrap it so that it returns 2-D logits (e.g. lambda x: net(x).reshape(len(x), -1))."
            )
        if not np.all(np.isfinite(logits)):
            raise InputError("the model returned NaN or inf logits; check its weights and the input normalisation.")
        if self.n_classes is None:
            self.n_classes = logits.shape[1]
        c = cls.numpy()
        if (c >= logits.shape[1]).any():
            raise InputError(
                f"target class {int(c.max())} is out of range for a model with {logits.shape[1]} classes; "
                "check the targets' label mapping."
            )
        prob = softmax64(logits)
        top1 = prob.argmax(axis=1)
        c = np.where(c < 0, top1, c)
        self._prob.append(prob[np.arange(len(c)), c])
        self._top1.append(top1.astype(np.int64))


def model_device(model: Any) -> torch.device | None:
    """The CUDA device a torch module's parameters are on, else None (NumPy batches on the host)."""
    params = getattr(model, "parameters", None)
    if params is None:
        return None
    first = next(iter(params()), None)
    return first.device if first is not None and first.device.type == "cuda" else None


def predict(
    model: ModelFn, x_norm: Tensor, batch_size: int, classes: Tensor | None = None, device: torch.device | None = None
) -> tuple[np.ndarray, ...]:
    """Probabilities of ``classes`` (or of the predicted class when None) and the top-1 class, batched.

    Returns:
        (probability (N,) float64, top-1 class (N,) int64, the class scored (N,) int64, model calls).
    """
    runner = BatchRunner(model, batch_size, device)
    runner.add(x_norm, classes if classes is not None else -1)
    prob, top1 = runner.finish()
    scored = classes.numpy() if classes is not None else top1
    return prob, top1, scored.astype(np.int64), runner.calls
