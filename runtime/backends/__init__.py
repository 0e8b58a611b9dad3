"""Backends: one interface (``Backend``), one registry (``list_backends`` / ``create_backend``)."""

from .base import Backend, BackendSpec, create_backend, get_backend_class, list_backends  # noqa: F401
