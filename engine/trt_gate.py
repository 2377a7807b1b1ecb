"""The CPU-side TensorRT gate: will TensorRT's ONNX parser take this explain graph? Checked without TensorRT or a GPU.

Three checks, each reporting findings that name the node and the fix (:class:`GateReport`):

1. **sanitize**: Polygraphy's constant folding (``polygraphy surgeon sanitize --fold-constants``, through its Python
   API): shape computations and constant subgraphs become initializers, as TensorRT's parser wants them. The folded
   graph is what the other checks read, and what ``export/to_trt.py`` hands to the parser.
2. **lint**: ``polygraphy check lint`` (its Python API): the ONNX checker plus every node run through ONNX Runtime on
   generated inputs (``target`` drawn from [-1, 0], so that the class gather stays in range).
3. **ops**: every node (in subgraphs too) against :data:`TRT_ONNX_OPS`, the operators TensorRT's ONNX parser
   supports (onnx-tensorrt ``docs/operators.md``, TensorRT 10.0, opsets 9-20), and the restrictions documented there:

   * the axes of every Reduce* op (ReduceMax/ReduceMin included: from opset 18 on they are an input), of Slice,
     Squeeze, Unsqueeze and Pad, CumSum's axis and TopK's K must be constants (initializers) after folding;
   * TopK: ``sorted=1`` and K < 3840;
   * Resize: no ``antialias``, modes nearest/linear, the supported coordinate transformations and nearest modes,
     ``keep_aspect_ratio_policy=stretch``;
   * ScatterND: no ``reduction``; Unique is not supported; MaxPool's Indices output is not supported; pooling is 2D/3D
     without dilation; QuantizeLinear/DequantizeLinear zero points must be 0; If branches must give outputs of the
     same rank; custom-domain ops need a TensorRT plugin;
   * **ArgMax/ArgMin rule**: a *warning*, not an error. TensorRT lowers them to TopK(k=1), slower than a reduction and
     sensitive to float16 overflow; every explain graph has exactly one, on the float32 logits, to resolve
     ``target = -1`` (the predicted class). A known target is an input, so the graph cannot drop it; callers who pass
     explicit targets do not depend on its result. ``argmax="error"`` (CLI ``--strict-argmax``) makes it an error,
     for graphs that should not have one.

Run it: ``python -m engine.trt_gate MODEL.onnx|ARTIFACT`` or ``python export/to_trt.py CKPT --check-only`` (exit code
0: passed, 1: failed, 2: it could not run). It needs onnx, onnxruntime, polygraphy and onnx-graphsurgeon
(``pip install polygraphy onnx-graphsurgeon``; both are in the ``dev`` and ``gpu`` extras), never TensorRT.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailableError, EngineError

if TYPE_CHECKING:
    import onnx

# The ONNX operators TensorRT's ONNX parser supports: the "Y" rows of onnx-tensorrt's docs/operators.md for TensorRT
# 10.0 (opsets 9-20). Newer TensorRT releases parse more (TensorRT 11: opsets up to 25); add an op here once the
# operators.md of the oldest TensorRT you build with lists it.
TRT_ONNX_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
    MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()  # noqa: SIM905 - the table reads better as words
)
MIN_OPSET, MAX_OPSET = 9, 20  # TensorRT 10.0's parser; TensorRT 11 reads up to opset 25
TOPK_MAX_K = 3840  # TopK's K must be below this
RESIZE_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
RESIZE_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")
_REDUCE_OPS = tuple(op for op in sorted(TRT_ONNX_OPS) if op.startswith("Reduce"))
# op -> (input index, what it is): inputs the parser needs as constants (initializers)
CONSTANT_INPUTS: dict[str, tuple[int, str]] = {
    **{op: (1, "axes") for op in _REDUCE_OPS},
    "Slice": (3, "axes"),
    "Squeeze": (1, "axes"),
    "Unsqueeze": (1, "axes"),
    "Pad": (3, "axes"),
    "CumSum": (1, "axis"),
    "TopK": (1, "K"),
}
_POOLS = ("AveragePool", "MaxPool", "LpPool")
_DEPENDENCIES = {
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "polygraphy": "polygraphy",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
}
INSTALL = "pip install onnx onnxruntime polygraphy onnx-graphsurgeon"
CHECKS = ("sanitize", "lint", "ops")


@dataclass(frozen=True)
class Finding:
    """One problem (``level="error"``: TensorRT will not take the graph) or caution (``"warning"``)."""

    check: str  # "sanitize", "lint", "ops", "io" or "opset"
    level: str  # "error" or "warning"
    message: str
    fix: str = ""
    node: str | None = None
    op: str | None = None

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self.op}): " if self.node else (f"{self.op}: " if self.op else "")
        return f"{self.level.upper()} [{self.check}] {where}{self.message}" + (f" Fix: {self.fix}" if self.fix else "")


@dataclass
class GateReport:
    """What the gate found. ``passed``: no error finding (warnings do not fail it)."""

    model: str
    findings: list[Finding] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)  # check -> "passed" / "failed" / "warnings" / "skipped: ..."
    ops: dict[str, int] = field(default_factory=dict)
    opset: int | None = None
    sanitized: Any = None  # the folded onnx.ModelProto (what to_trt.py parses); not serialised

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def finish(self, check: str, skipped: str | None = None) -> None:
        group = ("ops", "io", "opset") if check == "ops" else (check,)  # the operator rules read io and opset too
        mine = [f for f in self.findings if f.check in group]
        if skipped is not None:
            self.checks[check] = f"skipped: {skipped}"
        elif any(f.level == "error" for f in mine):
            self.checks[check] = "failed"
        else:
            self.checks[check] = "warnings" if mine else "passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "passed": self.passed,
            "checks": self.checks,
            "opset": self.opset,
            "ops": self.ops,
            "findings": [asdict(f) for f in self.findings],
        }

    def format(self) -> str:
        """A human-readable summary: the verdict, each check, each finding."""
        lines = [f"TensorRT gate: {'PASSED' if self.passed else 'FAILED'} for {self.model}"]
        lines += [f"  {check}: {state}" for check, state in self.checks.items()]
        lines += [f"  {f}" for f in self.findings]
        return "\n".join(lines)


class GateUnavailableError(BackendUnavailableError):
    """The gate's tools (onnx, onnxruntime, polygraphy, onnx-graphsurgeon) are not installed."""


def missing_dependencies() -> list[str]:
    """The distributions the gate needs that are not installed (checked without importing them)."""
    return [dist for module, dist in _DEPENDENCIES.items() if importlib.util.find_spec(module) is None]


def require_gate() -> None:
    """Raise :class:`GateUnavailableError` naming the install when a tool the gate needs is missing."""
    missing = missing_dependencies()
    if missing:
        raise GateUnavailableError(
            f"the TensorRT gate needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed: {INSTALL} (or pip install 'xai-engine[dev]'). TensorRT itself is not needed."
        )


# --------------------------------------------------------------------------------------------------------------------
# the gate
# --------------------------------------------------------------------------------------------------------------------


def check_model(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    sanitize: bool = True,
    lint: bool = True,
    argmax: str = "warn",
    name: str | None = None,
) -> GateReport:
    """Run the gate on an ONNX model.

    Args:
        model: an ``.onnx`` path or a loaded model.
        sanitize: fold constants first (Polygraphy); without it the rules read the graph as exported.
        lint: run ``polygraphy check lint`` (ONNX checker + ONNX Runtime per node).
        argmax: ``"warn"`` (the default rule, see the module docstring) or ``"error"``.
        name: how the report names the model (default: the path).

    Returns:
        The :class:`GateReport`; ``report.sanitized`` holds the folded model when ``sanitize`` ran.

    Raises:
        GateUnavailableError: onnx, onnxruntime, polygraphy or onnx-graphsurgeon is not installed.
    """
    if argmax not in ("warn", "error"):
        raise EngineError(f"argmax must be 'warn' or 'error', got {argmax!r}.")
    require_gate()
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto, label = model, name or "<in-memory model>"
    else:
        path = Path(model)
        if not path.is_file():
            raise EngineError(f"{path} does not exist; pass an .onnx file or an artifact folder holding model.onnx.")
        proto, label = onnx.load(str(path)), name or str(path)
    report = GateReport(model=label)
    graph_model = proto
    if sanitize:
        try:
            graph_model = fold_constants(proto)
            report.sanitized = graph_model
            report.finish("sanitize")
        except Exception as e:  # noqa: BLE001 - Polygraphy and ONNX Runtime raise many kinds
            report.findings.append(
                Finding(
                    "sanitize",
                    "error",
                    f"constant folding failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).",
                    "run `polygraphy surgeon sanitize MODEL.onnx --fold-constants -o folded.onnx -vv` to see which "
                    "node; re-export the graph (python export/to_onnx.py CKPT --out DIR).",
                )
            )
            report.finish("sanitize")
    else:
        report.finish("sanitize", "not requested")
    if lint:
        _lint(graph_model, report)
        report.finish("lint")
    else:
        report.finish("lint", "not requested")
    report.opset = _default_opset(graph_model)
    report.ops = dict(sorted(Counter(n.op_type for n in _all_nodes(graph_model.graph)).items()))
    report.findings.extend(check_ops(graph_model, argmax=argmax))
    report.finish("ops")
    return report


def check_artifact_or_file(source: str | os.PathLike, **kwargs: Any) -> GateReport:
    """:func:`check_model` on an ``.onnx`` file, or on the ``model.onnx`` of an artifact folder (or built-in name)."""
    from .artifact import ONNX, load_artifact, resolve_artifact_path

    root = resolve_artifact_path(source)
    if root.is_dir():
        art = load_artifact(root)
        return check_model(art.file(ONNX), name=kwargs.pop("name", None) or str(root / ONNX), **kwargs)
    return check_model(source, **kwargs)


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Polygraphy's constant folding (``surgeon sanitize --fold-constants``): shape computations and constant
    subgraphs become initializers; errors are raised, not swallowed."""
    from polygraphy.backend.onnx import fold_constants as _fold

    with _quiet_polygraphy():
        return _fold(model, num_passes=None, fold_shapes=True, partitioning=None, error_ok=False, copy=True)


@contextlib.contextmanager
def _quiet_polygraphy() -> Iterator[None]:
    from polygraphy.logger import G_LOGGER

    previous = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = previous


def _lint(model: onnx.ModelProto, report: GateReport) -> None:
    """``polygraphy check lint`` through its Python API; its JSON report becomes findings."""
    import onnx
    from polygraphy.tools.check.subtool import Lint

    with tempfile.TemporaryDirectory(prefix="xai-trt-gate-") as tmp:
        path, out = Path(tmp) / "model.onnx", Path(tmp) / "lint.json"
        large = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit: weights go beside the graph
        onnx.save(model, str(path), save_as_external_data=large, location="model.onnx.data" if large else None)
        argv = [str(path), "-o", str(out)]
        if any(i.name == "target" for i in model.graph.input):
            argv += ["--val-range", "target:[-1,0]"]  # -1 = the predicted class; 0 is always a class
        tool = Lint()
        try:
            with _quiet_polygraphy():
                args = tool.setup_parser().parse_args(argv)
                tool.parse(args)
                tool.run(args)
            data = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
        except Exception as e:  # noqa: BLE001 - the lint tool raises whatever ONNX Runtime raises
            report.findings.append(
                Finding("lint", "error", f"polygraphy check lint could not run ({type(e).__name__}: {e}).")
            )
            return
    if data is None:
        report.findings.append(Finding("lint", "error", "polygraphy check lint wrote no report."))
        return
    for entry in data.get("lint_entries", []):
        level = "error" if entry.get("level") == "exception" else "warning"
        nodes = entry.get("nodes") or [None]
        for node in nodes:
            report.findings.append(
                Finding(
                    "lint",
                    level,
                    f"{entry.get('source', 'lint')}: {entry.get('message', '').strip()}",
                    "the graph is not valid ONNX or does not run in ONNX Runtime: re-export it "
                    "(python export/to_onnx.py CKPT --out DIR) and check the node's inputs.",
                    node=node,
                )
            )


# --------------------------------------------------------------------------------------------------------------------
# the operator rules (pure: they read a model, no polygraphy, no onnxruntime)
# --------------------------------------------------------------------------------------------------------------------


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def check_ops(model: onnx.ModelProto, *, argmax: str = "warn") -> list[Finding]:
    """The TensorRT parser's operator rules (see the module docstring) on every node of ``model``, subgraphs
    included. Read it after constant folding: a constant is an initializer or a Constant node's output."""
    findings: list[Finding] = []
    opset = _default_opset(model)
    if opset is not None and opset < MIN_OPSET:
        findings.append(
            Finding(
                "opset",
                "error",
                f"the model uses opset {opset}; TensorRT's ONNX parser reads opsets {MIN_OPSET} and later.",
                "re-export with a newer opset (engine.export.OPSET is 17).",
            )
        )
    elif opset is not None and opset > MAX_OPSET:
        findings.append(
            Finding(
                "opset",
                "warning",
                f"the model uses opset {opset}; TensorRT 10.0 parses opsets {MIN_OPSET}-{MAX_OPSET} "
                "(TensorRT 11: up to 25).",
                "export with opset 17 (engine.export.OPSET) unless your TensorRT reads this one.",
            )
        )
    for other in model.opset_import:
        if other.domain not in ("", "ai.onnx"):
            findings.append(
                Finding(
                    "opset",
                    "warning",
                    f"the model imports the operator domain {other.domain!r}.",
                    "ops of other domains need a TensorRT plugin; export without them.",
                )
            )
    findings.extend(_check_io(model))
    _check_graph(model.graph, set(), findings, argmax, [0])
    return findings


def _check_io(model: onnx.ModelProto) -> list[Finding]:
    import onnx

    out: list[Finding] = []
    inputs = {i.name: i for i in model.graph.input}
    image = inputs.get("image")
    if image is None:
        out.append(
            Finding(
                "io",
                "error",
                f"the graph has no input named 'image' (inputs: {sorted(inputs)}); export/to_trt.py sets its "
                "batch profile on 'image' and 'target'.",
                "export with engine.export.onnx_from_module (inputs image, target; outputs logits, saliency).",
            )
        )
    else:
        dims = image.type.tensor_type.shape.dim
        if len(dims) != 4:
            out.append(Finding("io", "error", f"input 'image' has rank {len(dims)}, not 4 (B, 3, H, W).", ""))
        elif any(not d.HasField("dim_value") for d in dims[1:]):
            out.append(
                Finding(
                    "io",
                    "warning",
                    "input 'image' has a dynamic channel or spatial dimension; the TensorRT profile covers the batch "
                    "only, at the artifact's input size.",
                    "export at a fixed input size (engine.export.onnx_from_module does).",
                )
            )
    for value in list(model.graph.input) + list(model.graph.output):
        elem = value.type.tensor_type.elem_type
        if elem == onnx.TensorProto.DOUBLE:
            out.append(
                Finding(
                    "io",
                    "warning",
                    f"graph tensor {value.name!r} is float64; TensorRT casts it down to float32.",
                    "export the graph in float32.",
                )
            )
        elif elem in (onnx.TensorProto.STRING, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32):
            out.append(
                Finding(
                    "io",
                    "error",
                    f"graph tensor {value.name!r} has an ONNX type TensorRT does not support "
                    f"({onnx.TensorProto.DataType.Name(elem)}).",
                    "use float32/float16 for data and int64/int32 for indices.",
                )
            )
    return out


def _check_graph(
    graph: onnx.GraphProto, outer_constants: set[str], findings: list[Finding], argmax: str, counter: list[int]
) -> None:
    from onnx import numpy_helper

    constants = set(outer_constants) | {t.name for t in graph.initializer}
    values = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
            value = _attr(node, "value")
            if value is not None:
                values[node.output[0]] = value
    for node in graph.node:
        index = counter[0]
        counter[0] += 1
        name = _node_name(node, index)

        def add(level: str, message: str, fix: str, name: str = name, op: str = node.op_type) -> None:
            findings.append(Finding("ops", level, message, fix, node=name, op=op))

        if node.domain not in ("", "ai.onnx"):
            add(
                "error",
                f"custom op {node.domain}::{node.op_type} is not an ONNX operator TensorRT's parser knows.",
                "express it with standard ONNX ops, or write a TensorRT plugin for it.",
            )
            continue
        op = node.op_type
        if op == "Unique":
            add(
                "error",
                "Unique is not supported by TensorRT (its output size depends on the data).",
                "compute the unique values outside the graph (at export time, as a constant) or avoid them.",
            )
            continue
        if op not in TRT_ONNX_OPS:
            add(
                "error",
                f"{op} is not in the operators TensorRT's ONNX parser supports (onnx-tensorrt operators.md).",
                f"rewrite the {op} with supported ops in the explainer's forward (or add a TensorRT plugin).",
            )
            continue
        if op in CONSTANT_INPUTS:
            i, what = CONSTANT_INPUTS[op]
            src = _input(node, i)
            if src and src not in constants:
                why = " (at opset 18 and later the axes are an input)" if op in _REDUCE_OPS else ""
                add(
                    "error",
                    f"{op}'s {what} (input {src!r}) is computed at run time{why}; TensorRT's ONNX parser needs it "
                    "as a constant initializer.",
                    "fold constants (polygraphy surgeon sanitize --fold-constants) or export with opset 17, where "
                    f"{what} is an attribute (engine.export.OPSET); where it depends on the data, make it a constant "
                    "in the explainer.",
                )
        if op == "TopK":
            if int(_attr(node, "sorted", 1)) != 1:
                add(
                    "error",
                    "TopK has sorted=0; TensorRT supports sorted=1 only.",
                    "use torch.topk(..., sorted=True) (the default).",
                )
            k_name = _input(node, 1)
            k = values.get(k_name)
            if k is not None:
                k_value = int(numpy_helper.to_array(k).reshape(-1)[0])
                if k_value >= TOPK_MAX_K:
                    add(
                        "error",
                        f"TopK has K = {k_value}; TensorRT needs K < {TOPK_MAX_K}.",
                        f"take at most {TOPK_MAX_K - 1} values per TopK (split it, or sort outside the graph).",
                    )
        elif op == "Resize":
            _check_resize(node, add)
        elif op == "ScatterND" and str(_attr(node, "reduction", "none")) != "none":
            add(
                "error",
                f"ScatterND has reduction={_attr(node, 'reduction')!r}; TensorRT supports ScatterND without a "
                "reduction only.",
                "scatter without accumulation (index_put_ with accumulate=False), or build the sum with a one-hot "
                "MatMul.",
            )
        elif op in ("ArgMax", "ArgMin"):
            level = "error" if argmax == "error" else "warning"
            add(
                level,
                f"{op} becomes TopK(k=1) in TensorRT: slower than a reduction and prone to float16 overflow. The "
                "explain graphs use one on the float32 logits to resolve target = -1 (the predicted class).",
                "pass explicit targets where the class is known (the graph then does not depend on it); keep the "
                "logits float32 in fp16 conversions; --strict-argmax makes this an error.",
            )
        elif op in _POOLS:
            kernel = _attr(node, "kernel_shape")
            dilations = _attr(node, "dilations")
            if kernel is not None and len(kernel) not in (2, 3):
                add("error", f"{op} over {len(kernel)} dimension(s); TensorRT pools 2D or 3D only.", "pool in 2D.")
            if dilations is not None and any(int(d) != 1 for d in dilations):
                add("error", f"{op} has dilations {list(dilations)}; TensorRT needs none.", "pool without dilation.")
            if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
                add(
                    "error",
                    "MaxPool's Indices output is not supported by TensorRT.",
                    "do not use return_indices=True / max_unpool in the graph.",
                )
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            zero = values.get(_input(node, 2))
            if zero is not None and numpy_helper.to_array(zero).any():
                add(
                    "error",
                    f"{op} has a non-zero zero point; TensorRT supports symmetric quantisation only.",
                    "quantise symmetrically (engine.precision's int8 conversion does).",
                )
        elif op == "If":
            _check_if(node, add)
        elif op == "Loop":
            add(
                "warning",
                "Loop: TensorRT needs scan outputs of a build-time length and loop-carried values of a fixed shape.",
                "unroll the loop in the explainer where its trip count is known.",
            )
        for attr in node.attribute:  # subgraphs (If branches, Loop bodies) see this graph's constants
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _check_graph(sub, constants, findings, argmax, counter)


def _check_resize(node: onnx.NodeProto, add) -> None:
    if int(_attr(node, "antialias", 0)) != 0:
        add(
            "error",
            "Resize has antialias=1; TensorRT does not support antialiasing.",
            "resize with antialias=False (F.interpolate(..., antialias=False), the default).",
        )
    mode = str(_attr(node, "mode", "nearest"))
    if mode not in ("nearest", "linear"):
        add("error", f"Resize mode {mode!r}; TensorRT supports nearest and linear.", "use bilinear or nearest.")
    coord = str(_attr(node, "coordinate_transformation_mode", "half_pixel"))
    if coord not in RESIZE_COORDINATE_MODES:
        add(
            "error",
            f"Resize coordinate_transformation_mode {coord!r} is not supported by TensorRT.",
            f"use one of {', '.join(RESIZE_COORDINATE_MODES)} (align_corners=True/False in F.interpolate).",
        )
    if mode == "nearest" and str(_attr(node, "nearest_mode", "round_prefer_floor")) not in RESIZE_NEAREST_MODES:
        add("error", f"Resize nearest_mode {_attr(node, 'nearest_mode')!r} is not supported by TensorRT.", "")
    policy = str(_attr(node, "keep_aspect_ratio_policy", "stretch"))
    if policy != "stretch":
        add("error", f"Resize keep_aspect_ratio_policy {policy!r}; TensorRT supports 'stretch' only.", "")


def _rank(value: onnx.ValueInfoProto) -> int | None:
    t = value.type.tensor_type
    return len(t.shape.dim) if t.HasField("shape") else None


def _check_if(node: onnx.NodeProto, add) -> None:
    then, other = _attr(node, "then_branch"), _attr(node, "else_branch")
    if then is None or other is None:
        return
    for i, (a, b) in enumerate(zip(then.output, other.output, strict=False)):
        ra, rb = _rank(a), _rank(b)
        if ra is not None and rb is not None and ra != rb:
            add(
                "error",
                f"If's branches give output {i} ranks {ra} and {rb}; TensorRT needs the same rank in both branches "
                "(torch exports such an If for a squeeze of a dimension whose size it cannot see).",
                "fold constants (the condition is usually a shape test), or squeeze with a known size "
                "(reshape instead of squeeze) in the explainer.",
            )
        elif ra is None or rb is None:
            add(
                "warning",
                f"If output {i}: the branch ranks are unknown here; TensorRT needs the same rank in both branches.",
                "fold constants so that the If disappears, or make both branches give the same rank.",
            )


# --------------------------------------------------------------------------------------------------------------------
# CLI: python -m engine.trt_gate MODEL.onnx|ARTIFACT
# --------------------------------------------------------------------------------------------------------------------


def quiet_onnxruntime() -> None:
    """For command-line entry points: ONNX Runtime's graph-optimiser warnings would bury the report."""
    with contextlib.suppress(Exception):  # noqa: BLE001 - best effort
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-lint", action="store_true", help="skip polygraphy check lint (ONNX Runtime per node)")
    p.add_argument("--strict-argmax", action="store_true", help="fail on ArgMax/ArgMin instead of warning")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--save-sanitized", default=None, metavar="PATH", help="write the constant-folded model here")


def report_and_exit_code(report: GateReport, args: argparse.Namespace) -> int:
    """Print the report (text on stderr, or JSON on stdout) and save the folded model if asked; 0 passed, 1 failed."""
    if getattr(args, "save_sanitized", None) and report.sanitized is not None:
        from .fileio import atomic_write

        atomic_write(args.save_sanitized, report.sanitized.SerializeToString())
    if getattr(args, "json", False):
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format(), file=sys.stderr)
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m engine.trt_gate",
        description="Check on the CPU that TensorRT's ONNX parser will take an explain graph (no TensorRT needed): "
        "polygraphy sanitize (constant folding) and check lint, then the parser's operator rules. Exit code 0: "
        "passed, 1: failed, 2: could not run.",
    )
    p.add_argument("model", help="an .onnx file, an artifact folder holding model.onnx, or a built-in artifact name")
    add_gate_arguments(p)
    args = p.parse_args(argv)
    quiet_onnxruntime()
    try:
        report = check_artifact_or_file(
            args.model, lint=not args.no_lint, argmax="error" if args.strict_argmax else "warn"
        )
    except EngineError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return report_and_exit_code(report, args)


if __name__ == "__main__":
    sys.exit(main())
