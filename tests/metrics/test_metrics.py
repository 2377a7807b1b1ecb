"""engine.metrics: hand-checked values on tiny images and linear "models", batching, presets and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import engine.ops
from engine.errors import InputError
from engine.metrics import (
    METRICS,
    MetricResult,
    ad_ic,
    adcc,
    binarise,
    evaluate,
    id_score,
    insertion,
    insertion_deletion,
    list_presets,
    mean_iou,
    noisy_linear_impute,
    otsu_threshold,
    results_to_rows,
    road,
)
from engine.metrics.base import softmax64
from engine.metrics.insertion_deletion import rise_kernel
from engine.metrics.road import removal_mask

HALF = (0.5, 0.5, 0.5)  # mean = std = 0.5: raw 1 -> +1, raw 0.5 -> 0, raw 0 ("black") -> -1


def sig(z: float) -> float:
    """P(class 1) of a 2-class model with logits (0, z)."""
    return 1.0 / (1.0 + math.exp(-z))


def two_class_linear(w: np.ndarray):
    """logits = (0, w . flatten(x)) for a normalised batch x; w has one weight per input value."""
    wf = np.asarray(w, dtype=np.float64).reshape(-1)

    def model(x: np.ndarray) -> np.ndarray:
        z = x.reshape(len(x), -1).astype(np.float64) @ wf
        return np.stack([np.zeros_like(z), z], axis=1)

    return model


class CountingModel:
    """Wraps a model and records the batch size of every call."""

    def __init__(self, model) -> None:
        self.model = model
        self.sizes: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.ndim == 4
        self.sizes.append(len(x))
        return self.model(x)


# ---------------------------------------------------------------------------------------------------------------
# A 2x2 RGB image, the same value in every channel; the model sees each pixel through w' = 3 * w per channel.
# raw [1, 0.5, 1, 0.75] -> normalised [1, 0, 1, 0.5]; per-pixel weights w' = [1, 2, -1, 0.5] (summed over channels).
# Saliency [0.9, 0.1, 0.5, 0.7] -> order p0, p3, p2, p1. Logit of class 1 = sum_j w'_j x_j.
# Insertion (black = -1 elsewhere): k=0: -2.5, k=1: -0.5, k=2: 0.25, k=3: -1.75, k=4: 0.25 (the original).
# Deletion (black on the top k):   k=0: 0.25, k=1: -1.75, k=2: -2.5, k=3: -0.5, k=4: -2.5.
# The original's logit is 0.25 > 0, so the predicted class is 1.
# ---------------------------------------------------------------------------------------------------------------
RAW_2x2 = np.broadcast_to(np.array([1.0, 0.5, 1.0, 0.75], np.float32).reshape(1, 1, 2, 2), (1, 3, 2, 2)).copy()
SAL_2x2 = np.array([[[0.9, 0.1], [0.5, 0.7]]], np.float32)
W_2x2 = np.broadcast_to(np.array([1.0, 2.0, -1.0, 0.5]).reshape(1, 2, 2) / 3.0, (3, 2, 2))
INS = [sig(z) for z in (-2.5, -0.5, 0.25, -1.75, 0.25)]
DEL = [sig(z) for z in (0.25, -1.75, -2.5, -0.5, -2.5)]


def test_ovxai_preset_by_hand():
    # 30 steps on 4 pixels: counts int(i*4/30) = 0 (i=0..7), 1 (8..14), 2 (15..22), 3 (23..29), 4 (30)
    mult = [8, 7, 8, 7, 1]
    curve_i = np.repeat(INS, mult)
    res = id_score(two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="ovxai")
    np.testing.assert_allclose(res["insertion"].curves[0], curve_i, atol=1e-12)
    want_ins = (7.5 * INS[0] + 7 * INS[1] + 8 * INS[2] + 7 * INS[3] + 0.5 * INS[4]) / 30
    want_del = (7.5 * DEL[0] + 7 * DEL[1] + 8 * DEL[2] + 7 * DEL[3] + 0.5 * DEL[4]) / 30
    assert res["insertion"].value == pytest.approx(want_ins, abs=1e-12)
    assert res["deletion"].value == pytest.approx(want_del, abs=1e-12)
    assert res["id"].value == pytest.approx(want_ins - want_del, abs=1e-12)
    assert res["id"].preset == "ovxai" and res["insertion"].params["steps"] == 30
    # with an explicit target, class 0 is scored: P(class 0) = 1 - P(class 1)
    res0 = insertion(two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="ovxai", targets=[0])
    assert res0["insertion"].value == pytest.approx(1 - want_ins, abs=1e-12)


def test_keio_preset_by_hand_and_needs_targets():
    # 500 px per step on 4 pixels: counts (0, 4); AUC = trapezoid over x = (0, 1)
    model = two_class_linear(W_2x2)
    res = id_score(model, RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="keio", targets=np.array([1]))
    assert res["insertion"].value == pytest.approx((INS[0] + INS[4]) / 2, abs=1e-12)
    assert res["deletion"].value == pytest.approx((DEL[0] + DEL[4]) / 2, abs=1e-12)
    res0 = id_score(model, RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="keio", targets=np.array([0]))
    assert res0["insertion"].value == pytest.approx(1 - (INS[0] + INS[4]) / 2, abs=1e-12)
    with pytest.raises(InputError, match="targets"):
        id_score(model, RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="keio")


def test_keio_ties_enter_together():
    # 32x32 = 1024 px, all raw 1 (normalised +1), black -1. Saliency: 400 px = 2, 300 px = 1, 324 px = 0.
    # Nominal counts 0, 500, 1000, 1024 -> with ties: 0, 700 (the 500th largest is 1), 1024, 1024.
    h = w = 32
    sal = np.zeros((1, h, w), np.float32)
    flat = sal.reshape(-1)
    perm = np.random.default_rng(0).permutation(h * w)
    flat[perm[:400]] = 2.0
    flat[perm[400:700]] = 1.0
    raw = np.ones((1, 1, h, w), np.float32)
    wvec = np.full(h * w, 2.0 / (h * w))  # logit = 2 * mean(normalised pixels) = 2 * (2 e / 1024 - 1)
    res = id_score(two_class_linear(wvec), raw, sal, mean=(0.5,), std=(0.5,), preset="keio", targets=[1])
    eff = np.array([0, 700, 1024, 1024])
    x = np.array([0, 500, 1000, 1024]) / 1024
    ins = np.array([sig(2 * (2 * e / 1024 - 1)) for e in eff])
    dele = np.array([sig(2 * (2 * (1024 - e) / 1024 - 1)) for e in eff])
    np.testing.assert_allclose(res["insertion"].curves[0], ins, atol=1e-12)
    np.testing.assert_allclose(res["insertion"].extras["x"], x)
    assert res["insertion"].value == pytest.approx(np.trapezoid(ins, x), abs=1e-12)
    assert res["deletion"].value == pytest.approx(np.trapezoid(dele, x), abs=1e-12)


def test_rise_preset_by_hand():
    # 2x2: 224 px per step -> counts (0, 4); rise AUC of 2 points = (a0 + a1) / 2. Deletion -> zeros (normalised):
    # the last logit is 0 -> 0.5. Insertion starts from the zero-padded blur of the normalised image.
    model = two_class_linear(W_2x2)
    res = id_score(model, RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="rise", targets=[0])
    assert res["deletion"].value == pytest.approx((DEL[0] + 0.5) / 2, abs=1e-12)
    k = rise_kernel(11, 5.0)
    xn = np.array([[1.0, 0.0], [1.0, 0.5]])
    blur = np.array([[sum(k[5 + a - i, 5 + b - j] * xn[a, b] for a in range(2) for b in range(2)) for j in range(2)]
                     for i in range(2)])  # fmt: skip
    z0 = float((np.array([[1.0, 2.0], [-1.0, 0.5]]) * blur).sum())
    assert res["insertion"].value == pytest.approx((sig(z0) + INS[4]) / 2, abs=1e-6)
    assert res["insertion"].params["class"] == "predicted"  # targets=[0] is ignored: class 1 is predicted


def test_rise_blur_interior_and_steps():
    # 16x16 = 256 px -> counts 0, 224, 256. Only the 6x6 interior (rows/cols 5..10, where the 11x11 kernel lies fully
    # inside the image) carries weight; the image is constant, so the blur equals the image there.
    h = w = 16
    raw = np.full((1, 1, h, w), 0.75, np.float32)  # normalised 0.5
    wmap = np.zeros((h, w))
    wmap[5:11, 5:11] = 0.1
    sal = np.zeros((1, h, w), np.float32)
    sal[0, 5:11, 5:11] = 1.0
    res = id_score(two_class_linear(wmap), raw, sal, mean=(0.5,), std=(0.5,), preset="rise")
    z = 36 * 0.1 * 0.5
    np.testing.assert_allclose(res["insertion"].curves[0], [sig(z)] * 3, atol=1e-6)
    np.testing.assert_allclose(res["deletion"].curves[0], [sig(z), 0.5, 0.5], atol=1e-12)
    assert res["deletion"].value == pytest.approx((sig(z) / 2 + 0.5 + 0.25) / 2, abs=1e-12)
    np.testing.assert_allclose(res["deletion"].extras["x"], [0, 224 / 256, 1])


def test_rise_kernel_matches_scipy_gkern():
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    np.testing.assert_allclose(rise_kernel(11, 5.0), ndimage.gaussian_filter(delta, 5), atol=1e-15)
    assert rise_kernel().sum() == pytest.approx(1.0)


@pytest.mark.parametrize(("preset", "batch_size"), [("ovxai", 8), ("rise", 5), ("keio", 32)])
def test_metric_feeds_batches(preset, batch_size):
    rng = np.random.default_rng(1)
    n, h, w = 3, 24, 24
    images = rng.random((n, 3, h, w)).astype(np.float32)
    sal = rng.random((n, 6, 6)).astype(np.float32)
    model = CountingModel(two_class_linear(rng.normal(size=3 * h * w)))
    res = id_score(model, images, sal, mean=HALF, std=HALF, preset=preset, targets=[0, 1, 0], batch_size=batch_size)
    steps = res["insertion"].curves.shape[1]
    total = 2 * n * steps
    pre = math.ceil(n / batch_size) if preset == "rise" else 0  # rise scores the predicted class: one more pass
    assert len(model.sizes) == pre + math.ceil(total / batch_size)
    perturbed = model.sizes[pre:]
    assert all(s == batch_size for s in perturbed[:-1]) and sum(perturbed) == total
    assert max(model.sizes) > 1
    assert res["id"].params["model_calls"] == len(model.sizes)


def test_other_metrics_feed_batches():
    rng = np.random.default_rng(2)
    n, h, w = 5, 8, 8
    images = rng.random((n, 3, h, w)).astype(np.float32)
    sal = rng.random((n, h, w)).astype(np.float32)
    base = two_class_linear(rng.normal(size=3 * h * w))
    m = CountingModel(base)
    ad_ic(m, images, sal, mean=HALF, std=HALF, batch_size=4)
    assert m.sizes == [4, 1] + [4] * 3 + [3]  # 5 originals, then 15 masked images (3 levels)
    m = CountingModel(base)
    road(m, images, sal, mean=HALF, std=HALF, batch_size=16, noise_std=0.0)
    assert m.sizes == [5] + [16] * 5 + [10]  # 5 originals, then 5 x 18 imputed images
    m = CountingModel(base)
    calls: list[int] = []
    adcc(m, images, sal, lambda x, c: calls.append(len(x)) or x[:, 0], mean=HALF, std=HALF, batch_size=2)
    assert m.sizes == [2, 2, 1, 2, 2, 1] and calls == [2, 2, 1]


def test_perturbation_and_auc_semantics():
    """engine.ops, which the metrics call: order = saliency descending, ties by flat index ascending; the AUC rules."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 5, 6, generator=g)
    baseline = torch.rand(3, 5, 6, generator=g)
    sal = torch.randint(0, 4, (5, 6), generator=g).float()  # many ties
    counts = torch.tensor([0, 1, 7, 13, 30])
    for mode in ("insertion", "deletion"):
        ours = engine.ops.perturb_by_rank(image, sal, baseline, counts, mode)
        order = sorted(range(30), key=lambda i: (-float(sal.reshape(-1)[i]), i))
        for s, k in enumerate(counts.tolist()):
            top = torch.zeros(30, dtype=torch.bool)
            top[order[:k]] = True
            top = top.view(1, 5, 6)
            want = torch.where(top, image, baseline) if mode == "insertion" else torch.where(top, baseline, image)
            assert torch.equal(ours[s], want)
    scores = torch.rand(4, 7, generator=g, dtype=torch.float64)
    x = torch.tensor([0, 0.1, 0.2, 0.5, 0.6, 0.9, 1.0], dtype=torch.float64)
    want_rise = (scores.sum(1) - scores[:, 0] / 2 - scores[:, -1] / 2) / 6
    torch.testing.assert_close(engine.ops.auc(scores, x, "trapezoid").double(), torch.trapezoid(scores, x, dim=1))
    torch.testing.assert_close(engine.ops.auc(scores, None, "rise").double(), want_rise)


# ---------------------------------------------------------------------------------------------------------------
# AD / IC (tame)
# ---------------------------------------------------------------------------------------------------------------


def _ad_ic_case():
    # 1-channel 2x2 images, mean = std = 0.5 (normalised = 2 raw - 1), logit1 = sum of normalised pixels.
    images = np.array([[1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 1.0]], np.float32).reshape(2, 1, 2, 2)
    sal = np.array([[1.0, 0.2, 0.6, 0.0], [3.0, 3.0, 3.0, 1.0]], np.float32).reshape(2, 2, 2)
    return images, sal, two_class_linear(np.ones(4))


def test_ad_ic_cnn_by_hand():
    images, sal, model = _ad_ic_case()
    res = ad_ic(model, images, sal, mean=(0.5,), std=(0.5,), model_kind="cnn")
    # image A: logit 2 -> class 1, Y = sig(2). Map [1, .2, .6, 0] (already min-max).
    #   v=100: raw*map = [1, .2, .3, 0] -> norm [1, -.6, -.4, -1] -> -1
    #   v=50: quantile .5 = .4 -> [1, 0, .6, 0] -> raw [1, 0, .3, 0] -> norm [1, -1, -.4, -1] -> -1.4
    #   v=15: quantile .85 = .6 + .55*.4 = .82 -> [1, 0, 0, 0] -> norm [1, -1, -1, -1] -> -2
    # image B: logit -2 -> class 0, Y = sig(2). Map min-max [1, 1, 1, 0] keeps zeros only -> all black -> logit -4,
    #   P(class 0) = sig(4) > Y at every level: AD 0, IC 100.
    y = sig(2)
    for v, z in ((100, -1.0), (50, -1.4), (15, -2.0)):
        ad_a = 100 * (y - sig(z)) / y
        assert res[f"ad@{v}"].value == pytest.approx(ad_a / 2, abs=1e-5)  # float32 masking of 0.2, 0.6
        np.testing.assert_allclose(res[f"ad@{v}"].per_image, [ad_a, 0.0], atol=1e-5)
        np.testing.assert_allclose(res[f"ic@{v}"].per_image, [0.0, 100.0])
        assert res[f"ic@{v}"].value == pytest.approx(50.0)
        assert res[f"ad@{v}"].preset == "tame" and res[f"ad@{v}"].params["level"] == v
    assert set(res) == {"ad@100", "ic@100", "ad@50", "ic@50", "ad@15", "ic@15"}


def test_ad_ic_vit_masks_the_standardised_image():
    images, sal, model = _ad_ic_case()
    res = ad_ic(model, images[:1], sal[:1], mean=(0.5,), std=(0.5,), model_kind="vit")
    # norm [1, 1, 0, 0] * map: v=100 [1, .2, 0, 0] -> 1.2; v=15 [1, 0, 0, 0] -> 1
    y = sig(2)
    assert res["ad@100"].value == pytest.approx(100 * (y - sig(1.2)) / y, abs=1e-5)
    assert res["ad@15"].value == pytest.approx(100 * (y - sig(1.0)) / y, abs=1e-5)
    with pytest.raises(InputError, match="model_kind"):
        ad_ic(model, images, sal, mean=(0.5,), std=(0.5,), model_kind="transformer")


# ---------------------------------------------------------------------------------------------------------------
# ROAD
# ---------------------------------------------------------------------------------------------------------------


def test_noisy_linear_imputation_one_pixel_is_the_weighted_mean():
    img = np.arange(9, dtype=np.float64).reshape(1, 3, 3) ** 1.5
    x = img[0]
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    out = noisy_linear_impute(img, centre, noise_std=0.0)
    sides = x[0, 1] + x[1, 0] + x[1, 2] + x[2, 1]
    diags = x[0, 0] + x[0, 2] + x[2, 0] + x[2, 2]
    assert out[0, 1, 1] == pytest.approx(sides / 6 + diags / 12, rel=1e-12)
    assert np.array_equal(np.delete(out.reshape(-1), 4), np.delete(img.reshape(-1), 4))
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True  # border: only 3 neighbours, weights renormalised
    out = noisy_linear_impute(img, corner, noise_std=0.0)
    assert out[0, 0, 0] == pytest.approx((x[0, 1] / 6 + x[1, 0] / 6 + x[1, 1] / 12) / (5 / 12), rel=1e-12)


def test_noisy_linear_imputation_couples_removed_pixels_and_adds_seeded_noise():
    img = np.random.default_rng(3).random((2, 3, 3))
    removed = np.zeros((3, 3), bool)
    removed[1, 1] = removed[0, 1] = True
    out = noisy_linear_impute(img, removed, noise_std=0.0)
    for ch in range(2):
        x = img[ch]
        # u = (1,1): u - v/6 = known neighbours; v = (0,1): (2/3) v - u/6 = its known neighbours
        a = np.array([[1.0, -1 / 6], [-1 / 6, 2 / 3]])
        b = np.array(
            [
                x[0, 0] / 12 + x[0, 2] / 12 + x[1, 0] / 6 + x[1, 2] / 6 + x[2, 0] / 12 + x[2, 1] / 6 + x[2, 2] / 12,
                x[0, 0] / 6 + x[0, 2] / 6 + x[1, 0] / 12 + x[1, 2] / 12,
            ]
        )
        u, v = np.linalg.solve(a, b)
        assert out[ch, 1, 1] == pytest.approx(u, rel=1e-10) and out[ch, 0, 1] == pytest.approx(v, rel=1e-10)
    n1 = noisy_linear_impute(img, removed, 0.01, np.random.default_rng(7))
    n2 = noisy_linear_impute(img, removed, 0.01, np.random.default_rng(7))
    assert np.array_equal(n1, n2) and not np.allclose(n1, out)
    assert np.abs(n1 - out).max() < 0.06 and np.array_equal(n1[:, ~removed], img[:, ~removed])


def test_road_removal_masks():
    sal = torch.arange(16, dtype=torch.float32).reshape(4, 4)  # pixel 15 most relevant
    assert removal_mask(sal, 10, "morf", "tame").reshape(-1).nonzero()[0].tolist() == [15]  # floor(1.6) = 1
    assert removal_mask(sal, 50, "morf", "tame").reshape(-1).nonzero()[0].tolist() == list(range(8, 16))
    assert removal_mask(sal, 10, "lerf", "tame").reshape(-1).nonzero()[0].tolist() == [0]
    # gradcam: keep s < percentile(s, 90) = 13.5 -> removes 14, 15
    assert removal_mask(sal, 10, "morf", "gradcam").reshape(-1).nonzero()[0].tolist() == [14, 15]
    assert removal_mask(sal, 10, "lerf", "gradcam").reshape(-1).nonzero()[0].tolist() == [0, 1]


def _road_case():
    # 1-channel 6x6 image: pixel P = (2, 3) raw 1, the rest raw 0 (normalised -1). logit1 = 5 * normalised P.
    h = w = 6
    raw = np.zeros((1, 1, h, w), np.float32)
    raw[0, 0, 2, 3] = 1.0
    wmap = np.zeros((h, w))
    wmap[2, 3] = 5.0
    sal = np.random.default_rng(4).random((1, h, w)).astype(np.float32) * 0.9
    sal[0, 2, 3] = 1.0
    return raw, sal, two_class_linear(wmap)


def test_road_tame_and_gradcam_by_hand():
    raw, sal, model = _road_case()
    # MoRF removes P at every p; the removed pixels are surrounded by known pixels equal to -1, so the imputation is
    # -1 everywhere: logit -5, class flips. LeRF never removes P (at most 90 % of 36 px): nothing changes.
    res = road(model, raw, sal, mean=(0.5,), std=(0.5,), preset="tame", noise_std=0.0)
    assert res["road_morf"].value == pytest.approx(0.0) and res["road_lerf"].value == pytest.approx(100.0)
    np.testing.assert_allclose(res["road_morf"].extras["confidence"], sig(-5), atol=1e-9)
    res = road(model, raw, sal, mean=(0.5,), std=(0.5,), preset="gradcam", noise_std=0.0)
    assert res["road_morf"].value == pytest.approx(sig(-5) - sig(5), abs=1e-9)
    assert res["road_lerf"].value == pytest.approx(0.0, abs=1e-12)
    assert res["road_combined"].value == pytest.approx((sig(5) - sig(-5)) / 2, abs=1e-9)
    assert res["road_morf"].params["percentages"] == [10.0, 20, 30, 40, 50, 60, 70, 80, 90]


def test_road_noise_is_seeded():
    rng = np.random.default_rng(5)
    images = rng.random((2, 3, 8, 8)).astype(np.float32)
    sal = rng.random((2, 8, 8)).astype(np.float32)
    model = two_class_linear(rng.normal(size=3 * 64))
    a = road(model, images, sal, mean=HALF, std=HALF, preset="gradcam", seed=1)
    b = road(model, images, sal, mean=HALF, std=HALF, preset="gradcam", seed=1)
    c = road(model, images, sal, mean=HALF, std=HALF, preset="gradcam", seed=2)
    assert np.array_equal(a["road_morf"].per_image, b["road_morf"].per_image)
    assert not np.array_equal(a["road_morf"].per_image, c["road_morf"].per_image)
    assert a["road_morf"].params["seed"] == 1 and a["road_morf"].params["noise_std"] == 0.01


# ---------------------------------------------------------------------------------------------------------------
# ADCC
# ---------------------------------------------------------------------------------------------------------------


def test_adcc_by_hand_with_fake_explainer():
    raw = np.ones((1, 1, 2, 2), np.float32)  # normalised +1 everywhere: logit 4, class 1, Y = sig(4)
    sal = np.array([[[1.0, 0.5], [0.0, 0.5]]], np.float32)
    model = two_class_linear(np.ones(4))
    seen: list[np.ndarray] = []

    def same_map(x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        seen.append(classes)
        return x[:, 0]  # the masked normalised image, = s here: Pearson 1

    res = adcc(model, raw, sal, same_map, mean=(0.5,), std=(0.5,))
    ad = (sig(4) - sig(2)) / sig(4)  # masked normalised [1, .5, 0, .5] -> logit 2
    assert res["average_drop"].value == pytest.approx(ad, abs=1e-12)
    assert res["coherency"].value == pytest.approx(1.0) and res["complexity"].value == pytest.approx(0.5)
    assert res["adcc"].value == pytest.approx(3 / (1 + 2 + 1 / (1 - ad)), abs=1e-12)
    assert seen[0].tolist() == [1]
    raw_space = adcc(model, raw, sal, same_map, mean=(0.5,), std=(0.5,), mask_space="raw")
    # raw * s = [1, .5, 0, .5] -> normalised [1, 0, -1, 0] -> logit 0 -> O = 0.5
    assert raw_space["average_drop"].value == pytest.approx((sig(4) - 0.5) / sig(4), abs=1e-12)
    # an anti-correlated or a constant re-explanation: coherency 0, ADCC 0 (the limit), never NaN
    anti = adcc(model, raw, sal, lambda x, c: -x[:, 0], mean=(0.5,), std=(0.5,))
    assert anti["coherency"].value == 0.0 and anti["adcc"].value == 0.0
    flat = adcc(model, raw, sal, lambda x, c: np.ones((len(x), 3, 3)), mean=(0.5,), std=(0.5,))
    assert flat["coherency"].value == 0.0 and flat["adcc"].value == 0.0
    with pytest.raises(InputError, match="explain_fn"):
        adcc(model, raw, sal, lambda x, c: np.ones(3), mean=(0.5,), std=(0.5,))


# ---------------------------------------------------------------------------------------------------------------
# mean IoU
# ---------------------------------------------------------------------------------------------------------------

SAL_4x4 = np.array(
    [[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7], [0.8, 0.9, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32
)[None]
GT_4x4 = SAL_4x4 >= 0.55  # .6 .7 .8 .9 1.0


def _otsu_brute(values: np.ndarray) -> int:
    """Otsu by enumeration: best split k over bins, between-class variance from explicit class members."""
    idx = np.minimum(np.floor(values.reshape(-1) * 256), 255).astype(int)
    centres = (idx + 0.5) / 256
    best, best_k = -1.0, None
    for k in range(1, 256):
        lo, hi = centres[idx < k], centres[idx >= k]
        if len(lo) == 0 or len(hi) == 0:
            continue
        w0, w1 = len(lo) / len(centres), len(hi) / len(centres)
        var = w0 * w1 * (lo.mean() - hi.mean()) ** 2
        if var > best + 1e-15:
            best, best_k = var, k
    assert best_k is not None
    return best_k


def test_miou_rules_by_hand():
    # mean = 5.5 / 16 = 0.34375 -> foreground .4 .. 1.0 (7 px) -> IoU 5/7; rule 0.5 -> .5 .. 1.0 (6 px) -> 5/6
    assert mean_iou(SAL_4x4, GT_4x4, preset="mean")["miou"].value == pytest.approx(5 / 7)
    assert mean_iou(SAL_4x4, GT_4x4, preset="0.5")["miou"].value == pytest.approx(5 / 6)
    k = _otsu_brute(SAL_4x4)
    fg = np.floor(SAL_4x4[0] * 256).clip(0, 255) >= k
    want = (fg & GT_4x4[0]).sum() / (fg | GT_4x4[0]).sum()
    res = mean_iou(SAL_4x4, GT_4x4, preset="otsu")["miou"]
    assert res.value == pytest.approx(want) and res.params["binarisation"] == "otsu" and res.preset == "otsu"
    # two images average; a low-resolution map is upsampled bilinearly to the mask size
    two = mean_iou(np.concatenate([SAL_4x4, SAL_4x4]), np.concatenate([GT_4x4, ~GT_4x4]), preset="0.5")["miou"]
    assert two.value == pytest.approx((5 / 6 + 1 / 16) / 2)  # vs ~GT (11 px): intersection {.5}, union 16
    big = mean_iou(np.ones((1, 2, 2), np.float32) * [[0, 1], [0, 1]], np.zeros((1, 8, 8), bool) | [[0] * 4 + [1] * 4])
    assert big["miou"].value == pytest.approx(1.0)


def test_otsu_on_bimodal_histogram():
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.normal(0.2, 0.04, 3000), rng.normal(0.75, 0.06, 1000)]).clip(0, 1)
    thr, k = otsu_threshold(values)
    assert 0.3 < thr < 0.6 and k == _otsu_brute(values)
    # the two modes are split exactly
    assert (values[:3000] < thr).mean() > 0.99 and (values[3000:] >= thr).mean() > 0.99
    # hand case: 3 values at bin 10, 1 at bin 200 -> any split between separates them, the first (k=11) wins
    assert otsu_threshold(np.array([10.5, 10.5, 10.5, 200.5]) / 256) == (11 / 256, 11)
    assert otsu_threshold(np.full(10, 0.3)) is None


def test_constant_maps_follow_documented_conventions():
    const = np.full((1, 2, 2), 0.7, np.float32)
    # IoU: empty foreground; both empty -> 1.0
    for rule in ("mean", "0.5", "otsu"):
        assert not binarise(const[0], rule).any()
        assert mean_iou(const, np.ones((1, 2, 2), bool), preset=rule)["miou"].value == 0.0
        assert mean_iou(const, np.zeros((1, 2, 2), bool), preset=rule)["miou"].value == 1.0
    # insertion/deletion: ties by index, i.e. the same as a map decreasing with the flat index
    model = two_class_linear(W_2x2)
    by_index = np.array([[[4.0, 3.0], [2.0, 1.0]]], np.float32)
    a = id_score(model, RAW_2x2, const, mean=HALF, std=HALF, preset="ovxai")
    b = id_score(model, RAW_2x2, by_index, mean=HALF, std=HALF, preset="ovxai")
    assert np.isfinite(a["id"].value) and a["id"].value == b["id"].value
    # AD/IC: min-max of a constant map is 0 -> the image is fully masked; finite values
    r = ad_ic(model, RAW_2x2, const, mean=HALF, std=HALF)
    assert all(np.isfinite(v.value) for v in r.values())


# ---------------------------------------------------------------------------------------------------------------
# Bad input, registry, rows
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["id", "ad_ic", "road", "adcc"])
def test_bad_input_raises_input_error(metric):
    model = two_class_linear(W_2x2)
    kw = {"mean": HALF, "std": HALF}
    args = (lambda x, c: x[:, 0],) if metric == "adcc" else ()
    preset = list_presets(metric)[-1 if metric == "id" else 0]

    def run(images, sal, **extra):
        return evaluate(metric, preset, model, images, sal, *args, **{**kw, **extra})

    with pytest.raises(InputError, match="one map per image"):
        run(RAW_2x2, np.concatenate([SAL_2x2, SAL_2x2]))  # count differs
    with pytest.raises(InputError, match=r"\(N, h, w\)"):
        run(RAW_2x2, SAL_2x2.reshape(-1))  # 1-D
    nan = SAL_2x2.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        run(RAW_2x2, nan)
    with pytest.raises(InputError, match="empty"):
        run(RAW_2x2[:0], SAL_2x2[:0])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        run(RAW_2x2 * 255, SAL_2x2)
    with pytest.raises(InputError, match="mean and std"):
        run(RAW_2x2, SAL_2x2, mean=(0.5,), std=(0.5,))
    with pytest.raises(InputError, match="batch_size"):
        run(RAW_2x2, SAL_2x2, batch_size=0)


def test_bad_input_iou():
    with pytest.raises(InputError, match="differ in count or size"):
        mean_iou(SAL_4x4, GT_4x4, images=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="one map per image"):
        mean_iou(np.concatenate([SAL_4x4, SAL_4x4]), GT_4x4)
    with pytest.raises(InputError, match="empty"):
        mean_iou(SAL_4x4[:0], GT_4x4[:0])
    with pytest.raises(InputError, match="bool or 0/1"):
        mean_iou(SAL_4x4, GT_4x4 * 3.0)
    nan = SAL_4x4.copy()
    nan[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mean_iou(nan, GT_4x4)


def test_bad_model_output_and_targets():
    with pytest.raises(InputError, match="logits"):
        insertion(lambda x: np.zeros(len(x)), RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="ovxai")
    with pytest.raises(InputError, match="out of range"):
        insertion(two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="keio", targets=[5])
    with pytest.raises(InputError, match="NaN"):
        insertion(lambda x: np.full((len(x), 2), np.nan), RAW_2x2, SAL_2x2, mean=HALF, std=HALF, preset="ovxai")


def test_registry_presets_and_rows():
    assert set(METRICS) == {"insertion", "deletion", "id", "ad_ic", "road", "adcc", "miou"}
    assert list_presets("insertion") == ("rise", "keio", "ovxai")
    assert list_presets("ad_ic") == ("tame",) and list_presets("road") == ("tame", "gradcam")
    assert list_presets("adcc") == ("reference",) and list_presets("miou") == ("mean", "0.5", "otsu")
    with pytest.raises(InputError, match="unknown metric"):
        list_presets("pointing_game")
    with pytest.raises(InputError, match="choose one of rise, keio, ovxai"):
        evaluate("insertion", "petsiuk", two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF)
    res = evaluate("deletion", "ovxai", two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF)
    assert list(res) == ["deletion"] and isinstance(res["deletion"], MetricResult)
    rows = results_to_rows(res, "toy", "linear", "fixed")
    assert rows[0]["metric"] == "deletion" and rows[0]["preset"] == "ovxai" and rows[0]["n_images"] == 1
    assert {"dataset", "model", "method", "metric", "preset", "value", "n_images"} <= set(rows[0])
    assert rows == res["deletion"].to_rows("toy", "linear", "fixed")
    assert res["deletion"].per_image.dtype == np.float64 and res["deletion"].per_image.shape == (1,)
    with pytest.raises(InputError, match="modes"):
        insertion_deletion(two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF, modes=("both",))


def test_road_without_scipy_names_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.sparse", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        road(two_class_linear(W_2x2), RAW_2x2, SAL_2x2, mean=HALF, std=HALF)


def test_every_metric_takes_the_same_keyword_arguments():
    """One kwargs set (as a benchmark builds it) works for every metric; "default" means the first preset."""
    rng = np.random.default_rng(8)
    images = rng.random((2, 3, 8, 8)).astype(np.float32)
    sal = rng.random((2, 4, 4)).astype(np.float32)
    common = {"model": two_class_linear(rng.normal(size=3 * 64)), "images": images, "saliency": sal, "mean": HALF,
              "std": HALF, "targets": np.array([0, 1]), "batch_size": 16, "model_kind": "vit"}  # fmt: skip
    extra = {"adcc": {"explain_fn": lambda x, c: x[:, 0]}, "miou": {"masks": rng.random((2, 8, 8)) > 0.5}}
    for metric in METRICS:
        res = evaluate(metric, "default", **common, **extra.get(metric, {}))
        assert all(r.preset == list_presets(metric)[0] and np.isfinite(r.value) for r in res.values()), metric
    with pytest.raises(InputError, match="model_kind"):
        evaluate("road", "tame", **{**common, "model_kind": "mlp"})


def test_keio_quantized_levels_enter_together_by_hand():
    # 32x32 px, all raw 1. Saliency: 400 px = 1.0, 300 px = 0.4, 324 px = 0. Nominal counts 0, 500, 1000, 1024.
    # As it is: the 500th largest is 0.4 -> 700 px in. Two levels: 0.4 falls in the lower bin with 0 -> the 500th
    # largest is level 0 -> all 1024 px in. Eight levels keep 0.4 apart (level 3) -> as unquantised.
    h = w = 32
    sal = np.zeros((1, h, w), np.float32)
    flat = sal.reshape(-1)
    perm = np.random.default_rng(1).permutation(h * w)
    flat[perm[:400]] = 1.0
    flat[perm[400:700]] = 0.4
    raw = np.ones((1, 1, h, w), np.float32)
    model = two_class_linear(np.full(h * w, 2.0 / (h * w)))
    kwargs = dict(mean=(0.5,), std=(0.5,), preset="keio", targets=[1])

    def expected(eff):
        return np.array([sig(2 * (2 * e / 1024 - 1)) for e in eff])

    plain = id_score(model, raw, sal, **kwargs)
    two = id_score(model, raw, sal, quantize_levels=2, **kwargs)
    eight = id_score(model, raw, sal, quantize_levels=8, **kwargs)
    np.testing.assert_allclose(plain["insertion"].curves[0], expected([0, 700, 1024, 1024]), atol=1e-12)
    np.testing.assert_allclose(two["insertion"].curves[0], expected([0, 1024, 1024, 1024]), atol=1e-12)
    np.testing.assert_allclose(eight["insertion"].curves[0], plain["insertion"].curves[0], atol=1e-12)
    assert two["id"].params["quantize_levels"] == 2 and plain["id"].params["quantize_levels"] is None
    for bad in (0, 1, 2.5, True):
        with pytest.raises(InputError, match="quantize_levels"):
            id_score(model, raw, sal, quantize_levels=bad, **kwargs)


def test_keio_evaluates_each_distinct_count_once_and_matches_brute_force():
    # Equal tie-aware counts give the identical perturbed image, so the metric queries the model once per distinct
    # count per curve. Brute force: one perturbed image per nominal step, built here from the thresholds by hand,
    # each through the model alone. The curves must be bit-identical, with far fewer images evaluated.
    rng = np.random.default_rng(7)
    n, c, h, w = 3, 3, 48, 48  # 2304 px: nominal counts 0, 500, ..., 2000, 2304 (6 steps)
    raw = rng.random((n, c, h, w)).astype(np.float32)
    sal = np.stack(
        [
            rng.integers(0, 3, (h, w)).astype(np.float32),  # 3 values: many steps repeat a count
            rng.random((h, w)).astype(np.float32),  # continuous: 8 levels after quantisation
            np.full((h, w), 0.3, np.float32),  # constant: everything in at the first step
        ]
    )
    wvec = rng.normal(size=c * h * w) / (c * h * w) ** 0.5
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    targets = [1, 0, 1]

    def per_image(x: np.ndarray) -> np.ndarray:  # each image alone: no dependence on the batch
        return np.concatenate([two_class_linear(wvec)(x[i : i + 1]) for i in range(len(x))])

    m32 = np.asarray(mean, np.float32).reshape(c, 1, 1)
    s32 = np.asarray(std, np.float32).reshape(c, 1, 1)
    x_norm = (raw - m32) / s32
    black = np.broadcast_to((np.float32(0) - m32) / s32, (c, h, w))
    nominal = [0, 500, 1000, 1500, 2000, 2304]

    def quantized(maps: np.ndarray, levels: int) -> np.ndarray:  # the documented rule, per map
        out = np.zeros_like(maps)
        for i, m in enumerate(maps.astype(np.float64)):
            span = m.max() - m.min()
            out[i] = 0 if span == 0 else np.minimum(np.floor((m - m.min()) / span * levels), levels - 1)
        return out

    for levels in (None, 8):
        model = CountingModel(per_image)
        res = id_score(
            model, raw, sal, mean=mean, std=std, preset="keio", targets=targets, quantize_levels=levels, batch_size=4
        )
        q = sal if levels is None else quantized(sal, levels)
        distinct = 0
        for mode in ("insertion", "deletion"):
            brute = np.zeros((n, len(nominal)))
            for i in range(n):
                flat = q[i].reshape(-1)
                counts = set()
                for j, k in enumerate(nominal):
                    mask = flat >= np.sort(flat)[::-1][k - 1] if k > 0 else np.zeros(h * w, bool)
                    counts.add(int(mask.sum()))
                    mask = mask.reshape(h, w)
                    inside = mask if mode == "insertion" else ~mask
                    img = np.where(inside, x_norm[i], black).astype(np.float32)
                    logits = per_image(img[None])
                    brute[i, j] = softmax64(logits)[0, targets[i]]
                distinct += len(counts)
            np.testing.assert_array_equal(res[mode].curves, brute)
            assert res[mode].value == pytest.approx(np.trapezoid(brute, np.array(nominal) / (h * w)).mean(), abs=1e-12)
        assert sum(model.sizes) == res["id"].params["perturbed_images"] == distinct < 2 * n * len(nominal)
        assert res["id"].params["n_points"] == len(nominal)
