"""Argument checks shared by the geometry functions: integers as users pass them.

A count such as ``k`` arrives as a Python int, a numpy integer (``np.int64`` from an array's
``shape`` or ``argmax``) or a 0-d integer tensor; all are integers. Booleans and floats are not,
even integral ones: ``k=2.0`` is more likely a mix-up than a count.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["NON_NEGATIVE", "as_int", "known_keywords", "positive_int"]

NON_NEGATIVE = "a non-negative integer"  # positive_int(..., low=0, what=NON_NEGATIVE): the monitors' wording


def as_int(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (int, numpy integer, 0-d integer tensor), else None.

    Example:
        >>> as_int(np.int64(3)), as_int(torch.tensor(4)), as_int(2.0), as_int(True)
        (3, 4, None, None)
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            return None
        return int(value.item())
    try:
        return operator.index(value)
    except TypeError:
        return None


def positive_int(value: object, name: str, *, low: int = 1, what: str | None = None, also: str = "") -> int:
    """``value`` as an int >= ``low``, else a ValueError that names ``name`` and what it got: "Expected
    `name` to be {also}{what}" (``what`` defaults to "a positive integer" / "an integer >= low";
    ``also``: the other values allowed, e.g. "None or ")."""
    v = as_int(value)
    if v is None or v < low:
        what = what or ("a positive integer" if low == 1 else f"an integer >= {low}")
        raise ValueError(f"Expected `{name}` to be {also}{what}, but got {value!r}.")
    return v


def known_keywords(owner: str, given: object, known: list[str]) -> None:
    """Raise a TypeError for the first keyword in ``given`` not in ``known``, naming the closest known one.

    Example:
        >>> known_keywords("probe", {"kk": 3}, ["k", "layers"])
        Traceback (most recent call last):
        ...
        TypeError: probe got an unexpected keyword argument 'kk' (did you mean `k`?); its options: k, layers.
    """
    import difflib

    for key in given:  # type: ignore[attr-defined]
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            raise TypeError(f"{owner} got an unexpected keyword argument {key!r}{hint}; its options: {', '.join(sorted(set(known)))}.")
