"""The explain graph: the one model definition per method, run by torch, traced once for export.

Also the one place that turns an artifact into that graph (:func:`graph_from_artifact`): the backends, export,
training and the benchmarks all build graphs here, none of them builds its own.
"""

from __future__ import annotations

from pathlib import Path

from .requires import require_torch

require_torch("building an explain graph (engine.graph)")  # before `import torch` below

import torch
from torch import Tensor, nn

from .artifact import HEAD_WEIGHTS, WEIGHTS, Artifact, sha256_file
from .backbones import BackboneAdapter, build_backbone
from .config import BackboneConfig, ExplainerConfig
from .errors import ArtifactError
from .explainers import Explainer, build_explainer
from .state import load_weights, read_safetensors, save_tensors


class ExplainGraph(nn.Module):
    """``forward(image, target=None) -> (logits, saliency)``.

    Args of forward:
        image: normalised batch (B, 3, H, W).
        target: class per image (B,) int64; ``-1`` (or ``None`` for all) explains the predicted class.

    Returns:
        logits (B, num_classes) and saliency (B, h, w) in [0, 1] at the explainer's resolution.
    """

    def __init__(self, backbone: BackboneAdapter, explainer: Explainer, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.explainer = explainer
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)

    def forward(self, image: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if target is None:
            target = torch.full((image.shape[0],), -1, dtype=torch.long, device=image.device)
        return self.explainer(self.backbone, image, target)


class ClassifyGraph(nn.Module):
    """The plain classifier with the explain graph's input layout (for latency baselines and metrics)."""

    def __init__(self, backbone: BackboneAdapter, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)

    def forward(self, image: Tensor) -> Tensor:
        return self.backbone(image)


def build_graph(
    backbone: BackboneConfig | BackboneAdapter, explainer: ExplainerConfig, input_size: tuple[int, int] = (224, 224)
) -> ExplainGraph:
    """Build an explain graph in eval mode from configs (or an already built backbone adapter)."""
    adapter = backbone if isinstance(backbone, BackboneAdapter) else build_backbone(backbone)
    adapter.eval()
    size = tuple(input_size)
    return ExplainGraph(adapter, build_explainer(explainer, adapter, size), size).eval()


def _fit_input_size(adapter: BackboneAdapter, explainer: ExplainerConfig, size: tuple[int, int]) -> None:
    """Resize a ViT encoder to the graph's input size (its position embedding) for methods that run it there
    (``sets_input_size``, e.g. ALA); other methods leave the backbone as it is."""
    from .explainers import get_explainer_class

    if getattr(get_explainer_class(explainer.method), "sets_input_size", False) and adapter.kind == "vit":
        adapter.set_input_size(size)


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


def _check_fit(artifact: Artifact, problems: str | None) -> None:
    """Refuse a whole-graph weights file that does not fit the graph the manifest describes."""
    if problems:
        raise ArtifactError(
            f"{artifact.file(WEIGHTS)} does not fit {artifact.backbone.spec} + {artifact.method}: {problems}. The "
            "artifact was made for another architecture or version: re-create it."
        )


def graph_from_artifact(
    artifact: Artifact, *, allow_version_mismatch: bool = False, merge_deltas: bool = True
) -> ExplainGraph:
    """Build an artifact's explain graph in eval mode and load its weights (safetensors, never pickle).

    The backbone's weights come from the artifact's ``weights.safetensors`` (``weights`` = artifact/file: the whole
    graph), a package or the library (package/pretrained), or an external file (external). They are loaded **before**
    the explainer is built, so whatever an explainer derives from the backbone at construction (shapes, a cached
    weight layout, LoRA deltas on top of the frozen weights) sees the real weights. An explainer head in
    ``explainer.safetensors`` (the explainer's trained state plus the backbone's trainable deltas, see
    :meth:`~engine.explainers.base.Explainer.head_state_dict`) is loaded last and must fit exactly.

    With ``merge_deltas`` (the default: the graph is for inference) the trained deltas are then merged into the
    frozen weights, exactly as export does, so the torch backend runs the same plain graph as the exported ones; pass
    False to keep them as trainable parametrizations.
    """
    bb = artifact.backbone
    artifact.check_versions([bb.library], allow_mismatch=allow_version_mismatch)
    adapter = build_backbone(bb)
    rest: dict[str, Tensor] = {}
    size = tuple(artifact.preprocess.input_size)
    if bb.weights in ("artifact", "file"):
        _fit_input_size(adapter, artifact.explainer, size)  # the stored graph holds the resized position embedding
        if not artifact.has(WEIGHTS):
            raise ArtifactError(
                f"artifact {artifact.path or artifact.name} says its weights are in {WEIGHTS}, which it lacks. "
                "Re-create it with `xai-engine create ...`."
            )
        state = read_safetensors(artifact.file(WEIGHTS), "the graph's weights")
        backbone_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
        rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        _check_fit(artifact, load_weights(adapter, backbone_state))
    elif bb.weights == "external":
        path = external_weights_path(artifact)
        problems = load_weights(adapter.model, read_safetensors(path, f"{bb.spec} weights"))
        if problems:
            raise ArtifactError(f"{path} does not fit {bb.spec}: {problems}. Check the file and the backbone kwargs.")
    _fit_input_size(adapter, artifact.explainer, size)
    graph = build_graph(adapter, artifact.explainer, size)
    if bb.weights in ("artifact", "file"):
        explainer_state = {k[len("explainer.") :]: v for k, v in rest.items() if k.startswith("explainer.")}
        stray = sorted(k for k in rest if not k.startswith("explainer."))
        stray_keys = f"unexpected keys {stray[:5]}" if stray else None
        _check_fit(artifact, load_weights(graph.explainer, explainer_state) or stray_keys)
    if artifact.has(HEAD_WEIGHTS):
        head = read_safetensors(artifact.file(HEAD_WEIGHTS), "the explainer head")
        problems = graph.explainer.load_head_state_dict(graph.backbone, head)
        if problems:
            raise ArtifactError(
                f"{artifact.file(HEAD_WEIGHTS)} does not fit the {artifact.method} explainer on {bb.spec}: {problems}. "
                "The head was trained for another configuration: retrain it or use the matching artifact."
            )
    elif bb.weights not in ("artifact", "file") and graph.explainer.head_state_dict(graph.backbone):
        raise ArtifactError(
            f"artifact {artifact.path or artifact.name}: the {artifact.method} explainer has trained parameters but "
            f"the artifact holds neither {WEIGHTS} nor {HEAD_WEIGHTS}. Re-create it from the training output."
        )
    if merge_deltas:
        graph.backbone.merge_deltas()
    return graph.eval()


def graph_state_dict(graph: ExplainGraph) -> dict[str, Tensor]:
    """A whole graph's weights as a ``weights.safetensors`` stores them: the backbone with its trainable deltas merged,
    under the plain model's keys (``backbone.*``), and the explainer's state (``explainer.*``)."""
    state = {f"backbone.{k}": v for k, v in graph.backbone.base_state_dict().items()}
    state.update({f"explainer.{k}": v for k, v in graph.explainer.state_dict().items()})
    return state


def save_graph(graph: ExplainGraph, path: str | Path) -> Path:
    """Write :func:`graph_state_dict` as safetensors."""
    return save_tensors(graph_state_dict(graph), path)
