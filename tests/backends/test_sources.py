"""A backend opens an artifact, an in-memory graph, or a bare ONNX / OpenVINO file; runs explain and classify-only
graphs; has a NumPy and a tensor path; records the precision it actually runs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from engine import Engine
from engine.backends import get_backend_class, open_backend
from engine.errors import InputError
from engine.export import ir_from_onnx, onnx_from_module
from engine.graph import ClassifyGraph

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
TOL = 1e-4
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino not installed")


@pytest.fixture(scope="module")
def files(vit_graph, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    out = {"explain.onnx": onnx_from_module(vit_graph, tmp / "explain.onnx", (224, 224))}
    out["classify.onnx"] = onnx_from_module(
        ClassifyGraph(vit_graph.backbone, (224, 224)), tmp / "classify.onnx", (224, 224), with_target=False
    )
    if HAS_OV:
        out["explain.xml"] = ir_from_onnx(out["explain.onnx"], tmp / "explain.xml")
    return out


@pytest.fixture(scope="module")
def want(vit_graph, batch):
    t = torch.tensor([-1, 7, -1])
    with torch.no_grad():
        logits, sal = vit_graph(batch, t)
    return t, logits.numpy(), sal.numpy()


SOURCES = [  # a module on ONNX Runtime: tests/test_golden.py, on the built-in artifacts
    pytest.param("onnxruntime", "explain.onnx", marks=needs_ort),
    pytest.param("openvino", "explain.xml", marks=needs_ov),
    pytest.param("torch", "module"),
]


@pytest.mark.parametrize(("backend", "source"), SOURCES)
def test_every_source_explains_alike(vit_graph, files, batch, want, backend, source):
    t, logits, sal = want
    b = open_backend(backend, vit_graph if source == "module" else files[source], precision="fp32")
    assert b.explains and b.input_size == (224, 224) and b.num_classes == 1000  # read off a file where it is one
    lo, so = b.infer(batch.numpy(), t.numpy())
    assert np.abs(lo - logits).max() <= TOL * max(1.0, np.abs(logits).max()) and np.abs(so - sal).max() <= TOL
    lt, st = b.infer_tensors(batch, t)  # the tensor path: tensors in, tensors out, same values
    assert isinstance(lt, torch.Tensor) and lt.device.type == "cpu" and st.dtype == torch.float32
    assert np.abs(st.numpy() - so).max() <= 1e-6 and np.abs(lt.numpy() - lo).max() <= 1e-5
    assert np.abs(b.classify(batch.numpy()) - lo).max() <= 1e-5
    with pytest.raises(InputError, match="out of range"):
        b.infer_tensors(batch, torch.tensor([0, 1, 1000]))
    with pytest.raises(InputError, match="NaN or inf"):
        b.infer_tensors(torch.full((1, 3, 224, 224), float("nan")))
    with pytest.raises(InputError, match=r"shape \(B, 3, 224, 224\)"):
        b.infer(np.zeros((1, 3, 112, 112), np.float32))


CLASSIFY = [
    pytest.param("onnxruntime", "classify.onnx", marks=needs_ort),
    pytest.param("openvino", "module", marks=needs_ov),
    pytest.param("torch", "module"),
]


@pytest.mark.parametrize(("backend", "source"), CLASSIFY)
def test_classify_only_graphs(vit_graph, files, batch, want, backend, source):
    module = ClassifyGraph(vit_graph.backbone, (224, 224))
    b = open_backend(backend, module if source == "module" else files[source])
    assert not b.explains
    logits = b.classify(batch.numpy())
    assert np.abs(logits - want[1]).max() <= TOL * max(1.0, np.abs(want[1]).max())
    assert torch.allclose(b.classify_tensors(batch), torch.from_numpy(logits), atol=1e-5)
    with pytest.raises(InputError, match="only classifies"):
        b.infer(batch.numpy())


def test_wrong_sources_are_refused(vit_graph, files, tmp_path):
    with pytest.raises(InputError, match="torch backend runs an artifact or a graph module"):
        get_backend_class("torch")(files["explain.onnx"])
    with pytest.raises(InputError, match="does not exist"):
        get_backend_class("torch")(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="needs an artifact"):
        open_backend("auto", vit_graph)
    with pytest.raises(InputError, match="input_size"):
        get_backend_class("torch")(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="runs precision fp32"):
        get_backend_class("onnxruntime")(vit_graph, precision="bf16")


def test_precision_run_is_recorded(example_images):
    engine = Engine.load("default", backend="torch")
    exp = engine.explain(example_images[0])
    assert exp.precision == engine.backend.effective_precision == "fp32" and exp.to_dict()["precision"] == "fp32"
    assert engine.backend.info()["effective_precision"] == "fp32"
    if HAS_OV:
        ov = open_backend("openvino", engine.backend.graph, precision="fp32")
        assert ov.effective_precision == "fp32"  # OpenVINO reports what it compiled; asked f32, it runs f32
        assert Engine(engine.artifact, ov).explain(example_images[0]).precision == "fp32"
