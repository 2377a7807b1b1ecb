"""ReciproCAM family: the fast form is exact (checked against the batched reference) on every supported library."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.backbones import build_backbone
from engine.config import BackboneConfig, ExplainerConfig, PreprocessConfig
from engine.errors import InputError, UnsupportedModelError
from engine.explainers.reciprocam import spatial_masks
from engine.graph import build_graph
from engine.preprocess import Preprocessor, load_image
from engine.testing import random_backbone

TOL = 1e-4  # fp32 tolerance of the issue: logits and normalised maps


def _pair(backbone, method, **options):
    fast = build_graph(backbone, ExplainerConfig(method, {**options, "impl": "fast"}))
    ref = build_graph(backbone, ExplainerConfig(method, {**options, "impl": "reference"}))
    return fast, ref


def _inputs(batch=2, seed=5, dtype=torch.float32, size=224):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _size(key: str) -> int:
    return PREFIX_MODELS[key][1].get("img_size", 224)


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


@pytest.fixture(scope="module")
def vit_tiny():
    """One seeded ViT-Tiny for the module (tests that change it work on a copy)."""
    return random_backbone("timm", "vit_tiny_patch16_224")


@pytest.mark.parametrize("options", VIT_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_vit_fast_matches_reference_timm_options(vit_tiny, options):
    fast, ref = _pair(vit_tiny, "vit-reciprocam", **options)
    _compare(fast, ref, _inputs())


def test_vit_fast_is_exact_in_float64(vit_tiny):
    """In float64 the algebra shows itself: agreement to ~1e-12, not just within float32 noise."""
    bb = copy.deepcopy(vit_tiny).double()
    for options in VIT_OPTIONS:
        fast, ref = _pair(bb, "vit-reciprocam", **options)
        x = _inputs(batch=1, dtype=torch.float64)
        with torch.no_grad():
            lf, sf = fast(x)
            lr, sr = ref(x)
        assert (lf - lr).abs().max().item() < 1e-10
        assert (sf - sr).abs().max().item() < 1e-9, options


@pytest.mark.parametrize(
    ("library", "name"),
    # timm's VisionTransformer is checked on ViT-Ti above (every option, float64) and on DeiT-B below; torchvision's
    # on vit_b_32 and open_clip's on ViT-B-32 (the code of their /16 models, with 4x fewer tokens)
    [("torchvision", "vit_b_32"), ("open_clip", "ViT-B-32")],
)
def test_vit_fast_matches_reference_other_libraries(library, name):
    bb = random_backbone(library, name)
    fast, ref = _pair(bb, "vit-reciprocam")
    _compare(fast, ref, _inputs(batch=1), target=torch.tensor([7]))


# --- ViTs with several prefix tokens -------------------------------------------------------------------------------
# timm's distilled DeiT-B (built at img_size=112: a 7x7 grid, so the float64 reference is 49 copies of 51 tokens):
# the head reads the class and the distillation token (the mean of its two heads). DINOv2-S
# with 4 registers (1 class + 4 register tokens, LayerScale in the blocks): the head reads the class token only; the
# registers are masked with cls_weight like every prefix token, but not read. DINOv2's default img_size is 518 (a 37x37
# grid); it is built at img_size=112 (an 8x8 grid) so that a float64 reference (64 copies of 69 tokens) stays cheap:
# the algebra does not depend on the grid's size.
PREFIX_MODELS = {
    "deit_distilled": ("deit_base_distilled_patch16_224", {"img_size": 112}, 2, (0, 1)),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {"img_size": 112}, 5, (0,)),
}
PREFIX_CASES = [
    pytest.param("deit_distilled", {}, id="deit_distilled-default"),
    pytest.param("deit_distilled", {"cls_weight": 0.5, "residual": "masked"}, id="deit_distilled-cls0.5-masked"),
    pytest.param("dinov2_reg4", {}, id="dinov2_reg4-default"),
    pytest.param("dinov2_reg4", {"cls_weight": 0.0, "residual": "masked"}, id="dinov2_reg4-cls0-masked"),
]


@pytest.fixture(scope="module")
def prefix_vits():
    """Each backbone built once per module (float32, and a float64 copy), and each float64 reference run once: it is
    the oracle of both the float64 and the float32 checks."""
    built, refs = {}, {}

    def backbones(key):
        if key not in built:
            name, kwargs, _, _ = PREFIX_MODELS[key]
            bb = random_backbone("timm", name, **kwargs)
            built[key] = (bb, copy.deepcopy(bb).double())
        return built[key]

    def reference(key, options):
        k = (key, tuple(sorted(options.items())))
        if k not in refs:
            ref = build_graph(backbones(key)[1], ExplainerConfig("vit-reciprocam", {**options, "impl": "reference"}))
            with torch.no_grad():
                refs[k] = ref(_inputs(batch=1, size=_size(key)).double())  # the float32 test's input, exactly
        return refs[k]

    return SimpleNamespace(backbones=backbones, reference=reference)


@pytest.mark.parametrize(("key", "options"), PREFIX_CASES)
def test_prefix_tokens_fast_is_exact_in_float64(prefix_vits, key, options):
    _, bb = prefix_vits.backbones(key)
    _, _, num_prefix, read = PREFIX_MODELS[key]
    parts = bb.vit_parts()
    assert parts.num_prefix_tokens == num_prefix and parts.read_tokens == read
    assert parts.fast_unsupported_reason is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # impl='auto' takes the fast form here, without a warning
        fast = build_graph(bb, ExplainerConfig("vit-reciprocam", options))
    assert fast.explainer.impl == "fast"
    x = _inputs(batch=1, size=_size(key)).double()
    with torch.no_grad():
        lf, sf = fast(x)
        plain = bb(x)
    lr, sr = prefix_vits.reference(key, options)
    assert (lf - lr).abs().max().item() <= 1e-9
    assert (lf - plain).abs().max().item() <= 1e-9, "copy 0 must reproduce the plain classifier"
    assert (sf - sr).abs().max().item() <= 1e-9
    assert sf.amax().item() == pytest.approx(1.0) and sf.amin().item() == pytest.approx(0.0)


@pytest.mark.parametrize(("key", "options"), PREFIX_CASES)
def test_prefix_tokens_fast_float32(prefix_vits, key, options):
    """float32 fast form against the exact (float64) reference: logits within TOL; maps relative to the range of the
    target probability across copies (PITFALLS.md, "Float32 map tolerance")."""
    bb32, bb64 = prefix_vits.backbones(key)
    fast = build_graph(bb32, ExplainerConfig("vit-reciprocam", {**options, "impl": "fast"}))
    x = _inputs(batch=1, size=_size(key))
    with torch.no_grad():
        lf, sf = fast(x)
        copies32 = fast.explainer.copy_logits(bb32, x)
        # every copy's exact logits: the float64 fast form, equal to the reference to ~1e-14 (test above)
        exact = build_graph(bb64, ExplainerConfig("vit-reciprocam", {**options, "impl": "fast"}))
        copies = exact.explainer.copy_logits(bb64, x.double())
    lr, sr = prefix_vits.reference(key, options)
    assert (lf.double() - lr).abs().max().item() <= TOL
    assert torch.allclose(copies[:, 0], lr, atol=1e-9, rtol=0)
    assert (copies32.double() - copies).abs().max().item() <= TOL, "every masked copy's logits, not only copy 0"
    # a logit error e moves each probability by at most ~2e relatively, so a map (min-max normalised probabilities)
    # moves by at most ~4 * 2e * max(p) / range(p): the map gap in probability units is bounded by 8 TOL max(p)
    probs = copies[:, 1:].softmax(-1)[0, :, lr.argmax(-1)[0]]  # target probability of each masked copy (N,)
    spread = (probs.amax() - probs.amin()).item()
    gap = (sf.double() - sr).abs().max().item()
    assert spread > 0
    assert gap * spread <= 8 * TOL * probs.amax().item(), (gap, spread, probs.amax().item())


def test_vit_explicit_target_and_default(vit_tiny):
    fast, ref = _pair(vit_tiny, "vit-reciprocam")
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


def _auto_falls_back_to_reference(bb, method, reason, x):
    """impl='fast' raises; impl='auto' (the default) warns exactly once and gives the reference's result."""
    with pytest.raises(UnsupportedModelError, match="impl='reference'"):
        build_graph(bb, ExplainerConfig(method, {"impl": "fast"}))
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        auto = build_graph(bb, ExplainerConfig(method))
        la, sa = auto(x)
        la2, _ = auto(x)  # running it again does not warn again
    ours = [w for w in caught if "impl='auto'" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, UserWarning), [str(w.message) for w in caught]
    assert f"{bb.library}/{bb.name}" in str(ours[0].message) and reason in str(ours[0].message)
    assert auto.explainer.impl == "reference" and auto.explainer.options_dict()["impl"] == "auto"
    ref = build_graph(bb, ExplainerConfig(method, {"impl": "reference"}))
    with torch.no_grad():
        lr, sr = ref(x)
        plain = bb(x)
    assert torch.equal(la, lr) and torch.equal(la2, lr) and torch.equal(sa, sr)
    assert torch.allclose(la, plain, atol=TOL)
    return sa


def test_vit_avg_pool_head_auto_falls_back_to_reference():
    """A head that averages all tokens has no exact fast form: impl='auto' runs the reference, with one warning."""
    bb = random_backbone("timm", "vit_tiny_patch16_224", global_pool="avg", class_token=True)
    assert bb.vit_parts().head_prefix is None
    sal = _auto_falls_back_to_reference(bb, "vit-reciprocam", "pools all tokens", _inputs(batch=1))
    assert sal.shape == (1, 14, 14)


def test_cnn_auto_picks_fast_where_the_head_is_known(lite0):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning where the fast form applies
        g = build_graph(lite0, ExplainerConfig("reciprocam"))
    assert g.explainer.impl == "fast" and g.explainer.options.impl == "auto"
    # timm's MobileNetV3 pools before its head conv: not a head the fast form knows
    mnv3 = random_backbone("timm", "mobilenetv3_small_050")
    assert mnv3.cnn_head_parts() is None
    _auto_falls_back_to_reference(mnv3, "reciprocam", "not of a known", _inputs(batch=1))


def test_vit_explainer_rejects_cnn_and_bad_options(vit_tiny):
    cnn = random_backbone("torchvision", "resnet50")
    with pytest.raises(UnsupportedModelError, match="vit"):
        build_graph(cnn, ExplainerConfig("vit-reciprocam"))
    vit = vit_tiny
    with pytest.raises(InputError, match="unknown option"):
        build_graph(vit, ExplainerConfig("vit-reciprocam", {"kernal": "dirac"}))
    with pytest.raises(InputError, match="residual"):
        build_graph(vit, ExplainerConfig("vit-reciprocam", {"residual": "half"}))
    with pytest.raises(InputError, match="impl"):
        build_graph(vit, ExplainerConfig("vit-reciprocam", {"impl": "quick"}))
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
