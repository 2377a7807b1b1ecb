"""The encoder as a tap sequence h^(0..k) (ALA's taps) and ViT input resizing (the position embedding's grid)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine.backbones import build_backbone
from engine.backbones.timm_ import TimmCNN
from engine.config import BackboneConfig
from engine.errors import InputError, UnsupportedModelError

KINDS = ["timm", "timm-distilled", "timm-reg", "open_clip", "torchvision"]  # the keys of conftest.TINY_VITS


def _first_and_blocks(adapter):
    """The embedded tokens that enter the first block, computed by hand, and the encoder blocks (batch-first)."""
    m = adapter.model
    if adapter.library == "timm":
        return lambda x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))), list(m.blocks)
    if adapter.library == "open_clip":
        return m.visual._embeds, list(m.visual.transformer.resblocks)

    def embed(x):
        tokens = m._process_input(x)
        return torch.cat([m.class_token.expand(x.shape[0], -1, -1), tokens], dim=1) + m.encoder.pos_embedding

    return embed, list(m.encoder.layers)


def _pos_embedding(adapter) -> nn.Parameter:
    m = adapter.model
    return {"timm": lambda: m.pos_embed, "open_clip": lambda: m.visual.positional_embedding}.get(
        adapter.library, lambda: m.encoder.pos_embedding
    )()


@pytest.mark.parametrize("kind", KINDS)
def test_vit_encoder_taps_are_the_block_inputs_and_outputs_as_maps(kind, tiny, tiny_specs):
    depth, patch, size, prefix, _ = tiny_specs[kind]
    adapter = tiny(kind)
    taps = adapter.encoder_taps()
    first, block = {
        "timm": ("norm_pre", "blocks.{}"),
        "open_clip": ("visual.ln_pre", "visual.transformer.resblocks.{}"),
        "torchvision": ("encoder.dropout", "encoder.layers.encoder_layer_{}"),
    }[adapter.library]
    assert taps == [first, *(block.format(i) for i in range(depth))]
    assert adapter.lora_targets()[0][0].startswith(taps[-1] + ".")
    g = size // patch
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    embed, blocks = _first_and_blocks(adapter)
    with torch.no_grad():
        logits, maps = adapter.tap_maps(x, taps)
        h = embed(x)
        want = [h]
        for blk in blocks:
            h = blk(h)
            want.append(h)
        plain = adapter(x)
    assert torch.equal(logits, plain)
    for tap, tokens in zip(taps, want, strict=True):
        m = maps[tap]
        assert m.shape == (2, tokens.shape[-1], g, g), tap
        # the prefix tokens are dropped; map (i, j) is patch token i * g + j
        grid = tokens[:, prefix:].transpose(1, 2).reshape(2, -1, g, g)
        torch.testing.assert_close(m, grid, rtol=0, atol=1e-6, msg=tap)


CNNS = [
    # library, name, encoder taps
    ("timm", "tf_efficientnet_lite0", ["bn1", *(f"blocks.{i}" for i in range(7)), "bn2"]),
    ("timm", "mobilenetv3_small_050", ["bn1", *(f"blocks.{i}" for i in range(6))]),  # no bn2: the head pools first
    ("timm", "resnet18", ["maxpool", "layer1", "layer2", "layer3", "layer4"]),
    ("timm", "convnext_atto", [f"stages.{i}" for i in range(4)]),  # other timm CNNs: feature_info's modules
    ("torchvision", "resnet18", ["maxpool", "layer1", "layer2", "layer3", "layer4"]),
    ("torchvision", "mobilenet_v2", [f"features.{i}" for i in range(19)]),
]


@pytest.mark.parametrize(("library", "name", "taps"), CNNS, ids=[f"{c[0]}-{c[1]}" for c in CNNS])
def test_cnn_encoder_taps_are_the_stage_outputs_in_order(library, name, taps):
    adapter = build_backbone(BackboneConfig(library, name, num_classes=10, weights="random"))
    assert adapter.encoder_taps() == taps
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    second = dict(adapter.model.named_modules())[taps[1]]
    seen = {}
    handle = second.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0]))
    with torch.no_grad():
        _, maps = adapter.tap_maps(x, taps)
        features = adapter.cnn_features(x)
    handle.remove()
    assert all(maps[t].ndim == 4 and maps[t].shape[0] == 1 for t in taps)
    assert torch.equal(maps[taps[0]], seen["in"]), "h^(0) is the input of the first stage"
    sides = [maps[t].shape[-1] for t in taps]
    assert sides == sorted(sides, reverse=True) and sides[-1] == 2, "stages in order, down to stride 32"
    if name != "mobilenetv3_small_050":  # its features end in the pooled head
        assert torch.equal(maps[taps[-1]], features), "the last tap is the map the classifier pools"


def test_vgg_taps_are_its_max_pools_and_unknown_cnns_ask_for_taps():
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    import torchvision

    from engine.backbones.torchvision_ import TorchvisionCNN

    with torch.device("meta"):  # names only: no 100M-parameter classifier to initialise
        vgg = TorchvisionCNN(torchvision.models.vgg11(), "vgg11", 1000)
    assert vgg.encoder_taps() == [f"features.{i}" for i in (2, 5, 10, 15, 20)]
    with pytest.raises(UnsupportedModelError, match=r"no encoder stage of torchvision/vgg11 has a 1x1 nn.Conv2d"):
        vgg.lora_targets()
    odd = TimmCNN(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "custom", 4)
    with pytest.raises(UnsupportedModelError, match="pass the tap module names explicitly"):
        odd.encoder_taps()


@pytest.mark.parametrize("kind", KINDS)
def test_set_input_size_resamples_the_grid_and_keeps_the_prefix(kind, tiny, tiny_specs):
    _, patch, size, _, pos_prefix = tiny_specs[kind]
    adapter = tiny(kind)
    g, new = size // patch, size + 2 * patch
    assert adapter.native_input_size == (size, size) and adapter.patch_size == (patch, patch)
    pos = _pos_embedding(adapter)
    before = pos.detach().clone()
    adapter.set_input_size(size)  # already the model's: nothing changes
    assert _pos_embedding(adapter) is pos and torch.equal(pos, before)
    adapter.set_input_size(new)
    assert _pos_embedding(adapter) is pos, "in place: the same Parameter (an optimiser keeps it)"
    assert adapter.native_input_size == (new, new) and adapter.patch_grid == (g + 2, g + 2)
    flat = pos.detach().reshape(-1, pos.shape[-1])
    old = before.reshape(-1, pos.shape[-1])
    assert flat.shape[0] == pos_prefix + (g + 2) ** 2
    assert torch.equal(flat[:pos_prefix], old[:pos_prefix]), "prefix-token entries untouched"
    grid = old[pos_prefix:].T.reshape(1, -1, g, g)
    want = F.interpolate(grid, size=(g + 2, g + 2), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(flat[pos_prefix:], want.reshape(-1, (g + 2) ** 2).T, rtol=0, atol=1e-6)
    x = torch.randn(1, 3, new, new, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, maps = adapter.tap_maps(x, adapter.encoder_taps()[-1:])
    assert logits.shape == (1, 10) and next(iter(maps.values())).shape[-2:] == (g + 2, g + 2)
    assert adapter.vit_parts().grid == (g + 2, g + 2)
    bad = new + patch // 2
    lo, hi = new, new + patch
    want = rf"{bad} is not a positive multiple of the patch size {patch}; use {lo} or {hi}"
    with pytest.raises(InputError, match=want):
        adapter.set_input_size(bad)
    with pytest.raises(InputError, match=rf"use {patch}\.$"):
        adapter.set_input_size(0)
    with pytest.raises(InputError, match="pair of ints"):
        adapter.set_input_size((new, new, 3))
    assert adapter.native_input_size == (new, new), "a refused size changes nothing"


def test_non_square_sizes_where_the_library_allows_them(tiny):
    adapter = tiny("timm")  # patch 16, 64x64
    adapter.set_input_size((64, 96))
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, maps = adapter.tap_maps(x, ["blocks.2"])
        _, raw = adapter.forward_taps(x, ["blocks.2"])
    assert maps["blocks.2"].shape[-2:] == (4, 6)
    assert torch.equal(maps["blocks.2"][:, :, 1, 2], raw["blocks.2"][:, 1 + 1 * 6 + 2]), "row-major 4x6 grid"
    tv = tiny("torchvision")
    with pytest.raises(InputError, match=r"square inputs only, got 224x256; use 224x224 or 256x256"):
        tv.set_input_size((224, 256))


def test_sequence_first_blocks_still_give_maps(tiny):
    """An open_clip transformer with batch_first=False outputs (T, B, D) from its blocks, while its embedding (ln_pre)
    stays (B, T, D): each tap is read in its own layout."""
    adapter = tiny("open_clip")
    tokens = torch.randn(2, 1 + 16, 64, generator=torch.Generator().manual_seed(0))  # (B, T, D), a 4x4 grid
    want = tokens[:, 1:].transpose(1, 2).reshape(2, 64, 4, 4)
    adapter.model.visual.transformer.batch_first = False  # what the layout attribute says (the blocks are not run)
    assert torch.equal(adapter.tap_to_map("visual.transformer.resblocks.0", tokens.transpose(0, 1)), want)
    assert torch.equal(adapter.tap_to_map("visual.ln_pre", tokens), want)


def test_cnns_take_any_size():
    adapter = build_backbone(BackboneConfig("torchvision", "resnet18", num_classes=10, weights="random"))
    assert adapter.native_input_size is None and adapter.patch_grid is None
    adapter.set_input_size(97)  # a no-op
