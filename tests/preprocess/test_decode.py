"""Tests of engine.preprocess.decode: load_image (decoding, bomb / truncation / mode checks) and IMAGE_SUFFIXES."""

from __future__ import annotations

import importlib.util
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from engine.errors import ImageDecodeError, InputError
from engine.preprocess import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, load_image
from engine.preprocess.decode import _to_rgb

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------- helpers


def _png(width: int, height: int, bit_depth: int, color_type: int, raw: bytes | None) -> bytes:
    """A hand-made PNG: IHDR with any size, one IDAT holding ``raw`` (already filtered rows), or no IDAT at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(raw)) if raw is not None else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def _encoded(arr: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ load_image: OK


def test_path_str_and_pathlike_give_identical_rgb(tmp_path: Path, photo: np.ndarray) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(_encoded(photo, "PNG"))
    for source in (str(path), path):
        image = load_image(source)
        assert image.mode == "RGB"
        assert image.size == (80, 64)
        np.testing.assert_array_equal(np.asarray(image), photo)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_bytes_like_input(kind, photo: np.ndarray) -> None:
    image = load_image(kind(_encoded(photo, "PNG")))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), photo)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (20, 40)  # width and height swapped
    out = np.asarray(image).astype(int)
    assert out[2, 10, 0] > 200 and out[2, 10, 2] < 60  # the left (red) half is now on top
    assert out[-3, 10, 2] > 200 and out[-3, 10, 0] < 60


# ------------------------------------------------------------------------------------------- load_image: bad files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="is a directory"):
        load_image(tmp_path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(path)


def test_empty_bytes() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image(b"")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_detected(tmp_path: Path, fmt: str, make_photo) -> None:
    data = _encoded(make_photo(120, 90, seed=2), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global Pillow state untouched


def test_corrupt_pixel_data(photo: np.ndarray) -> None:
    data = bytearray(_encoded(photo, "PNG"))
    mid = len(data) // 2
    data[mid : mid + 64] = b"\x00" * 64  # wreck the zlib stream inside IDAT
    with pytest.raises(ImageDecodeError, match=r"corrupt|truncated"):
        load_image(bytes(data))


# -------------------------------------------------------------------------------------- load_image: bombs


def test_own_limit_is_checked_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original_load = ImageFile.ImageFile.load

    def spy_load(self):
        calls.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    header_only = _png(5000, 4000, 8, 2, raw=None)  # claims 20 Mpx, holds no pixel data at all
    with pytest.raises(ImageDecodeError) as info:
        load_image(header_only, max_pixels=1_000_000)
    message = str(info.value)
    assert "20,000,000 pixels" in message and "1,000,000" in message
    assert "max_pixels=" in message and "--max-pixels" in message
    assert calls == []  # no decode was attempted


def test_limit_allows_image_at_the_limit(photo: np.ndarray) -> None:
    image = load_image(_encoded(photo, "PNG"), max_pixels=80 * 64)
    assert image.size == (80, 64)
    with pytest.raises(ImageDecodeError, match="5,120 pixels"):
        load_image(_encoded(photo, "PNG"), max_pixels=80 * 64 - 1)


def test_pillow_bomb_error_is_converted() -> None:
    bomb = _png(100_000, 100_000, 8, 2, raw=None)  # 10 gigapixels in a 57-byte file
    for max_pixels in (DEFAULT_MAX_PIXELS, None):
        with pytest.raises(ImageDecodeError, match="10,000,000,000 pixels"):
            load_image(bomb, max_pixels=max_pixels)


def test_pillow_bomb_warning_becomes_error_only_inside_load_image() -> None:
    header_only = _png(10_000, 10_000, 8, 2, raw=None)  # 100 Mpx: above Pillow's warning threshold (~89 Mpx)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as info:
            load_image(header_only)
    assert "100,000,000 pixels" in str(info.value)
    assert "max_pixels=" in str(info.value)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]  # raised, not leaked
    assert warnings.filters == filters_before
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's global limit untouched


def test_raised_limit_lets_a_trusted_large_header_through_to_decoding() -> None:
    header_only = _png(10_000, 10_000, 8, 2, raw=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as info:
            load_image(header_only, max_pixels=200_000_000)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # The size was accepted; decoding then fails because the file holds no pixel data.
    assert "pixels" not in str(info.value).split(":")[0]
    assert "truncated" in str(info.value) or "corrupt" in str(info.value)


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, "100"])
def test_invalid_max_pixels(bad, photo: np.ndarray) -> None:
    with pytest.raises(InputError, match="max_pixels"):
        load_image(photo, max_pixels=bad)


def test_max_pixels_applies_to_pil_images() -> None:
    with pytest.raises(ImageDecodeError, match="max_pixels="):
        load_image(Image.new("RGB", (100, 100)), max_pixels=9_999)


# -------------------------------------------------------------------------------------------- load_image: modes


def test_cmyk_tiff(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(path)  # no cyan, full magenta + yellow = red
    image = load_image(path)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image)[0, 0], (255, 0, 0))


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 128]]], dtype=np.uint8)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    out = np.asarray(load_image(path)).astype(int)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))  # fully transparent red -> white
    np.testing.assert_array_equal(out[0, 1], (255, 0, 0))
    np.testing.assert_allclose(out[0, 2], (127, 127, 255), atol=1)  # half-transparent blue over white


def test_la_is_composited_over_white(tmp_path: Path) -> None:
    la = np.array([[[0, 0], [0, 255], [100, 255]]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.frombytes("LA", (3, 1), la.tobytes()).save(path)
    assert Image.open(path).mode == "LA"
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[0], [(255, 255, 255), (0, 0, 0), (100, 100, 100)])


def test_palette_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    path = tmp_path / "pal.png"
    pal.save(path, transparency=0)  # index 0 (red) is transparent
    reopened = Image.open(path)
    assert reopened.mode == "P" and reopened.info.get("transparency") == 0
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[0], [(255, 255, 255), (0, 0, 255)])


def test_palette_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (1, 1))
    pal.putpalette([10, 20, 30] + [0] * 765)
    path = tmp_path / "pal.gif"
    pal.save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path))[0, 0], (10, 20, 30))


def test_greyscale_and_bilevel(tmp_path: Path) -> None:
    grey = np.array([[0, 77, 255]], dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0], [(0, 0, 0), (77, 77, 77), (255, 255, 255)])
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    np.testing.assert_array_equal(np.asarray(load_image(bilevel))[0], [(0, 0, 0), (255, 255, 255)])


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 65535, 32896, 257, 1000, 128]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255, 128, 1, 4, 0])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_big_endian_and_mode_i() -> None:
    big = Image.frombytes("I;16B", (3, 1), np.array([0, 32896, 65535], dtype=">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(big))[0, :, 1], [0, 128, 255])
    mode_i = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))
    assert mode_i.mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(mode_i))[0, :, 1], [0, 128, 255])
    wide = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32))  # outside [0, 65535]: min-max stretch
    np.testing.assert_array_equal(np.asarray(load_image(wide))[0, :, 1], [0, 128, 255])


def test_16bit_rgb_png_is_scaled_by_pillow() -> None:
    rgb16 = np.array([[[65535, 32896, 0]]], dtype=">u2")
    data = _png(1, 1, 16, 2, b"\x00" + rgb16.tobytes())
    np.testing.assert_array_equal(np.asarray(load_image(data))[0, 0], (255, 128, 0))


def test_float_mode_f() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    np.testing.assert_array_equal(np.asarray(load_image(unit))[0, :, 0], [0, 128, 255])
    big = Image.fromarray(np.array([[0.0, 100.0, 300.0, -5.0]], dtype=np.float32))  # [0, 255] scale, clipped
    np.testing.assert_array_equal(np.asarray(load_image(big))[0, :, 0], [0, 100, 255, 0])
    nan = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(ImageDecodeError, match="NaN"):
        load_image(nan)


def test_unconvertible_mode_names_the_mode() -> None:
    class Strange:
        def __init__(self) -> None:
            self.mode = "XYZ;7"
            self.info: dict = {}

        def convert(self, mode):
            raise ValueError("conversion from XYZ;7 not supported")

    with pytest.raises(ImageDecodeError, match=r"'XYZ;7'"):
        _to_rgb(Strange(), "the test image")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- load_image: PIL input


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_pil_input_is_not_modified(mode: str) -> None:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    arr[0, 0, 3] = 0
    source = Image.fromarray(arr).convert(mode)
    before = np.asarray(source).copy()
    out = load_image(source)
    assert out is not source
    assert source.mode == mode and source.size == (12, 10)
    np.testing.assert_array_equal(np.asarray(source), before)
    out.putpixel((0, 0), (1, 2, 3))
    np.testing.assert_array_equal(np.asarray(source), before)


def test_lazy_truncated_pil_image_is_reported(tmp_path: Path, make_photo) -> None:
    data = _encoded(make_photo(120, 90, seed=4), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as lazy, pytest.raises(ImageDecodeError, match="truncated"):
        load_image(lazy)


def test_empty_pil_image() -> None:
    with pytest.raises(ImageDecodeError, match="no pixels"):
        load_image(Image.new("RGB", (0, 5)))


# ----------------------------------------------------------------------------------------- load_image: arrays


def test_array_rgb_grey_rgba(photo: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(load_image(photo)), photo)
    grey = photo[..., 0]
    out = np.asarray(load_image(grey))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(np.asarray(load_image(grey[..., None])), out)
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255
    out = np.asarray(load_image(rgba))
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(out[1, 1], (255, 255, 255))


def test_array_is_copied(photo: np.ndarray) -> None:
    arr = photo.copy()
    image = load_image(arr)
    arr[:] = 0
    np.testing.assert_array_equal(np.asarray(image), photo)


def test_non_contiguous_array(photo: np.ndarray) -> None:
    view = photo[:, ::-1]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(np.asarray(load_image(view)), view)


@pytest.mark.parametrize(
    ("shape", "hint"),
    [
        ((3, 16, 16), "transpose"),
        ((16, 16, 2), "(H, W, 3)"),
        ((16,), "(H, W)"),
        ((2, 16, 16, 3), "one at a time"),
    ],
)
def test_array_wrong_shape(shape: tuple[int, ...], hint: str) -> None:
    with pytest.raises(InputError) as info:
        load_image(np.zeros(shape, dtype=np.uint8))
    assert str(shape) in str(info.value) and hint in str(info.value)


def test_array_zero_size() -> None:
    with pytest.raises(InputError, match="empty"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))


def test_array_float_dtype_message() -> None:
    with pytest.raises(InputError) as info:
        load_image(np.full((4, 4, 3), 0.5, dtype=np.float32))
    message = str(info.value)
    assert "float32" in message and "(arr * 255).round().astype(np.uint8)" in message
    assert "NaN" not in message


def test_array_nan_is_mentioned() -> None:
    arr = np.full((4, 4, 3), 0.5)
    arr[1, 2, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        load_image(arr)


@pytest.mark.parametrize(("dtype", "hint"), [(np.uint16, "257"), (np.int64, "np.clip"), (np.bool_, "uint8")])
def test_array_other_dtypes(dtype, hint: str) -> None:
    with pytest.raises(InputError) as info:
        load_image(np.zeros((4, 4), dtype=dtype))
    assert hint in str(info.value)


@pytest.mark.parametrize("bad", [123, None, [[0, 0]], {"path": "x.png"}])
def test_wrong_python_type(bad) -> None:
    with pytest.raises(InputError, match="file path"):
        load_image(bad)


# ------------------------------------------------------------------------------------------------ IMAGE_SUFFIXES


def test_image_suffixes_are_one_set_used_by_cli_benchmarks_and_datasets(tmp_path: Path) -> None:
    """The CLI's folder expansion, benchmarks/overlays.py and the ``folder`` dataset reader list the same files."""
    from engine.cli import expand_images
    from engine.data import IMAGE_EXTENSIONS, ImageFolder

    spec = importlib.util.spec_from_file_location("overlays_bench", ROOT / "benchmarks" / "overlays.py")
    overlays = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(overlays)

    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"} == IMAGE_SUFFIXES
    assert IMAGE_EXTENSIONS is IMAGE_SUFFIXES
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (4, 3), (10, 20, 30)).save(folder / "a.ppm")
    Image.new("RGB", (4, 3), (10, 20, 30)).save(folder / "b.gif")
    for suffix in sorted(IMAGE_SUFFIXES - {".ppm", ".gif"}):  # listed by suffix only, nothing is decoded
        (folder / f"c{suffix}").write_bytes(b"x")
    (folder / "D.JPG").write_bytes(b"x")  # suffixes compare in lower case
    (folder / ".hidden.png").write_bytes(b"x")  # hidden files are skipped
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested.png").mkdir()  # a folder, not a file; and folders are not entered
    (folder / "nested.png" / "deep.png").write_bytes(b"x")
    expected = sorted([folder / "a.ppm", folder / "b.gif", folder / "D.JPG"])
    expected = sorted(expected + [folder / f"c{suffix}" for suffix in IMAGE_SUFFIXES - {".ppm", ".gif"}])

    assert expand_images([str(folder)]) == (expected, 2)  # notes.txt and .hidden.png ignored, and counted
    assert overlays.collect([str(folder)]) == expected
    assert ImageFolder(folder).paths == expected
