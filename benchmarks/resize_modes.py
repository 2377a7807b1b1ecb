"""Whole photo or centre crop: top-1 accuracy and explanation quality of each ``resize_mode``.

    python benchmarks/resize_modes.py --out benchmarks/results/resize-modes

For each built-in artifact and each mode (``crop``: the classifier's evaluation transform, which shows the network
only the centre; ``letterbox`` and ``squash``: the whole photo):

* top-1 accuracy against the labels of every photo of ``imagenet-sample`` (1,000) and of the 200 held-out photos
  (``heldout.json`` of the T-TAME artifact; 95 % bootstrap intervals);
* on those 200 held-out photos, AD/IC at 100/50/15 % (``tame`` preset) and insertion/deletion/ID (``ovxai``
  preset), run by ``benchmarks/quality.py --resize-mode MODE`` (resumable: its maps and partial results are cached
  under ``--out/quality-<mode>``). The metrics perturb the network input of each mode, so a letterboxed photo is
  perturbed whole (its padding too: it is part of the input the map explains).

Writes ``resize_modes.csv`` and ``resize_modes.json`` in ``--out`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import quality  # noqa: E402

from engine import Engine  # noqa: E402
from engine.artifact import resolve_artifact_path  # noqa: E402
from engine.config import RESIZE_MODES  # noqa: E402
from engine.data import image_name, open_dataset  # noqa: E402
from engine.fileio import atomic_write, atomic_write_text  # noqa: E402
from engine.report import bootstrap_ci  # noqa: E402

ARTIFACTS = ("reciprocam-efficientnet_lite0", "tame-efficientnet_lite0")
HELDOUT = "tame-efficientnet_lite0"  # its heldout.json: the 200 photos T-TAME's training never saw
METRICS = "ad_ic:tame,id:ovxai"
COLUMNS = ("top1", "top1_heldout", "ad@100", "ic@100", "ad@50", "ic@50", "ad@15", "ic@15")
COLUMNS += ("insertion", "deletion", "id")


def log(msg: str) -> None:
    print(f"[resize-modes {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def top1(artifact: str, mode: str, samples: list, heldout: set[str], root: Path, batch_size: int) -> dict:
    """Top-1 of the artifact's classifier over ``samples`` when photos are fed in ``mode``."""
    from tqdm import tqdm

    engine = Engine.load(artifact, backend="torch", resize_mode=mode, batch_size=batch_size)
    correct = np.zeros(len(samples), dtype=np.float64)
    for start in tqdm(range(0, len(samples), batch_size), desc=f"top-1 {mode}", unit="batch", file=sys.stderr):
        chunk = samples[start : start + batch_size]
        for i, exp in enumerate(engine.explain_batch([s.path for s in chunk], keep_image=False)):
            correct[start + i] = float(exp.class_id == chunk[i].label)
    held = np.array([image_name(s.path, root) in heldout for s in samples])
    out = {}
    for key, values in (("top1", correct), ("top1_heldout", correct[held])):
        lo, hi = bootstrap_ci(values * 100.0)
        out[key] = {"value": float(values.mean() * 100.0), "ci95_low": lo, "ci95_high": hi, "n_images": len(values)}
    return out


def quality_rows(artifact: str, mode: str, out: Path, batch_size: int) -> dict:
    """AD/IC and insertion/deletion of ``artifact`` on the held-out photos in ``mode`` (via quality.py)."""
    folder = out / f"quality-{mode}"
    argv = ["--artifact", artifact, "--data", "imagenet-sample", "--images", HELDOUT, "--metrics", METRICS]
    argv += ["--resize-mode", mode, "--batch-size", str(batch_size), "--out", str(folder)]
    if quality.main(argv) != 0:
        raise SystemExit(f"quality.py failed for {artifact} in {mode} mode")
    method = json.loads((resolve_artifact_path(artifact) / "manifest.json").read_text())["explainer"]["method"]
    result = {}
    with open(folder / "quality.csv", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["method"] == method:
                result[r["metric"]] = {k: float(r[k]) for k in ("value", "ci95_low", "ci95_high")} | {
                    "n_images": int(r["n_images"])
                }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", action="append", default=None, help=f"default: {', '.join(ARTIFACTS)}")
    p.add_argument("--modes", default=",".join(RESIZE_MODES), help="modes for top-1")
    p.add_argument("--quality-modes", default="crop,letterbox", help="modes for the quality metrics")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = open_dataset("imagenet-sample")
    samples = [s for s in ds if s.label is not None]
    heldout = set(json.loads((resolve_artifact_path(HELDOUT) / "heldout.json").read_text()))
    log(f"{len(samples)} labelled photos, {len(heldout)} held out")

    records = []
    for artifact in args.artifact or ARTIFACTS:
        for mode in args.modes.split(","):
            rec = {"artifact": artifact, "resize_mode": mode}
            rec.update(top1(artifact, mode, samples, heldout, ds.root, args.batch_size))
            if mode in args.quality_modes.split(","):
                rec.update(quality_rows(artifact, mode, out, args.batch_size))
            records.append(rec)
            log(f"{artifact} {mode}: top-1 {rec['top1']['value']:.1f} %")

    rows = []
    for rec in records:
        for key in COLUMNS:
            if key in rec:
                rows.append({"artifact": rec["artifact"], "resize_mode": rec["resize_mode"], "metric": key} | rec[key])
    fields = ["artifact", "resize_mode", "metric", "value", "ci95_low", "ci95_high", "n_images"]

    def write(fh) -> None:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    atomic_write_text(out / "resize_modes.csv", write)
    atomic_write(out / "resize_modes.json", json.dumps(records, indent=1))
    header = "| artifact | mode | " + " | ".join(COLUMNS) + " |"
    print(header)
    print("|" + "---|" * (len(COLUMNS) + 2))
    for rec in records:
        cells = [f"{rec[k]['value']:.1f}" if k in rec else "–" for k in COLUMNS]
        print(f"| {rec['artifact']} | {rec['resize_mode']} | " + " | ".join(cells) + " |")
    log(f"wrote {out / 'resize_modes.csv'} and {out / 'resize_modes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
