"""The packager's one exception root: :class:`PackagerError`.

Every exception the package raises derives from it (built-in bases kept where callers catch
them: ``ValueError`` for bad key material and bundle formats, ``RuntimeError`` for export,
quantisation and the accuracy gate).
"""

from __future__ import annotations

__all__ = ["PackagerError"]


class PackagerError(Exception):
    """Packaging, signing or reading a bundle failed; the message says why."""
