"""Runtime backends behind one base class; runtimes are imported only when a backend is opened."""

from .base import BACKENDS, PRECISIONS, Backend, backend_available, get_backend_class, select_backend

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "backend_available", "get_backend_class", "select_backend"]
