"""Decoding: turn a path, encoded bytes, a PIL image or a ``uint8`` array into a fully decoded RGB image.

* :func:`load_image` decodes one image, rejecting bad input (missing, empty, truncated or corrupt files, image bombs,
  modes that cannot become RGB) with :class:`~engine.errors.ImageDecodeError` / :class:`~engine.errors.InputError`.
* :data:`IMAGE_SUFFIXES` is the one set of file suffixes treated as images when a folder is expanded (the CLI, the
  dataset readers, the benchmarks); :func:`is_image_file` and :func:`list_image_files` apply it.
"""

from __future__ import annotations

import io
import os
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "SOURCE_SIZE_KEY",
    "is_image_file",
    "jpeg_draft_size",
    "list_image_files",
    "split_image_files",
    "load_image",
]

SOURCE_SIZE_KEY = "xai_engine_source_size"
"""Key of ``Image.info`` holding the stored ``(width, height)`` of a JPEG that :func:`load_image` decoded reduced."""

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest ``width * height`` :func:`load_image` decodes unless told otherwise (a 8000x8000 photo)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"})
"""File suffixes (compared in lower case) treated as images when a folder is expanded into its image files."""

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255, 255)


# --------------------------------------------------------------------------------------------------------------------
# image files
# --------------------------------------------------------------------------------------------------------------------


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image file by its suffix (:data:`IMAGE_SUFFIXES`) and is not a hidden file."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def jpeg_draft_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(width, height)`` a JPEG must keep when decoded for a network input of ``input_size = (height, width)``:
    twice the input, so larger JPEGs decode reduced (``load_image(draft=...)``) with room for the resize."""
    height, width = input_size
    return 2 * width, 2 * height


def split_image_files(folder: Path, *, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """The files in ``folder`` (and its subfolders with ``recursive``), sorted by path, split into
    ``(image files, other files)`` by :func:`is_image_file` (hidden files count as others)."""
    files = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    images = [p for p in files if is_image_file(p)]
    return images, [p for p in files if not is_image_file(p)]


def list_image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and its subfolders with ``recursive``; hidden files skipped), sorted by path."""
    return split_image_files(folder, recursive=recursive)[0]


# --------------------------------------------------------------------------------------------------------------------
# load_image
# --------------------------------------------------------------------------------------------------------------------


def load_image(
    source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Image.Image:
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

    Pillow's decompression-bomb warning is turned into an error (silenced where ``max_pixels`` lifts the limit) with
    ``warnings.catch_warnings`` around the header read, and around the pixel decode only for images above Pillow's
    warning threshold (``PIL.Image.MAX_IMAGE_PIXELS``). Those blocks swap the process-wide filter list, so they are
    held under one lock: threads calling ``load_image`` at once neither see each other's filter nor leave one
    behind. (Other code changing warning filters while such a block is open still races with it, as with every
    ``catch_warnings`` in Python 3.11.) Pillow's global state (``MAX_IMAGE_PIXELS``,
    ``ImageFile.LOAD_TRUNCATED_IMAGES``) is never changed.

    Args:
        source: a path (``str`` or ``os.PathLike``); encoded image bytes (``bytes``, ``bytearray``,
            ``memoryview``); a :class:`PIL.Image.Image`; or a ``uint8`` numpy array shaped ``(H, W)`` (grey),
            ``(H, W, 1)``, ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA, composited over white).
        max_pixels: largest ``width * height`` accepted for files, bytes and PIL images, checked from the header
            before any pixel data is decoded (decompression-bomb guard). ``None`` disables this check; Pillow's own
            hard limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``) still applies to files and bytes.
        draft: ``(width, height)`` the decoded image needs at least. A JPEG file or bytes at least twice that size
            is decoded reduced by 1/2, 1/4 or 1/8 (Pillow's draft mode: DCT scaling, fast, little memory), keeping
            both sides at least ``draft``. Its stored size is kept in ``image.info[SOURCE_SIZE_KEY]``. The pixel
            limits then apply to the reduced size, so a JPEG above Pillow's hard limit can still be explained.
            Other formats cannot be decoded reduced and keep every check. ``None`` (default): full decode.

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
        return _decode(io.BytesIO(data), "the image data", max_pixels, draft)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_pixels, draft)
    raise InputError(
        f"Cannot load an image from a {type(source).__module__}.{type(source).__qualname__}. Pass a file path, "
        "the encoded bytes of an image file, a PIL.Image.Image, or a uint8 numpy array shaped (H, W), (H, W, 3) or "
        "(H, W, 4)."
    )


def _load_path(source: str | os.PathLike, max_pixels: int | None, draft: tuple[int, int] | None) -> Image.Image:
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
            return _decode(fh, f"image file {path}", max_pixels, draft)
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
            f"load_image(..., max_pixels={width * height}) (CLI: --max-pixels {width * height}), or downscale it.",
            too_large=True,
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
    return ImageDecodeError(f"{_cap(what)} has {pixels}. {fix}", too_large=True)


def _decode(fp: IO[bytes], what: str, max_pixels: int | None, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open encoded image data lazily, check its size from the header, then decode it fully (JPEGs: reduced when
    ``draft`` allows)."""
    if draft is not None:
        start = fp.tell()
        is_jpeg = fp.read(3) == b"\xff\xd8\xff"
        fp.seek(start)
        if is_jpeg:
            reduced = _decode_jpeg_reduced(fp, what, max_pixels, draft)
            if reduced is not None:
                return reduced
            fp.seek(start)
    with _bomb_warnings(max_pixels):  # Image.open checks the header's size against Pillow's limits
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


def _decode_jpeg_reduced(
    fp: IO[bytes], what: str, max_pixels: int | None, draft: tuple[int, int]
) -> Image.Image | None:
    """A JPEG decoded at the smallest DCT scale that keeps both sides >= ``draft``; None when no reduction applies.

    The JPEG is opened without ``Image.open``'s decompression-bomb check: the checks apply to the reduced size (at
    most 1/8 per side smaller), which is what gets decoded.
    """
    from PIL import JpegImagePlugin

    try:
        image = JpegImagePlugin.JpegImageFile(fp)
    except Exception:  # let the normal path produce its message  # noqa: BLE001
        return None
    with image:
        stored = image.size
        want_w, want_h = (max(1, int(v)) for v in draft)
        if stored[0] < 2 * want_w or stored[1] < 2 * want_h:
            return None  # no reduction possible: the normal path, with every check
        try:
            image.draft("RGB", (want_w, want_h))
        except Exception:  # noqa: BLE001 - a JPEG the draft cannot scale: decode normally
            return None
        if image.size == stored:
            return None
        limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0) or None
        _check_pixels(image.size, limit, f"{what} (reduced from {stored[0]}x{stored[1]})")
        reduced = image.size
        out = _finish(image, what, None)  # the reduced size was checked above: no bomb warning from Pillow
    # the stored size in the orientation of the result (EXIF rotation may have swapped the sides)
    out.info[SOURCE_SIZE_KEY] = stored if out.size == reduced else (stored[1], stored[0])
    return out


def _from_pil(image: Image.Image, max_pixels: int | None) -> Image.Image:
    return _finish(image, "the PIL image", max_pixels)


_WARNING_FILTERS_LOCK = threading.Lock()
"""Held while a ``catch_warnings`` block of this module is open. Such a block swaps the process-wide filter list in and
out; two of them interleaved by threads restore each other's copies, and a bomb-warning filter stays behind."""
if hasattr(os, "register_at_fork"):  # a child forked while another thread held it must not wait for it forever
    os.register_at_fork(after_in_child=_WARNING_FILTERS_LOCK._at_fork_reinit)


@contextmanager
def _bomb_warnings(max_pixels: int | None) -> Iterator[None]:
    """Make Pillow's bomb warning an error inside the block, unless the caller lifted the limit.

    When ``max_pixels`` is above Pillow's warning threshold (or ``None``), the caller has said it trusts larger
    images, so the warning is silenced instead; :func:`_check_pixels` enforces ``max_pixels`` itself.
    """
    with _WARNING_FILTERS_LOCK, warnings.catch_warnings():
        if max_pixels is None or max_pixels > Image.MAX_IMAGE_PIXELS:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        else:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _may_warn(size: tuple[int, int]) -> bool:
    """Whether Pillow's bomb check can warn while an image of ``size`` decodes (its checks during the decode see at
    most the size the header gave)."""
    return Image.MAX_IMAGE_PIXELS is not None and size[0] * size[1] > Image.MAX_IMAGE_PIXELS


def _finish(image: Image.Image, what: str, max_pixels: int | None) -> Image.Image:
    """Size check (header only), full decode, EXIF orientation and mode conversion. Returns a new image."""
    _check_pixels(image.size, max_pixels, what)
    try:
        # small images decode outside the lock (in parallel): Pillow's checks cannot warn for them
        with _bomb_warnings(max_pixels) if _may_warn(image.size) else nullcontext():
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
