"""The torch backend: runs the explain graph module itself (eager), on the CPU or a CUDA device."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EngineError, InputError
from ..graph import graph_from_artifact
from .base import Backend

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchBackend(Backend):
    name = "torch"

    def _open_impl(self) -> None:
        if self.path is not None:
            raise InputError(
                f"the torch backend runs an artifact or a graph module, not a model file ({self.path}); open the "
                "file with backend='onnxruntime' or 'openvino'."
            )
        if self.artifact is not None:
            self.graph = graph_from_artifact(self.artifact, allow_version_mismatch=self.allow_version_mismatch)
        else:
            self.graph = self.module.eval()
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("device='cuda' was asked for but this torch has no CUDA device; use device='cpu'.")
        self.dtype = _DTYPES[self.precision]
        self.graph.to(self.device, self.dtype)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)

    def _run_tensors_impl(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x = images.to(self.device, self.dtype)
        with torch.inference_mode():
            if targets is None:
                return self.graph(x), None
            return self.graph(x, targets.to(self.device))

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        logits, saliency = self._run_tensors_impl(
            torch.from_numpy(images), None if targets is None else torch.from_numpy(targets)
        )
        return logits.float().cpu().numpy(), None if saliency is None else saliency.float().cpu().numpy()
