"""TensorRT plans: ``plan_from_onnx`` (ONNX -> serialized engine) and the artifact that carries one
(``python export/to_trt.py CKPT --out DIR``).

The flow of :func:`trt_artifact_from` (and of ``export/to_trt.py``):

1. :func:`preflight`: TensorRT and a CUDA GPU must be there, or it stops at once (before any export work) with one
   message naming the install (:data:`INSTALL_TENSORRT`); ``--check-only`` runs the gate without them;
2. the source artifact's ``model.onnx`` (exported first when the artifact has none; that needs torch);
3. the gate (:mod:`engine.trt_gate`): constant folding, lint, the parser's operator rules; the folded graph goes on;
4. fp16 / int8: the precision goes into the graph (:func:`engine.precision.convert_onnx`), which is gated again;
5. :func:`plan_from_onnx`: OnnxParser, one optimisation profile for the dynamic batch (1, opt, max) on ``image`` and
   ``target``, the workspace limit; a strongly typed network on TensorRT >= 11 (the graph's types are the
   precision); on TensorRT 10 a weakly typed one with BuilderFlag.FP16 (fp16 graph) or BuilderFlag.INT8 (its Q/DQ
   nodes) where needed (:func:`build_settings`);
6. a new artifact folder, written atomically: the source's files plus ``model.plan``; its manifest's ``tensorrt``
   record (:func:`plan_record`) says what the plan was built with (sha256, TensorRT version, GPU name, compute
   capability, precision, batch range). The backend (:mod:`engine.backends.tensorrt_`) compares that record with the
   running machine (:func:`plan_problems`) before it deserializes the plan.

Nothing here imports TensorRT at module import: the functions that need it import it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.util
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ArtifactError, BackendUnavailableError, EngineError, InputError
from .fileio import atomic_write

if TYPE_CHECKING:
    from .artifact import Artifact
    from .trt_gate import GateReport

PLAN = "model.plan"  # the artifact file (engine.triton.TENSORRT_PLAN reads the same name)
MANIFEST_KEY = "tensorrt"  # manifest["tensorrt"]: the plan record
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_GB = 4.0
SCRIPT = "export/to_trt.py"
INSTALL_TENSORRT = (
    "on a machine with an NVIDIA GPU and its driver: pip install tensorrt-cu13 (CUDA 13; tensorrt-cu12 for CUDA 12). "
    "The wheels come from NVIDIA's index (pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13 where "
    "the PyPI package cannot fetch them)"
)
RECORD_KEYS = ("plan", "sha256", "tensorrt_version", "gpu_name", "compute_capability", "precision", "max_batch")


class TensorRTUnavailableError(BackendUnavailableError):
    """TensorRT, or a CUDA GPU for it, is missing (the message names the install; the CLI exits with code 2)."""


class PlanMismatchError(ArtifactError):
    """An artifact's plan was built with another TensorRT version or for another GPU than the running ones."""


class GateFailedError(EngineError):
    """The TensorRT gate found errors; ``report`` holds them."""

    def __init__(self, report: GateReport):
        super().__init__(
            f"the TensorRT gate failed for {report.model}: "
            + "; ".join(str(f) for f in report.errors[:5])
            + (f" (and {len(report.errors) - 5} more)" if len(report.errors) > 5 else "")
        )
        self.report = report


# --------------------------------------------------------------------------------------------------------------------
# what is installed and which GPU runs
# --------------------------------------------------------------------------------------------------------------------


def tensorrt_available() -> bool:
    """Whether the ``tensorrt`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def tensorrt_message(what: str = "building a TensorRT plan") -> str:
    """The one message for an install without TensorRT."""
    return (
        f"{what} needs TensorRT 10 or later and an NVIDIA GPU; TensorRT is not installed here. Install it "
        f"{INSTALL_TENSORRT}. The CPU-side gate runs without it: python {SCRIPT} CKPT --check-only "
        "(or python -m engine.trt_gate MODEL.onnx)."
    )


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.9"


def gpu_info(index: int = 0) -> GpuInfo | None:
    """The CUDA GPU ``index`` (name, compute capability), through torch or the CUDA runtime; None without one."""
    if importlib.util.find_spec("torch") is not None:
        with contextlib.suppress(Exception):  # noqa: BLE001 - a CPU build, a broken driver: no GPU
            import torch

            if torch.cuda.is_available() and index < torch.cuda.device_count():
                major, minor = torch.cuda.get_device_capability(index)
                return GpuInfo(index, torch.cuda.get_device_name(index), f"{major}.{minor}")
            return None
    with contextlib.suppress(Exception):  # noqa: BLE001 - cuda-bindings without a driver raises at cuInit
        from cuda.bindings import runtime

        err, count = runtime.cudaGetDeviceCount()
        if int(err) != 0 or index >= count:
            return None
        err, prop = runtime.cudaGetDeviceProperties(index)
        if int(err) != 0:
            return None
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(index, name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}")
    return None


def preflight(device_index: int = 0) -> GpuInfo:
    """Check, before any work, that a plan can be built here: TensorRT installed, a CUDA GPU visible.

    Raises:
        TensorRTUnavailableError: one message naming what to install (or that no GPU is visible).
    """
    if not tensorrt_available():
        raise TensorRTUnavailableError(tensorrt_message())
    gpu = gpu_info(device_index)
    if gpu is None:
        raise TensorRTUnavailableError(
            f"TensorRT is installed but no CUDA GPU {device_index} is visible (torch.cuda / the CUDA runtime found "
            "none): a plan is built on, and for, the GPU that runs it. Run this on the GPU machine (check nvidia-smi "
            f"and CUDA_VISIBLE_DEVICES); the CPU-side gate runs anywhere: python {SCRIPT} CKPT --check-only."
        )
    return gpu


def trt_version() -> str:
    import tensorrt

    return str(tensorrt.__version__)


@dataclass(frozen=True)
class BuildSettings:
    """How the network is created and configured for a TensorRT version and a graph precision."""

    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names of trt.BuilderFlag members


def build_settings(version: str, precision: str) -> BuildSettings:
    """TensorRT >= 11: strongly typed, no precision flags (they were removed; the graph's types are the precision).
    TensorRT 10: weakly typed, with BuilderFlag.FP16 for an fp16 graph and BuilderFlag.INT8 for an int8 (Q/DQ) graph.

    Raises:
        EngineError: TensorRT older than 10, or an unknown precision.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    try:
        major = int(str(version).split(".")[0])
    except ValueError as e:
        raise EngineError(f"cannot read the TensorRT version {version!r}") from e
    if major < 10:
        raise EngineError(
            f"TensorRT {version} is too old: plans here need TensorRT 10 or later (execute_async_v3, named I/O "
            f"tensors). Upgrade it {INSTALL_TENSORRT}."
        )
    if major >= 11:
        return BuildSettings(True, ())
    return BuildSettings(False, {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision])


# --------------------------------------------------------------------------------------------------------------------
# the plan record in the manifest, and the checks against the running machine
# --------------------------------------------------------------------------------------------------------------------


def plan_record(
    *,
    sha256: str,
    tensorrt_version: str,
    gpu: GpuInfo,
    precision: str,
    max_batch: int,
    opt_batch: int,
    workspace_gb: float,
    settings: BuildSettings,
    input_size: tuple[int, int],
    onnx_sha256: str | None = None,
) -> dict[str, Any]:
    """The manifest's ``tensorrt`` record of a plan."""
    return {
        "plan": PLAN,
        "sha256": sha256,
        "tensorrt_version": str(tensorrt_version),
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": precision,
        "min_batch": 1,
        "opt_batch": int(opt_batch),
        "max_batch": int(max_batch),
        "input_size": [int(v) for v in input_size],
        "workspace_gb": float(workspace_gb),
        "strongly_typed": settings.strongly_typed,
        "builder_flags": list(settings.builder_flags),
        "onnx_sha256": onnx_sha256,
        "built": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def plan_problems(record: dict[str, Any] | None, *, tensorrt_version: str | None, gpu: GpuInfo | None) -> list[str]:
    """Why a plan with this record cannot run here (empty: it can): another TensorRT version, no GPU, another compute
    capability, another GPU model. Pure: compares values, imports nothing."""
    if not isinstance(record, dict):
        return [f"the manifest has no '{MANIFEST_KEY}' record of the plan (TensorRT version, GPU) to check it against"]
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        return [f"the manifest's '{MANIFEST_KEY}' record lacks {', '.join(missing)}"]
    problems = []
    if tensorrt_version is None:
        problems.append(f"it was built with TensorRT {record['tensorrt_version']}, which is not installed here")
    elif str(tensorrt_version) != str(record["tensorrt_version"]):
        problems.append(
            f"it was built with TensorRT {record['tensorrt_version']}, this machine has TensorRT {tensorrt_version}"
        )
    if gpu is None:
        problems.append(f"it was built for a {record['gpu_name']}, and this machine shows no CUDA GPU")
    elif str(gpu.compute_capability) != str(record["compute_capability"]):
        problems.append(
            f"it was built for compute capability {record['compute_capability']} ({record['gpu_name']}), this GPU "
            f"({gpu.name}) has compute capability {gpu.compute_capability}"
        )
    elif gpu.name != record["gpu_name"]:
        problems.append(
            f"it was built on a {record['gpu_name']}, this GPU is a {gpu.name} (the same compute capability, but "
            "TensorRT tunes a plan to one GPU model)"
        )
    return problems


def plan_mismatch_message(where: Any, problems: list[str], record: dict[str, Any] | None = None) -> str:
    """The message for a plan that cannot run here: what differs and the fix (rebuild it here)."""
    options = ""
    if isinstance(record, dict) and record.get("precision"):
        options = f" --precision {record['precision']} --max-batch {record.get('max_batch', DEFAULT_MAX_BATCH)}"
    return (
        f"artifact {where}: its TensorRT plan cannot run here: {'; '.join(problems)}. A plan runs only with the "
        "TensorRT version and on the GPU model it was built for. Rebuild it on this machine: "
        f"python {SCRIPT} {where} --out NEW_DIR{options} (or pass allow_version_mismatch=True, CLI "
        "--allow-version-mismatch, to try it anyway)."
    )


def check_plan(art: Artifact, *, tensorrt_version: str | None, gpu: GpuInfo | None, allow_mismatch: bool = False):
    """Compare ``art``'s plan record with the running TensorRT and GPU (before deserializing the plan).

    Returns:
        The record (a dict; empty when there is none and ``allow_mismatch`` accepted that).

    Raises:
        PlanMismatchError: a mismatch (unless ``allow_mismatch``: then a warning).
        ArtifactError: the record's sha256 is not the plan's listed one (the plan was replaced after the build).
    """
    record = art.manifest.get(MANIFEST_KEY)
    where = art.path or art.name
    listed = art.manifest.get("files", {}).get(PLAN)
    if isinstance(record, dict) and listed and record.get("sha256") not in (None, listed):
        raise ArtifactError(
            f"artifact {where}: {PLAN} is not the plan its '{MANIFEST_KEY}' record describes (sha256 differs): "
            f"rebuild it with python {SCRIPT} {where} --out NEW_DIR."
        )
    problems = plan_problems(record, tensorrt_version=tensorrt_version, gpu=gpu)
    if problems:
        message = plan_mismatch_message(where, problems, record)
        if not allow_mismatch:
            raise PlanMismatchError(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class BuiltPlan:
    path: Path
    settings: BuildSettings
    tensorrt_version: str
    input_size: tuple[int, int]
    has_target: bool


def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        parts = []
        for attr in ("node_name", "node_operator"):
            with contextlib.suppress(Exception):  # noqa: BLE001 - older bindings lack these
                value = getattr(err, attr)()
                if value:
                    parts.append(str(value))
        desc = err.desc() if hasattr(err, "desc") else str(err)
        out.append(f"{' '.join(parts)}: {desc}" if parts else str(desc))
    return out


def plan_from_onnx(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    *,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    input_size: tuple[int, int] | None = None,
) -> BuiltPlan:
    """Build a serialized TensorRT engine from an ONNX explain graph (or classifier) and write it atomically.

    The graph's precision is already in it (fp16 / int8 Q/DQ from :func:`engine.precision.convert_onnx`);
    ``precision`` picks the TensorRT 10 builder flags (:func:`build_settings`). One optimisation profile covers batch
    1..``max_batch`` (tuned at ``opt_batch``) on ``image`` and ``target``.

    Raises:
        TensorRTUnavailableError: TensorRT is not installed.
        EngineError: the parser rejects the graph (its errors are listed) or the build fails.
    """
    if not tensorrt_available():
        raise TensorRTUnavailableError(tensorrt_message())
    import tensorrt as trt

    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise InputError(f"batch sizes must satisfy 1 <= opt ({opt_batch}) <= max ({max_batch}).")
    version = str(trt.__version__)
    settings = build_settings(version, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if settings.strongly_typed and strongly is not None:  # accepted (and ignored) by TensorRT 11, where it is default
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or ["(no error recorded)"]
        raise EngineError(
            f"TensorRT {version}'s ONNX parser rejected {onnx_path}: {'; '.join(errors)}. Run the gate for the "
            f"node-by-node report: python -m engine.trt_gate {onnx_path}"
        )
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    if "image" not in inputs or set(inputs) - {"image", "target"}:
        raise EngineError(f"{onnx_path} has inputs {sorted(inputs)}; an explain graph has image (and target).")
    shape = [int(d) for d in inputs["image"].shape]
    if len(shape) != 4:
        raise EngineError(f"input 'image' of {onnx_path} has shape {shape}; it must be (B, 3, H, W).")
    c = shape[1] if shape[1] > 0 else 3
    h, w = shape[2], shape[3]
    if h <= 0 or w <= 0:
        if input_size is None:
            raise EngineError(f"input 'image' of {onnx_path} has a dynamic size {shape}; pass input_size=(H, W).")
        h, w = (int(v) for v in input_size)
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
    if "target" in inputs:
        profile.set_shape("target", (1,), (opt_batch,), (max_batch,))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for name in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT {version} could not build a plan from {onnx_path} (see its log above); try a larger "
            "--workspace, a smaller --max-batch, or --precision fp32."
        )
    atomic_write(plan_path, bytes(memoryview(serialized)))
    return BuiltPlan(Path(plan_path), settings, version, (h, w), "target" in inputs)


# --------------------------------------------------------------------------------------------------------------------
# the artifact (export/to_trt.py)
# --------------------------------------------------------------------------------------------------------------------


def resolve_source(ckpt: str, workdir: str | os.PathLike) -> Artifact:
    """CKPT of the export scripts (an artifact folder, 'default', a built-in name, or METHOD:LIBRARY/NAME), with a
    ``model.onnx``: exported into ``workdir`` first when the artifact has none (that needs torch)."""
    from .artifact import ONNX, load_artifact, resolve_artifact_path

    if resolve_artifact_path(ckpt).is_dir():
        art = load_artifact(ckpt)
    else:
        from .requires import require_torch

        require_torch(f"{SCRIPT} {ckpt} (creating the artifact)")
        from .create import resolve_ckpt

        art = resolve_ckpt(ckpt, workdir)
    if art.has(ONNX):
        return art
    from .requires import require_torch

    require_torch(f"{SCRIPT}: {art.path or ckpt} has no {ONNX}, and exporting it")
    from .export import export_artifact

    return export_artifact(art, Path(workdir) / "onnx", ("onnx",))


def gate_source(art: Artifact, *, lint: bool = True, argmax: str = "warn", ckpt: Any = None) -> GateReport:
    """The gate on an artifact's ``model.onnx`` (``ckpt``: what the user named, when the ONNX was exported for it)."""
    from .artifact import ONNX
    from .trt_gate import check_model

    name = str((art.path or Path(art.name)) / ONNX)
    if ckpt is not None and art.path is not None and Path(str(ckpt)).resolve() != art.path.resolve():
        name = f"{ckpt} ({ONNX} exported for this check)"
    return check_model(art.file(ONNX), lint=lint, argmax=argmax, name=name)


def convert_precision(src: Path, dst: Path, precision: str, art: Artifact | None, **calib: Any) -> Path:
    """The graph at ``precision`` (engine.precision.convert_onnx, imported lazily); int8 calibrates on photos
    preprocessed as the artifact says."""
    try:
        from .precision import convert_onnx
    except ImportError as e:
        raise EngineError(
            f"--precision {precision} puts the precision into the ONNX graph with engine.precision, which this "
            "install lacks; update xai-engine, or build --precision fp32."
        ) from e
    if precision == "int8" and art is None:
        raise InputError(
            "an int8 plan calibrates on photos preprocessed as an artifact says: open an artifact (built with "
            f"python {SCRIPT} CKPT --out DIR --precision int8), not a bare graph."
        )
    return convert_onnx(src, dst, precision, preprocess=None if art is None else art.preprocess, **calib)


def prepare_onnx(src: str | os.PathLike, workdir: str | os.PathLike, precision: str = "fp32") -> Path:
    """A bare ONNX graph as TensorRT should parse it: constant-folded (when polygraphy is installed) and converted to
    ``precision`` (fp16 here; int8 needs an artifact's calibration, see :func:`trt_artifact_from`)."""
    from .trt_gate import fold_constants, missing_dependencies

    path = Path(src)
    if not missing_dependencies():
        import onnx

        folded = Path(workdir) / "sanitized.onnx"
        _save_model(fold_constants(onnx.load(str(path))), folded)
        path = folded
    if precision != "fp32":
        path = convert_precision(path, Path(workdir) / f"model.{precision}.onnx", precision, None)
    return path


def plan_precision(src: Artifact, requested: str) -> tuple[str, bool]:
    """The plan's precision and whether the graph must be converted to it. An artifact whose model.onnx already holds
    fp16 / int8 (``xai-engine export --precision``) builds at that precision, unconverted."""
    have = src.precision
    if have == "fp32":
        return requested, requested != "fp32"
    if requested not in ("fp32", have):
        raise InputError(
            f"{src.path or src.name} holds a {have} model.onnx; a {requested} plan is built from the fp32 export "
            f"(python export/to_onnx.py CKPT --out DIR), or build this one with --precision {have}."
        )
    return have, False


def check_options(precision: str, max_batch: int, opt_batch: int | None, workspace_gb: float, out: Path | None) -> None:
    """Option checks that run before any work."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if max_batch < 1:
        raise InputError(f"--max-batch must be at least 1, got {max_batch}.")
    if opt_batch is not None and not 1 <= opt_batch <= max_batch:
        raise InputError(f"--opt-batch must be between 1 and --max-batch ({max_batch}), got {opt_batch}.")
    if not workspace_gb > 0:
        raise InputError(f"--workspace must be a positive number of GB, got {workspace_gb}.")
    if (
        out is not None
        and out.exists()
        and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file()))
    ):
        raise InputError(f"--out {out} exists and is not an artifact folder; choose a new folder.")


def trt_artifact_from(
    ckpt: str | Artifact,
    out_dir: str | os.PathLike,
    *,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    calib: str | os.PathLike | None = None,
    calib_count: int = 64,
    seed: int = 0,
    device_index: int = 0,
    lint: bool = True,
    argmax: str = "warn",
    log: Any = None,
) -> Artifact:
    """Build a TensorRT plan for ``ckpt`` on this machine and write a new artifact folder (the source's files plus
    ``model.plan``, its manifest recording the plan). See the module docstring for the steps.

    Raises:
        TensorRTUnavailableError: TensorRT or a GPU is missing (raised before any other work).
        GateFailedError: the gate found errors (``.report``).
        EngineError: anything else that stops the build (the message says what to do).
    """
    from .artifact import ONNX, Artifact, path_from, sha256_file, write_artifact

    say = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out_dir)
    check_options(precision, max_batch, opt_batch, workspace_gb, out)
    gpu = preflight(device_index)
    opt_batch = max_batch if opt_batch is None else opt_batch
    with tempfile.TemporaryDirectory(prefix="xai-trt-") as tmp:
        tmp = Path(tmp)
        src = ckpt if isinstance(ckpt, Artifact) else resolve_source(ckpt, tmp)
        if not src.has(ONNX):
            raise ArtifactError(f"{src.path or src.name} has no {ONNX}; export it first (python export/to_onnx.py).")
        precision, convert = plan_precision(src, precision)
        say(f"gate: checking {src.path or src.name}/{ONNX}")
        exported = tmp in (src.path or tmp).parents
        report = gate_source(src, lint=lint, argmax=argmax, ckpt=ckpt if exported else None)
        if not report.passed:
            raise GateFailedError(report)
        for finding in report.warnings:
            say(f"gate: {finding}")
        graph = tmp / "sanitized.onnx"
        _save_model(report.sanitized, graph)
        if convert:
            say(f"precision: converting the graph to {precision}")
            graph = convert_precision(
                graph, tmp / f"model.{precision}.onnx", precision, src, calib=calib, calib_count=calib_count, seed=seed
            )
            from .trt_gate import check_model

            converted = check_model(graph, sanitize=False, lint=False, argmax=argmax, name=f"{precision} graph")
            if not converted.passed:
                raise GateFailedError(converted)
        input_size = tuple(int(v) for v in src.preprocess.input_size)
        say(f"building: TensorRT plan, {precision}, batch 1..{max_batch} (opt {opt_batch}) on {gpu.name}")
        built = plan_from_onnx(
            graph,
            tmp / PLAN,
            precision=precision,
            max_batch=max_batch,
            opt_batch=opt_batch,
            workspace_gb=workspace_gb,
            input_size=input_size,  # type: ignore[arg-type]
        )
        record = plan_record(
            sha256=sha256_file(built.path),
            tensorrt_version=built.tensorrt_version,
            gpu=gpu,
            precision=precision,
            max_batch=max_batch,
            opt_batch=opt_batch,
            workspace_gb=workspace_gb,
            settings=built.settings,
            input_size=built.input_size,
            onnx_sha256=src.manifest.get("files", {}).get(ONNX),
        )
        manifest = dict(src.manifest)
        manifest[MANIFEST_KEY] = record
        if src.backbone.weights == "external" and src.path is not None:  # keep pointing at the same backbone file
            from .graph import external_weights_path

            manifest["backbone"] = {
                **manifest["backbone"],
                "weights_file": path_from(out, external_weights_path(src)),
            }
        files = {n: src.file(n) for n in src.manifest.get("files", {}) if n != PLAN}
        files.update({k: v for k, v in src.extra_files.items() if k != PLAN})
        files[PLAN] = built.path
        return write_artifact(manifest, out, files)


def _save_model(model, path: Path) -> None:
    import onnx

    large = model.ByteSize() > 1_800_000_000
    onnx.save(model, str(path), save_as_external_data=large, location=f"{path.name}.data" if large else None)


# --------------------------------------------------------------------------------------------------------------------
# CLI: python export/to_trt.py CKPT --out DIR [...] | CKPT --check-only
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .trt_gate import add_gate_arguments

    p = argparse.ArgumentParser(
        prog="export/to_trt.py",
        description="Build a TensorRT plan for CKPT (an artifact folder, 'default', a built-in name, or "
        "METHOD:LIBRARY/NAME) on this machine's GPU and write a new artifact folder with model.plan. The TensorRT "
        "gate runs first; --check-only runs only the gate (on the CPU, without TensorRT). Exit codes: 0 done/passed, "
        "1 the gate failed, 2 an error (TensorRT or a GPU missing, bad options).",
    )
    p.add_argument("ckpt", help="artifact folder, 'default', a built-in name, or METHOD:LIBRARY/NAME")
    p.add_argument("--out", default=None, help="the new artifact folder (required unless --check-only)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="the plan's precision (default fp32)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="largest batch the plan runs")
    p.add_argument("--opt-batch", type=int, default=None, help="batch TensorRT tunes for (default: --max-batch)")
    p.add_argument("--workspace", type=float, default=DEFAULT_WORKSPACE_GB, help="workspace memory limit, GB")
    p.add_argument("--calib", default=None, metavar="DIR", help="int8: folder of calibration photos")
    p.add_argument("--calib-count", type=int, default=64, help="int8: photos to calibrate on")
    p.add_argument("--seed", type=int, default=0, help="int8: picks the calibration photos")
    p.add_argument("--device", type=int, default=0, help="CUDA device index to build on")
    p.add_argument("--check-only", action="store_true", help="run the TensorRT gate only (no TensorRT needed)")
    add_gate_arguments(p)
    return p


def _check_only(args: argparse.Namespace) -> int:
    from .trt_gate import check_model, report_and_exit_code

    argmax = "error" if args.strict_argmax else "warn"
    with tempfile.TemporaryDirectory(prefix="xai-trt-gate-") as tmp:
        src = resolve_source(args.ckpt, tmp)
        exported = Path(tmp) in (src.path or Path(tmp)).parents
        report = gate_source(src, lint=not args.no_lint, argmax=argmax, ckpt=args.ckpt if exported else None)
        code = report_and_exit_code(report, args)
        _, convert = plan_precision(src, args.precision)
        if code == 0 and convert:  # the converted graph is gated too: it is what TensorRT parses
            graph = Path(tmp) / "sanitized.onnx"
            _save_model(report.sanitized, graph)
            converted = convert_precision(
                graph,
                Path(tmp) / f"model.{args.precision}.onnx",
                args.precision,
                src,
                calib=args.calib,
                calib_count=args.calib_count,
                seed=args.seed,
            )
            report2 = check_model(converted, sanitize=False, lint=False, argmax=argmax, name=f"{args.precision} graph")
            code = max(code, report_and_exit_code(report2, argparse.Namespace(json=args.json)))
    return code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .trt_gate import quiet_onnxruntime

    quiet_onnxruntime()
    try:
        if args.check_only:
            return _check_only(args)
        if args.out is None:
            parser.error("--out DIR is required (or pass --check-only to run the gate only)")
        preflight(args.device)  # at once: no export work without TensorRT and a GPU
        art = trt_artifact_from(
            args.ckpt,
            args.out,
            precision=args.precision,
            max_batch=args.max_batch,
            opt_batch=args.opt_batch,
            workspace_gb=args.workspace,
            calib=args.calib,
            calib_count=args.calib_count,
            seed=args.seed,
            device_index=args.device,
            lint=not args.no_lint,
            argmax="error" if args.strict_argmax else "warn",
        )
    except GateFailedError as e:
        from .trt_gate import report_and_exit_code

        report_and_exit_code(e.report, args)
        print(f"{parser.prog}: error: the TensorRT gate failed; fix the findings above and re-export.", file=sys.stderr)
        return 1
    except EngineError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    record = art.manifest[MANIFEST_KEY]
    print(
        f"built {art.path}: {PLAN} ({record['precision']}, batch 1..{record['max_batch']}, TensorRT "
        f"{record['tensorrt_version']}, {record['gpu_name']} sm {record['compute_capability']})"
    )
    return 0
