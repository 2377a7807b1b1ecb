"""xai-engine: a classifier's class and its saliency map from one graph, on torch, ONNX Runtime or OpenVINO.

Importing this package imports no runtime (onnxruntime / openvino are imported when a backend opens).
"""

from .api import Engine, load
from .artifact import Artifact, load_artifact
from .errors import (
    ArtifactError,
    BackendUnavailableError,
    EngineError,
    ImageDecodeError,
    InputError,
    RandomWeightsWarning,
    UnsupportedModelError,
    WeightsUnavailableError,
)
from .explanation import Explanation, FailedExplanation

__all__ = [
    "Artifact",
    "ArtifactError",
    "BackendUnavailableError",
    "Engine",
    "EngineError",
    "Explanation",
    "FailedExplanation",
    "ImageDecodeError",
    "InputError",
    "RandomWeightsWarning",
    "UnsupportedModelError",
    "WeightsUnavailableError",
    "load",
    "load_artifact",
]
