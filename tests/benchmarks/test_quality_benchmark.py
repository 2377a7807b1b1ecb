"""benchmarks/quality.py end to end on two example photos: CSV columns, one row per key, chart, resume."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from engine._compat import ensure_torchvision

ROOT = Path(__file__).resolve().parents[2]
ensure_torchvision()  # pytorch-grad-cam imports torchvision
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def quality():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_writes_csv_chart_and_resumes(quality, tmp_path, example_images):
    data = tmp_path / "photos"
    data.mkdir()
    for p in example_images[:2]:
        (data / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    argv = [
        "--artifact",
        "default",
        "--baseline",
        "gradcam",
        "--data",
        "folder",
        "--data-root",
        str(data),
        "--metrics",
        "id:ovxai,ad_ic:tame,insertion:ovxai",
        "--batch-size",
        "16",
        "--out",
        str(out),
    ]
    assert quality.main(argv) == 0
    rows = list(csv.DictReader((out / "quality.csv").open()))
    assert {"dataset", "model", "method", "metric", "preset", "value", "n_images"} <= set(rows[0])
    keys = [(r["method"], r["metric"], r["preset"]) for r in rows]
    assert len(keys) == len(set(keys)), "overlapping jobs (insertion and id) must not duplicate rows"
    assert {m for m, _, _ in keys} == {"reciprocam", "gradcam"}
    assert {"insertion", "deletion", "id", "ad@15", "ic@15"} <= {m for _, m, _ in keys}
    assert all(r["n_images"] == "2" and r["model"] == "timm/tf_efficientnet_lite0" for r in rows)
    assert all(float(r["ci95_low"]) <= float(r["value"]) + 1e-9 <= float(r["ci95_high"]) + 2e-9 for r in rows)
    ins = {r["method"]: float(r["value"]) for r in rows if r["metric"] == "insertion"}
    dele = {r["method"]: float(r["value"]) for r in rows if r["metric"] == "deletion"}
    ids = {r["method"]: float(r["value"]) for r in rows if r["metric"] == "id"}
    assert all(abs(ids[m] - (ins[m] - dele[m])) < 1e-9 for m in ids)
    assert (out / "quality.png").stat().st_size > 10_000
    # resume: a second run reuses the cached maps and partial results instead of recomputing them
    partials = {p: p.stat().st_mtime_ns for p in (out / "partial").iterdir()}
    maps = {p: p.stat().st_mtime_ns for p in (out / "maps").iterdir()}
    assert quality.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "partial").iterdir()} == partials
    assert {p: p.stat().st_mtime_ns for p in (out / "maps").iterdir()} == maps
    assert list(csv.DictReader((out / "quality.csv").open())) == rows


def test_quality_benchmark_reports_an_empty_dataset(quality, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = quality.main(
        ["--artifact", "default", "--data", "folder", "--data-root", str(empty), "--out", str(tmp_path / "o")]
    )
    assert code == 2
    assert "error" in capsys.readouterr().err


def test_images_option_selects_a_held_out_list_and_refuses_unknown_names(quality, tmp_path, example_images):
    import json

    from engine.data import open_dataset
    from engine.errors import EngineError

    data = tmp_path / "photos"
    (data / "sub").mkdir(parents=True)
    for p in example_images[:3]:
        (data / "sub" / p.name).write_bytes(p.read_bytes())
    ds = open_dataset("folder", data)
    samples = list(ds)
    names = [f"sub/{p.name}" for p in example_images[:3]]
    art = tmp_path / "art"
    art.mkdir()
    (art / "heldout.json").write_text(json.dumps(names[1:]))
    chosen = quality.select_images(samples, ds.root, str(art), None, 0)
    assert sorted(s.path.name for s in chosen) == sorted(p.name for p in example_images[1:3])
    one = quality.select_images(samples, ds.root, str(art / "heldout.json"), 1, 0)
    assert len(one) == 1 and one[0].path.name in {p.name for p in example_images[1:3]}
    with pytest.raises(EngineError, match="200 of 200 images are not in the dataset"):  # a built-in's heldout.json
        quality.select_images(samples, ds.root, "tame-efficientnet_lite0", None, 0)
    (art / "heldout.json").write_text(json.dumps([*names, "sub/missing.jpg"]))
    with pytest.raises(EngineError, match="1 of 4 images are not in the dataset"):
        quality.select_images(samples, ds.root, str(art), None, 0)
    (art / "heldout.json").write_text("{}")
    with pytest.raises(EngineError, match="non-empty JSON list"):
        quality.select_images(samples, ds.root, str(art), None, 0)


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_images(quality):
    import numpy as np

    assert quality.bootstrap_ci(np.full(10, 3.5)) == (3.5, 3.5)
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    lo_s, hi_s = quality.bootstrap_ci(small)
    lo_l, hi_l = quality.bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # ~ 1/sqrt(n): 10x narrower for 100x the images
    assert abs((hi_l - lo_l) - 2 * 1.96 / np.sqrt(2000)) < 0.02  # the normal-theory width
    assert quality.bootstrap_ci(small) == (lo_s, hi_s)  # seeded
    assert all(np.isnan(quality.bootstrap_ci(np.array([np.nan]))))
