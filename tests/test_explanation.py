"""Tests of engine.explanation: colour maps, overlay, JSON summary and atomic saving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from engine.explanation import COLORMAPS, Explanation, colormap_lut


def _explanation(with_image: bool = True, height: int = 30, width: int = 40) -> Explanation:
    rng = np.random.default_rng(0)
    saliency = np.zeros((height, width), dtype=np.float32)
    saliency[:, width // 2 :] = 1.0  # right half fully salient
    saliency[0, 0] = 0.5
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)) if with_image else None
    return Explanation(
        saliency=saliency,
        class_id=np.int64(3),  # numpy scalars must still serialise
        class_name="tabby cat",
        score=np.float32(0.75),
        target=3,
        topk=[(3, "tabby cat", np.float32(0.75)), (7, "tiger cat", 0.2)],
        timings={"preprocess": np.float64(1.5), "forward": 12.0},
        method="gradcam",
        backend="torch",
        saliency_lowres=rng.random((7, 7), dtype=np.float32),
        image=image,
        source="cat.jpg",
        precision="bf16",
    )


# ------------------------------------------------------------------------------------------------------- colormaps


def test_lut_shapes_and_endpoints() -> None:
    for lut in COLORMAPS.values():
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    jet = colormap_lut("jet")
    np.testing.assert_array_equal(jet[0], (0, 0, 128))  # dark blue
    np.testing.assert_array_equal(jet[255], (128, 0, 0))  # dark red
    assert jet[128, 1] == 255 and jet[128, 0] < 140 and jet[128, 2] < 140  # green in the middle
    turbo = colormap_lut("turbo")
    np.testing.assert_array_equal(turbo[0], (48, 18, 59))
    np.testing.assert_array_equal(turbo[255], (122, 4, 3))
    with pytest.raises(ValueError):
        jet[0, 0] = 1  # read-only view: the shared table cannot be corrupted


def test_unknown_colormap() -> None:
    with pytest.raises(InputError, match="jet"):
        colormap_lut("viridis-ish")
    with pytest.raises(InputError, match="Unknown colormap"):
        _explanation().heatmap("nope")


@pytest.mark.parametrize("name", ["jet", "turbo"])
def test_heatmap_uses_lut(name: str) -> None:
    exp = _explanation()
    heat = exp.heatmap(name)
    assert heat.mode == "RGB" and heat.size == (40, 30)
    arr = np.asarray(heat)
    lut = COLORMAPS[name]
    np.testing.assert_array_equal(arr[5, 0], lut[0])
    np.testing.assert_array_equal(arr[5, -1], lut[255])
    np.testing.assert_array_equal(arr[0, 0], lut[128])  # 0.5 -> index round(127.5) = 128


def test_heatmap_clips_and_handles_nan() -> None:
    exp = _explanation()
    exp.saliency = np.array([[-3.0, 7.0, np.nan]], dtype=np.float32)
    arr = np.asarray(exp.heatmap())
    np.testing.assert_array_equal(arr[0], [COLORMAPS["jet"][0], COLORMAPS["jet"][255], COLORMAPS["jet"][0]])
    exp.saliency = np.zeros((2, 2, 2), dtype=np.float32)
    with pytest.raises(InputError, match="2-D"):
        exp.heatmap()


# --------------------------------------------------------------------------------------------------------- overlay


def test_overlay_size_mode_and_blend() -> None:
    exp = _explanation()
    over = exp.overlay(alpha=0.5)
    assert over.mode == "RGB" and over.size == exp.image.size
    image = np.asarray(exp.image).astype(int)
    heat = np.asarray(exp.heatmap()).astype(int)
    np.testing.assert_allclose(np.asarray(over).astype(int), (image + heat) / 2, atol=1)
    np.testing.assert_array_equal(np.asarray(exp.overlay(alpha=0.0)), np.asarray(exp.image))
    np.testing.assert_array_equal(
        np.asarray(exp.overlay(alpha=1.0, colormap="turbo")),
        np.asarray(exp.heatmap("turbo")),
    )


def test_overlay_without_image() -> None:
    with pytest.raises(InputError, match=r"heatmap\(\)"):
        _explanation(with_image=False).overlay()


def test_overlay_bad_alpha_and_size_mismatch() -> None:
    exp = _explanation()
    with pytest.raises(InputError, match="alpha"):
        exp.overlay(alpha=1.5)
    exp.image = Image.new("RGB", (41, 30))
    with pytest.raises(InputError, match="41x30"):
        exp.overlay()


def test_overlay_converts_non_rgb_image() -> None:
    exp = _explanation()
    exp.image = exp.image.convert("L")
    assert exp.overlay().mode == "RGB"


# --------------------------------------------------------------------------------------------------------- to_dict


def _contains_array(value) -> bool:
    if isinstance(value, (np.ndarray, np.generic, Image.Image)):
        return True
    if isinstance(value, dict):
        return any(_contains_array(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_array(v) for v in value)
    return False


def test_to_dict_is_json_and_complete() -> None:
    data = _explanation().to_dict()
    assert not _contains_array(data)
    decoded = json.loads(json.dumps(data, allow_nan=False))
    assert decoded == {
        "class_id": 3,
        "class_name": "tabby cat",
        "score": 0.75,
        "target": 3,
        "target_name": None,
        "target_score": None,
        "topk": [
            {"id": 3, "name": "tabby cat", "prob": 0.75},
            {"id": 7, "name": "tiger cat", "prob": 0.2},
        ],
        "timings": {"preprocess": 1.5, "forward": 12.0},
        "method": "gradcam",
        "backend": "torch",
        "precision": "bf16",
        "source": "cat.jpg",
        "saliency_shape": [30, 40],
        "saliency_lowres_shape": [7, 7],
        "crop_box": None,
        "resize_mode": None,
        "source_size": None,
    }


def test_repr_hides_image() -> None:
    text = repr(_explanation())
    assert "image=" not in text and "PIL" not in text
    assert "source='cat.jpg'" in text


# ------------------------------------------------------------------------------------------------------------ save


def test_save_writes_png_and_npy(tmp_path: Path) -> None:
    exp = _explanation()
    out_dir = tmp_path / "new" / "folder"
    paths = exp.save(out_dir, "cat")
    assert paths == {"png": out_dir / "cat.png", "npy": out_dir / "cat.npy"}
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "cat.npy",
        "cat.png",
    ]  # no temporary files left
    saliency = np.load(paths["npy"], allow_pickle=False)
    assert saliency.dtype == np.float32
    np.testing.assert_array_equal(saliency, exp.saliency)
    with Image.open(paths["png"]) as png:
        assert png.format == "PNG" and png.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(exp.overlay()))


def test_save_without_image_writes_heatmap(tmp_path: Path) -> None:
    exp = _explanation(with_image=False)
    paths = exp.save(tmp_path, "heat")
    with Image.open(paths["png"]) as png:
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(exp.heatmap()))


def test_save_overwrites(tmp_path: Path) -> None:
    exp = _explanation()
    exp.save(tmp_path, "x")
    exp.saliency = np.full((30, 40), 0.25, dtype=np.float32)
    exp.save(tmp_path, "x")
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), exp.saliency)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.png"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    exp = _explanation()
    exp.save(tmp_path, "x")
    old_npy = (tmp_path / "x.npy").read_bytes()

    def half_write(fh, arr, allow_pickle=False):
        fh.write(b"\x93NUMPY half-written")
        raise error

    monkeypatch.setattr(np, "save", half_write)
    exp.saliency = np.full((30, 40), 0.25, dtype=np.float32)
    with pytest.raises(type(error)):
        exp.save(tmp_path, "x")
    assert (tmp_path / "x.npy").read_bytes() == old_npy  # the previous complete file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.png"]


@pytest.mark.parametrize("stem", ["", "a/b", "..", "."])
def test_save_rejects_bad_stem(tmp_path: Path, stem: str) -> None:
    with pytest.raises(InputError, match="stem"):
        _explanation().save(tmp_path, stem)
    assert list(tmp_path.iterdir()) == []


def test_overlay_leaves_the_unseen_border_untinted():
    image = Image.new("RGB", (40, 20), (10, 200, 30))
    sal = np.zeros((20, 40), dtype=np.float32)
    sal[5:15, 15:25] = 1.0
    exp = Explanation(
        saliency=sal,
        class_id=0,
        class_name="a",
        score=1.0,
        target=0,
        topk=[(0, "a", 1.0)],
        timings={},
        method="m",
        backend="b",
        saliency_lowres=np.ones((2, 2), np.float32),
        image=image,
        crop_box=(10.0, 0.0, 30.0, 20.0),
    )
    out = np.asarray(exp.overlay(alpha=0.5))
    assert (out[:, :10] == (10, 200, 30)).all() and (out[:, 30:] == (10, 200, 30)).all()
    assert not (out[:, 10:30] == (10, 200, 30)).all(axis=-1).any(), "inside the box every pixel is tinted"
    assert exp.to_dict()["crop_box"] == [10.0, 0.0, 30.0, 20.0]
