"""Backend base class and lazy registry (Polygraphy's runner pattern: public methods check, ``_impl`` methods run).

The registry maps a name to a ``module:Class`` string and imports on first use, so ``import engine`` needs only torch
and numpy; a missing runtime gives an error that names the extra to install.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod

import numpy as np

from ..artifact import ONNX, OPENVINO_XML, Artifact
from ..errors import BackendUnavailableError, EngineError, InputError

BACKENDS = {
    "torch": ("engine.backends.torch_:TorchBackend", "torch", "xai-engine"),
    "onnxruntime": ("engine.backends.onnxruntime_:OnnxRuntimeBackend", "onnxruntime", "xai-engine[onnx]"),
    "openvino": ("engine.backends.openvino_:OpenVINOBackend", "openvino", "xai-engine[openvino]"),
}
PRECISIONS = ("fp32", "bf16", "fp16")


def backend_available(name: str) -> bool:
    """Whether the runtime package of a backend can be imported (without importing it)."""
    return importlib.util.find_spec(BACKENDS[name][1]) is not None


def get_backend_class(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'.")
    target, package, extra = BACKENDS[name]
    if not backend_available(name):
        raise BackendUnavailableError(f"backend {name!r} needs the {package} package: pip install '{extra}'")
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def select_backend(artifact: Artifact, requested: str = "auto") -> str:
    """``auto``: OpenVINO if the artifact has an IR or ONNX and openvino is installed, then ONNX Runtime, then torch."""
    if requested != "auto":
        get_backend_class(requested)  # raises with the install hint
        return requested
    if (artifact.has(OPENVINO_XML) or artifact.has(ONNX)) and backend_available("openvino"):
        return "openvino"
    if artifact.has(ONNX) and backend_available("onnxruntime"):
        return "onnxruntime"
    return "torch"


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Backend(ABC):
    """Runs an artifact's explain graph: ``infer(images, targets) -> (logits, saliency)``."""

    name = ""

    def __init__(
        self,
        artifact: Artifact,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        allow_version_mismatch: bool = False,
    ):
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        self.artifact = artifact
        self.precision = precision
        self.device = device
        self.threads = threads or default_threads()
        self.allow_version_mismatch = allow_version_mismatch
        pre = artifact.preprocess
        self.input_size = tuple(pre.input_size)
        self.num_classes = artifact.backbone.num_classes
        self._open_impl()

    @abstractmethod
    def _open_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the runtime's resources."""

    def infer(self, images: np.ndarray, targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Explain a normalised batch.

        Args:
            images: float32 (B, 3, H, W), normalised as the artifact's preprocess config says.
            targets: int (B,) class per image, -1 (or None) for the predicted class.

        Returns:
            logits (B, num_classes) float32 and saliency (B, h, w) float32 in [0, 1].

        Raises:
            InputError: wrong shape, dtype, NaN/inf values or a target out of range.
        """
        images, targets = self.check_inputs(images, targets)
        logits, saliency = self._infer_impl(images, targets)
        logits = np.asarray(logits, dtype=np.float32)
        saliency = np.asarray(saliency, dtype=np.float32)
        if not (np.isfinite(logits).all() and np.isfinite(saliency).all()):
            raise EngineError(
                f"the {self.name} backend produced NaN/inf outputs for finite inputs; at precision {self.precision} "
                "the model may overflow: try precision='fp32', or check the artifact's weights."
            )
        return logits, saliency

    def check_inputs(self, images, targets) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(images, "detach"):  # a torch tensor
            images = images.detach().cpu().numpy()
        if not isinstance(images, np.ndarray):
            raise InputError(f"images must be a numpy array (B, 3, H, W), got {type(images).__name__}.")
        h, w = self.input_size
        if images.ndim == 3:
            raise InputError(f"images has shape {images.shape}: add the batch dimension, e.g. images[None].")
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (h, w) or images.shape[0] < 1:
            raise InputError(
                f"images must have shape (B, 3, {h}, {w}) for this artifact, got {tuple(images.shape)}. "
                "Use engine.explain() on images, or the artifact's Preprocessor, to resize and normalise."
            )
        if images.dtype != np.float32:
            if not np.issubdtype(images.dtype, np.floating):
                raise InputError(
                    f"images must be float32 normalised tensors, got dtype {images.dtype}; pass raw uint8 images "
                    "to engine.explain() instead, which preprocesses them."
                )
            images = images.astype(np.float32)
        bad = ~np.isfinite(images).reshape(images.shape[0], -1).all(axis=1)
        if bad.any():
            raise InputError(
                f"images {np.flatnonzero(bad).tolist()} of the batch hold NaN or inf values; check the "
                "preprocessing that produced them."
            )
        b = images.shape[0]
        if targets is None:
            targets = np.full((b,), -1, dtype=np.int64)
        targets = np.asarray(targets)
        if targets.ndim == 0:
            targets = np.full((b,), int(targets), dtype=np.int64)
        if targets.shape != (b,) or not np.issubdtype(targets.dtype, np.integer):
            raise InputError(f"targets must be {b} integers (one per image, -1 = predicted), got {targets!r}.")
        out_of_range = (targets < -1) | (targets >= self.num_classes)
        if out_of_range.any():
            raise InputError(
                f"target class(es) {targets[out_of_range].tolist()} out of range: this model has "
                f"{self.num_classes} classes (0..{self.num_classes - 1}); use -1 for the predicted class."
            )
        return np.ascontiguousarray(images), targets.astype(np.int64)

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
