"""ALA explainer: shapes, the class-agnostic map, taps and presets, LoRA merged == unmerged, position-embedding
interpolation, bad input (engine/explainers/ala.py)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from engine.config import ExplainerConfig
from engine.errors import InputError, UnsupportedModelError
from engine.explainers.ala import ALA, PRESETS, TAP_PRESETS
from engine.graph import build_graph
from engine.testing import random_backbone

SMALL = {"dim": 16, "depth": 4, "heads": 2, "pb_channels": 8, "num_classes": 3}


def vit(img_size: int = 32, depth: int = 4, **kw):
    return random_backbone("timm", "vit_tiny_patch16_224", num_classes=5, img_size=img_size, depth=depth, **kw)


def cnn():
    return random_backbone("timm", "tf_efficientnet_lite0", num_classes=5)


def ala_graph(backbone, size: int, **options):
    torch.manual_seed(0)
    return build_graph(backbone, ExplainerConfig("ala", {**SMALL, **options}), (size, size))


def randomise_lora(graph, seed: int = 0) -> None:
    """Give every LoRA B a non-zero value (B starts at zero, which would hide a wrong merge)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in graph.backbone.delta_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)


@pytest.mark.parametrize("make, size", [(vit, 32), (cnn, 64)], ids=["vit", "cnn"])
def test_one_pass_gives_logits_and_a_class_agnostic_map(make, size):
    g = ala_graph(make(), size).eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, sal = g(x)
        logits_t, sal_t = g(x, torch.tensor([0, 2, 1]))
    grid = size // 16
    assert logits.shape == (3, 3) and sal.shape == (3, grid, grid)
    assert torch.all(sal >= 0) and torch.all(sal <= 1)
    assert torch.allclose(sal.flatten(1).amax(1), torch.ones(3)) and torch.allclose(
        sal.flatten(1).amin(1), torch.zeros(3)
    )
    assert torch.equal(sal, sal_t) and torch.equal(logits, logits_t)  # alpha and the class ignore the target
    # the logits are the perception branch on alpha * h_k: the training forward gives the same
    with torch.no_grad():
        out = g.explainer.training_forward(g.backbone, x)
    assert torch.allclose(out["pb"], logits, atol=1e-6)
    expected = (out["alpha"] - out["alpha"].amin((2, 3), True)) / (
        out["alpha"].amax((2, 3), True) - out["alpha"].amin((2, 3), True)
    )
    assert torch.allclose(expected[:, 0], sal, atol=1e-6)


def test_taps_presets_feed_the_named_layers():
    bb = vit(depth=10)
    seq = bb.encoder_taps()
    assert seq[0] == "norm_pre" and len(seq) == 11
    g = ala_graph(bb, 32)
    assert g.explainer.lattice_taps == [seq[i] for i in TAP_PRESETS["paper"]] and g.explainer.last_tap == seq[-1]
    g2 = ala_graph(vit(depth=10), 32, taps="spread", depth=4)
    assert g2.explainer.lattice_taps == [seq[i] for i in (0, 3, 6, 9)]
    g3 = ala_graph(vit(depth=10), 32, taps="none")
    assert g3.explainer.lattice_taps == [] and len(g3.explainer.ala.tap_proj) == 0
    # the lattice changes the map: zeroing one tap projection's conv changes alpha
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = g(x)[1]
        g.explainer.ala.tap_proj[1].conv.weight.zero_()
        g.explainer.ala.tap_proj[1].conv.bias.zero_()
        after = g(x)[1]
    assert not torch.allclose(before, after)


def test_presets_are_the_papers_table_1():
    assert PRESETS["cub"] | {} == {"dim": 64, "depth": 8, "heads": 4, "input_size": 384}
    assert (PRESETS["imagenet-s"]["dim"], PRESETS["imagenet-s"]["depth"], PRESETS["imagenet-s"]["heads"]) == (240, 8, 6)
    g = build_graph(vit(), ExplainerConfig("ala", {"num_classes": 2}), (32, 32))
    layer = g.explainer.ala.layers[0]
    assert len(g.explainer.ala.layers) == 8 and layer.heads == 4 and layer.qkv.in_features == 64


@pytest.mark.parametrize("make, size, expect", [(vit, 32, "blocks.3.attn.qkv"), (cnn, 64, "blocks.6.0.conv_pw")])
def test_lora_sits_on_the_last_block_and_merges_exactly(make, size, expect):
    g = ala_graph(make(), size).double().eval()
    assert expect in g.explainer.lora_targets
    randomise_lora(g)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = g(x)
        n = g.backbone.merge_deltas()
        merged = g(x)
    assert n == len(g.explainer.lora_targets) > 0
    assert not any(parametrize.is_parametrized(m) for m in g.backbone.modules())  # no LoRA op left
    assert torch.allclose(unmerged[0], merged[0], rtol=0, atol=1e-10)
    assert torch.allclose(unmerged[1], merged[1], rtol=0, atol=1e-10)


def test_lora_changes_the_encoder_output_and_rank_0_has_none():
    g = ala_graph(vit(), 32).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = g(x)[0]
        randomise_lora(g)
        after = g(x)[0]
    assert not torch.allclose(before, after)
    g0 = ala_graph(vit(), 32, lora_rank=0)
    assert g0.explainer.lora_targets == [] and g0.backbone.delta_parameters() == []


def test_vit_encoder_runs_at_the_graphs_size_with_an_interpolated_position_embedding():
    bb = vit(img_size=32)
    pos = bb.model.pos_embed.detach().clone()  # (1, 1 + 2*2, D)
    g = ala_graph(bb, 48)
    assert bb.model.pos_embed.shape[1] == 1 + 9
    assert torch.equal(bb.model.pos_embed[:, :1], pos[:, :1])  # the class token's entry is kept
    logits, sal = g(torch.randn(1, 3, 48, 48))
    assert sal.shape == (1, 3, 3)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(InputError, match="multiple of the patch size 16"):
        ala_graph(vit(), 40, patch=8)  # the ViT cannot be interpolated to 40 (its patch is 16)
    with pytest.raises(InputError, match="multiple of the adapter's patch"):
        ala_graph(cnn(), 72)
    with pytest.raises(UnsupportedModelError, match=r"has 5 taps .* tap\(s\) \[9\] do not exist"):
        ala_graph(vit(), 32, taps=[0, 9], depth=4)
    with pytest.raises(InputError, match="unknown preset"):
        ala_graph(vit(), 32, preset="birds")
    with pytest.raises(InputError, match="taps 'wide' is not one of"):
        ala_graph(vit(), 32, taps="wide")
    with pytest.raises(InputError, match="adapter has 2 layers"):
        ala_graph(vit(), 32, depth=2)
    with pytest.raises(InputError, match="lora_rank"):
        ala_graph(vit(), 32, lora_rank=-1)


def test_explicit_tap_modules_for_an_encoder_without_a_known_sequence():
    bb = cnn()
    g = ala_graph(bb, 64, tap_modules=["bn1", "blocks.1", "blocks.3", "blocks.5"], taps=[0, 1], lora_rank=0)
    assert g.explainer.lattice_taps == ["bn1", "blocks.1"] and g.explainer.last_tap == "blocks.5"
    assert isinstance(g.explainer, ALA)
    with pytest.raises(UnsupportedModelError, match=r"has no module\(s\) \['blocks.99'\]"):
        ala_graph(cnn(), 64, tap_modules=["bn1", "blocks.99"], taps=[0], lora_rank=0)


# open_clip's ViT-B-16 layout (the paper's encoder) with a tiny tower, made for 64 px
OPEN_CLIP_TINY = {
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 3, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    "embed_dim": 32,
}


def test_open_clip_encoder_at_a_larger_size_with_lora_on_its_attention_merges_and_exports(tmp_path):
    """The paper's setting in small: CLIP's ViT-B-16 code, run above its native size (the paper: 224 -> 384), LoRA on
    the last block's nn.MultiheadAttention q and v rows; merged == unmerged in float64; ONNX parity in float32."""
    bb = random_backbone("open_clip", "ViT-B-16", 4, **OPEN_CLIP_TINY)
    out_proj = bb.model.visual.transformer.resblocks[-1].attn.out_proj.weight.detach().clone()
    g = ala_graph(bb, 96, taps="paper", depth=4)
    assert bb.native_input_size == (96, 96) and g.explainer.grid == (6, 6)
    assert g.explainer.lattice_taps[0] == "visual.ln_pre" and g.explainer.last_tap == "visual.transformer.resblocks.2"
    assert g.explainer.lora_targets == ["visual.transformer.resblocks.2.attn"]
    randomise_lora(g)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    g64 = g.double().eval()
    with torch.no_grad():
        before = g64(x.double())
        g64.backbone.merge_deltas()
        after = g64(x.double())
    assert torch.allclose(before[0], after[0], rtol=0, atol=1e-10) and torch.allclose(before[1], after[1], atol=1e-10)
    # the peft bug merged the out_proj delta twice: here out_proj has no delta and stays as it was
    assert torch.equal(bb.model.visual.transformer.resblocks[-1].attn.out_proj.weight.float(), out_proj)
    g32 = g64.float()
    pytest.importorskip("onnxruntime")
    from engine.backends import get_backend_class

    backend = get_backend_class("onnxruntime")(g32, input_size=(96, 96))
    with torch.no_grad():
        want = g32(x)
    logits, sal = backend.infer(x.numpy())
    assert abs(logits - want[0].numpy()).max() <= 1e-4 and abs(sal - want[1].numpy()).max() <= 1e-4
    with pytest.raises(InputError, match="not a positive multiple of the patch size 16"):
        ala_graph(random_backbone("open_clip", "ViT-B-16", 4, **OPEN_CLIP_TINY), 100, patch=20)
