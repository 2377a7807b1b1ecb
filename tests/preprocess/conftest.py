"""Fixtures shared by the engine.preprocess tests: photo-like test images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 RGB array: smooth colour gradients, a few blobs and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack(
        [
            128 + 100 * np.sin(x / 37.0 + 0.5) * np.cos(y / 53.0),
            128 + 90 * np.cos((x + y) / 41.0),
            128 + 80 * np.sin(np.hypot(x - width / 3, y - height / 2) / 19.0),
        ],
        axis=-1,
    )
    for _ in range(5):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 40)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        img[mask] = rng.uniform(0, 255, size=3)
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture
def make_photo() -> Callable[..., np.ndarray]:
    """The photo maker ``make_photo(width, height, seed=0)``."""
    return _photo


@pytest.fixture
def photo() -> np.ndarray:
    return _photo(80, 64, seed=1)
