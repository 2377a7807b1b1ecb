"""Explainers: the base class, the registry and the built-in methods.

The built-in methods register themselves here (importing :mod:`.base` never imports a method, so there is no cycle
between the base and the methods). A third-party method registers with ``@register_explainer("name")`` on import.
"""

from . import ala, lrp, reciprocam, tame  # noqa: F401  (registers the built-in methods; each imports .base itself)
from .base import Explainer, build_explainer, get_explainer_class, list_explainers, register_explainer

__all__ = ["Explainer", "build_explainer", "get_explainer_class", "list_explainers", "register_explainer"]
