"""The training transform a device applies before the model: ``(x_raw - mean) / scale``.

Numpy only: the edge agent imports this module too. A :class:`Preprocess` goes into the bundle
manifest (``model_dump(mode="json")``) and :meth:`Preprocess.apply` is the single implementation
both sides use, so the hub's calibration / test inputs and the device's inputs match exactly.

* ``input_shape`` is the shape of one record as the model sees it (no batch axis), e.g.
  ``[1, 8, 8]``.
* ``reshape_from`` is the shape of one raw record when it differs, e.g. ``[64]`` (64 pixels
  reshaped to ``[1, 8, 8]``); the element counts must match.
* ``mean`` and ``scale`` are a number or a nested list broadcastable to ``input_shape``, e.g.
  ``[[m0], [m1], [m2]]`` (shape ``[3, 1]``) for per-channel statistics of a ``[3, 64]`` window.
  Every ``scale`` entry must be finite and non-zero.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Preprocess"]

# A number or a nested list of numbers; checked (and broadcast) by the validators below.
Stat = float | list[Any]


def _as_array(value: Stat, *, what: str) -> npt.NDArray[np.float64]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number or a nested list of numbers") from exc
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} must be finite")
    return array


class Preprocess(BaseModel):
    """Per-record transform ``x_model = (reshape(x_raw) - mean) / scale`` as float32."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_shape: tuple[int, ...] = Field(min_length=1)
    dtype: Literal["float32"] = "float32"
    mean: Stat = 0.0
    scale: Stat = 1.0
    reshape_from: tuple[int, ...] | None = None

    @field_validator("input_shape", "reshape_from")
    @classmethod
    def _positive_dims(cls, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if shape is not None and (not shape or any(d <= 0 for d in shape)):
            raise ValueError(f"shape dimensions must be positive, got {list(shape)}")
        return shape

    @model_validator(mode="after")
    def _consistent(self) -> Preprocess:
        for what in ("mean", "scale"):
            array = _as_array(getattr(self, what), what=what)
            try:
                broadcast = np.broadcast_shapes(array.shape, self.input_shape)
            except ValueError:
                broadcast = None
            if broadcast != self.input_shape:
                raise ValueError(
                    f"{what} of shape {list(array.shape)} does not broadcast to "
                    f"input_shape {list(self.input_shape)}"
                )
            if what == "scale" and np.any(array == 0):
                raise ValueError("scale must be non-zero")
        if self.reshape_from is not None and math.prod(self.reshape_from) != math.prod(
            self.input_shape
        ):
            raise ValueError(
                f"reshape_from {list(self.reshape_from)} has {math.prod(self.reshape_from)} "
                f"values per record, input_shape {list(self.input_shape)} has "
                f"{math.prod(self.input_shape)}"
            )
        return self

    @property
    def raw_shape(self) -> tuple[int, ...]:
        """The shape of one raw record (what :meth:`apply` expects after the batch axis)."""
        return self.reshape_from if self.reshape_from is not None else self.input_shape

    def apply(self, raw: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Transform a batch of raw records ``[N, *raw_shape]`` into model inputs
        ``[N, *input_shape]`` (float32). Raises ``ValueError`` on a wrong shape or dtype."""
        x = np.asarray(raw)
        if x.dtype.kind not in "biuf":
            raise ValueError(f"raw records must be real numbers, got dtype {x.dtype}")
        if x.ndim != len(self.raw_shape) + 1 or tuple(x.shape[1:]) != self.raw_shape:
            expected = ", ".join(map(str, self.raw_shape))
            raise ValueError(
                f"expected a batch of raw records of shape [N, {expected}], got {list(x.shape)}"
                + (" (add a batch axis for a single record)" if x.shape == self.raw_shape else "")
            )
        x = x.astype(np.float32, copy=False).reshape(len(x), *self.input_shape)
        mean = _as_array(self.mean, what="mean").astype(np.float32)
        scale = _as_array(self.scale, what="scale").astype(np.float32)
        return np.ascontiguousarray((x - mean) / scale, dtype=np.float32)
