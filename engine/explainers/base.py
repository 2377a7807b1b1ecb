"""Explainer base class and registry.

An explainer is an ``nn.Module`` built from an :class:`~engine.config.ExplainerConfig`. Its forward takes the backbone
adapter, a normalised image batch and one target class per image (``-1`` = the predicted class) and returns
``(logits, saliency)``: the classifier's logits (B, C) and a saliency map (B, h, w) in [0, 1] for the target class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..config import ExplainerConfig
from ..errors import InputError, UnsupportedModelError

_REGISTRY: dict[str, type[Explainer]] = {}


def register_explainer(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator: ``@register_explainer("vit-reciprocam")``."""

    def deco(cls: type[Explainer]) -> type[Explainer]:
        if name in _REGISTRY:
            raise ValueError(f"explainer {name!r} is registered twice")
        cls.method = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_explainers() -> list[str]:
    _import_builtin()
    return sorted(_REGISTRY)


def get_explainer_class(method: str) -> type[Explainer]:
    _import_builtin()
    if method not in _REGISTRY:
        raise UnsupportedModelError(f"unknown explanation method {method!r}; available: {sorted(_REGISTRY)}.")
    return _REGISTRY[method]


def _import_builtin() -> None:
    from . import reciprocam, tame  # noqa: F401  (registers the built-in methods)


def build_explainer(cfg: ExplainerConfig, backbone: nn.Module, input_size: tuple[int, int]) -> Explainer:
    cls = get_explainer_class(cfg.method)
    options = cls.Options(**_checked_options(cls.Options, cfg.options, cfg.method))
    return cls(options, backbone, input_size)


def _checked_options(options_cls: type, options: dict[str, Any], method: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise InputError(f"{method}: unknown option(s) {unknown}; known options are {sorted(names)}.")
    return options


class Explainer(nn.Module):
    """Base class: subclasses set ``Options`` (a dataclass), ``backbone_kinds`` and implement ``forward``."""

    method: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    exportable: ClassVar[bool] = True
    backbone_kinds: ClassVar[tuple[str, ...]] = ("vit", "cnn")

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, options: Any, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__()
        if backbone.kind not in self.backbone_kinds:
            raise UnsupportedModelError(
                f"{self.method} explains {'/'.join(self.backbone_kinds)} backbones; "
                f"{backbone.library}/{backbone.name} is a {backbone.kind}."
            )
        self.options = options

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


def resolve_target(logits: Tensor, target: Tensor) -> Tensor:
    """The class each map explains: ``target`` where >= 0, else the predicted class."""
    return torch.where(target >= 0, target, logits.argmax(dim=-1))


def minmax_normalise(scores: Tensor) -> Tensor:
    """Min-max normalise over the last dimension; a constant row becomes all zeros."""
    lo = scores.amin(dim=-1, keepdim=True)
    hi = scores.amax(dim=-1, keepdim=True)
    return (scores - lo) / (hi - lo).clamp_min(1e-12)
