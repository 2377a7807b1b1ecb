"""The network-input transform: resize, crop and normalise a batch of RGB images (:class:`Preprocessor`), recording
for each image which region of the original the network saw (:class:`ImageMeta`).

Every backend shares this one implementation, so an image becomes exactly the same tensor whatever runs the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..config import PreprocessConfig
from ..errors import InputError

__all__ = ["ImageMeta", "Preprocessor"]

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# --------------------------------------------------------------------------------------------------------------------
# Preprocessor
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ImageMeta:
    """Where a network input came from.

    Attributes:
        original_size: ``(width, height)`` of the image given to the :class:`Preprocessor`.
        crop_box: ``(left, top, right, bottom)`` in original-image pixel coordinates (continuous; pixel ``x`` spans
            ``[x, x + 1)``) of the region shown by the network input. It extends past the image edges where the
            input was padded (``"letterbox"``, or a crop larger than the resized image).
        resize_mode: the preprocessor's ``resize_mode`` (``"crop"``, ``"letterbox"`` or ``"squash"``).
    """

    original_size: tuple[int, int]
    crop_box: tuple[float, float, float, float]
    resize_mode: str = "crop"


class Preprocessor:
    """Resize, crop and normalise RGB images into a ``(B, 3, H, W)`` float32 batch.

    ``"crop"`` mode reproduces timm's evaluation transform (``transforms_imagenet_eval``, ``crop_mode="center"``):
    ``scale = floor(input / crop_pct)`` per side; for a square input the shorter image side is resized to ``scale``
    and the longer to ``int(scale * long / short)`` (torchvision ``Resize(int)``, which truncates); for a non-square
    input each side is divided by ``min(h / scale_h, w / scale_w)`` and rounded (timm ``ResizeKeepRatio``). The
    centre crop offsets are ``int(round((size - crop) / 2))`` (torchvision ``CenterCrop``). ``"letterbox"`` mode
    resizes the image by ``min(input_w / w, input_h / h)`` (each side rounded, at least 1 pixel), centres it and pads
    the rest with the mean colour (``round(255 * mean)``, about 0 after normalisation), so the whole photo is seen
    undistorted. ``"squash"`` mode resizes the whole image to ``input_size``. Resizing uses Pillow with the
    configured resampling filter.

    Args:
        config: the transform settings; the default :class:`~engine.config.PreprocessConfig` when ``None``.
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config if config is not None else PreprocessConfig()
        self._resample = _RESAMPLING[self.config.interpolation]
        self._mean = np.asarray(self.config.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(self.config.std, dtype=np.float32).reshape(3, 1, 1)
        self._pad = tuple(round(255.0 * m) for m in self.config.mean)  # letterbox padding: the mean colour

    def __repr__(self) -> str:
        return f"Preprocessor({self.config!r})"

    def plan(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """The geometry applied to an image of ``size = (width, height)``.

        Args:
            size: ``(width, height)`` of the input image.

        Returns:
            ``((resized_width, resized_height), (left, top, right, bottom))``: the size the image is resized to
            and the crop taken from the resized image, in resized pixels (negative offsets, or a box past the resized
            size, where the input is padded).
        """
        width, height = size
        out_h, out_w = self.config.input_size
        if self.config.resize_mode == "squash":
            return (out_w, out_h), (0, 0, out_w, out_h)
        if self.config.resize_mode == "letterbox":
            scale = min(out_w / width, out_h / height)
            new_w = min(out_w, max(1, round(width * scale)))
            new_h = min(out_h, max(1, round(height * scale)))
            left, top = -((out_w - new_w) // 2), -((out_h - new_h) // 2)
            return (new_w, new_h), (left, top, left + out_w, top + out_h)
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
        if (left, top, right, bottom) == (0, 0, new_w, new_h):
            cropped = resized
        elif self.config.resize_mode == "letterbox":
            cropped = Image.new("RGB", (right - left, bottom - top), self._pad)
            cropped.paste(resized, (-left, -top))
        else:
            cropped = resized.crop((left, top, right, bottom))
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, right * sx, bottom * sy)
        meta = ImageMeta(original_size=(width, height), crop_box=box, resize_mode=self.config.resize_mode)
        return np.asarray(cropped, dtype=np.uint8), meta


def _crop_offset(size: int, crop: int) -> int:
    """torchvision CenterCrop offset; negative when the crop is larger than the image (zero padding)."""
    if crop > size:
        return -((crop - size) // 2)
    return round((size - crop) / 2.0)
