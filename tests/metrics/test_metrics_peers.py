"""Cross-checks of engine.metrics against peer implementations, each skipped when its peer is not installed.

* pytorch-grad-cam (``pip install grad-cam``, the ``benchmark`` extra): ROAD MoRF / LeRF, preset ``gradcam``.
* openvino-xai 1.1 (only in the separate venv ``.venv-peers``, see ``benchmarks/peers.py``): insertion / deletion
  (preset ``ovxai``) and ADCC (``mask_space="raw"``), run in that venv through a subprocess on the same inputs.
* OpenCV's Otsu threshold (``cv2``, a dependency of grad-cam): our 256-bin Otsu.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.metrics import adcc, id_score, otsu_threshold, road

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from peers_venv import DEFAULT_VENV, child_env, peer_available, venv_python  # noqa: E402

PEER_PYTHON = venv_python(DEFAULT_VENV)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _torch_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5)
    )
    with torch.no_grad():
        net[-1].weight.mul_(8.0)  # spread the logits so that imputation moves the probabilities visibly
    return net.eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # grad-cam calls np.percentile on a torch tensor
def test_road_matches_pytorch_grad_cam():
    """Preset ``gradcam`` vs pytorch-grad-cam's ROADMostRelevantFirst / ROADLeastRelevantFirst, per percentage.

    Convention: grad-cam's ``percentile`` q keeps the pixels below the q-th percentile, i.e. removes 100 - q %; the
    preset's p = 100 - q. grad-cam's noise comes from the global torch RNG, ours from a seeded numpy generator, so
    the comparison turns the noise off on both sides (``imputer.noise = 0`` / ``noise_std=0``); with it off both are
    the same float64 sparse solve, so the tolerance is float32 rounding of the model (1e-5).
    """
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")

    net = _torch_model()
    rng = np.random.default_rng(0)
    n, h, w = 3, 16, 16
    raw = rng.random((n, 3, h, w)).astype(np.float32)
    cams = rng.random((n, h, w)).astype(np.float32)
    x = (torch.from_numpy(raw) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        pred = net(x).argmax(1).tolist()

    def model_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()

    ours = road(model_fn, raw, cams, mean=MEAN, std=STD, preset="gradcam", noise_std=0.0)
    pcts = ours["road_morf"].params["percentages"]
    targets = [targets_mod.ClassifierOutputSoftmaxTarget(c) for c in pred]
    theirs = {"morf": [], "lerf": []}
    for p in pcts:
        for order, cls in (("morf", road_mod.ROADMostRelevantFirst), ("lerf", road_mod.ROADLeastRelevantFirst)):
            metric = cls(percentile=100 - p)
            metric.perturbation.imputer.noise = 0.0
            theirs[order].append(np.asarray(metric(x, cams, targets, net), dtype=np.float64))
    for order in ("morf", "lerf"):
        table = np.stack(theirs[order], axis=1)  # (N, P)
        np.testing.assert_allclose(ours[f"road_{order}"].extras["score"], table, atol=1e-5)
        np.testing.assert_allclose(ours[f"road_{order}"].per_image, table.mean(axis=1), atol=1e-5)
    assert np.ptp(ours["road_morf"].extras["score"]) > 1e-3  # the comparison is not between constants
    combined = (np.stack(theirs["lerf"], 1).mean(1) - np.stack(theirs["morf"], 1).mean(1)) / 2  # ROADCombined
    np.testing.assert_allclose(ours["road_combined"].per_image, combined, atol=1e-5)


def test_otsu_matches_opencv():
    """Our 256-bin Otsu vs ``cv2.threshold(..., THRESH_OTSU)`` on uint8 data: cv2 returns t with foreground v > t,
    our split k has foreground bin >= k, so k = t + 1 (values fed at bin centres: (v + 0.5) / 256). Exact."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    for lo, hi, frac in ((60, 170, 0.7), (30, 120, 0.4), (100, 220, 0.85)):
        a = np.concatenate([rng.normal(lo, 18, int(4000 * frac)), rng.normal(hi, 25, int(4000 * (1 - frac)))])
        u8 = np.clip(np.round(a), 0, 255).astype(np.uint8)
        t, _ = cv2.threshold(u8.reshape(40, 100), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        found = otsu_threshold((u8.astype(np.float64) + 0.5) / 256)
        assert found is not None and found[1] == int(t) + 1


_OVXAI_SCRIPT = r"""
import json, sys, types
import numpy as np
import openvino as ov
import openvino.runtime.opset13 as ops
from openvino_xai.metrics import ADCC, InsertionDeletionAUC

d = np.load(sys.argv[1])
images, sal, wmat, bias = d["images"], d["saliency"], d["w"], d["b"]  # images (N, H, W, 3) raw
mean, std = d["mean"].astype(np.float32), d["std"].astype(np.float32)
n, h, w, _ = images.shape
x = ops.parameter([1, 3, h, w], np.float32)
flat = ops.reshape(x, ops.constant(np.array([1, -1], np.int64)), False)
out = ops.add(ops.matmul(flat, ops.constant(wmat.T.astype(np.float32)), False, False),
              ops.constant(bias[None].astype(np.float32)))
model = ov.Model([out], [x])

def preprocess(img):
    return ((img - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)

def postprocess(res):
    z = np.asarray(res[0], dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

def f32(metric):  # openvino's CPU plugin may default to bf16 (AMX): force f32 for a tight comparison
    metric.model_compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return metric

class Explainer:  # fake explainer: the channel mean of the (masked, raw) image
    def __call__(self, image, targets, colormap=False, scaling=False, **kw):
        return types.SimpleNamespace(saliency_map={int(targets): image.mean(axis=2)})

auc = f32(InsertionDeletionAUC(model, preprocess, postprocess))
adcc = f32(ADCC(model, preprocess, postprocess, Explainer()))
result = {"insertion": [], "deletion": [], "adcc": [], "coherency": [], "complexity": [], "average_drop": []}
for i in range(n):
    r = auc(sal[i], None, images[i], steps=30)
    result["insertion"].append(float(r["insertion"]))
    result["deletion"].append(float(r["deletion"]))
    r = adcc(sal[i], None, images[i])
    for k in ("adcc", "coherency", "complexity", "average_drop"):
        result[k].append(float(r[k]))
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def ovxai_case(tmp_path_factory):
    if not PEER_PYTHON.exists():
        pytest.skip(f"openvino-xai peer venv not found at {PEER_PYTHON} (python benchmarks/peers.py setup)")
    if not peer_available(DEFAULT_VENV):
        pytest.skip(f"openvino_xai does not import in {DEFAULT_VENV}")
    rng = np.random.default_rng(2)
    n, h, w, k = 3, 12, 12, 4
    images = rng.random((n, 3, h, w)).astype(np.float32)
    saliency = rng.random((n, h, w)).astype(np.float32)  # distinct values: no tie-order differences
    wmat = rng.normal(0, 0.05, (k, 3 * h * w)).astype(np.float32)
    bias = rng.normal(0, 0.1, k).astype(np.float32)
    tmp = tmp_path_factory.mktemp("ovxai")
    np.savez(tmp / "case.npz", images=images.transpose(0, 2, 3, 1), saliency=saliency, w=wmat, b=bias,
             mean=np.array(MEAN), std=np.array(STD))  # fmt: skip
    (tmp / "peer.py").write_text(_OVXAI_SCRIPT)
    run = subprocess.run(
        [str(PEER_PYTHON), str(tmp / "peer.py"), str(tmp / "case.npz")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])

    def model_fn(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float64) @ wmat.T.astype(np.float64) + bias

    return images, saliency, model_fn, theirs


def test_insertion_deletion_match_openvino_xai(ovxai_case):
    """Preset ``ovxai`` vs openvino-xai 1.1 ``InsertionDeletionAUC`` (steps=30, predicted class), per image.

    Same baseline (raw black), same counts int(i * H*W / 30), same AUC formula. Differences: openvino-xai's unstable
    ``np.argsort`` tie order (the maps here have no ties) and its OpenVINO float32 matmul vs our float64 one:
    tolerance 1e-5 on AUCs in [0, 1].
    """
    images, saliency, model_fn, theirs = ovxai_case
    ours = id_score(model_fn, images, saliency, mean=MEAN, std=STD, preset="ovxai")
    np.testing.assert_allclose(ours["insertion"].per_image, theirs["insertion"], atol=1e-5)
    np.testing.assert_allclose(ours["deletion"].per_image, theirs["deletion"], atol=1e-5)
    assert np.ptp(ours["insertion"].per_image) > 1e-3


def test_adcc_matches_openvino_xai(ovxai_case):
    """ADCC (``mask_space="raw"``, openvino-xai's masking of the raw image) vs openvino-xai 1.1 ``ADCC.__call__``.

    Both re-explain the masked image with the same fake explainer (the masked raw image's channel mean; ours gets the
    normalised batch and undoes the normalisation). Per-image values agree to 1e-5 (float32 model / map rounding).
    Not compared: openvino-xai's ``evaluate`` plugs the *means* of the parts into the formula, while the
    ``reference`` preset averages per-image ADCC.
    """
    images, saliency, model_fn, theirs = ovxai_case
    mean, std = np.array(MEAN, np.float32).reshape(1, 3, 1, 1), np.array(STD, np.float32).reshape(1, 3, 1, 1)

    def explain_fn(x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return (x * std + mean).mean(axis=1)

    ours = adcc(model_fn, images, saliency, explain_fn, mean=MEAN, std=STD, mask_space="raw")
    for key in ("adcc", "coherency", "complexity", "average_drop"):
        np.testing.assert_allclose(ours[key].per_image, theirs[key], atol=1e-5, err_msg=key)
    assert np.ptp(ours["average_drop"].per_image) > 1e-3
