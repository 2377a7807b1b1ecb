"""Engine options a new user reaches for: the whole photo (resize_mode), on_error="skip", targets by name, honest
timings, reduced decoding of huge JPEGs. On the embedded default (EfficientNet-Lite0, real weights)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine import Engine, Explanation, FailedExplanation, ImageDecodeError, InputError


@pytest.fixture(scope="module")
def engine():
    return Engine.load(backend="torch")


@pytest.fixture()
def portrait(example_images):
    return next(p for p in example_images if p.stem == "golden_retriever")  # 300 x 500


def test_letterbox_explains_the_whole_photo_and_crop_draws_its_box(engine, portrait):
    exp = Engine(engine.artifact, engine.backend, resize_mode="letterbox").explain(portrait)
    assert exp.resize_mode == "letterbox" and exp.to_dict()["resize_mode"] == "letterbox"
    assert exp.saliency.shape == (500, 300)
    # the default is the artifact's own transform: the built-ins' centre crop (the README's measured reason)
    crop = engine.explain(portrait)
    assert crop.resize_mode == "crop" and crop.to_dict()["crop_box"] == list(crop.crop_box)
    left, top, right, bottom = crop.crop_box
    assert top > 50 and bottom < 450  # crop mode: the top and bottom bands were not seen ...
    assert crop.saliency[: int(top) - 1].max() == 0.0 and crop.saliency[int(bottom) + 1 :].max() == 0.0
    outside = np.concatenate([exp.saliency[: int(top) - 1].ravel(), exp.saliency[int(bottom) + 1 :].ravel()])
    assert (outside > 0.01).mean() > 0.5  # ... letterbox maps them
    # crop mode draws the box it saw on the overlay; letterbox tints the whole photo
    pixels = np.asarray(crop.overlay())
    assert (pixels[int(round(top)), int(left) + 5 : int(right) - 5] == 255).all()
    assert not (np.asarray(exp.overlay())[0] == np.asarray(exp.image)[0]).all()


def test_resize_mode_is_checked(engine):
    with pytest.raises(InputError, match="letterbox"):
        Engine(engine.artifact, engine.backend, resize_mode="pad")
    art = Engine(engine.artifact, engine.backend, resize_mode="artifact")
    assert art.preprocessor.config.resize_mode == engine.artifact.preprocess.resize_mode == "crop"


def test_on_error_skip_keeps_the_good_results(engine, example_images):
    good = [str(p) for p in example_images[:2]]
    broken = b"\xff\xd8\xff\xe0 not a jpeg"
    with pytest.raises(ImageDecodeError):
        engine.explain([good[0], broken, good[1]])
    results = engine.explain([good[0], broken, "/no/such/photo.jpg", good[1]], on_error="skip")
    assert [r.ok for r in results] == [True, False, False, True]
    assert isinstance(results[1], FailedExplanation) and results[1].kind == "ImageDecodeError"
    assert results[2].source == "/no/such/photo.jpg" and "not found" in results[2].error
    assert results[2].to_dict() == {
        "source": "/no/such/photo.jpg",
        "error": results[2].error,
        "error_kind": "ImageDecodeError",
    }
    alone = engine.explain(good)  # the good ones are exactly what they are without the bad ones
    for got, ref in zip((results[0], results[3]), alone, strict=True):
        assert isinstance(got, Explanation) and got.class_id == ref.class_id
        np.testing.assert_allclose(got.saliency_lowres, ref.saliency_lowres, atol=1e-6)
    one = engine.explain(broken, on_error="skip")
    assert isinstance(one, FailedExplanation)
    with pytest.raises(InputError, match="'raise' or 'skip'"):
        engine.explain(good, on_error="ignore")


def test_targets_by_name_any_case(engine, portrait):
    by_name = engine.explain(portrait, target="Golden Retriever")
    assert by_name.target == 207 and by_name.target_name == "golden retriever"
    by_id = engine.explain(portrait, target=207)
    np.testing.assert_allclose(by_name.saliency_lowres, by_id.saliency_lowres, atol=1e-6)
    mixed = engine.explain([portrait, portrait], target=["orange", None])
    assert mixed[0].target == 950 and mixed[0].target_name == "orange"
    assert 0.0 < mixed[0].target_score < mixed[0].score  # the target's probability, beside the prediction's
    assert mixed[1].target == mixed[1].class_id and mixed[1].target_score == pytest.approx(mixed[1].score)
    with pytest.raises(InputError) as info:
        engine.explain(portrait, target="golden retriver")
    assert "'golden retriever'" in str(info.value) and "xai-engine info" in str(info.value)
    assert "--classes" in str(info.value)
    with pytest.raises(InputError, match="not a class name"):
        engine.explain(portrait, target="zzzz")


def test_timings_are_per_image_with_the_batch_time_named_as_such(engine, example_images):
    results = engine.explain([str(p) for p in example_images[:3]])
    for r in results:
        assert set(r.timings) == {"decode_ms", "preprocess_ms", "postprocess_ms", "batch_infer_ms", "batch_size"}
        assert r.timings["batch_size"] == 3
    assert len({r.timings["batch_infer_ms"] for r in results}) == 1  # one batch, one time
    assert len({r.timings["decode_ms"] for r in results}) == 3  # measured per image


def test_huge_jpeg_is_explained_from_a_reduced_decode(engine, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150_000)  # Pillow's hard limit becomes 300,000 pixels
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (900, 1000, 3), dtype=np.uint8)).save(buf, format="JPEG")
    big = Engine(engine.artifact, engine.backend, max_pixels=None)
    exp = big.explain(buf.getvalue())  # 900,000 pixels: above the hard limit, decoded at 1/2 (500 x 450 >= 448)
    assert exp.image.size == (500, 450) and exp.saliency.shape == (450, 500)
    assert exp.source_size == (1000, 900) and exp.to_dict()["source_size"] == [1000, 900]
