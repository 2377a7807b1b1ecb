"""Is there a CUDA GPU this process can use, and can a given runtime use it? (``backend="auto"`` asks.)

The probes never import a runtime that is not installed, and :func:`cuda_gpu_present` imports none at all: it asks
the NVIDIA driver (``libcuda``) through ctypes, so the edge install answers without torch. A machine without the
driver (this CI, any CPU box) answers False at once. ``onnxruntime-gpu`` lists its CUDA and TensorRT providers even
where they cannot load, so the ONNX Runtime probe needs the driver's answer as well as the provider list; the
backend then checks what the session really runs (see :mod:`engine.backends.onnxruntime_`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util

__all__ = [
    "cuda_gpu_present",
    "onnxruntime_cuda_usable",
    "tensorrt_usable",
    "torch_cuda_usable",
]


@functools.lru_cache(maxsize=1)
def cuda_gpu_present() -> bool:
    """Whether the NVIDIA driver loads, initialises and sees at least one GPU (honours ``CUDA_VISIBLE_DEVICES``)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return False
    try:
        if lib.cuInit(0) != 0:
            return False
        count = ctypes.c_int(0)
        return lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except (AttributeError, OSError):
        return False


def torch_cuda_usable() -> bool:
    """torch is installed with CUDA and sees a GPU."""
    if importlib.util.find_spec("torch") is None or not cuda_gpu_present():
        return False
    import torch

    return bool(torch.cuda.is_available())


def onnxruntime_cuda_usable() -> bool:
    """onnxruntime-gpu is installed (it lists the CUDA provider) and the driver sees a GPU."""
    if importlib.util.find_spec("onnxruntime") is None or not cuda_gpu_present():
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def tensorrt_usable() -> bool:
    """TensorRT's Python package is installed and the driver sees a GPU."""
    return importlib.util.find_spec("tensorrt") is not None and cuda_gpu_present()
