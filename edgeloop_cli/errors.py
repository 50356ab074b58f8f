"""The CLI's one exception root: :class:`CliError` (an ``EdgeloopError``, so ``main`` prints
it as ``{"error", "code"}`` like every hub error)."""

from __future__ import annotations

from hub.core.errors import EdgeloopError

__all__ = ["CliError"]


class CliError(EdgeloopError):
    """An error reported by the hub (or on the way to it), with the hub's code."""

    def __init__(self, message: str, *, code: str, status: int = 1) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
