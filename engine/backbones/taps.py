"""Default-tap rules shared by the adapters (see ``BackboneAdapter.DEFAULT_TAPS``).

Shapes at 224x224 of the defaults they give:

=============================================  =========================================================================
backbone                                       taps (C x h x w)
=============================================  =========================================================================
torchvision ``vgg*``                           the last three max-pools of ``features``; vgg16: ``features.16``
                                               (256x28x28), ``features.23`` (512x14x14), ``features.30`` (512x7x7)
torchvision / timm ``resnet*``, ``resnext*``   ``layer2`` (512x28x28), ``layer3`` (1024x14x14), ``layer4`` (2048x7x7)
timm ViTs (``vit_*``, ``deit*``, ...)          the last three of ``blocks`` (ViT-B/16: ``blocks.9..11``, D x 14 x 14)
torchvision ``vit_*``                          the last three ``encoder.layers.encoder_layer_*`` (ViT-B/16: 9..11)
open_clip (ViT)                                the last three ``visual.transformer.resblocks.*``
timm ``tf_efficientnet_lite*``                 ``blocks.4`` (112x14x14), ``blocks.5`` (192x7x7), ``bn2`` (1280x7x7)
torchvision ``mobilenet_v2``                   ``features.13`` (96x14x14), ``features.17`` (320x7x7),
                                               ``features.18`` (1280x7x7)
=============================================  =========================================================================

The EfficientNet-Lite and MobileNetV2 taps follow T-TAME's ResNet choice (outputs of the last stages, decreasing
resolution): the last stage at stride 16 (the 14x14 map), the last inverted-residual stage at stride 32 (7x7) and
the final 1x1 head conv's activated output (``bn2`` in timm is BatchNorm + ReLU6; ``features.18`` in torchvision is
conv + BN + ReLU6), i.e. the very map the classifier pools.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

RESNET_TAPS = ["layer2", "layer3", "layer4"]
EFFICIENTNET_LITE_TAPS = ["blocks.4", "blocks.5", "bn2"]


def last_children(path: str, count: int = 3) -> Callable[[nn.Module], list[str]]:
    """Taps: the last ``count`` children of the container at ``path`` (e.g. a ViT's encoder blocks)."""

    def taps(model: nn.Module) -> list[str]:
        container = model.get_submodule(path)
        names = [name for name, _ in container.named_children()]
        return [f"{path}.{name}" for name in names[-count:]]

    return taps


def last_maxpools(path: str = "features", count: int = 3) -> Callable[[nn.Module], list[str]]:
    """Taps: the last ``count`` ``MaxPool2d`` children of the container at ``path`` (VGG)."""

    def taps(model: nn.Module) -> list[str]:
        container = model.get_submodule(path)
        names = [name for name, mod in container.named_children() if isinstance(mod, nn.MaxPool2d)]
        return [f"{path}.{name}" for name in names[-count:]]

    return taps


def default_tap_patterns() -> list[str]:
    """``library/pattern`` of every default-tap rule (for error messages)."""
    from .open_clip_ import OpenClipViT
    from .timm_ import TimmCNN, TimmViT
    from .torchvision_ import TorchvisionCNN, TorchvisionViT

    return sorted(
        f"{cls.library}/{pattern}{' (ViT)' if cls.kind == 'vit' else ''}"
        for cls in (TimmViT, TimmCNN, TorchvisionViT, TorchvisionCNN, OpenClipViT)
        for pattern in cls.DEFAULT_TAPS
    )
