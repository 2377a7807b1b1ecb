"""The metric registry: ``METRICS`` maps a name to its function, ``evaluate`` dispatches, ``list_presets`` lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import InputError

from .adcc import PRESETS as ADCC_PRESETS
from .adcc import adcc
from .base import MetricResult
from .confidence import PRESETS as AD_IC_PRESETS
from .confidence import ad_ic
from .insertion_deletion import PRESETS as INSERTION_DELETION_PRESETS
from .insertion_deletion import deletion, id_score, insertion
from .iou import PRESETS as IOU_PRESETS
from .iou import mean_iou
from .road import PRESETS as ROAD_PRESETS
from .road import road

METRICS: dict[str, Callable[..., dict[str, MetricResult]]] = {
    "insertion": insertion,
    "deletion": deletion,
    "id": id_score,
    "ad_ic": ad_ic,
    "road": road,
    "adcc": adcc,
    "miou": mean_iou,
}

_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "insertion": INSERTION_DELETION_PRESETS,
    "deletion": INSERTION_DELETION_PRESETS,
    "id": INSERTION_DELETION_PRESETS,
    "ad_ic": AD_IC_PRESETS,
    "road": ROAD_PRESETS,
    "adcc": ADCC_PRESETS,
    "miou": IOU_PRESETS,
}


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    return metric


def list_presets(metric: str) -> tuple[str, ...]:
    """The preset names of ``metric``, e.g. ``list_presets("insertion") == ("rise", "keio", "ovxai")``."""
    return tuple(_PRESETS[_check_metric(metric)])


def preset_params(metric: str, preset: str) -> dict[str, Any]:
    """A copy of a preset's parameters (the results' ``params`` add what was chosen per call)."""
    presets = _PRESETS[_check_metric(metric)]
    if preset not in presets:
        raise InputError(f"unknown preset {preset!r} for metric {metric!r}; choose one of {', '.join(presets)}.")
    return dict(presets[preset])


def evaluate(metric: str, preset: str, *args: Any, **kwargs: Any) -> dict[str, MetricResult]:
    """Run ``METRICS[metric]`` with ``preset``; other arguments go to the metric function unchanged.

    ``preset="default"`` means the metric's first preset (``list_presets(metric)[0]``); results record the real name.

    Examples::

        evaluate("id", "keio", model, images, saliency, targets=labels, mean=MEAN, std=STD)
        evaluate("ad_ic", "tame", model, images, saliency, mean=MEAN, std=STD, model_kind="vit")
        evaluate("miou", "otsu", saliency, masks)

    Returns:
        The metric's results, keyed by metric name (see each metric's docstring).
    """
    if preset == "default":
        preset = list_presets(metric)[0]
    preset_params(metric, preset)
    return METRICS[metric](*args, preset=preset, **kwargs)
