"""Image loading, the network-input transform, and mapping saliency maps back onto the original image.

Every backend shares this one implementation, so an image becomes exactly the same tensor whatever runs the model.

* :func:`load_image` turns a path, encoded bytes, a PIL image or a ``uint8`` array into a fully decoded RGB
  :class:`PIL.Image.Image`, rejecting bad input with :class:`~engine.errors.ImageDecodeError` /
  :class:`~engine.errors.InputError`.
* :class:`Preprocessor` resizes, crops and normalises a batch, and records for each image which region of the
  original the network saw (:class:`ImageMeta`).
* :func:`saliency_to_image` upsamples a low-resolution saliency map onto that region of the original image.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import PreprocessConfig
from .errors import ImageDecodeError, InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageMeta",
    "Preprocessor",
    "load_image",
    "saliency_to_image",
]

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest ``width * height`` :func:`load_image` decodes unless told otherwise (a 8000x8000 photo)."""

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


# --------------------------------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------------------------------


def load_image(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image as a fully decoded RGB :class:`PIL.Image.Image`.

    The EXIF orientation is applied (``ImageOps.exif_transpose``). Pixel layouts are converted to 8-bit RGB:

    * ``RGBA``, ``LA``, ``PA``, and ``P``/``L``/``RGB`` images with a transparency key are composited over a
      **white** background (a fully transparent pixel becomes white, whatever colour it stores).
    * ``CMYK``, ``L``, ``1``, ``P``, ``YCbCr``, ``HSV``, ``RGBX`` are converted with Pillow.
    * 16-bit greyscale (``I;16``, ``I;16B``, ...) is scaled by value range, ``v8 = round(v16 / 257)``
      (65535 -> 255), never clipped. Mode ``I`` (32-bit integer) is treated as 16-bit when all values lie in
      [0, 65535], otherwise its [min, max] is stretched to [0, 255]. 16-bit RGB(A) PNGs are reduced to 8 bit by
      Pillow itself (it keeps the high byte), which is also a scaling, not a clip.
    * Float mode ``F`` is assumed to hold [0, 1] when its maximum is <= 1 and [0, 255] otherwise; values are then
      clipped to that range. NaN or infinite values are rejected.
    * Any other mode goes through ``convert("RGB")``; if Pillow cannot convert it the error names the mode.

    The source is never modified: a PIL image passed in is copied (it may be ``load()``-ed if it was opened lazily).
    Multi-frame files (animated GIF, multi-page TIFF) give their first frame.

    Pillow's decompression-bomb warning is turned into an error with ``warnings.catch_warnings``, which is local to
    this call but, like every use of ``catch_warnings`` in Python 3.11, not thread-safe with respect to other threads
    changing warning filters at the same moment. Pillow's global state (``MAX_IMAGE_PIXELS``,
    ``ImageFile.LOAD_TRUNCATED_IMAGES``) is never changed.

    Args:
        source: a path (``str`` or ``os.PathLike``); encoded image bytes (``bytes``, ``bytearray``,
            ``memoryview``); a :class:`PIL.Image.Image`; or a ``uint8`` numpy array shaped ``(H, W)`` (grey),
            ``(H, W, 1)``, ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA, composited over white).
        max_pixels: largest ``width * height`` accepted for files, bytes and PIL images, checked from the header
            before any pixel data is decoded (decompression-bomb guard). ``None`` disables this check; Pillow's own
            hard limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``) still applies to files and bytes.

    Returns:
        A new RGB image, independent of ``source``.

    Raises:
        ImageDecodeError: the file or bytes are missing, empty, not an image, truncated, corrupt, too large, or of a
            mode that cannot be converted to RGB.
        InputError: ``source`` is of an unsupported type, or an array has the wrong shape or dtype, or
            ``max_pixels`` is invalid.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise InputError(
            f"max_pixels must be a positive int or None, got {max_pixels!r}. Pass e.g. max_pixels=100_000_000."
        )
    if isinstance(source, Image.Image):
        return _from_pil(source, max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageDecodeError("The image bytes are empty (0 bytes). Pass the full content of an image file.")
        return _decode(io.BytesIO(data), "the image data", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_pixels)
    raise InputError(
        f"Cannot load an image from a {type(source).__module__}.{type(source).__qualname__}. Pass a file path, "
        "the encoded bytes of an image file, a PIL.Image.Image, or a uint8 numpy array shaped (H, W), (H, W, 3) or "
        "(H, W, 4)."
    )


def _load_path(source: str | os.PathLike, max_pixels: int | None) -> Image.Image:
    raw = os.fspath(source)
    path = Path(os.fsdecode(raw))
    if not path.exists():
        hint = " URLs are not fetched: download the file first." if str(raw).startswith(("http://", "https://")) else ""
        raise ImageDecodeError(
            f"Image file not found: {path}. Check the path (relative paths start at {Path.cwd()}).{hint}"
        )
    if path.is_dir():
        raise ImageDecodeError(f"{path} is a directory, not an image file. Pass the path of one image file inside it.")
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageDecodeError(f"Image file {path} is empty (0 bytes). Re-export or re-download the image.")
        with path.open("rb") as fh:
            return _decode(fh, f"image file {path}", max_pixels)
    except PermissionError as exc:
        raise ImageDecodeError(
            f"Cannot read image file {path}: permission denied. Fix the file's permissions."
        ) from exc
    except IsADirectoryError as exc:  # pragma: no cover - race with the is_dir() check above
        raise ImageDecodeError(f"{path} is a directory, not an image file. Pass one image file.") from exc
    except FileNotFoundError as exc:  # pragma: no cover - removed between the checks and the open
        raise ImageDecodeError(f"Image file not found: {path}. Check the path.") from exc


def _check_pixels(size: tuple[int, int], max_pixels: int | None, what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{_cap(what)} has no pixels (size {width}x{height}). Pass a non-empty image.")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"{_cap(what)} is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,} "
            "pixels (decompression-bomb guard). If you trust the file, raise the limit with "
            f"load_image(..., max_pixels={width * height}) (CLI: --max-pixels {width * height}), or downscale it."
        )


def _bomb_error(exc: Exception, what: str, max_pixels: int | None) -> ImageDecodeError:
    """Turn Pillow's DecompressionBombError/Warning into an ImageDecodeError that says what to do."""
    match = re.search(r"\((\d+) pixels\).*?limit of (\d+) pixels", str(exc))
    pixels = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    pil_limit = int(match.group(2)) if match else Image.MAX_IMAGE_PIXELS
    if isinstance(exc, Image.DecompressionBombError):
        fix = (
            f"This is above Pillow's hard limit ({pil_limit:,} pixels = 2 * PIL.Image.MAX_IMAGE_PIXELS), which "
            "max_pixels= cannot lift. If you trust the file, set PIL.Image.MAX_IMAGE_PIXELS higher for your process "
            "and pass max_pixels= (CLI: --max-pixels) as well, or downscale the image."
        )
    else:
        limit = max_pixels if max_pixels is not None else pil_limit
        fix = (
            f"The limit is {limit:,} pixels (decompression-bomb guard). If you trust the file, pass a larger "
            "max_pixels= to load_image (CLI: --max-pixels), or downscale the image."
        )
    return ImageDecodeError(f"{_cap(what)} has {pixels}. {fix}")


def _decode(fp: IO[bytes], what: str, max_pixels: int | None) -> Image.Image:
    """Open encoded image data lazily, check its size from the header, then decode it fully."""
    with warnings.catch_warnings():
        _bomb_warning_filter(max_pixels)
        try:
            image = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, what, max_pixels) from exc
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(
                f"{_cap(what)} is not an image Pillow can read (unknown format, or not an image at all, e.g. text or "
                "HTML). Pass a PNG, JPEG, WebP, BMP, TIFF or GIF file."
            ) from exc
        except Exception as exc:  # Pillow raises many types for corrupt headers
            raise ImageDecodeError(
                f"{_cap(what)} has a corrupt header ({type(exc).__name__}: {exc}). Re-export or re-download it."
            ) from exc
        with image:
            return _finish(image, what, max_pixels)


def _from_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    with warnings.catch_warnings():
        _bomb_warning_filter(max_pixels)
        return _finish(image, "the PIL image", max_pixels)


def _bomb_warning_filter(max_pixels: int | None) -> None:
    """Inside a ``catch_warnings`` block: make Pillow's bomb warning an error, unless the caller lifted the limit.

    When ``max_pixels`` is above Pillow's warning threshold (or ``None``), the caller has said it trusts larger
    images, so the warning is silenced instead; :func:`_check_pixels` enforces ``max_pixels`` itself.
    """
    if max_pixels is None or max_pixels > Image.MAX_IMAGE_PIXELS:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    else:
        warnings.simplefilter("error", Image.DecompressionBombWarning)


def _finish(image: Image.Image, what: str, max_pixels: int | None) -> Image.Image:
    """Size check (header only), full decode, EXIF orientation and mode conversion. Returns a new image."""
    _check_pixels(image.size, max_pixels, what)
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, what, max_pixels) from exc
    except Exception as exc:  # OSError, SyntaxError, ValueError, EOFError, zlib/struct errors ...
        truncated = "truncat" in str(exc).lower() or isinstance(exc, EOFError)
        if truncated:
            problem = "is truncated (the data ends early)"
            fix = "The file was probably cut off while copying or downloading; re-download or re-export it."
        else:
            problem = "is corrupt"
            fix = "The pixel data is damaged; re-download or re-export the image."
        raise ImageDecodeError(f"{_cap(what)} {problem}: {type(exc).__name__}: {exc}. {fix}") from exc
    try:
        oriented = ImageOps.exif_transpose(image)
    except (
        OSError,
        SyntaxError,
        ValueError,
        KeyError,
        TypeError,
        struct.error,
    ) as exc:  # broken EXIF: keep the pixels
        warnings.warn(f"Ignoring the unreadable EXIF orientation of {what} ({exc}).", stacklevel=4)
        oriented = image.copy()
    if oriented is None or oriented is image:  # pragma: no cover - defensive, in_place=False returns a new image
        oriented = image.copy()
    return _to_rgb(oriented, what)


def _to_rgb(image: Image.Image, what: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16"):
        values = np.asarray(image).astype(np.float64)
        return _grey_to_rgb(np.rint(values / 257.0))
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if low >= 0 and high <= 65535:
            return _grey_to_rgb(np.rint(values / 257.0))
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return _grey_to_rgb(np.rint(scaled))
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageDecodeError(
                f"{_cap(what)} is a float image holding NaN or infinite values. Replace them (e.g. np.nan_to_num) and "
                "pass the result as a uint8 array."
            )
        if values.max() <= 1.0:
            values = values * 255.0
        return _grey_to_rgb(np.rint(np.clip(values, 0.0, 255.0)))
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and image.info.get("transparency") is not None):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except Exception as exc:
        raise ImageDecodeError(
            f"{_cap(what)} has pixel mode {mode!r}, which Pillow cannot convert to RGB ({exc}). Convert the image to "
            "8-bit RGB with an image editor or another library first."
        ) from exc


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values.astype(np.uint8))).convert("RGB")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.size == 0:
        raise InputError(f"The image array is empty (shape {arr.shape}). Pass an array with at least one pixel.")
    channels_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))
    if not channels_ok:
        hint = "Pass (H, W) greyscale, (H, W, 3) RGB or (H, W, 4) RGBA."
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint += " It looks channels-first: use arr.transpose(1, 2, 0)."
        elif arr.ndim == 4:
            hint += " It looks like a batch: pass the images one at a time (arr[i])."
        raise InputError(f"Cannot read an image array of shape {arr.shape}. {hint}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            nan = " It also contains NaN values: replace them first (np.nan_to_num)." if np.isnan(arr).any() else ""
            fix = f"For floats in [0, 1] convert with (arr * 255).round().astype(np.uint8).{nan}"
        elif arr.dtype == np.uint16:
            fix = "For 16-bit data convert with (arr / 257).round().astype(np.uint8)."
        else:
            fix = "Convert it to uint8 with values in [0, 255], e.g. np.clip(arr, 0, 255).astype(np.uint8)."
        raise InputError(f"Image arrays must have dtype uint8, got {arr.dtype}. {fix}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    image = Image.fromarray(np.ascontiguousarray(arr))  # copies the data: the caller's array is not shared
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, _WHITE)
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------------------------------------------------
# Preprocessor
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ImageMeta:
    """Where a network input came from.

    Attributes:
        original_size: ``(width, height)`` of the image given to the :class:`Preprocessor`.
        crop_box: ``(left, top, right, bottom)`` in original-image pixel coordinates (continuous; pixel ``x`` spans
            ``[x, x + 1)``) of the region shown by the network input. It may extend past the image edges only if the
            crop had to be padded.
    """

    original_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]


class Preprocessor:
    """Resize, crop and normalise RGB images into a ``(B, 3, H, W)`` float32 batch.

    ``"crop"`` mode reproduces timm's evaluation transform (``transforms_imagenet_eval``, ``crop_mode="center"``):
    ``scale = floor(input / crop_pct)`` per side; for a square input the shorter image side is resized to ``scale``
    and the longer to ``int(scale * long / short)`` (torchvision ``Resize(int)``, which truncates); for a non-square
    input each side is divided by ``min(h / scale_h, w / scale_w)`` and rounded (timm ``ResizeKeepRatio``). The
    centre crop offsets are ``int(round((size - crop) / 2))`` (torchvision ``CenterCrop``). ``"squash"`` mode resizes
    the whole image to ``input_size``. Resizing uses Pillow with the configured resampling filter.

    Args:
        config: the transform settings; the default :class:`~engine.config.PreprocessConfig` when ``None``.
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config if config is not None else PreprocessConfig()
        self._resample = _RESAMPLING[self.config.interpolation]
        self._mean = np.asarray(self.config.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(self.config.std, dtype=np.float32).reshape(3, 1, 1)

    def __repr__(self) -> str:
        return f"Preprocessor({self.config!r})"

    def plan(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """The geometry applied to an image of ``size = (width, height)``.

        Args:
            size: ``(width, height)`` of the input image.

        Returns:
            ``((resized_width, resized_height), (left, top, right, bottom))``: the size the image is resized to
            and the crop taken from the resized image, in resized pixels.
        """
        width, height = size
        out_h, out_w = self.config.input_size
        if self.config.resize_mode == "squash":
            return (out_w, out_h), (0, 0, out_w, out_h)
        scale_h = math.floor(out_h / self.config.crop_pct)
        scale_w = math.floor(out_w / self.config.crop_pct)
        if scale_h == scale_w:  # torchvision Resize(int): shorter side -> scale, longer side truncated
            if width <= height:
                new_w, new_h = scale_w, int(scale_w * height / width)
            else:
                new_w, new_h = int(scale_h * width / height), scale_h
        else:  # timm ResizeKeepRatio(longest=0): match the side that needs the smaller ratio, round
            ratio = min(height / scale_h, width / scale_w)
            new_w, new_h = round(width / ratio), round(height / ratio)
        left = _crop_offset(new_w, out_w)
        top = _crop_offset(new_h, out_h)
        return (new_w, new_h), (left, top, left + out_w, top + out_h)

    def __call__(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[ImageMeta]]:
        """Transform a batch of RGB images.

        Args:
            images: RGB PIL images, e.g. from :func:`load_image`.

        Returns:
            ``(batch, metas)``: a C-contiguous float32 array ``(B, 3, H, W)`` holding ``(x / 255 - mean) / std``, and
            one :class:`ImageMeta` per image.

        Raises:
            InputError: ``images`` is empty, not a sequence, or holds something other than an RGB PIL image.
        """
        if isinstance(images, Image.Image):
            raise InputError("Preprocessor takes a sequence of images, got a single image. Wrap it: pre([image]).")
        if not isinstance(images, Sequence) or len(images) == 0:
            raise InputError("Preprocessor needs a non-empty sequence (list/tuple) of RGB PIL images.")
        out_h, out_w = self.config.input_size
        batch = np.empty((len(images), 3, out_h, out_w), dtype=np.float32)
        metas: list[ImageMeta] = []
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise InputError(
                    f"images[{i}] is a {type(image).__name__}, not a PIL image. Load it with "
                    "engine.preprocess.load_image."
                )
            if image.mode != "RGB":
                raise InputError(
                    f"images[{i}] has mode {image.mode!r}, the preprocessor needs 'RGB'. Load it with "
                    "engine.preprocess.load_image, which converts every mode to RGB."
                )
            if image.width < 1 or image.height < 1:
                raise InputError(f"images[{i}] has no pixels (size {image.size}). Pass a non-empty image.")
            pixels, meta = self._one(image)
            chw = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
            batch[i] = (chw - self._mean) / self._std
            metas.append(meta)
        return batch, metas

    def _one(self, image: Image.Image) -> tuple[np.ndarray, ImageMeta]:
        width, height = image.size
        (new_w, new_h), (left, top, right, bottom) = self.plan((width, height))
        resized = image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), self._resample)
        cropped = (
            resized if (left, top, right, bottom) == (0, 0, new_w, new_h) else resized.crop((left, top, right, bottom))
        )
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, right * sx, bottom * sy)
        return np.asarray(cropped, dtype=np.uint8), ImageMeta(original_size=(width, height), crop_box=box)


def _crop_offset(size: int, crop: int) -> int:
    """torchvision CenterCrop offset; negative when the crop is larger than the image (zero padding)."""
    if crop > size:
        return -((crop - size) // 2)
    return round((size - crop) / 2.0)


# --------------------------------------------------------------------------------------------------------------------
# saliency_to_image
# --------------------------------------------------------------------------------------------------------------------


def saliency_to_image(saliency: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Upsample a low-resolution saliency map onto the original image.

    The map covers ``meta.crop_box``. Each original pixel whose centre lies inside the box gets the bilinear
    interpolation of the map at that centre, with ``align_corners=False`` semantics (identical to
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` when the box is the whole image).
    Pixels outside the box are 0: the network never saw them, so the map says nothing about them.

    Args:
        saliency: a 2-D ``(h, w)`` map, nominally in [0, 1].
        meta: the :class:`ImageMeta` the preprocessor returned for the image.

    Returns:
        A float32 ``(height, width)`` array at the original image size, clipped to [0, 1].

    Raises:
        InputError: the map is not a non-empty 2-D numeric array, holds NaN or inf, or the crop box is empty.
    """
    s = np.asarray(saliency)
    if s.ndim != 2 or s.size == 0:
        raise InputError(
            f"saliency must be a non-empty 2-D (h, w) map, got shape {s.shape}. Squeeze batch/channel axes first, "
            "e.g. saliency[0, 0]."
        )
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer) or s.dtype == np.bool_):
        raise InputError(f"saliency must be numeric, got dtype {s.dtype}. Pass a float32 array.")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise InputError(
            "saliency holds NaN or infinite values; the explainer produced an invalid map. Check the model output "
            "or replace them with np.nan_to_num before mapping."
        )
    width, height = (int(v) for v in meta.original_size)
    left, top, right, bottom = (float(v) for v in meta.crop_box)
    if right <= left or bottom <= top:
        raise InputError(
            f"meta.crop_box {meta.crop_box} is empty; it must be (left, top, right, bottom) with right > left."
        )
    out = np.zeros((height, width), dtype=np.float32)
    rows = _axis_weights(height, top, bottom, s.shape[0])
    cols = _axis_weights(width, left, right, s.shape[1])
    if rows is None or cols is None:
        return out
    (y_lo, y_hi, y0, y1, wy), (x_lo, x_hi, x0, x1, wx) = rows, cols
    tmp = s[y0] * (1.0 - wy)[:, None] + s[y1] * wy[:, None]
    sub = tmp[:, x0] * (1.0 - wx) + tmp[:, x1] * wx
    out[y_lo:y_hi, x_lo:x_hi] = np.clip(sub, 0.0, 1.0)
    return out


def _axis_weights(
    n_out: int, start: float, stop: float, n_in: int
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None:
    """Bilinear (align_corners=False) source indices/weights for the output pixels whose centre is in [start, stop)."""
    centres = np.arange(n_out, dtype=np.float64) + 0.5
    inside = np.nonzero((centres >= start) & (centres < stop))[0]
    if inside.size == 0:
        return None
    lo, hi = int(inside[0]), int(inside[-1]) + 1
    src = (centres[lo:hi] - start) * (n_in / (stop - start)) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    weight = src - i0
    return lo, hi, i0, i1, weight
