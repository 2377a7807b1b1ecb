"""The OpenVINO backend: runs an artifact's IR (``model.xml``, or its ONNX when it has no IR), a bare ``.xml`` /
``.onnx`` file, or a module exported to ONNX.

The CPU plugin picks bf16 by itself on CPUs with AMX; the precision is therefore always set explicitly
(``INFERENCE_PRECISION_HINT``) and the precision the compiled model reports is recorded (``effective_precision``).

Threads: an ``InferRequest`` runs one inference at a time (a second thread gets "Infer Request is busy", or overwrites
the first one's inputs), so calls take a request from a pool (:class:`_RequestPool`), run it, copy the outputs out of
the request's memory and give it back. The pool holds at most the compiled model's
``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (1 under the ``LATENCY`` hint: its one stream runs one request at a time anyway);
further callers wait for a free request.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..artifact import ONNX, OPENVINO_XML
from ..errors import EngineError, InputError
from .base import Backend, temporary_dir

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8: the graph's Q/DQ nodes
_OUR_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # the compiled hint, back in our names


def _dims(port) -> list[int | None]:
    """A port's dimensions, None where dynamic."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


class _RequestPool:
    """Infer requests shared by threads: a call takes a free one (creating it while fewer than ``size`` exist, else
    waiting for one), runs it and gives it back, also when it raised."""

    def __init__(self, compiled, size: int) -> None:
        self._compiled = compiled
        self.size = max(1, int(size))
        self._free: queue.LifoQueue = queue.LifoQueue()  # the most recently used request first: its memory is warm
        self._free.put(compiled.create_infer_request())  # one at load time, so that a failure shows there
        self._created = 1
        self._lock = threading.Lock()

    @contextmanager
    def request(self) -> Iterator:
        try:
            request = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._created < self.size
                self._created += grow
            if grow:
                try:
                    request = self._compiled.create_infer_request()
                except BaseException:
                    with self._lock:
                        self._created -= 1
                    raise
            else:
                request = self._free.get()
        try:
            yield request
        finally:
            self._free.put(request)


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
        optimal = self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self._requests = _RequestPool(self.compiled, optimal)
        self.source_name = source.name
        self._out = {o.get_any_name(): o for o in self.compiled.outputs}
        image = next(i for i in self.compiled.inputs if i.get_any_name() == "image")
        self._learn_io([i.get_any_name() for i in self.compiled.inputs], _dims(image), _dims(self._out["logits"]))
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        hint = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.effective_precision = _OUR_PRECISION.get(hint, hint)
        if self.precision == "int8":  # the Q/DQ graph computes its convolutions and products in int8
            if self.artifact is not None and self.artifact.precision != "int8":
                raise InputError(
                    f"precision='int8' needs an int8 graph (Q/DQ nodes), and artifact {self.artifact.name!r} holds "
                    f"{self.artifact.precision}: export one with xai-engine export CKPT --format onnx --precision "
                    "int8 --calib PHOTOS --out DIR"
                )
            self.effective_precision = "int8"

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        with self._requests.request() as request:
            result = request.infer(self._feeds(images, targets), share_inputs=False, share_outputs=False)
            # copies, taken while the request is held: the next call on it reuses its output memory
            logits = np.array(result[self._out["logits"]], copy=True)
            saliency = np.array(result[self._out["saliency"]], copy=True) if self.explains else None
        return logits, saliency
