"""Tests of engine.preprocess.postprocess: mapping a low-resolution saliency map back onto the original image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.preprocess import ImageMeta, Preprocessor, saliency_to_image


def test_saliency_equals_torch_bilinear_on_full_box() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    low = rng.random((7, 9), dtype=np.float32)
    meta = ImageMeta(original_size=(123, 77), crop_box=(0.0, 0.0, 123.0, 77.0))
    out = saliency_to_image(low, meta)
    assert out.shape == (77, 123) and out.dtype == np.float32
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(low)[None, None],
        size=(77, 123),
        mode="bilinear",
        align_corners=False,
    )[0, 0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_saliency_hot_cell_lands_in_place_squash() -> None:
    low = np.zeros((7, 7), dtype=np.float32)
    low[2, 5] = 1.0
    meta = ImageMeta(original_size=(320, 240), crop_box=(0.0, 0.0, 320.0, 240.0))
    out = saliency_to_image(low, meta)
    y, x = np.unravel_index(np.argmax(out), out.shape)
    assert abs(x + 0.5 - 5.5 / 7 * 320) <= 1.0
    assert abs(y + 0.5 - 2.5 / 7 * 240) <= 1.0
    assert out.max() > 0.95
    assert out[:, :200].max() == 0.0 and out[150:].max() == 0.0  # far from the cell


def test_saliency_crop_mode_box_and_zeros_outside() -> None:
    _, (meta,) = Preprocessor()([Image.new("RGB", (320, 240))])
    left, top, right, bottom = meta.crop_box
    out = saliency_to_image(np.ones((14, 14), dtype=np.float32), meta)
    assert out.shape == (240, 320)
    cols = np.nonzero(out.max(axis=0) > 0)[0]
    rows = np.nonzero(out.max(axis=1) > 0)[0]
    assert cols[0] == 54 and cols[-1] == 264  # pixel centres 54.5 .. 264.5 lie in [54.43, 264.63)
    assert rows[0] == 15 and rows[-1] == 224
    assert (out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] == 1.0).all()
    assert out[:, :54].max() == 0 and out[:, 265:].max() == 0 and out[:15].max() == 0 and out[225:].max() == 0

    hot = np.zeros((14, 14), dtype=np.float32)
    hot[3, 10] = 1.0
    out = saliency_to_image(hot, meta)
    y, x = np.unravel_index(np.argmax(out), out.shape)
    assert abs(x + 0.5 - (left + 10.5 / 14 * (right - left))) <= 1.0
    assert abs(y + 0.5 - (top + 3.5 / 14 * (bottom - top))) <= 1.0


def test_saliency_is_clipped() -> None:
    low = np.array([[-1.0, 2.0], [0.5, 0.25]])
    out = saliency_to_image(low, ImageMeta((8, 8), (0.0, 0.0, 8.0, 8.0)))
    assert out.min() == 0.0 and out.max() == 1.0 and out.dtype == np.float32


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros(5), "2-D"),
        (np.zeros((1, 4, 4)), "2-D"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "NaN or infinite"),
    ],
)
def test_saliency_rejects_bad_maps(bad: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        saliency_to_image(bad, ImageMeta((8, 8), (0.0, 0.0, 8.0, 8.0)))


def test_saliency_rejects_empty_crop_box() -> None:
    with pytest.raises(InputError, match="crop_box"):
        saliency_to_image(np.zeros((2, 2)), ImageMeta((8, 8), (4.0, 0.0, 4.0, 8.0)))
