"""The base class of nashmoe's own warnings (the command line prints them as one line)."""

from __future__ import annotations

__all__ = ["NashmoeWarning"]


class NashmoeWarning(UserWarning):
    """Something the user should know about that did not stop the command (e.g. a damaged
    checkpoint skipped for an older intact one)."""
