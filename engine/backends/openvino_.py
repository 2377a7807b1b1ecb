"""The OpenVINO backend: runs an artifact's IR (``model.xml``, or its ONNX when it has no IR), a bare ``.xml`` /
``.onnx`` file, or a module exported to ONNX.

The CPU plugin picks bf16 by itself on CPUs with AMX; the precision is therefore always set explicitly
(``INFERENCE_PRECISION_HINT``) and the precision the compiled model reports is recorded (``effective_precision``).
"""

from __future__ import annotations

import numpy as np

from ..artifact import ONNX, OPENVINO_XML
from ..errors import EngineError
from .base import Backend, temporary_dir

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_OUR_PRECISION = {v: k for k, v in _OV_PRECISION.items()}


def _dims(port) -> list[int | None]:
    """A port's dimensions, None where dynamic."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class OpenVINOBackend(Backend):
    name = "openvino"

    def _open_impl(self) -> None:
        import openvino as ov

        if self.device not in ("cpu", "auto"):
            raise EngineError(f"the openvino backend runs on the CPU here; device={self.device!r} is not supported.")
        self.device = "cpu"
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        with temporary_dir() as tmp:  # a module is exported here; the compiled model keeps what it needs
            source = self._source_file(tmp, (OPENVINO_XML, ONNX))
            self.compiled = core.compile_model(core.read_model(str(source)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.source_name = source.name
        self._out = {o.get_any_name(): o for o in self.compiled.outputs}
        image = next(i for i in self.compiled.inputs if i.get_any_name() == "image")
        self._learn_io([i.get_any_name() for i in self.compiled.inputs], _dims(image), _dims(self._out["logits"]))
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.effective_precision = _OUR_PRECISION.get(hint, hint)

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        result = self.request.infer(self._feeds(images, targets))
        logits = np.array(result[self._out["logits"]])
        return logits, (np.array(result[self._out["saliency"]]) if self.explains else None)
