"""Seeded subjects for the LRP tests: tiny real architectures with non-trivial BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn

from engine.backbones import build_backbone
from engine.backbones.torchvision_ import TorchvisionCNN
from engine.config import BackboneConfig, ExplainerConfig
from engine.graph import build_graph


def randomise(adapter: nn.Module, seed: int = 1, zero_bias: bool = False, bn_eps: float | None = None) -> nn.Module:
    """Non-trivial BatchNorm statistics (fresh ones are the identity; timm zero-inits the last BN of each residual
    branch, which would silence every branch). ``zero_bias``: every folded bias 0 (BatchNorm shift and mean, conv and
    linear biases), the condition under which z+ conserves exactly as eps -> 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in adapter.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if bn_eps is not None:
                    mod.eps = bn_eps
                if zero_bias:
                    mod.bias.zero_()
                    mod.running_mean.zero_()
            elif isinstance(mod, nn.Conv2d | nn.Linear) and mod.bias is not None:
                if zero_bias:
                    mod.bias.zero_()
                else:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return adapter.eval()


def zero_biases(adapter: nn.Module) -> nn.Module:
    """Every folded bias 0, the weights and BatchNorm scales kept (for real weights)."""
    with torch.no_grad():
        for mod in adapter.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.bias.zero_()
                mod.running_mean.zero_()
            elif isinstance(mod, nn.Conv2d | nn.Linear) and mod.bias is not None:
                mod.bias.zero_()
    return adapter.eval()


def backbone(library: str, name: str, *, num_classes: int = 10, dtype=torch.float64, seed: int = 0, **kw):
    cfg = BackboneConfig(library, name, num_classes=num_classes, weights="random", kwargs=kw)
    return build_backbone(cfg, seed=seed).to(dtype).eval()


def graph(adapter, size: int, **options):
    return build_graph(adapter, ExplainerConfig("lrp", options), (size, size))


def small_cnn(dtype=torch.float64, seed: int = 1, bn_eps: float = 1e-5, act: str = "silu") -> TorchvisionCNN:
    """A small VGG-layout CNN with every non-skip layer kind LRP supports: timm's TF-SAME strided conv, BatchNorm,
    ReLU6, a depthwise conv, SiLU (``act="relu"``: ReLU), a 1x1 conv, an overlapping 3x3/2 max pool, a 2x2 average
    pool, an adaptive average pool that resamples 4x4 to 3x3 (overlapping windows) and a two-layer classifier.

    The conservation tests take ``act="relu"``: after the depthwise conv (9 inputs per output) some units have no
    positive contribution; a ReLU zeroes them, a SiLU leaves them a negative activation that the next layer's
    sign-aware z+ gives relevance, which z+ cannot pass further down (its denominator is 0 there)."""
    from engine.compat import ensure_torchvision

    ensure_torchvision()
    from timm.layers import Conv2dSame
    from torchvision.models.vgg import VGG

    feats = nn.Sequential(
        Conv2dSame(3, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.SiLU() if act == "silu" else nn.ReLU(),
        nn.Conv2d(8, 16, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
    )
    model = VGG(feats, num_classes=10, init_weights=False)
    model.avgpool = nn.AdaptiveAvgPool2d((3, 3))
    model.classifier = nn.Sequential(nn.Linear(16 * 9, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2 / mod.weight[0].numel()) ** 0.5)
    adapter = TorchvisionCNN(model, "small_cnn", 10)
    return randomise(adapter, seed=seed + 1, bn_eps=bn_eps).to(dtype)


def tiny_vgg(dtype=torch.float64, seed: int = 1) -> TorchvisionCNN:
    """torchvision's VGG with a short conv stack (3x3 convs, 2x2 max pools) and a small classifier."""
    from engine.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models.vgg import VGG, make_layers

    model = VGG(make_layers([16, "M", 32, "M", 32, 32, "M"]), num_classes=10, init_weights=False)
    model.classifier = nn.Sequential(
        nn.Linear(32 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Linear(32, 10)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d | nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * (2 / mod.weight[0].numel()) ** 0.5)
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    return TorchvisionCNN(model, "tiny_vgg", 10).to(dtype).eval()


def inputs(batch: int, size: int, dtype=torch.float64, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)
