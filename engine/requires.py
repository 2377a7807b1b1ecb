"""What needs torch, and the one message that says how to get it.

The base install (``pip install "xai-engine[onnx]"`` or ``[openvino]``) is the edge install: numpy, Pillow,
safetensors and tqdm plus a runtime. It explains exported artifacts (``model.onnx`` / ``model.xml``) and never
imports torch. Everything that builds or traces a graph (create, export, training, the torch backend) needs the
``torch`` extra: torch, timm and the embedded default's weight package. Those entry points call
:func:`require_torch`, which checks with ``importlib.util.find_spec`` (torch is never imported to check).
"""

from __future__ import annotations

import importlib.util
import sys

from .errors import BackendUnavailableError

# The CPU wheel this project is tested with. Pin it in the same pip command: a bare `torch` makes pip resolve the
# newest CUDA build, gigabytes of nvidia-* wheels, which a CPU machine never uses.
TORCH_PIN = "torch==2.13.0"
INSTALL_TORCH = f'pip install "xai-engine[torch]" {TORCH_PIN}'


class TorchMissingError(BackendUnavailableError):
    """Something that needs torch was asked for in an install without it (an :class:`~engine.errors.EngineError`:
    the CLI prints the message and exits with code 2)."""


def torch_available() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def torch_message(what: str) -> str:
    """The message for ``what`` (e.g. ``"xai-engine create"``) in an install without torch."""
    return (
        f"{what} needs torch, which is not installed: this is the edge install, which explains exported artifacts "
        "(model.onnx / model.xml) on ONNX Runtime or OpenVINO only. Install the torch extra (torch, timm and the "
        f"default's weight package) with: {INSTALL_TORCH} ({TORCH_PIN} in the same command on purpose: a bare torch "
        "pulls the newest CUDA build, gigabytes of wheels; on a CUDA machine pin the torch build you have instead)."
    )


def require_torch(what: str) -> None:
    """Raise :class:`TorchMissingError` naming ``what`` and the extra to install when torch is not installed."""
    if not torch_available():
        raise TorchMissingError(torch_message(what))


def require_torch_or_exit(prog: str, what: str) -> None:
    """For scripts that import torch at the top (training, export): print ``prog: error: <message about what>`` and
    exit with code 2 when torch is not installed."""
    try:
        require_torch(what)
    except TorchMissingError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
