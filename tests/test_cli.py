"""The xai-engine CLI: explain (with bad images skipped), create, export, info."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.cli import main

PY = [sys.executable, "-m", "engine.cli"]


def test_explain_folder_skips_bad_images(tmp_path, example_images):
    src = tmp_path / "in"
    src.mkdir()
    for p in example_images[:2]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(example_images[0].read_bytes()[:3000])  # truncated
    (src / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    result = subprocess.run(
        [*PY, "explain", str(src), "--out", str(out), "--backend", "torch"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1, result.stderr  # some images failed, the rest completed
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr and "notes.png" in result.stderr
    assert "4/4" in result.stderr, "a progress bar is shown for more than one image"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4
    ok = [r for r in records if "error" not in r]
    assert sorted(r["source"].split("/")[-1] for r in ok) == sorted(p.name for p in example_images[:2])
    for r in ok:
        stem = r["source"].split("/")[-1].rsplit(".", 1)[0]
        sal = np.load(out / f"{stem}.npy")
        size = Image.open(r["source"]).size
        assert sal.shape == (size[1], size[0]) and sal.dtype == np.float32
        assert Image.open(out / f"{stem}.png").size == size
        assert r["files"] == {"png": f"{stem}.png", "npy": f"{stem}.npy"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "no half-written outputs"


def test_explain_with_target_name(tmp_path, example_images, capsys):
    out = tmp_path / "out"
    code = main(
        ["explain", str(example_images[0]), "--out", str(out), "--target", "ORANGE", "--backend", "torch", "--quiet"]
    )
    assert code == 0
    record = json.loads((out / "results.jsonl").read_text())
    assert record["target"] == 950 and record["target_name"] == "orange"  # names match in any case
    assert record["class_id"] != 950 and record["class_name"] == record["topk"][0]["name"]  # the prediction too
    assert 0.0 < record["target_score"] < record["score"]
    capsys.readouterr()
    assert main(["explain", str(example_images[0]), "--out", str(out), "--target", "golden retriver"]) == 2
    err = capsys.readouterr().err
    assert "'golden retriever'" in err  # the close name is suggested
    assert "xai-engine info" in err and "--classes" in err


def test_create_export_explain_on_onnxruntime(tmp_path, example_images):
    pytest.importorskip("onnxruntime")
    art = tmp_path / "art"
    assert (
        main(
            [
                "create",
                "--method",
                "vit-reciprocam",
                "--backbone",
                "timm/vit_tiny_patch16_224",
                "--source",
                "random",
                "--option",
                "kernel=dirac",
                "--out",
                str(art),
            ]
        )
        == 0
    )
    assert json.loads((art / "manifest.json").read_text())["explainer"]["options"]["kernel"] == "dirac"
    exported = tmp_path / "exported"
    result = subprocess.run(
        [sys.executable, "export/to_onnx.py", str(art), "--out", str(exported)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (exported / "model.onnx").is_file()
    out = tmp_path / "out"
    assert (
        main(
            [
                "explain",
                str(example_images[0]),
                "--artifact",
                str(exported),
                "--backend",
                "onnxruntime",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "results.jsonl").read_text())["backend"] == "onnxruntime"


def test_errors_are_one_line_with_a_fix(tmp_path, capsys):
    assert main(["explain", "x.jpg", "--artifact", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "xai-engine create" in err
    assert main(["info"]) == 0
    assert "tf_efficientnet_lite0" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["export/to_onnx.py", "export/to_openvino.py"])
def test_export_scripts_answer_help(script):
    result = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ckpt" in result.stdout.lower()
