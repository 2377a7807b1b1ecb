"""The GPU paths, as far as a machine without a GPU can check them: ``auto`` picks TensorRT > ONNX Runtime-CUDA >
torch-CUDA on a GPU and never a GPU runtime without one, the ONNX Runtime provider list and placement check, backend
options, the GPU latency script's loop (dry run on the CPU). The ``gpu`` tests run on a CUDA machine
(``benchmarks/gpu_check.sh``): CUDA graphs and autocast against eager float32, ONNX Runtime's placement."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine
from engine.artifact import load_artifact
from engine.backends import BACKENDS, gpu, select_backend
from engine.backends.onnxruntime_ import cpu_compute_nodes, gpu_providers, providers_from_profile
from engine.errors import BackendUnavailableError, EngineError, InputError

ROOT = Path(__file__).resolve().parents[2]
ONNX_ART = "reciprocam-efficientnet_lite0-onnx"
TORCH_ART = "reciprocam-efficientnet_lite0"
HAS_CUDA = torch.cuda.is_available()


def test_no_gpu_here_means_the_cpu_ranking():
    assert gpu.cuda_gpu_present() is HAS_CUDA or HAS_CUDA
    if not HAS_CUDA:
        assert select_backend(load_artifact(ONNX_ART)) in ("openvino", "onnxruntime")
        with pytest.raises(BackendUnavailableError, match="NVIDIA driver sees no GPU") as info:
            select_backend(load_artifact(ONNX_ART), device="cuda")
        assert "xai-engine[gpu]" in str(info.value) and "device='cpu'" in str(info.value)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine whose driver sees a GPU, with the runtimes in ``usable`` able to use it."""
    usable: set[str] = set()
    monkeypatch.setattr(gpu, "cuda_gpu_present", lambda: True)
    monkeypatch.setattr(type(BACKENDS["torch"]), "runs_on_cuda_here", lambda spec: spec.name in usable)
    return usable


def test_auto_on_a_gpu_ranks_gpu_runtimes(fake_gpu):
    onnx_art, torch_art = load_artifact(ONNX_ART), load_artifact(TORCH_ART)
    fake_gpu.update({"onnxruntime", "torch"})
    assert select_backend(onnx_art) == "onnxruntime"  # ORT-CUDA before torch-CUDA
    assert select_backend(torch_art) == "torch"  # no model.onnx: torch on CUDA, not OpenVINO on the CPU
    assert select_backend(onnx_art, device="cpu") in ("openvino", "onnxruntime")  # asked for the CPU
    fake_gpu.clear()
    assert select_backend(onnx_art) in ("openvino", "onnxruntime")  # a GPU no runtime can use: the CPU ranking
    with pytest.raises(BackendUnavailableError, match="on a CUDA GPU here"):
        select_backend(onnx_art, device="cuda")
    gpu_ranked = sorted(
        (s for s in BACKENDS.values() if "cuda" in s.devices and s.auto_rank), key=lambda s: s.auto_rank
    )
    names = [s.name for s in gpu_ranked]
    assert names.index("onnxruntime") < names.index("torch")
    if "tensorrt" in names:
        assert names[0] == "tensorrt" and "cpu" not in BACKENDS["tensorrt"].devices


def test_onnxruntime_gpu_providers_and_placement_report(tmp_path):
    assert gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], False) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    both = gpu_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], True)
    assert both[0][0] == "TensorrtExecutionProvider" and both[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(EngineError, match="no TensorRT execution provider"):
        gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], True)
    with pytest.raises(EngineError, match="pip install onnxruntime-gpu"):
        gpu_providers(["CPUExecutionProvider"], False)
    trace = [
        {"cat": "Session", "name": "model_run"},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"provider": "CUDAExecutionProvider", "op_name": "Conv"}},
        {"cat": "Node", "name": "mm_kernel_time", "args": {"provider": "CPUExecutionProvider", "op_name": "MatMul"}},
        {"cat": "Node", "name": "shape_kernel_time", "args": {"provider": "CPUExecutionProvider", "op_name": "Shape"}},
    ]
    (tmp_path / "p.json").write_text(json.dumps(trace))
    by = providers_from_profile(tmp_path / "p.json")
    assert by == {"CUDAExecutionProvider": Counter({"Conv": 1}), "CPUExecutionProvider": Counter(MatMul=1, Shape=1)}
    assert cpu_compute_nodes(by) == {"MatMul": 1}  # shape arithmetic on the CPU is by design, not counted


def test_backend_options_are_checked():
    with pytest.raises(InputError, match="its options: tensorrt_ep, allow_cpu_fallback"):
        Engine.load(ONNX_ART, backend="onnxruntime", backend_options={"cuda_graphs": True})
    with pytest.raises(InputError, match="needs device='cuda'"):
        Engine.load(TORCH_ART, backend="torch", device="cpu", backend_options={"cuda_graphs": True})


def test_gpu_latency_script_dry_run_on_cpu(tmp_path):
    """The GPU benchmark's loop, run on the CPU: rows, skips with reasons, targets lines, JSON and CSV."""
    argv = [sys.executable, str(ROOT / "benchmarks" / "latency.py"), "--device", "cuda", "--dry-run-cpu"]
    argv += ["--models", "effnet_lite0", "--runtimes", "torch,torch+cudagraphs,tensorrt", "--precisions", "fp32"]
    argv += ["--batches", "2", "--repeats", "2", "--warmup", "1", "--out", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "latency-gpu.json").read_text())
    ok = [r for r in data["records"] if r["status"] == "ok"]
    assert {(r["impl"], r["batch"]) for r in ok} == {("classify", 2), ("fast", 2)}
    assert all(len(r["times_ms"]) == 2 and r["median_ms"] > 0 for r in ok)
    assert next(r for r in ok if r["impl"] == "classify")["max_abs_logit_diff"] == 0.0
    skipped = {r["runtime"]: r["status"] for r in data["records"] if r["status"] != "ok"}
    assert "needs device='cuda'" in skipped["torch+cudagraphs"] and "TensorRT" in skipped["tensorrt"]
    assert any(line.startswith("explain <= 1.2x") for line in data["targets"])
    assert (tmp_path / "latency-gpu.csv").read_text().startswith("model,runtime,precision")


# ---------------------------------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_graphs_and_autocast_match_eager(example_images):
    eager = Engine.load(TORCH_ART, backend="torch", device="cuda")
    graphs = Engine.load(TORCH_ART, backend="torch", device="cuda", backend_options={"cuda_graphs": True})
    half = Engine.load(TORCH_ART, backend="torch", device="cuda", precision="fp16")
    assert select_backend(load_artifact(TORCH_ART)) in ("torch", "tensorrt", "onnxruntime")
    for batch in (1, 3, 1):  # a second batch size is captured on its own, and the first is replayed again
        images = example_images[:batch]
        ref = eager.explain(images)
        for got in (graphs.explain(images), graphs.explain(images)):
            for a, b in zip(got, ref, strict=True):
                assert a.class_id == b.class_id
                np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-5)
        for a, b in zip(half.explain(images), ref, strict=True):
            assert a.class_id == b.class_id and a.precision == "fp16"
            assert np.corrcoef(a.saliency.ravel(), b.saliency.ravel())[0, 1] > 0.99
    assert set(graphs.backend._graphs.graphs) == {(1, True), (3, True)}
    x = torch.randn(2, 3, 224, 224, device="cuda")
    logits, sal = graphs.backend.infer_tensors(x)
    assert logits.device.type == "cuda" and sal.device.type == "cuda"  # the tensor path stays on the GPU


@pytest.mark.gpu
@pytest.mark.skipif(not gpu.onnxruntime_cuda_usable(), reason="needs onnxruntime-gpu and a CUDA GPU")
def test_onnxruntime_cuda_runs_the_compute_on_the_gpu(example_images):
    engine = Engine.load(ONNX_ART, backend="onnxruntime", device="cuda")
    placement = engine.backend.node_providers
    assert "Conv" in placement.get("CUDAExecutionProvider", {}), placement
    assert not cpu_compute_nodes({p: Counter(c) for p, c in placement.items()})
    ref = Engine.load(ONNX_ART, backend="onnxruntime", device="cpu").explain(example_images[0])
    np.testing.assert_allclose(engine.explain(example_images[0]).saliency, ref.saliency, atol=1e-4)
