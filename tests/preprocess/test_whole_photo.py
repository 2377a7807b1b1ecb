"""Whole-photo preprocessing (``letterbox``), its exact mapping back onto the photo, and reduced JPEG decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from engine.config import PreprocessConfig
from engine.errors import ImageDecodeError, InputError
from engine.preprocess import SOURCE_SIZE_KEY, Preprocessor, load_image, saliency_to_image


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(300, 500), (500, 300), (224, 224), (1000, 37), (3, 400)])
def test_letterbox_pastes_the_whole_photo_undistorted_and_pads_with_the_mean(size):
    cfg = PreprocessConfig(resize_mode="letterbox", interpolation="bilinear")
    pre = Preprocessor(cfg)
    photo = _photo(*size)
    x, (meta,) = pre([photo])
    (new_w, new_h), (left, top, right, bottom) = pre.plan(size)
    assert (right - left, bottom - top) == (224, 224)
    scale = 224 / max(size)  # one scale for both sides: no distortion beyond rounding each side
    assert abs(new_w - size[0] * scale) <= 0.5 + 1e-9 and abs(new_h - size[1] * scale) <= 0.5 + 1e-9
    # the content: the photo resized, at (-left, -top); the rest: the mean colour, ~0 after normalisation
    raw = x[0] * np.array(cfg.std, np.float32)[:, None, None] + np.array(cfg.mean, np.float32)[:, None, None]
    content = np.asarray(photo.resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32) / 255.0
    got = raw[:, -top : -top + new_h, -left : -left + new_w].transpose(1, 2, 0)
    np.testing.assert_allclose(got, content, atol=1e-5)
    pad = np.ones((224, 224), bool)
    pad[-top : -top + new_h, -left : -left + new_w] = False
    if pad.any():
        assert np.abs(x[0][:, pad]).max() < 0.01
    assert meta.resize_mode == "letterbox" and meta.original_size == size
    # the box covers the whole photo (and the padding, outside it)
    assert meta.crop_box[0] <= 0 and meta.crop_box[1] <= 0
    assert meta.crop_box[2] >= size[0] and meta.crop_box[3] >= size[1]


@pytest.mark.parametrize("size", [(300, 500), (640, 427)])
def test_letterbox_map_goes_back_onto_the_photo_exactly_without_the_padding(size):
    pre = Preprocessor(PreprocessConfig(resize_mode="letterbox"))
    _, (meta,) = pre([_photo(*size)])
    left, top, right, bottom = meta.crop_box
    # a map linear in the input's x coordinate: bilinear sampling reproduces it exactly away from the borders
    u = (np.arange(224) + 0.5) / 224.0
    linear = np.tile(u, (224, 1))
    out = saliency_to_image(linear, meta)
    assert out.shape == (size[1], size[0])  # the photo's size: no padding in the output
    expected = ((np.arange(size[0]) + 0.5) - left) / (right - left)
    np.testing.assert_allclose(out[size[1] // 2, 2:-2], expected[2:-2], atol=1e-5)
    # a map that is 1 only on the padding says nothing about the photo
    (new_w, new_h), (pl, pt, _, _) = pre.plan(size)
    padding_only = np.ones((224, 224))
    padding_only[-pt : -pt + new_h, -pl : -pl + new_w] = 0.0
    back = saliency_to_image(padding_only, meta)
    assert back[2:-2, 2:-2].max() == 0.0
    # crop mode, for contrast: a band of the photo is never seen and stays 0
    _, (crop_meta,) = Preprocessor(PreprocessConfig(resize_mode="crop"))([_photo(*size)])
    assert (saliency_to_image(np.ones((7, 7)), crop_meta) == 0).mean() > 0.1


def test_unknown_resize_mode_is_refused_with_the_choices():
    with pytest.raises(InputError, match="crop, letterbox, squash"):
        PreprocessConfig(resize_mode="pad")


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    _photo(width, height, seed=1).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_jpeg_above_pillows_hard_limit_decodes_reduced(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # hard limit 20,000 pixels
    data = _jpeg(400, 300)  # 120,000 pixels
    with pytest.raises(ImageDecodeError, match="hard limit"):
        load_image(data, max_pixels=None)  # no draft: refused, as before
    image = load_image(data, max_pixels=None, draft=(50, 50))
    assert image.size == (100, 75)  # 1/4: the smallest DCT scale that keeps both sides >= 50
    assert image.info[SOURCE_SIZE_KEY] == (400, 300)
    # the reduced image is the photo: close to a full decode shrunk the same way
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)
    full = load_image(data).resize((100, 75), Image.Resampling.BOX)
    assert np.abs(np.asarray(image, np.float32) - np.asarray(full, np.float32)).mean() < 8.0


def test_reduced_decoding_keeps_the_guards(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    png = io.BytesIO()
    _photo(400, 300).save(png, format="PNG")
    with pytest.raises(ImageDecodeError):  # a PNG cannot be decoded reduced: the bomb guard holds
        load_image(png.getvalue(), max_pixels=None, draft=(50, 50))
    with pytest.raises(ImageDecodeError, match="reduced from 400x300"):  # max_pixels applies to the reduced size
        load_image(_jpeg(400, 300), max_pixels=1_000, draft=(50, 50))
    small = load_image(_jpeg(90, 80), draft=(50, 50))  # under twice the draft: decoded in full
    assert small.size == (90, 80) and SOURCE_SIZE_KEY not in small.info
