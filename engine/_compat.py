"""The one place that handles the CPU-torch / CUDA-torchvision clash.

PyPI's torchvision wheels are CUDA builds. Beside a CPU-only torch, torchvision's compiled ``_C`` extension fails to
load, and ``import torchvision`` then dies while registering fake kernels with
``RuntimeError: operator torchvision::nms does not exist``. timm and open_clip import torchvision, so they die too.

The model and transform code of torchvision does not need the compiled ops. Defining the schemas of the two ops that
torchvision registers at import time (``nms`` and ``qnms``) lets the import succeed; only ``torchvision.ops`` kernels
(nms, roi_align, ...) and ``torchvision.io`` stay unavailable, which is why images are decoded with Pillow.

The schemas are defined only when they are missing, so an installation where torch and torchvision match is untouched.
Every module of the engine that imports timm, open_clip or torchvision calls :func:`ensure_torchvision` first. Code
outside the engine calls the public :func:`engine.compat.ensure_torchvision` (the same function).
"""

from __future__ import annotations

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # keeps the torch.library.Library alive for the life of the process
_patched: list[str] = []


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _load_torchvision_extension() -> bool:
    """Try to load torchvision's compiled ops library without importing torchvision; True when it loaded."""
    import glob
    import importlib.util
    import os

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for path in glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so")):
        try:
            torch.ops.load_library(path)
        except (OSError, RuntimeError):
            return False
        return True
    return False


def ensure_torchvision() -> list[str]:
    """Make ``import torchvision`` work beside a CPU-only torch.

    Returns:
        The names of the op schemas that had to be defined in this process; empty when torchvision's own
        extension provides them, when torchvision is not installed, or when it was already imported.
    """
    global _library
    import importlib.util
    import sys

    if _patched or "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return list(_patched)
    if _has_op("nms") or _load_torchvision_extension():
        return []
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing:
        _library = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _library.define(_SCHEMAS[name])
            _patched.append(name)
    return list(_patched)
