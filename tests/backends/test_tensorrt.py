"""The TensorRT backend, export/to_trt.py and the plan record, as far as a machine without TensorRT or a GPU can check
them: the record's comparison with the running TensorRT and GPU (before deserializing), the install messages, that
``auto`` never picks TensorRT here, the CLI choices, the artifact to_trt.py writes (with the TensorRT build itself
replaced) and what Triton reads of it. The ``gpu`` tests build and run real plans (TensorRT + a CUDA GPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine
from engine.artifact import ONNX, load_artifact, sha256_file, write_artifact
from engine.backends import BACKENDS, get_backend_class, select_backend
from engine.backends.registry import export_formats, spec_writing
from engine.cli import build_parser
from engine.errors import ArtifactError, BackendUnavailableError, EngineError, InputError
from engine.trt_build import (
    MANIFEST_KEY,
    PLAN,
    BuildSettings,
    BuiltPlan,
    GpuInfo,
    PlanMismatchError,
    TensorRTUnavailableError,
    build_settings,
    check_plan,
    plan_problems,
    plan_record,
)

ROOT = Path(__file__).resolve().parents[2]
ONNX_ART = "reciprocam-efficientnet_lite0-onnx"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GATE = all(importlib.util.find_spec(m) for m in ("polygraphy", "onnx_graphsurgeon", "onnxruntime"))
GPU_TRT = HAS_TRT and torch.cuda.is_available()
needs_trt_gpu = pytest.mark.skipif(not GPU_TRT, reason="needs TensorRT and a CUDA GPU")
without_trt = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")

GPU = GpuInfo(0, "NVIDIA H200", "9.0")


def _record(**over):
    rec = plan_record(
        sha256="0" * 64,
        tensorrt_version="10.13.0.35",
        gpu=GPU,
        precision="fp16",
        max_batch=8,
        opt_batch=4,
        workspace_gb=4.0,
        settings=BuildSettings(False, ("FP16",)),
        input_size=(224, 224),
    )
    rec.update(over)
    return rec


# --- the plan record against the running machine -----------------------------------------------------------------


def test_a_matching_record_has_no_problems():
    assert plan_problems(_record(), tensorrt_version="10.13.0.35", gpu=GPU) == []


@pytest.mark.parametrize(
    "version, gpu, words",
    [
        ("10.14.1.48", GPU, ["TensorRT 10.13.0.35", "this machine has TensorRT 10.14.1.48"]),
        (None, GPU, ["TensorRT 10.13.0.35", "not installed"]),
        ("10.13.0.35", None, ["no CUDA GPU"]),
        (
            "10.13.0.35",
            GpuInfo(0, "NVIDIA A100-SXM4-80GB", "8.0"),
            ["compute capability 9.0", "has compute capability 8.0"],
        ),
        ("10.13.0.35", GpuInfo(0, "NVIDIA GH200 480GB", "9.0"), ["built on a NVIDIA H200", "GH200", "one GPU model"]),
    ],
    ids=["trt-version", "no-trt", "no-gpu", "compute-capability", "gpu-model"],
)
def test_each_mismatch_is_named(version, gpu, words):
    (problem,) = plan_problems(_record(), tensorrt_version=version, gpu=gpu)
    for word in words:
        assert word in problem, (word, problem)


def test_a_missing_or_partial_record_is_a_problem():
    assert "no 'tensorrt' record" in plan_problems(None, tensorrt_version="10.0", gpu=GPU)[0]
    partial = {k: v for k, v in _record().items() if k != "compute_capability"}
    assert "lacks compute_capability" in plan_problems(partial, tensorrt_version="10.0", gpu=GPU)[0]


def test_build_settings_per_tensorrt_version():
    assert build_settings("11.1.0", "fp16") == BuildSettings(True, ())  # strongly typed: the graph holds the precision
    assert build_settings("11.1.0", "int8") == BuildSettings(True, ())
    assert build_settings("10.13.0.35", "fp32") == BuildSettings(False, ())
    assert build_settings("10.13.0.35", "fp16") == BuildSettings(False, ("FP16",))
    assert build_settings("10.13.0.35", "int8") == BuildSettings(False, ("INT8",))  # Q/DQ nodes in a weak network
    with pytest.raises(EngineError, match="TensorRT 8.6.1 is too old"):
        build_settings("8.6.1", "fp32")
    with pytest.raises(InputError, match="precision"):
        build_settings("10.0.0", "bf16")


def test_plan_precision_follows_a_low_precision_export():
    """A model.onnx already exported at fp16/int8 (xai-engine export --precision) builds at that precision, as is."""
    from engine.trt_build import plan_precision

    def art(p):
        return types.SimpleNamespace(precision=p, path=Path("/a"), name="a")

    assert plan_precision(art("fp32"), "fp32") == ("fp32", False)
    assert plan_precision(art("fp32"), "fp16") == ("fp16", True)
    assert plan_precision(art("fp16"), "fp32") == ("fp16", False)
    assert plan_precision(art("int8"), "int8") == ("int8", False)
    with pytest.raises(InputError, match="holds a fp16 model.onnx.*--precision fp16"):
        plan_precision(art("fp16"), "int8")


@pytest.fixture(scope="module")
def plan_artifact(tmp_path_factory):
    """The built-in ONNX artifact plus a fake plan and its record (a plan's bytes cannot be made without TensorRT)."""
    tmp = tmp_path_factory.mktemp("plan")
    src = load_artifact(ONNX_ART)
    plan = tmp / "fake.plan"
    plan.write_bytes(b"not a real TensorRT engine")
    manifest = dict(src.manifest)
    manifest[MANIFEST_KEY] = _record(sha256=sha256_file(plan))
    files = {n: src.file(n) for n in src.manifest["files"]} | {PLAN: plan}
    return write_artifact(manifest, tmp / "with-plan", files)


def test_check_plan_refuses_another_gpu_naming_the_rebuild(plan_artifact):
    assert check_plan(plan_artifact, tensorrt_version="10.13.0.35", gpu=GPU)["precision"] == "fp16"
    other = GpuInfo(0, "NVIDIA L4", "8.9")
    with pytest.raises(PlanMismatchError) as info:
        check_plan(plan_artifact, tensorrt_version="10.13.0.35", gpu=other)
    message = str(info.value)
    assert "compute capability 9.0" in message and "NVIDIA L4" in message
    assert f"python export/to_trt.py {plan_artifact.path} --out NEW_DIR --precision fp16 --max-batch 8" in message
    with pytest.warns(UserWarning, match="cannot run here"):
        check_plan(plan_artifact, tensorrt_version="10.13.0.35", gpu=other, allow_mismatch=True)


def test_check_plan_refuses_a_replaced_plan(plan_artifact, tmp_path):
    manifest = dict(plan_artifact.manifest)
    manifest[MANIFEST_KEY] = _record(sha256="f" * 64)
    files = {n: plan_artifact.file(n) for n in plan_artifact.manifest["files"]}
    art = write_artifact(manifest, tmp_path / "replaced", files)
    with pytest.raises(ArtifactError, match="not the plan its 'tensorrt' record describes"):
        check_plan(art, tensorrt_version="10.13.0.35", gpu=GPU)


def test_the_backend_compares_the_record_before_deserializing(plan_artifact, monkeypatch):
    """With a stand-in ``tensorrt`` module and GPU: a mismatch stops the backend before the runtime is touched."""
    from engine.backends import tensorrt_ as backend_module

    touched = []
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.13.0.35"
    fake.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, *a: None})
    fake.Runtime = lambda logger: touched.append("runtime") or pytest.fail("deserialized despite the mismatch")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(backend_module, "tensorrt_available", lambda: True)
    monkeypatch.setattr(backend_module, "gpu_info", lambda index: GpuInfo(index, "NVIDIA RTX 4090", "8.9"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(PlanMismatchError, match="compute capability 9.0.*RTX 4090.*export/to_trt.py"):
        backend_module.TensorRTBackend(plan_artifact, precision="fp32", device="cuda")
    fake.__version__ = "10.14.1.48"
    monkeypatch.setattr(backend_module, "gpu_info", lambda index: GPU)
    with pytest.raises(PlanMismatchError, match="built with TensorRT 10.13.0.35, this machine has TensorRT 10.14"):
        backend_module.TensorRTBackend(plan_artifact, precision="fp32", device="cuda")
    assert touched == []
    with pytest.raises(EngineError, match="CUDA GPUs only"):
        backend_module.TensorRTBackend(plan_artifact, precision="fp32", device="cpu")


# --- without TensorRT: clear errors, never auto ----------------------------------------------------------------------


@without_trt
def test_without_tensorrt_the_errors_name_the_install(plan_artifact):
    with pytest.raises(BackendUnavailableError, match="pip install 'tensorrt-cu13'"):
        get_backend_class("tensorrt")
    with pytest.raises(BackendUnavailableError, match="tensorrt-cu13"):
        Engine.load(plan_artifact, backend="tensorrt")
    from engine.backends.tensorrt_ import TensorRTBackend

    with pytest.raises(TensorRTUnavailableError) as info:
        TensorRTBackend(plan_artifact, device="cuda")
    message = str(info.value)
    assert "pip install tensorrt-cu13" in message and "tensorrt-cu12" in message and "NVIDIA's index" in message


@without_trt
def test_auto_never_picks_tensorrt_here(plan_artifact):
    assert plan_artifact.has(PLAN) and plan_artifact.has(ONNX)
    assert select_backend(plan_artifact) in ("openvino", "onnxruntime")
    assert select_backend(plan_artifact, device="cpu") in ("openvino", "onnxruntime")
    engine = Engine.load(plan_artifact)
    assert engine.backend_name in ("openvino", "onnxruntime")


def test_the_cpu_ranking_is_unchanged():
    cpu = sorted(
        (s for s in BACKENDS.values() if s.auto_rank is not None and "cpu" in s.devices), key=lambda s: s.auto_rank
    )
    assert [s.name for s in cpu] == ["openvino", "onnxruntime", "torch"]
    trt = BACKENDS["tensorrt"]
    assert trt.auto_rank < min(s.auto_rank for s in BACKENDS.values() if s.name != "tensorrt")
    assert trt.devices == ("cuda",) and trt.reads == (PLAN,) and trt.precisions == ("fp32", "fp16", "int8")


def test_on_a_gpu_with_tensorrt_auto_picks_it_first(plan_artifact, monkeypatch):
    """A machine whose driver sees a GPU and where TensorRT is installed: the plan's artifact goes to TensorRT; an
    artifact without a plan does not."""
    from engine.backends import gpu

    monkeypatch.setattr(gpu, "cuda_gpu_present", lambda: True)
    monkeypatch.setattr(gpu, "tensorrt_usable", lambda: True)
    monkeypatch.setattr(type(BACKENDS["tensorrt"]), "available", lambda spec: True)
    assert select_backend(plan_artifact) == "tensorrt"
    assert select_backend(plan_artifact, device="cpu") in ("openvino", "onnxruntime")  # never on the CPU
    assert select_backend(load_artifact(ONNX_ART)) != "tensorrt"  # no model.plan


def test_cli_choices_and_hints_include_tensorrt_consistently():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices

    def choices(command, option):
        return list(next(a for a in sub[command]._actions if option in a.option_strings).choices)

    for command in ("explain", "explain-dataset", "serve"):
        assert "tensorrt" in choices(command, "--backend")
        assert "int8" in choices(command, "--precision") and "cuda" in choices(command, "--device")
    # plans are built by export/to_trt.py on the GPU machine, not by `xai-engine export` (as Triton's table says)
    assert choices("export", "--format") == list(export_formats()) and "tensorrt" not in export_formats()
    assert spec_writing(PLAN).name == "tensorrt" and spec_writing(PLAN).script == "export/to_trt.py"
    with pytest.raises(ArtifactError, match="python export/to_trt.py"):
        load_artifact(ONNX_ART).file(PLAN)
    from engine.cli import inventory

    listed = inventory()
    assert listed["backends"]["tensorrt"] == {"installed": HAS_TRT, "package": "tensorrt", "install": "tensorrt-cu13"}


# --- export/to_trt.py ---------------------------------------------------------------------------------------------


@without_trt
def test_to_trt_without_tensorrt_fails_at_once_naming_the_install(tmp_path):
    """Exit code 2 and one message, before any export work: a spec CKPT would otherwise be created first."""
    out = tmp_path / "plan-art"
    run = subprocess.run(
        [sys.executable, "export/to_trt.py", "vit-reciprocam:timm/vit_tiny_patch16_224", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    err = run.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("export/to_trt.py: error:")
    assert "pip install tensorrt-cu13" in err and "tensorrt-cu12" in err and "NVIDIA's index" in err
    assert "--check-only" in err
    assert not out.exists()
    usage = subprocess.run(
        [sys.executable, "export/to_trt.py", "default"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert usage.returncode == 2 and "--out DIR is required" in usage.stderr


def test_preflight_without_a_gpu_says_so(monkeypatch):
    from engine import trt_build

    monkeypatch.setattr(trt_build, "tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_build, "gpu_info", lambda index: None)
    with pytest.raises(TensorRTUnavailableError, match="no CUDA GPU 0 is visible.*--check-only"):
        trt_build.preflight(0)


@pytest.mark.skipif(not HAS_GATE, reason="the gate needs polygraphy, onnx-graphsurgeon and onnxruntime")
def test_to_trt_artifact_with_the_build_stubbed(tmp_path, monkeypatch):
    """Everything export/to_trt.py does except TensorRT's build: gate, folded graph to the builder, the record, the
    atomic artifact (source files + model.plan), what Triton serves from it, and the CPU backends still run it."""
    from engine import trt_build
    from engine.triton import TENSORRT_PLAN, write_triton_repository

    assert TENSORRT_PLAN == PLAN
    parsed = {}

    def fake_build(onnx_path, plan_path, **kw):
        import onnx

        parsed["ops"] = {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
        parsed["kw"] = kw
        Path(plan_path).write_bytes(b"plan for " + Path(onnx_path).name.encode())
        return BuiltPlan(Path(plan_path), BuildSettings(True, ()), "11.1.0", tuple(kw["input_size"]), True)

    monkeypatch.setattr(trt_build, "preflight", lambda index=0: GPU)
    monkeypatch.setattr(trt_build, "plan_from_onnx", fake_build)
    src = load_artifact(ONNX_ART)
    out = tmp_path / "trt"
    art = trt_build.trt_artifact_from(ONNX_ART, out, max_batch=16, opt_batch=4, lint=False, log=lambda m: None)
    assert art.path == out and not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left
    assert set(art.manifest["files"]) == set(src.manifest["files"]) | {PLAN}
    rec = art.manifest[MANIFEST_KEY]
    assert rec["sha256"] == art.manifest["files"][PLAN] == sha256_file(out / PLAN)
    assert (rec["tensorrt_version"], rec["gpu_name"], rec["compute_capability"]) == ("11.1.0", GPU.name, "9.0")
    assert (rec["precision"], rec["min_batch"], rec["opt_batch"], rec["max_batch"]) == ("fp32", 1, 4, 16)
    assert rec["input_size"] == [224, 224] and rec["strongly_typed"] is True and rec["builder_flags"] == []
    assert rec["onnx_sha256"] == src.manifest["files"][ONNX]
    assert "If" not in parsed["ops"] and parsed["kw"]["max_batch"] == 16  # the builder got the folded graph
    assert check_plan(art, tensorrt_version="11.1.0", gpu=GPU) == rec
    assert art.precision == src.precision == "fp32"  # the ONNX stays fp32: CPU backends still run the artifact
    assert Engine.load(art).backend_name in ("openvino", "onnxruntime")
    model = write_triton_repository(art, tmp_path / "repo", backend="tensorrt", max_batch_size=16)
    assert (model.path / "1" / TENSORRT_PLAN).read_bytes() == (out / PLAN).read_bytes()
    assert 'platform: "tensorrt_plan"' in model.config
    from engine.triton import TritonConfigError

    with pytest.raises(TritonConfigError, match="above the plan's largest batch \\(16"):  # Triton would not load it
        write_triton_repository(art, tmp_path / "repo2", backend="tensorrt", max_batch_size=32)
    assert not (tmp_path / "repo2").exists()
    # options are checked before any work
    with pytest.raises(InputError, match="--opt-batch"):
        trt_build.trt_artifact_from(ONNX_ART, tmp_path / "x", max_batch=4, opt_batch=8)
    assert not (tmp_path / "x").exists()


# --- on a GPU with TensorRT -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_graph():
    from engine.config import ExplainerConfig
    from engine.graph import build_graph
    from engine.testing import random_backbone

    torch.manual_seed(0)
    bb = random_backbone("timm", "vit_tiny_patch16_224", num_classes=10, img_size=64, depth=2)
    return build_graph(bb, ExplainerConfig("vit-reciprocam", {}), (64, 64))


@pytest.mark.gpu
@needs_trt_gpu
def test_gpu_plan_from_a_module_matches_torch(small_graph):
    backend = get_backend_class("tensorrt")(small_graph, device="cuda")
    x = torch.randn(11, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # 11 > max batch 8: two chunks
    t = torch.tensor([-1, 3, -1, 0, 9, -1, 2, -1, 5, -1, 1])
    with torch.no_grad():
        lt, st = small_graph(x, t)
    lo, so = backend.infer_tensors(x.cuda(), t.cuda())
    assert lo.is_cuda and so.is_cuda and so.shape == st.shape
    assert float((lo.cpu() - lt).abs().max()) <= 1e-3 * max(1.0, float(lt.abs().max()))
    assert float((so.cpu() - st).abs().max()) <= 1e-3
    ln, sn = backend.infer(x.numpy(), t.numpy())  # the NumPy path gives the same
    assert np.abs(ln - lo.cpu().numpy()).max() <= 1e-5 and np.abs(sn - so.cpu().numpy()).max() <= 1e-5
    assert backend.effective_precision == "fp32" and backend.max_batch == 8


@pytest.mark.gpu
@needs_trt_gpu
def test_gpu_threads_get_their_own_contexts(small_graph):
    backend = get_backend_class("tensorrt")(small_graph, device="cuda")
    xs = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)).cuda() for i in range(8)]
    serial = [backend.infer_tensors(x)[1].cpu() for x in xs]
    results: list = [None] * 8

    def run(i):
        for _ in range(5):
            results[i] = backend.infer_tensors(xs[i])[1].cpu()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for a, b in zip(results, serial, strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
@needs_trt_gpu
@pytest.mark.skipif(not HAS_GATE, reason="the gate needs polygraphy, onnx-graphsurgeon and onnxruntime")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_to_trt_end_to_end(tmp_path, example_images, precision):
    from engine.create import create_artifact
    from engine.trt_build import gpu_info, trt_artifact_from, trt_version

    if precision != "fp32" and importlib.util.find_spec("engine.precision") is None:
        pytest.skip("engine.precision is not installed")
    src = create_artifact(
        "reciprocam", "torchvision/resnet18", tmp_path / "src", source="random", num_classes=10, input_size=64
    )
    art = trt_artifact_from(src.path, tmp_path / "trt", precision=precision, max_batch=4, workspace_gb=2.0)
    rec = art.manifest[MANIFEST_KEY]
    here = gpu_info(0)
    assert (rec["gpu_name"], rec["compute_capability"], rec["tensorrt_version"]) == (
        here.name,
        here.compute_capability,
        trt_version(),
    )
    engine = Engine.load(art.path)  # auto: TensorRT first on a GPU
    assert engine.backend_name == "tensorrt" and engine.backend.effective_precision == precision
    torch_engine = Engine.load(art.path, backend="torch", device="cuda")
    a, b = engine.explain(example_images[0]), torch_engine.explain(example_images[0])
    assert a.class_id == b.class_id
    tol = 1e-3 if precision == "fp32" else 5e-2
    assert np.abs(a.saliency - b.saliency).max() <= tol
    # the same artifact with another GPU recorded is refused before deserializing
    manifest = dict(art.manifest)
    manifest[MANIFEST_KEY] = {**rec, "compute_capability": "1.0"}
    files = {n: art.file(n) for n in art.manifest["files"]}
    moved = write_artifact(manifest, tmp_path / "moved", files)
    with pytest.raises(PlanMismatchError, match="rebuild|Rebuild"):
        Engine.load(moved.path, backend="tensorrt")
