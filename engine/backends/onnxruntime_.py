"""The ONNX Runtime backend: runs the artifact's ``model.onnx``."""

from __future__ import annotations

import numpy as np

from ..artifact import ONNX
from ..errors import EngineError
from .base import Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def _open_impl(self) -> None:
        import onnxruntime as ort

        if self.precision != "fp32":
            raise EngineError("the onnxruntime backend runs the fp32 ONNX graph; use precision='fp32'.")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if self.device in ("cuda", "auto") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.artifact.file(ONNX)), opts, providers=providers)
        active = self.session.get_providers()  # what actually loaded, not what is listed
        if self.device == "cuda" and "CUDAExecutionProvider" not in active:
            raise EngineError(
                f"device='cuda' was asked for but ONNX Runtime runs on {active}: install onnxruntime-gpu with a "
                "working CUDA, or use device='cpu'."
            )
        self.device = "cuda" if "CUDAExecutionProvider" in active else "cpu"

    def _infer_impl(self, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, saliency = self.session.run(["logits", "saliency"], {"image": images, "target": targets})
        return logits, saliency
