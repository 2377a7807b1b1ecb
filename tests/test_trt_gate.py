"""The CPU-side TensorRT gate (engine/trt_gate.py): every method's export passes it (small seeded models), and each
parser rule catches a hand-made bad graph with a message naming the node and the fix. No TensorRT, no GPU."""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("polygraphy")
pytest.importorskip("onnx_graphsurgeon")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from engine.trt_gate import TOPK_MAX_K, TRT_ONNX_OPS, check_model, check_ops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- every method's export passes ---------------------------------------------------------------------------------


@functools.cache
def _backbone(kind: str):
    """Seeded random backbones, built once per kind (each case gets a copy)."""
    import torch

    from engine.testing import random_backbone

    torch.manual_seed(0)
    if kind.startswith("vit"):  # a 2-block ViT-Ti at 32 px (ALA taps four blocks)
        depth = 4 if kind == "vit4" else 2
        return random_backbone("timm", "vit_tiny_patch16_224", num_classes=5, img_size=32, depth=depth)
    if kind == "resnet18":
        return random_backbone("torchvision", "resnet18", num_classes=5)
    # torchvision's ResNet with one BasicBlock per stage (LRP knows its skip junctions), BatchNorm statistics randomised
    from engine.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models.resnet import BasicBlock, ResNet

    from engine.backbones.torchvision_ import TorchvisionCNN

    sys.path.insert(0, str(ROOT / "tests" / "explainers"))
    from lrp_models import randomise

    return randomise(TorchvisionCNN(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5), "resnet10", 5))


def _copy(kind: str):
    return lambda: copy.deepcopy(_backbone(kind))


SMALL_ALA = {"dim": 16, "depth": 2, "heads": 2, "pb_channels": 8, "num_classes": 3}
# case -> (backbone factory, method, options, input side)
METHOD_CASES = {
    "vit-reciprocam-fast": (_copy("vit"), "vit-reciprocam", {"impl": "fast"}, 32),
    "vit-reciprocam-reference": (_copy("vit"), "vit-reciprocam", {"impl": "reference"}, 32),
    "reciprocam-resnet18": (_copy("resnet18"), "reciprocam", {}, 64),
    "reciprocam-resnet18-reference": (_copy("resnet18"), "reciprocam", {"impl": "reference"}, 64),
    "tame-vit": (_copy("vit"), "tame", {}, 32),
    "tame-resnet18": (_copy("resnet18"), "tame", {}, 64),
    "ala-vit": (_copy("vit4"), "ala", {**SMALL_ALA, "depth": 4}, 32),
    **{
        f"lrp-{split}": (_copy("resnet10"), "lrp", {"split": split}, 32)
        for split in ("downsample_only", "all", "half", "none")
    },
}


def test_every_method_and_lrp_split_is_covered():
    from engine.explainers import get_explainer_class, list_explainers
    from engine.explainers.lrp_program import SPLITS

    # the engine's own methods (other test modules register toy explainers of their own in the same registry)
    shipped = {m for m in list_explainers() if get_explainer_class(m).__module__.startswith("engine.")}
    assert {case[1] for case in METHOD_CASES.values()} == shipped
    assert {case[2].get("split") for case in METHOD_CASES.values() if case[1] == "lrp"} >= set(SPLITS)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each case's explain graph, traced once to ONNX the way every artifact is (engine.export.onnx_from_module)."""
    import torch

    from engine.config import ExplainerConfig
    from engine.export import onnx_from_module
    from engine.graph import build_graph

    tmp = tmp_path_factory.mktemp("trt-gate")
    out = {}
    for name, (make, method, options, size) in METHOD_CASES.items():
        torch.manual_seed(0)
        graph = build_graph(make(), ExplainerConfig(method, options), (size, size))
        out[name] = onnx_from_module(graph, tmp / f"{name}.onnx", (size, size))
    return out


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_every_method_export_passes_the_gate(exports, name):
    lint = name in ("vit-reciprocam-fast", "reciprocam-resnet18", "tame-vit", "ala-vit", "lrp-all")  # time budget
    report = check_model(exports[name], lint=lint)
    assert report.passed, report.format()
    assert report.checks["sanitize"] == "passed" and report.checks["ops"] in ("passed", "warnings")
    assert report.checks["lint"] == ("passed" if lint else "skipped: not requested")
    assert report.opset == 17 and set(report.ops) <= TRT_ONNX_OPS
    # the documented ArgMax rule: a warning (target = -1 resolution), never more than the one on the logits
    argmax = [f for f in report.findings if f.op == "ArgMax"]
    assert all(f.level == "warning" for f in argmax) and len(argmax) <= 1
    assert {f.level for f in report.findings} <= {"warning"}
    # the export itself is parser-friendly even before folding: no If whose branches differ in rank (the squeeze in
    # ReciproCAM's saliency used to export as one), no run-time axes
    raw = check_model(exports[name], sanitize=False, lint=False)
    assert raw.passed, raw.format()
    assert "If" not in raw.ops


@pytest.mark.parametrize(
    "name, precision", [("vit-reciprocam-fast", "fp16"), ("reciprocam-resnet18", "int8")], ids=["fp16", "int8"]
)
def test_low_precision_graphs_pass_the_gate(exports, name, precision, tmp_path, example_images):
    """What to_trt.py hands TensorRT at fp16 / int8: the folded export converted by engine.precision (float16 casts;
    symmetric int8 Q/DQ pairs) passes the gate too."""
    pytest.importorskip("engine.precision")
    from engine.config import PreprocessConfig
    from engine.precision import convert_onnx
    from engine.trt_gate import fold_constants

    folded = tmp_path / "folded.onnx"
    onnx.save(fold_constants(onnx.load(str(exports[name]))), str(folded))
    size = METHOD_CASES[name][3]
    converted = convert_onnx(
        folded,
        tmp_path / f"{precision}.onnx",
        precision,
        preprocess=PreprocessConfig(input_size=(size, size)),
        calib=[str(p) for p in example_images[:2]],
        calib_count=2,
    )
    report = check_model(converted, sanitize=False, lint=False)
    assert report.passed, report.format()
    expect = {"fp16": "Cast", "int8": "QuantizeLinear"}[precision]
    assert expect in report.ops


def test_strict_argmax_turns_the_warning_into_an_error(exports):
    report = check_model(exports["reciprocam-resnet18"], lint=False, argmax="error")
    assert not report.passed
    (finding,) = report.errors
    assert finding.op == "ArgMax" and finding.node and finding.node in str(finding)


# --- hand-made bad graphs: one per rule ---------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domains]]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    return model


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _i64(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.INT64, shape)


def _out(name, rank, elem=TensorProto.FLOAT):
    """A graph output of known rank and unknown sizes."""
    return helper.make_tensor_value_info(name, elem, [f"{name}_{i}" for i in range(rank)])


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


IMAGE = _f32("image", ["batch", 3, 8, 8])


def _bad_graphs():
    """name -> (model, the node that breaks the rule, words the message must hold)."""
    cases = {}
    # ReduceMax at opset 18: axes is an input; here it comes from a graph input, so folding cannot make it a constant
    cases["reducemax_axes_input"] = (
        _model(
            [helper.make_node("ReduceMax", ["image", "axes"], ["y"], name="max_runtime_axes", keepdims=1)],
            [IMAGE, _i64("axes", [1])],
            [_out("y", 4)],
            opset=18,
        ),
        "max_runtime_axes",
        ["axes", "constant initializer", "opset 17"],
    )
    cases["topk_unsorted"] = (
        _model(
            [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_unsorted", axis=-1, sorted=0)],
            [_f32("x", [1, 16])],
            [_out("v", 2), _out("i", 2, TensorProto.INT64)],
            [_const("k", [4])],
        ),
        "topk_unsorted",
        ["sorted=0", "sorted=1"],
    )
    cases["topk_k_too_large"] = (
        _model(
            [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk_4000", axis=-1)],
            [_f32("x", [1, 4096])],
            [_out("v", 2), _out("i", 2, TensorProto.INT64)],
            [_const("k", [4000])],
        ),
        "topk_4000",
        ["K = 4000", f"K < {TOPK_MAX_K}"],
    )
    cases["resize_antialias"] = (
        _model(
            [helper.make_node("Resize", ["image", "", "scales"], ["y"], name="resize_aa", mode="linear", antialias=1)],
            [IMAGE],
            [_out("y", 4)],
            [_const("scales", [1.0, 1.0, 0.5, 0.5], np.float32)],
            opset=18,
        ),
        "resize_aa",
        ["antialias"],
    )
    cases["scatternd_reduction"] = (
        _model(
            [helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], name="scatter_add", reduction="add")],
            [_f32("x", [4, 3]), _f32("upd", [2, 3])],
            [_out("y", 2)],
            [_const("idx", [[0], [2]])],
            opset=16,
        ),
        "scatter_add",
        ["reduction", "ScatterND"],
    )
    cases["unique"] = (
        _model(
            [helper.make_node("Unique", ["x"], ["y"], name="unique_values")],
            [_f32("x", [6])],
            [_out("y", 1)],
        ),
        "unique_values",
        ["Unique is not supported"],
    )
    cases["op_outside_the_list"] = (
        _model(
            [helper.make_node("Det", ["x"], ["y"], name="determinant")],
            [_f32("x", [2, 3, 3])],
            [_out("y", 1)],
        ),
        "determinant",
        ["Det is not in the operators", "operators.md"],
    )
    then = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "ax"], ["t"], name="then_squeeze")], "then", [], [_f32("t", [2])]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="else_id")], "else", [], [_f32("e", [2, 1])]
    )
    cases["if_branch_ranks"] = (
        _model(
            [helper.make_node("If", ["c"], ["y"], name="squeeze_if", then_branch=then, else_branch=other)],
            [helper.make_tensor_value_info("c", TensorProto.BOOL, []), _f32("x", [2, 1])],
            [_out("y", 1)],
            [_const("ax", [1])],
        ),
        "squeeze_if",
        ["same rank"],
    )
    cases["maxpool_indices"] = (
        _model(
            [helper.make_node("MaxPool", ["image"], ["y", "idx"], name="pool_with_indices", kernel_shape=[2, 2])],
            [IMAGE],
            [_out("y", 4), _out("idx", 4, TensorProto.INT64)],
        ),
        "pool_with_indices",
        ["Indices"],
    )
    return cases


BAD = _bad_graphs()


@pytest.mark.parametrize("case", list(BAD))
def test_each_rule_catches_its_bad_graph_naming_the_node(case):
    model, node, words = BAD[case]
    onnx.checker.check_model(model)  # valid ONNX: only TensorRT's parser would refuse it
    report = check_model(model, lint=False)  # folded first, as the gate always does
    assert not report.passed
    hits = [f for f in report.errors if f.check == "ops" and f.node == node]
    assert hits, report.format()
    text = str(hits[0])
    assert f"node {node!r}" in text and "Fix:" in text
    for word in words:
        assert word in text, (word, text)
    assert hits[0].fix  # every finding says how to fix it


def test_folding_makes_computed_axes_constant():
    """ReduceMax axes computed from constants: an error read as exported, gone after constant folding."""
    nodes = [
        helper.make_node("Add", ["a", "b"], ["axes"], name="axes_sum"),
        helper.make_node("ReduceMax", ["image", "axes"], ["y"], name="max_folded_axes", keepdims=1),
    ]
    model = _model(nodes, [IMAGE], [_out("y", 4)], [_const("a", [1]), _const("b", [1])], opset=18)
    raw = check_model(model, sanitize=False, lint=False)
    assert [f.node for f in raw.errors] == ["max_folded_axes"]
    folded = check_model(model, lint=False)
    assert folded.passed, folded.format()
    node = next(n for n in folded.sanitized.graph.node if n.op_type == "ReduceMax")
    assert node.input[1] in {t.name for t in folded.sanitized.graph.initializer}


def test_custom_ops_need_a_plugin():
    model = _model(
        [helper.make_node("FancyOp", ["image"], ["y"], name="fancy", domain="com.example")],
        [IMAGE],
        [_out("y", 4)],
        domains=("com.example",),
    )
    findings = check_ops(model)
    assert any(f.node == "fancy" and f.level == "error" and "plugin" in f.fix for f in findings)


def test_lint_reports_a_node_onnx_runtime_cannot_run():
    """polygraphy check lint: shapes that do not broadcast fail in ONNX Runtime, and the report names the node."""
    model = _model(
        [helper.make_node("Add", ["image", "w"], ["y"], name="bad_broadcast")],
        [IMAGE],
        [_out("y", 4)],
        [_const("w", np.ones((5, 7)), np.float32)],
    )
    report = check_model(model, sanitize=False)
    lint = [f for f in report.errors if f.check == "lint"]
    assert lint and any(f.node == "bad_broadcast" for f in lint), report.format()
    assert report.checks["lint"] == "failed"


def test_a_good_graph_passes_and_the_report_serialises():
    model = _model(
        [helper.make_node("Relu", ["image"], ["logits"], name="relu")], [IMAGE], [_f32("logits", ["batch", 3, 8, 8])]
    )
    report = check_model(model)
    assert (
        report.passed
        and report.findings == []
        and report.checks
        == {
            "sanitize": "passed",
            "lint": "passed",
            "ops": "passed",
        }
    )
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["ops"] == {"Relu": 1}


# --- the command lines ---------------------------------------------------------------------------------------------


def test_gate_cli_exit_codes(tmp_path, exports, capsys):
    """python -m engine.trt_gate: 0 passed (JSON on stdout), 1 failed (the report names the node), 2 cannot run."""
    from engine.trt_gate import main

    assert main([str(exports["tame-vit"]), "--json", "--no-lint"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    bad = tmp_path / "bad.onnx"
    onnx.save(BAD["unique"][0], str(bad))
    assert main([str(bad), "--no-lint", "--save-sanitized", str(tmp_path / "s.onnx")]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "node 'unique_values' (Unique)" in err
    assert onnx.load(str(tmp_path / "s.onnx")).graph.node[0].name == "unique_values"
    assert main([str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_to_trt_check_only_runs_the_gate_here(tmp_path, capsys):
    """export/to_trt.py CKPT --check-only needs no TensorRT; an artifact without model.onnx is exported first."""
    import torch

    from engine.create import create_artifact
    from engine.trt_build import main

    torch.manual_seed(0)
    src = create_artifact(
        "vit-reciprocam",
        "timm/vit_tiny_patch16_224",
        tmp_path / "src",
        source="random",
        num_classes=5,
        input_size=32,
        backbone_kwargs={"depth": 2, "img_size": 32},
    )
    assert not src.has("model.onnx")
    assert main([str(src.path), "--check-only", "--no-lint", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["checks"]["sanitize"] == "passed" and "Einsum" in report["ops"]
    assert main([str(tmp_path / "missing"), "--check-only"]) == 2  # neither a folder nor METHOD:LIBRARY/NAME
    assert "export/to_trt.py: error:" in capsys.readouterr().err
