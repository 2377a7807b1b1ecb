"""Precision in the graph: fp16 and int8 ``model.onnx`` (engine.precision, export --precision), on ONNX Runtime CPU.

Subjects: the built-in EfficientNet-Lite0 ReciproCAM graph (real ImageNet weights, already exported to ONNX, so
nothing is traced) for the parity checks on the example photos, and a tiny seeded ViT-ReciproCAM artifact (3 blocks,
64 x 64) for LayerNorm / Softmax, the export path, the manifest, ``Engine.load`` and the CLI. The full measurement on
200 held-out photos is ``benchmarks/precision_parity.py``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxconverter_common")),
    reason="needs onnx, onnxruntime and onnxconverter-common",
)

from engine import Engine  # noqa: E402
from engine.artifact import DEFAULT_EXPORTED_BUILTIN, load_artifact  # noqa: E402
from engine.cli import main  # noqa: E402
from engine.errors import InputError, RandomWeightsWarning  # noqa: E402


def _types(model) -> dict[str, int]:
    g = model.graph
    return {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output)}


def _session(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(session, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    outs = [session.run(None, {"image": x, "target": np.array([-1], dtype=np.int64)}) for x in batch]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b, strict=True)])


@pytest.fixture(scope="module")
def lite0(tmp_path_factory, example_images):
    """The built-in Lite0 graph at fp32, fp16 and int8 (calibrated on the example photos), and those photos."""
    from engine import precision
    from engine.explainers.reciprocam import spatial_masks
    from engine.preprocess import Preprocessor, load_image

    tmp = tmp_path_factory.mktemp("lite0")
    art = load_artifact(DEFAULT_EXPORTED_BUILTIN)
    src = art.file("model.onnx")
    # the explainer's mask buffer (copy 0 unmasked, then one 3x3 Gaussian per position of the 7x7 map), as the
    # export passes it (engine.export reads it off the graph); no need to build the torch graph here
    masks = [np.concatenate([np.ones((1, 49), np.float32), spatial_masks((7, 7)).numpy()])]
    paths = {"fp32": src, "fp16": tmp / "fp16.onnx", "int8": tmp / "int8.onnx"}
    precision.convert_onnx(src, paths["fp16"], "fp16")
    precision.convert_onnx(
        src, paths["int8"], "int8", preprocess=art.preprocess, calib=example_images, keep_fp32_from=masks
    )
    pre = Preprocessor(art.preprocess)
    batch = [pre([load_image(p)])[0] for p in example_images]
    return paths, batch, masks


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A tiny seeded ViT-ReciproCAM artifact (random weights, perturbed norms) and its fp32 / fp16 exports."""
    from engine.artifact import WEIGHTS, write_artifact
    from engine.create import create_artifact
    from engine.export import export_artifact
    from engine.graph import graph_from_artifact, save_graph
    from engine.testing import perturb_for_tests

    tmp = tmp_path_factory.mktemp("vit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        raw = create_artifact(
            "vit-reciprocam",
            "timm/vit_tiny_patch16_224",
            tmp / "raw",
            source="random",
            num_classes=10,
            backbone_kwargs={"img_size": 64, "depth": 3},
            input_size=64,
        )
        graph = graph_from_artifact(raw)
        perturb_for_tests(graph.backbone, seed=3)
        save_graph(graph, tmp / "w.safetensors")
        art = write_artifact(raw.manifest, tmp / "src", {WEIGHTS: tmp / "w.safetensors"})
        fp32 = export_artifact(art, tmp / "fp32")
        fp16 = export_artifact(art, tmp / "fp16", precision="fp16")
    return art, fp32, fp16


# --- the graphs ----------------------------------------------------------------------------------------------------


def test_fp16_keeps_io_types_and_the_saliency_ops_in_fp32(lite0, tiny_vit):
    import onnx

    from engine import precision

    fp32_path, fp16_path = lite0[0]["fp32"], lite0[0]["fp16"]
    src, model = onnx.load(str(fp32_path)), onnx.load(str(fp16_path))
    f32, i64, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16
    assert _types(model) == {"image": f32, "target": i64, "logits": f32, "saliency": f32}
    assert precision.graph_precision(model) == "fp16" and precision.graph_precision(src) == "fp32"
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert conv_weights and all(inits[w] == f16 for w in conv_weights), "the convolutions run in fp16"
    # the saliency tail (softmax of the copies, target gather, min-max) is found by structure and stays fp32
    tail = precision.saliency_tail_nodes(src)
    kinds = {n.op_type for n in src.graph.node if n.name in tail}
    assert {"Softmax", "ReduceMin", "ReduceMax", "GatherElements", "ArgMax"} <= kinds
    assert not kinds & {"Conv", "MatMul"}, "the classifier feeds the logits too: it is not tail"
    fp32_nodes = set(precision.float_ops_names(model))
    kept = {n.op_type for n in model.graph.node if n.name in fp32_nodes}
    assert {"Softmax", "ReduceMin", "ReduceMax"} <= kept
    assert not {"Conv", "MatMul"} & kept
    # the ViT's LayerNorms and attention softmaxes stay fp32, its matmuls do not
    vit = onnx.load(str(tiny_vit[2].file("model.onnx")))
    vit_fp32 = set(precision.float_ops_names(vit))
    by_op: dict[str, set[bool]] = {}
    for n in vit.graph.node:
        by_op.setdefault(n.op_type, set()).add(n.name in vit_fp32)
    assert by_op["LayerNormalization"] == {True} and by_op["Softmax"] == {True}
    assert by_op["MatMul"] == {False}


def test_int8_is_qdq_with_the_sensitive_nodes_left_fp32(lite0):
    import onnx

    from engine import precision

    src = onnx.load(str(lite0[0]["fp32"]))
    model = onnx.load(str(lite0[0]["int8"]))
    assert _types(model) == _types(src)
    assert precision.graph_precision(model) == "int8"
    producer = {o: n for n in model.graph.node for o in n.output}
    quantised = {
        n.name
        for n in model.graph.node
        if n.op_type in precision.INT8_OPS
        and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)
    }
    convs = [n.name for n in src.graph.node if n.op_type == "Conv"]
    ends = precision.end_nodes(src)  # the stem convolution and the classifier
    depthwise = precision.depthwise_nodes(src)
    assert {"/explainer/conv_stem/Conv", "/explainer/classifier/MatMul"} <= set(ends)
    assert len(depthwise) == 16
    assert not quantised & (set(ends) | set(depthwise) | set(precision.saliency_tail_nodes(src)))
    assert quantised and quantised <= set(convs), "the pointwise convolutions run in int8"
    assert len(quantised) == len(convs) - len(depthwise) - 1
    # the masked copies' matmuls (features x masks, classifier) stay fp32
    on_copies = set(precision.copy_path_nodes(src, lite0[2]))
    copy_path = {n.op_type for n in src.graph.node if n.name in on_copies}
    assert "MatMul" in copy_path and not {n for n in quantised if "MatMul" in n}
    # symmetric int8 (zero point 0) everywhere, as TensorRT wants
    inits = {t.name: t for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)
    assert all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)


def test_converted_graphs_agree_with_fp32_on_photos(lite0):
    """Real weights, real photos: same top-1 on every example photo; maps: fp16 r >= 0.999, int8 r >= 0.95."""
    paths, batch, _ = lite0
    logits, maps = _run(_session(paths["fp32"]), batch)
    for prec, floor in (("fp16", 0.999), ("int8", 0.95)):
        lo, sal = _run(_session(paths[prec]), batch)
        assert (lo.argmax(1) == logits.argmax(1)).all(), prec
        r = _pearson(maps, sal)
        assert r.min() >= floor, (prec, r)
        assert sal.min() >= 0 and sal.max() <= 1 and np.isclose(sal.max(axis=(1, 2)), 1).all()
    # fp16 is close in value too, not just in shape
    lo16, sal16 = _run(_session(paths["fp16"]), batch)
    assert np.abs(lo16 - logits).max() < 0.05 * np.abs(logits).max()
    assert np.abs(sal16 - maps).max() < 0.02


def test_openvino_runs_the_converted_graphs(lite0):
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino not installed")
    from engine.backends import get_backend_class

    paths, batch, _ = lite0
    logits, maps = _run(_session(paths["fp32"]), batch[:2])
    for prec in ("fp16", "int8"):
        ov = get_backend_class("openvino")(paths[prec], precision="fp32", threads=2)
        out = [ov.infer(x, np.array([-1])) for x in batch[:2]]
        assert (np.concatenate([o[0] for o in out]).argmax(1) == logits.argmax(1)).all(), prec
        assert _pearson(maps, np.concatenate([o[1] for o in out])).min() >= 0.95, prec


# --- artifacts, Engine.load, CLI -----------------------------------------------------------------------------------


def test_export_records_the_precision_and_engine_reports_it(tiny_vit, example_images):
    from engine import precision

    _, fp32, fp16 = tiny_vit
    assert fp32.precision == "fp32" and "precision_details" not in fp32.manifest  # the default is unchanged
    assert precision.graph_precision(fp32.file("model.onnx")) == "fp32"
    assert fp16.precision == "fp16" and fp16.manifest["precision_details"]["tool"].startswith("onnxconverter-common")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        assert load_artifact(fp16.path).precision == "fp16"
        with Engine.load(fp16.path, backend="onnxruntime", threads=2) as engine:
            exp = engine.explain(example_images[0])
        with Engine.load(fp32.path, backend="onnxruntime", threads=2) as engine:
            ref = engine.explain(example_images[0])
    assert exp.precision == "fp16" and exp.to_dict()["precision"] == "fp16" and ref.precision == "fp32"
    assert exp.class_id == ref.class_id
    assert np.corrcoef(exp.saliency_lowres.ravel(), ref.saliency_lowres.ravel())[0, 1] > 0.99


def test_cli_exports_int8_with_a_calibration_folder(tiny_vit, example_images, tmp_path, capsys):
    art = tiny_vit[0]
    calib = tmp_path / "photos" / "nested"
    calib.mkdir(parents=True)
    for p in example_images:
        shutil.copy(p, calib / p.name)
    out = tmp_path / "int8"
    args = ["export", str(art.path), "--format", "onnx", "--precision", "int8", "--calib", str(calib.parent)]
    assert main([*args, "--calib-count", "3", "--out", str(out)]) == 0
    assert "(int8)" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    assert manifest["precision_details"]["calibration"] == {
        "folder": "photos",
        "photos": 3,
        "seed": 0,
        "method": "percentile",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        with Engine.load(out, backend="onnxruntime", threads=2) as engine:
            exp = engine.explain(example_images[1])
        # the graph's precision is what runs: asking ONNX Runtime for another is refused, not mislabelled
        with pytest.raises(InputError, match="holds an int8 graph"):
            Engine.load(out, backend="onnxruntime", precision="fp32")
        with pytest.raises(InputError, match="holds an fp32 graph"):
            Engine.load(tiny_vit[1].path, backend="onnxruntime", precision="int8")
        if importlib.util.find_spec("openvino") is not None:  # auto picks OpenVINO, which runs the Q/DQ graph
            with Engine.load(out, threads=2) as engine:
                assert engine.backend_name == "openvino"
                assert engine.explain(example_images[1]).precision == "int8"
    assert exp.precision == "int8" and exp.saliency_lowres.shape == (4, 4)
    assert np.isfinite(exp.saliency).all() and exp.saliency_lowres.max() == pytest.approx(1.0)


def test_bad_precision_and_calibration_inputs_say_how_to_fix(tiny_vit, tmp_path, capsys):
    from engine import precision

    art, fp32, fp16 = tiny_vit
    with pytest.raises(InputError, match=r"unknown graph precision 'int4'.*fp32, fp16, int8"):
        precision.convert_onnx(fp32.file("model.onnx"), tmp_path / "x.onnx", "int4")
    with pytest.raises(InputError, match="already holds an fp16 graph"):
        precision.convert_onnx(fp16.file("model.onnx"), tmp_path / "x.onnx", "fp16")
    with pytest.raises(InputError, match="preprocess"):
        precision.convert_onnx(fp32.file("model.onnx"), tmp_path / "x.onnx", "int8")
    with pytest.raises(InputError, match="does not exist"):
        precision.calibration_images(tmp_path / "nowhere")
    assert not (tmp_path / "x.onnx").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    out = tmp_path / "out"
    code = main(["export", str(art.path), "--precision", "int8", "--calib", str(empty), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "holds no images" in err and "--calib DIR" in err
    assert not out.exists(), "nothing is written when calibration cannot run"
    code = main(["export", str(art.path), "--format", "openvino", "--precision", "fp16", "--out", str(out)])
    assert code == 2 and "--format onnx" in capsys.readouterr().err
    code = main(["export", str(art.path), "--precision", "fp16", "--calib", str(empty), "--out", str(out)])
    assert code == 2 and "--calib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(art.path), "--precision", "int4", "--out", str(out)])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
