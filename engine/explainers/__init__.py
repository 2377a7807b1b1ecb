"""Explainers: the base class, the registry and the built-in methods."""

from .base import Explainer, build_explainer, get_explainer_class, list_explainers, register_explainer

__all__ = ["Explainer", "build_explainer", "get_explainer_class", "list_explainers", "register_explainer"]
