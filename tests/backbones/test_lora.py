"""The backbone's slot for trainable deltas (LoRA): where it applies, merged == unmerged, export has no LoRA op,
the deltas travel with the explainer head through an artifact."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
from torch import nn

from engine.artifact import HEAD_WEIGHTS, load_artifact, new_manifest, write_artifact
from engine.backbones import build_backbone
from engine.config import BackboneConfig, ExplainerConfig, PreprocessConfig
from engine.errors import ArtifactError, InputError, UnsupportedModelError
from engine.explainers import register_explainer
from engine.explainers.tame import TTAME
from engine.graph import build_graph, graph_from_artifact, save_graph
from engine.state import save_tensors
from engine.testing import random_backbone

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def _randomise_deltas(adapter, seed: int = 0, scale: float = 0.05) -> None:
    """LoRA's B starts at zero (delta 0): give every delta a non-zero value so the tests can see it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.delta_parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


CASES = [
    # (library, name, target, parts, input size)
    ("timm", "vit_tiny_patch16_224", "blocks.11.attn.qkv", None, 224),  # a plain Linear (timm's packed qkv)
    ("open_clip", "ViT-S-32", "visual.transformer.resblocks.11.attn", ["q", "v"], 224),  # MHA's packed in_proj
    ("timm", "tf_efficientnet_lite0", "conv_head", None, 64),  # a 1x1 conv
]


@pytest.mark.parametrize(("library", "name", "target", "parts", "size"), CASES, ids=[c[1] for c in CASES])
def test_merged_equals_unmerged_and_leaves_a_plain_model(library, name, target, parts, size):
    adapter = random_backbone(library, name).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = adapter(x)
        adapter.add_lora([target], rank=4, alpha=8.0, parts=parts)
        assert torch.equal(adapter(x), plain), "B starts at zero: a fresh delta changes nothing"
        _randomise_deltas(adapter)
        adapted = adapter(x)
        assert (adapted - plain).abs().max() > 1e-3, "the delta acts"
        keys = set(adapter.delta_state_dict())
        want_parts = parts or ["weight"]
        assert keys == {f"{target}.{p}.lora_{ab}" for p in want_parts for ab in "ab"}
        base = adapter.base_state_dict()
        assert not any("lora" in k or "parametrizations" in k for k in base)
        assert adapter.merge_deltas() == 1
        merged = adapter(x)
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-10)
    assert not adapter.delta_parameters() and not adapter.delta_state_dict()
    assert not any("parametrizations" in k for k in adapter.state_dict())
    assert all(torch.equal(adapter.state_dict()[k], v) for k, v in base.items()), "base_state_dict = the merged model"


def test_only_the_named_rows_of_an_attention_change():
    adapter = random_backbone("open_clip", "ViT-S-32")
    mha = adapter.model.visual.transformer.resblocks[11].attn
    before = mha.in_proj_weight.detach().clone()
    adapter.add_lora(["visual.transformer.resblocks.11.attn"], rank=2)  # default parts: q and v
    _randomise_deltas(adapter)
    after = mha.in_proj_weight.detach()
    d = mha.embed_dim
    assert torch.equal(after[d : 2 * d], before[d : 2 * d]), "k keeps its weight"
    assert not torch.equal(after[:d], before[:d]) and not torch.equal(after[2 * d :], before[2 * d :])
    assert isinstance(mha, nn.MultiheadAttention), "the module keeps its class (adapters and fast forms see it)"


def test_bad_targets_are_refused():
    adapter = random_backbone("timm", "vit_tiny_patch16_224")
    with pytest.raises(UnsupportedModelError, match=r"closest names.*blocks\.11\.attn\.qkv"):
        adapter.add_lora(["blocks.11.attn.qkvv"])
    with pytest.raises(UnsupportedModelError, match="LoRA applies to nn.Linear"):
        adapter.add_lora(["blocks.11.norm1"])
    with pytest.raises(InputError, match="rank"):
        adapter.add_lora(["blocks.11.attn.qkv"], rank=0)
    adapter.add_lora(["blocks.11.attn.qkv"])
    with pytest.raises(InputError, match="already has"):
        adapter.add_lora(["blocks.11.attn.qkv"])


@register_explainer("test-tame-lora")
class _TameWithLoRA(TTAME):
    """T-TAME plus a LoRA delta on the backbone: a test subject for the slot (ALA will be the real user)."""

    @dataclasses.dataclass
    class Options(TTAME.Options):
        lora: list[str] = dataclasses.field(default_factory=lambda: ["blocks.11.attn.qkv"])

    def __init__(self, options, backbone, input_size):
        super().__init__(options, backbone, input_size)
        backbone.add_lora(options.lora, rank=2)

    def trainable_parameters(self, backbone):
        return [*super().trainable_parameters(backbone), *backbone.delta_parameters()]


def _write(graph, tmp_path, name, head: bool):
    bb = BackboneConfig("timm", "vit_tiny_patch16_224", weights="random" if head else "artifact")
    ex = ExplainerConfig("test-tame-lora", graph.explainer.options_dict())
    manifest = new_manifest(bb, ex, PreprocessConfig(), None)
    if head:
        path = save_tensors(graph.explainer.head_state_dict(graph.backbone), tmp_path / HEAD_WEIGHTS)
        return write_artifact(manifest, tmp_path / name, {HEAD_WEIGHTS: path})
    return write_artifact(manifest, tmp_path / name, {"weights.safetensors": save_graph(graph, tmp_path / "w.st")})


def test_deltas_travel_with_the_head_and_merge_at_export(tmp_path):
    adapter = build_backbone(BackboneConfig("timm", "vit_tiny_patch16_224", weights="random"))  # seed 0, as loading
    graph = build_graph(adapter, ExplainerConfig("test-tame-lora", {}))
    _randomise_deltas(graph.backbone)
    head = graph.explainer.head_state_dict(graph.backbone)
    assert {k for k in head if k.startswith("backbone.lora.")} == {
        "backbone.lora.blocks.11.attn.qkv.weight.lora_a",
        "backbone.lora.blocks.11.attn.qkv.weight.lora_b",
    }
    assert len(graph.explainer.trainable_parameters(graph.backbone)) == len(list(graph.explainer.parameters())) + 2
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = graph(x)
    for name, as_head in (("head", True), ("whole", False)):  # head-only artifact, and whole-graph weights (merged)
        art = _write(graph, tmp_path, name, as_head)
        with torch.no_grad():
            got = graph_from_artifact(load_artifact(art.path))(x)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
    # a head whose deltas do not fit is refused, naming them
    bad = {k: v for k, v in head.items() if not k.endswith("lora_b")}
    manifest = load_artifact(tmp_path / "head").manifest
    save_tensors(bad, tmp_path / HEAD_WEIGHTS)
    broken = write_artifact(manifest, tmp_path / "broken", {HEAD_WEIGHTS: tmp_path / HEAD_WEIGHTS})
    with pytest.raises(ArtifactError, match=r"LoRA deltas: missing \['blocks.11.attn.qkv.weight.lora_b'\]"):
        graph_from_artifact(broken)
    if HAS_ORT:
        import onnx

        from engine.backends import get_backend_class
        from engine.export import export_artifact

        exported = export_artifact(load_artifact(tmp_path / "head"), tmp_path / "onnx", ("onnx",))
        model = onnx.load(str(exported.file("model.onnx")))
        names = [i.name for i in model.graph.initializer] + [n.name for n in model.graph.node]
        assert not any("lora" in n or "parametrizations" in n for n in names), "the exported graph has no LoRA op"
        logits, sal = get_backend_class("onnxruntime")(exported).infer(x.numpy())
        assert abs(logits - want[0].numpy()).max() <= 1e-4 and abs(sal - want[1].numpy()).max() <= 1e-4


# --- LoRA on one encoder block (ALA: the last block's attention q and v), fused qkv rows -----------------------------

BLOCK_CASES = [
    # kind (a tiny ViT of conftest.tiny_vit, or library/name of a random CNN), default targets
    ("timm", [("blocks.2.attn.qkv", ["q", "v"])]),
    ("open_clip", [("visual.transformer.resblocks.2.attn", ["q", "v"])]),
    ("torchvision", [("encoder.layers.encoder_layer_2.self_attention", ["q", "v"])]),
    ("timm/tf_efficientnet_lite0", [("blocks.6.0.conv_pw", None), ("blocks.6.0.conv_pwl", None)]),
    ("torchvision/resnet18", [("layer4.0.downsample.0", None)]),
]


def _block_subject(kind, tiny):
    if "/" in kind:  # a CNN: seeded random weights (no LayerNorms or ViT head to perturb)
        library, name = kind.split("/")
        return build_backbone(BackboneConfig(library, name, num_classes=10, weights="random"))
    return tiny(kind)


def _packed_weight(module: nn.Module) -> torch.Tensor:
    return module.in_proj_weight if isinstance(module, nn.MultiheadAttention) else module.weight


@pytest.mark.parametrize(("kind", "targets"), BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_block_lora_merges_exactly_onto_the_named_rows(kind, targets, tiny):
    adapter = _block_subject(kind, tiny).double()
    assert adapter.lora_targets() == targets
    size = {"torchvision": 224, "timm": 64, "open_clip": 64}.get(kind, 32)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    modules = dict(adapter.model.named_modules())
    before = {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}
    with torch.no_grad():
        plain = adapter(x)
        assert adapter.add_lora_block(rank=2, alpha=4.0) == [t for t, _ in targets]
        _randomise_deltas(adapter)
        adapted = adapter(x)
        assert (adapted - plain).abs().max() > 1e-4, "the deltas act"
        state = adapter.delta_state_dict()
        parts = {t: p or ["weight"] for t, p in targets}
        assert set(state) == {f"{t}.{p}.lora_{ab}" for t, ps in parts.items() for p in ps for ab in "ab"}
        assert adapter.merge_deltas() == len(targets)
        merged = adapter(x)
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-10)
    after = adapter.model.state_dict()
    assert set(after) == set(before), "a plain model again"
    changed = set()
    for target, target_parts in parts.items():
        weight = _packed_weight(modules[target])
        key = f"{target}.in_proj_weight" if isinstance(modules[target], nn.MultiheadAttention) else f"{target}.weight"
        changed.add(key)
        w0, w = before[key].reshape(weight.shape[0], -1), after[key].reshape(weight.shape[0], -1)
        d = w.shape[0] // 3 if target_parts != ["weight"] else w.shape[0]
        rows = {p: slice(i * d, (i + 1) * d) for i, p in enumerate("qkv")} if d != w.shape[0] else {}
        for part in target_parts:  # W = W0 + (alpha / r) B A on exactly these rows
            delta = 2.0 * state[f"{target}.{part}.lora_b"] @ state[f"{target}.{part}.lora_a"]
            sl = rows.get(part, slice(None))
            torch.testing.assert_close(w[sl], w0[sl] + delta, rtol=0, atol=1e-12)
        for part in set(rows) - set(target_parts):
            assert torch.equal(w[rows[part]], w0[rows[part]]), f"{target}: the {part} rows keep their weights"
    for key in set(before) - changed:  # out_proj / attn.proj, biases and every other weight: untouched
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("kind", ["timm", "open_clip", "timm/tf_efficientnet_lite0"])
def test_block_deltas_round_trip_through_their_state(kind, tiny):
    size = 32 if "/" in kind else 64
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))
    source, target = _block_subject(kind, tiny), _block_subject(kind, tiny)
    source.add_lora_block(rank=2)
    _randomise_deltas(source)
    target.add_lora_block(rank=2)
    assert target.load_delta_state_dict(source.delta_state_dict()) is None
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    other = _block_subject(kind, tiny)
    other.add_lora_block(rank=4)
    assert "other shapes" in other.load_delta_state_dict(source.delta_state_dict())


def test_named_blocks_and_what_is_refused(tiny):
    vit = tiny("timm")
    assert vit.lora_targets("blocks.0") == [("blocks.0.attn.qkv", ["q", "v"])]
    with pytest.raises(UnsupportedModelError, match=r"'blocks.0.attn' is not an encoder block.*0 \.\.\. blocks.2"):
        vit.lora_targets("blocks.0.attn")
    with pytest.raises(UnsupportedModelError, match=r"no block 'blocks.9' for LoRA; closest names: \[.*'blocks.0'"):
        vit.lora_targets("blocks.9")
    cnn = _block_subject("timm/tf_efficientnet_lite0", tiny)
    assert cnn.lora_targets("blocks.0") == [("blocks.0.0.conv_pw", None)]  # depthwise-separable: the 1x1 conv
    with pytest.raises(UnsupportedModelError, match=r"block 'bn2' .* has no 1x1 nn.Conv2d .*have: \['blocks.0',"):
        cnn.lora_targets("bn2")


def test_fused_qkv_linear_takes_parts():
    adapter = random_backbone("timm", "vit_tiny_patch16_224", num_classes=10, img_size=32, depth=1)
    qkv = adapter.model.blocks[0].attn.qkv
    before = qkv.weight.detach().clone()
    d = qkv.in_features
    with pytest.raises(InputError, match=r"fused qkv nn.Linear \(out_features == 3 \* in_features\)"):
        adapter.add_lora([("blocks.0.mlp.fc1", ["q"])])  # a plain Linear (4d outputs)
    with pytest.raises(InputError, match="distinct names among"):
        adapter.add_lora(["blocks.0.attn.qkv"], parts=["q", "q"])
    with pytest.raises(InputError, match=r"\['x'\]"):
        adapter.add_lora([("blocks.0.attn.qkv", ["x"])])
    with pytest.raises(InputError, match=r"use \['head'\]"):
        adapter.add_lora("head")
    with pytest.raises(UnsupportedModelError, match="no module 'nope'"):
        adapter.add_lora(["blocks.0.mlp.fc2", "nope"])
    assert not adapter.delta_parameters(), "a refused call adds nothing"
    adapter.add_lora([("blocks.0.attn.qkv", ["k"])], rank=2)
    assert isinstance(adapter.model.blocks[0].attn.qkv, nn.Linear)
    _randomise_deltas(adapter)
    after = qkv.weight.detach()
    assert torch.equal(after[:d], before[:d]) and torch.equal(after[2 * d :], before[2 * d :])
    assert not torch.equal(after[d : 2 * d], before[d : 2 * d])
    assert set(adapter.delta_state_dict()) == {"blocks.0.attn.qkv.k.lora_a", "blocks.0.attn.qkv.k.lora_b"}
