"""The ONNX Runtime backend: runs an artifact's ``model.onnx``, a bare ``.onnx`` file, or a module exported to one.

On a CUDA GPU (``device="cuda"``, or ``"auto"`` where onnxruntime-gpu can use one) the session gets the CUDA
execution provider, and TensorRT's before it with ``backend_options={"tensorrt_ep": True}``. onnxruntime-gpu lists
those providers even where they cannot load and then runs everything on the CPU without a word, so the backend
checks what really runs: after opening it runs one profiled warm-up call and counts the nodes each provider ran
(``node_providers`` in :meth:`Backend.info`). A compute node (convolution, matrix product, attention) left on the
CPU is a warning, or an error with ``allow_cpu_fallback=False``, which also sets ONNX Runtime's own
``session.disable_cpu_ep_fallback``. Shape arithmetic stays on the CPU by ONNX Runtime's design and is not counted
against it.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ONNX
from ..errors import EngineError, InputError
from .base import Backend, temporary_dir

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "Attention", "MultiHeadAttention"}
)
"""Node types that must not run on the CPU when the session is on a GPU (the cost is in them)."""


def gpu_providers(available: list[str], tensorrt_ep: bool) -> list[Any]:
    """The providers to ask for on a GPU, in order, from those this onnxruntime lists."""
    providers: list[Any] = []
    if tensorrt_ep:
        if "TensorrtExecutionProvider" not in available:
            raise EngineError(
                "tensorrt_ep=True but this onnxruntime has no TensorRT execution provider: install onnxruntime-gpu "
                "and TensorRT's libraries (pip install tensorrt-cu12 or -cu13 from NVIDIA's index), or drop the option."
            )
        providers.append(("TensorrtExecutionProvider", {"trt_fp16_enable": False, "trt_engine_cache_enable": True}))
    if "CUDAExecutionProvider" not in available:
        raise EngineError(
            "device='cuda' was asked for but this onnxruntime has no CUDA execution provider: "
            "pip install onnxruntime-gpu (it replaces onnxruntime; the two cannot share a venv), or use device='cpu'."
        )
    providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def providers_from_profile(profile: str | os.PathLike) -> dict[str, Counter]:
    """Per provider, how many nodes of each op type ran, read from an ONNX Runtime profile (chrome trace JSON)."""
    events = json.loads(Path(profile).read_text(encoding="utf-8"))
    seen: dict[str, tuple[str, str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args:
            seen[event.get("name", "").removesuffix("_kernel_time")] = (args["provider"], args.get("op_name", "?"))
    out: dict[str, Counter] = {}
    for provider, op in seen.values():
        out.setdefault(provider, Counter())[op] += 1
    return out


def cpu_compute_nodes(by_provider: dict[str, Counter]) -> dict[str, int]:
    """The compute op types (:data:`COMPUTE_OPS`) that ran on the CPU provider, with their counts."""
    cpu = by_provider.get("CPUExecutionProvider", Counter())
    return {op: n for op, n in sorted(cpu.items()) if op in COMPUTE_OPS}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    options = ("tensorrt_ep", "allow_cpu_fallback")

    def __init__(self, source: Any, *, tensorrt_ep: bool = False, allow_cpu_fallback: bool = True, **kwargs: Any):
        self.tensorrt_ep = bool(tensorrt_ep)
        self.allow_cpu_fallback = bool(allow_cpu_fallback)
        self.node_providers: dict[str, dict[str, int]] | None = None
        super().__init__(source, **kwargs)

    def _open_impl(self) -> None:
        import onnxruntime as ort

        from .gpu import cuda_gpu_present

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        on_gpu = self.device.startswith("cuda") or (
            self.device == "auto" and "CUDAExecutionProvider" in available and cuda_gpu_present()
        )
        if on_gpu:
            providers = gpu_providers(available, self.tensorrt_ep)
            if not self.allow_cpu_fallback:
                opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            profile_dir = tempfile.mkdtemp(prefix="xai-ort-profile-")
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(profile_dir) / "ort")
        else:
            providers = ["CPUExecutionProvider"]
        with temporary_dir() as tmp:  # a module is exported here; the session keeps its own copy
            source = self._source_file(tmp, (ONNX,))
            try:
                self.session = ort.InferenceSession(str(source), opts, providers=providers)
            except Exception as e:  # noqa: BLE001 - ORT raises its own classes; one message either way
                if on_gpu:
                    raise EngineError(
                        f"ONNX Runtime could not open {source.name} on the GPU ({type(e).__name__}: {e}). With "
                        "allow_cpu_fallback=False every node must run on a GPU provider; allow the fallback, or use "
                        "device='cpu'."
                    ) from e
                raise
        active = self.session.get_providers()  # what actually loaded, not what is listed
        if on_gpu and not any(p in active for p in GPU_PROVIDERS):
            raise EngineError(
                f"device='cuda' was asked for but ONNX Runtime loaded only {active}: its CUDA libraries did not load "
                "(onnxruntime.preload_dlls() loads pip-installed ones; check nvidia-smi and the CUDA/cuDNN versions "
                "onnxruntime-gpu was built for), or use device='cpu'."
            )
        self.device = "cuda" if on_gpu else "cpu"
        self.source_name = source.name
        self._check_precision(self.session.get_modelmeta().custom_metadata_map, source.name)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._learn_io(list(inputs), list(inputs["image"].shape), list(outputs["logits"].shape))
        self._outputs = ["logits", "saliency"] if self.explains else ["logits"]
        if on_gpu:
            self._check_placement()

    def _check_precision(self, metadata: dict[str, str], source_name: str) -> None:
        """ONNX Runtime runs a graph in the precision written into it (fp16 casts, int8 Q/DQ): the precision asked for
        must be that one, and ``effective_precision`` says it."""
        from ..precision import PRECISION_KEY  # light: numpy only

        if self.artifact is not None:
            graph = self.artifact.precision
        else:
            graph = metadata.get(PRECISION_KEY) or "fp32"
        if self.precision != graph:
            raise InputError(
                f"{source_name} holds an {graph} graph, and ONNX Runtime runs a graph in the precision written into "
                f"it; precision={self.precision!r} was asked for. Load it with precision={graph!r} (or leave precision "
                f"unset: the artifact's own), or export it in {self.precision}: xai-engine export CKPT --format onnx "
                f"--precision {self.precision} --out DIR"
            )
        self.effective_precision = graph

    def _check_placement(self) -> None:
        """One profiled warm-up call: which provider ran which nodes; CPU compute nodes warn (or fail)."""
        h, w = self.input_size or (224, 224)
        images = np.zeros((1, 3, h, w), dtype=np.float32)
        self.session.run(self._outputs, self._feeds(images, np.full((1,), -1, dtype=np.int64)))
        profile = self.session.end_profiling()  # later calls are not profiled
        try:
            by_provider = providers_from_profile(profile)
        finally:
            Path(profile).unlink(missing_ok=True)
        self.node_providers = {p: dict(c) for p, c in by_provider.items()}
        stray = cpu_compute_nodes(by_provider)
        if stray:
            message = (
                f"ONNX Runtime runs compute nodes on the CPU although the session is on the GPU: {stray}. Those ops "
                "have no GPU kernel for this graph's types in this onnxruntime-gpu build."
            )
            if not self.allow_cpu_fallback:
                raise EngineError(message + " Allow it with allow_cpu_fallback=True, or use another backend.")
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "providers": self.session.get_providers(), "node_providers": self.node_providers}

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(self._outputs, self._feeds(images, targets))
        return out[0], (out[1] if len(out) > 1 else None)
