"""Precision in the graph: fp16 and int8 ``model.onnx`` against fp32, on ONNX Runtime CPU, on real photos.

    python benchmarks/precision_parity.py --out benchmarks/results/precision-parity

Subjects (``--models``):

* ``vit_b16``: ViT-ReciproCAM on timm ``vit_base_patch16_224`` with seeded random weights made a fair subject by
  :func:`engine.testing.perturb_for_tests` (perturbed LayerNorms, re-randomised head, last block's attention
  projection scaled up); there are no ViT weights on this machine, so its classes mean nothing and only the
  agreement with its own fp32 graph is measured.
* ``lite0``: the built-in ReciproCAM on EfficientNet-Lite0 with its real ImageNet weights.

Each is exported three times with ``engine.export.export_artifact`` (the ``xai-engine export --format onnx
--precision ...`` path): fp32, fp16 and int8. The photos of ``--data`` (``imagenet-sample``, 1,000 photos) are
shuffled with ``--seed``: the first ``--n`` (200) are the evaluation photos; int8 calibrates on ``--calib-count``
(64) photos drawn from the others, so no evaluation photo is ever seen by calibration. Both lists are saved.

Per model and precision, over the evaluation photos, against the same model's fp32 graph on ONNX Runtime:
top-1 agreement, Pearson r of the low-resolution saliency maps (the graph's own 14x14 / 7x7 output, before
upsampling, which would inflate r) as mean / min / 5th percentile, also over the photos whose top-1 did not change,
and with the converted graph made to explain fp32's class (``target``) where it did (a changed top-1 means the
default map explains another class), fp32's top-1 - top-2 probability margin (median, all photos and changed
ones), the logits' relative error, and the median ms per image (1 x 3 x 224 x 224, same run; ORT on a CPU has
few float16 kernels and runs most fp16 ops through casts, so these times say nothing of a GPU; on a shared machine
compare only times measured in one quiet run). ``--openvino`` also runs the fp16 / int8 graphs on OpenVINO (``f32``
hint).

Writes ``precision_parity.json`` (everything, with per-photo values and the photo lists) and
``precision_parity.csv`` (the table) to ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.artifact import WEIGHTS, load_artifact, write_artifact  # noqa: E402
from engine.backends import get_backend_class  # noqa: E402
from engine.errors import RandomWeightsWarning  # noqa: E402
from engine.fileio import atomic_write, atomic_write_text  # noqa: E402
from engine.preprocess import Preprocessor, list_image_files, load_image  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "imagenet-sample"
MODELS = ("vit_b16", "lite0")
PRECISIONS = ("fp16", "int8")
TARGETS = {"top1": 0.99, "fp16": 0.99, "int8": 0.95}  # top-1 agreement; mean Pearson r of the maps
COLUMNS = (
    "model",
    "precision",
    "runtime",
    "photos",
    "top1_agreement",
    "top1_changed",
    "pearson_mean",
    "pearson_min",
    "pearson_p05",
    "pearson_mean_same_top1",
    "pearson_min_same_top1",
    "pearson_fixed_target_mean",
    "pearson_fixed_target_min",
    "fp32_margin_median",
    "fp32_margin_median_changed",
    "logits_rel_err",
    "ms_per_image",
    "fp32_ms_per_image",
    "top1_target_met",
    "pearson_target_met",
    "graph",
)


def log(msg: str) -> None:
    print(f"[precision-parity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def split_photos(data: Path, n: int, calib_count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(evaluation photos, calibration photos): disjoint, both drawn with ``seed`` from the sorted photo list."""
    files = list_image_files(data, recursive=True)
    if len(files) <= n:
        raise SystemExit(f"{data} holds {len(files)} photos; --n {n} leaves none to calibrate on.")
    order = np.random.default_rng(seed).permutation(len(files))
    evaluation = [files[i] for i in order[:n]]
    pool = [files[i] for i in order[n:]]
    pick = np.random.default_rng(seed + 1).choice(len(pool), size=min(calib_count, len(pool)), replace=False)
    return evaluation, [pool[i] for i in sorted(pick)]


def source_artifact(model: str, work: Path):
    """The fp32 source artifact of a subject (made once under ``work``)."""
    if model == "lite0":
        return load_artifact("reciprocam-efficientnet_lite0")
    folder = work / "vit_b16-random"
    if (folder / "manifest.json").is_file():
        return load_artifact(folder)
    from engine.create import create_artifact
    from engine.graph import graph_from_artifact, save_graph
    from engine.testing import perturb_for_tests

    raw = create_artifact("vit-reciprocam", "timm/vit_base_patch16_224", work / "vit_b16-raw", source="random")
    graph = graph_from_artifact(raw)
    perturb_for_tests(graph.backbone, seed=1)
    weights = work / "vit_b16-perturbed.safetensors"
    save_graph(graph, weights)
    return write_artifact(raw.manifest, folder, {WEIGHTS: weights})


def exported(model: str, precision: str, work: Path, calib: list[Path], seed: int):
    """The subject's artifact exported at ``precision`` (reused when already there)."""
    from engine.export import export_artifact

    folder = work / f"{model}-{precision}"
    if (folder / "manifest.json").is_file():
        art = load_artifact(folder)
        if art.precision == precision:
            return art
    t0 = time.perf_counter()
    art = export_artifact(
        source_artifact(model, work),
        folder,
        ("onnx",),
        precision=precision,
        calib=list(calib) if precision == "int8" else None,
        calib_count=len(calib),
        seed=seed,
    )
    log(f"{model}: exported {precision} in {time.perf_counter() - t0:.0f} s")
    return art


def graph_summary(path: Path, fp32_path: Path, precision: str) -> dict:
    """What a converted graph keeps in float32.

    fp16: the compute nodes with a float32 output by op type, the saliency tail counted apart, and the shape
    arithmetic (float math on tensor sizes, e.g. TF "same" padding) left out. int8: the Conv / MatMul / Gemm nodes
    that got Q/DQ inputs and those left in float32.
    """
    import onnx

    from engine import precision as prec

    model = onnx.load(str(path))
    source = onnx.load(str(fp32_path))
    if precision == "fp16":
        shape, tail = set(prec.shape_nodes(source)), set(prec.saliency_tail_nodes(source))
        ops: dict[str, int] = {}
        tail_count = 0
        float_outputs = set(prec.float_ops_names(model))
        for node in model.graph.node:
            if node.name not in float_outputs or node.name in shape or node.op_type in ("Constant", "Identity", "Cast"):
                continue
            if node.name in tail:
                tail_count += 1
            else:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return {"fp32": dict(sorted(ops.items())), "saliency_tail_fp32": tail_count}
    producer = {o: n for n in model.graph.node for o in n.output}
    counts: dict[str, dict[str, int]] = {"int8": {}, "fp32": {}}
    for node in model.graph.node:
        if node.op_type not in prec.INT8_OPS:
            continue
        dq = any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input)
        key = "int8" if dq else "fp32"
        counts[key][node.op_type] = counts[key].get(node.op_type, 0) + 1
    return counts


def describe(summary: dict, precision: str) -> str:
    if precision == "fp16":
        kept = ", ".join(f"{k} x{v}" for k, v in summary["fp32"].items()) or "no other node"
        return f"fp32: {kept}; saliency tail ({summary['saliency_tail_fp32']} nodes)"
    low = ", ".join(f"{k} x{v}" for k, v in summary["int8"].items())
    high = ", ".join(f"{k} x{v}" for k, v in summary["fp32"].items())
    return f"int8: {low}; fp32: {high}"


def run(backend, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[float]]:
    logits, maps, times = [], [], []
    target = np.array([-1], dtype=np.int64)
    for x in batch:
        t0 = time.perf_counter()
        lo, sal = backend.infer(x, target)
        times.append((time.perf_counter() - t0) * 1e3)
        logits.append(lo[0])
        maps.append(sal[0])
    return np.stack(logits), np.stack(maps), times


def compare(ref: tuple, got: tuple, fixed: dict[int, np.ndarray]) -> dict:
    """Agreement of ``got`` with ``ref`` (fp32). ``fixed``: photo index -> the converted graph's map of the fp32
    top-1 class, for the photos whose top-1 changed (elsewhere the two maps explain the same class already)."""
    (l0, s0, t0), (l1, s1, t1) = ref, got
    same = l0.argmax(1) == l1.argmax(1)
    r = np.array([pearson(a, b) for a, b in zip(s0, s1, strict=True)])
    r_fixed = r.copy()
    for i, sal in fixed.items():
        r_fixed[i] = pearson(s0[i], sal)
    rel = np.linalg.norm(l1 - l0, axis=1) / np.maximum(np.linalg.norm(l0, axis=1), 1e-12)
    p0 = np.sort(softmax(l0), axis=1)
    margin = p0[:, -1] - p0[:, -2]  # fp32's top-1 minus top-2 probability
    return {
        "top1_agreement": float(same.mean()),
        "top1_changed": int((~same).sum()),
        "pearson_mean": float(np.nanmean(r)),
        "pearson_min": float(np.nanmin(r)),
        "pearson_p05": float(np.nanpercentile(r, 5)),
        "pearson_mean_same_top1": float(np.nanmean(r[same])) if same.any() else float("nan"),
        "pearson_min_same_top1": float(np.nanmin(r[same])) if same.any() else float("nan"),
        "pearson_fixed_target_mean": float(np.nanmean(r_fixed)),
        "pearson_fixed_target_min": float(np.nanmin(r_fixed)),
        "fp32_margin_median": float(np.median(margin)),
        "fp32_margin_median_changed": float(np.median(margin[~same])) if (~same).any() else float("nan"),
        "logits_rel_err": float(rel.mean()),
        "ms_per_image": float(np.median(t1)),
        "fp32_ms_per_image": float(np.median(t0)),
        "per_photo": {
            "same_top1": same.tolist(),
            "pearson": r.tolist(),
            "pearson_fixed_target": r_fixed.tolist(),
            "fp32_margin": margin.tolist(),
            "logits_rel_err": rel.tolist(),
        },
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float(np.nan)
    return float(np.corrcoef(a, b)[0, 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="folder of photos (searched recursively)")
    p.add_argument("--n", type=int, default=200, help="evaluation photos")
    p.add_argument("--calib-count", type=int, default=64, help="int8 calibration photos (never evaluation photos)")
    p.add_argument("--seed", type=int, default=0, help="shuffles the photos (evaluation / calibration split)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: fp16, int8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--openvino", action="store_true", help="also run the converted graphs on OpenVINO (f32 hint)")
    p.add_argument("--work", type=Path, default=Path("/tmp/xai-precision-parity"), help="exported artifacts")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision-parity")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=RandomWeightsWarning)  # the ViT's random weights are the point
    models = [m for m in args.models.split(",") if m]
    precisions = [q for q in args.precisions.split(",") if q]
    if set(models) - set(MODELS) or set(precisions) - set(PRECISIONS):
        raise SystemExit(f"--models from {MODELS}, --precisions from {PRECISIONS}")
    args.work.mkdir(parents=True, exist_ok=True)
    evaluation, calib = split_photos(args.data, args.n, args.calib_count, args.seed)
    log(f"{len(evaluation)} evaluation photos, {len(calib)} calibration photos (disjoint) from {args.data}")
    ort = get_backend_class("onnxruntime")
    started = time.perf_counter()
    rows, details = [], {}
    for model in models:
        base = exported(model, "fp32", args.work, calib, args.seed)
        pre = Preprocessor(base.preprocess)
        batch = [pre([load_image(f)])[0] for f in evaluation]
        t0 = time.perf_counter()
        ref = run(ort(base, precision="fp32", threads=args.threads), batch)
        log(f"{model}: fp32 on ORT, {time.perf_counter() - t0:.0f} s")
        for precision in precisions:
            art = exported(model, precision, args.work, calib, args.seed)
            summary = graph_summary(art.file("model.onnx"), base.file("model.onnx"), precision)
            runtimes = [("onnxruntime", lambda a=art, q=precision: ort(a, precision=q, threads=args.threads))]
            if args.openvino:
                ov = get_backend_class("openvino")
                runtimes.append(
                    ("openvino", lambda a=art, ov=ov: ov(a.file("model.onnx"), precision="fp32", threads=args.threads))
                )
            for runtime, open_backend in runtimes:
                t0 = time.perf_counter()
                backend = open_backend()
                got = run(backend, batch)
                changed = np.flatnonzero(ref[0].argmax(1) != got[0].argmax(1))
                fixed = {int(i): backend.infer(batch[i], ref[0][i : i + 1].argmax(1))[1][0] for i in changed}
                result = compare(ref, got, fixed)
                log(f"{model} {precision} on {runtime}: {time.perf_counter() - t0:.0f} s")
                row = {
                    "model": model,
                    "precision": precision,
                    "runtime": runtime,
                    "photos": len(batch),
                    **{k: v for k, v in result.items() if k != "per_photo"},
                    "top1_target_met": result["top1_agreement"] >= TARGETS["top1"],
                    "pearson_target_met": result["pearson_mean"] >= TARGETS[precision],
                    "graph": describe(summary, precision),
                }
                rows.append(row)
                details[f"{model}/{precision}/{runtime}"] = {
                    **row,
                    "graph_nodes": summary,
                    "manifest_precision": art.precision,
                    "precision_details": art.manifest.get("precision_details"),
                    "per_photo": result["per_photo"],
                }
    elapsed = time.perf_counter() - started
    report = {
        "what": "fp16 / int8 model.onnx vs the same model's fp32 graph, ONNX Runtime CPU, low-resolution maps",
        "targets": {"top1_agreement": TARGETS["top1"], "pearson_mean": {"fp16": TARGETS["fp16"], "int8": 0.95}},
        "data": str(args.data),
        "seed": args.seed,
        "threads": args.threads,
        "evaluation_photos": [f.name for f in evaluation],
        "calibration_photos": [f.name for f in calib],
        "seconds": round(elapsed, 1),
        "versions": versions(),
        "rows": rows,
        "details": details,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "precision_parity.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(args.out / "precision_parity.csv", lambda fh: write_csv(fh, rows))
    print(table(rows))
    log(f"done in {elapsed / 60:.1f} min; wrote {args.out}")
    return 0


def write_csv(fh: io.TextIOBase, rows: list[dict]) -> None:
    writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items() if k in COLUMNS})


def table(rows: list[dict]) -> str:
    lines = [
        "| model | precision | runtime | top-1 agreement | map r mean / min | r, same top-1: mean / min "
        "| r, fp32's class: mean / min | ms (fp32 ms) | kept / quantised |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok_top = "met" if r["top1_target_met"] else "NOT met"
        ok_r = "met" if r["pearson_target_met"] else "NOT met"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['runtime']} | {100 * r['top1_agreement']:.1f} % ({ok_top}) | "
            f"{r['pearson_mean']:.4f} / {r['pearson_min']:.4f} ({ok_r}) | "
            f"{r['pearson_mean_same_top1']:.4f} / {r['pearson_min_same_top1']:.4f} | "
            f"{r['pearson_fixed_target_mean']:.4f} / {r['pearson_fixed_target_min']:.4f} | "
            f"{r['ms_per_image']:.0f} ({r['fp32_ms_per_image']:.0f}) | {r['graph']} |"
        )
    return "\n".join(lines)


def versions() -> dict:
    from engine.artifact import installed_version

    names = ("torch", "timm", "onnx", "onnxruntime", "onnxconverter-common", "openvino")
    return {n: installed_version(n) for n in names}


if __name__ == "__main__":
    sys.exit(main())
