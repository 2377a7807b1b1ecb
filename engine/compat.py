"""Make ``import torchvision`` (and so ``import timm`` / ``import open_clip``) work beside a CPU-only torch.

When is this needed? PyPI's torchvision wheels are CUDA builds. Installed beside a CPU-only torch (as the
``pip install xai-engine`` instructions do), torchvision's compiled ops library does not load, and a bare
``import torchvision`` -- or ``import timm``, ``import open_clip``, which import torchvision -- fails with::

    RuntimeError: operator torchvision::nms does not exist

xai-engine works around this for itself before it imports any of them, so :meth:`engine.Engine.load`,
``xai-engine create`` and the rest never see it. Your own code in the same environment (converting weights with
torchvision, building a timm model) does; call :func:`ensure_torchvision` once before its first
``import torchvision`` / ``timm`` / ``open_clip``::

    import engine.compat

    engine.compat.ensure_torchvision()
    import timm, torchvision

It defines the schemas of the two ops torchvision registers at import time, and only when they are missing: an
installation where torch and torchvision match is left untouched (the call returns ``[]``). The model and transform
code of torchvision then works; only its compiled kernels (``torchvision.ops.nms``, ``roi_align``, ...) and
``torchvision.io`` stay unavailable in such an environment. The call is cheap and safe to repeat.
"""

from __future__ import annotations

from ._compat import ensure_torchvision

__all__ = ["ensure_torchvision"]
