"""The result of one explained prediction: class, scores, saliency map, and ways to view and save it.

Colour maps are small numpy look-up tables so that nothing here imports matplotlib.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .errors import InputError
from .fileio import atomic_write

__all__ = ["COLORMAPS", "Explanation", "FailedExplanation", "colormap_lut"]

# matplotlib's "jet" segment data: (position, value) control points per channel, linearly interpolated.
_JET_POINTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": (
        (0.0, 0.0),
        (0.125, 0.0),
        (0.375, 1.0),
        (0.64, 1.0),
        (0.91, 0.0),
        (1.0, 0.0),
    ),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
# Turbo (A. Mikhailov, Google, 2019, Apache-2.0): every 16th entry of the published 256-entry table (indices 0, 16,
# ..., 240, 255), linearly interpolated; within a few 8-bit levels of the full table.
_TURBO_INDEX = (*range(0, 256, 16), 255)
_TURBO_KEYS = (
    (0.18995, 0.07176, 0.23217),
    (0.25107, 0.25237, 0.63374),
    (0.27628, 0.42118, 0.89123),
    (0.25862, 0.57958, 0.99876),
    (0.15844, 0.73551, 0.92305),
    (0.09267, 0.86554, 0.76230),
    (0.19659, 0.94901, 0.59466),
    (0.42778, 0.99419, 0.38575),
    (0.64362, 0.98999, 0.23356),
    (0.80473, 0.92452, 0.20459),
    (0.93301, 0.81236, 0.22667),
    (0.99314, 0.67408, 0.20348),
    (0.98360, 0.49291, 0.12849),
    (0.92105, 0.31489, 0.05475),
    (0.81608, 0.18462, 0.01809),
    (0.66449, 0.08436, 0.00424),
    (0.47960, 0.01583, 0.01055),
)


def _jet_lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    channels = [np.interp(x, *zip(*_JET_POINTS[c], strict=True)) for c in ("red", "green", "blue")]
    return np.rint(np.stack(channels, axis=1) * 255.0).astype(np.uint8)


def _turbo_lut() -> np.ndarray:
    x = np.arange(256, dtype=np.float64)
    keys = np.asarray(_TURBO_KEYS)
    channels = [np.interp(x, _TURBO_INDEX, keys[:, c]) for c in range(3)]
    return np.rint(np.stack(channels, axis=1) * 255.0).astype(np.uint8)


COLORMAPS: dict[str, np.ndarray] = {"jet": _jet_lut(), "turbo": _turbo_lut()}
"""Colour maps by name: ``(256, 3)`` uint8 RGB look-up tables, entry ``i`` for saliency ``i / 255``."""


def colormap_lut(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 RGB look-up table of a colour map.

    Args:
        name: ``"jet"`` or ``"turbo"``.

    Returns:
        A read-only view of the table.

    Raises:
        InputError: the name is unknown.
    """
    try:
        lut = COLORMAPS[name]
    except (KeyError, TypeError):
        raise InputError(f"Unknown colormap {name!r}. Use one of {sorted(COLORMAPS)}.") from None
    view = lut.view()
    view.flags.writeable = False
    return view


@dataclass
class Explanation:
    """A classifier's prediction for one image, with the saliency map that explains it.

    Attributes:
        saliency: ``(H, W)`` float32 map in [0, 1] at the original image size (0 outside the region the network saw).
        class_id: the predicted class (arg-max of the logits).
        class_name: the label of ``class_id``.
        score: softmax probability of ``class_id``.
        target: the class the saliency map explains; equals ``class_id`` unless another class was asked for.
        topk: ``(class_id, class_name, probability)`` of the best classes, best first.
        timings: stage durations in milliseconds (e.g. ``{"preprocess": 3.1, "forward": 20.4}``).
        method: the explanation method (e.g. ``"gradcam"``).
        backend: the runtime that ran the model (e.g. ``"torch"``).
        saliency_lowres: the map at the resolution the explainer produced it, ``(h, w)``.
        image: the RGB image the map belongs to (same size as ``saliency``), or ``None`` if it was not kept.
        source: where the image came from (a path), if known.
        crop_box: (left, top, right, bottom) of the region of the image the network saw, in image pixels; it
            extends past the image where the input was padded (``"letterbox"``). Where it lies inside the image
            (``"crop"``), the overlay leaves the image untinted outside it (the map is 0 there by construction, not
            by evidence) and draws the box.
        precision: the precision the backend actually ran (``fp32``, ``bf16``, ...; OpenVINO reports its own).
        resize_mode: how the photo became the network input (``"letterbox"``, ``"squash"`` or ``"crop"``).
        target_name: the label of ``target``.
        target_score: softmax probability of ``target``.
        source_size: ``(width, height)`` of the photo as stored. It differs from the image's (and ``saliency``'s)
            size only when a large JPEG was decoded reduced (Pillow's draft mode; the map does not need more).
    """

    saliency: np.ndarray
    class_id: int
    class_name: str
    score: float
    target: int
    topk: list[tuple[int, str, float]]
    timings: dict[str, float]
    method: str
    backend: str
    saliency_lowres: np.ndarray
    image: Image.Image | None = field(default=None, repr=False)
    source: str | None = None
    crop_box: tuple[float, float, float, float] | None = None
    precision: str | None = None
    resize_mode: str | None = None
    target_name: str | None = None
    target_score: float | None = None
    source_size: tuple[int, int] | None = None

    ok = True  # a FailedExplanation has ok = False

    def heatmap(self, colormap: str = "jet") -> Image.Image:
        """Colour the saliency map.

        Args:
            colormap: ``"jet"`` or ``"turbo"``.

        Returns:
            An RGB image the size of ``saliency`` (values are clipped to [0, 1], NaN shown as 0).

        Raises:
            InputError: the colormap is unknown or ``saliency`` is not 2-D.
        """
        lut = colormap_lut(colormap)
        sal = np.asarray(self.saliency, dtype=np.float32)
        if sal.ndim != 2 or sal.size == 0:
            raise InputError(f"Explanation.saliency must be a non-empty 2-D (H, W) map, got shape {sal.shape}.")
        index = np.rint(np.clip(np.nan_to_num(sal, nan=0.0), 0.0, 1.0) * 255.0).astype(np.intp)
        return Image.fromarray(np.ascontiguousarray(lut[index]))

    def overlay(self, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """Blend the heatmap over the image: ``(1 - alpha) * image + alpha * heatmap``.

        Args:
            alpha: heatmap weight in [0, 1].
            colormap: ``"jet"`` or ``"turbo"``.

        Returns:
            An RGB image the size of the original image.

        Raises:
            InputError: there is no image, its size differs from the saliency map, or ``alpha`` is out of range.
        """
        if self.image is None:
            raise InputError(
                "This Explanation has no image to overlay on. Keep the image the map was computed for in "
                "Explanation.image, or use heatmap() for the colour map alone."
            )
        if not 0.0 <= float(alpha) <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {alpha}. 0 shows only the image, 1 only the heatmap.")
        heat = self.heatmap(colormap)
        if heat.size != self.image.size:
            raise InputError(
                f"The image is {self.image.size[0]}x{self.image.size[1]} but the saliency map is "
                f"{heat.size[0]}x{heat.size[1]}. Pass the image the map was computed for (after EXIF rotation)."
            )
        blended = Image.blend(self.image.convert("RGB"), heat, float(alpha))
        if self.crop_box is None:
            return blended
        left, top, right, bottom = (int(round(v)) for v in self.crop_box)
        out = self.image.convert("RGB")
        box = (max(0, left), max(0, top), min(out.size[0], right), min(out.size[1], bottom))
        if box == (0, 0, *out.size):  # the network saw the whole photo
            return blended
        out.paste(blended.crop(box), box[:2])
        width = max(1, round(min(out.size) / 200))  # the crop's outline, visible at any photo size
        ImageDraw.Draw(out).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=(255, 255, 255), width=width)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary, without arrays or images.

        Returns:
            ``class_id``, ``class_name``, ``score``, ``target``, ``topk`` (list of ``{"id", "name", "prob"}``),
            ``timings``, ``method``, ``backend``, ``precision``, ``source``, ``saliency_shape``,
            ``saliency_lowres_shape``, ``crop_box``, ``resize_mode``, ``target_name``, ``target_score`` and
            ``source_size``.
        """
        return {
            "class_id": int(self.class_id),
            "class_name": str(self.class_name),
            "score": float(self.score),
            "target": int(self.target),
            "target_name": None if self.target_name is None else str(self.target_name),
            "target_score": None if self.target_score is None else float(self.target_score),
            "topk": [{"id": int(i), "name": str(n), "prob": float(p)} for i, n, p in self.topk],
            "timings": {str(k): float(v) for k, v in self.timings.items()},
            "method": str(self.method),
            "backend": str(self.backend),
            "precision": None if self.precision is None else str(self.precision),
            "source": None if self.source is None else str(self.source),
            "saliency_shape": [int(v) for v in np.shape(self.saliency)],
            "saliency_lowres_shape": [int(v) for v in np.shape(self.saliency_lowres)],
            "crop_box": None if self.crop_box is None else [float(v) for v in self.crop_box],
            "resize_mode": None if self.resize_mode is None else str(self.resize_mode),
            "source_size": None if self.source_size is None else [int(v) for v in self.source_size],
        }

    def save(self, out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
        """Write ``<stem>.png`` (the overlay, or the heatmap when there is no image) and ``<stem>.npy`` (saliency).

        Each file is written to a temporary file in ``out_dir`` and then moved into place with ``os.replace``, so an
        interrupted save leaves either the previous file or the complete new one, never a half-written one.

        Args:
            out_dir: destination folder, created if missing.
            stem: file name without extension (no path separators).

        Returns:
            ``{"png": path, "npy": path}``.

        Raises:
            InputError: ``stem`` is empty or contains a path separator.
        """
        if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or os.sep in stem:
            raise InputError(f"stem must be a plain file name without folders, got {stem!r}. Put folders in out_dir.")
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        picture = self.heatmap() if self.image is None else self.overlay()
        saliency = np.ascontiguousarray(self.saliency, dtype=np.float32)
        paths = {"png": folder / f"{stem}.png", "npy": folder / f"{stem}.npy"}
        atomic_write(paths["png"], lambda fh: picture.save(fh, format="PNG"))
        atomic_write(paths["npy"], lambda fh: np.save(fh, saliency, allow_pickle=False))
        return paths


@dataclass
class FailedExplanation:
    """An image that could not be explained, in its place in the results of ``Engine.explain(..., on_error="skip")``.

    Attributes:
        source: where the image came from (a path), if known.
        error: the message, which names the fix.
        kind: the error's class name (e.g. ``"ImageDecodeError"``).
    """

    source: str | None
    error: str
    kind: str = "EngineError"

    ok = False

    def to_dict(self) -> dict[str, Any]:
        """``{"source", "error", "error_kind"}``, the CLI's ``results.jsonl`` record of a skipped image."""
        return {"source": self.source, "error": self.error, "error_kind": self.kind}
