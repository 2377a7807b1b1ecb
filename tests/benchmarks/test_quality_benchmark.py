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


def test_metric_jobs_take_options_that_reach_the_metric_and_its_params(quality):
    from engine.errors import EngineError

    assert quality.parse_jobs("id:keio:quantize_levels=8,ad_ic:tame, road") == [
        ("id", "keio", {"quantize_levels": 8}),
        ("ad_ic", "tame", {}),
        ("road", "default", {}),
    ]
    assert quality.parse_jobs("id:keio:quantize_levels=8:x=abc")[0][2] == {"quantize_levels": 8, "x": "abc"}
    assert quality.options_text({"quantize_levels": 8, "x": "abc"}) == "quantize_levels=8,x=abc"
    with pytest.raises(EngineError, match="KEY=VALUE"):
        quality.parse_jobs("id:keio:8")
    # the same metric with and without an option: two rows, not one
    row = {"dataset": "d", "model": "m", "method": "a", "metric": "id", "preset": "keio"}
    assert len(quality.unique_rows([{**row, "options": ""}, {**row, "options": "quantize_levels=8"}])) == 2
    assert len(quality.unique_rows([{**row, "options": ""}, {**row}])) == 1


def test_captum_lrp_refusal_names_captum_error_and_every_module_without_a_rule():
    pytest.importorskip("captum")
    import numpy as np
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers_captum import captum_lrp_maps, refusal_record

    from engine.errors import UnsupportedModelError

    class Adapter:  # what the baselines read of a BackboneAdapter
        library, name = "toy", "net"

        def __init__(self, model):
            self.model = model

    def net(*middle):
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), *middle, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, 2)
        )

    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    refused = Adapter(net(nn.ReLU6(), nn.Identity()))
    with pytest.raises(UnsupportedModelError, match="captum .* LRP refuses toy/net") as err:
        captum_lrp_maps(refused, x, np.array([0, 1]))
    record = refusal_record(refused, err.value)
    assert record["error"].startswith("TypeError: Module of type")
    assert {k.rsplit(".", 1)[1]: v["first"] for k, v in record["unsupported_leaf_modules"].items()} == {
        "ReLU6": ["1"],
        "Identity": ["2"],
        "Flatten": ["4"],
    }

    # a model captum accepts gives one map per image in [0, 1], and captum's rules are not left on the modules
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.pool, self.fc = (
                nn.Conv2d(3, 4, 3, padding=1),
                nn.ReLU(),
                nn.AvgPool2d(8),
                nn.Linear(4, 2),
            )

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.relu(self.conv(t))).flatten(1))

    accepted = Adapter(Small())
    maps = captum_lrp_maps(accepted, x, np.array([0, 1]))
    assert maps.shape == (2, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    assert not any(hasattr(m, "rule") for m in accepted.model.modules())


def test_one_pixel_control_is_one_seeded_pixel_per_image_in_any_batch(quality):
    import numpy as np

    x = np.random.default_rng(3).normal(size=(5, 3, 16, 16)).astype(np.float32)
    maps = quality.one_pixel_maps(x)
    assert maps.shape == (5, 16, 16) and maps.dtype == np.float32
    assert (np.count_nonzero(maps.reshape(5, -1), axis=1) == 1).all() and maps.max() == 1.0
    np.testing.assert_array_equal(np.concatenate([quality.one_pixel_maps(x[:2]), quality.one_pixel_maps(x[2:])]), maps)
    assert len({int(m.argmax()) for m in maps}) > 1  # placed per image, not one place for all


def test_map_sheet_draws_an_image_column_and_one_column_per_method():
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from overlays import LABEL_H, map_sheet

    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (30, 40), (10, 200, 10))]
    spiky = np.zeros((2, 8, 8), np.float32)
    spiky[:, 0, 0] = 100.0
    spiky[:, 4:, :] = 1.0
    maps = {"a": np.random.default_rng(0).random((2, 7, 7)), "b": np.zeros((2, 7, 7)), "spiky": spiky}
    sheet = map_sheet(images, maps, ["red", "green"], tile=32)
    assert sheet.size == (32 * 4, 2 * (32 + LABEL_H))
    plain = np.asarray(map_sheet(images, {"spiky": spiky}, tile=32), dtype=np.float64)
    clipped = np.asarray(map_sheet(images, {"spiky": spiky}, tile=32, upper_percentile=90), dtype=np.float64)
    # one extreme pixel leaves the rest dark (blue) unless the display scale is clipped at a percentile
    lower_half = (slice(LABEL_H + 20, LABEL_H + 32), slice(32, 64))
    assert clipped[lower_half][..., 0].mean() > plain[lower_half][..., 0].mean() + 50
