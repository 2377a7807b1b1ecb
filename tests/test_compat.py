"""The CPU-torch / CUDA-torchvision clash is handled in engine/_compat.py, and only there."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_timm_open_clip_and_torchvision_import_after_the_shim():
    result = _run(
        "from engine._compat import ensure_torchvision; patched = ensure_torchvision(); "
        "import torchvision, timm, torchvision.models as m; m.resnet18(); print('ok', patched); "
        "import importlib.util; "
        "importlib.util.find_spec('open_clip') and __import__('open_clip'); "
        "assert ensure_torchvision() == patched"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok")


def test_shim_is_needed_here_or_leaves_a_working_install_alone():
    bare = _run("import torchvision")
    shim = _run("from engine._compat import ensure_torchvision; print(ensure_torchvision())")
    assert shim.returncode == 0, shim.stderr[-2000:]
    if bare.returncode == 0:  # torch and torchvision match: nothing may be patched
        assert shim.stdout.strip() == "[]"
    else:  # the clash this module exists for
        assert "torchvision::nms does not exist" in bare.stderr
        assert shim.stdout.strip() == "['nms', 'qnms']"


def test_shim_defines_nothing_when_the_ops_exist():
    result = _run(
        "import torch; lib = torch.library.Library('torchvision', 'DEF'); "
        "lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'); "
        "lib.define('qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'); "
        "from engine._compat import ensure_torchvision; print(ensure_torchvision())"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_public_call_makes_torchvision_and_timm_importable():
    """engine.compat.ensure_torchvision is the documented public fix for code of one's own in the same environment."""
    import engine.compat

    assert engine.compat.ensure_torchvision.__module__ == "engine._compat" and "nms" in engine.compat.__doc__
    result = _run("import engine.compat; engine.compat.ensure_torchvision(); import torchvision, timm")
    assert result.returncode == 0, result.stderr[-2000:]
