"""Tiny seeded backbones of every adapter kind (random weights, nothing downloaded), shared by the backbone tests."""

from __future__ import annotations

import pytest
import torch

from engine.backbones import BackboneAdapter
from engine.testing import perturb_for_tests, random_backbone

# open_clip's ViT-B-16 layout with a tiny tower (the config keys open_clip.create_model takes as overrides)
OPEN_CLIP_TINY = {
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "embed_dim": 32,
}

#: kind -> (depth, patch, input size, prefix tokens of the token sequence, prefix entries of the position embedding)
TINY_VITS = {
    "timm": (3, 16, 64, 1, 1),
    "timm-distilled": (2, 16, 64, 2, 2),  # DeiT: class + distillation token
    "timm-reg": (2, 14, 56, 5, 0),  # DINOv2 with registers: 5 prefix tokens, position embedding on the grid only
    "open_clip": (3, 16, 64, 1, 1),
    "torchvision": (3, 32, 224, 1, 1),
}


def tiny_vit(kind: str, num_classes: int = 10) -> BackboneAdapter:
    """A tiny ViT of ``kind`` (a key of :data:`TINY_VITS`), seeded, with perturbed norms (``perturb_for_tests``)."""
    depth, _, size, _, _ = TINY_VITS[kind]
    if kind == "timm":
        return random_backbone("timm", "vit_tiny_patch16_224", num_classes, img_size=size, depth=depth)
    if kind == "timm-distilled":
        return random_backbone("timm", "deit_tiny_distilled_patch16_224", num_classes, img_size=size, depth=depth)
    if kind == "timm-reg":
        return random_backbone("timm", "vit_small_patch14_reg4_dinov2", num_classes, img_size=size, depth=depth)
    if kind == "open_clip":
        return random_backbone("open_clip", "ViT-B-16", num_classes, **OPEN_CLIP_TINY)
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models.vision_transformer import VisionTransformer

    from engine.backbones.torchvision_ import TorchvisionViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VisionTransformer(size, 32, depth, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes)
    return perturb_for_tests(TorchvisionViT(model, "vit_tiny_test", num_classes).eval())


@pytest.fixture
def tiny():
    """The :func:`tiny_vit` builder."""
    return tiny_vit


@pytest.fixture
def tiny_specs() -> dict[str, tuple[int, int, int, int, int]]:
    """:data:`TINY_VITS` (test modules cannot import a conftest under ``--import-mode=importlib``)."""
    return TINY_VITS
