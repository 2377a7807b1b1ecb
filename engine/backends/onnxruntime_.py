"""The ONNX Runtime backend: runs an artifact's ``model.onnx``, a bare ``.onnx`` file, or a module exported to one."""

from __future__ import annotations

import numpy as np

from ..artifact import ONNX
from ..errors import EngineError
from .base import Backend, temporary_dir


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def _open_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if self.device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        with temporary_dir() as tmp:  # a module is exported here; the session keeps its own copy
            source = self._source_file(tmp, (ONNX,))
            self.session = ort.InferenceSession(str(source), opts, providers=providers)
        active = self.session.get_providers()  # what actually loaded, not what is listed
        if self.device == "cuda" and "CUDAExecutionProvider" not in active:
            raise EngineError(
                f"device='cuda' was asked for but ONNX Runtime runs on {active}: install onnxruntime-gpu with a "
                "working CUDA, or use device='cpu'."
            )
        self.device = "cuda" if "CUDAExecutionProvider" in active else "cpu"
        self.source_name = source.name
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._learn_io(list(inputs), list(inputs["image"].shape), list(outputs["logits"].shape))
        self._outputs = ["logits", "saliency"] if self.explains else ["logits"]

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        out = self.session.run(self._outputs, self._feeds(images, targets))
        return out[0], (out[1] if len(out) > 1 else None)
