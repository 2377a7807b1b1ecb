"""Engine API on the embedded default (EfficientNet-Lite0 with real weights + ReciproCAM), and its input checks."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine import Engine, Explanation, ImageDecodeError, InputError


@pytest.fixture(scope="module")
def engine():
    return Engine.load(backend="torch")


def test_explain_one_image_every_input_form(engine, example_images):
    wolf = next(p for p in example_images if p.stem == "wolf")
    by_path = engine.explain(wolf)
    assert isinstance(by_path, Explanation)
    assert by_path.class_name in ("timber wolf", "white wolf", "grey wolf", "coyote")
    assert by_path.saliency.shape == (400, 400) and by_path.saliency.dtype == np.float32
    assert by_path.saliency.min() >= 0.0 and by_path.saliency.max() <= 1.0 and by_path.saliency.max() > 0.9
    assert by_path.target == by_path.class_id and by_path.topk[0][0] == by_path.class_id
    assert by_path.score == pytest.approx(by_path.topk[0][2]) and 0 < by_path.score <= 1
    assert set(by_path.timings) == {"decode_ms", "preprocess_ms", "postprocess_ms", "batch_infer_ms", "batch_size"}
    pil = Image.open(wolf)
    for other in (wolf.read_bytes(), pil, np.asarray(pil.convert("RGB")), str(wolf)):
        exp = engine.explain(other)
        assert exp.class_id == by_path.class_id
        np.testing.assert_allclose(exp.saliency, by_path.saliency, atol=1e-6)
    overlay = by_path.overlay()
    assert overlay.size == (400, 400) and overlay.mode == "RGB"


def test_explain_list_is_batched_and_matches_single(engine, example_images):
    many = engine.explain(example_images[:3])
    assert isinstance(many, list) and len(many) == 3
    assert all(e.timings["batch_size"] == 3 for e in many)
    single = engine.explain(example_images[1])
    np.testing.assert_allclose(many[1].saliency, single.saliency, atol=1e-5)
    assert engine.explain([]) == []


def test_explain_another_target(engine, example_images):
    cat = next(p for p in example_images if p.stem == "egyptian_cat")
    pred = engine.explain(cat)
    other = engine.explain(cat, target=950)  # orange
    assert other.target == 950 and other.class_id == pred.class_id
    assert np.abs(other.saliency - pred.saliency).max() > 0.05
    with pytest.raises(InputError, match="out of range"):
        engine.explain(cat, target=1000)
    with pytest.raises(InputError, match="one per image"):
        engine.explain([cat, cat], target=[1, 2, 3])


def test_bad_images_raise_clear_errors(engine, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        engine.explain(empty)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, "JPEG")
    with pytest.raises(ImageDecodeError, match="(?i)truncated"):
        engine.explain(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InputError):
        engine.explain(np.zeros((10, 10, 3), dtype=np.float32))


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        (np.full((1, 3, 224, 224), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((3, 224, 224), dtype=np.float32), "batch dimension"),
        (np.zeros((1, 3, 112, 112), dtype=np.float32), r"\(B, 3, 224, 224\)"),
        (np.zeros((1, 1, 224, 224), dtype=np.float32), r"\(B, 3, 224, 224\)"),
        (np.zeros((1, 3, 224, 224), dtype=np.uint8), "float32"),
        ([[1.0]], "numpy array"),
    ],
)
def test_backend_input_checks(engine, batch, match):
    with pytest.raises(InputError, match=match):
        engine.backend.infer(batch)


def test_backend_target_checks(engine):
    x = np.zeros((2, 3, 224, 224), dtype=np.float32)
    with pytest.raises(InputError, match="out of range"):
        engine.backend.infer(x, np.array([-2, 0]))
    with pytest.raises(InputError, match="2 integers"):
        engine.backend.infer(x, np.array([0.5, 1.0]))
    logits, sal = engine.backend.infer(x, np.array([3, -1]))
    assert logits.shape == (2, 1000) and sal.shape == (2, 7, 7)


def test_import_engine_loads_no_runtime():
    """``import engine`` (and the CLI's parser, which reads the backend registry) loads no runtime and not even torch,
    so ``--help`` and error messages come fast."""
    code = (
        "import sys, engine, engine.cli; engine.cli.build_parser(); "
        "bad = [m for m in ('onnxruntime', 'openvino', 'tensorrt', 'timm', 'open_clip', 'torch') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_builtin_artifacts_resolve_by_name_and_explain(example_images):
    from engine.artifact import DEFAULT_BUILTIN, builtin_names, default_artifact_path, load_artifact
    from engine.errors import ArtifactError

    names = builtin_names()
    assert DEFAULT_BUILTIN in names and {"reciprocam-efficientnet_lite0", "tame-efficientnet_lite0"} <= set(names)
    assert load_artifact("default").path == default_artifact_path()
    wolf = next(p for p in example_images if p.stem == "wolf")
    for name in names:
        art = load_artifact(name)  # verifies every file's sha256
        exp = Engine.load(name, backend="torch").explain(wolf)
        assert exp.method == art.method
        assert exp.class_name in ("timber wolf", "white wolf", "grey wolf", "coyote"), name
        assert exp.saliency.max() > 0.99 and exp.saliency.min() < 0.01
    with pytest.raises(ArtifactError, match="built-in artifact"):
        load_artifact("no-such-artifact")
