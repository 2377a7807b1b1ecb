"""Artifacts (create, verify, tamper, versions) and export parity: ONNX Runtime and OpenVINO vs torch at fp32."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from engine import Engine
from engine.artifact import WEIGHTS, load_artifact
from engine.backends import get_backend_class
from engine.create import create_artifact
from engine.errors import ArtifactError, BackendUnavailableError, InputError
from engine.export import export_artifact
from engine.testing import perturb_for_tests

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
TOL = 1e-4


def _conditioned(art_dir, tmp_path, name="cond"):
    """Rewrite a random-weight artifact's weights with well-conditioned ones (perturbed norms, scaled head)."""
    from engine.graph import graph_from_artifact, save_graph

    art = load_artifact(art_dir)
    graph = graph_from_artifact(art)
    perturb_for_tests(graph.backbone)
    wpath = tmp_path / f"{name}.safetensors"
    save_graph(graph, wpath)
    from engine.artifact import write_artifact

    return write_artifact(art.manifest, tmp_path / name, {WEIGHTS: wpath})


@pytest.fixture(scope="module")
def vit_art(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vit")
    raw = create_artifact("vit-reciprocam", "timm/vit_tiny_patch16_224", tmp / "raw", source="random")
    art = _conditioned(raw.path, tmp)
    formats = ("onnx", "openvino") if HAS_OV else ("onnx",)
    return export_artifact(art, tmp / "exported", formats) if HAS_ORT or HAS_OV else art


def _batch(n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)


BACKENDS = [
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_matches_torch_fp32(vit_art, backend):
    """An exported artifact (ONNX, IR) runs like torch. Real-weight artifacts: tests/test_golden.py, on real photos."""
    art = vit_art
    torch_be = get_backend_class("torch")(art)
    other = get_backend_class(backend)(art, precision="fp32")
    x = _batch(3)  # batch 3 while export traced batch 2: the batch axis is dynamic
    targets = np.array([-1, 5, -1])
    lt, st = torch_be.infer(x, targets)
    lo, so = other.infer(x, targets)
    assert so.shape == st.shape == (3, 14, 14)
    assert np.abs(lo - lt).max() <= TOL * max(1.0, np.abs(lt).max())
    assert np.abs(so - st).max() <= TOL
    assert st.max() == pytest.approx(1.0) and st.min() == pytest.approx(0.0)
    # batch 1 works too, and the target input is honoured
    l1, s1 = other.infer(x[1:2], np.array([5]))
    assert np.abs(s1[0] - so[1]).max() <= TOL


def test_artifact_manifest_records_everything(vit_art):
    m = vit_art.manifest
    assert m["format_version"] == 1 and m["explainer"]["method"] == "vit-reciprocam"
    assert m["explainer"]["options"]["impl"] == "auto"  # the default: fast where it applies, else reference
    assert m["io"]["inputs"]["target"] == ["batch"] and m["io"]["outputs"]["saliency"] == ["batch", 14, 14]
    assert {"torch", "timm", "xai_engine"} <= set(m["versions"])
    assert all(len(h) == 64 for h in m["files"].values()) and WEIGHTS in m["files"]
    assert len(m["class_names"]) == 1000 and m["class_names"][207] == "golden retriever"


def _copy(art, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(art.path, dst)
    return dst


def test_tampered_weights_are_refused(vit_art, tmp_path):
    dst = _copy(vit_art, tmp_path)
    data = bytearray((dst / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (dst / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"sha256.*Re-export"):
        load_artifact(dst)


def test_missing_file_and_bad_manifest_are_refused(vit_art, tmp_path):
    dst = _copy(vit_art, tmp_path)
    (dst / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="to_onnx.py"):
        load_artifact(dst)
    (dst / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(dst)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


def test_newer_format_and_version_mismatch_are_refused(vit_art, tmp_path):
    dst = _copy(vit_art, tmp_path)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="upgrade xai-engine"):
        load_artifact(dst)
    manifest["versions"]["timm"] = "0.1.0"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"made with timm 0\.1\.0.*Re-create"):
        Engine.load(dst, backend="torch")
    engine = Engine.load(dst, backend="torch", allow_version_mismatch=True)
    assert engine.backend_name == "torch"


def test_weights_of_another_architecture_are_refused(vit_art, tmp_path):
    dst = _copy(vit_art, tmp_path)
    from safetensors.torch import save_file

    save_file({"backbone.model.head.weight": torch.zeros(3, 3)}, str(dst / WEIGHTS))
    manifest = json.loads((dst / "manifest.json").read_text())
    from engine.artifact import sha256_file

    manifest["files"][WEIGHTS] = sha256_file(dst / WEIGHTS)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not fit"):
        Engine.load(dst, backend="torch")


def test_create_refuses_pickles_and_foreign_weights(tmp_path):
    pth = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(1)}, pth)
    with pytest.raises(InputError, match="never loaded"):
        create_artifact("reciprocam", "torchvision/resnet50", tmp_path / "a", weights=pth)
    from safetensors.torch import save_file

    st = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(2)}, str(st))
    with pytest.raises(InputError, match="does not fit"):
        create_artifact("reciprocam", "torchvision/resnet50", tmp_path / "b", weights=st)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists(), "no half-written artifact"


def test_create_from_local_weights_file(tmp_path):
    from engine.backbones import build_backbone
    from engine.config import BackboneConfig

    bb = build_backbone(BackboneConfig("timm", "vit_tiny_patch16_224", num_classes=10, weights="random"), seed=3)
    st = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, str(st))
    art = create_artifact("vit-reciprocam", "timm/vit_tiny_patch16_224", tmp_path / "a", weights=st, num_classes=10)
    assert art.class_names == [f"class_{i}" for i in range(10)]
    engine = Engine.load(art.path, backend="torch")
    with torch.no_grad():
        expected = bb(torch.from_numpy(_batch(1))).numpy()
    logits, _ = engine.backend.infer(_batch(1))
    assert np.abs(logits - expected).max() < 1e-5


def test_missing_runtime_names_the_extra(monkeypatch, vit_art):
    import engine.backends.registry as registry

    real = importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(BackendUnavailableError, match=r"pip install 'xai-engine\[openvino\]'"):
        Engine.load(vit_art.path, backend="openvino")
    assert Engine.load(vit_art.path).backend_name in ("onnxruntime", "torch")  # auto skips the missing runtime


def test_onnx_backend_needs_an_export(tmp_path):
    art = create_artifact("vit-reciprocam", "timm/vit_tiny_patch16_224", tmp_path / "a", source="random")
    with pytest.raises(ArtifactError, match="to_onnx.py"):
        Engine.load(art.path, backend="onnxruntime")
    assert Engine.load(art.path).backend_name == "torch"
