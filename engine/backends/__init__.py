"""Runtime backends behind one base class and one registry; runtimes are imported only when a backend is opened."""

from .base import (
    PRECISIONS,
    Backend,
    backend_available,
    check_backend_options,
    default_threads,
    get_backend_class,
    open_backend,
    select_backend,
)
from .registry import BACKENDS, BackendSpec, export_formats

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendSpec",
    "backend_available",
    "check_backend_options",
    "default_threads",
    "export_formats",
    "get_backend_class",
    "open_backend",
    "select_backend",
]
