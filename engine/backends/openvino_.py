"""The OpenVINO backend: runs the artifact's IR (``model.xml``), or reads its ONNX directly when it has no IR.

The CPU plugin picks bf16 by itself on CPUs with AMX; the precision is therefore always set explicitly
(``INFERENCE_PRECISION_HINT``) and recorded.
"""

from __future__ import annotations

import numpy as np

from ..artifact import ONNX, OPENVINO_XML
from ..errors import EngineError
from .base import Backend

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


class OpenVINOBackend(Backend):
    name = "openvino"

    def _open_impl(self) -> None:
        import openvino as ov

        if self.device not in ("cpu", "auto"):
            raise EngineError(f"the openvino backend runs on the CPU here; device={self.device!r} is not supported.")
        self.device = "cpu"
        core = ov.Core()
        source = self.artifact.file(OPENVINO_XML) if self.artifact.has(OPENVINO_XML) else self.artifact.file(ONNX)
        model = core.read_model(str(source))
        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.source = source.name
        self._out = {o.get_any_name(): o for o in self.compiled.outputs}

    def _infer_impl(self, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({"image": images, "target": targets})
        return result[self._out["logits"]], result[self._out["saliency"]]
