"""dermsort: offline triage of dermoscopy images into benign/ and review/."""

__version__ = "0.1.0"
