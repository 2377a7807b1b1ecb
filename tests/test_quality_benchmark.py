"""benchmarks/quality.py end to end on two example photos: CSV columns, one row per key, chart, resume."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from engine._compat import ensure_torchvision

ROOT = Path(__file__).resolve().parents[1]
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
