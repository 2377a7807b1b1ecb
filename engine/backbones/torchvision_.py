"""Adapters over torchvision classifiers: ``vit_*`` (VisionTransformer), ResNets, VGGs and MobileNetV2."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import (
    BackboneAdapter,
    CNNHeadParts,
    ViTParts,
    children_names,
    mha_self_attention,
    mha_weights,
    resample_patch_grid,
)
from .fetch import fetching, torchvision_source
from .taps import RESNET_TAPS, last_children, last_maxpools


class TorchvisionViT(BackboneAdapter):
    kind = "vit"
    library = "torchvision"
    DEFAULT_TAPS = {"*": last_children("encoder.layers")}

    square_inputs_only = True  # VisionTransformer._process_input checks height == width == image_size

    @property
    def prefix_tokens(self) -> int:
        return 1  # the class token

    def encoder_taps(self) -> list[str]:
        """``encoder.dropout`` (its output, tokens plus position embedding, is the first layer's input), then
        ``encoder.layers.encoder_layer_0`` ... ``_{n-1}``."""
        return ["encoder.dropout", *children_names(self.model, "encoder.layers")]

    def _vit_lora_targets(self, block: str) -> list[tuple[str, list[str] | None]]:
        return self._attention_target(f"{block}.self_attention")

    @property
    def patch_size(self) -> tuple[int, int]:
        return int(self.model.patch_size), int(self.model.patch_size)

    @property
    def native_input_size(self) -> tuple[int, int]:
        return int(self.model.image_size), int(self.model.image_size)

    def _set_input_size(self, size: tuple[int, int], grid: tuple[int, int], old_grid: tuple[int, int]) -> None:
        m = self.model
        pos = m.encoder.pos_embedding  # (1, 1 + grid, D)
        with torch.no_grad():
            pos.data = resample_patch_grid(pos.detach().clone(), old_grid, grid, self.prefix_tokens)
        m.image_size = size[0]
        m.seq_length = int(pos.shape[1])

    def vit_parts(self) -> ViTParts:
        m = self.model
        block = m.encoder.layers[-1]

        def prefix(x: Tensor) -> Tensor:
            x = m._process_input(x)
            x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = m.encoder.dropout(x + m.encoder.pos_embedding)
            for blk in m.encoder.layers[:-1]:
                x = blk(x)
            return x

        def head_tokens(y: Tensor) -> Tensor:
            return m.heads(m.encoder.ln(y)[:, 0])

        def head_cls(v: Tensor) -> Tensor:  # the class token: (..., 1, D)
            return m.heads(m.encoder.ln(v[..., 0, :]))

        g = m.image_size // m.patch_size
        return ViTParts(
            prefix=prefix,
            norm1=block.ln_1,
            attention=mha_self_attention(block.self_attention),
            ls1=block.dropout,
            norm2=block.ln_2,
            mlp=block.mlp,
            ls2=nn.Identity(),
            head_tokens=head_tokens,
            head_prefix=head_cls,
            read_tokens=(0,),
            attn_weights=mha_weights(block.self_attention),
            grid=(g, g),
            num_prefix_tokens=self.prefix_tokens,
        )


class TorchvisionCNN(BackboneAdapter):
    """ResNet (``layer4`` output), VGG (after ``avgpool``) and MobileNetV2 (``features`` output)."""

    kind = "cnn"
    library = "torchvision"
    DEFAULT_TAPS = {
        "vgg*": last_maxpools("features"),
        "resnet*": RESNET_TAPS,
        "resnext*": RESNET_TAPS,
        "wide_resnet*": RESNET_TAPS,
        # the last stride-16 stage, the last inverted-residual stage (stride 32), the activated head conv
        "mobilenet_v2": ["features.13", "features.17", "features.18"],
    }

    def encoder_taps(self) -> list[str]:
        """Stage outputs in order. ResNets: the stem (``maxpool``), ``layer1`` ... ``layer4``. VGGs: the
        ``MaxPool2d`` children of ``features``. MobileNets: every child of ``features`` (mobilenet_v2:
        ``features.0`` ... ``features.18``)."""
        m = self.model
        fam = self._family()
        if fam == "resnet":
            return ["maxpool", "layer1", "layer2", "layer3", "layer4"]
        return children_names(m, "features", nn.MaxPool2d) or children_names(m, "features")

    def _family(self) -> str:
        m = self.model
        if hasattr(m, "layer4") and hasattr(m, "fc"):
            return "resnet"
        if hasattr(m, "features") and hasattr(m, "avgpool") and isinstance(m.classifier, nn.Sequential):
            return "vgg"
        if hasattr(m, "features") and hasattr(m, "classifier"):
            return "mobilenet"
        raise UnsupportedModelError(
            f"torchvision/{self.name}: unknown CNN family; supported: resnet*, vgg*, mobilenet_v2."
        )

    def cnn_features(self, x: Tensor, layer: str = "features") -> Tensor:
        if layer != "features":
            raise UnsupportedModelError(f"torchvision/{self.name} offers only the ReciproCAM layer 'features'.")
        m = self.model
        fam = self._family()
        if fam == "resnet":
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        if fam == "vgg":
            return m.avgpool(m.features(x))
        return m.features(x)

    def cnn_head(self, a: Tensor, layer: str = "features") -> Tensor:
        m = self.model
        fam = self._family()
        if fam == "resnet":
            return m.fc(torch.flatten(m.avgpool(a), 1))
        if fam == "vgg":
            return m.classifier(torch.flatten(a, 1))
        return m.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(a, 1), 1))

    def cnn_head_parts(self, layer: str = "features") -> CNNHeadParts | None:
        m = self.model
        fam = self._family()
        if fam == "resnet":
            return CNNHeadParts(None, "avg", m.fc)
        if fam == "vgg":
            return CNNHeadParts(None, "flatten", m.classifier) if isinstance(m.classifier[0], nn.Linear) else None
        return CNNHeadParts(None, "avg", m.classifier)


def fuse_batchnorm_layout(model: nn.Module) -> nn.Module:
    """The layout of a classifier whose BatchNorms were folded into its convolutions (deployment exports).

    Every ``BatchNorm2d`` becomes ``Identity``, every ``Conv2d`` gets a bias, and ``ReLU6`` becomes ``ReLU`` (as in the
    int8 MobileNetV2 of pytorch/android-demo-app, whose dequantised weights ship in ``../shared/weights``). Weights
    are loaded afterwards; this only changes the structure.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.Identity())
        elif isinstance(child, nn.ReLU6):
            setattr(model, name, nn.ReLU(inplace=child.inplace))
        else:
            fuse_batchnorm_layout(child)
        if isinstance(child, nn.Conv2d) and child.bias is None:
            child.bias = nn.Parameter(torch.zeros(child.out_channels))
    return model


def build_torchvision(name: str, num_classes: int, pretrained: bool, kwargs: dict) -> BackboneAdapter:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import torchvision
    from torchvision.models.vision_transformer import VisionTransformer

    kwargs = dict(kwargs)
    fused = bool(kwargs.pop("fused", False))
    if fused and pretrained:
        raise UnsupportedModelError(
            "fused=True describes BatchNorm-folded weights; pass them as a file (--weights), not weights='pretrained'."
        )
    spec = f"torchvision/{name}"
    guard = fetching(spec, lambda: torchvision_source(name)) if pretrained else contextlib.nullcontext()
    try:
        weights = "DEFAULT" if pretrained else None
        with guard:  # pretrained: fail fast offline, one clear message when the download fails
            model = torchvision.models.get_model(name, weights=weights, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError) as e:
        raise UnsupportedModelError(
            f"torchvision cannot build {name!r}: {e}. List names with torchvision.models.list_models()."
        ) from e
    if fused:
        fuse_batchnorm_layout(model)
    if isinstance(model, VisionTransformer):
        return TorchvisionViT(model, name, num_classes)
    adapter = TorchvisionCNN(model, name, num_classes)
    adapter._family()  # fail early on unsupported families
    return adapter
