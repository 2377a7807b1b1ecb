"""ReciproCAM family: the fast form is exact (checked against the batched reference) on every supported library."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine.testing import random_backbone

from engine.backbones import build_backbone
from engine.config import BackboneConfig, ExplainerConfig, PreprocessConfig
from engine.errors import InputError, UnsupportedModelError
from engine.explainers.reciprocam import spatial_masks
from engine.graph import build_graph
from engine.preprocess import Preprocessor, load_image

TOL = 1e-4  # fp32 tolerance of the issue: logits and normalised maps


def _pair(backbone, method, **options):
    fast = build_graph(backbone, ExplainerConfig(method, {**options, "impl": "fast"}))
    ref = build_graph(backbone, ExplainerConfig(method, {**options, "impl": "reference"}))
    return fast, ref


def _inputs(batch=2, seed=5, dtype=torch.float32):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _compare(fast, ref, x, target=None, tol=TOL, span=True):
    with torch.no_grad():
        lf, sf = fast(x, target)
        lr, sr = ref(x, target)
        plain = fast.backbone(x)
    assert sf.shape == sr.shape
    assert (lf - lr).abs().max().item() <= tol
    assert (lf - plain).abs().max().item() <= tol, "copy 0 must reproduce the plain classifier"
    assert (sf - sr).abs().max().item() <= tol
    if not span:
        return lf, sf
    # the maps are real maps, not constants: normalised to span [0, 1]
    assert torch.allclose(sf.amax(dim=(1, 2)), torch.ones(x.shape[0]), atol=1e-6)
    assert torch.allclose(sf.amin(dim=(1, 2)), torch.zeros(x.shape[0]), atol=1e-6)
    return lf, sf


def test_gaussian_masks_hand_checked():
    m = spatial_masks((3, 4), "gaussian").reshape(12, 3, 4)
    assert m.shape == (12, 3, 4)
    centre = m[1 * 4 + 1]  # position (1, 1): the full kernel
    expected = torch.zeros(3, 4)
    expected[0:3, 0:3] = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    assert torch.equal(centre, expected)
    corner = m[0]  # position (0, 0): truncated, not renormalised
    assert corner[0, 0] == 4 / 16 and corner[0, 1] == 2 / 16 and corner[1, 1] == 1 / 16
    assert corner.sum() == pytest.approx(9 / 16)
    assert torch.equal(spatial_masks((2, 2), "dirac"), torch.eye(4))
    with pytest.raises(InputError, match="gaussian"):
        spatial_masks((2, 2), "box")


VIT_OPTIONS = [
    {},
    {"kernel": "dirac"},
    {"cls_weight": 0.0},
    {"cls_weight": 0.0, "residual": "masked"},
    {"kernel": "dirac", "cls_weight": 0.0, "residual": "masked"},
    {"residual": "masked"},
]


@pytest.mark.parametrize("options", VIT_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_vit_fast_matches_reference_timm_options(options):
    bb = random_backbone("timm", "vit_tiny_patch16_224")
    fast, ref = _pair(bb, "vit-reciprocam", **options)
    _compare(fast, ref, _inputs())


def test_vit_fast_is_exact_in_float64():
    """In float64 the algebra shows itself: agreement to ~1e-12, not just within float32 noise."""
    bb = random_backbone("timm", "vit_tiny_patch16_224").double()
    for options in VIT_OPTIONS:
        fast, ref = _pair(bb, "vit-reciprocam", **options)
        x = _inputs(dtype=torch.float64)
        with torch.no_grad():
            lf, sf = fast(x)
            lr, sr = ref(x)
        assert (lf - lr).abs().max().item() < 1e-10
        assert (sf - sr).abs().max().item() < 1e-9, options


@pytest.mark.parametrize(
    ("library", "name"),
    [("timm", "vit_base_patch16_224"), ("torchvision", "vit_b_16"), ("open_clip", "ViT-B-16")],
)
def test_vit_b16_fast_matches_reference(library, name):
    bb = random_backbone(library, name)
    fast, ref = _pair(bb, "vit-reciprocam")
    _compare(fast, ref, _inputs(batch=1), target=torch.tensor([7]))


def test_vit_explicit_target_and_default():
    bb = random_backbone("timm", "vit_tiny_patch16_224")
    fast, ref = _pair(bb, "vit-reciprocam")
    x = _inputs(batch=3)
    with torch.no_grad():
        logits, s_pred = fast(x)
        pred = logits.argmax(-1)
        _, s_same = fast(x, pred)
        other = (pred + 1) % 1000
        _, s_other = fast(x, torch.tensor([-1, other[1].item(), -1]))
    assert torch.equal(s_pred, s_same), "-1 must mean the predicted class"
    assert torch.equal(s_other[0], s_pred[0]) and torch.equal(s_other[2], s_pred[2])
    assert (s_other[1] - s_pred[1]).abs().max() > 1e-3, "another target must give another map"
    _compare(fast, ref, x, torch.tensor([-1, other[1].item(), 3]))


def test_vit_avg_pool_head_needs_reference():
    bb = random_backbone("timm", "vit_tiny_patch16_224", global_pool="avg", class_token=True)
    with pytest.raises(UnsupportedModelError, match="impl='reference'"):
        build_graph(bb, ExplainerConfig("vit-reciprocam", {"impl": "fast"}))
    ref = build_graph(bb, ExplainerConfig("vit-reciprocam", {"impl": "reference"}))
    with torch.no_grad():
        logits, sal = ref(_inputs(batch=1))
        assert torch.allclose(logits, bb(_inputs(batch=1)), atol=TOL)
    assert sal.shape == (1, 14, 14)


def test_vit_explainer_rejects_cnn_and_bad_options():
    cnn = random_backbone("torchvision", "resnet50")
    with pytest.raises(UnsupportedModelError, match="vit"):
        build_graph(cnn, ExplainerConfig("vit-reciprocam"))
    vit = random_backbone("timm", "vit_tiny_patch16_224")
    with pytest.raises(InputError, match="unknown option"):
        build_graph(vit, ExplainerConfig("vit-reciprocam", {"kernal": "dirac"}))
    with pytest.raises(InputError, match="residual"):
        build_graph(vit, ExplainerConfig("vit-reciprocam", {"residual": "half"}))
    with pytest.raises(UnsupportedModelError, match="unknown explanation method"):
        build_graph(vit, ExplainerConfig("grad-cam"))


@pytest.fixture(scope="module")
def lite0():
    return build_backbone(BackboneConfig("timm", "tf_efficientnet_lite0", weights="package"))


@pytest.fixture(scope="module")
def lite0_photos(example_images):
    pre = Preprocessor(PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    batch, _ = pre([load_image(p) for p in example_images])
    return torch.from_numpy(batch)


def test_lite0_real_weights_classify_the_examples(lite0, lite0_photos):
    with torch.no_grad():
        pred = lite0(lite0_photos).argmax(-1).tolist()
    # egyptian_cat, golden_retriever, kahikatea (out of distribution: not checked), orange, wolf
    assert pred[0] in (281, 282, 285) and pred[1] == 207 and pred[3] == 950 and pred[4] in (269, 270, 271, 272)


@pytest.mark.parametrize(
    "options", [{}, {"kernel": "dirac"}, {"layer": "pre_head"}, {"layer": "pre_head", "kernel": "dirac"}], ids=str
)
def test_cnn_fast_matches_reference_lite0_real_weights(lite0, lite0_photos, options):
    fast, ref = _pair(lite0, "reciprocam", **options)
    # pre_head masks the 320-channel map before conv_head+BN+ReLU6: the zeroed positions dominate every copy, so on
    # some photos all copies score the same (a constant map, returned as zeros). The algebra is still checked exactly.
    _, sal = _compare(fast, ref, lite0_photos, span=options.get("layer") != "pre_head")
    assert (sal.amax(dim=(1, 2)) == 1).sum() >= 2


def test_cnn_fast_uses_few_distinct_mask_values(lite0):
    g = build_graph(lite0, ExplainerConfig("reciprocam"))
    assert g.explainer.grid == (7, 7)
    assert g.explainer.values.tolist() == [0.0, 1 / 16, 2 / 16, 4 / 16, 1.0]
    # the one-hot rebuilds every mask exactly from the distinct values
    rebuilt = (g.explainer.onehot * g.explainer.values).sum(-1)
    assert torch.equal(rebuilt, g.explainer.masks)


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "mobilenet_v2"])
def test_cnn_fast_matches_reference_torchvision(name):
    bb = random_backbone("torchvision", name)
    fast, ref = _pair(bb, "reciprocam")
    _compare(fast, ref, _inputs(batch=2), torch.tensor([-1, 11]))


def test_cnn_saliency_highlights_the_object(lite0, lite0_photos):
    """On the real wolf photo the map peaks inside the central region where the wolf's head is, not at a border."""
    g = build_graph(lite0, ExplainerConfig("reciprocam"))
    with torch.no_grad():
        _, sal = g(lite0_photos[4:5])
    peak = np.unravel_index(sal[0].argmax().item(), (7, 7))
    assert 1 <= peak[0] <= 4 and 2 <= peak[1] <= 4, peak


def test_fused_mobilenet_v2_real_weights(tmp_path, example_images, shared_data):
    """The BatchNorm-folded MobileNetV2 of ../shared/weights loads through `create --weights` and classifies."""
    from engine import Engine
    from engine.create import create_artifact

    weights = shared_data.parent / "weights" / "mobilenet_v2_imagenet_fused.safetensors"
    if not weights.is_file():
        pytest.skip("../shared/weights/mobilenet_v2_imagenet_fused.safetensors is not present")
    art = create_artifact(
        "reciprocam", "torchvision/mobilenet_v2", tmp_path / "mnv2", weights=weights, backbone_kwargs={"fused": True}
    )
    assert art.backbone.kwargs == {"fused": True}
    engine = Engine.load(art.path, backend="torch")
    got = {p.stem: engine.explain(p).class_id for p in example_images}
    # the weights' README: the wolf photo gives "white or timber wolf / Eskimo dog" (248 Eskimo dog, 250 husky)
    assert got["golden_retriever"] == 207 and got["orange"] == 950 and got["wolf"] in (248, 250, 269, 270, 271, 272)
    bb = engine.backend.graph.backbone
    fast, ref = _pair(bb, "reciprocam")
    _compare(fast, ref, _inputs(batch=2))
