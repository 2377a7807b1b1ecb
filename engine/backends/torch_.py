"""The torch backend: runs the explain graph module itself (eager)."""

from __future__ import annotations

import numpy as np
import torch

from ..artifact import WEIGHTS, Artifact
from ..errors import ArtifactError, EngineError
from ..graph import ExplainGraph, build_graph, load_weights
from .base import Backend


def graph_from_artifact(artifact: Artifact, *, allow_version_mismatch: bool = False) -> ExplainGraph:
    """Build an artifact's explain graph in eval mode and load its weights (safetensors, never pickle)."""
    bb = artifact.backbone
    artifact.check_versions([bb.library], allow_mismatch=allow_version_mismatch)
    graph = build_graph(bb, artifact.explainer, tuple(artifact.preprocess.input_size))
    if bb.weights in ("artifact", "file"):
        from safetensors.torch import load_file

        if not artifact.has(WEIGHTS):
            raise ArtifactError(
                f"artifact {artifact.path or artifact.name} says its weights are in {WEIGHTS}, which it lacks. "
                "Re-create it with `xai-engine create ...`."
            )
        try:
            state = load_file(str(artifact.file(WEIGHTS)))
        except Exception as e:  # noqa: BLE001  (safetensors raises several types for damaged files)
            raise ArtifactError(f"{artifact.file(WEIGHTS)} is not a readable safetensors file ({e}).") from e
        problems = load_weights(graph, state)
        if problems:
            raise ArtifactError(
                f"{artifact.file(WEIGHTS)} does not fit {bb.spec} + {artifact.method}: {problems}. The artifact was "
                "made for another architecture or version: re-create it."
            )
    return graph.eval()


class TorchBackend(Backend):
    name = "torch"

    def _open_impl(self) -> None:
        self.graph = graph_from_artifact(self.artifact, allow_version_mismatch=self.allow_version_mismatch)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("device='cuda' was asked for but this torch has no CUDA device; use device='cpu'.")
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        self.dtype = dtype
        self.graph.to(self.device, dtype)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)

    def _infer_impl(self, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(images).to(self.device, self.dtype)
        t = torch.from_numpy(targets).to(self.device)
        with torch.inference_mode():
            logits, saliency = self.graph(x, t)
        return logits.float().cpu().numpy(), saliency.float().cpu().numpy()
