"""Weights in and out of modules: safetensors files (never a pickle) and tolerant state-dict loading."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from .errors import ArtifactError


def load_weights(module: nn.Module, state: dict[str, Tensor]) -> str | None:
    """Load a state dict into a module; returns None if it fit, else a short description of what did not fit."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        return str(e).splitlines()[-1].strip()
    if result.missing_keys or result.unexpected_keys:
        return f"missing keys {result.missing_keys[:5]}, unexpected keys {result.unexpected_keys[:5]}"
    return None


def read_safetensors(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A safetensors file's tensors (never a pickle).

    Raises:
        ArtifactError: the file is damaged or not safetensors (the message names it and what it should hold).
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001  (safetensors raises several types for damaged files)
        raise ArtifactError(f"{path} ({what}) is not a readable safetensors file ({e}).") from e


def save_tensors(state: dict[str, Tensor], path: str | os.PathLike) -> Path:
    """Save tensors as safetensors (detached, contiguous clones: shared storage is not allowed)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))
    return Path(path)
