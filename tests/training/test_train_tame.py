"""T-TAME training: frozen backbone, loss terms, end to end to ONNX, resume (also of a checkpoint written before the
training package), bad input (training/core.py + training/tame.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.errors import UnsupportedModelError  # noqa: E402
from training import core, tame  # noqa: E402
from training.core import TrainingError  # noqa: E402
from training.tame import LossWeights, TameConfig  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
BACKBONE = "timm/tf_efficientnet_lite0"
SIZE = 64
NUM_CLASSES = 10
METHOD = tame.TTAMETraining()


def make_images(folder: Path, n: int = 7, seed: int = 0) -> Path:
    """Small random-textured RGB images (various sizes) in a flat folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 60 + 4 * i, 72 - 2 * i
        base = rng.integers(0, 255, (h // 4, w // 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        img.save(folder / f"img_{i:02d}.png")
    return folder


def config(tmp_path: Path, data: Path, **kw) -> TameConfig:
    base = dict(
        backbone=BACKBONE, out=str(tmp_path / "art"), source="random", num_classes=NUM_CLASSES, data="folder",
        data_root=str(data), val_size=2, epochs=2, batch_size=3, lr=1e-2, seed=0, input_size=SIZE,
        workdir=str(tmp_path / "work"), progress=False, command="pytest",
    )  # fmt: skip
    base.update(kw)
    return TameConfig(**base)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("data") / "imgs")


# --------------------------------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------------------------------


def test_loss_terms_match_hand_computation():
    psi = torch.tensor([[[[0.25, 0.5], [1.0, 0.5]]]])  # one 2x2 map: S = 4
    w = LossWeights(lambda1=1.5, lambda2=2.0, lambda3=0.005, lambda4=0.3)
    e = (0.25**0.3 + 0.5**0.3 + 1.0**0.3 + 0.5**0.3) / 4  # Eq. 16
    # Eq. 17: row differences (1-0.25)^2 + (0.5-0.5)^2, column differences (0.5-0.25)^2 + (0.5-1)^2, over 2S
    v = ((0.75**2 + 0.0) + (0.25**2 + 0.5**2)) / (2 * 4)
    assert tame.area_term(psi, 0.3).item() == pytest.approx(e, rel=1e-6)
    assert tame.variation_term(psi).item() == pytest.approx(v, rel=1e-6)
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    y = torch.tensor([0])
    ce = -torch.log_softmax(logits, -1)[0, 0].item()
    loss, terms = tame.tame_loss(logits, y, psi, w)
    assert terms["ce"] == pytest.approx(ce, rel=1e-6)
    assert terms["tv"] == pytest.approx(e + 0.005 * v, rel=1e-6)  # Eq. 15
    assert loss.item() == pytest.approx(1.5 * ce + 2.0 * (e + 0.005 * v), rel=1e-6)  # Eq. 11


def test_psi_holds_the_predicted_map_first_then_other_classes():
    maps = torch.rand(4, 6, 3, 3)
    y = torch.tensor([0, 5, 2, 2])
    psi = tame.select_psi(maps, y, torch.Generator().manual_seed(0))
    assert psi.shape == (4, 4, 3, 3)
    for b in range(4):
        assert torch.equal(psi[b, 0], maps[b, y[b]])
        for j in range(1, 4):  # each other map is some class's map other than the predicted one
            matches = [c for c in range(6) if torch.equal(psi[b, j], maps[b, c])]
            assert matches and y[b].item() not in matches


def test_masking_follows_the_backbone_kind():
    x = torch.randn(1, 3, 4, 4)
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    e = torch.full((1, 2, 2), 0.5)
    raw = x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
    cnn = tame.mask_images(x, e, mean, std, "cnn")
    torch.testing.assert_close(cnn, (0.5 * raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))  # Eq. 13
    torch.testing.assert_close(tame.mask_images(x, e, mean, std, "vit"), 0.5 * x)  # Eq. 14


# --------------------------------------------------------------------------------------------------------------------
# frozen backbone
# --------------------------------------------------------------------------------------------------------------------


def test_backbone_stays_frozen_while_the_explainer_learns(tmp_path, images):
    cfg = config(tmp_path, images)
    graph, _, pre = core.build_training_graph(METHOD, cfg)
    params = core.freeze_backbone(METHOD, graph)
    backbone_before = {k: v.clone() for k, v in graph.backbone.state_dict().items()}
    explainer_before = {k: v.clone() for k, v in graph.explainer.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x = torch.randn(3, 3, SIZE, SIZE)
    ctx = core.StepContext(torch.Generator().manual_seed(0), torch.tensor(pre.mean), torch.tensor(pre.std), 0)
    terms = core.train_step(METHOD, graph, x, opt, ctx)
    assert np.isfinite(terms["loss"])
    assert not graph.backbone.training and graph.explainer.training
    assert all(not p.requires_grad for p in graph.backbone.parameters())
    for k, v in graph.backbone.state_dict().items():  # parameters AND buffers (BatchNorm statistics)
        assert torch.equal(v, backbone_before[k]), k
    changed = [k for k, v in graph.explainer.named_parameters() if not torch.equal(v, explainer_before[k])]
    assert changed, "no explainer parameter changed"
    bn_stats = [k for k, v in graph.explainer.state_dict().items() if k.endswith("running_mean")]
    assert bn_stats  # the explainer's own BatchNorms exist (and train)


# --------------------------------------------------------------------------------------------------------------------
# end to end, resume
# --------------------------------------------------------------------------------------------------------------------


def test_end_to_end_artifact_exports_to_onnx_with_parity(tmp_path, images):
    from engine.artifact import load_artifact
    from engine.export import export_artifact
    from engine.graph import graph_from_artifact

    cfg = config(tmp_path, images, max_steps=2)
    lines: list[str] = []
    art = tame.train(cfg, echo=lines.append)
    out = Path(cfg.out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["explainer"]["method"] == "tame"
    assert m["explainer"]["options"]["taps"] == ["blocks.4", "blocks.5", "bn2"]
    assert m["backbone"]["weights"] == "artifact"
    t = m["training"]
    assert t["steps"] == 2 and t["seed"] == 0 and t["command"] == "pytest"
    assert set(t["final_val"]) >= {"ad@15", "ic@15"}
    heldout = json.loads((out / "heldout.json").read_text())
    assert heldout == t["heldout"] and len(heldout) == 2
    log = [json.loads(line) for line in (Path(cfg.workdir) / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 1 and {"loss", "ce", "area", "variation"} <= set(log[0]["train"])
    assert "ad@15" in log[0]["val"]

    # the trained state round-trips through the artifact
    art = load_artifact(out)
    graph = graph_from_artifact(art)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits, sal = graph(x)
    assert sal.shape == (2, 4, 4) and logits.shape == (2, NUM_CLASSES)

    onnx_art = export_artifact(art, tmp_path / "onnx", ("onnx",))
    if not HAS_ORT:
        pytest.skip("onnxruntime not installed: export checked, parity not")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_art.file("model.onnx")), providers=["CPUExecutionProvider"])
    feeds = {"image": x.numpy()}
    if any(i.name == "target" for i in sess.get_inputs()):
        feeds["target"] = np.full((2,), -1, dtype=np.int64)
    o_logits, o_sal = sess.run(["logits", "saliency"], feeds)
    np.testing.assert_allclose(o_logits, logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(o_sal, sal.numpy(), atol=1e-4, rtol=0)


def test_resume_refuses_a_changed_config_and_continues_the_same(tmp_path, images):
    cfg = config(tmp_path, images, max_steps=1, epochs=3)
    tame.train(cfg, echo=lambda s: None)
    doc = json.loads((Path(cfg.workdir) / "checkpoint.json").read_text())
    assert doc["epoch"] == 1 and doc["step"] == 1

    changed = config(
        tmp_path, images, max_steps=1, epochs=3, lr=5e-2, batch_size=2, loss=LossWeights(lambda4=0.5), resume=True
    )
    with pytest.raises(TrainingError, match=r"\['batch_size', 'loss.lambda4', 'lr'\]"):
        tame.train(changed, echo=lambda s: None)
    assert json.loads((Path(cfg.workdir) / "checkpoint.json").read_text())["step"] == 1  # no work was done

    same = config(tmp_path, images, max_steps=1, epochs=3, resume=True)
    lines: list[str] = []
    art = tame.train(same, echo=lines.append)
    doc = json.loads((Path(cfg.workdir) / "checkpoint.json").read_text())
    assert doc["epoch"] == 2 and doc["step"] == 2
    assert any("resumed" in line for line in lines)
    assert art.manifest["training"]["epochs_done"] == 2

    # a new run over an existing checkpoint must say --resume
    with pytest.raises(TrainingError, match="--resume"):
        tame.train(config(tmp_path, images, max_steps=1, epochs=3), echo=lambda s: None)


def test_checkpoint_from_before_the_training_package_resumes_to_the_same_head(tmp_path):
    """A checkpoint written by training/tame_loop.py (db3ff5d, before the training package) after epoch 1 of 2
    resumes here, and epoch 2 gives the head and validation that the old code gave."""
    import shutil

    from safetensors.torch import load_file

    fixture = ROOT / "tests" / "training" / "data" / "tame_checkpoint_v1"
    expected = json.loads((fixture / "expected.json").read_text())
    data = make_images(tmp_path / "imgs")  # the same seeded images the old run trained on
    work = tmp_path / "work"
    work.mkdir()
    for name in ("checkpoint.json", "checkpoint.safetensors"):
        shutil.copy(fixture / name, work / name)
    doc = json.loads((work / "checkpoint.json").read_text())
    doc["config"]["data_root"] = str(data.resolve())  # the old run's images lay elsewhere
    (work / "checkpoint.json").write_text(json.dumps(doc))
    cfg = config(tmp_path, data, taps=["blocks.2", "blocks.3", "blocks.4"], resume=True)
    assert cfg.identity() == doc["config"], "the identity of a T-TAME run is the one the old code wrote"
    lines: list[str] = []
    tame.train(cfg, echo=lines.append)
    assert lines[0].startswith("resumed from") and "after epoch 1 (step 2)" in lines[0]
    head = load_file(str(work / "checkpoint.safetensors"))
    want = load_file(str(fixture / "expected_head_epoch2.safetensors"))
    assert sorted(k for k in head if k.startswith("explainer.")) == sorted(want)
    for k, v in want.items():
        torch.testing.assert_close(head[k], v, atol=1e-6, rtol=1e-5, msg=k)  # bit-identical on the 2-core CI
    final = json.loads((work / "checkpoint.json").read_text())["history"][-1]["val"]
    assert final == pytest.approx(expected["final_val"], abs=1e-3)


def test_checkpoint_restores_optimizer_state(tmp_path, images):
    cfg = config(tmp_path, images, max_steps=2, epochs=1)
    tame.train(cfg, echo=lambda s: None)
    graph, _, _ = core.build_training_graph(METHOD, cfg)
    params = core.freeze_backbone(METHOD, graph)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=2)
    gen = torch.Generator()
    workdir = Path(cfg.workdir)
    doc = core.read_checkpoint_meta(workdir)
    core.load_checkpoint(workdir, doc, graph, opt, sched, gen)
    assert sched.last_epoch == 2
    assert all("momentum_buffer" in opt.state[p] for p in params)


# --------------------------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------------------------


def test_empty_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match="No images"):
        tame.train(config(tmp_path, empty), echo=lambda s: None)


def test_unreadable_image_and_too_large_val_size_fail_before_work(tmp_path, images):
    with pytest.raises(TrainingError, match="--val-size 7 leaves no training images"):
        tame.train(config(tmp_path, images, val_size=7), echo=lambda s: None)
    bad = make_images(tmp_path / "bad", n=3)
    (bad / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(TrainingError, match="broken.jpg"):
        tame.train(config(tmp_path, bad, val_size=1), echo=lambda s: None)
    assert not Path(tmp_path / "work").exists()


def test_missing_taps_raise_unsupported_model(tmp_path, images):
    with pytest.raises(UnsupportedModelError, match="no_such_layer"):
        tame.train(config(tmp_path, images, taps=["blocks.4", "no_such_layer"]), echo=lambda s: None)


def test_cli_help():
    res = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train_tame.py"), "--help"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 0 and "--max-steps" in res.stdout and "--resume" in res.stdout


def test_cli_reports_bad_input_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = [sys.executable, str(ROOT / "training" / "train_tame.py"), "--backbone", BACKBONE, "--source", "random",
           "--data", "folder", "--data-root", str(empty), "--out", str(tmp_path / "art"), "--no-progress"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "No images" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------------------------------------------------
# head-only artifacts (backbone from a weights file), classifier (CAM) initialisation
# --------------------------------------------------------------------------------------------------------------------


def _backbone_file(tmp_path: Path) -> Path:
    """A seeded random Lite0 with 10 classes saved as a classifier weights file (library key names)."""
    from safetensors.torch import save_file

    from engine.backbones import build_backbone
    from engine.config import BackboneConfig
    from engine.testing import perturb_for_tests

    adapter = build_backbone(BackboneConfig("timm", "tf_efficientnet_lite0", NUM_CLASSES, "random"), seed=3)
    perturb_for_tests(adapter, seed=3)
    path = tmp_path / "weights" / "lite0.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in adapter.model.state_dict().items()}, str(path))
    return path


def test_head_only_artifact_names_its_backbone_file_and_refuses_another(tmp_path, images):
    from engine.artifact import HEAD_WEIGHTS, WEIGHTS, load_artifact
    from engine.errors import ArtifactError
    from engine.graph import graph_from_artifact

    wfile = _backbone_file(tmp_path)
    cfg = config(tmp_path, images, source=None, weights=str(wfile), max_steps=1, epochs=1)
    tame.train(cfg, echo=lambda s: None)
    out = Path(cfg.out)
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["files"]) == {HEAD_WEIGHTS, "heldout.json"}  # no backbone copy
    bb = m["backbone"]
    assert bb["weights"] == "external" and bb["weights_file"] == "../weights/lite0.safetensors"
    assert len(bb["weights_sha256"]) == 64

    # the same graph as the one trained: backbone from the file, head from the artifact
    graph = graph_from_artifact(load_artifact(out))
    ref, _, _ = core.build_training_graph(METHOD, cfg)
    from safetensors.torch import load_file

    ref.explainer.load_state_dict(load_file(str(out / HEAD_WEIGHTS)))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        a, b = graph(x), ref.eval()(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    # an export elsewhere keeps the head and still finds the backbone file
    from engine.export import export_artifact

    exported = export_artifact(load_artifact(out), tmp_path / "deeper" / "exported", ("onnx",))
    me = json.loads((tmp_path / "deeper" / "exported" / "manifest.json").read_text())
    assert me["backbone"]["weights_file"] == "../../weights/lite0.safetensors" and HEAD_WEIGHTS in me["files"]
    with torch.no_grad():
        c = graph_from_artifact(load_artifact(exported.path))(x)
    assert torch.equal(a[1], c[1])

    # embedding on request
    cfg2 = config(tmp_path, images, source=None, weights=str(wfile), max_steps=1, epochs=1, embed_backbone=True,
                  out=str(tmp_path / "art2"), workdir=str(tmp_path / "work2"))  # fmt: skip
    tame.train(cfg2, echo=lambda s: None)
    m2 = json.loads((tmp_path / "art2" / "manifest.json").read_text())
    assert m2["backbone"]["weights"] == "artifact" and WEIGHTS in m2["files"] and HEAD_WEIGHTS not in m2["files"]

    # another backbone file at that path: refused by its sha256; a missing one: the path is named
    data = bytearray(wfile.read_bytes())
    data[-1] ^= 1
    wfile.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="not the backbone file this artifact was trained on"):
        graph_from_artifact(load_artifact(out))
    wfile.unlink()
    with pytest.raises(ArtifactError, match="lite0.safetensors, which does not exist"):
        graph_from_artifact(load_artifact(out))


def test_head_that_does_not_fit_is_refused(tmp_path, images):
    from safetensors.torch import load_file, save_file

    from engine.artifact import HEAD_WEIGHTS, load_artifact, sha256_file
    from engine.errors import ArtifactError
    from engine.graph import graph_from_artifact

    wfile = _backbone_file(tmp_path)
    cfg = config(tmp_path, images, source=None, weights=str(wfile), max_steps=1, epochs=1)
    tame.train(cfg, echo=lambda s: None)
    out = Path(cfg.out)
    head = load_file(str(out / HEAD_WEIGHTS))
    head["fusion.weight"] = head["fusion.weight"][:5]  # a head for 5 classes
    save_file(head, str(out / HEAD_WEIGHTS))
    m = json.loads((out / "manifest.json").read_text())
    m["files"][HEAD_WEIGHTS] = sha256_file(out / HEAD_WEIGHTS)  # re-signed: only the shape check can catch it
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="does not fit the tame explainer"):
        graph_from_artifact(load_artifact(out))


def test_classifier_init_starts_from_the_class_activation_map(tmp_path, images):
    import torch.nn.functional as F

    wfile = _backbone_file(tmp_path)
    cfg = config(tmp_path, images, source=None, weights=str(wfile), fusion_init="classifier")
    graph, _, _ = core.build_training_graph(METHOD, cfg)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    rec = tame.init_fusion_from_classifier(graph, x)
    assert rec["tap"] == "bn2" and rec["scale"] > 0
    graph.eval()
    with torch.no_grad():
        logits, sal = graph(x)
        feats = graph.backbone.forward_taps(x, ["bn2"])[1]["bn2"]  # (B, 1280, h, w), post-activation
        w = graph.backbone.model.get_classifier().weight
        cam = torch.einsum("bchw,bc->bhw", feats, w[logits.argmax(1)])
        cam = F.interpolate(cam[:, None], size=sal.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = cam.flatten(1).max(1).values[:, None, None]
        expected = (cam - lo) / (hi - lo)
    torch.testing.assert_close(sal, expected, atol=1e-5, rtol=0)
    # the training sigmoid starts unsaturated: the predicted map is standardised on the probe batch
    graph.train()
    graph.backbone.eval()
    with torch.no_grad():
        raw = graph.explainer.maps_all(graph.backbone, x)[1][torch.arange(4), logits.argmax(1)]
    assert abs(float(raw.mean())) < 0.05 and abs(float(raw.std()) - 1.0) < 0.05


def test_classifier_init_refuses_a_backbone_without_a_pooled_tap(tmp_path, images):
    cfg = config(tmp_path, images, taps=["blocks.4", "blocks.5", "blocks.6"], fusion_init="classifier")
    graph, _, _ = core.build_training_graph(METHOD, cfg)
    with pytest.raises(TrainingError, match="fusion_init='classifier' needs a tap"):
        tame.init_fusion_from_classifier(graph, torch.randn(2, 3, SIZE, SIZE))
    with pytest.raises(Exception, match="fusion_init must be one of"):
        config(tmp_path, images, fusion_init="cam")


def test_builtin_tame_head_records_a_reproducible_disjoint_held_out_split(shared_data):
    from engine.artifact import load_artifact

    art = load_artifact("tame-efficientnet_lite0")
    t = art.manifest["training"]
    heldout = json.loads(art.file("heldout.json").read_text())
    assert heldout == t["heldout"] and len(heldout) >= 200 and len(set(heldout)) == len(heldout)
    assert art.manifest["backbone"]["weights"] == "package" and t["init"]["fusion_init"] == "classifier"
    # the same config draws the same split again; training and held-out images are disjoint
    cfg = TameConfig(
        backbone="timm/tf_efficientnet_lite0", out=str(shared_data / "unused"), data=t["data"]["dataset"],
        data_root=str(shared_data / "imagenet-sample"), val_size=t["data"]["val_images"], seed=t["seed"],
    )  # fmt: skip
    split = core.make_split(cfg)
    assert split.val_names() == heldout
    from engine.data import image_name

    train_names = {image_name(p, split.root) for p in split.train}
    assert len(train_names) == t["data"]["train_images"] and not train_names & set(heldout)


def test_mobilenet_v2_head_reads_the_shared_backbone_file(shared_data, example_images):
    from engine import Engine
    from engine.artifact import load_artifact

    weights = shared_data.parent / "weights" / "mobilenet_v2_imagenet_fused.safetensors"
    if not weights.is_file():
        pytest.skip("../shared/weights is not present")
    art = load_artifact(ROOT / "artifacts" / "tame-mobilenet_v2")
    bb = art.manifest["backbone"]
    assert bb["weights"] == "external" and bb["kwargs"] == {"fused": True}
    assert len(json.loads(art.file("heldout.json").read_text())) >= 200
    wolf = next(p for p in example_images if p.stem == "wolf")
    exp = Engine.load(art, backend="torch").explain(wolf)
    assert exp.method == "tame" and exp.saliency.shape == (400, 400)
    assert exp.class_name in ("timber wolf", "white wolf", "grey wolf", "coyote", "Eskimo dog", "malamute")
