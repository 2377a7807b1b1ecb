"""CLI points a new user trips over: --out naming a file, folders (--recursive, ignored files, a missing folder),
results.jsonl's timings and resize mode, `xai-engine list`, `info --classes`."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "examples"],
        ["create", "--method", "reciprocam", "--backbone", "timm/resnet18", "--source", "random"],
        ["export", "default"],
    ],
)
def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys, argv):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main([*argv, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is an existing file, not a folder" in err and "Traceback" not in err
    assert target.read_text() == "keep me"


def test_folders_recursive_ignored_files_and_a_missing_folder(tmp_path, example_images, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(example_images[0], photos / "a.jpg")
    shutil.copy(example_images[1], photos / "sub" / "a.jpg")  # same stem in a subfolder
    (photos / "notes.txt").write_text("not an image")
    (photos / "sub" / "data.csv").write_text("x")
    out = tmp_path / "out"
    argv = ["explain", str(photos), "--out", str(out), "--backend", "torch", "--no-images"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "ignoring 1 file(s)" in err and "ignored 1 non-image file(s)" in err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == [str(photos / "a.jpg")]
    assert main([*argv, "--recursive"]) == 0
    assert "ignoring 2 file(s)" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == [str(photos / "a.jpg"), str(photos / "sub" / "a.jpg")]
    # timings: per-image decode/preprocess/postprocess, the batch's inference time with its size
    for r in records:
        assert set(r["timings"]) == {"decode_ms", "preprocess_ms", "postprocess_ms", "batch_infer_ms", "batch_size"}
        assert r["timings"]["batch_size"] == 2 and r["resize_mode"] == "crop"  # the artifact's own, by default
    assert main(["explain", str(tmp_path / "no_such_folder"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Folder not found" in err and "Image file not found" not in err


def test_resize_mode_is_recorded(tmp_path, example_images):
    out = tmp_path / "out"
    argv = ["explain", str(example_images[0]), "--out", str(out), "--backend", "torch", "--quiet"]
    assert main(argv) == 0
    record = json.loads((out / "results.jsonl").read_text())
    assert record["resize_mode"] == "crop"
    left, top, right, bottom = record["crop_box"]
    assert left >= 0 and top > 0 and bottom < record["saliency_shape"][0]  # the box the network saw, inside
    assert main([*argv, "--resize-mode", "letterbox"]) == 0
    record = json.loads((out / "results.jsonl").read_text())
    assert record["resize_mode"] == "letterbox"
    left, top, right, bottom = record["crop_box"]
    assert left < 0 and top <= 0 and right > record["saliency_shape"][1]  # the whole photo, and the padding


def test_list_and_info_classes(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for needle in ("reciprocam-efficientnet_lite0 (default)", "tame-efficientnet_lite0", "methods", "onnxruntime"):
        assert needle in text
    assert main(["list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"builtin_artifacts", "methods", "backbone_libraries", "weight_packages", "backends"} <= set(data)
    assert "ala" in data["methods"] and data["backends"]["torch"]["installed"] is True
    assert main(["info", "tame-efficientnet_lite0", "--classes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1000 and lines[0] == "0\ttench" and lines[207] == "207\tgolden retriever"
