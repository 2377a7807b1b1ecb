"""Throughput of ``explain-dataset``: images/s in-process and on a local Ray with 1 and 2 actors.

    python benchmarks/dataset_throughput.py --out benchmarks/results/dataset-throughput [--limit 1000]

Each configuration explains the same photos (``../shared/data/imagenet-sample/images``, sorted, the first
``--limit``) into a fresh output folder with :func:`engine.dataset.explain_dataset`; the time covers loading the
Engine(s) (each Ray actor loads its own) and writing the Parquet parts, not starting Ray (``ray.init`` runs before
the clock). Writes ``dataset_throughput.json`` and ``.csv`` in ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.dataset import explain_dataset, list_sources  # noqa: E402
from engine.fileio import atomic_write, atomic_write_text  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "imagenet-sample" / "images"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(DATA))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dataset-throughput"))
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--artifact", default="reciprocam-efficientnet_lite0-onnx")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--actors", default="1,2", help="Ray actor counts to run (comma-separated; empty: none)")
    args = ap.parse_args(argv)

    paths = list_sources(args.src)[: args.limit]
    common = {"artifact": args.artifact, "backend": args.backend, "batch_size": args.batch_size, "progress": False}
    results = []
    configs: list[tuple[str, dict]] = [("in-process", {})]
    configs += [(f"ray local, {n} actor(s)", {"ray": "local", "actors": int(n)}) for n in args.actors.split(",") if n]
    ray_started = False
    with tempfile.TemporaryDirectory(prefix="xai-dataset-bench-") as tmp:
        for name, extra in configs:
            if extra.get("ray") and not ray_started:
                import ray

                t0 = time.perf_counter()
                cpus = max(os.cpu_count() or 1, max(int(n) for n in args.actors.split(",")) + 1)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
                print(f"ray.init: {time.perf_counter() - t0:.1f} s ({cpus} logical CPUs)", file=sys.stderr)
                ray_started = True
            out = Path(tmp) / name.replace(" ", "_").replace(",", "")
            summary = explain_dataset(paths, out, **common, **extra)
            shutil.rmtree(out)
            row = {"config": name, **{k: summary[k] for k in ("explained", "errors", "seconds", "images_per_s")}}
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    meta = {
        "images": len(paths),
        "src": args.src,
        "artifact": args.artifact,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "note": "shared 2-core machine, loaded by other work while measured; in-process Engine uses all CPUs, "
        "each Ray actor 1 thread (cpus_per_actor=1); Ray start-up not timed",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    out_dir = Path(args.out)
    atomic_write(out_dir / "dataset_throughput.json", json.dumps({"meta": meta, "results": results}, indent=2))

    def write_csv(fh) -> None:
        w = csv.DictWriter(fh, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)

    atomic_write_text(out_dir / "dataset_throughput.csv", write_csv)
    print(f"| configuration ({len(paths)} photos, {args.backend}) | images/s | seconds | errors |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['config']} | {r['images_per_s']:.2f} | {r['seconds']:.1f} | {r['errors']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
