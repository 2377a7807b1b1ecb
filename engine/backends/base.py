"""Backend base class (Polygraphy's runner pattern: public methods check inputs, ``_impl`` methods run).

A backend opens one of:

* an :class:`~engine.artifact.Artifact` (what :class:`~engine.api.Engine` does),
* an in-memory graph: an :class:`~engine.graph.ExplainGraph` or a classify-only
  :class:`~engine.graph.ClassifyGraph` (runtimes other than torch export it to a temporary ONNX file first),
* a bare ``.onnx`` file or OpenVINO ``.xml`` IR (an explain graph: inputs ``image``, ``target``; outputs ``logits``,
  ``saliency``; or a classifier: ``image`` -> ``logits``).

It runs it through two paths with the same checks:

* NumPy: :meth:`Backend.infer` / :meth:`Backend.classify`: float32 arrays in, float32 arrays out, on the host;
* torch: :meth:`Backend.infer_tensors` / :meth:`Backend.classify_tensors`: tensors in, tensors out, **on the
  backend's device**, so a GPU backend never forces a host round trip.

Each backend records the precision it actually runs (``effective_precision``: OpenVINO's CPU plugin, for one,
picks bf16 by itself on AMX CPUs unless told otherwise).
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifact import ONNX, Artifact
from ..errors import BackendUnavailableError, EngineError, InputError
from ..requires import TorchMissingError, require_torch, torch_message
from .registry import BACKENDS, BackendSpec, all_precisions

if TYPE_CHECKING:  # torch is imported when a tensor or a module is handled: `import engine` stays light
    import torch

PRECISIONS = all_precisions()


def backend_available(name: str) -> bool:
    """Whether the runtime package of a backend can be imported (without importing it)."""
    return BACKENDS[name].available()


def get_backend_class(name: str) -> type[Backend]:
    """The backend class of ``name``, imported on first use.

    Raises:
        EngineError: an unknown name (the message lists the known ones).
        BackendUnavailableError: the runtime is not installed (the message names the extra to install).
    """
    if name not in BACKENDS:
        raise EngineError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'.")
    spec = BACKENDS[name]
    if spec.package == "torch":
        require_torch(f"backend {name!r}")  # the one torch message: the extra and the pin
    if not spec.available():
        raise BackendUnavailableError(f"backend {name!r} needs the {spec.package} package: pip install '{spec.extra}'")
    return spec.load_class()


def select_backend(artifact: Artifact, requested: str = "auto", device: str = "auto") -> str:
    """The backend to run ``artifact`` on.

    ``auto`` tries the backends in their registry order (``auto_rank``) among those that run on the device in use,
    and takes the first that is installed and can run a file the artifact has (torch needs none):

    * on a CUDA GPU (``device="cuda"``, or ``"auto"`` where the driver sees one): TensorRT (a ``model.plan`` built
      for this GPU), then ONNX Runtime with CUDA (onnxruntime-gpu), then torch on CUDA;
    * on the CPU: OpenVINO, then ONNX Runtime, then torch. Without torch (the edge install) it never picks torch.

    Raises:
        BackendUnavailableError: no installed backend can run the artifact (the message says what to install or
            export), or none runs it on the CUDA GPU that ``device="cuda"`` asks for.
    """
    if requested != "auto":
        get_backend_class(requested)  # raises with the install hint
        return requested
    from .gpu import cuda_gpu_present

    ranked = sorted((s for s in BACKENDS.values() if s.auto_rank is not None), key=lambda s: s.auto_rank)
    runs = [s for s in ranked if not s.reads or any(artifact.has(f) for f in s.reads)]
    if str(device).startswith("cuda") or (device == "auto" and cuda_gpu_present()):
        for spec in runs:
            if spec.runs_on_cuda_here():
                return spec.name
        if device != "auto":
            gpu = ", ".join(s.name for s in ranked if "cuda" in s.devices)
            raise BackendUnavailableError(
                f"device={device!r} was asked for, but no installed backend runs artifact "
                f"{artifact.path or artifact.name} on a CUDA GPU here (checked: {gpu}). "
                + ("The NVIDIA driver sees no GPU (check nvidia-smi). " if not cuda_gpu_present() else "")
                + "On a CUDA machine install onnxruntime-gpu (pip install 'xai-engine[gpu]'), a CUDA build of torch, "
                "or TensorRT with a plan from export/to_trt.py; or use device='cpu'."
            )
    for spec in runs:
        if "cpu" in spec.devices and spec.available():
            return spec.name
    raise _no_backend_error(artifact, [s for s in ranked if "cpu" in s.devices])


def _no_backend_error(artifact: Artifact, ranked: list[BackendSpec]) -> BackendUnavailableError:
    """Why ``auto`` found no backend for ``artifact``, and what to install (or export) instead."""
    where = artifact.path or artifact.name
    runnable = [s for s in ranked if s.reads and any(artifact.has(f) for f in s.reads)]
    if runnable:  # an exported graph is there, its runtimes are not
        extras = " or ".join(f"pip install '{s.extra}'" for s in runnable)
        return BackendUnavailableError(
            f"artifact {where} holds an exported graph but no runtime for it is installed: {extras}."
        )
    files = sorted({f for s in ranked for f in s.reads})
    return TorchMissingError(
        torch_message(f"artifact {where} has no exported graph ({', '.join(files)}), so running it")
        + f" Or export it where torch is installed (xai-engine export {where} --format onnx --out DIR) and run that."
    )


def open_backend(name: str, source: Any, **kwargs: Any) -> Backend:
    """Open ``source`` (artifact, graph module or ONNX / IR file) on the backend ``name`` (``auto``: artifacts only).
    ``kwargs``: the common options (precision, device, threads, ...) and the backend's own (:attr:`Backend.options`).
    """
    if name == "auto":
        if not isinstance(source, Artifact):
            raise InputError("backend='auto' needs an artifact; name the backend for a module or a file.")
        name = select_backend(source, device=kwargs.get("device", "auto"))
    cls = get_backend_class(name)
    check_backend_options(cls, {k: v for k, v in kwargs.items() if k not in _COMMON_OPTIONS})
    return cls(source, **kwargs)


_COMMON_OPTIONS = ("precision", "device", "threads", "allow_version_mismatch", "input_size")


def check_backend_options(cls: type[Backend], options: dict[str, Any]) -> None:
    """InputError naming the backend's options when ``options`` holds one it does not take."""
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        known = ", ".join(cls.options) or "none"
        raise InputError(f"the {cls.name} backend has no option(s) {', '.join(unknown)}; its options: {known}.")


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Backend(ABC):
    """Runs an explain graph (``infer(images, targets) -> (logits, saliency)``) or a classifier (``classify``).

    Args:
        source: an :class:`~engine.artifact.Artifact`, an ``ExplainGraph`` / ``ClassifyGraph`` module, or the path
            of an ``.onnx`` / ``.xml`` file.
        precision: one of the backend's precisions (see :data:`~engine.backends.registry.BACKENDS`).
        device: ``cpu``, ``cuda`` or ``auto``.
        threads: intra-op threads (default: the CPUs this process may use).
        allow_version_mismatch: accept an artifact made with other library versions.
        input_size: (H, W) of a module or file source whose size cannot be read off it.

    Attributes:
        explains: whether the graph explains (``infer``) or only classifies (``classify``).
        effective_precision: the precision the runtime actually runs.
    """

    name = ""
    options: tuple[str, ...] = ()
    """Keyword options of this backend beyond the common ones (``Engine.load(backend_options=...)``)."""

    def __init__(
        self,
        source: Any,
        *,
        precision: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        allow_version_mismatch: bool = False,
        input_size: tuple[int, int] | None = None,
    ):
        spec = BACKENDS.get(self.name)
        allowed = spec.precisions if spec is not None else PRECISIONS
        if precision not in allowed:
            raise InputError(
                f"the {self.name} backend runs precision {', '.join(allowed)}; got {precision!r}."
                + (" Other backends run other precisions." if set(PRECISIONS) - set(allowed) else "")
            )
        self.precision = precision
        self.effective_precision = precision
        self.device = device
        self.threads = threads or default_threads()
        self.allow_version_mismatch = allow_version_mismatch
        self.artifact: Artifact | None = None
        self.module: torch.nn.Module | None = None
        self.path: Path | None = None
        self.input_size: tuple[int, int] | None = tuple(input_size) if input_size is not None else None
        self.num_classes: int | None = None
        self.explains = True
        if isinstance(source, Artifact):
            self.artifact = source
            self.input_size = tuple(source.preprocess.input_size)
            self.num_classes = source.backbone.num_classes
        elif _is_module(source):
            self.module = source
            self.explains = hasattr(source, "explainer")
            size = getattr(source, "input_size", None) or self.input_size
            if size is None:
                raise InputError(
                    f"the {type(source).__name__} module has no input_size; pass input_size=(H, W) or build it "
                    "with engine.graph.build_graph / ClassifyGraph(backbone, input_size)."
                )
            self.input_size = tuple(size)
            backbone = getattr(source, "backbone", None)
            self.num_classes = getattr(backbone, "num_classes", None)
        elif isinstance(source, str | os.PathLike):
            self.path = Path(source)
            if not self.path.is_file():
                raise InputError(f"{self.path} does not exist; pass an artifact, a graph module or a model file.")
        else:
            raise InputError(
                f"a backend opens an Artifact, an ExplainGraph/ClassifyGraph module or a model file path, got "
                f"{type(source).__name__}."
            )
        self._open_impl()

    # --- what subclasses implement ---------------------------------------------------------------------------------
    @abstractmethod
    def _open_impl(self) -> None:
        """Open ``self.artifact`` / ``self.module`` / ``self.path``; for a file, set ``explains``, ``input_size``
        (and ``num_classes`` where the file says) if they are still unknown; set ``effective_precision``."""

    @abstractmethod
    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Checked float32 (B, 3, H, W) and int64 (B,) targets (None for a classifier) -> (logits, saliency | None)."""

    def _run_tensors_impl(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The tensor path; the default goes through the host (right for CPU runtimes). GPU backends override it."""
        import torch

        logits, saliency = self._run_impl(
            images.detach().cpu().numpy(), None if targets is None else targets.detach().cpu().numpy()
        )
        device = self.torch_device
        logits = torch.from_numpy(np.asarray(logits)).to(device)
        return logits, None if saliency is None else torch.from_numpy(np.asarray(saliency)).to(device)

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release the runtime's resources."""

    # --- NumPy path --------------------------------------------------------------------------------------------------
    def infer(self, images: Any, targets: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Explain a normalised batch.

        Args:
            images: float32 (B, 3, H, W), normalised as the artifact's preprocess config says.
            targets: int (B,) class per image, -1 (or None) for the predicted class.

        Returns:
            logits (B, num_classes) float32 and saliency (B, h, w) float32 in [0, 1].

        Raises:
            InputError: wrong shape, dtype, NaN/inf values, a target out of range, or a classify-only graph.
        """
        self._require_explain()
        images, targets = self.check_inputs(images, targets)
        logits, saliency = self._run_impl(images, targets)
        return self._check_outputs(np.asarray(logits, dtype=np.float32), np.asarray(saliency, dtype=np.float32))

    def classify(self, images: Any) -> np.ndarray:
        """Logits (B, num_classes) float32 of a normalised batch (an explain graph's logits, or a classifier's)."""
        images, targets = self.check_inputs(images, None)
        logits, _ = self._run_impl(images, targets if self.explains else None)
        return self._check_outputs(np.asarray(logits, dtype=np.float32))[0]

    # --- torch path --------------------------------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        """Where the tensor path returns its outputs (the CPU unless the backend runs on a CUDA device torch sees)."""
        import torch

        if str(self.device).startswith("cuda") and torch.cuda.is_available():
            return torch.device(self.device)
        return torch.device("cpu")

    def infer_tensors(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """:meth:`infer` for torch tensors: inputs are moved to the backend's device if needed, outputs (float32)
        stay there."""
        self._require_explain()
        images, targets = self.check_tensors(images, targets)
        logits, saliency = self._run_tensors_impl(images, targets)
        return self._check_tensor_outputs(logits.float(), saliency.float())

    def classify_tensors(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`classify` for torch tensors, on the backend's device."""
        images, targets = self.check_tensors(images, None)
        logits, _ = self._run_tensors_impl(images, targets if self.explains else None)
        return self._check_tensor_outputs(logits.float())[0]

    # --- checks ------------------------------------------------------------------------------------------------------
    def _require_explain(self) -> None:
        if not self.explains:
            raise InputError(f"this {self.name} graph only classifies (no saliency output); call classify() instead.")

    def _check_shape(self, shape: tuple[int, ...], floating: bool, dtype: Any) -> None:
        h, w = self.input_size or (None, None)
        if len(shape) == 3:
            raise InputError(f"images has shape {tuple(shape)}: add the batch dimension, e.g. images[None].")
        if len(shape) != 4 or shape[1] != 3 or shape[0] < 1 or (h is not None and tuple(shape[2:]) != (h, w)):
            raise InputError(
                f"images must have shape (B, 3, {h}, {w}) for this graph, got {tuple(shape)}. "
                "Use engine.explain() on images, or the artifact's Preprocessor, to resize and normalise."
            )
        if not floating:
            raise InputError(
                f"images must be float32 normalised tensors, got dtype {dtype}; pass raw uint8 images "
                "to engine.explain() instead, which preprocesses them."
            )

    def _check_targets(self, targets: np.ndarray, b: int) -> np.ndarray:
        if targets.ndim == 0:
            targets = np.full((b,), int(targets), dtype=np.int64)
        if targets.shape != (b,) or not np.issubdtype(targets.dtype, np.integer):
            raise self._targets_error(b, targets)
        out_of_range = (targets < -1) | (targets >= self._class_bound())
        if out_of_range.any():
            raise self._range_error(targets[out_of_range].tolist())
        return targets.astype(np.int64)

    def _class_bound(self) -> int:
        """One past the highest valid target (no bound where a bare file does not say its classes)."""
        return self.num_classes if self.num_classes is not None else np.iinfo(np.int64).max

    @staticmethod
    def _targets_error(b: int, targets: Any) -> InputError:
        return InputError(f"targets must be {b} integers (one per image, -1 = predicted), got {targets!r}.")

    def _range_error(self, bad: list[int]) -> InputError:
        return InputError(
            f"target class(es) {bad} out of range: this model has {self.num_classes} classes "
            f"(0..{self._class_bound() - 1}); use -1 for the predicted class."
        )

    @staticmethod
    def _bad_rows(bad: np.ndarray) -> InputError:
        return InputError(
            f"images {np.flatnonzero(bad).tolist()} of the batch hold NaN or inf values; check the "
            "preprocessing that produced them."
        )

    def check_inputs(self, images: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
        """The NumPy path's checks: returns a contiguous float32 batch and int64 targets (-1 where None)."""
        if _is_tensor(images):
            images = images.detach().cpu().numpy()
        if not isinstance(images, np.ndarray):
            raise InputError(f"images must be a numpy array (B, 3, H, W), got {type(images).__name__}.")
        self._check_shape(images.shape, np.issubdtype(images.dtype, np.floating), images.dtype)
        images = images.astype(np.float32, copy=False)
        bad = ~np.isfinite(images).reshape(images.shape[0], -1).all(axis=1)
        if bad.any():
            raise self._bad_rows(bad)
        b = images.shape[0]
        if _is_tensor(targets):
            targets = targets.detach().cpu().numpy()
        targets = np.full((b,), -1, dtype=np.int64) if targets is None else np.asarray(targets)
        return np.ascontiguousarray(images), self._check_targets(targets, b)

    def check_tensors(self, images: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensor path's checks: float32 images and int64 targets on the backend's device."""
        import torch

        if not isinstance(images, torch.Tensor):
            raise InputError(f"images must be a torch tensor (B, 3, H, W), got {type(images).__name__}.")
        self._check_shape(tuple(images.shape), images.is_floating_point(), images.dtype)
        device = self.torch_device
        images = images.to(device=device, dtype=torch.float32)
        bad = ~torch.isfinite(images).flatten(1).all(dim=1)
        if bool(bad.any()):
            raise self._bad_rows(bad.cpu().numpy())
        b = images.shape[0]
        if targets is None:
            return images.contiguous(), torch.full((b,), -1, dtype=torch.long, device=device)
        t = torch.as_tensor(targets, device=device)
        if t.ndim == 0:
            t = t.expand(b)
        if tuple(t.shape) != (b,) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise self._targets_error(b, targets)
        bad = (t < -1) | (t >= self._class_bound())
        if bool(bad.any()):  # checked on the device: only the verdict crosses to the host
            raise self._range_error(t[bad].tolist())
        return images.contiguous(), t.long().contiguous()

    def _check_outputs(self, *outputs: np.ndarray) -> tuple[np.ndarray, ...]:
        if not all(np.isfinite(o).all() for o in outputs):
            raise self._nonfinite_error()
        return outputs

    def _check_tensor_outputs(self, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch

        if not all(bool(torch.isfinite(o).all()) for o in outputs):
            raise self._nonfinite_error()
        return outputs

    def _nonfinite_error(self) -> EngineError:
        return EngineError(
            f"the {self.name} backend produced NaN/inf outputs for finite inputs; at precision {self.precision} "
            "the model may overflow: try precision='fp32', or check the artifact's weights."
        )

    # --- helpers for runtimes that read ONNX --------------------------------------------------------------------------
    def _source_file(self, tmp: str | os.PathLike, reads: tuple[str, ...]) -> Path:
        """The model file to open: the artifact's first file among ``reads``, the given file, or the in-memory
        module exported to ONNX into ``tmp``."""
        if self.artifact is not None:
            for name in reads:
                if self.artifact.has(name):
                    return self.artifact.file(name)
            return self.artifact.file(reads[-1])  # raises with the export hint
        if self.path is not None:
            return self.path
        from ..export import onnx_from_module

        return onnx_from_module(self.module, Path(tmp) / ONNX, self.input_size, with_target=self.explains)

    def _feeds(self, images: np.ndarray, targets: np.ndarray | None) -> dict[str, np.ndarray]:
        """The graph's inputs by name: ``image``, and ``target`` for an explain graph."""
        return {"image": images} if targets is None or not self.explains else {"image": images, "target": targets}

    def _learn_io(self, input_names: list[str], image_shape: list[Any], logits_shape: list[Any]) -> None:
        """Set ``explains``, ``input_size`` and ``num_classes`` from a model file's inputs and outputs."""
        if self.path is None:
            return
        self.explains = "target" in input_names
        if self.input_size is None and len(image_shape) == 4 and all(isinstance(v, int) for v in image_shape[2:]):
            self.input_size = (int(image_shape[2]), int(image_shape[3]))
        if len(logits_shape) == 2 and isinstance(logits_shape[1], int):
            self.num_classes = int(logits_shape[1])

    def info(self) -> dict[str, Any]:
        """What runs: backend, device, requested and effective precision, threads, source."""
        source = (
            (self.artifact.path or self.artifact.name)
            if self.artifact is not None
            else (self.path if self.path is not None else type(self.module).__name__)
        )
        return {
            "backend": self.name,
            "device": self.device,
            "precision": self.precision,
            "effective_precision": self.effective_precision,
            "threads": self.threads,
            "source": str(source),
            "explains": self.explains,
        }

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_module(x: Any) -> bool:
    import sys

    nn = sys.modules.get("torch.nn")  # a module instance implies torch is imported already
    return nn is not None and isinstance(x, nn.Module)


def temporary_dir() -> tempfile.TemporaryDirectory:
    """A scratch folder for a module exported to ONNX while a runtime opens it."""
    return tempfile.TemporaryDirectory(prefix="xai-backend-")
