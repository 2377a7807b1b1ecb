"""The backend registry: one descriptor per backend, read by everything that needs to know the backends.

``select_backend`` (``backend="auto"``), the export formats (``export_artifact``, ``xai-engine export --format``), the
CLI's ``--backend`` / ``--precision`` / ``--device`` choices, the artifact's export hints and the library versions
recorded in a manifest all read :data:`BACKENDS`. Adding a backend means one backend file (a :class:`Backend`
subclass) plus one :class:`BackendSpec` here; ``docs/adding_a_backend.md`` shows it.

Nothing here imports a runtime: classes and build functions are ``"module:name"`` strings imported on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..artifact import ONNX, OPENVINO_BIN, OPENVINO_XML


@dataclass(frozen=True)
class BackendSpec:
    """What the engine knows about one backend.

    Attributes:
        name: the backend's name (``Engine.load(backend=...)``, ``--backend``).
        cls: ``"module:Class"`` of its :class:`~engine.backends.base.Backend` subclass, imported lazily.
        package: the runtime's import name, checked with ``importlib.util.find_spec`` (never imported to check).
        extra: what to ``pip install`` when the runtime is missing.
        reads: artifact files it runs, in order of preference; empty: it builds the graph from the weights (torch).
        export_format: the ``export --format`` name that writes its files; None: nothing to export.
        writes: the files that format writes into an artifact.
        build: ``"module:function"`` that writes the first of ``writes``: ``f(module, path, input_size)`` when
            ``build_from`` is None, else ``f(source_path, path)`` with the first file of the ``build_from`` format.
        build_from: the export format this one is converted from (OpenVINO IR from ONNX), or None (the torch module).
        versions: components whose installed versions the manifest records when these files are written.
        script: the export script that users run to make the files (named in error messages).
        precisions: precisions it can run (``Engine.load(precision=...)``).
        devices: devices it can run on.
        auto_rank: order in which ``backend="auto"`` tries it (lower first) among the backends that run on the
            device in use (a CUDA GPU when one is usable, else the CPU); None: never picked by ``auto``.
        cuda_probe: ``"module:function"`` saying whether this backend can run on the CUDA GPU here (installed
            runtime with its CUDA part); None: ``"cuda" in devices`` is enough once a GPU is usable.
    """

    name: str
    cls: str
    package: str
    extra: str
    reads: tuple[str, ...] = ()
    export_format: str | None = None
    writes: tuple[str, ...] = ()
    build: str | None = None
    build_from: str | None = None
    versions: tuple[str, ...] = ()
    script: str | None = None
    precisions: tuple[str, ...] = ("fp32",)
    devices: tuple[str, ...] = ("cpu",)
    auto_rank: int | None = None
    cuda_probe: str | None = None

    def available(self) -> bool:
        """Whether the runtime package can be imported (without importing it)."""
        return importlib.util.find_spec(self.package) is not None

    def runs_on_cuda_here(self) -> bool:
        """Whether ``auto`` may pick it for a CUDA GPU: it runs on ``cuda``, is installed, and its probe agrees."""
        if "cuda" not in self.devices or not self.available():
            return False
        return self.cuda_probe is None or bool(_import(self.cuda_probe)())

    def load_class(self) -> type:
        return _import(self.cls)

    def build_function(self) -> Callable[..., Any]:
        if self.build is None:
            raise ValueError(f"backend {self.name!r} has no export format")
        return _import(self.build)


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            name="torch",
            cls="engine.backends.torch_:TorchBackend",
            package="torch",
            extra="xai-engine[torch]",
            precisions=("fp32", "bf16", "fp16"),
            devices=("cpu", "cuda"),
            auto_rank=100,
            cuda_probe="engine.backends.gpu:torch_cuda_usable",
        ),
        BackendSpec(
            name="onnxruntime",
            cls="engine.backends.onnxruntime_:OnnxRuntimeBackend",
            package="onnxruntime",
            extra="xai-engine[onnx]",
            reads=(ONNX,),
            export_format="onnx",
            writes=(ONNX,),
            build="engine.export:onnx_from_module",
            versions=("onnx",),
            script="export/to_onnx.py",
            precisions=("fp32", "fp16", "int8"),  # fp16 / int8: the precision is in the graph (export --precision)
            devices=("cpu", "cuda"),
            auto_rank=20,
            cuda_probe="engine.backends.gpu:onnxruntime_cuda_usable",
        ),
        BackendSpec(
            name="openvino",
            cls="engine.backends.openvino_:OpenVINOBackend",
            package="openvino",
            extra="xai-engine[openvino]",
            reads=(OPENVINO_XML, ONNX),
            export_format="openvino",
            writes=(OPENVINO_XML, OPENVINO_BIN),
            build="engine.export:ir_from_onnx",
            build_from="onnx",
            versions=("openvino",),
            script="export/to_openvino.py",
            precisions=("fp32", "bf16", "fp16", "int8"),
            devices=("cpu",),
            auto_rank=10,
        ),
        # TensorRT: runs a plan built on the GPU machine by export/to_trt.py (no `export --format`: a plan needs
        # TensorRT and the GPU it runs on); tensorrt-cu12 on CUDA 12 machines, both from NVIDIA's index
        BackendSpec(
            name="tensorrt",
            cls="engine.backends.tensorrt_:TensorRTBackend",
            package="tensorrt",
            extra="tensorrt-cu13",
            reads=("model.plan",),
            writes=("model.plan",),
            script="export/to_trt.py",
            precisions=("fp32", "fp16", "int8"),
            devices=("cuda",),
            auto_rank=5,
            cuda_probe="engine.backends.gpu:tensorrt_usable",
        ),
    )
}


def _import(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def export_formats() -> dict[str, BackendSpec]:
    """Export format name -> the backend whose files it writes (``onnx``, ``openvino``, ...), in registry order."""
    return {s.export_format: s for s in BACKENDS.values() if s.export_format}


def format_chain(fmt: str) -> list[BackendSpec]:
    """The formats to build for ``fmt``, sources first (``openvino`` -> [onnx, openvino])."""
    formats = export_formats()
    chain: list[BackendSpec] = []
    while fmt is not None:
        spec = formats[fmt]
        chain.insert(0, spec)
        fmt = spec.build_from
    return chain


def spec_writing(file_name: str) -> BackendSpec | None:
    """The backend whose export format writes ``file_name`` (``model.onnx`` -> onnxruntime's), or None."""
    return next((s for s in BACKENDS.values() if file_name in s.writes), None)


def all_precisions() -> tuple[str, ...]:
    """Every precision some backend runs, in registry order."""
    return tuple(dict.fromkeys(p for s in BACKENDS.values() for p in s.precisions))


def all_devices() -> tuple[str, ...]:
    """Every device some backend runs on, in registry order."""
    return tuple(dict.fromkeys(d for s in BACKENDS.values() for d in s.devices))
