"""Quality benchmark: every metric (with its presets) over a dataset, for engine artifacts and peer baselines.

    python benchmarks/quality.py --artifact default --baseline gradcam --baseline scorecam --baseline rise \
        --data imagenet-sample --limit 20 --metrics insertion:rise,deletion:rise,ad_ic:tame --out benchmarks/results/q

    python benchmarks/quality.py --artifact lrp_all --label lrp-all --artifact lrp_none --label lrp-none \
        --baseline gradcam --baseline captum_lrp --data imagenet-sample --images tame-efficientnet_lite0 \
        --metrics id:keio:quantize_levels=8 --out benchmarks/results/q

Writes ``quality.csv`` (one row per dataset, model, method, metric, preset and metric options), ``quality.png`` (bar
chart with the 95 % bootstrap intervals) and ``quality_per_image.csv`` (every image's value, for paired comparisons)
in --out. A metric job is ``METRIC[:PRESET[:KEY=VALUE]...]``; the options go to the metric as keyword arguments
(values read as JSON where they parse, e.g. ``id:keio:quantize_levels=8``) and are recorded in the row's params.
``--label`` names each ``--artifact``'s method in the results (default: its method), so several artifacts of one
method (e.g. LRP with each ``split``) can be compared on one model.

Saliency maps are cached per (model, method) in ``--out/maps`` and each (model, method, metric, preset, options)
result in ``--out/partial``, so an interrupted run resumes where it stopped. Baselines run on the SAME model and
images: Grad-CAM and Score-CAM from pytorch-grad-cam, RISE from openvino-xai (``python benchmarks/peers.py setup``),
LRP from captum (``captum_lrp``). A baseline that refuses the model (captum's LRP has no rule for some module types)
is left out of the results and its refusal, with the error, written to ``--out/refusals.json``. ``one_pixel`` is a
control, not an explainer: each map is 0 but for one pixel at a place drawn from the image's own bytes (seeded, so
reruns agree); a metric that scores it well rewards something other than faithfulness (e.g. ties entering together).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from engine import Engine  # noqa: E402
from engine.artifact import load_artifact, resolve_artifact_path  # noqa: E402
from engine.backends import open_backend  # noqa: E402
from engine.config import RESIZE_MODES  # noqa: E402
from engine.data import image_name, open_dataset  # noqa: E402
from engine.errors import EngineError, UnsupportedModelError  # noqa: E402
from engine.fileio import atomic_write, atomic_write_text  # noqa: E402
from engine.graph import ClassifyGraph, graph_from_artifact  # noqa: E402
from engine.preprocess import Preprocessor  # noqa: E402
from engine.report import METRIC_COLUMNS, bootstrap_ci  # noqa: E402

# id:PRESET computes insertion, deletion and ID in one pass
DEFAULT_METRICS = "id:rise,id:ovxai,ad_ic:tame,road:tame,adcc:reference"
CSV_COLUMNS = [*METRIC_COLUMNS, "precision", "params"]
PER_IMAGE_COLUMNS = ["dataset", "model", "method", "metric", "preset", "options", "image", "value"]
BASELINES = ["gradcam", "scorecam", "rise", "captum_lrp", "one_pixel"]
# which direction is better, by metric name prefix (for the chart's titles)
BETTER = {
    "insertion": "↑",
    "deletion": "↓",
    "id": "↑",
    "ad@": "↓",
    "ic@": "↑",
    "road_morf": "↓",
    "road_lerf": "↑",
    "adcc": "↑",
    "coherency": "↑",
    "complexity": "↓",
    "average_drop": "↓",
    "miou": "↑",
}


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_jobs(spec: str) -> list[tuple[str, str, dict[str, Any]]]:
    """``"id:keio:quantize_levels=8,ad_ic:tame"`` -> ``[("id", "keio", {"quantize_levels": 8}), ("ad_ic", "tame",
    {})]``: METRIC[:PRESET[:KEY=VALUE]...], comma-separated; the preset defaults to ``default``."""
    jobs = []
    for item in filter(None, (j.strip() for j in spec.split(","))):
        parts = item.split(":")
        metric, preset, rest = parts[0], parts[1] if len(parts) > 1 else "default", parts[2:]
        opts: dict[str, Any] = {}
        for kv in rest:
            key, eq, val = kv.partition("=")
            if not eq or not key:
                raise EngineError(f"--metrics {item!r}: options are KEY=VALUE, got {kv!r}.")
            opts[key] = _value(val)
        jobs.append((metric, preset or "default", opts))
    return jobs


def options_text(opts: dict[str, Any]) -> str:
    """A job's metric options as text, ``""`` for none: ``quantize_levels=8``."""
    return ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(opts.items()))


class Subject:
    """One artifact on one backend: its model callable, its own explanations, and the images prepared for it.

    Everything runs through engine backends: the artifact's explain graph on ``backend``, and the plain classifier
    that the metrics query as a classify-only graph on ``model_backend`` (OpenVINO opens the classifier's ONNX, the
    same file RISE reads).
    """

    def __init__(
        self,
        artifact: str,
        backend: str,
        samples,
        batch_size: int,
        model_backend: str,
        out_dir: Path,
        resize_mode: str = "artifact",
        label: str | None = None,
    ):
        art = load_artifact(artifact)  # a folder, "default" or a built-in name
        self.art = art
        self.name = art.backbone.spec
        self.method = label or art.method  # the name of the artifact's method in the results
        self.engine = Engine.load(art, backend=backend)
        # the torch backbone for the pytorch-grad-cam baselines: the engine's own when it runs on torch
        graph = self.engine.backend.graph if self.engine.backend_name == "torch" else graph_from_artifact(art)
        self.adapter = graph.backbone.eval()
        pre = art.preprocess
        if resize_mode != "artifact":  # the metrics then perturb the whole (letterboxed / squashed) photo
            pre = dataclasses.replace(pre, resize_mode=resize_mode)
        self.resize_mode = pre.resize_mode
        self.mean, self.std = np.array(pre.mean, np.float32), np.array(pre.std, np.float32)
        x, _ = Preprocessor(pre)([s.image() for s in samples])
        self.x = x  # normalised (N, 3, H, W)
        self.raw = np.clip(x * self.std[:, None, None] + self.mean[:, None, None], 0.0, 1.0)
        self.batch_size = batch_size
        if model_backend == "torch":
            source = ClassifyGraph(self.adapter, tuple(pre.input_size))
        else:
            source = self.classifier_onnx(out_dir)
        self.classifier = open_backend(model_backend, source, precision="fp32")
        self.precision = {
            self.method: self.engine.backend.effective_precision,
            "model": self.classifier.effective_precision,
        }
        self.labels = np.array([-1 if s.label is None else s.label for s in samples], dtype=np.int64)
        self.pred = self.model(self.x).argmax(axis=1)

    def classifier_onnx(self, out_dir: Path) -> Path:
        """The plain classifier exported to ONNX once (for RISE and the OpenVINO model callable)."""
        onnx = out_dir / "onnx" / f"{_safe(self.name)}_classify.onnx"
        if not onnx.exists():
            from engine.export import onnx_from_module

            onnx.parent.mkdir(parents=True, exist_ok=True)
            onnx_from_module(
                ClassifyGraph(self.adapter), onnx, tuple(self.art.preprocess.input_size), with_target=False
            )
        return onnx

    def model(self, x: np.ndarray) -> np.ndarray:
        """Normalised batch -> logits through the plain classifier's backend, ``batch_size`` images per call."""
        step = self.batch_size
        return np.concatenate([self.classifier.classify(x[s : s + step]) for s in range(0, len(x), step)])

    def explainer(self, method: str, out_dir: Path, rise_masks: int):
        """(normalised batch, targets) -> maps, for the engine's method or a baseline."""
        if method == self.method:
            return lambda xb, tb: self.engine.backend.infer(xb, np.asarray(tb, np.int64))[1]
        if method in ("gradcam", "scorecam"):
            from peers_grad_cam import cam_maps

            return lambda xb, tb: cam_maps(self.adapter, xb, np.asarray(tb), method)
        if method == "rise":
            from peers_openvino_xai import run_ovxai_rise as rise_maps

            onnx = self.classifier_onnx(out_dir)
            return lambda xb, tb: rise_maps(onnx, xb, np.asarray(tb), num_masks=rise_masks)[0]
        if method == "captum_lrp":
            from peers_captum import captum_lrp_maps

            return lambda xb, tb: captum_lrp_maps(self.adapter, xb, np.asarray(tb))
        if method == "one_pixel":
            return lambda xb, tb: one_pixel_maps(xb)
        raise EngineError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}.")

    def refusal(self, method: str, error: Exception) -> dict[str, Any]:
        """The record of a baseline that refuses this model."""
        if method == "captum_lrp":
            from peers_captum import refusal_record

            record = refusal_record(self.adapter, error)
        else:
            record = {"model": self.name, "error": f"{type(error).__name__}: {error}"}
        return {"method": method, **record, "message": str(error)}


def one_pixel_maps(x: np.ndarray) -> np.ndarray:
    """The ``one_pixel`` control: per image (N, C, H, W) a map (N, H, W) that is 0 but for one pixel, placed by a seed
    drawn from the image's bytes (the same image gives the same map in any batch)."""
    import zlib

    n, _, h, w = x.shape
    maps = np.zeros((n, h, w), np.float32)
    for i in range(n):
        seed = zlib.crc32(np.ascontiguousarray(x[i], dtype=np.float32).tobytes())
        maps[i].flat[np.random.default_rng(seed).integers(h * w)] = 1.0
    return maps


def cached_maps(
    subject: Subject, method: str, fn, ids: list[str], out_dir: Path, batch_size: int | None = None
) -> np.ndarray:
    """The maps of ``method`` for every image (computed ``batch_size`` images per call, or all at once), cached in
    ``out_dir/maps`` for these images and predicted classes."""
    from tqdm import tqdm

    path = out_dir / "maps" / f"{_safe(subject.name)}__{_safe(method)}.npz"
    if path.exists():
        data = np.load(path, allow_pickle=False)
        if list(data["ids"]) == ids and np.array_equal(data["targets"], subject.pred):
            return data["saliency"]
        log(f"{path} was made for other images: recomputing")
    t0 = time.perf_counter()
    step = batch_size or len(ids)
    parts = []
    for s in tqdm(range(0, len(ids), step), desc=f"{method} maps", unit="batch", file=sys.stderr, leave=False):
        parts.append(np.asarray(fn(subject.x[s : s + step], subject.pred[s : s + step]), dtype=np.float32))
    maps = np.concatenate(parts)
    seconds = time.perf_counter() - t0
    atomic_write(path, lambda fh: np.savez(fh, saliency=maps, targets=subject.pred, ids=np.array(ids), seconds=seconds))
    log(f"{subject.name} {method}: {len(ids)} maps in {seconds:.1f} s")
    return maps


def select_images(samples: list, root: Path, images: str, limit: int | None, seed: int) -> list:
    """The samples named by ``images`` (a JSON list of paths relative to the dataset root, or an artifact folder or
    built-in name whose ``heldout.json`` holds one), in dataset order; then a seeded subset of ``limit`` of them."""
    import random

    path = resolve_artifact_path(images)  # a folder, or a built-in artifact's name
    if path.is_dir():
        path = path / "heldout.json"
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f"--images {images}: cannot read a JSON list of image paths ({e}).") from e
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise EngineError(f"--images {path} must hold a non-empty JSON list of image paths.")

    by_name = {image_name(s.path, root): s for s in samples}  # the names training wrote into heldout.json
    missing = [n for n in names if n not in by_name]
    if missing:
        raise EngineError(
            f"--images {path}: {len(missing)} of {len(names)} images are not in the dataset at {root} "
            f"(e.g. {missing[:3]}). Pass the dataset the list was made from (--data, --data-root)."
        )
    wanted = set(names)
    chosen = [s for s in samples if image_name(s.path, root) in wanted]
    if limit is not None and limit < len(chosen):
        keep = sorted(random.Random(seed).sample(range(len(chosen)), limit))
        chosen = [chosen[i] for i in keep]
    return chosen


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (model, method, metric job) result row; refusals of baselines go to ``args.refusals`` when it is a
    list."""
    from tqdm import tqdm

    out = Path(args.out)
    if args.images:
        ds = open_dataset(args.data, args.data_root)
        samples = select_images(list(ds), ds.root, args.images, args.limit, args.seed)
    else:
        ds = open_dataset(args.data, args.data_root, subset=args.limit, seed=args.seed)
        samples = list(ds)
    if not samples:
        raise EngineError(f"dataset {args.data} has no images at {args.data_root or 'its default root'}.")
    ids = [str(s.path.name) for s in samples]
    jobs = parse_jobs(args.metrics)
    labels = getattr(args, "label", None) or []
    if labels and len(labels) != len(args.artifact):
        raise EngineError(f"--label: give one per --artifact ({len(args.artifact)}), got {len(labels)}.")
    refusals: list[dict[str, Any]] = args.refusals if isinstance(getattr(args, "refusals", None), list) else []
    rows: list[dict[str, Any]] = []
    for a, artifact in enumerate(args.artifact):
        subject = Subject(
            artifact,
            args.backend,
            samples,
            args.batch_size,
            args.model_backend,
            out,
            resize_mode=args.resize_mode,
            label=labels[a] if labels else None,
        )
        methods = [subject.method, *args.baseline]
        log(f"{subject.name}: {len(samples)} images, methods {methods}, jobs {jobs}")
        explainers = {m: subject.explainer(m, out, args.rise_masks) for m in methods}
        maps = {}
        for m, fn in explainers.items():
            try:
                maps[m] = cached_maps(subject, m, fn, ids, out, args.batch_size)
            except UnsupportedModelError as e:
                if m == subject.method:
                    raise
                log(f"{subject.name}: baseline {m} refuses the model, left out: {e}")
                if not any(r["model"] == subject.name and r["method"] == m for r in refusals):
                    refusals.append(subject.refusal(m, e))
        methods = [m for m in methods if m in maps]
        if args.maps_only:
            continue
        bar = tqdm(total=len(methods) * len(jobs), unit="job", file=sys.stderr)
        # metric-major order: every method gets each metric before the next (slow ADCC re-explains last)
        for metric, preset, opts in jobs:
            opt_text = options_text(opts)
            tag = "".join(f"__{_safe(k)}-{_safe(str(v))}" for k, v in sorted(opts.items()))
            for method in methods:
                part = out / "partial" / f"{_safe(subject.name)}__{_safe(method)}__{metric}__{preset}{tag}.json"
                if part.exists():
                    rows.extend(json.loads(part.read_text()))
                    bar.update(1)
                    continue
                bar.set_description(f"{method} {metric}:{preset}{':' + opt_text if opt_text else ''}")
                kwargs = dict(
                    model=subject.model,
                    images=subject.raw,
                    saliency=maps[method],
                    mean=subject.mean,
                    std=subject.std,
                    batch_size=args.batch_size,
                    model_kind=subject.adapter.kind,
                )
                kwargs["targets"] = subject.labels if preset == "keio" else subject.pred
                if metric == "adcc":
                    kwargs["explain_fn"] = explainers[method]
                kwargs.update(opts)
                t0 = time.perf_counter()
                from engine.metrics import evaluate

                results = evaluate(metric, preset, **kwargs)
                new = []
                for res in results.values():
                    lo, hi = bootstrap_ci(res.per_image)
                    for r in res.to_rows(args.data, subject.name, method):
                        r["ci95_low"], r["ci95_high"] = lo, hi
                        # maps: the engine's backend for its own method, torch / openvino-xai fp32 for baselines;
                        # the metric's model calls: the classifier's backend
                        r["precision"] = subject.precision.get(method, "fp32")
                        params = {**json.loads(r["params"]), "model_backend": args.model_backend}
                        params["resize_mode"] = subject.resize_mode
                        params["model_precision"] = subject.precision["model"]
                        for k, v in opts.items():  # the job's options, where the metric does not record them
                            params.setdefault(k, v)
                        r["params"] = json.dumps(params, sort_keys=True)
                        r["options"] = opt_text
                        r["per_image"] = dict(zip(ids, res.per_image.tolist(), strict=True))
                        new.append(r)
                for r in new:
                    r["seconds"] = round(time.perf_counter() - t0, 2)
                atomic_write(part, json.dumps(new, indent=1))
                rows.extend(new)
                bar.update(1)
        bar.close()
    return rows


def unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, method, metric, preset, options): jobs that overlap (insertion and id) give the
    same row."""
    keyed = {(*(r[k] for k in CSV_COLUMNS[:5]), r.get("options", "")): r for r in rows}
    return list(keyed.values())


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    def write(fh):
        w = csv.DictWriter(fh, fieldnames=[*CSV_COLUMNS, "seconds"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    atomic_write_text(path, write)


def write_per_image_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Every image's value of every row (rows from partial results older than this file have none)."""

    def write(fh):
        w = csv.DictWriter(fh, fieldnames=PER_IMAGE_COLUMNS)
        w.writeheader()
        for r in rows:
            for image, value in (r.get("per_image") or {}).items():
                w.writerow({**{k: r.get(k, "") for k in PER_IMAGE_COLUMNS[:6]}, "image": image, "value": value})

    atomic_write_text(path, write)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["metric"], r["preset"], r.get("options", "")) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cols = min(4, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (metric, preset, opts) in zip(axes.flat, panels, strict=False):
        mine = {
            r["method"]: r
            for r in rows
            if r["metric"] == metric and r["preset"] == preset and r.get("options", "") == opts
        }
        xs = [m for m in methods if m in mine]
        vals = [float(mine[m]["value"]) for m in xs]
        lo = [float(mine[m].get("ci95_low", "nan") or "nan") for m in xs]
        hi = [float(mine[m].get("ci95_high", "nan") or "nan") for m in xs]
        err = np.array([np.subtract(vals, lo), np.subtract(hi, vals)])
        ok = np.all(np.isfinite(err)) and np.all(err >= 0)
        ax.bar(
            range(len(xs)),
            vals,
            color=[colours(methods.index(m) % 10) for m in xs],
            yerr=err if ok else None,
            capsize=2,
            error_kw={"elinewidth": 0.8},
        )
        ax.set_xticks(range(len(xs)), xs, rotation=30, ha="right", fontsize=8)
        arrow = next((v for k, v in BETTER.items() if metric.startswith(k)), "")
        ax.set_title(f"{metric} ({preset}{', ' + opts if opts else ''}) {arrow}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    n = max(int(r["n_images"]) for r in rows)
    models = ", ".join(sorted({r["model"] for r in rows}))
    fig.suptitle(
        f"{rows[0]['dataset']}: {models}, {n} images (↑ higher is better, ↓ lower; bars: 95 % bootstrap CI)",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", action="append", required=True, help="artifact folder or 'default' (repeatable)")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        help="the method's name in the results for each --artifact, in order (default: the artifact's method)",
    )
    p.add_argument("--baseline", action="append", default=[], choices=BASELINES)
    p.add_argument("--data", required=True, help="dataset name (imagenet-sample, imagenet-val, kahikatea, voc, ...)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: ../shared/data/<name> when present)")
    p.add_argument(
        "--images",
        default=None,
        help="only these images: a JSON list of paths relative to the dataset root, or an artifact folder "
        "(its heldout.json, the images its training never saw)",
    )
    p.add_argument("--limit", type=int, default=None, help="number of images: a seeded random subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help="comma-separated METRIC[:PRESET[:KEY=VALUE]...] list, e.g. id:keio:quantize_levels=8",
    )
    p.add_argument("--backend", default="torch", help="backend that runs the artifact's explanations")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--model-backend",
        default="openvino" if importlib.util.find_spec("openvino") else "torch",
        choices=["openvino", "torch"],
        help="runtime of the model callable the metrics query (fp32)",
    )
    p.add_argument(
        "--resize-mode",
        default="artifact",
        choices=["artifact", *RESIZE_MODES],
        help="how photos become network inputs (default: the artifact's own preprocess.resize_mode)",
    )
    p.add_argument("--rise-masks", type=int, default=2000)
    p.add_argument("--maps-only", action="store_true", help="compute and cache the saliency maps, then stop")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.refusals = []
    out = Path(args.out)
    try:
        rows = run(args)
    except EngineError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 2
    finally:
        if args.refusals:
            atomic_write(out / "refusals.json", json.dumps(args.refusals, indent=1) + "\n")
            log(f"{len(args.refusals)} baseline refusal(s) written to {out / 'refusals.json'}")
    if args.maps_only:
        log(f"maps cached in {out / 'maps'}")
        return 0
    rows = unique_rows(rows)
    write_csv(rows, out / "quality.csv")
    write_per_image_csv(rows, out / "quality_per_image.csv")
    plot(rows, out / "quality.png")
    width = max(len(r["method"]) for r in rows)
    for r in rows:
        print(
            f"{r['method']:<{width}}  {r['metric']:<14} {r['preset']:<10} {float(r['value']):10.4f}  "
            f"[{float(r['ci95_low']):.4f}, {float(r['ci95_high']):.4f}]  n={r['n_images']}  {r.get('options', '')}"
        )
    log(f"wrote {out / 'quality.csv'} and {out / 'quality.png'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
