"""Adapters over timm models: ViT/DeiT (``VisionTransformer``) and CNNs (EfficientNet, ResNet, any other)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import AttentionWeights, BackboneAdapter, CNNHeadParts, ViTParts, children_names, resample_patch_grid
from .fetch import fetching, timm_source
from .taps import EFFICIENTNET_LITE_TAPS, RESNET_TAPS, last_children


def _timm_attention_weights(attn: nn.Module) -> AttentionWeights | None:
    """q/k/v weights of timm's ``Attention``; None when it has qk-norm, a gate or a post-attention norm."""
    qkv = getattr(attn, "qkv", None)
    if not isinstance(qkv, nn.Linear) or getattr(attn, "gate", None) is not None:
        return None
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, name, nn.Identity()), nn.Identity):
            return None
    d = qkv.in_features
    if qkv.out_features != 3 * d:
        return None
    w = qkv.weight
    b = qkv.bias if qkv.bias is not None else torch.zeros(3 * d, dtype=w.dtype, device=w.device)
    return AttentionWeights(w[:d], b[:d], w[d : 2 * d], b[d : 2 * d], w[2 * d :], b[2 * d :], attn.num_heads, attn.proj)


class TimmViT(BackboneAdapter):
    """timm ``VisionTransformer`` (ViT, DeiT, ...)."""

    kind = "vit"
    library = "timm"
    DEFAULT_TAPS = {"*": last_children("blocks")}

    @property
    def prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    def encoder_taps(self) -> list[str]:
        """``norm_pre`` (the embedded tokens that enter ``blocks.0``; an ``nn.Identity`` in most ViTs, whose hooks
        fire all the same), then ``blocks.0`` ... ``blocks.{n-1}``."""
        return ["norm_pre", *children_names(self.model, "blocks")]

    def _vit_lora_targets(self, block: str) -> list[tuple[str, list[str] | None]]:
        return self._attention_target(f"{block}.attn.qkv")

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.model.patch_embed.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, tuple | list) else (int(p), int(p))

    @property
    def native_input_size(self) -> tuple[int, int]:
        size = self.model.patch_embed.img_size
        if size is None:  # a dynamic-size patch embedding without a set size
            grid, patch = self.model.patch_embed.grid_size, self.patch_size
            return int(grid[0]) * patch[0], int(grid[1]) * patch[1]
        return (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))

    def _set_input_size(self, size: tuple[int, int], grid: tuple[int, int], old_grid: tuple[int, int]) -> None:
        m = self.model
        pos = m.pos_embed
        old = pos.detach().clone() if pos is not None else None
        m.set_input_size(img_size=size)  # timm updates patch_embed (img_size, grid_size, num_patches), pretrained_cfg
        if pos is not None:  # one resampling rule for every library, in the parameter's dtype, on the same Parameter
            prefix = 0 if getattr(m, "no_embed_class", False) else self.prefix_tokens
            with torch.no_grad():
                pos.data = resample_patch_grid(old, old_grid, grid, prefix)
            m.pos_embed = pos

    def vit_parts(self) -> ViTParts:
        m = self.model
        block = m.blocks[-1]

        def prefix(x: Tensor) -> Tensor:
            x = m.patch_embed(x)
            x = m._pos_embed(x)
            x = m.patch_drop(x)
            x = m.norm_pre(x)
            for blk in m.blocks[:-1]:
                x = blk(x)
            return x

        def head_tokens(y: Tensor) -> Tensor:
            return m.forward_head(m.norm(y))

        def head_cls(v: Tensor) -> Tensor:  # VisionTransformer.forward_head on the class token: (..., 1, D)
            return m.head(m.head_drop(m.fc_norm(m.norm(v[..., 0, :]))))

        def head_distilled(v: Tensor) -> Tensor:
            # VisionTransformerDistilled.forward_head (eval): the mean of the class-token and distillation-token heads,
            # without fc_norm; v is (..., 2, D): the class and distillation tokens
            v = m.norm(v)
            return (m.head(m.head_drop(v[..., 0, :])) + m.head_dist(m.head_drop(v[..., 1, :]))) / 2

        token_pool = m.global_pool == "token" and getattr(m, "attn_pool", None) is None
        distilled = hasattr(m, "head_dist") and hasattr(m, "dist_token")  # timm's VisionTransformerDistilled (DeiT)
        if distilled:
            head_prefix, read_tokens = head_distilled, (0, 1)
        else:
            head_prefix, read_tokens = (head_cls if token_pool else None), (0,)
        grid = tuple(m.patch_embed.grid_size)
        return ViTParts(
            prefix=prefix,
            norm1=block.norm1,
            attention=block.attn,
            ls1=nn.Sequential(block.ls1, block.drop_path1),
            norm2=block.norm2,
            mlp=block.mlp,
            ls2=nn.Sequential(block.ls2, block.drop_path2),
            head_tokens=head_tokens,
            head_prefix=head_prefix,
            read_tokens=read_tokens,
            attn_weights=_timm_attention_weights(block.attn),
            grid=(int(grid[0]), int(grid[1])),
            num_prefix_tokens=self.prefix_tokens,
        )


class TimmCNN(BackboneAdapter):
    """Any timm CNN with the ``forward_features`` / ``forward_head`` split.

    The fast ReciproCAM head split is known for EfficientNet-family (incl. MobileNetV2 and EfficientNet-Lite) and
    ResNet-family models with average pooling; other CNNs use the reference path.

    Layers: ``"features"`` is the output of ``forward_features`` (the last feature map). For EfficientNet-family
    models ``"pre_head"`` is the output of the last block stage, before the 1x1 ``conv_head``; its head then starts
    with a per-position non-linear map (conv, BatchNorm, activation).
    """

    kind = "cnn"
    library = "timm"
    DEFAULT_TAPS = {
        "resnet*": RESNET_TAPS,
        "resnext*": RESNET_TAPS,
        "tf_efficientnet_lite*": EFFICIENTNET_LITE_TAPS,
        "efficientnet_lite*": EFFICIENTNET_LITE_TAPS,
    }

    def encoder_taps(self) -> list[str]:
        """Stage outputs in order.

        EfficientNet family (``EfficientNet``, ``MobileNetV3``: EfficientNet(-Lite), MobileNetV2/V3 ...): the stem
        (``bn1``), ``blocks.0`` ... ``blocks.{n-1}``, then the head conv's activated output ``bn2`` where the model
        has it. ResNets: the stem (``maxpool``), ``layer1`` ... ``layer4``. Other models: the modules of timm's
        ``feature_info``.
        """
        m = self.model
        if all(hasattr(m, a) for a in ("conv_stem", "bn1", "blocks")) and isinstance(m.blocks, nn.Sequential):
            head = ["bn2"] if isinstance(getattr(m, "bn2", None), nn.Module) else []  # EfficientNet; not MobileNetV3
            return ["bn1", *children_names(m, "blocks"), *head]
        if all(hasattr(m, a) for a in ("maxpool", "layer1", "layer2", "layer3", "layer4")):
            return ["maxpool", "layer1", "layer2", "layer3", "layer4"]
        info = getattr(m, "feature_info", None)
        names = [f.get("module") for f in info] if isinstance(info, list) and info else []
        modules = dict(m.named_modules())
        if names and all(isinstance(n, str) and n in modules for n in names):
            return names
        raise self._unknown_encoder("this timm model (no known stage layout, no usable feature_info)")

    def _is_efficientnet(self) -> bool:
        return all(hasattr(self.model, a) for a in ("conv_head", "bn2", "blocks", "classifier"))

    def _check_layer(self, layer: str) -> None:
        if layer == "features" or (layer == "pre_head" and self._is_efficientnet()):
            return
        raise UnsupportedModelError(
            f"timm/{self.name} has no ReciproCAM layer {layer!r}; use 'features'"
            + (" or 'pre_head'." if self._is_efficientnet() else ".")
        )

    def cnn_features(self, x: Tensor, layer: str = "features") -> Tensor:
        self._check_layer(layer)
        m = self.model
        if layer == "pre_head":
            return m.blocks(m.bn1(m.conv_stem(x)))
        return m.forward_features(x)

    def _pre_head_pointwise(self) -> nn.Module:
        return nn.Sequential(self.model.conv_head, self.model.bn2)

    def cnn_head(self, a: Tensor, layer: str = "features") -> Tensor:
        self._check_layer(layer)
        if layer == "pre_head":
            a = self._pre_head_pointwise()(a)
        return self.model.forward_head(a)

    def cnn_head_parts(self, layer: str = "features") -> CNNHeadParts | None:
        self._check_layer(layer)
        m = self.model
        pool = getattr(m, "global_pool", None)
        if getattr(pool, "pool_type", None) != "avg" or not (self._is_efficientnet() or hasattr(m, "fc")):
            return None
        classifier = m.get_classifier()
        if not isinstance(classifier, nn.Linear):
            return None
        pointwise = self._pre_head_pointwise() if layer == "pre_head" else None
        return CNNHeadParts(pointwise=pointwise, reduce="avg", post=classifier)


def build_timm(name: str, num_classes: int, pretrained: bool, kwargs: dict) -> BackboneAdapter:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import timm
    from timm.models.vision_transformer import VisionTransformer

    guard = fetching(f"timm/{name}", lambda: timm_source(name, kwargs)) if pretrained else contextlib.nullcontext()
    try:
        with guard:  # pretrained: fail fast offline, one clear message when the download fails
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError for unknown names
        raise UnsupportedModelError(f"timm cannot build {name!r}: {e}. List names with timm.list_models().") from e
    if isinstance(model, VisionTransformer):
        return TimmViT(model, name, num_classes)
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        return TimmCNN(model, name, num_classes)
    raise UnsupportedModelError(f"timm/{name} is neither a VisionTransformer nor a CNN with forward_head.")
