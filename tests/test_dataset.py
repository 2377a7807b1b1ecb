"""``xai-engine explain-dataset`` / :mod:`engine.dataset`: Parquet rows, resume without duplicates, error rows, the
full-size map rebuilt from a row, list sources, lazy imports, and the Ray Data path (local Ray, 2 actors)."""

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from engine import dataset as ds  # noqa: E402
from engine.cli import main  # noqa: E402

ARTIFACT = "reciprocam-efficientnet_lite0-onnx"  # the built-in ONNX export: fast on onnxruntime
RUN = {"artifact": ARTIFACT, "backend": "onnxruntime", "progress": False}
HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="module")
def images(tmp_path_factory, example_images) -> Path:
    """20 photos (copies of examples/) in nested folders, a broken .jpg, and a text file that is not an image."""
    root = tmp_path_factory.mktemp("dataset") / "src"
    for i in range(20):
        folder = root / f"group{i % 3}" / ("deep" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(example_images[i % len(example_images)], folder / f"img{i:02d}.jpg")
    (root / "group1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("not an image\n")
    return root


def _rows(out: Path) -> list[dict]:
    return ds.read_results(out)


def _check_complete(out: Path, src: Path) -> list[dict]:
    rows = _rows(out)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 21  # one row per image, no duplicates
    assert set(paths) == set(ds.list_sources(src))
    errors = [r for r in rows if r["error"] is not None]
    assert [Path(r["path"]).name for r in errors] == ["broken.jpg"]
    assert errors[0]["error_kind"] == "ImageDecodeError" and errors[0]["class_id"] is None
    for r in rows:
        if r["error"] is None:
            assert 0 <= r["class_id"] < 1000 and r["topk"][0]["id"] == r["class_id"] and len(r["topk"]) == 5
            assert len(r["saliency_lowres"]) == np.prod(r["saliency_shape"])
    assert not list(out.glob(".*"))  # no temporary files left
    for part in out.glob("part-*.parquet"):  # each part is named by the hash of its paths
        assert part.name == ds._part_name(pq.read_table(part, columns=["path"]).column("path").to_pylist())
    return rows


def test_cli_in_process_writes_parquet_with_error_rows(images, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain-dataset", str(images), "--out", str(out), "--artifact", ARTIFACT, "--backend", "onnxruntime"]
    assert main([*argv, "--part-size", "8", "--overlays", str(tmp_path / "png"), "--json", "--quiet"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 21 and summary["explained"] == 20 and summary["errors"] == 1
    assert summary["parts_written"] == 3 and summary["mode"] == "in-process"
    rows = _check_complete(out, images)
    assert pq.read_schema(next(out.glob("part-*.parquet"))).field("saliency_lowres").type == pa.list_(pa.float16())
    assert all((tmp_path / "png" / r["overlay"]).is_file() for r in rows if r["error"] is None)
    assert summary["errors_total"] == 1
    # a rerun finds everything written and explains nothing; its exit status still reports the earlier error row
    assert main([*argv, "--json", "--quiet"]) == 1
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] == 21 and again["explained"] == again["errors"] == again["parts_written"] == 0
    assert again["errors_total"] == 1
    assert len(_rows(out)) == 21


def test_resume_after_interruption_has_no_duplicates(images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write = ds._write_part

    def write_then_die(folder, rows):
        real_write(folder, rows)
        raise KeyboardInterrupt  # killed right after the first part reached the disk

    monkeypatch.setattr(ds, "_write_part", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        ds.explain_dataset(images, out, part_size=6, **RUN)
    monkeypatch.setattr(ds, "_write_part", real_write)
    assert len(_rows(out)) == 6
    summary = ds.explain_dataset(images, out, part_size=6, **RUN)
    assert summary["already_done"] == 6 and summary["explained"] + summary["errors"] == 15
    assert summary["remaining"] == 0
    _check_complete(out, images)


def test_limit_stops_and_a_rerun_continues(images, tmp_path):
    out = tmp_path / "out"
    first = ds.explain_dataset(images, out, part_size=4, limit=5, **RUN)
    assert first["explained"] + first["errors"] == 5 and first["remaining"] == 16
    second = ds.explain_dataset(images, out, part_size=4, **RUN)
    assert second["already_done"] == 5 and second["remaining"] == 0
    _check_complete(out, images)


@pytest.mark.parametrize("resize_mode", [None, "letterbox"])
def test_rebuilt_saliency_equals_engine_explain(images, tmp_path, resize_mode):
    from engine import Engine
    from engine.preprocess import ImageMeta, saliency_to_image

    paths = ds.list_sources(images)[:4]
    out = tmp_path / "out"
    ds.explain_dataset(paths, out, resize_mode=resize_mode, **RUN)
    engine = Engine.load(ARTIFACT, "onnxruntime", resize_mode=resize_mode)
    for row in _rows(out):
        exp = engine.explain(row["path"])
        full = ds.rebuild_saliency(row)
        assert full.shape == exp.saliency.shape == tuple(row["image_size"][::-1])
        # exactly the map of the float16-rounded low-resolution map, and Engine's own up to that rounding
        meta = ImageMeta(tuple(row["image_size"]), exp.crop_box, exp.resize_mode)
        rounded = saliency_to_image(exp.saliency_lowres.astype(np.float16).astype(np.float32), meta)
        np.testing.assert_array_equal(full, rounded)
        np.testing.assert_allclose(full, exp.saliency, rtol=0, atol=1e-3)
        assert row["class_id"] == exp.class_id and row["target"] == exp.target
        assert row["score"] == pytest.approx(exp.score) and row["resize_mode"] == exp.resize_mode
        assert row["crop_box"] == pytest.approx(list(exp.crop_box))
    with pytest.raises(ds.InputError, match="no saliency map"):
        ds.rebuild_saliency(ds._error_row("x.jpg", "broken", "ImageDecodeError"))


def test_list_sources_from_text_csv_and_parquet(images, tmp_path):
    paths = ds.list_sources(images)
    assert len(paths) == 21 and not any(p.endswith("notes.txt") for p in paths)
    listing = tmp_path / "list.txt"
    listing.write_text("# images\n" + "\n".join(paths[:5] + paths[:2]) + "\n\n")
    assert ds.list_sources(listing) == paths[:5]  # comments, blanks and repeats dropped
    with_header = tmp_path / "with_header.csv"
    with open(with_header, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "path"])
        w.writerows([["x", p] for p in paths[:4]])
    assert ds.list_sources(with_header) == paths[:4]
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("\n".join(paths[:3]) + "\n")
    assert ds.list_sources(no_header) == paths[:3]
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "uri": paths[:3]}), table)
    assert ds.list_sources(table) == paths[:3]
    out = tmp_path / "out"
    summary = ds.explain_dataset(with_header, out, **RUN)
    assert summary["explained"] == 4 and {r["path"] for r in _rows(out)} == set(paths[:4])
    with pytest.raises(ds.InputError, match="does not exist"):
        ds.list_sources(tmp_path / "missing")


def test_ray_missing_is_one_message(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    code = main(["explain-dataset", str(images), "--out", str(tmp_path / "out"), "--ray", "local"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "xai-engine[ray]"' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_pyarrow_missing_is_one_message(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["explain-dataset", str(images), "--out", str(tmp_path / "out")]) == 2
    assert 'needs pyarrow: pip install "xai-engine[ray]"' in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--ray", "local"]])
def test_bad_target_name_is_a_usage_error(images, tmp_path, capsys, extra):
    if extra and not HAS_RAY:
        pytest.skip("needs Ray")
    argv = ["explain-dataset", str(images), "--out", str(tmp_path / "out"), "--artifact", ARTIFACT]
    assert main([*argv, "--backend", "onnxruntime", "--target", "golden retriver", *extra]) == 2
    assert "Close names: 'golden retriever'" in capsys.readouterr().err
    assert not list(tmp_path.glob("out/part-*"))


def test_import_engine_does_not_import_ray_or_pyarrow():
    code = (
        "import sys, engine, engine.cli, engine.dataset, engine.serve; from engine.cli import build_parser; "
        "build_parser(); "
        "bad = [m for m in ('ray', 'pyarrow', 'starlette') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@pytest.mark.skipif(not HAS_RAY, reason='needs Ray Data: pip install "xai-engine[ray]"')
def test_ray_local_two_actors_killed_and_resumed(images, tmp_path):
    """``explain-dataset --ray local --actors 2`` killed (SIGKILL, driver and its Ray processes) after two parts, then
    rerun: every image exactly once, whole parts only, rows equal to the in-process ones. About 40 s, most of it
    starting Ray twice."""
    out = tmp_path / "ray"
    argv = [sys.executable, "-m", "engine.cli", "explain-dataset", str(images), "--out", str(out), "--ray", "local"]
    argv += ["--actors", "2", "--artifact", ARTIFACT, "--backend", "onnxruntime", "--batch-size", "2", "--part-size"]
    argv += ["2", "--quiet", "--json"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # the group this test started: the driver and the local Ray it started
    first.wait(timeout=60)
    before = _rows(out)
    assert 2 <= len(before) < 21, (tmp_path / "first.log").read_text()[-2000:]
    assert len(before) % 2 == 0 or len(before) == 21  # whole parts only
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    # 1: the broken image has an error row, written by this run or by the killed one
    assert second.returncode == 1, second.stderr[-2000:]
    summary = json.loads(second.stdout)
    assert summary["errors_total"] == 1
    assert summary["already_done"] == len(before) and summary["explained"] + summary["errors"] == 21 - len(before)
    assert summary["mode"].startswith("ray")
    rows = _check_complete(out, images)
    local = tmp_path / "local"
    ds.explain_dataset(images, local, **RUN)
    by_path = {r["path"]: r for r in _rows(local)}
    for r in rows:
        ref = by_path[r["path"]]
        for key in ("class_id", "topk", "target", "saliency_lowres", "image_size", "source_size", "crop_box", "error"):
            assert r[key] == ref[key], key
