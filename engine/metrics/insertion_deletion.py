"""Insertion / deletion AUC and the ID score (insertion - deletion), with the peers' presets.

Pixel order: saliency descending, ties by flat index ascending (stable). Step with count k: insertion shows the k top
pixels of the image over the baseline; deletion replaces the k top pixels by the baseline. Perturbations are done on
the normalised tensor: replacing a pixel commutes with the per-channel normalisation, so "black" (raw 0) is the value
``(0 - mean) / std`` in normalised space, while RISE's deletion baseline is 0 *in normalised space* (the dataset mean
colour, i.e. raw ``mean``).

Presets (``PRESETS`` holds the exact parameters; each result's ``params`` records them):

* ``rise`` (Petsiuk et al.'s ``CausalMetric``): softmax of the class predicted on the original image (``targets`` are
  ignored); 224 pixels per step, counts 0, 224, ..., H*W (the last step clipped), ceil(H*W/224) + 1 points;
  deletion baseline = zeros of the normalised tensor; insertion baseline = Gaussian blur of the normalised image with
  RISE's kernel (``gkern(11, 5)``: scipy's ``gaussian_filter`` of an 11x11 delta, sigma 5, mode reflect, which sums
  to 1) applied with zero padding 5, as RISE's ``conv2d`` does; AUC = (sum - a_0/2 - a_n/2) / (n - 1).
  Difference: RISE sorts with ``np.argsort`` and reverses, so its tie order is implementation-defined; here ties go
  by index.
* ``keio`` (ALA's lab): softmax of the ground-truth class (``targets`` required); black (raw 0) baseline for both;
  500 pixels per step, nominal counts 0, 500, ..., H*W; ties enter together: at nominal count k every pixel whose
  saliency is >= the k-th largest value is included (so a constant map is all in at the first step); AUC = normalised
  trapezoid over the nominal fraction k / (H*W).
* ``ovxai`` (openvino-xai 1.1 ``InsertionDeletionAUC``): 30 steps, counts int(i * H*W / 30), i = 0..30; black (raw 0)
  baseline for both; class = ``targets`` if given, else the predicted class; AUC = (sum - a_0/2 - a_n/2) / (n - 1)
  (its normalised trapezoid; openvino-xai also takes abs(), a no-op for probabilities). Difference: openvino-xai
  sorts with an unstable ``np.argsort(-s)``, so only its tie order may differ.

A constant (or partly constant) map is not an error: its ties are ranked by index (``rise``, ``ovxai``) or enter
together (``keio``).

``quantize_levels=L`` (any preset; the LRP-for-ResNet authors evaluate ``keio`` with 8): before ranking, each
upsampled map is min-max scaled and cut into ``L`` equal bins, ``q = min(floor(L * (s - min) / (max - min)), L - 1)``
(a constant map becomes all 0), as a heat map with ``L`` colours would show it; with ``keio``'s ties-together rule the
pixels of one level then enter together. ``params["quantize_levels"]`` records it (None: not quantised).

Steps with the same count perturb the image identically, so each curve evaluates the model once per distinct count
and gives every nominal step the probability of its count (``keio`` with 8 levels: at most 9 distinct counts of its
101 steps). The curves are those of one evaluation per step, for any model whose output for an image does not
depend on the other images of its batch; ``params["perturbed_images"]`` records how many images were evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine import ops
from engine.errors import InputError

from .base import (
    DEFAULT_BATCH_SIZE,
    BatchRunner,
    MetricResult,
    ModelFn,
    check_inputs,
    check_preset,
    check_targets,
    make_result,
    model_device,
    normalise,
    predict,
)

PRESETS: dict[str, dict[str, Any]] = {
    "rise": {
        "class": "predicted",
        "pixels_per_step": 224,
        "deletion_baseline": "zeros_normalised",
        "insertion_baseline": "blur",
        "blur_kernel": 11,
        "blur_sigma": 5.0,
        "blur_space": "normalised",
        "blur_padding": "zeros",
        "ties": "index",
        "auc": "rise",
    },
    "keio": {
        "class": "target",
        "pixels_per_step": 500,
        "deletion_baseline": "black",
        "insertion_baseline": "black",
        "ties": "together",
        "auc": "trapezoid",
    },
    "ovxai": {
        "class": "target_or_predicted",
        "steps": 30,
        "deletion_baseline": "black",
        "insertion_baseline": "black",
        "ties": "index",
        "auc": "rise",
    },
}
_COMMON = {
    "upsample": "bilinear",
    "space": "normalised",
    "black": "raw 0 = (0 - mean) / std normalised",
    "score": "softmax",
}


def rise_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's ``gkern(size, sigma)`` 2-D kernel without scipy: scipy's ``gaussian_filter`` (truncate 4, mode reflect)
    of a centred delta, which is separable, so it is the outer product of the 1-D filtered delta.

    Args:
        size: kernel side (odd).
        sigma: Gaussian standard deviation.

    Returns:
        The (size, size) float64 kernel (sums to 1).
    """
    radius = int(4.0 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    centre = size // 2
    k1 = np.zeros(size)
    for i in range(size):
        j = np.mod(i + t, 2 * size)
        j = np.where(j >= size, 2 * size - 1 - j, j)  # half-sample symmetric ("reflect")
        k1[i] = w[j == centre].sum()
    return np.outer(k1, k1)


def quantize(saliency: Tensor, levels: int) -> Tensor:
    """Per map of ``saliency`` (N, H, W): min-max scale, then ``levels`` equal bins, as float level indices 0..L-1
    (a constant map becomes all 0)."""
    flat = saliency.reshape(saliency.shape[0], -1).double()
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    scaled = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    q = torch.clamp(torch.floor(scaled * levels), max=levels - 1)
    return q.reshape(saliency.shape).to(saliency.dtype)


def _blur(x_norm: Tensor, size: int, sigma: float) -> Tensor:
    c = x_norm.shape[1]
    k = torch.from_numpy(rise_kernel(size, sigma)).float()
    weight = k.expand(c, 1, size, size).contiguous()
    return F.conv2d(x_norm, weight, padding=size // 2, groups=c).contiguous()


def _counts(preset: str, hw: int) -> np.ndarray:
    p = PRESETS[preset]
    if preset == "ovxai":
        return np.array([i * hw // p["steps"] for i in range(p["steps"] + 1)], dtype=np.int64)
    step = p["pixels_per_step"]
    n = -(-hw // step)
    return np.minimum(np.arange(n + 1, dtype=np.int64) * step, hw)


def _tie_counts(saliency: Tensor, nominal: np.ndarray) -> np.ndarray:
    """Counts with ties entering together: at nominal k, the number of pixels with value >= the k-th largest."""
    asc = np.sort(saliency.reshape(-1).double().numpy())
    hw = asc.shape[0]
    out = np.zeros_like(nominal)
    pos = nominal > 0
    kth = asc[hw - nominal[pos]]  # the k-th largest value
    out[pos] = hw - np.searchsorted(asc, kth, side="left")
    return out


def insertion_deletion(
    model: ModelFn,
    images: np.ndarray,
    saliency: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    preset: str = "rise",
    targets: Sequence[int] | np.ndarray | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    modes: Sequence[str] = ("insertion", "deletion"),
    model_kind: str | None = None,
    quantize_levels: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, MetricResult]:
    """Insertion and/or deletion AUC per image, and the ID score when both are computed.

    Args:
        model: normalised batch (B, C, H, W) -> logits (B, K).
        images: raw images (N, C, H, W) in [0, 1].
        saliency: maps (N, h, w), upsampled bilinearly to H x W.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        preset: ``"rise"``, ``"keio"`` or ``"ovxai"`` (see the module docstring).
        targets: class ids (N,); required by ``keio``, optional for ``ovxai``, ignored by ``rise``.
        batch_size: images per model call; all steps of all images share batches.
        modes: which curves to compute, a subset of ("insertion", "deletion").
        model_kind: ``"cnn"`` or ``"vit"``; accepted so that every metric takes the same arguments, unused here
            (this metric perturbs both kinds the same way).
        quantize_levels: quantise each upsampled map into this many levels before ranking (see the module
            docstring); None (default): rank the map as it is.
        device: where the perturbed images are made and handed to the model. None (default): the CUDA device of a
            torch ``model`` whose parameters are there (the perturbations then run on the GPU, by the CUDA kernels
            once ``engine.ops._ext.load_cuda()`` built them, else by their torch references), otherwise the host
            with NumPy batches. A device given (``"cuda"``, ``"cpu"``): the model gets torch tensors on it.

    Returns:
        ``{"insertion": ..., "deletion": ..., "id": ...}`` (only the requested ones; "id" needs both), each with the
        per-image curves in ``curves`` (N, S) and the abscissae k / (H*W) in ``extras["x"]`` (S,).
    """
    check_preset("insertion/deletion", preset, PRESETS)
    bad = [m for m in modes if m not in ("insertion", "deletion")] or ([] if modes else ["(none)"])
    if bad:
        raise InputError(f"modes must be a non-empty subset of ('insertion', 'deletion'), got {list(modes)}.")
    if quantize_levels is not None and (
        isinstance(quantize_levels, bool) or not isinstance(quantize_levels, int) or quantize_levels < 2
    ):
        raise InputError(f"quantize_levels must be an int >= 2 (e.g. 8) or None, got {quantize_levels!r}.")
    dev = torch.device(device) if device is not None else model_device(model)
    ci = check_inputs(images, saliency, mean, std, batch_size, model_kind)
    raw, sal, m, s, batch_size = ci.raw, ci.saliency, ci.mean, ci.std, ci.batch_size
    if quantize_levels is not None:
        sal = quantize(sal, quantize_levels)
    n, c, h, w = ci.shape
    p = PRESETS[preset]
    tgt = check_targets(targets, n, "the 'keio' preset" if preset == "keio" else None)
    x_norm = normalise(raw, m, s)

    calls = 0
    if p["class"] == "predicted" or (p["class"] == "target_or_predicted" and tgt is None):
        _, _, classes_np, calls = predict(model, x_norm, batch_size, device=dev)
        classes = torch.from_numpy(classes_np)
    else:
        assert tgt is not None
        classes = tgt

    hw = h * w
    nominal = _counts(preset, hw)
    black = ((torch.zeros(c, 1, 1) - m) / s).expand(c, h, w).contiguous()
    baselines: dict[str, Tensor] = {}
    if preset == "rise":
        baselines["insertion"] = _blur(x_norm, p["blur_kernel"], p["blur_sigma"])
        baselines["deletion"] = torch.zeros_like(x_norm)
    else:
        baselines["insertion"] = baselines["deletion"] = black.expand(n, c, h, w)

    if dev is not None:  # perturb where the model runs
        x_norm = x_norm.to(dev)
        baselines = {k: v.to(dev) for k, v in baselines.items()}
    runner = BatchRunner(model, batch_size, dev)
    chunk = max(1, batch_size)
    # Equal counts give the identical perturbed image (with ties entering together, e.g. keio on a quantised map,
    # most nominal steps repeat a count), so each curve queries the model once per distinct count and every nominal
    # step takes the probability of its count: the curve is the same, with fewer model calls.
    where: list[np.ndarray] = []  # per (mode, image): the runner's output index of each nominal step
    queued = 0
    for mode in modes:
        for i in range(n):
            rank = ops.saliency_rank(sal[i].to(x_norm.device).contiguous()).reshape(-1)
            counts = _tie_counts(sal[i], nominal) if p["ties"] == "together" else nominal
            distinct, inverse = np.unique(counts, return_inverse=True)
            where.append(queued + inverse.reshape(-1))
            queued += len(distinct)
            counts_t = torch.from_numpy(distinct).to(x_norm.device)
            base = baselines[mode][i].contiguous()
            for j in range(0, len(distinct), chunk):
                stack = ops.perturb_from_rank(x_norm[i], rank, base, counts_t[j : j + chunk], mode)
                runner.add(stack, int(classes[i]))
    probs, _ = runner.finish()
    calls += runner.calls
    curves = probs[np.stack(where)].reshape(len(modes), n, len(nominal))

    x = torch.from_numpy(nominal.astype(np.float64) / hw)
    params = {**_COMMON, **p, "n_points": len(nominal), "batch_size": batch_size, "model_calls": calls}
    params["perturbed_images"] = queued  # the distinct steps evaluated, all curves together
    params["quantize_levels"] = quantize_levels
    if tgt is not None and preset == "rise":
        params["targets"] = "ignored (rise scores the predicted class)"
    params["class_used"] = "target" if (tgt is not None and preset != "rise") else "predicted"
    results: dict[str, MetricResult] = {}
    for mi, mode in enumerate(modes):
        curve = torch.from_numpy(curves[mi])
        area = ops.auc(curve.double(), x if p["auc"] == "trapezoid" else None, p["auc"]).double().numpy()
        results[mode] = make_result(
            mode, preset, area, dict(params), curves=curves[mi], extras={"x": x.numpy(), "classes": classes.numpy()}
        )
    if "insertion" in results and "deletion" in results:
        results["id"] = make_result(
            "id", preset, results["insertion"].per_image - results["deletion"].per_image, dict(params)
        )
    return results


def insertion(model: ModelFn, images: np.ndarray, saliency: np.ndarray, **kwargs: Any) -> dict[str, MetricResult]:
    """Insertion AUC only: :func:`insertion_deletion` with ``modes=("insertion",)``; returns ``{"insertion": ...}``."""
    return insertion_deletion(model, images, saliency, modes=("insertion",), **kwargs)


def deletion(model: ModelFn, images: np.ndarray, saliency: np.ndarray, **kwargs: Any) -> dict[str, MetricResult]:
    """Deletion AUC only: :func:`insertion_deletion` with ``modes=("deletion",)``; returns ``{"deletion": ...}``."""
    return insertion_deletion(model, images, saliency, modes=("deletion",), **kwargs)


def id_score(model: ModelFn, images: np.ndarray, saliency: np.ndarray, **kwargs: Any) -> dict[str, MetricResult]:
    """ID score = insertion - deletion per image; returns ``{"insertion", "deletion", "id"}`` (same preset)."""
    return insertion_deletion(model, images, saliency, modes=("insertion", "deletion"), **kwargs)
