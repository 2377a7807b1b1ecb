"""Tests for the peers (``benchmarks/peers.py`` and the ``peers_*.py`` modules it re-exports): openvino-xai's RISE
baseline and ViT-ReciproCAM timing, the venv helper, the command line.

The end-to-end tests need the peer venv (``python benchmarks/peers.py setup``; another location can be given with
``XAI_ENGINE_PEERS_VENV``) and are skipped without it (CI has none).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def _load_peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_peers", ROOT / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


peers = _load_peers()
PEER_VENV = Path(os.environ.get("XAI_ENGINE_PEERS_VENV", str(peers.DEFAULT_VENV)))
needs_venv = pytest.mark.skipif(
    not peers.venv_python(PEER_VENV).exists(), reason=f"no peer venv at {PEER_VENV} (peers.py setup)"
)


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


@needs_venv
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


def _require_peer() -> None:
    if not peers.peer_available(PEER_VENV):
        pytest.skip(f"{PEER_VENV} cannot import openvino_xai")


def test_peer_modules_import_only_the_standard_library() -> None:
    """peers.py, peers_venv.py and peers_openvino_xai.py also run under the peer venv, which has no torch/engine."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules)\n"
        "import peers, peers_venv, peers_openvino_xai\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "{'numpy', 'torch', 'engine', 'openvino', 'openvino_xai', 'timm'}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks")], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]"


def test_cli_help_lists_the_commands() -> None:
    script = str(ROOT / "benchmarks" / "peers.py")
    run = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True)
    assert "{setup,ovxai-vit,ovxai-rise,selftest}" in run.stdout
    for command in ("setup", "ovxai-vit", "ovxai-rise", "selftest"):
        assert subprocess.run([sys.executable, script, command, "--help"], capture_output=True).returncode == 0


def test_vit_records_compute_the_statistics_from_raw_times() -> None:
    """The worker returns raw per-call times; the parent side turns them into today's records, keys in order."""
    raw = {
        "common": {"model": "m", "method": peers.METHOD, "batch": 1},
        "note": "batch 1 timed instead",
        "measurements": [
            {"impl": "openvino-xai-classify", "times_ms": [4.0, 2.0, 3.0], "effective_precision": "f32", "extra": {}},
            {
                "impl": "openvino-xai",
                "times_ms": [10.0, 30.0, 20.0, 40.0],
                "effective_precision": "bf16",
                "extra": {"call": "explainer(x)"},
            },
        ],
    }
    cls, explain = peers.vit_records(raw)
    assert list(explain) == [
        "model",
        "method",
        "batch",
        "impl",
        "median_ms",
        "p95_ms",
        "ratio_to_classify",
        "effective_precision",
        "call",
        "note",
    ]
    assert (cls["median_ms"], cls["ratio_to_classify"], cls["effective_precision"]) == (3.0, 1.0, "f32")
    assert explain["median_ms"] == statistics.median([10.0, 30.0, 20.0, 40.0]) == 25.0
    assert explain["p95_ms"] == round(float(np.percentile([10.0, 30.0, 20.0, 40.0], 95)), 3) == 38.5
    assert explain["ratio_to_classify"] == round(25.0 / 3.0, 3)
    assert explain["note"] == cls["note"] == "batch 1 timed instead"
    raw["note"] = None
    assert "note" not in peers.vit_records(raw)[0]


def test_run_ovxai_vit_missing_venv_names_the_fix(tmp_path: Path) -> None:
    onnx = tmp_path / "vit.onnx"
    with pytest.raises(peers.PeerError, match="selftest --keep-onnx"):
        peers.run_ovxai_vit(onnx, "f32", 1, 1, 0, 1, tmp_path / "no-venv")
    onnx.write_bytes(b"")
    with pytest.raises(peers.PeerError, match="peers.py setup --venv"):
        peers.run_ovxai_vit(onnx, "f32", 1, 1, 0, 1, tmp_path / "no-venv")
    with pytest.raises(ValueError, match="precision"):
        peers.run_ovxai_vit(onnx, "fp16", 1, 1, 0, 1, tmp_path / "no-venv")


@needs_venv
def test_run_ovxai_vit_reports_a_failing_peer_run(tmp_path: Path) -> None:
    _require_peer()
    onnx = tmp_path / "broken.onnx"
    onnx.write_bytes(b"not an onnx model")
    with pytest.raises(peers.PeerError, match=r"openvino-xai run failed \(exit 1\)") as info:
        peers.run_ovxai_vit(onnx, "f32", 1, 1, 0, 1, PEER_VENV, timeout=120)
    assert "Traceback" in str(info.value)  # the end of the worker's output


@needs_venv
def test_ovxai_vit_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``peers.py ovxai-vit`` on a random-weight ViT-Tiny: the worker times in the venv, the parent writes records."""
    _require_peer()
    onnx = peers.export_random_vit(tmp_path / "vit_tiny.onnx", model_name="vit_tiny_patch16_224")
    out = tmp_path / "records.json"
    argv = ["ovxai-vit", "--onnx", str(onnx), "--repeats", "2", "--warmup", "0", "--threads", "1"]
    assert peers.main([*argv, "--model-name", "tiny", "--json", str(out), "--venv", str(PEER_VENV)]) == 0
    records = json.loads(out.read_text())
    assert [r["impl"] for r in records] == ["openvino-xai-classify", "openvino-xai", "openvino-xai-infer"]
    for r in records:
        assert r["model"] == "tiny" and r["method"] == "vit-reciprocam" and r["backend"] == "openvino"
        assert r["batch"] == r["requested_batch"] == 1 and r["repeats"] == 2 and r["threads"] == 1
        assert r["effective_precision"] == "f32" and r["openvino_xai_version"] == "1.1.0"
        assert 0 < r["median_ms"] <= r["p95_ms"] and "note" not in r and "times_ms" not in r
        assert r["main_openvino_version"] is not None
    assert records[0]["ratio_to_classify"] == 1.0
    assert records[1]["target_layer"] and records[1]["explanation_shape"][:2] == [224, 224]
    assert "ratio_to_classify" in capsys.readouterr().out  # the table


@needs_venv
def test_ovxai_rise_command_runs_in_the_venv(tmp_path: Path) -> None:
    """``peers.py ovxai-rise`` started by the main interpreter re-executes itself in the venv."""
    _require_peer()
    onnx = _export(tmp_path / "top_left.onnx")
    inputs, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inputs, images=np.ones((1, 3, 224, 224), np.float32), targets=np.zeros(1, np.int64))
    argv = ["--onnx", str(onnx), "--inputs", str(inputs), "--out", str(out), "--num-masks", "50", "--threads", "1"]
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "ovxai-rise", *argv, "--venv", str(PEER_VENV)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads(run.stdout.strip().splitlines()[-1])
    assert meta["num_masks"] == 50 and meta["impl"] == "openvino-xai"
    with np.load(out) as data:
        assert data["saliency"].shape == (1, 224, 224) and json.loads(str(data["meta"])) == meta
