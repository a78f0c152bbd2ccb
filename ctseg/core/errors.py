"""Errors that a user can act on.

Every failure caused by input data must say which case and which file caused it, so that a
cohort run with ``--keep-going`` tells the user exactly what to fix.
"""

from __future__ import annotations

from pathlib import Path


class CtsegError(Exception):
    """Base class for all errors raised deliberately by ctseg."""


class InputError(CtsegError):
    """Bad input data: names the case (when known) and the offending file."""

    def __init__(self, message: str, *, path: str | Path | None = None, case: str | None = None):
        self.case = case
        self.path = Path(path) if path is not None else None
        self.reason = message
        parts = []
        if case:
            parts.append(f"case {case!r}")
        if path is not None:
            parts.append(f"file {str(path)!r}")
        prefix = (", ".join(parts) + ": ") if parts else ""
        super().__init__(prefix + message)

    def with_case(self, case: str) -> InputError:
        """Return the same error with the case filled in (callers deep in I/O rarely know it)."""
        if self.case:
            return self
        return InputError(self.reason, path=self.path, case=case)


class ConfigError(CtsegError):
    """Invalid configuration or case sheet."""
