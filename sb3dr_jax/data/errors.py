"""Typed errors for bad input.

Every error names the file (and, where it helps, the line or field) so that a user
with thousands of real-world files can find the one that is broken.
"""

from __future__ import annotations

import os


class DataError(ValueError):
    """Base class: a file or record that cannot be used.

    Attributes:
      path: the offending file (or record id), as a string; may be None for in-memory input.
      reason: a short human-readable reason.
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = None if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class MeshError(DataError):
    """A mesh file that is unreadable, empty, non-finite or otherwise unusable."""


class SketchError(DataError):
    """A sketch image or stroke record that is blank, corrupt or malformed."""


class ClaError(DataError):
    """A malformed `.cla` class file (the message names the line)."""


class LayoutError(DataError):
    """A dataset folder that does not follow the expected layout."""
