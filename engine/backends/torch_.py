"""The torch backend: runs the explain graph module itself (eager)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifact import HEAD_WEIGHTS, WEIGHTS, Artifact, sha256_file
from ..errors import ArtifactError, EngineError
from ..graph import ExplainGraph, build_graph, load_weights
from .base import Backend


def _read_safetensors(path, what: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors raises several types for damaged files)
        raise ArtifactError(f"{path} ({what}) is not a readable safetensors file ({e}).") from e


def external_weights_path(artifact: Artifact) -> Path:
    """The checked path of an ``external`` backbone weights file (absolute, or relative to the artifact folder)."""
    bb = artifact.backbone
    if not bb.weights_file or not bb.weights_sha256:
        raise ArtifactError(
            f"artifact {artifact.path or artifact.name}: backbone.weights is 'external' but weights_file or "
            "weights_sha256 is missing from the manifest. Re-create the artifact."
        )
    path = Path(bb.weights_file).expanduser()
    if not path.is_absolute() and artifact.path is not None:
        path = artifact.path / path
    if not path.is_file():
        raise ArtifactError(
            f"artifact {artifact.path or artifact.name} reads its {bb.spec} weights from {bb.weights_file}, which "
            f"does not exist (looked for {path}). Put that file there (sha256 {bb.weights_sha256[:12]}...), or edit "
            "backbone.weights_file in the manifest to where it is."
        )
    actual = sha256_file(path)
    if actual != bb.weights_sha256:
        raise ArtifactError(
            f"{path} is not the backbone file this artifact was trained on (sha256 {actual[:12]}..., expected "
            f"{bb.weights_sha256[:12]}...). Use the original weights, or retrain the explainer on these."
        )
    return path


def graph_from_artifact(artifact: Artifact, *, allow_version_mismatch: bool = False) -> ExplainGraph:
    """Build an artifact's explain graph in eval mode and load its weights (safetensors, never pickle).

    The backbone's weights come from the artifact's ``weights.safetensors`` (``weights`` = artifact/file: the whole
    graph), a package or the library (package/pretrained), or an external file (external); an explainer head in
    ``explainer.safetensors`` is loaded on top and must fit the explainer exactly.
    """
    bb = artifact.backbone
    artifact.check_versions([bb.library], allow_mismatch=allow_version_mismatch)
    graph = build_graph(bb, artifact.explainer, tuple(artifact.preprocess.input_size))
    if bb.weights in ("artifact", "file"):
        if not artifact.has(WEIGHTS):
            raise ArtifactError(
                f"artifact {artifact.path or artifact.name} says its weights are in {WEIGHTS}, which it lacks. "
                "Re-create it with `xai-engine create ...`."
            )
        state = _read_safetensors(artifact.file(WEIGHTS), "the graph's weights")
        problems = load_weights(graph, state)
        if problems:
            raise ArtifactError(
                f"{artifact.file(WEIGHTS)} does not fit {bb.spec} + {artifact.method}: {problems}. The artifact was "
                "made for another architecture or version: re-create it."
            )
    elif bb.weights == "external":
        path = external_weights_path(artifact)
        problems = load_weights(graph.backbone.model, _read_safetensors(path, f"{bb.spec} weights"))
        if problems:
            raise ArtifactError(f"{path} does not fit {bb.spec}: {problems}. Check the file and the backbone kwargs.")
    if artifact.has(HEAD_WEIGHTS):
        problems = load_weights(graph.explainer, _read_safetensors(artifact.file(HEAD_WEIGHTS), "the explainer head"))
        if problems:
            raise ArtifactError(
                f"{artifact.file(HEAD_WEIGHTS)} does not fit the {artifact.method} explainer on {bb.spec}: {problems}. "
                "The head was trained for another configuration: retrain it or use the matching artifact."
            )
    elif bb.weights not in ("artifact", "file") and any(True for _ in graph.explainer.parameters()):
        raise ArtifactError(
            f"artifact {artifact.path or artifact.name}: the {artifact.method} explainer has trained parameters but "
            f"the artifact holds neither {WEIGHTS} nor {HEAD_WEIGHTS}. Re-create it from the training output."
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
