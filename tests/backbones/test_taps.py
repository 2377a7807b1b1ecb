"""Backbones own their taps: default taps, prefix tokens and the token-to-map reshape (``tap_maps``)."""

from __future__ import annotations

import pytest
import torch

from engine.backbones import build_backbone
from engine.config import BackboneConfig, ExplainerConfig
from engine.errors import UnsupportedModelError
from engine.graph import build_graph


def _random(library: str, name: str, **kwargs):
    return build_backbone(BackboneConfig(library, name, weights="random", kwargs=kwargs)).eval()


VITS = [
    # library, name, kwargs, prefix tokens, grid, default taps
    ("timm", "vit_tiny_patch16_224", {}, 1, 14, ["blocks.9", "blocks.10", "blocks.11"]),
    ("timm", "deit_tiny_distilled_patch16_224", {}, 2, 14, ["blocks.9", "blocks.10", "blocks.11"]),
    ("timm", "vit_small_patch14_reg4_dinov2", {"img_size": 112}, 5, 8, ["blocks.9", "blocks.10", "blocks.11"]),
    ("open_clip", "ViT-S-32", {}, 1, 7, [f"visual.transformer.resblocks.{i}" for i in (9, 10, 11)]),
]


@pytest.mark.parametrize(("library", "name", "kwargs", "prefix", "grid", "taps"), VITS, ids=[v[1] for v in VITS])
def test_vit_taps_drop_the_prefix_tokens_and_become_maps(library, name, kwargs, prefix, grid, taps):
    adapter = _random(library, name, **kwargs)
    assert adapter.prefix_tokens == prefix and adapter.default_taps() == taps
    size = grid * (14 if "patch14" in name else 32 if "-32" in name else 16)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, maps = adapter.tap_maps(x, taps[-1:])
        _, raw = adapter.forward_taps(x, taps[-1:])
        plain = adapter(x)
    tokens = raw[taps[-1]]
    tokens = tokens[0] if isinstance(tokens, tuple) else tokens
    m = maps[taps[-1]]
    assert m.shape == (2, tokens.shape[-1], grid, grid)
    # the map at (i, j) is patch token i * grid + j, counted after the prefix tokens
    assert torch.equal(m[:, :, 1, 2], tokens[:, prefix + 1 * grid + 2])
    assert torch.equal(logits, plain)


def test_cnn_default_taps_and_maps_pass_unchanged():
    adapter = _random("torchvision", "resnet18")
    assert adapter.prefix_tokens == 0 and adapter.default_taps() == ["layer2", "layer3", "layer4"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, maps = adapter.tap_maps(x, ["layer4"])
        _, raw = adapter.forward_taps(x, ["layer4"])
    assert torch.equal(maps["layer4"], raw["layer4"])
    assert _random("timm", "mobilenetv3_small_050").default_taps() is None  # no rule: T-TAME asks for taps


def test_bad_taps_name_the_problem():
    adapter = _random("timm", "vit_tiny_patch16_224")
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(UnsupportedModelError, match="square grid"):
        adapter.tap_maps(x, ["patch_embed"])  # 196 tokens read as 1 prefix + 195
    with pytest.raises(UnsupportedModelError, match=r"'head' outputs shape \(1, 1000\)"):
        adapter.tap_maps(x, ["head"])


def test_tame_reads_multi_prefix_vits_through_the_backbone():
    """T-TAME holds no token logic: a distilled DeiT (2 prefix tokens) works through the backbone's tap_maps."""
    graph = build_graph(_random("timm", "deit_tiny_distilled_patch16_224"), ExplainerConfig("tame", {}))
    assert graph.explainer.shapes == [(192, 14, 14)] * 3
    with torch.no_grad():
        logits, sal = graph(torch.randn(1, 3, 224, 224))
    assert sal.shape == (1, 14, 14) and logits.shape == (1, 1000)
