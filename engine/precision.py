"""Precision in the graph: fp16 and int8 ONNX models converted from an exported fp32 ``model.onnx``.

TensorRT 11 builds strongly typed networks only (no FP16/INT8 builder flags, no INT8 calibrator), so a low-precision
engine needs the precision written into the ONNX graph itself; the same graph then runs on TensorRT 10 and 11, on
ONNX Runtime and on OpenVINO. Two conversions, each named ``<target>_from_<source>``:

* :func:`fp16_from_fp32`: onnxconverter-common's float16 conversion with ``keep_io_types=True`` (``image`` stays
  float32, ``target`` int64, ``logits`` and ``saliency`` float32). Kept in float32: the ops in
  :data:`FP16_KEEP_OPS` (LayerNormalization and the pieces of a decomposed LayerNorm, Softmax, the min/max
  reductions) and the saliency tail (:func:`saliency_tail_nodes`: the nodes only the saliency needs, the masked
  copies' softmax, the target gather and the min-max normalisation, whose ``eps`` underflows in float16).
* :func:`int8_from_fp32`: ONNX Runtime's static quantisation in QDQ form (QuantizeLinear/DequantizeLinear pairs,
  symmetric int8 activations and per-channel symmetric int8 weights, as TensorRT wants them) on the
  :data:`INT8_OPS` (Conv, MatMul, Gemm), calibrated on real photos preprocessed by the artifact's own
  :class:`~engine.preprocess.Preprocessor`, so calibration sees exactly the engine's input. Left in float32, each
  found by the graph's structure (not by node names): the saliency tail, the first and last layers
  (:func:`end_nodes`), depthwise convolutions (:func:`depthwise_nodes`) and the layers that compute on the
  explainer's masked copies (:func:`copy_path_nodes`), whose small differences are the map.

:func:`convert_onnx` is the one entry point (``xai-engine export --format onnx --precision fp16|int8``). The heavy
imports (onnx, onnxconverter_common, onnxruntime.quantization) happen inside the functions: importing this module
costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BackendUnavailableError, InputError
from .fileio import atomic_write

if TYPE_CHECKING:
    import onnx

    from .config import PreprocessConfig

GRAPH_PRECISIONS = ("fp32", "fp16", "int8")
"""Precisions an exported ``model.onnx`` can hold (``xai-engine export --format onnx --precision``)."""

FP16_KEEP_OPS = (
    "LayerNormalization",
    "ReduceMean",  # a decomposed LayerNorm: mean, (x - mean)^2 (Pow overflows float16 past 256), mean, sqrt
    "Pow",
    "Sqrt",
    "Softmax",
    "ReduceMin",  # min-max normalisation of the map
    "ReduceMax",
)
"""Op types :func:`fp16_from_fp32` keeps in float32 (besides onnxconverter-common's own block list)."""

INT8_OPS = ("Conv", "MatMul", "Gemm")
"""Op types :func:`int8_from_fp32` quantises (their inputs get QDQ pairs); everything else stays float32."""

PRECISION_KEY = "xai_engine.precision"
"""The model metadata key (``metadata_props``) where a converted graph records its precision; ONNX Runtime reads
it as ``session.get_modelmeta().custom_metadata_map``."""

DEFAULT_CALIB_COUNT = 64
INT8_METHOD = "percentile"  # calibration: ranges at the 99.999th percentile of |activation|, not the extreme values
# photos to calibrate on when no folder is given: the repository's shared sample (absent in an installed package)
DEFAULT_CALIB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"


# --------------------------------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------------------------------


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise BackendUnavailableError(
            "converting an ONNX graph's precision needs the onnx package: pip install 'xai-engine[onnx]'"
        ) from e
    return onnx


def _load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    onnx = _onnx()
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs, with the outer-scope values its subgraphs (If / Loop / Scan branches) read."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
        for g in graphs:
            inner = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                names.extend(i for i in _node_inputs(n) if i not in inner)
    return names


def _ancestors(graph: onnx.GraphProto, output: str) -> set[str]:
    """Names of the nodes ``output`` depends on."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    stack = [output]
    done: set[str] = set()
    while stack:
        value = stack.pop()
        if value in done or value not in producer:
            continue
        done.add(value)
        node = producer[value]
        seen.add(node.name)
        stack.extend(_node_inputs(node))
    return seen


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node of the main graph a unique name (block and exclude lists go by node name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return model


def saliency_tail_nodes(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """The nodes that only the ``saliency`` output needs (not ``logits``), in graph order.

    In every explain graph these are the masked copies' softmax, the gather of the target class, the target choice
    (ArgMax of the logits) and the min-max normalisation: the steps that turn the copies' logits into the map. Found
    by the graph's structure, not by names, so the list holds for every method and exporter. Empty for a graph
    without a ``saliency`` output (a classifier).
    """
    model = _load(model)
    outputs = {o.name for o in model.graph.output}
    if "saliency" not in outputs:
        return []
    tail = _ancestors(model.graph, "saliency") - (_ancestors(model.graph, "logits") if "logits" in outputs else set())
    return [n.name for n in model.graph.node if n.name in tail]


def shape_nodes(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """The nodes that compute on shapes only (exporters write ``Cast(Shape) -> Div -> Ceil`` for "same" padding,
    or ``Sqrt(Cast(head_dim))`` for an attention scale): every input derives from a ``Shape`` / ``Size`` output or is
    a constant. Kept in float32 by :func:`fp16_from_fp32`: sizes past 2048 are not exact in float16."""
    model = _load(model)
    g = model.graph
    constant = {t.name for t in g.initializer}
    derived: set[str] = set()
    names = []
    for node in g.node:
        inputs = _node_inputs(node)
        if node.op_type == "Constant":
            constant.update(node.output)
        elif node.op_type in ("Shape", "Size") or (
            any(i in derived for i in inputs) and all(i in derived or i in constant for i in inputs)
        ):
            derived.update(node.output)
            names.append(node.name)
    return names


def end_nodes(model: str | os.PathLike | onnx.ModelProto, op_types: Sequence[str] = INT8_OPS) -> list[str]:
    """The first and the last layers: nodes of ``op_types`` that the ``image`` input reaches, or that reach an
    output, without passing another node of ``op_types`` (a CNN's stem convolution and classifier; a ViT's patch
    embedding and head). :func:`int8_from_fp32` leaves them in float32, the usual practice: the stem sees the raw
    normalised pixels, and the classifier's inputs are where the masked copies differ."""
    model = _load(model)
    g = model.graph
    kinds = set(op_types)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in _node_inputs(n):
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}

    def walk(start: list[str], step) -> list[str]:
        found, seen, stack = [], set(), list(start)
        while stack:
            value = stack.pop()
            for n in step(value):
                if n.name in seen:
                    continue
                seen.add(n.name)
                if n.op_type in kinds:
                    found.append(n.name)
                else:
                    stack.extend(n.output if step is forward else _node_inputs(n))
        return found

    def forward(value: str) -> list:
        return consumers.get(value, [])

    def backward(value: str) -> list:
        return [producer[value]] if value in producer else []

    first = walk(["image"], forward)
    last = walk([o.name for o in g.output], backward)
    names = set(first) | set(last)
    return [n.name for n in g.node if n.name in names]


def depthwise_nodes(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """Grouped convolutions (depthwise: ``group`` > 1). :func:`int8_from_fp32` leaves them in float32: after BatchNorm
    folding their output channels span very different ranges, which one per-tensor activation scale for the next
    layer cannot hold (the MobileNet / EfficientNet weakness that data-free quantisation papers describe); they are
    memory-bound and a small share of the work, so little speed is lost."""
    model = _load(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]


def copy_path_nodes(model: str | os.PathLike | onnx.ModelProto, constants: Sequence[np.ndarray]) -> list[str]:
    """The nodes that compute on the explainer's masked copies: descendants of the graph constants that hold one of
    ``constants`` (the explainer's mask buffers, matched by their values, in any shape) that an output depends on.

    ReciproCAM and ViT-ReciproCAM push N masked copies of a feature map (or of the last block's tokens) through the
    rest of the network; the map is made of the small differences between the copies' class probabilities, which a
    per-tensor int8 scale, sized for the whole activation, wipes out. :func:`int8_from_fp32` leaves these nodes in
    float32. Empty when no constant matches (a method without masks).
    """
    onnx = _onnx()
    from onnx import numpy_helper

    model = _load(model)
    g = model.graph
    wanted = [np.asarray(c, dtype=np.float32).ravel() for c in constants if np.size(c) >= 2]
    if not wanted:
        return []

    def matches(t: onnx.TensorProto) -> bool:
        if t.data_type != onnx.TensorProto.FLOAT:
            return False
        size = int(np.prod(t.dims)) if len(t.dims) else 1
        if all(size != w.size for w in wanted):
            return False
        a = numpy_helper.to_array(t).ravel()
        return any(a.size == w.size and np.array_equal(a, w) for w in wanted)

    seeds = {t.name for t in g.initializer if matches(t)}
    for n in g.node:
        if n.op_type == "Constant" and any(a.name == "value" and matches(a.t) for a in n.attribute):
            seeds.update(n.output)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in _node_inputs(n):
            consumers.setdefault(i, []).append(n)
    below: set[str] = set()
    stack = list(seeds)
    while stack:
        for n in consumers.get(stack.pop(), []):
            if n.name not in below:
                below.add(n.name)
                stack.extend(n.output)
    above = set().union(*(_ancestors(g, o.name) for o in g.output))
    return [n.name for n in g.node if n.name in below & above]


def graph_precision(model: str | os.PathLike | onnx.ModelProto) -> str:
    """The precision an ONNX graph holds: its :data:`PRECISION_KEY` metadata where a conversion wrote it, else
    ``int8`` (QuantizeLinear nodes), ``fp16`` (float16 weights) or ``fp32``."""
    onnx = _onnx()
    model = _load(model)
    recorded = {p.key: p.value for p in model.metadata_props}.get(PRECISION_KEY)
    if recorded in GRAPH_PRECISIONS:
        return recorded
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def float_ops_names(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """Names of the main graph's nodes whose (first) output is float32, by onnx shape inference's types."""
    onnx = _onnx()
    model = _load(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (an op it does not know: use the types the graph itself records)
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.output, *g.input)}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n.name for n in g.node if n.output and types.get(n.output[0]) == onnx.TensorProto.FLOAT]


def float_ops(model: str | os.PathLike | onnx.ModelProto, *, skip: Sequence[str] = ("Cast",)) -> dict[str, int]:
    """Op type -> how many nodes of the main graph compute in float32 (a float32 output), ``skip`` left out."""
    model = _load(model)
    names = set(float_ops_names(model))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in names and node.op_type not in skip:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _save_atomic(model: onnx.ModelProto, dst: Path, precision: str) -> Path:
    """Write ``model`` to ``dst`` atomically (one file: weights inline; models past 2 GB are not supported), with
    its precision in the metadata (:data:`PRECISION_KEY`), where a runtime reads it without parsing the graph."""
    onnx = _onnx()
    props = [p for p in model.metadata_props if p.key != PRECISION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=PRECISION_KEY, value=precision)
    onnx.checker.check_model(model)
    return atomic_write(dst, model.SerializeToString())


# --------------------------------------------------------------------------------------------------------------------
# fp16
# --------------------------------------------------------------------------------------------------------------------


def fp16_from_fp32(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    keep_ops: Sequence[str] = FP16_KEEP_OPS,
    keep_nodes: Sequence[str] | None = None,
) -> Path:
    """Convert an fp32 ONNX graph to fp16, keeping its inputs' and outputs' types.

    The saliency tail (:func:`saliency_tail_nodes`) is split off first and put back unchanged, in float32, behind
    Casts: onnxconverter-common mishandles the ``If`` node that torch exports for a squeeze there (a branch reads a
    value it renames), and the min-max normalisation's ``eps`` would underflow in float16 anyway.

    Args:
        src: the fp32 ``model.onnx``.
        dst: where to write the fp16 graph (atomically).
        keep_ops: op types kept in float32, added to onnxconverter-common's default block list.
        keep_nodes: further node names kept in float32.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise BackendUnavailableError(
            "fp16 export needs onnxconverter-common: pip install 'xai-engine[onnx]' (or pip install "
            "onnxconverter-common)"
        ) from e
    onnx = _onnx()
    model = name_nodes(_load(src))
    _require_fp32(model, src)
    body, tail, boundary = _split_tail(model)
    ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_ops))
    blocked = set(keep_nodes or ()) | set(shape_nodes(body))
    for node in body.graph.node:  # the converter retypes values but not Casts: a Cast to float now makes float16
        if node.op_type == "Cast" and node.name not in blocked and node.op_type not in ops:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
    with warnings.catch_warnings():  # it warns once per value it clamps into float16's range
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            body, keep_io_types=True, op_block_list=ops, node_block_list=sorted(blocked)
        )
    graph = converted.graph
    graph.node.extend(tail.node)
    graph.initializer.extend(tail.initializer)
    outputs = {o.name: o for o in (*graph.output, *tail.output)}
    order = [o.name for o in model.graph.output]
    del graph.output[:]
    graph.output.extend(outputs[name] for name in order)
    kept = {o.name for o in graph.output} | {i for n in graph.node for i in _node_inputs(n)}
    stale = [v for v in graph.value_info if v.name in boundary and v.name not in kept]
    for v in stale:
        graph.value_info.remove(v)
    return _save_atomic(onnx.shape_inference.infer_shapes(converted), Path(dst), "fp16")


def _split_tail(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.GraphProto, set[str]]:
    """Split ``model`` into its body and its saliency tail.

    Returns the body (a model whose outputs are the graph outputs it makes plus every value the tail reads from it,
    each made by its own Identity node, so that onnxconverter-common's output Casts touch nothing else), the tail
    (its nodes, its own copies of the initializers it reads, its outputs) and the names of the body's extra outputs.
    """
    onnx = _onnx()
    g = model.graph
    names = set(saliency_tail_nodes(model))
    body_nodes = [n for n in g.node if n.name not in names]
    tail_nodes = [n for n in g.node if n.name in names]
    tail_made = {o for n in tail_nodes for o in n.output}
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}

    def rename(nodes: list, old: str, new: str) -> None:
        for n in nodes:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new
            for attr in n.attribute:  # subgraphs that read the value from the outer scope
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    rename(list(sub.node), old, new)

    extra: list[onnx.NodeProto] = []
    outputs = []
    for out in g.output:  # graph outputs the body makes: through an Identity
        if out.name in tail_made:
            continue
        inner = f"{out.name}__body"
        for n in body_nodes:
            for k, o in enumerate(n.output):
                if o == out.name:
                    n.output[k] = inner
        rename(body_nodes + tail_nodes, out.name, inner)
        extra.append(onnx.helper.make_node("Identity", [inner], [out.name], name=f"{out.name}__out"))
        outputs.append(out)
    tail_inits: list[onnx.TensorProto] = []
    boundary: set[str] = set()
    for value in dict.fromkeys(i for n in tail_nodes for i in _node_inputs(n)):
        if value in tail_made or value in graph_inputs:
            continue
        link = f"{value}__tail"
        if value in inits:  # the tail gets its own float32 copy of a constant
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[value])
            copy.name = link
            tail_inits.append(copy)
        else:
            extra.append(onnx.helper.make_node("Identity", [value], [link], name=link))
            outputs.append(onnx.helper.make_empty_tensor_value_info(link))
            boundary.add(link)
        rename(tail_nodes, value, link)
    body = onnx.ModelProto()
    body.CopyFrom(model)
    del body.graph.node[:]
    body.graph.node.extend(body_nodes + extra)
    body_reads = {i for n in body.graph.node for i in _node_inputs(n)}
    used = [t for t in g.initializer if t.name in body_reads]
    del body.graph.initializer[:]
    body.graph.initializer.extend(used)
    del body.graph.output[:]
    body.graph.output.extend(outputs)
    del body.graph.value_info[:]
    body = onnx.shape_inference.infer_shapes(body)
    known = {v.name: v for v in body.graph.value_info}
    for out in body.graph.output:  # the extra outputs' types, now that inference has run
        if out.name in boundary and out.name in known:
            out.CopyFrom(known[out.name])
            body.graph.value_info.remove(known[out.name])  # an output is typed once, by graph.output
    tail = onnx.GraphProto()
    tail.node.extend(tail_nodes)
    tail.initializer.extend(tail_inits)
    tail.output.extend(o for o in g.output if o.name in tail_made)
    return body, tail, boundary


def _require_fp32(model: onnx.ModelProto, src: Any) -> None:
    have = graph_precision(model)
    if have != "fp32":
        raise InputError(
            f"{src} already holds an {have} graph; convert the fp32 export (xai-engine export ... "
            "--format onnx) instead."
        )


# --------------------------------------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------------------------------------


def calibration_images(
    calib: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    count: int = DEFAULT_CALIB_COUNT,
    seed: int = 0,
) -> list[Path]:
    """The photos to calibrate on: a seeded subset of ``count`` (all of them where there are fewer).

    Args:
        calib: a folder (searched recursively for image files), a list of image files, or None for the shared
            sample photos (``../shared/data/imagenet-sample`` beside the repository).
        count: how many photos to take; 0 or less: all of them.
        seed: picks the subset.

    Raises:
        InputError: no folder given and the default one absent, a missing folder, or no images in it.
    """
    from .preprocess import list_image_files

    if calib is None:
        if not DEFAULT_CALIB_DIR.is_dir():
            raise InputError(
                "int8 quantisation calibrates on real photos, and no folder was given (the default "
                f"{DEFAULT_CALIB_DIR} does not exist): pass --calib DIR (Python: calib=DIR), a folder of a few dozen "
                "photos like the ones the model will explain."
            )
        calib = DEFAULT_CALIB_DIR
    if isinstance(calib, str | os.PathLike):
        folder = Path(calib)
        if not folder.is_dir():
            raise InputError(f"calibration folder {folder} does not exist; pass --calib DIR, a folder of photos.")
        files = list_image_files(folder, recursive=True)
        if not files:
            raise InputError(
                f"calibration folder {folder} holds no images; int8 quantisation calibrates on real photos: put a "
                "few dozen photos (.jpg, .png, ...) like the ones the model will explain there, or pass another "
                "--calib DIR."
            )
    else:
        files = [Path(p) for p in calib]
        if not files:
            raise InputError("the calibration list is empty; give a folder of photos (--calib DIR) or image paths.")
    if 0 < count < len(files):
        pick = np.random.default_rng(seed).choice(len(files), size=count, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


@contextlib.contextmanager
def _quiet_quantiser() -> Iterator[None]:
    """Keep onnxruntime.quantization's chatter (a print per calibration, advice on the root logger) off the console;
    its errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _PhotoReader:
    """ORT's calibration data reader: one preprocessed photo per call (``target`` -1: the predicted class)."""

    def __init__(self, files: list[Path], preprocess: Any, inputs: list[str]):
        from .preprocess import Preprocessor, load_image

        self._load = load_image
        self._pre = preprocess if isinstance(preprocess, Preprocessor) else Preprocessor(preprocess)
        self._files = iter(files)
        self._inputs = inputs

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._files, None)
        if path is None:
            return None
        x, _ = self._pre([self._load(path)])
        feeds = {"image": np.ascontiguousarray(x, dtype=np.float32)}
        if "target" in self._inputs:
            feeds["target"] = np.full((1,), -1, dtype=np.int64)
        return feeds

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # some ORT versions iterate the reader
        while (item := self.get_next()) is not None:
            yield item


def int8_from_fp32(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    preprocess: PreprocessConfig | Any,
    calib: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    seed: int = 0,
    exclude_nodes: Sequence[str] | None = None,
    exclude_tail: bool = True,
    exclude_ends: bool = True,
    exclude_depthwise: bool = True,
    keep_fp32_from: Sequence[np.ndarray] = (),
    per_channel: bool = True,
    method: str = INT8_METHOD,
) -> Path:
    """Quantise an fp32 ONNX graph statically to int8 Q/DQ form, calibrated on real photos.

    Args:
        src: the fp32 ``model.onnx``.
        dst: where to write the int8 graph (atomically).
        preprocess: the artifact's :class:`~engine.config.PreprocessConfig` (or a ``Preprocessor``): calibration
            photos become exactly the engine's input.
        calib: a folder of photos, a list of image files, or None (see :func:`calibration_images`).
        calib_count: photos to calibrate on (a seeded subset of ``calib``); 0: all.
        seed: picks the subset.
        exclude_nodes: further node names left in float32.
        exclude_tail: leave :func:`saliency_tail_nodes` in float32.
        exclude_ends: leave :func:`end_nodes` (stem and classifier) in float32.
        exclude_depthwise: leave :func:`depthwise_nodes` in float32.
        keep_fp32_from: the explainer's mask buffers: :func:`copy_path_nodes` stay float32 (without them, a ViT's
            masked last block is quantised and its map is lost: measured r ~0.25 against fp32 on a tiny ViT).
        per_channel: per-output-channel weight scales (better for convolutions; TensorRT supports them).
        method: calibration ``percentile`` (the default: ranges at the 99.999th percentile; on EfficientNet-Lite0
            it beat ``minmax`` on held-out photos), ``minmax`` or ``entropy``.

    Raises:
        InputError: no calibration photos (the message says how to give some), or a graph that is not an fp32
            xai-engine graph.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as e:
        raise BackendUnavailableError(
            "int8 export needs onnxruntime's quantisation tools: pip install 'xai-engine[onnx]'"
        ) from e
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise InputError(f"calibration method must be one of {sorted(methods)}, got {method!r}.")
    files = calibration_images(calib, calib_count, seed)  # before any heavy work: a bad folder fails fast
    model = name_nodes(_load(src))
    _require_fp32(model, src)
    inputs = [i.name for i in model.graph.input]
    if "image" not in inputs:
        raise InputError(f"{src} has no 'image' input; int8 export converts an xai-engine graph (image[, target]).")
    exclude = list(exclude_nodes or ()) + (saliency_tail_nodes(model) if exclude_tail else [])
    exclude += end_nodes(model) if exclude_ends else []
    exclude += depthwise_nodes(model) if exclude_depthwise else []
    exclude += copy_path_nodes(model, keep_fp32_from)

    class Reader(_PhotoReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="xai-int8-") as tmp, _quiet_quantiser():
        named, out = Path(tmp) / "named.onnx", Path(tmp) / "int8.onnx"
        _onnx().save(model, str(named))
        quantize_static(
            str(named),
            str(out),
            Reader(files, preprocess, inputs),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OPS),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,  # symmetric int8 (zero point 0): what TensorRT takes
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(set(exclude)),
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        quantised = _load(out)
    return _save_atomic(quantised, Path(dst), "int8")


# --------------------------------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------------------------------


def convert_onnx(
    src_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    precision: str,
    *,
    preprocess: PreprocessConfig | Any = None,
    calib: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    seed: int = 0,
    keep_fp32_from: Sequence[np.ndarray] = (),
) -> Path:
    """Write ``src_path`` (an fp32 ONNX explain graph) at ``precision`` to ``dst_path`` (atomically).

    Args:
        src_path: the fp32 ``model.onnx``.
        dst_path: the output file (may equal ``src_path``).
        precision: ``fp32`` (a copy), ``fp16`` or ``int8`` (:data:`GRAPH_PRECISIONS`).
        preprocess: the artifact's preprocess config; int8 only (calibration photos are preprocessed with it).
        calib: int8: a folder of photos or a list of image files (default: the shared sample photos).
        calib_count: int8: how many photos to calibrate on (a seeded subset).
        seed: int8: picks the subset.
        keep_fp32_from: int8: the explainer's mask buffers; the nodes computing on the masked copies stay float32
            (:func:`copy_path_nodes`; :func:`engine.export.export_artifact` passes them).

    Raises:
        InputError: an unknown precision, int8 without a preprocess config, or no calibration photos.
    """
    if precision not in GRAPH_PRECISIONS:
        raise InputError(
            f"unknown graph precision {precision!r}; an exported model.onnx holds one of {', '.join(GRAPH_PRECISIONS)}."
        )
    src, dst = Path(src_path), Path(dst_path)
    if precision == "fp32":
        if src.resolve() != dst.resolve():
            with open(src, "rb") as fh:
                atomic_write(dst, lambda out: shutil.copyfileobj(fh, out))
        return dst
    if precision == "fp16":
        return fp16_from_fp32(src, dst)
    if preprocess is None:
        raise InputError("int8 conversion needs the artifact's preprocess config (preprocess=artifact.preprocess).")
    return int8_from_fp32(
        src, dst, preprocess=preprocess, calib=calib, calib_count=calib_count, seed=seed, keep_fp32_from=keep_fp32_from
    )
