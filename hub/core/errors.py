"""Domain errors: each carries a stable machine-readable code and an HTTP status.

The API turns them into ``{"error": message, "code": code}`` bodies and the CLI prints
the same object with ``--json``; messages say what to do next.
"""

from __future__ import annotations

from typing import Any


class EdgeloopError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class NotFound(EdgeloopError):
    code = "not_found"
    status = 404


class Conflict(EdgeloopError):
    code = "conflict"
    status = 409


class InvalidInput(EdgeloopError):
    code = "invalid_input"
    status = 422


class DatasetInvalid(EdgeloopError):
    """A dataset version failed validation and was not overridden: training is blocked."""

    code = "dataset_invalid"
    status = 409


class BundleRejected(EdgeloopError):
    """A bundle failed verification (digest, signature or format): it is never used."""

    code = "bundle_invalid"
    status = 422


class Unauthorized(EdgeloopError):
    code = "unauthorized"
    status = 401


class Forbidden(EdgeloopError):
    code = "forbidden"
    status = 403


def parse_ref(ref: str, *, what: str) -> tuple[str, str]:
    """Split ``NAME@VERSION`` (VERSION: a number, ``latest`` or an alias) into its parts."""
    name, sep, version = ref.partition("@")
    if not name or not sep or not version:
        raise InvalidInput(
            f"{what} {ref!r} must look like NAME@VERSION (e.g. digits@1, digits@latest)"
        )
    return name, version
