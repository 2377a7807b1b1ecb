"""The TensorRT backend: runs an artifact's ``model.plan`` (built by ``export/to_trt.py``), a bare ``.plan`` file, or
an ``.onnx`` file / in-memory graph module built into a plan when it opens.

Opening an artifact compares its manifest's plan record (TensorRT version, GPU name, compute capability) with the
running TensorRT and GPU *before* deserializing (:func:`engine.trt_build.check_plan`): a plan runs only where it was
built, and the message says how to rebuild it here.

Running: CUDA tensors in, CUDA tensors out. ``set_input_shape`` + ``set_tensor_address`` on torch tensors
(``data_ptr()``), ``execute_async_v3`` on a CUDA stream (a ``torch.cuda.Stream``), ordered against the caller's
current stream both ways, so the tensor path never goes through the host. An execution context runs one inference at
a time, so each thread gets its own context and stream (thread-local); batches above the plan's largest are run in
chunks.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifact import ONNX
from ..errors import EngineError, InputError
from ..trt_build import (
    DEFAULT_MAX_BATCH,
    DEFAULT_WORKSPACE_GB,
    MANIFEST_KEY,
    PLAN,
    TensorRTUnavailableError,
    check_plan,
    gpu_info,
    plan_from_onnx,
    prepare_onnx,
    tensorrt_available,
    tensorrt_message,
)
from .base import Backend, temporary_dir

if TYPE_CHECKING:
    import torch

# trt.DataType member name -> torch dtype name
TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a ``trt.DataType`` (by member name)."""
    import torch

    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in TORCH_DTYPES:
        raise EngineError(f"the plan has a tensor of TensorRT type {name}, which this backend cannot hand over.")
    return getattr(torch, TORCH_DTYPES[name])


def cuda_index(device: str) -> int:
    """The CUDA device index of ``auto``, ``cuda`` or ``cuda:N``.

    Raises:
        EngineError: any other device (TensorRT runs on NVIDIA GPUs only).
    """
    device = str(device)
    if device in ("auto", "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise EngineError(
        f"the tensorrt backend runs on CUDA GPUs only; device={device!r} is not one (use 'cuda', 'cuda:N' or "
        "'auto', or another backend: openvino / onnxruntime / torch run on the CPU)."
    )


class TensorRTBackend(Backend):
    """Options (for an ``.onnx`` file or a module, built into a plan when the backend opens; an artifact's plan keeps
    the values it was built with): ``max_batch`` (the largest batch; larger ones run in chunks) and ``workspace_gb``.
    """

    name = "tensorrt"
    options = ("max_batch", "workspace_gb")

    def __init__(
        self,
        source: Any,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        workspace_gb: float = DEFAULT_WORKSPACE_GB,
        **kwargs: Any,
    ):
        if int(max_batch) < 1:
            raise InputError(f"max_batch must be at least 1, got {max_batch}.")
        self.max_batch = int(max_batch)
        self.workspace_gb = float(workspace_gb)
        super().__init__(source, **kwargs)

    def _open_impl(self) -> None:
        if not tensorrt_available():
            raise TensorRTUnavailableError(tensorrt_message("the tensorrt backend"))
        index = cuda_index(self.device)
        import tensorrt as trt
        import torch

        gpu = gpu_info(index)
        if gpu is None or not torch.cuda.is_available():
            raise TensorRTUnavailableError(
                f"the tensorrt backend needs a CUDA GPU ({self.device}) and torch with CUDA; none is visible here. "
                "Use another backend (backend='auto' picks one), or run on the GPU machine."
            )
        self.device = f"cuda:{index}"
        self._torch_device = torch.device(self.device)
        self.record: dict[str, Any] = {}
        plan_precision = self.precision
        with temporary_dir() as tmp:
            if self.artifact is not None:
                self.artifact.file(PLAN)  # raises with the export hint (python export/to_trt.py) when missing
                self.record = check_plan(
                    self.artifact,
                    tensorrt_version=str(trt.__version__),
                    gpu=gpu,
                    allow_mismatch=self.allow_version_mismatch,
                )
                plan_precision = self.record.get("precision", plan_precision)
                if self.precision != plan_precision and self.precision != self.artifact.precision:
                    raise InputError(
                        f"artifact {self.artifact.path}: its plan was built for {plan_precision}, precision="
                        f"{self.precision!r} was asked for. Build a plan at that precision: python export/to_trt.py "
                        f"{self.artifact.path} --out NEW_DIR --precision {self.precision}."
                    )
                plan = self.artifact.file(PLAN)
            elif self.path is not None and self.path.suffix == ".plan":
                plan = self.path
            else:  # an .onnx file or a graph module: build a plan for it here
                onnx_path = prepare_onnx(self._source_file(tmp, (ONNX,)), tmp, self.precision)
                plan = plan_from_onnx(
                    onnx_path,
                    Path(tmp) / PLAN,
                    precision=self.precision,
                    max_batch=self.max_batch,
                    workspace_gb=self.workspace_gb,
                    input_size=self.input_size,
                ).path
            logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(logger)
            with torch.cuda.device(index):
                self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise EngineError(
                f"TensorRT {trt.__version__} could not deserialize {plan.name} (see its log above): a plan runs only "
                "with the TensorRT version and on the GPU model it was built for. Rebuild it here with python "
                "export/to_trt.py CKPT --out NEW_DIR."
            )
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: torch_dtype(self._engine.get_tensor_dtype(n)) for n in names}
        image_shape = [int(d) for d in self._engine.get_tensor_shape("image")]
        logits_shape = [int(d) for d in self._engine.get_tensor_shape("logits")]
        self._learn_io(
            self._inputs,
            [d if d >= 0 else None for d in image_shape],
            [d if d >= 0 else None for d in logits_shape],
        )
        profile = self._engine.get_tensor_profile_shape("image", 0)  # (min, opt, max)
        self.max_batch = int(profile[2][0])
        self.effective_precision = plan_precision
        self._local = threading.local()
        self._create_lock = threading.Lock()
        self._generation = 0

    # --- per-thread execution state ----------------------------------------------------------------------------------
    def _state(self) -> tuple[Any, Any]:
        """This thread's execution context and CUDA stream (made on first use)."""
        import torch

        local = self._local
        if getattr(local, "generation", None) != self._generation:
            with self._create_lock, torch.cuda.device(self._torch_device):
                context = self._engine.create_execution_context()
                if context is None:
                    raise EngineError(
                        "TensorRT could not create an execution context (out of GPU memory?); free GPU memory or "
                        "use fewer threads."
                    )
                local.context, local.stream = context, torch.cuda.Stream(self._torch_device)
            local.generation = self._generation
        return local.context, local.stream

    def _execute(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        context, stream = self._state()
        with torch.cuda.device(self._torch_device):
            return self._enqueue(context, stream, images, targets)

    def _enqueue(self, context, stream, images, targets) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        feeds = {"image": images}
        if "target" in self._inputs:
            if targets is None:
                targets = torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
            feeds["target"] = targets
        # in the engine's dtypes, on the device, contiguous: made on the caller's stream
        inputs = {n: feeds[n].to(device=self._torch_device, dtype=self._dtypes[n]).contiguous() for n in self._inputs}
        current = torch.cuda.current_stream(self._torch_device)
        stream.wait_stream(current)  # our stream reads them only after the caller's stream has written them
        for name, tensor in inputs.items():
            tensor.record_stream(stream)  # their memory is not reused before our stream is done with it
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self._dtypes[name], device=self._torch_device)
            out.record_stream(stream)
            context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT's execute_async_v3 failed (see its log above).")
        current.wait_stream(stream)  # the caller's later work sees the outputs
        return outputs["logits"], outputs.get("saliency")

    # --- the two paths -----------------------------------------------------------------------------------------------
    def _run_tensors_impl(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        import torch

        logits, saliency = [], []
        for start in range(0, images.shape[0], self.max_batch):
            stop = start + self.max_batch
            lo, sal = self._execute(images[start:stop], None if targets is None else targets[start:stop])
            logits.append(lo)
            saliency.append(sal)
        out_logits = logits[0] if len(logits) == 1 else torch.cat(logits)
        if saliency[0] is None:
            return out_logits, None
        return out_logits, saliency[0] if len(saliency) == 1 else torch.cat(saliency)

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        x = torch.from_numpy(images).to(self._torch_device, non_blocking=False)
        t = None if targets is None else torch.from_numpy(np.ascontiguousarray(targets)).to(self._torch_device)
        logits, saliency = self._run_tensors_impl(x, t)
        return logits.float().cpu().numpy(), None if saliency is None else saliency.float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["max_batch"] = getattr(self, "max_batch", None)
        if self.record:
            out["plan"] = {k: self.record.get(k) for k in ("tensorrt_version", "gpu_name", "compute_capability")}
        return out

    def close(self) -> None:
        self._generation = getattr(self, "_generation", 0) + 1  # threads make new contexts if they run again
        self._local = threading.local()
        self._engine = None
        self._runtime = None


def backend_for_module(
    module: Any,
    *,
    precision: str = "fp32",
    input_size: tuple[int, int] | None = None,
    device: str = "cuda",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> TensorRTBackend:
    """A TensorRT backend for an in-memory explain graph or classifier: exported to ONNX, folded, converted to
    ``precision`` (fp16 through engine.precision) and built into a plan for this GPU when it opens."""
    return TensorRTBackend(module, precision=precision, input_size=input_size, device=device, max_batch=max_batch)


__all__ = ["MANIFEST_KEY", "TensorRTBackend", "backend_for_module", "cuda_index", "torch_dtype"]
