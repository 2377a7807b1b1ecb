"""Peer implementations for the latency benchmark, run in their own virtualenv.

The peer is openvino-xai's ViT-ReciproCAM. openvino-xai 1.1.0 pins ``openvino-dev==2024.4`` and ``numpy==1.*``,
which clash with the main environment (OpenVINO 2026.x, NumPy 2.x), so it lives in a separate virtualenv
(``.venv-peers`` by default) and is driven through a subprocess that exchanges a JSON file.

Usage::

    python benchmarks/peers.py setup                      # create .venv-peers and install the pinned peer set
    python benchmarks/peers.py ovxai-vit --onnx vit.onnx --precision f32 --batch 1 --repeats 10 --json out.json
    python benchmarks/peers.py selftest                   # random-weight timm ViT-B/16 -> ONNX -> ovxai-vit
    python benchmarks/peers.py ovxai-rise --onnx cls.onnx --inputs in.npz --out out.npz --num-masks 2000

From the main benchmark::

    from benchmarks.peers import peer_available, run_ovxai_vit

    if peer_available(".venv-peers"):
        records = run_ovxai_vit("vit.onnx", "f32", 1, 10, 2, 2, ".venv-peers")
        saliency, meta = run_ovxai_rise("cls.onnx", images, targets, num_masks=2000)  # quality baseline

``ovxai-rise`` is the second peer: openvino-xai's black-box RISE, used as a saliency-map baseline (not timed against
the engine); ``IN.npz`` holds already-normalised ``images`` (N,3,224,224) float32 and ``targets`` (N,) int64.

Only the standard library is imported at module level: the same file runs under the main interpreter (which has no
openvino-xai) and under the peer venv's interpreter (which has no torch).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO_ROOT / ".venv-peers"
SCRIPT = Path(__file__).resolve()
REEXEC_ENV = "XAI_ENGINE_PEERS_REEXEC"
METHOD = "vit-reciprocam"
BACKEND = "openvino"
PRECISIONS = ("f32", "bf16")

# The peer set that installs and works with Python 3.11 (checked with pip's resolver against the reachable index).
# openvino-xai itself is installed with --no-deps: its metadata asks for opencv-python (the GUI build, which drags in
# X11 libraries); opencv-python-headless provides the same ``cv2`` module. ``pip check`` therefore reports
# "openvino-xai 1.1.0 requires opencv-python, which is not installed", which is expected and harmless.
# openvino-dev is only the pinned metadata dependency (model-optimizer tools); openvino-xai imports ``openvino``.
# No torch (openvino-xai only imports it if present) and no onnx (OpenVINO reads .onnx files natively).
PEER_DEPENDENCIES: tuple[str, ...] = (
    "openvino==2024.4.0",
    "openvino-dev==2024.4.0",
    "numpy==1.26.4",
    "opencv-python-headless==4.10.0.84",
    "scipy==1.14.1",
    "matplotlib==3.9.2",
    "tqdm==4.67.1",
)
PEER_PACKAGE = "openvino-xai==1.1.0"


class PeerError(RuntimeError):
    """Raised when the peer venv is missing or the peer run fails; the message names the fix."""


# --------------------------------------------------------------------------------------------------------------------
# Helpers shared by both interpreters
# --------------------------------------------------------------------------------------------------------------------


def venv_python(venv: str | os.PathLike[str]) -> Path:
    """Return the path of the interpreter inside ``venv``.

    Args:
        venv: The virtualenv directory; a relative path is taken relative to the repository root.

    Returns:
        ``<venv>/bin/python`` (``Scripts/python.exe`` on Windows); it may not exist.
    """
    root = _venv_dir(venv)
    if os.name == "nt":
        return root / "Scripts" / "python.exe"
    return root / "bin" / "python"


def _venv_dir(venv: str | os.PathLike[str]) -> Path:
    path = Path(venv).expanduser()
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path.absolute()


def _setup_hint(venv: str | os.PathLike[str]) -> str:
    """Return the command that creates ``venv``, for error messages."""
    root = _venv_dir(venv)
    suffix = "" if root == DEFAULT_VENV.absolute() else f" --venv {root}"
    return f"python benchmarks/peers.py setup{suffix}"


def _inside_venv(venv: str | os.PathLike[str]) -> bool:
    """Tell whether the running interpreter is the one of ``venv``."""
    try:
        return Path(sys.prefix).resolve() == _venv_dir(venv).resolve()
    except OSError:
        return False


def _child_env() -> dict[str, str]:
    """Environment for the peer interpreter: the main env's PYTHONPATH/PYTHONHOME must not leak NumPy 2 into it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile of ``values`` with linear interpolation (NumPy's default method).

    Args:
        values: The samples; must not be empty.
        q: The percentile, in [0, 100].

    Returns:
        The interpolated percentile.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def peer_available(venv: str | os.PathLike[str] = DEFAULT_VENV) -> bool:
    """Tell whether the peer venv exists and its interpreter can import openvino-xai.

    Args:
        venv: The peer virtualenv directory.

    Returns:
        True when ``<venv>/bin/python -c "import openvino_xai"`` succeeds.
    """
    python = venv_python(venv)
    if not python.exists():
        return False
    try:
        proc = subprocess.run(
            [str(python), "-c", "import openvino, openvino_xai"],
            env=_child_env(),
            capture_output=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _main_openvino_version() -> str | None:
    """Return the openvino version of the running (main) interpreter, without importing openvino."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------------------------
# setup
# --------------------------------------------------------------------------------------------------------------------


def setup_venv(venv: str | os.PathLike[str] = DEFAULT_VENV, force: bool = False) -> Path:
    """Create the peer virtualenv and install the pinned openvino-xai set into it.

    Idempotent: when the venv already imports openvino_xai nothing is installed (unless ``force``).

    Args:
        venv: The virtualenv directory to create or reuse.
        force: Reinstall the pinned packages even if the venv already works.

    Returns:
        The venv's interpreter path.

    Raises:
        PeerError: When the interpreter is not Python 3.10-3.12 (no OpenVINO 2024.4 wheels) or pip fails.
    """
    root = _venv_dir(venv)
    python = venv_python(root)
    if not force and peer_available(root):
        print(f"[peers] {root} already imports openvino_xai; nothing to do (use --force to reinstall)", flush=True)
        _print_versions(python)
        return python
    if not (3, 10) <= sys.version_info[:2] <= (3, 12):
        raise PeerError(
            f"openvino 2024.4 has wheels for CPython 3.8-3.12 only, this is {sys.version.split()[0]}: "
            "run the setup with a Python 3.10-3.12 interpreter"
        )
    if not python.exists():
        print(f"[peers] creating venv {root} with {sys.executable}", flush=True)
        _run([sys.executable, "-m", "venv", str(root)], "python -m venv")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    print(f"[peers] installing {' '.join(PEER_DEPENDENCIES)}", flush=True)
    _run([*pip, *PEER_DEPENDENCIES], "pip install of the openvino-xai dependencies")
    print(f"[peers] installing {PEER_PACKAGE} (--no-deps: opencv-python-headless replaces opencv-python)", flush=True)
    _run([*pip, "--no-deps", PEER_PACKAGE], f"pip install {PEER_PACKAGE}")
    if not peer_available(root):
        raise PeerError(
            f"{root} still cannot import openvino_xai after installation; delete it and rerun {_setup_hint(root)}"
        )
    _print_versions(python)
    freeze = subprocess.run(
        [str(python), "-m", "pip", "freeze"], env=_child_env(), capture_output=True, text=True, check=False
    )
    (root / "peers-freeze.txt").write_text(freeze.stdout)
    print(f"[peers] ready; installed set written to {root / 'peers-freeze.txt'}", flush=True)
    return python


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, env=_child_env(), check=False)
    if proc.returncode != 0:
        raise PeerError(f"{what} failed (exit {proc.returncode}); see pip's output above. Command: {' '.join(cmd)}")


def _print_versions(python: Path) -> None:
    code = (
        "import importlib.metadata as m, sys\n"
        "for d in ('openvino', 'openvino-dev', 'openvino-xai', 'numpy', 'opencv-python-headless'):\n"
        "    try: print(f'[peers]   {d}=={m.version(d)}')\n"
        "    except m.PackageNotFoundError: print(f'[peers]   {d}: not installed')\n"
        "print(f'[peers]   python {sys.version.split()[0]}')\n"
    )
    subprocess.run([str(python), "-c", code], env=_child_env(), check=False)


# --------------------------------------------------------------------------------------------------------------------
# ovxai-vit: driver side (main interpreter)
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
        venv: The peer virtualenv (see :func:`setup_venv`).
        model_name: Value of the ``model`` key; defaults to the ONNX file's stem.
        target_layer: Friendly name of the residual Add before the last block; default: automatic detection.
        all_targets: Also time the default ``explainer(x)`` call, which post-processes the maps of all classes.
        timeout: Seconds before the subprocess is killed; None waits forever.
        verbose: Stream the peer's progress (stderr) to this process's stderr instead of capturing it.

    Returns:
        The JSON records written by the peer (see :func:`ovxai_vit_worker`), each with ``main_openvino_version``
        (the main interpreter's openvino) added.

    Raises:
        PeerError: When the venv is missing (the message says to run ``python benchmarks/peers.py setup``) or the
            peer run fails (the message carries the end of its output).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _check_onnx(onnx_path)
    python = venv_python(venv)
    if not python.exists():
        raise PeerError(f"openvino-xai venv missing at {_venv_dir(venv)}: run {_setup_hint(venv)}")
    with tempfile.TemporaryDirectory(prefix="ovxai-") as tmp:
        out = Path(tmp) / "records.json"
        cmd = [
            str(python),
            str(SCRIPT),
            "ovxai-vit",
            "--onnx",
            str(Path(onnx_path).absolute()),
            "--precision",
            precision,
            "--batch",
            str(batch),
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
            "--threads",
            str(threads),
            "--json",
            str(out),
            "--venv",
            str(_venv_dir(venv)),
        ]
        if model_name:
            cmd += ["--model-name", model_name]
        if target_layer:
            cmd += ["--target-layer", target_layer]
        if all_targets:
            cmd.append("--all-targets")
        _run_worker(cmd, out, timeout=timeout, verbose=verbose, what="openvino-xai run", knob="repeats")
        records: list[dict[str, Any]] = json.loads(out.read_text())
    main_version = _main_openvino_version()
    for record in records:
        record["main_openvino_version"] = main_version
    return records


def _run_worker(cmd: list[str], out: Path, *, timeout: float | None, verbose: bool, what: str, knob: str) -> None:
    """Run a peer-venv worker command that writes ``out``; PeerError with the output's tail if it fails."""
    env = _child_env()
    env[REEXEC_ENV] = "1"
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{what} timed out after {timeout} s; raise timeout= or lower {knob}") from exc
    if proc.returncode != 0 or not out.exists():
        tail = ((proc.stdout or "") + (proc.stderr or "see the peer's output above"))[-4000:]
        raise PeerError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _check_onnx(onnx_path: str | os.PathLike[str]) -> None:
    if not Path(onnx_path).is_file():
        raise PeerError(
            f"ONNX model not found: {onnx_path}; export one (input 'image', output 'logits'), e.g. with "
            "python benchmarks/peers.py selftest --keep-onnx PATH"
        )


# --------------------------------------------------------------------------------------------------------------------
# ovxai-vit: worker side (peer venv interpreter)
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
) -> list[dict[str, Any]]:
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
        Records for ``openvino-xai-classify`` (plain inference), ``openvino-xai`` (the whole ``explainer(...)`` call,
        one target class, default post-processing: resize to the input size + colormap), ``openvino-xai-infer`` (the
        compiled XAI model's inference alone) and, with ``all_targets``, ``openvino-xai-all-targets``.
    """
    from importlib import metadata

    import numpy as np
    import openvino as ov
    import openvino_xai as xai
    from openvino_xai.explainer import ExplainMode

    logging.getLogger("openvino_xai").setLevel(logging.WARNING)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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
    t_cls, t_exp, t_inf, t_all = times["classify"], times["explain"], times["infer"], times.get("all-targets")

    explanation = explainer(x, targets=[target])
    sal = xai_compiled(x)["saliency_map"]
    cls_median = statistics.median(t_cls)
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

    def record(impl: str, times: list[float], effective_precision: str, **extra: Any) -> dict[str, Any]:
        median = statistics.median(times)
        rec = {
            **common,
            "impl": impl,
            "median_ms": round(median, 3),
            "p95_ms": round(percentile(times, 95), 3),
            "ratio_to_classify": round(median / cls_median, 3),
            "effective_precision": effective_precision,
            **extra,
        }
        if note:
            rec["note"] = note
        return rec

    xai_extra = {
        "target_layer": target_layer,
        "target_layer_source": layer_source,
        "compile_s": round(xai_compile_s, 2),
        "saliency_map_shape": list(sal.shape),
    }
    records = [
        record("openvino-xai-classify", t_cls, effective, compile_s=round(cls_compile_s, 2)),
        record(
            "openvino-xai",
            t_exp,
            effective_xai,
            call="explainer(x, targets=[top1]) (resize to input + colormap)",
            explanation_shape=list(explanation.shape),
            **xai_extra,
        ),
        record("openvino-xai-infer", t_inf, effective_xai, call="compiled_xai_model(x)", **xai_extra),
    ]
    if t_all is not None:
        records.append(
            record(
                "openvino-xai-all-targets",
                t_all,
                effective_xai,
                call="explainer(x) (targets=-1: all classes resized + colormapped)",
                **xai_extra,
            )
        )
    return records


# --------------------------------------------------------------------------------------------------------------------
# ovxai-rise: driver side (main interpreter)
# --------------------------------------------------------------------------------------------------------------------

RISE_METHOD = "rise"
RISE_NORMALISATION = "sum_i softmax(model(x * M_i))[target] * M_i / (num_masks * prob)"


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

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    images = np.ascontiguousarray(images, dtype=np.float32)
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N,3,H,W), got {images.shape}")
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"need one target per image: {targets.shape[0]} targets for {images.shape[0]} images")
    _check_onnx(onnx_path)
    python = venv_python(venv)
    if not python.exists():
        raise PeerError(f"openvino-xai venv missing at {_venv_dir(venv)}: run {_setup_hint(venv)}")
    with tempfile.TemporaryDirectory(prefix="ovxai-rise-") as tmp:
        inputs, out = Path(tmp) / "inputs.npz", Path(tmp) / "saliency.npz"
        np.savez(inputs, images=images, targets=targets)
        cmd = [
            str(python),
            str(SCRIPT),
            "ovxai-rise",
            "--onnx",
            str(Path(onnx_path).absolute()),
            "--inputs",
            str(inputs),
            "--out",
            str(out),
            "--num-masks",
            str(num_masks),
            "--prob",
            repr(float(prob)),
            "--num-cells",
            str(num_cells),
            "--seed",
            str(seed),
            "--threads",
            str(threads or os.cpu_count() or 1),
            "--precision",
            precision,
            "--venv",
            str(_venv_dir(venv)),
        ]
        _run_worker(cmd, out, timeout=timeout, verbose=verbose, what="openvino-xai RISE", knob="num_masks")
        with np.load(out, allow_pickle=False) as data:
            saliency = data["saliency"].astype(np.float32, copy=False)
            meta: dict[str, Any] = json.loads(str(data["meta"]))
    meta["main_openvino_version"] = _main_openvino_version()
    return saliency, meta


# --------------------------------------------------------------------------------------------------------------------
# ovxai-rise: worker side (peer venv interpreter)
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
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


def export_random_vit(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Export timm's ``vit_base_patch16_224`` with random weights and perturbed LayerNorms to ONNX (main env).

    The LayerNorm weights/biases are perturbed (``1 + 0.1 * randn`` / ``0.1 * randn``). openvino-xai walks from the
    residual Add through the LayerNorm (MVN -> Multiply -> Add) and stops at the first Add, the LayerNorm's bias.
    With identity LayerNorms, ``ov.convert_model`` folds the Multiply/Add away and the walk runs into the attention
    ("Number of normalization inputs > 1!"). ``ov.Core().read_model`` (used by ``ovxai-vit``) keeps them either way.

    Args:
        path: Destination ``.onnx`` file (written as a single file).
        seed: Seed for the weights.

    Returns:
        The written path.
    """
    sys.path.insert(0, str(REPO_ROOT))
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
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


def format_table(records: list[dict[str, Any]]) -> str:
    """Render records as a fixed-width text table."""
    cols = ("model", "impl", "precision", "batch", "median_ms", "p95_ms", "ratio_to_classify", "effective_precision")
    rows = [[str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


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
        raise PeerError(f"openvino-xai venv missing or broken at {_venv_dir(venv)}: run {_setup_hint(venv)}")
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
    print(format_table(records))
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


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peers.py",
        description="Run peer XAI implementations (openvino-xai) in their own virtualenv for the latency benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="create the peer venv and install openvino-xai 1.1.0 with its pinned set")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="venv directory (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="reinstall even if the venv already imports openvino_xai")

    p = sub.add_parser("ovxai-vit", help="time openvino-xai ViT-ReciproCAM vs plain classification on an ONNX model")
    p.add_argument("--onnx", required=True, help="ONNX classifier: input 'image' (B,3,224,224), output 'logits'")
    p.add_argument("--precision", choices=PRECISIONS, default="f32", help="INFERENCE_PRECISION_HINT")
    p.add_argument("--batch", type=int, default=1, help="batch (openvino-xai white-box supports 1; see 'note')")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="INFERENCE_NUM_THREADS")
    p.add_argument("--json", required=True, help="write the records to this JSON file")
    p.add_argument("--model-name", default=None, help="the 'model' key (default: the ONNX file's stem)")
    p.add_argument("--target-layer", default=None, help="friendly name of the residual Add before the last block")
    p.add_argument("--all-targets", action="store_true", help="also time explainer(x) for all classes")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="peer venv directory (default: %(default)s)")

    p = sub.add_parser("ovxai-rise", help="openvino-xai black-box RISE saliency maps (quality baseline)")
    p.add_argument("--onnx", required=True, help="ONNX classifier: input 'image' (B,3,224,224), output 'logits'")
    p.add_argument("--inputs", required=True, help=".npz: images (N,3,224,224) float32 normalised, targets (N,) int")
    p.add_argument("--out", required=True, help=".npz to write: saliency (N,H,W) float32, meta (JSON string)")
    p.add_argument("--num-masks", type=int, default=2000, help="random masks per image (default: %(default)s)")
    p.add_argument("--prob", type=float, default=0.5, help="probability a mask cell is kept (default: %(default)s)")
    p.add_argument(
        "--num-cells", type=int, default=8, help="mask grid cells per side, openvino-xai's num_cells (default: 8)"
    )
    p.add_argument("--seed", type=int, default=0, help="mask seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="INFERENCE_NUM_THREADS")
    p.add_argument("--precision", choices=PRECISIONS, default="f32", help="INFERENCE_PRECISION_HINT")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="peer venv directory (default: %(default)s)")

    p = sub.add_parser("selftest", help="export a random-weight timm ViT-B/16 and run ovxai-vit on it")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="peer venv directory (default: %(default)s)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="default: the CPU count")
    p.add_argument("--keep-onnx", default=None, help="write the ONNX model here and keep it")
    p.add_argument("--json", default=None, help="also write the records to this JSON file")
    return parser


def _reexec_in_venv(venv: str, argv: Sequence[str]) -> None:
    """Replace this process by the same command under the peer venv's interpreter."""
    python = venv_python(venv)
    if not python.exists():
        raise PeerError(f"openvino-xai venv missing at {_venv_dir(venv)}: run {_setup_hint(venv)}")
    if os.environ.get(REEXEC_ENV):
        raise PeerError(
            f"re-executed with {python} but sys.prefix is {sys.prefix}; the venv looks broken: delete it and run "
            f"{_setup_hint(venv)}"
        )
    env = _child_env()
    env[REEXEC_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(str(python), [str(python), str(SCRIPT), *argv], env)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "setup":
            setup_venv(args.venv, force=args.force)
        elif args.command == "ovxai-vit":
            _check_onnx(args.onnx)
            if not _inside_venv(args.venv):
                _reexec_in_venv(args.venv, argv)
            records = ovxai_vit_worker(
                args.onnx,
                args.precision,
                args.batch,
                args.repeats,
                args.warmup,
                args.threads,
                model_name=args.model_name,
                target_layer=args.target_layer,
                all_targets=args.all_targets,
            )
            Path(args.json).write_text(json.dumps(records, indent=2))
            print(format_table(records))
        elif args.command == "ovxai-rise":
            _check_onnx(args.onnx)
            if not Path(args.inputs).is_file():
                raise PeerError(f"inputs not found: {args.inputs}; write an .npz with 'images' and 'targets'")
            if not _inside_venv(args.venv):
                _reexec_in_venv(args.venv, argv)
            meta = ovxai_rise_worker(
                args.onnx,
                args.inputs,
                args.out,
                num_masks=args.num_masks,
                prob=args.prob,
                num_cells=args.num_cells,
                seed=args.seed,
                threads=args.threads,
                precision=args.precision,
            )
            print(json.dumps(meta))
        elif args.command == "selftest":
            precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
            selftest(
                args.venv,
                precisions,
                args.batch,
                args.repeats,
                args.warmup,
                args.threads,
                args.keep_onnx,
                args.json,
            )
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
