"""Errors the user can act on: the CLI prints them as one line and exits non-zero."""


class DermsortError(Exception):
    """A problem the user can fix; the message is one line, shown without a traceback."""

    exit_code = 2


class ModelError(DermsortError):
    """The model file or bundle is missing, unreadable, or fails its checksum."""


class BackendUnavailable(DermsortError):
    """The requested backend cannot run here (package missing, no GPU, no artifact)."""


class OutputError(DermsortError):
    """The output folder cannot be used (inside the input, not writable, disk full, removed)."""
