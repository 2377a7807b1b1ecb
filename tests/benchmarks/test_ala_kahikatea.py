"""benchmarks/ala_kahikatea.py on a tiny fake kahikatea dataset (64 px, random weights): mask geometry, the three
subcommands end to end, the intervals, and the errors a bad --method gives."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine._compat import ensure_torchvision
from engine.config import PreprocessConfig
from engine.errors import InputError
from engine.preprocess import Preprocessor
from engine.report import bootstrap_ci, paired_bootstrap_diff

ROOT = Path(__file__).resolve().parents[2]
ensure_torchvision()  # pytorch-grad-cam imports torchvision
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("matplotlib")

W, H = 60, 40  # fake photos: landscape, like the real 552 x 369 ones
SIZE = 64  # network input of the tiny runs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is faster than several, and far faster on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ala_kahikatea_bench", ROOT / "benchmarks" / "ala_kahikatea.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def make_dataset(root: Path, n: int = 12) -> Path:
    """``n`` photos, every other one a positive with a rectangular mask (the trees are a bright rectangle)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["file,label_kahikatea_present,mask_file,width,height"]
    for i in range(n):
        pix = rng.integers(0, 120, size=(H, W, 3), dtype=np.uint8)
        name = f"photo_{i:02d}.png"
        positive = i % 2 == 1
        mask_name = ""
        if positive:
            mask = np.zeros((H, W), dtype=bool)
            top, left = int(rng.integers(0, H // 2)), int(rng.integers(0, W // 2))
            mask[top : top + H // 2, left : left + W // 3] = True
            pix[mask] = 230
            mask_name = f"photo_{i:02d}_mask.png"
            Image.fromarray(mask).convert("1").save(root / "masks" / mask_name)
        Image.fromarray(pix).save(root / "images" / name)
        rows.append(f"{name},{int(positive)},{mask_name},{W},{H}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """A fake dataset, its split, and a WORK folder after ``finetune`` and ``baselines`` (tiny, random weights)."""
    base = tmp_path_factory.mktemp("ala_kahikatea")
    data = make_dataset(base / "kahikatea")
    names = [f"images/photo_{i:02d}.png" for i in range(12)]  # odd numbers are the positives
    doc = {"format": 1, "dataset": "kahikatea", "test": names[:4], "val": names[4:8], "train": names[8:]}
    split = base / "split.json"
    split.write_text(json.dumps(doc))
    return {"base": base, "data": data, "split": split, "work": base / "work"}


@pytest.fixture(scope="module")
def trained(bench, fake):
    work, common = fake["work"], ["--split", str(fake["split"]), "--data-root", str(fake["data"]), "--no-progress"]
    tiny = ["--source", "random", "--input-size", str(SIZE), "--epochs", "2", "--batch-size", "4", "--max-steps", "2"]
    assert bench.main(["finetune", *common, "--out", str(work / "finetune"), *tiny]) == 0
    assert bench.main(["baselines", *common, "--work", str(work), "--tame-epochs", "1", "--tame-max-steps", "1"]) == 0
    return fake


# ----------------------------------------------------------------------------------------------------------------
# Mask geometry
# ----------------------------------------------------------------------------------------------------------------


def test_mask_follows_the_image_geometry(bench):
    """A 120x80 image at 32 px, crop_pct 0.5: resize to 96x64, centre crop x 32..64, y 16..48 of the resized image,
    i.e. x 40..80, y 20..60 of the original. A mask of exactly that region fills the input; a mask of the left half
    fills the crop's columns left of original x = 60 (resized 48, crop column 16)."""
    pre = PreprocessConfig(input_size=(32, 32), crop_pct=0.5, interpolation="bilinear")
    assert Preprocessor(pre).plan((120, 80)) == ((96, 64), (32, 16, 64, 48))
    region = np.zeros((80, 120), dtype=bool)
    region[20:60, 40:80] = True
    assert bench.mask_to_input(region, pre).all()
    left = np.zeros((80, 120), dtype=bool)
    left[:, :60] = True
    out = bench.mask_to_input(left, pre)
    assert out.shape == (32, 32) and out[:, :16].all() and not out[:, 16:].any()
    outside = np.zeros((80, 120), dtype=bool)
    outside[:, :30] = True  # entirely left of the crop
    assert not bench.mask_to_input(outside, pre).any()


def test_mask_and_image_stay_aligned(bench):
    """The image's own preprocessing and the mask's transform agree pixel for pixel (but for the resize's blurred
    edge), also for a portrait image and a crop larger than the image (padding)."""
    for size, input_size, crop_pct in (((150, 90), 48, 0.875), ((70, 130), 40, 0.875), ((30, 20), 64, 1.0)):
        w, h = size
        mask = np.zeros((h, w), dtype=bool)
        mask[h // 5 : h // 2, w // 3 : w - 3] = True
        image = Image.fromarray(np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2))
        pre = PreprocessConfig(input_size=(input_size, input_size), crop_pct=crop_pct, interpolation="bilinear",
                               mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
        x, _ = Preprocessor(pre)([image])
        seen = x[0, 0] > 0.5
        m = bench.mask_to_input(mask, pre)
        assert m.shape == seen.shape == (input_size, input_size)
        assert (m != seen).mean() < 0.03, size
        assert m.any()


# ----------------------------------------------------------------------------------------------------------------
# Intervals
# ----------------------------------------------------------------------------------------------------------------


def test_paired_bootstrap_difference():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, 40)
    d, lo, hi = paired_bootstrap_diff(b + 0.3, b)
    assert d == pytest.approx(0.3) and lo == pytest.approx(0.3) and hi == pytest.approx(0.3)  # pairing cancels b
    a = b + rng.normal(0.1, 0.05, 40)
    d, lo, hi = paired_bootstrap_diff(a, b)
    assert lo < d < hi and lo > 0  # a real gain, far narrower than the unpaired intervals
    assert hi - lo < (bootstrap_ci(a)[1] - bootstrap_ci(a)[0]) / 2
    assert paired_bootstrap_diff(a, b) == (d, lo, hi)  # seeded
    with pytest.raises(ValueError):
        paired_bootstrap_diff(a, b[:-1])


# ----------------------------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------------------------


def test_finetune_and_baselines_write_what_evaluate_needs(bench, trained):
    work = trained["work"]
    summary = json.loads((work / "finetune" / "summary.json").read_text())
    assert summary["preprocess"]["input_size"] == [SIZE, SIZE]
    assert summary["split"]["sizes"]["train"] == 4 and summary["steps"] == 2
    assert summary["class_names"] == ["absent", "present"] and 0 <= summary["val_accuracy"] <= 1
    log = [json.loads(line) for line in (work / "finetune" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and {"val_acc", "val_loss", "train_loss"} <= set(log[0])
    bench.load_classifier(work / "finetune" / "classifier.safetensors")  # the state dict fits a 2-class Lite0
    for name in ("reciprocam", "tame"):
        manifest = json.loads((work / name / "manifest.json").read_text())
        assert manifest["preprocess"]["input_size"] == [SIZE, SIZE]
    tame = json.loads((work / "tame" / "manifest.json").read_text())
    assert tame["backbone"]["weights"] == "external" and tame["training"]["data"]["split"]["sizes"]["test"] == 4


def test_evaluate_writes_results_with_intervals(bench, trained, tmp_path, capsys):
    work = trained["work"]
    out = tmp_path / "out"
    argv = ["evaluate", "--split", str(trained["split"]), "--data-root", str(trained["data"]), "--work", str(work),
            "--method", f"ala={work / 'reciprocam'}", "--baselines", "gradcam,tame", "--out", str(out),
            "--model-backend", "torch", "--resamples", "200",
            "--overlays", "2", "--no-progress"]  # fmt: skip
    assert bench.main(argv) == 0
    assert "miou@otsu" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"results.csv", "results.json", "miou.png", "overlays.jpg"}
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["methods"]) == ["ala", "gradcam", "tame"]  # the command line's first, then the baselines
    assert doc["n_test_images"] == 4 and doc["n_masked_images"] == 2
    assert f"{SIZE}x{SIZE} centre crop the classifier sees" in doc["evaluated_on"]
    assert set(doc["binarisation"]) >= {"mean", "0.5", "otsu"} and doc["insertion_deletion"]["preset"] == "keio"
    for name, m in doc["methods"].items():
        assert m["n_test"] == 4 and m["n_masked"] == 2
        for key, e in m["metrics"].items():
            lo, hi = e["ci95"]
            assert lo - 1e-9 <= e["value"] <= hi + 1e-9, (name, key)
            assert e["n_images"] == (4 if key == "accuracy" else 2)
        if name != "gradcam":
            for rule in ("mean", "0.5", "otsu"):
                e, ref = m["metrics"][f"miou@{rule}"], doc["methods"]["gradcam"]["metrics"][f"miou@{rule}"]
                diff = e["diff_vs_gradcam"]
                assert diff["value"] == pytest.approx(e["value"] - ref["value"])
                assert diff["ci95"][0] - 1e-9 <= diff["value"] <= diff["ci95"][1] + 1e-9
    accuracy = {n: m["metrics"]["accuracy"]["value"] for n, m in doc["methods"].items()}
    assert len(set(accuracy.values())) == 1  # every baseline runs the same fine-tuned classifier
    assert doc["methods"]["tame"]["training"]["steps"] == 1
    assert doc["methods"]["ala"]["model_fn"].startswith("the artifact's backbone")  # ReciproCAM's logits are its
    assert doc["target"]["method"] == "ala" and doc["target"]["rule"] == "mean"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 3 * 7 and rows[0]["method"] == "ala"
    assert {(r["metric"], r["preset"]) for r in rows} == {("accuracy", "top1"), ("miou", "mean"), ("miou", "0.5"),
                                                          ("miou", "otsu"), ("insertion", "keio"),
                                                          ("deletion", "keio"), ("id", "keio")}  # fmt: skip
    with Image.open(out / "overlays.jpg") as sheet:
        assert sheet.size == (224 * 5, 20 + 2 * (224 + 16))  # photo, mask, three methods; two rows

    # a second run reuses the cached per-method results and gives the same numbers
    assert bench.main([*argv, "--out", str(tmp_path / "again"), "--overlays", "0"]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["methods"]["ala"]["metrics"] == doc["methods"]["ala"]["metrics"]
    assert not (tmp_path / "again" / "overlays.jpg").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ala", "expected NAME=ARTIFACT_DIR"),
        ("=somewhere", "expected NAME=ARTIFACT_DIR"),
        ("a b=x", "may hold only letters"),
        ("gradcam=x", "is the Grad-CAM baseline"),
        ("ala={missing}", "is not a folder"),
        ("ala={empty}", "it is not an artifact folder"),
    ],
)
def test_bad_method_spec_is_a_clear_error(bench, tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    spec = spec.format(missing=tmp_path / "nope", empty=tmp_path / "empty")
    with pytest.raises(InputError, match=message):
        bench.parse_method(spec)


def test_cli_reports_bad_methods_and_missing_work(bench, fake, tmp_path, capsys):
    common = ["evaluate", "--split", str(fake["split"]), "--data-root", str(fake["data"]), "--out", str(tmp_path)]
    assert bench.main([*common, "--work", str(tmp_path / "w"), "--method", f"ala={tmp_path / 'nope'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert bench.main([*common, "--work", str(tmp_path / "w"), "--method", "x=a", "--method", "x=b"]) == 2
    assert "given more than once: ['x']" in capsys.readouterr().err
    assert bench.main([*common, "--work", str(tmp_path / "w"), "--baselines", "gradcam"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert bench.main([*common, "--work", str(tmp_path / "w"), "--baselines", "scorecam"]) == 2
    assert "unknown baseline" in capsys.readouterr().err
    assert bench.main(["baselines", "--split", str(fake["split"]), "--work", str(tmp_path / "w")]) == 2
    assert "run the finetune step first" in capsys.readouterr().err
