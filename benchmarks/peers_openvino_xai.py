"""openvino-xai 1.1 as a peer: ViT-ReciproCAM timing (latency benchmark) and black-box RISE (quality baseline).

openvino-xai runs in its own virtualenv (see ``peers_venv.py``). Each entry point has two halves:

* the parent side, in the main environment: :func:`run_ovxai_vit` and :func:`run_ovxai_rise` check their arguments,
  start the worker in the peer venv and turn its output into records (the ViT timing statistics are computed here,
  with ``engine.report``, from the raw per-call times the worker returns);
* the worker side, in the peer venv: :func:`ovxai_vit_worker` and :func:`ovxai_rise_worker`, reached through
  ``python peers_openvino_xai.py REQUEST.json`` (``peers_venv.run_worker`` / ``serve_worker``).

Only the standard library (and ``peers_venv``) is imported at module level: the same file runs under the main
interpreter (which has no openvino-xai) and under the peer venv's interpreter (which has no torch and no ``engine``).
The command line is ``benchmarks/peers.py``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # benchmarks/ is no package: make peers_venv importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_venv import (  # noqa: E402
    DEFAULT_VENV,
    REPO_ROOT,
    PeerError,
    peer_available,
    require_venv,
    run_worker,
    serve_worker,
    setup_hint,
    venv_dir,
)

SCRIPT = Path(__file__).resolve()
METHOD = "vit-reciprocam"
BACKEND = "openvino"
PRECISIONS = ("f32", "bf16")
RISE_METHOD = "rise"
RISE_NORMALISATION = "sum_i softmax(model(x * M_i))[target] * M_i / (num_masks * prob)"
# the columns of the ViT timing table (the ``ovxai-vit`` command and the selftest)
TABLE_COLUMNS = (
    "model",
    "impl",
    "precision",
    "batch",
    "median_ms",
    "p95_ms",
    "ratio_to_classify",
    "effective_precision",
)


# --------------------------------------------------------------------------------------------------------------------
# Helpers of the parent side (main interpreter)
# --------------------------------------------------------------------------------------------------------------------


def _main_env() -> None:
    """Make the repository's ``engine`` importable (the parent side runs in the main environment)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def _report() -> ModuleType:
    """Import ``engine.report`` lazily: this module must also import in the peer venv, which has no ``engine``."""
    _main_env()
    try:
        from engine import report
    except ImportError as exc:
        raise PeerError(
            f"the parent side of the openvino-xai peer needs the main environment (engine.report: {exc}); run it "
            f"with the main interpreter, not {sys.executable}"
        ) from exc
    return report


def _main_openvino_version() -> str | None:
    """Return the openvino version of the running (main) interpreter, without importing openvino."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_onnx(onnx_path: str | os.PathLike[str]) -> None:
    """PeerError naming how to export a model when ``onnx_path`` is not a file."""
    if not Path(onnx_path).is_file():
        raise PeerError(
            f"ONNX model not found: {onnx_path}; export one (input 'image', output 'logits'), e.g. with "
            "python benchmarks/peers.py selftest --keep-onnx PATH"
        )


# --------------------------------------------------------------------------------------------------------------------
# ViT-ReciproCAM timing: parent side (main interpreter)
# --------------------------------------------------------------------------------------------------------------------


def run_ovxai_vit(
    onnx_path: str | os.PathLike[str],
    precision: str,
    batch: int,
    repeats: int,
    warmup: int,
    threads: int,
    venv: str | os.PathLike[str] = DEFAULT_VENV,
    *,
    model_name: str | None = None,
    target_layer: str | None = None,
    all_targets: bool = False,
    timeout: float | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Time openvino-xai's ViT-ReciproCAM on an ONNX classifier, in the peer venv.

    Args:
        onnx_path: ONNX classifier with input ``image`` (B,3,224,224) float32 and output ``logits`` (B,1000).
        precision: ``"f32"`` or ``"bf16"``; set as OpenVINO's ``INFERENCE_PRECISION_HINT``.
        batch: Requested batch; openvino-xai's white-box ViT-ReciproCAM only handles 1 (then batch 1 is timed and a
            ``note`` is recorded).
        repeats: Timed calls per measurement.
        warmup: Untimed calls before each measurement.
        threads: OpenVINO ``INFERENCE_NUM_THREADS``.
        venv: The peer virtualenv (see ``peers_venv.setup_venv``).
        model_name: Value of the ``model`` key; defaults to the ONNX file's stem.
        target_layer: Friendly name of the residual Add before the last block; default: automatic detection.
        all_targets: Also time the default ``explainer(x)`` call, which post-processes the maps of all classes.
        timeout: Seconds before the subprocess is killed; None waits forever.
        verbose: Stream the peer's progress (stderr) to this process's stderr instead of capturing it.

    Returns:
        One record per timed call (see :func:`vit_records`), each with ``main_openvino_version`` (the main
        interpreter's openvino) added.

    Raises:
        PeerError: When the venv is missing (the message says to run ``python benchmarks/peers.py setup``), this is
            not the main environment, or the peer run fails (the message carries the end of its output).
    """
    _check_precision(precision)
    check_onnx(onnx_path)
    python = require_venv(venv)
    _report()  # fail before the (long) peer run when engine.report cannot be imported
    kwargs = {
        "onnx_path": str(Path(onnx_path).absolute()),
        "precision": precision,
        "batch": int(batch),
        "repeats": int(repeats),
        "warmup": int(warmup),
        "threads": int(threads),
        "model_name": model_name or None,
        "target_layer": target_layer or None,
        "all_targets": bool(all_targets),
    }
    with tempfile.TemporaryDirectory(prefix="ovxai-") as tmp:
        raw = run_worker(
            python,
            SCRIPT,
            "vit",
            kwargs,
            Path(tmp),
            timeout=timeout,
            verbose=verbose,
            what="openvino-xai run",
            knob="repeats",
        )
    records = vit_records(raw)
    main_version = _main_openvino_version()
    for record in records:
        record["main_openvino_version"] = main_version
    return records


def vit_records(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Turn :func:`ovxai_vit_worker`'s raw times into records (main environment: uses ``engine.report``).

    Args:
        raw: The worker's output: ``common`` keys, a ``note`` (or None) and ``measurements``, each with ``impl``,
            ``times_ms`` (per call, in round order), ``effective_precision`` and ``extra`` keys.

    Returns:
        One record per measurement: the common keys, ``impl``, ``median_ms``, ``p95_ms`` (linear interpolation),
        ``ratio_to_classify`` (median over the ``openvino-xai-classify`` median), ``effective_precision``, the extra
        keys and ``note`` when there is one.
    """
    percentile = _report().percentile
    medians = {m["impl"]: statistics.median(m["times_ms"]) for m in raw["measurements"]}
    cls_median = medians["openvino-xai-classify"]
    records = []
    for m in raw["measurements"]:
        median = medians[m["impl"]]
        record = {
            **raw["common"],
            "impl": m["impl"],
            "median_ms": round(median, 3),
            "p95_ms": round(percentile(m["times_ms"], 95), 3),
            "ratio_to_classify": round(median / cls_median, 3),
            "effective_precision": m["effective_precision"],
            **m["extra"],
        }
        if raw["note"]:
            record["note"] = raw["note"]
        records.append(record)
    return records


def format_records(records: Sequence[dict[str, Any]]) -> str:
    """The ViT timing records as a fixed-width table (main environment: uses ``engine.report``)."""
    return _report().format_table(records, TABLE_COLUMNS)


# --------------------------------------------------------------------------------------------------------------------
# ViT-ReciproCAM timing: worker side (peer venv interpreter)
# --------------------------------------------------------------------------------------------------------------------


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, log_to: Any = None
) -> dict[str, list[float]]:
    """Time several callables round-robin, so that load changes on a shared machine hit all of them alike.

    Each callable is first called ``warmup`` times untimed; then ``repeats`` rounds call each one once, timed.

    Args:
        fns: Named zero-argument callables.
        repeats: Timed rounds.
        warmup: Untimed calls per callable before the first round.
        log_to: A text stream for per-round progress (None: silent).

    Returns:
        The durations in ms, per name, in round order.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
        if log_to is not None:
            summary = ", ".join(f"{name} {t[-1]:.0f} ms" for name, t in times.items())
            print(f"[ovxai] round {round_ + 1}/{repeats}: {summary}", file=log_to, flush=True)
    return times


def find_vit_target_layer(model: Any, k: int = 1) -> str:
    """Find the residual-stream Add that feeds the k-th transformer block from the head (fallback detection).

    openvino-xai's automatic search takes the ``2k+1``-th Add (from the output) whose two inputs are rank-3,
    non-Constant and non-Convert. This fallback instead keeps only residual-stream Adds: rank-3 output, no
    Constant/Convert input, exactly two consumers of which exactly one is an Add (the next residual Add) and the
    other starts the block branch (the LayerNorm, MVN in OpenVINO). Each block contributes two of them (after
    attention and after the MLP); the last block's MLP Add feeds only the final norm and is excluded. The ``2k``-th
    from the end is therefore the input of the k-th block from the head.

    Args:
        model: The ``openvino.Model`` read from the ONNX file.
        k: Block index from the head, 1-indexed (openvino-xai's ``k``).

    Returns:
        The friendly name to pass as openvino-xai's ``target_layer``.

    Raises:
        RuntimeError: When no such Add exists.
    """
    residual = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Add" or op.get_output_partial_shape(0).rank.get_length() != 3:
            continue
        sources = [i.get_source_output().get_node().get_type_name() for i in op.inputs()]
        if any(s in ("Constant", "Convert") for s in sources):
            continue
        consumers = [t.get_node().get_type_name() for t in op.output(0).get_target_inputs()]
        if len(consumers) == 2 and consumers.count("Add") == 1:
            residual.append(op)
    if len(residual) < 2 * k:
        raise RuntimeError(
            f"found {len(residual)} residual Add nodes, need {2 * k}: pass --target-layer with the friendly name of "
            "the Add that feeds the last transformer block"
        )
    return residual[-2 * k].get_friendly_name()


def ovxai_vit_worker(
    onnx_path: str,
    precision: str,
    batch: int,
    repeats: int,
    warmup: int,
    threads: int,
    model_name: str | None = None,
    target_layer: str | None = None,
    all_targets: bool = False,
) -> dict[str, Any]:
    """Time plain classification and openvino-xai's ViT-ReciproCAM explanation (runs inside the peer venv).

    Both models are compiled on CPU with ``INFERENCE_PRECISION_HINT`` = ``precision`` and ``INFERENCE_NUM_THREADS`` =
    ``threads``. openvino-xai compiles its XAI model itself with default properties (on a bf16-capable CPU that means
    bf16), so the explainer is built with ``prepare_model=False``, the XAI model is generated with
    ``explainer.method.prepare_model(load_model=False)`` and compiled here with the same properties, and the compiled
    model is handed back to the method.

    Args:
        onnx_path: The ONNX classifier.
        precision: ``"f32"`` or ``"bf16"``.
        batch: Requested batch (openvino-xai's white-box ViT-ReciproCAM supports 1 only; see the ``note`` key).
        repeats: Timed calls per measurement.
        warmup: Untimed calls before each measurement.
        threads: ``INFERENCE_NUM_THREADS``.
        model_name: The ``model`` key; defaults to the ONNX file's stem.
        target_layer: openvino-xai ``target_layer``; None tries its auto detection, then :func:`find_vit_target_layer`.
        all_targets: Also time ``explainer(x)`` with its default ``targets=-1`` (maps of all classes post-processed).

    Returns:
        The raw measurements, for :func:`vit_records` (the statistics are computed in the main environment):
        ``common`` (the keys every record shares), ``note`` (why batch 1 was timed instead, or None) and
        ``measurements``, each with ``impl``, ``times_ms`` (every timed call, in round order), ``effective_precision``
        and ``extra`` keys. The impls are ``openvino-xai-classify`` (plain inference), ``openvino-xai`` (the whole
        ``explainer(...)`` call, one target class, default post-processing: resize to the input size + colormap),
        ``openvino-xai-infer`` (the compiled XAI model's inference alone) and, with ``all_targets``,
        ``openvino-xai-all-targets``.
    """
    from importlib import metadata

    import numpy as np
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer import ExplainMode

    logging.getLogger("openvino_xai").setLevel(logging.WARNING)
    _check_precision(precision)
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads)}
    name = model_name or Path(onnx_path).stem
    core = ov.Core()
    model = core.read_model(onnx_path)
    input_name = model.input(0).get_any_name()
    print(f"[ovxai] model {onnx_path}: input {input_name} {model.input(0).get_partial_shape()}", file=sys.stderr)

    # --- openvino-xai white-box explainer (ViT-ReciproCAM) -----------------------------------------------------
    def build(layer: str | None) -> Any:
        return xai.Explainer(
            model=model,
            task=xai.Task.CLASSIFICATION,
            explain_mode=ExplainMode.WHITEBOX,
            explain_method=xai.Method.VITRECIPROCAM,
            target_layer=layer,
            embed_scaling=True,
            device_name="CPU",
            prepare_model=False,  # forwarded to ViTReciproCAM: we compile the XAI model ourselves, see below
        )

    t0 = time.perf_counter()
    layer_source = "given" if target_layer else "openvino-xai auto"
    try:
        explainer = build(target_layer)
    except RuntimeError as exc:
        if target_layer:
            raise
        target_layer = find_vit_target_layer(model)
        layer_source = "peers.find_vit_target_layer"
        print(f"[ovxai] auto target layer failed ({exc}); retrying with {target_layer}", file=sys.stderr)
        explainer = build(target_layer)
    method = explainer.method
    xai_model = method.prepare_model(load_model=False)  # inserts the XAI branch; output "saliency_map"
    if target_layer is None:
        from openvino_xai.inserter.model_parser import IRParserCls, ModelType

        target_layer = IRParserCls.get_target_node(model, ModelType.TRANSFORMER, None, method._k).get_friendly_name()
    xai_compiled = core.compile_model(xai_model, "CPU", config)
    method._model_compiled = xai_compiled  # openvino-xai has no public hook for compile properties
    xai_compile_s = time.perf_counter() - t0
    print(
        f"[ovxai] XAI branch after {target_layer} ({layer_source}), compiled in {xai_compile_s:.1f} s", file=sys.stderr
    )

    # --- plain classification, compiled the same way -----------------------------------------------------------
    t0 = time.perf_counter()
    cls_compiled = core.compile_model(model, "CPU", config)
    cls_compile_s = time.perf_counter() - t0
    effective = cls_compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    effective_xai = xai_compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    effective_threads = int(cls_compiled.get_property("INFERENCE_NUM_THREADS"))

    rng = np.random.default_rng(0)
    note = None
    eff_batch = batch
    x = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
    target = int(np.argmax(cls_compiled(x[:1])[0][0]))
    if batch > 1:
        try:
            explainer(x, targets=[target])
        except Exception as exc:  # noqa: BLE001 - any failure means batch > 1 is unsupported
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = lines[-1][:200] if lines else type(exc).__name__
            note = (
                f"openvino-xai white-box ViT-ReciproCAM does not support batch {batch} (its XAI branch reshapes to "
                f"batch 1: {detail}); batch 1 timed instead"
            )
            print(f"[ovxai] {note}", file=sys.stderr)
            eff_batch = 1
            x = x[:1].copy()

    fns: dict[str, Callable[[], object]] = {
        "classify": lambda: cls_compiled(x),
        "explain": lambda: explainer(x, targets=[target]),
        "infer": lambda: xai_compiled(x),
    }
    if all_targets:
        fns["all-targets"] = lambda: explainer(x)
    print(
        f"[ovxai] timing {', '.join(fns)} interleaved: batch {eff_batch}, {precision}, {threads} threads, "
        f"{warmup} warmup + {repeats} rounds",
        file=sys.stderr,
    )
    times = time_interleaved(fns, repeats, warmup, log_to=sys.stderr)

    explanation = explainer(x, targets=[target])
    sal = xai_compiled(x)["saliency_map"]
    common = {
        "model": name,
        "method": METHOD,
        "backend": BACKEND,
        "precision": precision,
        "batch": eff_batch,
        "requested_batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "effective_threads": effective_threads,
        "openvino_version": ov.get_version(),
        "openvino_xai_version": metadata.version("openvino-xai"),
        "numpy_version": np.__version__,
        "timing": "interleaved rounds (classify, explain, infer[, all-targets])",
    }

    def measurement(impl: str, name: str, effective_precision: str, **extra: Any) -> dict[str, Any]:
        return {"impl": impl, "times_ms": times[name], "effective_precision": effective_precision, "extra": extra}

    xai_extra = {
        "target_layer": target_layer,
        "target_layer_source": layer_source,
        "compile_s": round(xai_compile_s, 2),
        "saliency_map_shape": list(sal.shape),
    }
    measurements = [
        measurement("openvino-xai-classify", "classify", effective, compile_s=round(cls_compile_s, 2)),
        measurement(
            "openvino-xai",
            "explain",
            effective_xai,
            call="explainer(x, targets=[top1]) (resize to input + colormap)",
            explanation_shape=list(explanation.shape),
            **xai_extra,
        ),
        measurement("openvino-xai-infer", "infer", effective_xai, call="compiled_xai_model(x)", **xai_extra),
    ]
    if all_targets:
        measurements.append(
            measurement(
                "openvino-xai-all-targets",
                "all-targets",
                effective_xai,
                call="explainer(x) (targets=-1: all classes resized + colormapped)",
                **xai_extra,
            )
        )
    return {"common": common, "note": note, "measurements": measurements}


# --------------------------------------------------------------------------------------------------------------------
# RISE: parent side (main interpreter)
# --------------------------------------------------------------------------------------------------------------------


def run_ovxai_rise(
    onnx_path: str | os.PathLike[str],
    images: Any,
    targets: Any,
    *,
    num_masks: int = 2000,
    prob: float = 0.5,
    num_cells: int = 8,
    seed: int = 0,
    threads: int | None = None,
    precision: str = "f32",
    venv: str | os.PathLike[str] = DEFAULT_VENV,
    timeout: float | None = None,
    verbose: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Compute openvino-xai's black-box RISE saliency maps in the peer venv (a quality-benchmark baseline).

    Args:
        onnx_path: ONNX classifier with input ``image`` (B,3,224,224) float32 (normalised) and output ``logits``
            (B,1000).
        images: ``np.ndarray`` (N,3,224,224) float32, already normalised for the model.
        targets: ``np.ndarray`` (N,) of class indices, one to explain per image.
        num_masks: Random masks per image (openvino-xai's BALANCE preset uses 5000).
        prob: Probability that a low-resolution mask cell is kept.
        num_cells: Mask grid cells per side (upsampled to the input size; BALANCE preset: 8).
        seed: Seed of openvino-xai's mask generator; reset per image, so every image sees the same masks.
        threads: OpenVINO ``INFERENCE_NUM_THREADS``; None: the CPU count.
        precision: ``"f32"`` or ``"bf16"``; set as OpenVINO's ``INFERENCE_PRECISION_HINT``.
        venv: The peer virtualenv (see :func:`setup_venv`).
        timeout: Seconds before the subprocess is killed; None waits forever.
        verbose: Stream the peer's progress (stderr) to this process's stderr instead of capturing it.

    Returns:
        ``(saliency, meta)``: float32 maps (N,H,W) at the model's input resolution (higher = more important,
        normalised as ``meta["normalisation"]`` says) and the peer's metadata (versions, parameters, seconds per
        image) with ``main_openvino_version`` added.

    Raises:
        PeerError: When the venv is missing (the message says to run ``python benchmarks/peers.py setup``) or the
            peer run fails (the message carries the end of its output).
        ValueError: On malformed ``images``/``targets`` or an unknown precision.
    """
    import numpy as np

    _check_precision(precision)
    images = np.ascontiguousarray(images, dtype=np.float32)
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N,3,H,W), got {images.shape}")
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"need one target per image: {targets.shape[0]} targets for {images.shape[0]} images")
    check_onnx(onnx_path)
    python = require_venv(venv)
    with tempfile.TemporaryDirectory(prefix="ovxai-rise-") as tmp:
        inputs, out = Path(tmp) / "inputs.npz", Path(tmp) / "saliency.npz"
        np.savez(inputs, images=images, targets=targets)
        kwargs = {
            "onnx_path": str(Path(onnx_path).absolute()),
            "inputs_path": str(inputs),
            "out_path": str(out),
            "num_masks": int(num_masks),
            "prob": float(prob),
            "num_cells": int(num_cells),
            "seed": int(seed),
            "threads": int(threads or os.cpu_count() or 1),
            "precision": precision,
        }
        meta: dict[str, Any] = run_worker(
            python,
            SCRIPT,
            "rise",
            kwargs,
            Path(tmp),
            timeout=timeout,
            verbose=verbose,
            what="openvino-xai RISE",
            knob="num_masks",
        )
        with np.load(out, allow_pickle=False) as data:
            saliency = data["saliency"].astype(np.float32, copy=False)
    meta["main_openvino_version"] = _main_openvino_version()
    return saliency, meta


# --------------------------------------------------------------------------------------------------------------------
# RISE: worker side (peer venv interpreter)
# --------------------------------------------------------------------------------------------------------------------


def ovxai_rise_worker(
    onnx_path: str,
    inputs_path: str,
    out_path: str,
    num_masks: int = 2000,
    prob: float = 0.5,
    num_cells: int = 8,
    seed: int = 0,
    threads: int | None = None,
    precision: str = "f32",
) -> dict[str, Any]:
    """Explain each image for its target class with openvino-xai's black-box RISE (runs inside the peer venv).

    The explainer is ``openvino_xai.Explainer(model, Task.CLASSIFICATION, explain_mode=ExplainMode.BLACKBOX,
    explain_method=Method.RISE, preprocess_fn=identity, postprocess_fn=softmax of the logits)``. RISE weights each
    mask by the score that ``postprocess_fn`` returns, and the paper uses class probabilities, hence the softmax.
    openvino-xai compiles the model itself with default properties (bf16 on a bf16-capable CPU), so it is recompiled
    here with ``INFERENCE_PRECISION_HINT`` and ``INFERENCE_NUM_THREADS`` and handed back to the method (there is no
    public hook). The raw float map comes from ``explainer(x, targets=[t], scale_output=False, scaling=False,
    resize=False, colormap=False, ...)``: no min-max scaling to uint8, no resize, no colormap.

    Args:
        onnx_path: The ONNX classifier (input (B,3,H,W) float32 normalised, output logits (B,C)).
        inputs_path: ``.npz`` with ``images`` (N,3,H,W) float32 and ``targets`` (N,) int.
        out_path: Destination ``.npz``: ``saliency`` float32 (N,H,W) and ``meta`` (a JSON string).
        num_masks: Random masks per image.
        prob: Probability that a mask cell is kept.
        num_cells: Mask grid cells per side.
        seed: openvino-xai's mask seed (the same masks for every image).
        threads: ``INFERENCE_NUM_THREADS``; None: the CPU count.
        precision: ``"f32"`` or ``"bf16"``.

    Returns:
        The metadata written as ``meta``.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")  # openvino-xai's per-mask tqdm bar; read when tqdm is imported
    from importlib import metadata

    import numpy as np
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.common.utils import IdentityPreprocessFN
    from openvino_xai.explainer import ExplainMode
    from openvino_xai.methods.black_box.base import Preset

    logging.getLogger("openvino_xai").setLevel(logging.WARNING)
    _check_precision(precision)
    threads = int(threads or os.cpu_count() or 1)
    with np.load(inputs_path, allow_pickle=False) as data:
        images = np.ascontiguousarray(data["images"], dtype=np.float32)
        targets = np.asarray(data["targets"]).astype(np.int64).reshape(-1)
    if images.ndim != 4 or targets.shape[0] != images.shape[0]:
        raise ValueError(f"bad inputs: images {images.shape}, targets {targets.shape}")

    def softmax_scores(outputs: Any) -> Any:
        logits = np.asarray(outputs[0], dtype=np.float64)
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)  # (1, C), as RISE's check_classification_output requires

    core = ov.Core()
    model = core.read_model(onnx_path)
    t0 = time.perf_counter()
    explainer = xai.Explainer(
        model=model,
        task=xai.Task.CLASSIFICATION,
        preprocess_fn=IdentityPreprocessFN(),
        postprocess_fn=softmax_scores,
        explain_mode=ExplainMode.BLACKBOX,
        explain_method=xai.Method.RISE,
        device_name="CPU",
    )
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(model, "CPU", config)
    explainer.method._model_compiled = compiled  # openvino-xai has no public hook for compile properties
    compile_s = time.perf_counter() - t0
    effective_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    effective_threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    print(
        f"[ovxai-rise] {onnx_path}: {len(images)} images, {num_masks} masks, prob {prob}, {num_cells} cells, seed "
        f"{seed}, {precision} (effective {effective_precision}), {effective_threads} threads; built in "
        f"{compile_s:.1f} s",
        file=sys.stderr,
        flush=True,
    )

    maps: list[Any] = []
    seconds: list[float] = []
    for i, (image, target) in enumerate(zip(images, targets, strict=True)):
        t = int(target)
        t0 = time.perf_counter()
        explanation = explainer(
            image[None],
            targets=[t],
            preset=Preset.BALANCE,  # overridden by num_masks/num_cells below
            num_masks=int(num_masks),
            num_cells=int(num_cells),
            prob=float(prob),
            seed=int(seed),
            scale_output=False,  # RISE's own min-max scaling to uint8 [0, 255]
            scaling=False,
            resize=False,
            colormap=False,
            overlay=False,
        )
        seconds.append(time.perf_counter() - t0)
        raw = np.asarray(explanation.saliency_map[t], dtype=np.float64)
        maps.append((raw / (num_masks * prob)).astype(np.float32))
        print(f"[ovxai-rise] image {i + 1}/{len(images)} target {t}: {seconds[-1]:.2f} s", file=sys.stderr, flush=True)

    saliency = np.stack(maps) if maps else np.zeros((0, *images.shape[2:]), np.float32)
    meta: dict[str, Any] = {
        "method": RISE_METHOD,
        "impl": "openvino-xai",
        "openvino_version": ov.get_version(),
        "openvino_xai_version": metadata.version("openvino-xai"),
        "numpy_version": np.__version__,
        "num_masks": int(num_masks),
        "prob": float(prob),
        "num_cells": int(num_cells),
        "seed": int(seed),
        "precision": precision,
        "effective_precision": effective_precision,
        "threads": threads,
        "effective_threads": effective_threads,
        "score": "softmax(logits)[target]",
        "normalisation": RISE_NORMALISATION,
        "saliency_shape": list(saliency.shape),
        "build_s": round(compile_s, 3),
        "seconds_per_image": [round(s, 4) for s in seconds],
        "mean_seconds_per_image": round(statistics.fmean(seconds), 4) if seconds else None,
        "onnx": str(onnx_path),
    }
    np.savez(out_path, saliency=saliency, meta=np.array(json.dumps(meta)))
    return meta


# --------------------------------------------------------------------------------------------------------------------
# selftest (main interpreter)
# --------------------------------------------------------------------------------------------------------------------


def export_random_vit(path: str | os.PathLike[str], seed: int = 0, model_name: str = "vit_base_patch16_224") -> Path:
    """Export a timm ViT (``vit_base_patch16_224``) with random weights and perturbed LayerNorms to ONNX (main env).

    The LayerNorm weights/biases are perturbed (``1 + 0.1 * randn`` / ``0.1 * randn``). openvino-xai walks from the
    residual Add through the LayerNorm (MVN -> Multiply -> Add) and stops at the first Add, the LayerNorm's bias.
    With identity LayerNorms, ``ov.convert_model`` folds the Multiply/Add away and the walk runs into the attention
    ("Number of normalization inputs > 1!"). ``ov.Core().read_model`` (used by ``ovxai-vit``) keeps them either way.

    Args:
        path: Destination ``.onnx`` file (written as a single file).
        seed: Seed for the weights.
        model_name: The timm ViT (tests export the small ``vit_tiny_patch16_224``).

    Returns:
        The written path.
    """
    _main_env()
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False).eval()
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.data = 1 + 0.1 * torch.randn(module.weight.shape, generator=gen)
            module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=gen)
    torch.backends.mha.set_fastpath_enabled(False)
    x = torch.randn(1, 3, 224, 224, generator=gen)
    out = Path(path)
    kwargs: dict[str, Any] = {
        "input_names": ["image"],
        "output_names": ["logits"],
        "dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}},
        "opset_version": 17,
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        try:
            torch.onnx.export(model, x, str(out), dynamo=False, **kwargs)
        except Exception as exc:  # noqa: BLE001 - fall back to the dynamo exporter
            print(f"[selftest] dynamo=False export failed ({exc}); retrying with dynamo=True", flush=True)
            torch.onnx.export(model, x, str(out), dynamo=True, **kwargs)
            import onnx

            onnx.save(onnx.load(str(out)), str(out), save_as_external_data=False)
            out.with_name(out.name + ".data").unlink(missing_ok=True)
    return out


def selftest(
    venv: str | os.PathLike[str] = DEFAULT_VENV,
    precisions: Sequence[str] = PRECISIONS,
    batch: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    keep_onnx: str | None = None,
    json_out: str | None = None,
) -> list[dict[str, Any]]:
    """Build a random-weight ViT-B/16, export it to ONNX and time openvino-xai's ViT-ReciproCAM on it.

    Args:
        venv: The peer virtualenv.
        precisions: Precisions to run.
        batch: Requested batch.
        repeats: Timed calls per measurement.
        warmup: Untimed calls per measurement.
        threads: ``INFERENCE_NUM_THREADS``; defaults to the CPU count.
        keep_onnx: Write the ONNX file here and keep it; default: a temporary file.
        json_out: Also write all records to this JSON file.

    Returns:
        All records.
    """
    if not peer_available(venv):
        raise PeerError(f"openvino-xai venv missing or broken at {venv_dir(venv)}: run {setup_hint(venv)}")
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="peers-selftest-") as tmp:
        onnx_path = Path(keep_onnx) if keep_onnx else Path(tmp) / "vit_base_patch16_224.onnx"
        t0 = time.perf_counter()
        print(f"[selftest] exporting random-weight vit_base_patch16_224 to {onnx_path}", flush=True)
        export_random_vit(onnx_path)
        print(f"[selftest] exported in {time.perf_counter() - t0:.1f} s", flush=True)
        records: list[dict[str, Any]] = []
        for precision in precisions:
            print(f"[selftest] openvino-xai ViT-ReciproCAM, {precision}, batch {batch}, {threads} threads", flush=True)
            records += run_ovxai_vit(
                onnx_path,
                precision,
                batch,
                repeats,
                warmup,
                threads,
                venv,
                model_name="vit_base_patch16_224",
                all_targets=True,
                verbose=True,
            )
    print(format_records(records))
    first = records[0]
    print(
        f"openvino (peer venv) {first['openvino_version']}, openvino-xai {first['openvino_xai_version']}, "
        f"openvino (main env) {first['main_openvino_version']}, target layer {records[1].get('target_layer')}"
    )
    for note in sorted({r["note"] for r in records if r.get("note")}):
        print(f"note: {note}")
    if json_out:
        Path(json_out).write_text(json.dumps(records, indent=2))
    return records


WORKERS: dict[str, Callable[..., Any]] = {"vit": ovxai_vit_worker, "rise": ovxai_rise_worker}

if __name__ == "__main__":
    sys.exit(serve_worker(sys.argv[1:], WORKERS))
