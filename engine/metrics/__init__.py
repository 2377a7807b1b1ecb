"""Saliency-map quality metrics with named presets (METHODS.md section 4): every result records its preset.

Metrics: insertion / deletion AUC and the ID score (``rise``, ``keio``, ``ovxai``), Average Drop / Increase in
Confidence at 100/50/15 % (``tame``), ROAD MoRF / LeRF with noisy linear imputation (``tame``, ``gradcam``), ADCC
(``reference``) and mean IoU (``mean``, ``0.5``, ``otsu``). See :mod:`engine.metrics.base` for the common contract.
"""

from .adcc import adcc
from .base import DEFAULT_BATCH_SIZE, ExplainFn, MetricResult, ModelFn, results_to_rows
from .confidence import ad_ic
from .insertion_deletion import deletion, id_score, insertion, insertion_deletion
from .iou import binarise, mean_iou, otsu_threshold
from .registry import METRICS, evaluate, list_presets, preset_params
from .road import noisy_linear_impute, road

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "METRICS",
    "ExplainFn",
    "MetricResult",
    "ModelFn",
    "ad_ic",
    "adcc",
    "binarise",
    "deletion",
    "evaluate",
    "id_score",
    "insertion",
    "insertion_deletion",
    "list_presets",
    "mean_iou",
    "noisy_linear_impute",
    "otsu_threshold",
    "preset_params",
    "results_to_rows",
    "road",
]
