"""The backbone's slot for trainable deltas: LoRA on frozen weights, saved with the explainer head, merged at export.

A LoRA delta is a torch parametrization (``torch.nn.utils.parametrize``) of a frozen weight::

    W' = W + (alpha / rank) * B @ A          A: (rank, in), B: (out, rank); B starts at zero, so W' = W at first

on an ``nn.Linear`` (``weight``), a 1x1 ``nn.Conv2d`` (``weight``, as (out, in)) or an ``nn.MultiheadAttention``'s
packed in-projection (``in_proj_weight``), where ``parts`` picks the q, k and/or v rows (the attention module itself
is the target, as open_clip and torchvision ViTs have no separate q/v layers). A fused qkv ``nn.Linear`` (timm's
``attn.qkv``: ``out_features == 3 * in_features``, rows q, k, v) takes ``parts`` too: the delta goes on those row
blocks only; without ``parts`` it is a plain Linear (one delta on all rows).

Why a parametrization and not peft's layer wrappers: the module tree and classes stay as they are (``attn.qkv`` is
still an ``nn.Linear``, ``block.attn`` still an ``nn.MultiheadAttention``), so everything that reads the backbone
(the adapters' ``vit_parts``, ViT-ReciproCAM's fast form, taps) sees the adapted weights without knowing about
LoRA; and merging is exact (:func:`merge`: ``remove_parametrizations(..., leave_parametrized=True)``), with no LoRA
op left in the exported graph.

Delta state keys (what an explainer head stores): ``<target>.<part>.lora_a`` / ``.lora_b`` with ``part`` one of
``weight`` (Linear, conv), ``q``, ``k``, ``v`` (attention, fused qkv Linear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import InputError, UnsupportedModelError

ATTENTION_PARTS = ("q", "k", "v")


class LoRADelta(nn.Module):
    """Parametrization ``W -> W + scale * B @ A`` on row blocks of a 2-D (or 1x1-conv 4-D) weight."""

    def __init__(self, shape: torch.Size, rank: int, alpha: float, parts: dict[str, tuple[int, int]], dtype):
        super().__init__()
        self.rank = rank
        self.scale = alpha / rank
        self.parts = dict(parts)  # part -> (first row, rows)
        in_features = int(shape[1])
        for part, (_, rows) in self.parts.items():
            a = torch.empty(rank, in_features, dtype=dtype)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as LoRA's reference implementation
            self.register_parameter(f"{part}_lora_a", nn.Parameter(a))
            self.register_parameter(f"{part}_lora_b", nn.Parameter(torch.zeros(rows, rank, dtype=dtype)))

    def delta(self) -> list[tuple[int, int, Tensor]]:
        return [
            (first, rows, getattr(self, f"{part}_lora_b") @ getattr(self, f"{part}_lora_a") * self.scale)
            for part, (first, rows) in self.parts.items()
        ]

    def forward(self, weight: Tensor) -> Tensor:
        flat = weight.reshape(weight.shape[0], weight.shape[1])
        pieces, row = [], 0
        for first, rows, d in sorted(self.delta(), key=lambda t: t[0]):
            if first > row:
                pieces.append(flat[row:first])
            pieces.append(flat[first : first + rows] + d.to(flat.dtype))
            row = first + rows
        if row < flat.shape[0]:
            pieces.append(flat[row:])
        return torch.cat(pieces, dim=0).reshape(weight.shape)


def _qkv_rows(target: str, parts: Sequence[str], d: int) -> dict[str, tuple[int, int]]:
    """Row blocks (first row, rows) of the chosen q/k/v parts of a packed (3d, d) projection."""
    chosen = list(parts)
    bad = [p for p in chosen if p not in ATTENTION_PARTS]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise InputError(
            f"LoRA parts of {target!r} (packed q/k/v rows) must be distinct names among {ATTENTION_PARTS}, e.g. "
            f"['q', 'v']; got {chosen}."
        )
    return {p: (ATTENTION_PARTS.index(p) * d, d) for p in chosen}


def _weight_and_parts(module: nn.Module, target: str, parts: Sequence[str] | None) -> tuple[str, dict[str, tuple]]:
    parts = [parts] if isinstance(parts, str) else parts
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise UnsupportedModelError(f"LoRA target {target!r} is a grouped conv; choose a 1x1 conv with groups=1.")
        if parts is None or list(parts) == ["weight"]:
            return "weight", {"weight": (0, int(module.weight.shape[0]))}
        if isinstance(module, nn.Linear) and module.out_features == 3 * module.in_features:  # fused qkv (timm)
            return "weight", _qkv_rows(target, parts, module.in_features)
        raise InputError(
            f"LoRA target {target!r} is a {type(module).__name__} with weight {tuple(module.weight.shape)}: parts "
            f"(got {list(parts)}) apply only to a fused qkv nn.Linear (out_features == 3 * in_features) or an "
            "nn.MultiheadAttention; pass parts=None to put one delta on the whole weight."
        )
    if isinstance(module, nn.MultiheadAttention):
        if not getattr(module, "_qkv_same_embed_dim", False):
            raise UnsupportedModelError(f"LoRA target {target!r}: attention without a packed in-projection.")
        return "in_proj_weight", _qkv_rows(target, parts if parts is not None else ("q", "v"), module.embed_dim)
    raise UnsupportedModelError(
        f"LoRA target {target!r} is a {type(module).__name__}; LoRA applies to nn.Linear, 1x1 nn.Conv2d and "
        "nn.MultiheadAttention (its q/k/v rows). Name such a module (list them with adapter.tap_names())."
    )


Target = str | tuple[str, Sequence[str] | None]


def add(
    root: nn.Module, targets: Sequence[Target], rank: int = 8, alpha: float = 16.0, parts: Sequence[str] | None = None
) -> list[str]:
    """Add LoRA deltas to the named modules of ``root`` (dotted names); returns the names.

    All targets are checked before any delta is added, so a refused call leaves the model as it was.

    Args:
        root: the wrapped model (``adapter.model``).
        targets: module names, or ``(name, parts)`` pairs whose parts win over ``parts``; each module must be a
            Linear, a 1x1 conv, or an ``nn.MultiheadAttention``.
        rank: LoRA rank r.
        alpha: LoRA alpha (the delta is scaled by alpha / r).
        parts: which of q, k, v get a delta: for attention modules (default q and v, LoRA's usual choice) and fused
            qkv Linears (default: one delta on the whole weight).

    Raises:
        InputError / UnsupportedModelError: a bad rank, an unknown or unsupported module, a module that has one.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"LoRA rank must be a positive integer, got {rank!r}.")
    if isinstance(targets, str):
        raise InputError(f"LoRA targets must be a list of module names, got the string {targets!r}; use [{targets!r}].")
    modules = dict(root.named_modules())
    plan = []
    for item in targets:
        target, target_parts = (item, parts) if isinstance(item, str) else (item[0], item[1])
        if target not in modules:
            import difflib

            close = difflib.get_close_matches(target, list(modules), n=3)
            raise UnsupportedModelError(f"no module {target!r} to put LoRA on; closest names: {close}.")
        module = modules[target]
        name, rows = _weight_and_parts(module, target, target_parts)
        if parametrize.is_parametrized(module, name) or any(m is module for m, _, _ in plan):
            raise InputError(f"{target!r} already has a LoRA delta.")
        plan.append((module, name, rows))
    for module, name, rows in plan:
        weight = getattr(module, name)
        weight.requires_grad_(False)
        delta = LoRADelta(weight.shape, rank, alpha, rows, weight.dtype).to(weight.device)
        parametrize.register_parametrization(module, name, delta)
    return [item if isinstance(item, str) else item[0] for item in targets]


def _deltas(root: nn.Module) -> list[tuple[str, str, LoRADelta]]:
    """(target module name, parametrized weight name, delta) for every LoRA delta under ``root``."""
    found = []
    for mname, module in root.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for wname, plist in module.parametrizations.items():
            found += [(mname, wname, p) for p in plist if isinstance(p, LoRADelta)]
    return found


def parameters(root: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters (A and B of every delta)."""
    return [p for _, _, delta in _deltas(root) for p in delta.parameters()]


def state_dict(root: nn.Module) -> dict[str, Tensor]:
    """The deltas by ``<target>.<part>.lora_a|lora_b`` (detached clones)."""
    out = {}
    for mname, _, delta in _deltas(root):
        for part in delta.parts:
            out[f"{mname}.{part}.lora_a"] = getattr(delta, f"{part}_lora_a").detach().clone()
            out[f"{mname}.{part}.lora_b"] = getattr(delta, f"{part}_lora_b").detach().clone()
    return out


def load_state_dict(root: nn.Module, state: dict[str, Tensor]) -> str | None:
    """Load deltas saved by :func:`state_dict`; None if they fit, else what did not fit."""
    want = state_dict(root)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [k for k in set(want) & set(state) if want[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        return f"LoRA deltas: missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {shapes[:5]}"
    by_key = {}
    for mname, _, delta in _deltas(root):
        for part in delta.parts:
            by_key[f"{mname}.{part}.lora_a"] = getattr(delta, f"{part}_lora_a")
            by_key[f"{mname}.{part}.lora_b"] = getattr(delta, f"{part}_lora_b")
    with torch.no_grad():
        for k, p in by_key.items():
            p.copy_(state[k])
    return None


def merge(root: nn.Module) -> int:
    """Fold every delta into its frozen weight (exactly what the parametrization computes) and drop the LoRA ops.

    Returns:
        How many weights were merged.
    """
    found = _deltas(root)
    modules = dict(root.named_modules())
    for mname, wname, _ in found:
        module = modules[mname]
        if parametrize.is_parametrized(module, wname):
            parametrize.remove_parametrizations(module, wname, leave_parametrized=True)
            getattr(module, wname).requires_grad_(False)
    return len(found)


def base_state_dict(root: nn.Module) -> dict[str, Tensor]:
    """``root``'s state with every delta merged into its weight, under the keys of the plain module (no LoRA keys).

    What a whole-graph weights file stores: it loads into a backbone without deltas.
    """
    state = root.state_dict()
    deltas = _deltas(root)
    if not deltas:
        return state
    modules = dict(root.named_modules())
    out = {}
    lora_keys = set()
    for mname, wname, _ in deltas:
        prefix = f"{mname}.parametrizations.{wname}." if mname else f"parametrizations.{wname}."
        lora_keys.update(k for k in state if k.startswith(prefix))
        out[f"{mname}.{wname}" if mname else wname] = getattr(modules[mname], wname).detach().clone()
    out.update({k: v for k, v in state.items() if k not in lora_keys})
    return out
