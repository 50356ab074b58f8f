"""The one input rule of every predict path (``Agent.predict``, ``POST /v1/predict``,
``predict-batch``): raw records come shaped or flat, one record or a batch.

For a model whose manifest says one raw record has shape ``S`` (``input.raw_shape``, e.g.
``[8, 8]``), these are accepted, and nothing else:

=========================  ==============  ====================
input shape                what it is      becomes
=========================  ==============  ====================
``[N, *S]``                a shaped batch  itself
``S``                      one record      ``[1, *S]``
``[N, prod(S)]``           a flat batch    ``[N, *S]``
``[prod(S)]``              one flat record ``[1, *S]``
=========================  ==============  ====================

Flat values are read in row-major (C) order, as ``numpy.reshape`` and the dataset's
``px_r_c`` columns have them. Every result is a view of the input: no copy is made, so the
rule costs nothing when the input already has the right shape. Numpy only (the agent does
not import torch).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["as_records", "records_error"]


def records_error(shape: tuple[int, ...], raw_shape: tuple[int, ...], *, model: str) -> str:
    """What :func:`as_records` says about an input of ``shape`` (the same text everywhere)."""
    dims = ", ".join(map(str, raw_shape))
    size = math.prod(raw_shape)
    if len(raw_shape) > 1:
        accepted = (
            f"expects raw records of shape [{dims}] or {size} flat values in row-major order: "
            f"one record ([{dims}] or [{size}]) or a batch ([N, {dims}] or [N, {size}])"
        )
    else:
        accepted = f"expects raw records of shape [{dims}]: one record ([{dims}]) or a batch "
        accepted += f"([N, {dims}])"
    return f"{model} {accepted}; got {list(shape)}"


def as_records(x: np.ndarray, raw_shape: tuple[int, ...], *, model: str) -> np.ndarray:
    """``x`` as a batch of raw records ``[N, *raw_shape]`` (a view; see the module's table).

    ``model`` names the model in the error (e.g. ``digits-cnn@3``). Raises ``ValueError``
    for any other shape and for an empty batch.
    """
    shape = x.shape
    if shape[1:] == raw_shape:
        if not shape[0]:
            raise ValueError("raw records: got an empty batch")
        return x
    if shape == raw_shape:
        return x.reshape(1, *raw_shape)
    if len(raw_shape) > 1:
        size = math.prod(raw_shape)
        if len(shape) == 2 and shape[1] == size:
            if not shape[0]:
                raise ValueError("raw records: got an empty batch")
            return x.reshape(shape[0], *raw_shape)
        if shape == (size,):
            return x.reshape(1, *raw_shape)
    raise ValueError(records_error(shape, raw_shape, model=model))
