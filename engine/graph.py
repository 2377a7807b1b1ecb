"""The explain graph: the one model definition per method, run by torch, traced once for export."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbones import BackboneAdapter, build_backbone
from .config import BackboneConfig, ExplainerConfig
from .explainers import Explainer, build_explainer


class ExplainGraph(nn.Module):
    """``forward(image, target=None) -> (logits, saliency)``.

    Args of forward:
        image: normalised batch (B, 3, H, W).
        target: class per image (B,) int64; ``-1`` (or ``None`` for all) explains the predicted class.

    Returns:
        logits (B, num_classes) and saliency (B, h, w) in [0, 1] at the explainer's resolution.
    """

    def __init__(self, backbone: BackboneAdapter, explainer: Explainer):
        super().__init__()
        self.backbone = backbone
        self.explainer = explainer

    def forward(self, image: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if target is None:
            target = torch.full((image.shape[0],), -1, dtype=torch.long, device=image.device)
        return self.explainer(self.backbone, image, target)


class ClassifyGraph(nn.Module):
    """The plain classifier with the explain graph's input layout (for latency baselines)."""

    def __init__(self, backbone: BackboneAdapter):
        super().__init__()
        self.backbone = backbone

    def forward(self, image: Tensor) -> Tensor:
        return self.backbone(image)


def load_weights(module: nn.Module, state: dict[str, Tensor]) -> str | None:
    """Load a state dict into a module; returns None if it fit, else a short description of what did not fit."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        return str(e).splitlines()[-1].strip()
    if result.missing_keys or result.unexpected_keys:
        return f"missing keys {result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}"
    return None


def build_graph(
    backbone: BackboneConfig | BackboneAdapter, explainer: ExplainerConfig, input_size: tuple[int, int] = (224, 224)
) -> ExplainGraph:
    """Build an explain graph in eval mode from configs (or an already built backbone adapter)."""
    adapter = backbone if isinstance(backbone, BackboneAdapter) else build_backbone(backbone)
    adapter.eval()
    return ExplainGraph(adapter, build_explainer(explainer, adapter, tuple(input_size))).eval()
