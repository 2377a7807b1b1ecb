"""Lazy, once-per-process loading of the compiled kernels in ``cpp_ext/``.

The CPU kernels (``cpp_ext/ops.cpp``) build just in time with ``torch.utils.cpp_extension.load`` on first use and are
then reused from torch's build cache in ``$TORCH_EXTENSIONS_DIR`` (if set) or ``~/.cache/xai-engine/torch_extensions``,
in a sub-folder per Python and torch version. When the build fails (no compiler, no ninja, no sources in an installed
wheel), ``load`` warns once, in one line, and returns None: ``engine.ops`` then runs its torch reference.
``XAI_ENGINE_NO_EXT=1`` skips the build and uses the torch reference silently.

The CUDA kernels (``cpp_ext/cuda/``) build only on request, with ``load_cuda()``, on a machine where torch has CUDA.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

ENV_NO_EXT = "XAI_ENGINE_NO_EXT"
EXT_NAME = "xai_engine_ops"
CUDA_EXT_NAME = "xai_engine_ops_cuda"
SOURCE_DIR = Path(__file__).resolve().parents[2] / "cpp_ext"
CPU_SOURCES = (SOURCE_DIR / "ops.cpp",)
CUDA_SOURCES = (SOURCE_DIR / "cuda" / "binding.cpp", SOURCE_DIR / "cuda" / "ops_cuda.cu")
_FIX = (
    "Fix: install a C++ compiler and ninja (e.g. `apt install g++ ninja-build` or `pip install ninja`) in a source "
    f"checkout (pip install -e .), or set {ENV_NO_EXT}=1 to use the torch reference without this warning."
)

_lock = threading.Lock()
_loaded = False
_module: ModuleType | None = None
_error: str | None = None
_cuda_module: ModuleType | None = None


def build_root() -> Path:
    """The folder holding the build directories: one per Python and torch version, so upgrades never mix builds."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "xai-engine" / "torch_extensions")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__.replace('+', '_')}"
    return Path(base).expanduser() / tag


def _cpu_flags() -> tuple[list[str], list[str]]:
    if sys.platform == "win32":
        return ["/O2", "/openmp"], []
    if sys.platform == "darwin":  # Apple clang has no -fopenmp: at::parallel_for then runs serially
        return ["-O3"], []
    return ["-O3", "-fopenmp"], ["-fopenmp"]


def build(verbose: bool = False) -> ModuleType:
    """Build (or load from the cache) the CPU kernels and return the module; raises on failure.

    Args:
        verbose: print the compiler's commands and output.

    Raises:
        FileNotFoundError: the C++ sources are not there (an installed wheel ships no ``cpp_ext/``).
        RuntimeError: the compiler or ninja failed (the message holds the compiler's output).
    """
    missing = [str(p) for p in CPU_SOURCES if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"C++ sources not found: {', '.join(missing)} (kernels build from a source checkout)")
    from torch.utils.cpp_extension import load as load_extension

    build_dir = build_root() / EXT_NAME
    build_dir.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = _cpu_flags()
    return load_extension(
        name=EXT_NAME,
        sources=[str(p) for p in CPU_SOURCES],
        extra_include_paths=[str(SOURCE_DIR)],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load() -> ModuleType | None:
    """The compiled CPU kernels, or None (torch reference). Builds on the first call only, once per process."""
    global _loaded, _module, _error
    if _loaded:
        return _module
    with _lock:
        if _loaded:
            return _module
        if os.environ.get(ENV_NO_EXT, "") not in ("", "0"):
            _error = f"{ENV_NO_EXT}={os.environ[ENV_NO_EXT]} is set"
        else:
            try:
                _module = build()
            except (OSError, RuntimeError, ImportError, ValueError) as e:
                _error = _one_line(e)
                warnings.warn(
                    f"xai-engine: compiled kernels unavailable, using the slower torch reference ({_error}). {_FIX}",
                    RuntimeWarning,
                    stacklevel=3,
                )
        _loaded = True
        return _module


def load_error() -> str | None:
    """Why ``load()`` returned None (one line), or None when the kernels loaded or were never asked for."""
    return _error


def reset() -> None:
    """Forget the loaded module so that the next ``load()`` tries again (for tests)."""
    global _loaded, _module, _error
    with _lock:
        _loaded, _module, _error = False, None, None


def load_cuda(verbose: bool = False) -> ModuleType:
    """Build (or load from the cache) the CUDA kernels; afterwards ``engine.ops`` runs them on CUDA float32 tensors.

    Needs torch with CUDA and nvcc (a few minutes cold: ``binding.cpp`` includes the torch headers). The GPU
    architecture comes from ``TORCH_CUDA_ARCH_LIST`` or, unset, the visible GPUs.

    Args:
        verbose: print the compiler's commands and output.

    Raises:
        RuntimeError: torch has no CUDA, or the build failed.
    """
    global _cuda_module
    if _cuda_module is not None:
        return _cuda_module
    if not torch.cuda.is_available():
        raise RuntimeError("the CUDA kernels need torch with CUDA and a GPU; install a CUDA build of torch.")
    from torch.utils.cpp_extension import load as load_extension

    with _lock:
        if _cuda_module is None:
            build_dir = build_root() / CUDA_EXT_NAME
            build_dir.mkdir(parents=True, exist_ok=True)
            _cuda_module = load_extension(
                name=CUDA_EXT_NAME,
                sources=[str(p) for p in CUDA_SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                build_directory=str(build_dir),
                with_cuda=True,
                verbose=verbose,
            )
    return _cuda_module


def cuda_module() -> ModuleType | None:
    """The CUDA kernels if ``load_cuda()`` built them in this process, else None (never builds)."""
    return _cuda_module
