"""ALA training end to end (tiny ViT and tiny CNN encoders: two epochs so that AEA flips once, artifact, ONNX,
parity with torch), AEA's frozen epochs, early stopping, splits, bad input (training/ala.py, training/core.py,
training/splits.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from training import ala, core, splits  # noqa: E402
from training.ala import ALAConfig, ALATraining  # noqa: E402
from training.core import TrainingError  # noqa: E402
from training.splits import SplitError  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
TINY = {"dim": 16, "depth": 4, "heads": 2, "pb_channels": 8}
ENCODERS = {
    # a 4-block ViT made for 32 px, run at 48 px: the position embedding is interpolated
    "vit": {"backbone": "timm/vit_tiny_patch16_224", "backbone_kwargs": {"img_size": 32, "depth": 4}, "input_size": 48},
    "cnn": {"backbone": "timm/tf_efficientnet_lite0", "input_size": 64},
}


def make_class_folders(root: Path, per_class: int = 6, classes=("absent", "present"), seed: int = 0) -> Path:
    """A class-per-folder dataset whose classes differ in colour (so that something is learnable)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(0, 120, (12, 12, 3), dtype=np.uint8)
            base[..., c % 3] += 120
            Image.fromarray(base).resize((56 + 2 * i, 64), Image.BILINEAR).save(root / name / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("ala") / "data")


def config(tmp_path: Path, data: Path, encoder: str = "vit", **kw) -> ALAConfig:
    base = dict(
        out=str(tmp_path / "art"), source="random", num_classes=10, data="folder", data_root=str(data), val_size=4,
        epochs=2, batch_size=4, lr=1e-3, seed=0, workdir=str(tmp_path / "work"), progress=False, command="pytest",
        patience=None, **TINY, **ENCODERS[encoder],
    )  # fmt: skip
    base.update(kw)
    return ALAConfig(**base)


def quiet(_s: str) -> None:
    pass


# --------------------------------------------------------------------------------------------------------------------
# end to end: two epochs (AEA flips once), artifact, ONNX, parity
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["vit", "cnn"])
def test_two_epochs_then_artifact_then_onnx_parity(tmp_path, data, encoder):
    from engine.api import Engine
    from engine.artifact import load_artifact
    from engine.export import export_artifact
    from engine.graph import graph_from_artifact

    cfg = config(tmp_path, data, encoder)
    art = ala.train(cfg, echo=quiet)
    log = [json.loads(line) for line in (tmp_path / "work" / core.LOG_FILE).read_text().splitlines()]
    assert [r["train"]["alpha_epoch"] for r in log] == [1.0, 0.0]  # epoch 1 with alpha, epoch 2 with h_ALA = 1
    assert "ce_ala" in log[0]["train"] and "ce_ala" not in log[1]["train"]
    t = art.manifest["training"]
    assert art.method == "ala" and t["aea"] is True and t["loss"]["lambda"] == pytest.approx(1.0)
    assert art.class_names == ["absent", "present"] and art.explainer.options["num_classes"] == 2
    assert t["init"]["lora_targets"] and t["init"]["parameters"]["lora"] > 0
    assert "early_stopping" not in t  # patience=None here; with it, the run's record (see the next test)
    graph = graph_from_artifact(load_artifact(art.path))
    size = ENCODERS[encoder]["input_size"]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, sal = graph(x)
    assert logits.shape == (3, 2) and sal.shape == (3, size // 16, size // 16)
    from safetensors.torch import load_file

    ckpt = load_file(str(tmp_path / "work" / core.CHECKPOINT_TENSORS))
    lora_b = [v for k, v in ckpt.items() if k.startswith("explainer.backbone.lora.") and k.endswith("lora_b")]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # the LoRA deltas trained and were checkpointed
    if not HAS_ORT:
        pytest.skip("onnxruntime is not installed")
    exported = export_artifact(load_artifact(art.path), tmp_path / "onnx", ("onnx",))
    import onnx

    model = onnx.load(str(exported.file("model.onnx")))
    assert [i.name for i in model.graph.input] == ["image", "target"]
    assert not any("lora" in (init.name or "").lower() for init in model.graph.initializer)  # merged at export
    images = sorted((data / "present").glob("*.png"))[:3]
    want = Engine.load(art.path, backend="torch").explain(images)
    runtimes = ["onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        export_artifact(load_artifact(exported.path), tmp_path / "ov", ("openvino",))
        runtimes.append("openvino")
    for backend in runtimes:
        src = exported.path if backend == "onnxruntime" else tmp_path / "ov"
        for a, b in zip(want, Engine.load(src, backend=backend).explain(images), strict=True):
            assert a.class_id == b.class_id and b.method == "ala"
            assert abs(a.score - b.score) <= 1e-4
            assert np.abs(a.saliency - b.saliency).max() <= 1e-4


def test_aea_even_epoch_leaves_ala_bit_identical_and_trains_the_rest(tmp_path, data):
    cfg = config(tmp_path, data, "vit", epochs=2)
    method = ALATraining(cfg.aea, cfg.lam)
    split = core.make_split(cfg)
    method.check_data(split, cfg)
    graph, _, pre = core.build_training_graph(method, cfg)
    params = core.freeze_backbone(method, graph)
    opt, _ = method.optimizer(params, cfg, 10)
    loader = core.Loader(pre, 2)
    x = loader.load(split.train[:4])
    y = split.label_tensor(split.train[:4])
    gen = torch.Generator().manual_seed(0)
    ctx = core.StepContext(gen, torch.tensor(pre.mean), torch.tensor(pre.std), 0, y)

    def snapshot(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    method.on_epoch_start(graph, 0)  # odd epoch: everything trains
    ala0, pb0 = snapshot(graph.explainer.ala), snapshot(graph.explainer.pb)
    core.train_step(method, graph, x, opt, ctx)
    ala1, pb1 = snapshot(graph.explainer.ala), snapshot(graph.explainer.pb)
    assert any(not torch.equal(ala0[k], ala1[k]) for k in ala0) and any(not torch.equal(pb0[k], pb1[k]) for k in pb0)
    lora1 = [p.detach().clone() for p in graph.backbone.delta_parameters()]
    method.on_epoch_start(graph, 1)  # even epoch: h_ALA = 1, ALA frozen
    for _ in range(2):
        core.train_step(method, graph, x, opt, ctx)
    ala2, pb2 = snapshot(graph.explainer.ala), snapshot(graph.explainer.pb)
    assert all(torch.equal(ala1[k], ala2[k]) for k in ala1)  # parameters and BatchNorm buffers, bit for bit
    assert any(not torch.equal(pb1[k], pb2[k]) for k in pb1)
    lora2 = list(graph.backbone.delta_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(lora1, lora2, strict=True))  # LoRA trains with the PB
    # --no-aea: the second epoch is an alpha epoch as well, and ALA moves
    assert ALATraining.alpha_epoch(1, aea=False) and not ALATraining.alpha_epoch(1, aea=True)
    method.aea = False
    method.on_epoch_start(graph, 1)
    core.train_step(method, graph, x, opt, ctx)
    ala3 = snapshot(graph.explainer.ala)
    assert any(not torch.equal(ala2[k], ala3[k]) for k in ala2)


def test_no_aea_trains_alpha_every_epoch(tmp_path, data):
    art = ala.train(config(tmp_path, data, "vit", aea=False), echo=quiet)
    log = [json.loads(line) for line in (tmp_path / "work" / core.LOG_FILE).read_text().splitlines()]
    assert [r["train"]["alpha_epoch"] for r in log] == [1.0, 1.0]
    assert art.manifest["training"]["aea"] is False


# --------------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------------


def test_labels_outside_the_class_count_and_unlabelled_data_fail_before_work(tmp_path, data):
    with pytest.raises(TrainingError, match=r"labels \[1\] are outside the 1 classes"):
        ala.train(config(tmp_path, data, classes=1), echo=quiet)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(data.rglob("*.png"))[:6]:
        (flat / p.name).write_bytes(p.read_bytes())
    with pytest.raises(TrainingError, match="ground-truth labels"):
        ala.train(config(tmp_path, flat), echo=quiet)
    assert not (tmp_path / "art").exists() and not (tmp_path / "work").exists()


def test_resume_with_a_changed_config_is_refused_and_the_same_one_continues(tmp_path, data):
    cfg = config(tmp_path, data, epochs=2, max_steps=1)
    ala.train(cfg, echo=quiet)
    with pytest.raises(TrainingError, match=r"differs from the checkpoint .*'lam'"):
        ala.train(config(tmp_path, data, epochs=2, resume=True, lam=0.5), echo=quiet)
    with pytest.raises(TrainingError, match=r"differs from the checkpoint .*'taps'"):
        ala.train(config(tmp_path, data, epochs=2, resume=True, taps="none"), echo=quiet)
    lines = []
    ala.train(config(tmp_path, data, epochs=2, resume=True), echo=lines.append)
    assert lines[0].startswith("resumed from") and json.loads(lines[1])["epoch"] == 2


def test_early_stopping_writes_the_best_epochs_head_and_records_it(tmp_path, data):
    art = ala.train(config(tmp_path, data, epochs=3, patience=1, lr=5e-2), echo=quiet)
    log = [json.loads(line) for line in (tmp_path / "work" / core.LOG_FILE).read_text().splitlines()]
    rec = art.manifest["training"]["early_stopping"]
    best = max(log, key=lambda r: r["score"])
    assert rec["patience"] == 1 and rec["best_epoch"] == best["epoch"] and rec["best_val"] == best["val"]
    assert art.manifest["training"]["final_val"] == best["val"]  # the written head is the best epoch's


def test_config_checks():
    with pytest.raises(Exception, match="preset must be one of"):
        ALAConfig(backbone="timm/x", out="o", preset="birds")
    with pytest.raises(Exception, match="lambda must be >= 0"):
        ALAConfig(backbone="timm/x", out="o", lam=-1)
    assert ALAConfig(backbone="timm/x", out="o").input_size == 384  # the preset's (the paper's) resolution
    c = ALAConfig(backbone="timm/x", out="o")
    assert (c.lr, c.weight_decay, c.batch_size, c.patience, c.crop_scale) == (5e-5, 1e-4, 8, 5, 0.75)


# --------------------------------------------------------------------------------------------------------------------
# early stopping, augmentation, splits (training/core.py, training/splits.py)
# --------------------------------------------------------------------------------------------------------------------


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    class G:  # a stand-in graph: its head is the current epoch number
        def __init__(self):
            self.value = 0.0
            self.backbone = None
            self.explainer = self

        def head_state_dict(self, _backbone):
            return {"w": torch.tensor([self.value])}

    stop = core.EarlyStopping(2, lambda v: -v["loss"])
    g = G()
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.6, 0.4], 1):
        g.value = float(epoch)
        stop.update(epoch, {"loss": loss}, g)
        if stop.should_stop():
            break
    assert epoch == 4 and stop.best_epoch == 2 and torch.equal(stop.best_head["w"], torch.tensor([2.0]))
    assert stop.state()["bad_epochs"] == 2
    assert not core.EarlyStopping(None, lambda v: 0.0).update(1, {}, g)


def test_random_crops_are_seeded_and_keep_the_size():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    a = core.random_crops(x, 0.5, torch.Generator().manual_seed(0))
    b = core.random_crops(x, 0.5, torch.Generator().manual_seed(0))
    c = core.random_crops(x, 0.5, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(core.random_crops(x, 1.0, torch.Generator().manual_seed(0)), x)  # scale 1 is the image


def test_stratified_split_keeps_class_balance_and_training_uses_it(tmp_path):
    from engine.data import open_dataset

    root = make_class_folders(tmp_path / "d", per_class=10)
    ds = open_dataset("folder", root)
    doc = splits.stratified_split(ds, val=0.2, test=0.3, seed=1)
    assert doc["counts"] == {p: {"0": n, "1": n} for p, n in (("train", 5), ("val", 2), ("test", 3))}
    names = doc["train"] + doc["val"] + doc["test"]
    assert len(set(names)) == 20
    assert splits.stratified_split(ds, val=0.2, test=0.3, seed=1) == doc  # seeded
    assert splits.stratified_split(ds, val=0.2, test=0.3, seed=2)["test"] != doc["test"]
    path = splits.write_split(doc, tmp_path / "split.json")
    cfg = config(tmp_path, root, split=str(path))
    split = core.make_split(cfg)
    assert sorted(split.val_names()) == sorted(doc["val"]) and len(split.train) == 10
    test_paths = {root / n for n in doc["test"]}
    assert not test_paths & set(split.train + split.val)  # the test part is never read
    assert "split_sha256" in cfg.identity()


def test_bad_splits_are_refused(tmp_path):
    from engine.data import open_dataset

    root = make_class_folders(tmp_path / "d", per_class=3)
    ds = open_dataset("folder", root)
    with pytest.raises(Exception, match="leave none to train"):
        splits.stratified_split(ds, val=0.5, test=0.5)
    doc = splits.stratified_split(ds, val=1, test=1)
    overlap = dict(doc, test=doc["test"] + doc["train"][:1])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(overlap))
    with pytest.raises(SplitError, match="in both"):
        splits.read_split(bad)
    bad.write_text("{not json")
    with pytest.raises(SplitError, match="not a readable split file"):
        splits.read_split(bad)
    other = dict(doc, train=[*doc["train"], "absent/ghost.png"])
    with pytest.raises(SplitError, match="lacks"):
        splits.resolve_split(other, ds)


def tiny_cub(root: Path, per_class: int = 12) -> Path:
    """CUB_200_2011's layout with 2 classes: a third of each class is in the official test split."""
    images, labels, split = [], [], []
    image_id = 0
    for class_id, class_dir in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross"], 1):
        (root / "images" / class_dir).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            image_id += 1
            rel = f"{class_dir}/bird_{image_id:04d}.jpg"
            Image.new("RGB", (10, 8), (40 * class_id, 90, 20)).save(root / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {0 if k % 3 == 0 else 1}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (root / name).write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    return root


def test_cub_papers_split_takes_the_official_test_and_a_total_val_count(tmp_path):
    from engine.data import open_dataset

    ds = open_dataset("cub", tiny_cub(tmp_path / "CUB_200_2011"))
    doc = splits.stratified_split(ds, val=5, test_split="test", seed=0)  # the paper: val=994 of the 5,994
    official = {s.path.relative_to(ds.root).as_posix() for s in ds if s.meta["split"] == "test"}
    assert set(doc["test"]) == official and len(official) == 8
    assert len(doc["val"]) == 5 and len(doc["train"]) == 11  # 16 official training images: 11 / 5
    assert sorted(doc["counts"]["val"].values()) == [2, 3]  # spread over the classes by their sizes
    with pytest.raises(Exception, match="has no split 'val'"):
        splits.stratified_split(ds, val=5, test_split="val")


def test_command_line_maps_to_the_config_and_errors_exit_2(tmp_path, data, capsys):
    sys.path.insert(0, str(ROOT / "training"))
    import train_ala

    argv = ["--backbone", "timm/vit_tiny_patch16_224", "--source", "random", "--data", "folder", "--data-root",
            str(data), "--val-size", "4", "--taps", "0,2", "--no-aea", "--lam", "0.5", "--crop-scale", "1",
            "--patience", "0", "--input-size", "48", "--out", str(tmp_path / "a")]  # fmt: skip
    cfg = train_ala.config_from_args(train_ala.parse_args(argv), argv)
    assert (cfg.taps, cfg.aea, cfg.lam, cfg.crop_scale, cfg.patience, cfg.input_size) == (
        [0, 2],
        False,
        0.5,
        None,
        None,
        48,
    )
    assert cfg.command.startswith("python training/train_ala.py --backbone")
    assert train_ala.main([*argv, "--classes", "1"]) == 2
    assert "outside the 1 classes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_ala.parse_args([*argv, "--taps", "a,b"])


def test_artifact_class_names_come_from_the_dataset_when_the_class_counts_match(tmp_path):
    split = core.Split(tmp_path, [], [], {}, ["absent", "present"])
    method = core.TrainingMethod()
    assert method.class_names(config(tmp_path, tmp_path, num_classes=2), split) == ["absent", "present"]
    assert method.class_names(config(tmp_path, tmp_path, num_classes=3), split) is None
    assert len(method.class_names(config(tmp_path, tmp_path, num_classes=1000), split)) == 1000
