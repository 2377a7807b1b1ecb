"""Helpers for tests and benchmarks: well-conditioned random models (nothing is downloaded).

Shipped in the library so that benchmarks and users' own tests can build the same seeded subjects as the test suite.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.backbones import BackboneAdapter, build_backbone
from engine.config import BackboneConfig


def perturb_for_tests(
    adapter: BackboneAdapter, seed: int = 1, head_std: float = 4.0, attn_gain: float = 30.0
) -> BackboneAdapter:
    """Make a random-init model a fair test subject.

    * LayerNorm weights and biases are perturbed (identity norms get folded away by compilers and hide bugs).
    * LayerScale gains (DINOv2, DeiT-3 start them at 1e-5, so the blocks would barely act) are set near 1.
    * The classifier head (both heads of a distilled DeiT) is re-randomised (torchvision initialises ViT heads to zero)
      and scaled so the logits have a spread of about ``head_std``: masked copies then move the class probabilities by
      far more than float32 noise, so min-max normalised maps are well conditioned.
    * ViTs: the last block's attention output projection is scaled by ``attn_gain``. In a random deep ViT the masked
      attention barely moves the output (map ranges of ~1e-3, where float32 noise is ~1e-7); the gain makes the
      masked path dominate, so a float32 comparison at 1e-4 tests the algebra rather than rounding.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in adapter.modules():
            if isinstance(mod, nn.LayerNorm) and mod.weight is not None:
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
            elif type(mod).__name__ == "LayerScale" and isinstance(getattr(mod, "gamma", None), nn.Parameter):
                mod.gamma.copy_(1 + 0.2 * torch.randn(mod.gamma.shape, generator=g))
        if adapter.kind == "vit":  # make the last block's attention (the masked path) dominate its residual
            adapter.vit_parts().attn_weights.proj.weight.mul_(attn_gain)
        heads = [_classifier(adapter)]
        if isinstance(getattr(adapter.model, "head_dist", None), nn.Linear):  # timm's distilled DeiT: two heads
            heads.append(adapter.model.head_dist)
        for head in heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=g))
            head.bias.copy_(0.1 * torch.randn(head.bias.shape, generator=g))
        x = torch.randn(2, 3, *input_size(adapter), generator=g)
        spread = adapter(x).std().item()
        for head in heads:
            head.weight.mul_(head_std / max(spread, 1e-6))
    return adapter.eval()


def input_size(adapter: BackboneAdapter) -> tuple[int, int]:
    """The input size a model was built for (a ViT's patch grid fixes it), 224 x 224 where the model does not say."""
    visual = getattr(adapter.model, "visual", None)  # open_clip
    size = getattr(getattr(adapter.model, "patch_embed", None), "img_size", None) or getattr(visual, "image_size", None)
    if size is None:
        return (224, 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _classifier(adapter: BackboneAdapter) -> nn.Linear:
    m = adapter.model
    for name in ("head", "heads.head", "classifier", "fc"):
        mod = m
        try:
            for part in name.split("."):
                mod = getattr(mod, part)
        except AttributeError:
            continue
        if isinstance(mod, nn.Linear):
            return mod
        if isinstance(mod, nn.Sequential) and isinstance(mod[-1], nn.Linear):
            return mod[-1]
    raise AssertionError(f"no linear classifier found on {type(m).__name__}")


def random_backbone(library: str, name: str, num_classes: int = 1000, seed: int = 0, **kwargs) -> BackboneAdapter:
    cfg = BackboneConfig(library, name, num_classes=num_classes, weights="random", kwargs=kwargs)
    return perturb_for_tests(build_backbone(cfg, seed=seed), seed=seed + 1)
