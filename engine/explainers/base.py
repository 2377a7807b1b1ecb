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
from ..state import load_weights

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
    return sorted(_REGISTRY)


def get_explainer_class(method: str) -> type[Explainer]:
    if method not in _REGISTRY:
        raise UnsupportedModelError(f"unknown explanation method {method!r}; available: {sorted(_REGISTRY)}.")
    return _REGISTRY[method]


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
    """Base class: subclasses set ``Options`` (a dataclass), ``backbone_kinds`` and implement ``forward``.

    The trainable protocol (a training-free method implements none of it; ``training/`` drives the rest):

    * :meth:`training_forward`: what the method's loss needs from one batch (T-TAME: logits and every class's map);
    * :meth:`trainable_parameters`: what the optimiser updates (the explainer's own parameters, and for methods that
      adapt the backbone its deltas, ``backbone.delta_parameters()``); everything else stays frozen;
    * :meth:`head_state_dict` / :meth:`load_head_state_dict`: the state saved as the artifact's head
      (``explainer.safetensors``): the explainer's state plus the backbone's trainable deltas (LoRA), under
      ``backbone.lora.``.
    """

    method: ClassVar[str] = ""
    exportable: ClassVar[bool] = True
    backbone_kinds: ClassVar[tuple[str, ...]] = ("vit", "cnn")
    DELTA_PREFIX: ClassVar[str] = "backbone.lora."

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

    # --- the trainable protocol ------------------------------------------------------------------------------------
    @classmethod
    def is_trainable(cls) -> bool:
        """Whether the method trains (it implements :meth:`training_forward`)."""
        return cls.training_forward is not Explainer.training_forward

    def training_forward(self, backbone: nn.Module, x: Tensor) -> Any:
        """The outputs the method's training loss needs for a normalised batch ``x`` (graph kept for backward)."""
        raise UnsupportedModelError(f"{self.method} is training-free: it has nothing to train.")

    def trainable_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """The parameters an optimiser updates; empty for a training-free method."""
        return []

    def head_state_dict(self, backbone: nn.Module) -> dict[str, Tensor]:
        """What an artifact stores as the trained head: the explainer's state plus the backbone's deltas.

        Empty for a training-free method without parameters or buffers.
        """
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        state.update({f"{self.DELTA_PREFIX}{k}": v for k, v in backbone.delta_state_dict().items()})
        return state

    def load_head_state_dict(self, backbone: nn.Module, state: dict[str, Tensor]) -> str | None:
        """Load a head saved by :meth:`head_state_dict`; None if it fit, else a short description of what did not."""
        deltas = {k[len(self.DELTA_PREFIX) :]: v for k, v in state.items() if k.startswith(self.DELTA_PREFIX)}
        own = {k: v for k, v in state.items() if not k.startswith(self.DELTA_PREFIX)}
        problems = [p for p in (load_weights(self, own), backbone.load_delta_state_dict(deltas)) if p]
        return "; ".join(problems) or None


def probe_taps(backbone: nn.Module, taps: list[str], input_size: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
    """The backbone's logits and tap maps on one zero image of ``input_size`` (eval mode, no grad): the shapes an
    explainer sizes its layers from. The backbone's train/eval mode is left as it was."""
    probe = next(backbone.parameters())
    x = torch.zeros(1, 3, *input_size, dtype=probe.dtype, device=probe.device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            return backbone.tap_maps(x, taps)
    finally:
        backbone.train(was_training)


def resolve_target(logits: Tensor, target: Tensor) -> Tensor:
    """The class each map explains: ``target`` where >= 0, else the predicted class."""
    return torch.where(target >= 0, target, logits.argmax(dim=-1))
