"""captum's LRP as a peer: saliency maps from ``captum.attr.LRP``, a baseline for the quality benchmark.

Runs in the main environment (``pip install captum``), on the same torch model and images the engine explains; nothing
here re-implements LRP. captum's LRP is a modified autograd backward pass with a rule per leaf module: it knows
``Conv2d``, ``Linear``, ``BatchNorm2d``, max/average pooling (epsilon rule) and passes ``ReLU``, ``Dropout`` and
``Tanh`` through; every other leaf module type (``ReLU6``, ``Identity``, timm's ``Conv2dSame``, ...) makes it raise
``TypeError`` before any work. That refusal is reported as :class:`~engine.errors.UnsupportedModelError` carrying
captum's own message and every leaf module captum would refuse, by name, so a benchmark can record it and go on.

The map is made like the engine's ``lrp`` default output: the input relevance summed over the colour channels, its
positive part, min-max scaled per image (a metric that ranks pixels sees the same order either way).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from engine.backbones import BackboneAdapter
from engine.errors import BackendUnavailableError, UnsupportedModelError
from engine.numeric import minmax


def _captum():
    try:
        import captum
        from captum.attr import LRP
        from captum.attr._core import lrp as lrp_module
    except ImportError as e:
        raise BackendUnavailableError("the captum LRP baseline needs captum: pip install captum") from e
    return captum, LRP, lrp_module


def _leaves(model: nn.Module, prefix: str = ""):
    """The leaf modules in captum's own walk (``children()`` recursively; a module with children gets no rule)."""
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if len(list(child.children())) == 0:
            yield full, child
        else:
            yield from _leaves(child, full)


def unsupported_modules(model: nn.Module) -> dict[str, list[str]]:
    """Leaf modules captum's LRP has no rule for: ``{type name: [module names]}`` (empty: captum accepts the model).

    Uses captum's own tables (``SUPPORTED_LAYERS_WITH_RULES``, ``SUPPORTED_NON_LINEAR_LAYERS``), matched by exact
    type as captum matches them; a module that already carries a ``rule`` attribute is accepted, as captum does.
    """
    _, _, lrp_module = _captum()
    known = set(lrp_module.SUPPORTED_LAYERS_WITH_RULES) | set(lrp_module.SUPPORTED_NON_LINEAR_LAYERS)
    out: dict[str, list[str]] = defaultdict(list)
    for name, leaf in _leaves(model):
        if not hasattr(leaf, "rule") and type(leaf) not in known:
            out[f"{type(leaf).__module__}.{type(leaf).__qualname__}"].append(name)
    return dict(out)


def hidden_compute_modules(model: nn.Module) -> dict[str, list[str]]:
    """Modules captum's walk never gives a rule although they compute something a rule should cover: modules with
    children whose own type is (a subclass of) a type captum has a rule for, e.g. timm's ``BatchNormAct2d`` (a
    ``BatchNorm2d`` with its activation as a child). ``{type name: [module names]}``."""
    _, _, lrp_module = _captum()
    ruled = tuple(lrp_module.SUPPORTED_LAYERS_WITH_RULES)
    out: dict[str, list[str]] = defaultdict(list)
    for name, m in model.named_modules():
        if name and len(list(m.children())) > 0 and isinstance(m, ruled):
            out[f"{type(m).__module__}.{type(m).__qualname__}"].append(name)
    return dict(out)


def captum_lrp_maps(
    adapter: BackboneAdapter, images: np.ndarray, targets: np.ndarray, batch_size: int = 8
) -> np.ndarray:
    """Saliency maps (N, H, W) in [0, 1] from captum's ``LRP`` (its default rules) on the adapter's torch model.

    Args:
        adapter: the backbone (torch, eval mode) the engine explains.
        images: normalised float32 batch (N, 3, H, W).
        targets: class per image.
        batch_size: images per captum call.

    Raises:
        UnsupportedModelError: captum refuses a module of the model; the message holds captum's error and the names
            of every leaf module it has no rule for.
    """
    captum, LRP, _ = _captum()
    model = adapter.model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).requires_grad_()
        t = torch.as_tensor(np.asarray(targets[start : start + batch_size]), dtype=torch.int64)
        try:
            rel = LRP(model).attribute(x, target=t)
        except TypeError as e:
            if "no rule defined" not in str(e):
                raise
            where = unsupported_modules(model)
            listed = "; ".join(f"{k} x{len(v)} (e.g. {', '.join(v[:3])})" for k, v in where.items())
            raise UnsupportedModelError(
                f"captum {captum.__version__} LRP refuses {adapter.library}/{adapter.name}: {e} "
                f"Leaf modules without a captum rule: {listed or '(none found by the walk)'}."
            ) from e
        finally:  # captum leaves hooks and rule attributes on the modules: drop them, the model is used again
            for m in model.modules():
                for attr in ("rule", "activations"):
                    if attr in m.__dict__:
                        delattr(m, attr)
        sal = minmax(rel.detach().sum(dim=1).clamp(min=0).reshape(len(x), -1))
        out.append(sal.reshape(len(x), *x.shape[-2:]).numpy().astype(np.float32))
    return np.concatenate(out, axis=0)


def refusal_record(adapter: BackboneAdapter, error: Exception) -> dict:
    """What to write down when captum refuses a model: the model, captum's version, the error and the modules."""
    captum, _, _ = _captum()
    return {
        "model": f"{adapter.library}/{adapter.name}",
        "peer": f"captum {captum.__version__} captum.attr.LRP (default rules)",
        "error": f"{type(error.__cause__ or error).__name__}: {error.__cause__ or error}",
        "unsupported_leaf_modules": {
            kind: {"count": len(names), "first": names[:4]}
            for kind, names in unsupported_modules(adapter.model).items()
        },
        "modules_with_children_captum_gives_no_rule": {
            kind: {"count": len(names), "first": names[:4]}
            for kind, names in hidden_compute_modules(adapter.model).items()
        },
    }
