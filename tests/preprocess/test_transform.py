"""Tests of engine.preprocess.transform: the network-input transform (Preprocessor, ImageMeta crop boxes)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.config import PreprocessConfig
from engine.errors import InputError
from engine.preprocess import Preprocessor

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def test_constant_image_normalisation_exact() -> None:
    colour = (10, 200, 31)
    images = [Image.new("RGB", (300, 200), colour), Image.new("RGB", (50, 90), colour)]
    batch, metas = Preprocessor()(images)
    assert batch.shape == (2, 3, 224, 224)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    expected = (np.array(colour, np.float32) / np.float32(255) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    for c in range(3):
        np.testing.assert_allclose(batch[:, c], expected[c], rtol=0, atol=1e-6)
    assert [m.original_size for m in metas] == [(300, 200), (50, 90)]


def test_custom_mean_std_and_size() -> None:
    config = PreprocessConfig(
        input_size=(32, 48),
        resize_mode="squash",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.25, 1.0),
    )
    batch, _ = Preprocessor(config)([Image.new("RGB", (10, 10), (255, 0, 51))])
    assert batch.shape == (1, 3, 32, 48)
    np.testing.assert_allclose(batch[0, :, 5, 7], [1.0, -2.0, -0.3], atol=1e-6)


def test_crop_box_crop_mode_landscape_and_portrait() -> None:
    pre = Preprocessor(PreprocessConfig(input_size=(224, 224), crop_pct=0.875))
    _, (landscape, portrait) = pre([Image.new("RGB", (320, 240)), Image.new("RGB", (240, 320))])
    # 320x240 -> shorter side 256 -> 341x256 (torchvision truncates 341.33) -> crop at left=round(58.5)=58, top=16
    assert landscape.original_size == (320, 240)
    np.testing.assert_allclose(
        landscape.crop_box,
        (58 * 320 / 341, 15.0, 282 * 320 / 341, 225.0),
        rtol=0,
        atol=1e-9,
    )
    assert portrait.original_size == (240, 320)
    np.testing.assert_allclose(
        portrait.crop_box,
        (15.0, 58 * 320 / 341, 225.0, 282 * 320 / 341),
        rtol=0,
        atol=1e-9,
    )
    assert pre.plan((320, 240)) == ((341, 256), (58, 16, 282, 240))


def test_crop_box_squash_mode() -> None:
    pre = Preprocessor(PreprocessConfig(resize_mode="squash"))
    batch, (meta,) = pre([Image.new("RGB", (320, 240))])
    assert batch.shape == (1, 3, 224, 224)
    assert meta.crop_box == (0.0, 0.0, 320.0, 240.0)


def test_crop_box_maps_input_pixels_back_exactly() -> None:
    """On a linear ramp, bilinear resizing is exact, so each input pixel shows the original coordinate it maps to."""
    width, height = 256, 200
    y, x = np.mgrid[0:height, 0:width]
    ramp = np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)  # R = x, G = y
    config = PreprocessConfig(
        input_size=(96, 96),
        crop_pct=0.8,
        interpolation="bilinear",
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    batch, (meta,) = Preprocessor(config)([Image.fromarray(ramp)])
    pixels = batch[0] * 255.0
    left, top, right, bottom = meta.crop_box
    j = np.arange(96)
    expected_x = left + (j + 0.5) * (right - left) / 96 - 0.5  # centre of input column j, in original pixels
    expected_y = top + (j + 0.5) * (bottom - top) / 96 - 0.5
    inner = slice(2, -2)  # the image border itself is outside the crop anyway; keep away from rounding at edges
    np.testing.assert_allclose(pixels[0, 48, inner], expected_x[inner], atol=0.6)
    np.testing.assert_allclose(pixels[1, inner, 48], expected_y[inner], atol=0.6)


@pytest.mark.parametrize("input_size", [(224, 224), (192, 256)])
@pytest.mark.parametrize("image_size", [(320, 240), (240, 320), (500, 130), (130, 500)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_timm_eval_transform(input_size, image_size, interpolation, make_photo) -> None:
    """Same Pillow resize + same crop arithmetic as timm: the tensors agree to float32 rounding (atol 1e-5)."""
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    timm_data = pytest.importorskip("timm.data")
    image = Image.fromarray(make_photo(*image_size, seed=5))
    timm_tf = timm_data.create_transform(
        input_size=(3, *input_size),
        interpolation=interpolation,
        crop_pct=0.875,
        mean=MEAN,
        std=STD,
    )
    expected = timm_tf(image).numpy()
    config = PreprocessConfig(
        input_size=input_size,
        crop_pct=0.875,
        interpolation=interpolation,
        mean=MEAN,
        std=STD,
    )
    batch, _ = Preprocessor(config)([image])
    assert batch[0].shape == expected.shape
    assert float(np.abs(batch[0] - expected).max()) < 1e-5


def test_preprocessor_rejects_bad_input() -> None:
    pre = Preprocessor()
    with pytest.raises(InputError, match="non-empty"):
        pre([])
    with pytest.raises(InputError, match=r"\[image\]"):
        pre(Image.new("RGB", (4, 4)))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="load_image"):
        pre([Image.new("L", (4, 4))])
    with pytest.raises(InputError, match="load_image"):
        pre([np.zeros((4, 4, 3), np.uint8)])  # type: ignore[list-item]
