"""Triton Inference Server model repositories: one exported explain graph served with dynamic batching.

:func:`write_triton_repository` writes ``REPO/<name>/``::

    config.pbtxt         the model configuration (inputs image + target, outputs logits + saliency, batching)
    1/model.onnx         the graph (ONNX Runtime backend); 1/model.xml + 1/model.bin (OpenVINO); 1/model.plan (TensorRT)
    labels.txt           the class names, one a line (``logits``' ``label_filename``: the classification extension)
    preprocess.json      the artifact's :class:`~engine.config.PreprocessConfig`, for clients
    client_example.py    a tritonclient client that preprocesses with ``engine.preprocess`` (a copy of
                         :mod:`engine.triton_client_example`)

:func:`validate_config` parses ``config.pbtxt`` into Triton's own ``ModelConfig`` protobuf (from
``tritonclient[grpc]``) and checks it against the graph in the version folder: names, data types, dims (the batch
dimension excluded, as ``max_batch_size > 0`` wants), the reshape of ``target``, the labels file and the backend's
files. The Triton server itself is not run here: it ships as a container (``nvcr.io/nvidia/tritonserver``).

``python export/to_triton.py CKPT --out REPO [--backend onnxruntime|openvino|tensorrt]`` runs :func:`main`.
Nothing heavy is imported at module import: onnx / onnxruntime / openvino / tritonclient / torch load on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifact import (
    INPUT_NAMES,
    ONNX,
    OPENVINO_BIN,
    OPENVINO_XML,
    OUTPUT_NAMES,
    Artifact,
    engine_version,
    load_artifact,
    resolve_artifact_path,
)
from .errors import BackendUnavailableError, EngineError
from .fileio import apply_umask, replace_folder

TENSORRT_PLAN = "model.plan"  # the file a TensorRT export writes into an artifact (docs/adding_a_backend.md)
CONFIG = "config.pbtxt"
LABELS = "labels.txt"
PREPROCESS = "preprocess.json"
CLIENT = "client_example.py"
VERSION = "1"
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
KINDS = ("KIND_CPU", "KIND_GPU")
TRT_SCRIPT = "export/to_trt.py"
# what the explain graph's tensors must be (Triton data type names)
IO_TYPES = {"image": "TYPE_FP32", "target": "TYPE_INT64", "logits": "TYPE_FP32", "saliency": "TYPE_FP32"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class TritonConfigError(EngineError):
    """A Triton model configuration (or the options for one) does not fit the graph or the backend."""


@dataclass(frozen=True)
class TritonBackend:
    """How Triton serves one of the engine's export formats.

    Attributes:
        name: ``--backend`` (Triton's backend name).
        config_key: ``("backend", "onnxruntime")`` or ``("platform", "tensorrt_plan")``: what config.pbtxt names.
        files: artifact file -> file name in the version folder (Triton's default file names).
        export_format: the ``export --format`` that writes the files; None: not exportable here.
        kinds: instance kinds the backend runs (the first one is the default).
    """

    name: str
    config_key: tuple[str, str]
    files: dict[str, str]
    export_format: str | None
    kinds: tuple[str, ...]


TRITON_BACKENDS: dict[str, TritonBackend] = {
    b.name: b
    for b in (
        TritonBackend("onnxruntime", ("backend", "onnxruntime"), {ONNX: ONNX}, "onnx", ("KIND_CPU", "KIND_GPU")),
        TritonBackend(
            "openvino",
            ("backend", "openvino"),
            {OPENVINO_XML: OPENVINO_XML, OPENVINO_BIN: OPENVINO_BIN},
            "openvino",
            ("KIND_CPU",),
        ),
        TritonBackend("tensorrt", ("platform", "tensorrt_plan"), {TENSORRT_PLAN: TENSORRT_PLAN}, None, ("KIND_GPU",)),
    )
}
# the platform names Triton maps onto these backends (a config may name either)
_PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt"}


# --------------------------------------------------------------------------------------------------------------------
# Reading a graph's inputs and outputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: Triton data type name and shape (None = a dynamic dimension)."""

    name: str
    data_type: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class GraphIO:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    source: str  # what the shapes were read from ("model.onnx (onnx)", "manifest io", ...)

    def tensor(self, name: str) -> TensorInfo | None:
        return self.inputs.get(name) or self.outputs.get(name)


_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16", 6: "TYPE_INT32", 7: "TYPE_INT64"}
_ORT_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
}
_OV_TYPES = {
    "f32": "TYPE_FP32",
    "f16": "TYPE_FP16",
    "f64": "TYPE_FP64",
    "bf16": "TYPE_BF16",
    "i32": "TYPE_INT32",
    "i64": "TYPE_INT64",
}


def _onnx_io(path: Path) -> GraphIO:
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        model = onnx.load(str(path), load_external_data=False)

        def info(v) -> TensorInfo:
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            return TensorInfo(v.name, _ONNX_TYPES.get(t.elem_type, f"onnx elem_type {t.elem_type}"), dims)

        init = {i.name for i in model.graph.initializer}
        ins = {v.name: info(v) for v in model.graph.input if v.name not in init}
        return GraphIO(ins, {v.name: info(v) for v in model.graph.output}, f"{path.name} (onnx)")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailableError(
            f"reading {path.name}'s inputs and outputs needs onnx or onnxruntime: pip install 'xai-engine[onnx]'"
        ) from e
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def ort_info(a) -> TensorInfo:
        dims = tuple(d if isinstance(d, int) else None for d in a.shape)
        return TensorInfo(a.name, _ORT_TYPES.get(a.type, a.type), dims)

    return GraphIO(
        {a.name: ort_info(a) for a in sess.get_inputs()},
        {a.name: ort_info(a) for a in sess.get_outputs()},
        f"{path.name} (onnxruntime)",
    )


def _openvino_io(path: Path) -> GraphIO:
    import openvino as ov

    model = ov.Core().read_model(str(path))

    def info(port) -> TensorInfo:
        shape = port.get_partial_shape()
        dims = tuple(d.get_length() if d.is_static else None for d in shape)
        t = port.get_element_type().get_type_name()
        return TensorInfo(port.get_any_name(), _OV_TYPES.get(t, t), dims)

    ins = {i.get_any_name(): info(i) for i in model.inputs}
    return GraphIO(ins, {o.get_any_name(): info(o) for o in model.outputs}, f"{path.name} (openvino)")


def _manifest_io(art: Artifact) -> GraphIO | None:
    io = art.manifest.get("io")
    if not isinstance(io, dict) or not {"inputs", "outputs"} <= io.keys():
        return None

    def info(name: str, dims: list) -> TensorInfo:
        shape = tuple(int(d) if isinstance(d, int) else None for d in dims)
        return TensorInfo(name, IO_TYPES.get(name, "TYPE_FP32"), shape)

    return GraphIO(
        {n: info(n, d) for n, d in io["inputs"].items()},
        {n: info(n, d) for n, d in io["outputs"].items()},
        "the artifact manifest's io",
    )


def graph_io(path: str | os.PathLike) -> GraphIO:
    """The inputs and outputs of ``model.onnx`` (read with onnx, else onnxruntime) or ``model.xml`` (openvino).

    Raises:
        BackendUnavailableError: no library that reads this file is installed.
        TritonConfigError: a file of another kind (a TensorRT plan is not readable here).
    """
    path = Path(path)
    if path.suffix == ".onnx":
        return _onnx_io(path)
    if path.suffix == ".xml":
        try:
            return _openvino_io(path)
        except ImportError as e:
            raise BackendUnavailableError(
                f"reading {path.name}'s inputs and outputs needs openvino: pip install 'xai-engine[openvino]'"
            ) from e
    raise TritonConfigError(f"cannot read the inputs and outputs of {path.name} here (no reader for {path.suffix}).")


def _artifact_io(art: Artifact, backend: TritonBackend) -> GraphIO:
    """The graph's io: from the file that will be served when it can be read here, else the artifact's ONNX, else
    the io its manifest recorded at export."""
    candidates = [f for f in backend.files if f.endswith((".onnx", ".xml"))] + [ONNX]
    problems = []
    for name in dict.fromkeys(candidates):
        if art.has(name):
            try:
                return graph_io(art.file(name))
            except BackendUnavailableError as e:
                problems.append(str(e))
    recorded = _manifest_io(art)
    if recorded is not None:
        return recorded
    raise TritonConfigError(
        f"cannot read the graph's inputs and outputs of {art.path or art.name}: "
        + ("; ".join(problems) or "it has no model.onnx and its manifest records no io")
        + ". Re-export it (python export/to_onnx.py CKPT --out DIR)."
    )


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def sanitize_name(text: str) -> str:
    """A Triton model (folder) name from free text: letters, digits, ``_``, ``.`` and ``-``; the rest becomes ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-")
    return name or "model"


def default_model_name(art: Artifact) -> str:
    """The artifact folder's name (a built-in's name), else ``METHOD-BACKBONE``, sanitised."""
    if art.path is not None and (art.path / "manifest.json").is_file():
        return sanitize_name(art.path.name)
    return sanitize_name(f"{art.method}-{art.backbone.name}")


def _dims(shape: Sequence[int | None]) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def _fmt(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]" if dims else "[ ]"


def _tensor_block(name: str, data_type: str, dims: list[int], extra: list[str]) -> str:
    lines = ["  {", f'    name: "{name}"', f"    data_type: {data_type}", f"    dims: {_fmt(dims)}", *extra, "  }"]
    return "\n".join(lines)


def _check_graph_for_triton(io: GraphIO, art: Artifact) -> None:
    """The graph must have the engine's inputs/outputs, fp32/int64, a dynamic batch first and the artifact's size."""
    problems = []
    for name in (*INPUT_NAMES, *OUTPUT_NAMES):
        t = io.tensor(name)
        if t is None:
            problems.append(f"it has no {'input' if name in INPUT_NAMES else 'output'} {name!r}")
            continue
        if t.data_type != IO_TYPES[name]:
            problems.append(f"{name} is {t.data_type}, the engine's graphs have {IO_TYPES[name]}")
        if not t.shape or t.shape[0] is not None:
            problems.append(f"{name} has shape {_dims(t.shape)}, not a dynamic batch dimension first")
    image = io.inputs.get("image")
    if image is not None and len(image.shape) == 4 and not problems:
        h, w = art.preprocess.input_size
        if image.shape[1] not in (None, 3) or image.shape[2] not in (None, h) or image.shape[3] not in (None, w):
            problems.append(f"image is {_dims(image.shape)} but the artifact preprocesses to [batch, 3, {h}, {w}]")
    if problems:
        raise TritonConfigError(
            f"the graph of {art.path or art.name} ({io.source}) does not fit an xai-engine Triton model: "
            + "; ".join(problems)
            + ". Re-export the artifact with this xai-engine (python export/to_onnx.py CKPT --out DIR)."
        )


def render_config(
    art: Artifact,
    io: GraphIO,
    *,
    name: str,
    backend: str = "onnxruntime",
    max_batch_size: int = 8,
    max_queue_delay_us: int = 100,
    instances: int = 1,
    kind: str | None = None,
) -> str:
    """The text of ``config.pbtxt`` for ``art`` served by ``backend`` (see :func:`write_triton_repository`)."""
    spec = _backend(backend)
    kind = _check_options(spec, max_batch_size, max_queue_delay_us, instances, kind)
    _check_graph_for_triton(io, art)
    num_classes = io.outputs["logits"].shape[1] if len(io.outputs["logits"].shape) == 2 else None
    label = num_classes is not None and num_classes == len(art.class_names)
    blocks_in, blocks_out = [], []
    for tname in INPUT_NAMES:
        t = io.inputs[tname]
        inner = _dims(t.shape[1:])
        if inner:
            blocks_in.append(_tensor_block(tname, t.data_type, inner, []))
        else:  # batch-only tensor ([B]): Triton needs non-empty dims, the model gets the 1-D batch
            blocks_in.append(_tensor_block(tname, t.data_type, [1], ["    reshape: { shape: [ ] }"]))
    for tname in OUTPUT_NAMES:
        t = io.outputs[tname]
        inner = _dims(t.shape[1:])
        extra = [f'    label_filename: "{LABELS}"'] if tname == "logits" and label else []
        if not inner:
            inner, extra = [1], [*extra, "    reshape: { shape: [ ] }"]
        blocks_out.append(_tensor_block(tname, t.data_type, inner, extra))
    key, value = spec.config_key
    h, w = art.preprocess.input_size
    comment = re.sub(r"\s+", " ", art.name)
    lines = [
        f"# Triton model configuration written by xai-engine {engine_version()} (python export/to_triton.py).",
        f"# artifact: {comment}; method {art.method}; backbone {art.backbone.spec}.",
        f"# graph: read from {io.source}.",
        f"# image: a batch made by engine.preprocess.Preprocessor ({PREPROCESS}: {h}x{w}, normalised, float32).",
        "# target: the class to explain per image, -1 = the predicted class; sent as [batch, 1] (reshaped to [batch]).",
        f"# logits: raw class scores{f' ({LABELS}: the class names)' if label else ''}; saliency: the low-resolution"
        " map, mapped onto the photo by engine.preprocess.saliency_to_image.",
        f'name: "{name}"',
        f'{key}: "{value}"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        ",\n".join(blocks_in),
        "]",
        "output [",
        ",\n".join(blocks_out),
        "]",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {kind}",
        "  }",
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {max_queue_delay_us}",
        "}",
    ]
    if spec.name == "openvino":
        lines += [
            "# Triton's OpenVINO backend fixes the batch to max_batch_size (ov::set_batch) and refuses a smaller batch",
            "# unless it may pad it.",
            "parameters [",
            "  {",
            '    key: "ENABLE_BATCH_PADDING"',
            '    value: { string_value: "YES" }',
            "  }",
            "]",
        ]
    return "\n".join(lines) + "\n"


def _backend(name: str) -> TritonBackend:
    if name not in TRITON_BACKENDS:
        raise TritonConfigError(f"unknown Triton backend {name!r}; choose from {', '.join(TRITON_BACKENDS)}.")
    return TRITON_BACKENDS[name]


def _check_options(spec: TritonBackend, max_batch_size: int, delay_us: int, instances: int, kind: str | None) -> str:
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise TritonConfigError(
            f"--max-batch must be >= 1 (got {max_batch_size}): the graphs have a dynamic batch dimension, which "
            "Triton batches when max_batch_size > 0."
        )
    if not isinstance(delay_us, int) or delay_us < 0:
        raise TritonConfigError(f"--max-queue-delay-us must be >= 0, got {delay_us}.")
    if not isinstance(instances, int) or instances < 1:
        raise TritonConfigError(f"--instances must be >= 1, got {instances}.")
    kind = kind or spec.kinds[0]
    if kind not in KINDS:
        raise TritonConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}.")
    if kind not in spec.kinds:
        raise TritonConfigError(f"Triton's {spec.name} backend runs {' or '.join(spec.kinds)} instances, not {kind}.")
    return kind


@dataclass
class TritonModel:
    """What :func:`write_triton_repository` wrote."""

    path: Path
    name: str
    backend: str
    config: str
    validated: bool = False
    report: ConfigReport | None = None
    notes: list[str] = field(default_factory=list)


def write_triton_repository(
    artifact: Artifact,
    repo: str | os.PathLike,
    *,
    backend: str = "onnxruntime",
    name: str | None = None,
    max_batch_size: int = 8,
    max_queue_delay_us: int = 100,
    instances: int = 1,
    kind: str | None = None,
    force: bool = False,
    validate: bool | None = None,
) -> TritonModel:
    """Write ``repo/<name>/`` (config.pbtxt, ``1/`` with the graph, labels.txt, preprocess.json, client_example.py).

    The artifact must already hold the backend's files (``model.onnx``; ``model.xml``/``.bin``; ``model.plan``):
    :func:`ensure_backend_files` exports what is missing. The model folder is written into a temporary folder beside
    it and renamed into place, with the user's umask.

    Args:
        artifact: a loaded artifact.
        repo: the Triton model repository (created if missing; other models in it are left alone).
        backend: ``onnxruntime``, ``openvino`` or ``tensorrt``.
        name: the model name (its folder); default :func:`default_model_name`.
        max_batch_size: the largest batch Triton forms (dynamic batching) and the model is run with.
        max_queue_delay_us: how long the dynamic batcher waits for more requests.
        instances: model instances (``instance_group`` count).
        kind: ``KIND_CPU`` or ``KIND_GPU``; default the backend's (GPU for TensorRT, CPU otherwise).
        force: replace an existing ``repo/<name>``.
        validate: parse the written config into Triton's ``ModelConfig`` and check it (:func:`validate_config`);
            None: when tritonclient[grpc] is installed.

    Raises:
        TritonConfigError: a bad option, a graph that does not fit, an existing folder without ``force``, or (when
            validating) a config that does not parse or does not match the graph.
    """
    spec = _backend(backend)
    name = name if name is not None else default_model_name(artifact)
    if not _NAME_RE.match(name):
        raise TritonConfigError(
            f"model name {name!r} is not a plain folder name; use letters, digits, '_', '.' and '-' "
            f"(e.g. {sanitize_name(name)!r})."
        )
    missing = [f for f in spec.files if not artifact.has(f)]
    if missing:
        raise TritonConfigError(_missing_message(artifact, spec, missing))
    plan_batch = (artifact.manifest.get("tensorrt") or {}).get("max_batch") if spec.name == "tensorrt" else None
    if plan_batch is not None and max_batch_size > int(plan_batch):
        raise TritonConfigError(
            f"--max-batch {max_batch_size} is above the plan's largest batch ({plan_batch}, its optimisation "
            f"profile): Triton would fail to load it. Use --max-batch {plan_batch}, or rebuild the plan with "
            f"`python {TRT_SCRIPT} CKPT --max-batch {max_batch_size}`."
        )
    io = _artifact_io(artifact, spec)
    text = render_config(
        artifact,
        io,
        name=name,
        backend=backend,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
    )
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise TritonConfigError(f"--out {repo} is an existing file, not a folder. Give a folder path (it is created).")
    out = repo / name
    if out.exists() and not force:
        raise TritonConfigError(
            f"{out} already exists; pass --force (force=True) to replace it, or choose another --name."
        )
    if validate is None:
        validate = model_config_available()
    repo.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    result = TritonModel(path=out, name=name, backend=spec.name, config=text)
    try:
        version = tmp / VERSION
        version.mkdir()
        for src, dst in spec.files.items():
            shutil.copyfile(artifact.file(src), version / dst)
        (tmp / CONFIG).write_text(text, encoding="utf-8")
        labels = [re.sub(r"[\r\n]+", " ", c) for c in artifact.class_names]
        (tmp / LABELS).write_text("\n".join(labels) + "\n", encoding="utf-8")
        (tmp / PREPROCESS).write_text(json.dumps(artifact.preprocess.to_dict(), indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(Path(__file__).with_name("triton_client_example.py"), tmp / CLIENT)
        if validate:
            result.report = validate_config(tmp, name=name)
            result.validated = True
        apply_umask(tmp)  # mkdtemp made it 0o700; the model folder gets the modes of any other output
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if result.report is not None:
        result.report.path = out
    return result


def _missing_message(art: Artifact, spec: TritonBackend, missing: list[str]) -> str:
    where = art.path or "CKPT"
    if spec.name == "tensorrt":
        return (
            f"{where} has no {TENSORRT_PLAN} (its manifest lists none), and TensorRT plans cannot be built here: "
            f"build the plan on the GPU machine first with `python {TRT_SCRIPT} CKPT --out DIR` (TensorRT comes from "
            "NVIDIA's index: pip install tensorrt), then run export/to_triton.py on that folder."
        )
    script = "export/to_openvino.py" if spec.name == "openvino" else "export/to_onnx.py"
    return f"{where} has no {', '.join(missing)}. Export it with: python {script} {where} --out NEW_DIR"


def ensure_backend_files(art: Artifact, backend: str, workdir: str | os.PathLike) -> Artifact:
    """``art`` when it holds the backend's files, else a new artifact in ``workdir`` exported with them.

    Exporting traces the graph and needs torch (:class:`~engine.requires.TorchMissingError` says how to get it).
    A TensorRT plan is never built here: without one this raises at once, naming ``export/to_trt.py``.
    """
    spec = _backend(backend)
    missing = [f for f in spec.files if not art.has(f)]
    if not missing:
        return art
    if spec.export_format is None:
        raise TritonConfigError(_missing_message(art, spec, missing))
    from .requires import require_torch

    require_torch(f"exporting {', '.join(missing)} for a Triton model (export/to_triton.py)")
    from .export import export_artifact

    return export_artifact(art, Path(workdir) / "exported", (spec.export_format,))


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------


def model_config_pb2():
    """Triton's ``model_config_pb2`` module from tritonclient[grpc].

    Raises:
        BackendUnavailableError: tritonclient[grpc] (or a protobuf it can run on) is not installed.
    """
    try:
        from tritonclient.grpc import model_config_pb2 as pb2
    except Exception as e:  # noqa: BLE001 - ImportError, tritonclient's RuntimeError without grpc, protobuf's VersionError
        raise BackendUnavailableError(
            "validating a Triton config needs Triton's ModelConfig protobuf from tritonclient[grpc]: "
            f'pip install "tritonclient[grpc]" ({type(e).__name__}: {e})'
        ) from e
    return pb2


def model_config_available() -> bool:
    """Whether :func:`validate_config` can run (tritonclient[grpc] imports)."""
    try:
        model_config_pb2()
    except BackendUnavailableError:
        return False
    return True


def parse_config(text: str, source: str | os.PathLike = CONFIG):
    """Parse config.pbtxt text into Triton's ``inference.ModelConfig`` message (``source`` names it in errors).

    Raises:
        TritonConfigError: the text is not a valid ModelConfig (unknown field, bad enum value, syntax).
    """
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise TritonConfigError(f"{source} is not a valid Triton ModelConfig (line:column {e})") from e


@dataclass
class ConfigReport:
    """What :func:`validate_config` checked."""

    path: Path
    config: Any  # the parsed inference.ModelConfig
    graph: GraphIO | None  # None: the graph file could not be read here (a TensorRT plan), only the config was checked
    notes: list[str] = field(default_factory=list)


def _dtype_name(pb2, value: int) -> str:
    return pb2.DataType.Name(value)


def _version_key(p: Path) -> int:
    return int(p.name)


def _shape_str(shape: Sequence[int | None]) -> str:
    return "[batch" + "".join(f", {'?' if d is None else d}" for d in shape[1:]) + "]"


def validate_config(model_dir: str | os.PathLike, *, name: str | None = None) -> ConfigReport:
    """Parse ``model_dir/config.pbtxt`` into Triton's ``ModelConfig`` and check it against the model folder.

    Checks: the name (the folder's, or ``name``), the platform/backend and its files in the version folder, batching
    (``max_batch_size >= 1``), the input and output names and data types, dims against the graph (read from
    ``model.onnx`` or ``model.xml``; the batch dimension excluded; ``reshape`` honoured; a dynamic graph dimension is
    ``-1``), the labels file (one name per class) and the instance kinds the backend runs.

    Returns:
        A :class:`ConfigReport`; ``graph`` is None where the graph could not be read here (a TensorRT plan).

    Raises:
        TritonConfigError: the first problems found, each with what the config says and what it should say.
        BackendUnavailableError: tritonclient[grpc] is not installed.
    """
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not path.is_file():
        raise TritonConfigError(f"{model_dir} has no {CONFIG}: it is not a Triton model folder.")
    pb2 = model_config_pb2()
    cfg = parse_config(path.read_text(encoding="utf-8"), path)
    problems: list[str] = []
    notes: list[str] = []
    want_name = name or model_dir.name
    if cfg.name and cfg.name != want_name:
        problems.append(f'name is "{cfg.name}" but the model folder is {want_name!r} (Triton needs them equal)')
    # backend / platform and files
    backend = cfg.backend or _PLATFORMS.get(cfg.platform, "")
    if cfg.platform and cfg.backend and _PLATFORMS.get(cfg.platform) != cfg.backend:
        problems.append(f'platform "{cfg.platform}" and backend "{cfg.backend}" disagree')
    spec = TRITON_BACKENDS.get(backend)
    graph: GraphIO | None = None
    if spec is None:
        problems.append(
            f'backend "{cfg.backend}" / platform "{cfg.platform}" is none of this export\'s '
            f"({', '.join(f'{k}: {v!r}' for k, v in (s.config_key for s in TRITON_BACKENDS.values()))})"
        )
    else:
        versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=_version_key)
        if not versions:
            problems.append(f"there is no version folder ({model_dir}/{VERSION}/)")
        else:
            files = list(spec.files.values())
            if cfg.default_model_filename:
                files[0] = cfg.default_model_filename
            latest = versions[-1]
            absent = [f for f in files if not (latest / f).is_file()]
            if absent:
                problems.append(f"{latest.name}/ lacks {', '.join(absent)}, which the {spec.name} backend loads")
            elif files[0].endswith((".onnx", ".xml")):
                try:
                    graph = graph_io(latest / files[0])
                except BackendUnavailableError as e:
                    notes.append(f"the graph was not checked: {e}")
            else:
                notes.append(f"{files[0]} cannot be read here: dims were not checked against the graph")
        kinds = [pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group]
        bad = [k for k in kinds if k not in (*spec.kinds, "KIND_AUTO")]
        if bad:
            problems.append(
                f"instance_group kind {', '.join(bad)}: Triton's {spec.name} backend runs {' or '.join(spec.kinds)}"
            )
    # batching
    if cfg.max_batch_size < 1:
        problems.append(
            f"max_batch_size is {cfg.max_batch_size}: the graph has a dynamic batch dimension, set it >= 1 (dims then "
            "exclude the batch dimension)"
        )
    # names and data types
    declared: dict[str, Any] = {}
    for kind_name, tensors, want in (("input", cfg.input, INPUT_NAMES), ("output", cfg.output, OUTPUT_NAMES)):
        names = [t.name for t in tensors]
        extra = sorted(set(names) - set(want))
        lacking = [n for n in want if n not in names]
        if lacking or extra or len(names) != len(set(names)):
            problems.append(
                f"{kind_name}s are {names}; the explain graph's are {list(want)}"
                + (f" (missing {lacking})" if lacking else "")
                + (f" (unknown {extra})" if extra else "")
            )
        for t in tensors:
            declared[t.name] = t
            dtype = _dtype_name(pb2, t.data_type)
            if t.name in IO_TYPES and dtype != IO_TYPES[t.name]:
                problems.append(f"{kind_name} {t.name!r} has data_type {dtype}, the graph's is {IO_TYPES[t.name]}")
            if not t.dims:
                problems.append(
                    f"{kind_name} {t.name!r} has empty dims (Triton needs at least one; use dims: [ 1 ] with "
                    "reshape: { shape: [ ] } for a batch-only tensor)"
                )
            for d in [*t.dims, *(t.reshape.shape if t.HasField("reshape") else [])]:
                if d != -1 and d < 1:
                    problems.append(f"{kind_name} {t.name!r} has dimension {d} (only -1 or a positive size)")
            sized = t.HasField("reshape") and -1 not in t.dims and -1 not in t.reshape.shape
            if sized and math.prod(t.dims) != math.prod(t.reshape.shape):
                problems.append(
                    f"{kind_name} {t.name!r}: dims {_fmt(list(t.dims))} and reshape {_fmt(list(t.reshape.shape))} "
                    "hold different numbers of elements"
                )
    # dims against the graph
    if graph is not None:
        for tname, t in declared.items():
            g = graph.tensor(tname)
            if g is None:
                problems.append(f"{t.name!r} is not a tensor of {graph.source}")
                continue
            if g.data_type != IO_TYPES.get(tname, g.data_type):
                problems.append(f"{graph.source} has {tname} as {g.data_type}, not {IO_TYPES[tname]}")
            is_output = tname in OUTPUT_NAMES
            model_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
            inner = g.shape[1:]
            want_dims = _dims(inner)
            ok = bool(g.shape) and g.shape[0] is None and len(model_dims) == len(inner)
            if ok:
                for have, gd in zip(model_dims, inner, strict=True):
                    if gd is None:
                        ok &= have == -1 or (not is_output and have > 0)
                    else:
                        ok &= have == gd
            if not ok:
                said = f"reshape {_fmt(model_dims)}" if t.HasField("reshape") else f"dims {_fmt(model_dims)}"
                should = (
                    "dims: [ 1 ] with reshape: { shape: [ ] }"
                    if not want_dims
                    else f"dims {_fmt(want_dims)}" + (" (without reshape)" if t.HasField("reshape") else "")
                )
                if g.shape and g.shape[0] is not None:
                    should = f"max_batch_size 0 and the full shape (the graph's batch dimension is fixed, {g.shape[0]})"
                problems.append(
                    f"{'output' if is_output else 'input'} {tname!r} has {said} but {graph.source} makes {tname} "
                    f"{_shape_str(g.shape)}, so it must have {should}"
                )
    # labels
    logits = declared.get("logits")
    if logits is not None and logits.label_filename:
        lpath = model_dir / logits.label_filename
        if not lpath.is_file():
            problems.append(f"output 'logits' names label_filename {logits.label_filename!r}, not in {model_dir}")
        else:
            count = len(lpath.read_text(encoding="utf-8").splitlines())
            if len(logits.dims) == 1 and logits.dims[0] > 0 and count != logits.dims[0]:
                problems.append(f"{logits.label_filename} has {count} lines for {logits.dims[0]} classes")
    if problems:
        raise TritonConfigError(f"{path} does not fit the model: " + "; ".join(problems) + ".")
    return ConfigReport(path=model_dir, config=cfg, graph=graph, notes=notes)


# --------------------------------------------------------------------------------------------------------------------
# The script (export/to_triton.py)
# --------------------------------------------------------------------------------------------------------------------


def docker_command(repo: str | os.PathLike, kind: str = "KIND_CPU", tag: str = "<yy.mm>-py3") -> str:
    """The command that serves ``repo`` with Triton's container (not run here)."""
    gpus = "--gpus=all " if kind == "KIND_GPU" else ""
    return (
        f"docker run --rm {gpus}-p8000:8000 -p8001:8001 -p8002:8002 -v {Path(repo).resolve()}:/models "
        f"{TRITON_IMAGE}:{tag} tritonserver --model-repository=/models"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export/to_triton.py",
        description="Write a Triton Inference Server model repository entry (config.pbtxt + 1/<graph>) for an "
        "artifact. The server itself is not run here: it ships as a container (nvcr.io/nvidia/tritonserver).",
    )
    p.add_argument("ckpt", help="artifact folder, 'default', a built-in name, or METHOD:LIBRARY/NAME")
    p.add_argument("--out", required=True, help="the model repository folder (REPO); writes REPO/<name>/")
    p.add_argument("--backend", default="onnxruntime", choices=list(TRITON_BACKENDS))
    p.add_argument("--name", default=None, help="model name (default: the artifact folder's name)")
    p.add_argument("--max-batch", type=int, default=8, help="max_batch_size (default 8)")
    p.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batching queue delay (default 100)")
    p.add_argument("--instances", type=int, default=1, help="model instances (default 1)")
    p.add_argument("--kind", choices=KINDS, default=None, help="instance kind (default: GPU for tensorrt, else CPU)")
    p.add_argument("--force", action="store_true", help="replace an existing REPO/<name>")
    return p


def _resolve(ckpt: str, workdir: str) -> tuple[Artifact, str]:
    """CKPT -> (artifact, default model name). A folder or built-in loads without torch; a spec needs it."""
    if resolve_artifact_path(ckpt).is_dir():
        art = load_artifact(ckpt)
        return art, default_model_name(art)
    from .requires import require_torch

    if ":" in ckpt:
        require_torch(f"creating {ckpt} (export/to_triton.py with a METHOD:LIBRARY/NAME spec)")
    from .create import resolve_ckpt

    art = resolve_ckpt(ckpt, workdir)
    return art, sanitize_name(f"{art.method}-{art.backbone.name}")


@contextlib.contextmanager
def _random_weights_notice(prog: str) -> Iterator[None]:
    """A :class:`~engine.errors.RandomWeightsWarning` as one plain stderr line (as the CLI shows it)."""
    from .errors import RandomWeightsWarning

    with warnings.catch_warnings():
        show, shown = warnings.showwarning, []

        def notice(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, RandomWeightsWarning):
                return show(message, category, filename, lineno, file, line)
            if not shown:  # once, though an export loads the source and the new artifact
                shown.append(message)
                print(f"{prog}: warning: {message}", file=sys.stderr)

        warnings.showwarning = notice
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = "export/to_triton.py"
    try:
        with _random_weights_notice(prog), tempfile.TemporaryDirectory(prefix="xai-triton-") as tmp:
            art, default_name = _resolve(args.ckpt, tmp)
            spec = _backend(args.backend)
            _check_options(spec, args.max_batch, args.max_queue_delay_us, args.instances, args.kind)
            art = ensure_backend_files(art, args.backend, tmp)
            model = write_triton_repository(
                art,
                args.out,
                backend=args.backend,
                name=args.name or default_name,
                max_batch_size=args.max_batch,
                max_queue_delay_us=args.max_queue_delay_us,
                instances=args.instances,
                kind=args.kind,
                force=args.force,
            )
    except EngineError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    files = sorted(str(p.relative_to(model.path)) for p in model.path.rglob("*") if p.is_file())
    print(f"wrote {model.path}: {', '.join(files)}")
    if model.validated:
        checked = f"against {model.report.graph.source}" if model.report and model.report.graph else "(no graph check)"
        print(f"{CONFIG} parsed into Triton's ModelConfig and checked {checked}")
        for note in model.report.notes if model.report else []:
            print(f"note: {note}")
    else:
        print(f'{CONFIG} not validated: pip install "tritonclient[grpc]" to parse it into Triton\'s ModelConfig')
    kind = args.kind or TRITON_BACKENDS[args.backend].kinds[0]
    print("The Triton server is not run here (it ships as a container). Serve the repository with:")
    print(f"  {docker_command(args.out, kind)}")
    print(f"and query it with: python {model.path / CLIENT} IMAGE... --url localhost:8000")
    return 0
