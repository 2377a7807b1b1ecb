"""Exception types. Every message says what went wrong and how to fix it."""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error raised on purpose by xai-engine."""


class ImageDecodeError(EngineError, ValueError):
    """An image could not be read: empty, truncated, not an image, too large, or of an unsupported layout.

    ``too_large`` is True when the image has more pixels than the decoder allows (``max_pixels``, or Pillow's own hard
    limit): the caller's limit, not a broken file (``xai-engine serve`` answers it with 413).
    """

    def __init__(self, message: str, *, too_large: bool = False):
        super().__init__(message)
        self.too_large = too_large

    def __reduce__(self):  # keeps too_large across processes (Ray workers, multiprocessing)
        return (type(self), self.args, {"too_large": self.too_large})


class InputError(EngineError, ValueError):
    """A tensor, array or argument handed to the engine has the wrong shape, dtype, range or value (NaN, inf)."""


class ArtifactError(EngineError):
    """An artifact folder is missing, incomplete, tampered with (hash mismatch) or made by other versions."""


class BackendUnavailableError(EngineError, ImportError):
    """A runtime backend was asked for but its Python package is not installed."""


class UnsupportedModelError(EngineError, ValueError):
    """A backbone or explainer cannot be built for the model that was asked for."""


class WeightsUnavailableError(EngineError):
    """A backbone's pretrained weights could not be fetched (offline, blocked, or not in the local cache); the message
    names the ways out (a local weights file, random weights for a smoke test, or an offline cache)."""


class RandomWeightsWarning(UserWarning):
    """An artifact's classifier has random weights (made with ``source="random"``): its classes and scores mean
    nothing. Fine for smoke tests, wrong for explaining real images."""
