"""Tests for ``benchmarks/peers.py``'s openvino-xai RISE baseline.

The end-to-end test needs the peer venv (``python benchmarks/peers.py setup``; another location can be given with
``XAI_ENGINE_PEERS_VENV``) and is skipped without it (CI has none).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def _load_peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_peers", ROOT / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peers = _load_peers()
PEER_VENV = Path(os.environ.get("XAI_ENGINE_PEERS_VENV", str(peers.DEFAULT_VENV)))


class _TopLeftClassifier(nn.Module):
    """Class 0's logit is 8 x the mean of the top-left quadrant of the input; the other 999 logits are 0."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(12, 1000)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.weight[0, [0, 4, 8]] = 8.0 / 3  # (C, 2, 2) flattened: index 4c is channel c's top-left cell

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(image).flatten(1))


def _export(path: Path) -> Path:
    model = _TopLeftClassifier().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy TorchScript exporter is what we want here
        torch.onnx.export(
            model,
            torch.ones(1, 3, 224, 224),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def test_run_ovxai_rise_missing_venv_names_the_fix(tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")  # only its existence is checked before the venv
    images = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(peers.PeerError, match="peers.py setup"):
        peers.run_ovxai_rise(onnx, images, np.zeros(1, np.int64), venv=tmp_path / "no-venv")


def test_run_ovxai_rise_rejects_mismatched_targets(tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(ValueError, match="one target per image"):
        peers.run_ovxai_rise(onnx, np.zeros((2, 3, 224, 224), np.float32), np.zeros(1, np.int64))


@pytest.mark.skipif(not peers.venv_python(PEER_VENV).exists(), reason=f"no peer venv at {PEER_VENV} (peers.py setup)")
def test_run_ovxai_rise_end_to_end(tmp_path: Path) -> None:
    if not peers.peer_available(PEER_VENV):
        pytest.skip(f"{PEER_VENV} cannot import openvino_xai")
    onnx = _export(tmp_path / "top_left.onnx")
    images = np.ones((2, 3, 224, 224), np.float32)
    images[1] *= 0.5
    saliency, meta = peers.run_ovxai_rise(
        onnx, images, np.array([0, 0]), num_masks=200, seed=3, threads=1, venv=PEER_VENV, timeout=60
    )
    assert saliency.shape == (2, 224, 224) and saliency.dtype == np.float32
    assert np.isfinite(saliency).all()
    for s in saliency:
        assert s.std() > 0
        assert s[:112, :112].mean() > s[112:, 112:].mean()  # only the top-left quadrant drives class 0
    assert meta["num_masks"] == 200 and meta["seed"] == 3 and meta["prob"] == 0.5
    assert meta["effective_precision"] == "f32"
    assert meta["openvino_xai_version"] == "1.1.0"
    assert len(meta["seconds_per_image"]) == 2
