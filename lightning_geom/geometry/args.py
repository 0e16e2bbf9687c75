"""Argument checks shared by the geometry functions: integers as users pass them.

A count such as ``k`` arrives as a Python int, a numpy integer (``np.int64`` from an array's
``shape`` or ``argmax``) or a 0-d integer tensor; all are integers. Booleans and floats are not,
even integral ones: ``k=2.0`` is more likely a mix-up than a count.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np
import torch

__all__ = ["NON_NEGATIVE", "as_int", "discard_fraction", "flag", "known_keywords", "non_negative_real", "optional_name", "positive_int"]

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


def non_negative_real(value: object, name: str) -> float:
    """``value`` as a finite float >= 0 (ints, floats, numpy / 0-d tensor reals; not booleans), else a ValueError.

    Example:
        >>> non_negative_real(0.25, "min_depth"), non_negative_real(np.float32(1), "tol")
        (0.25, 1.0)
    """
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"Expected `{name}` to be a finite number >= 0, but got {value!r}.")
    return float(value)


def discard_fraction(value: object) -> float:
    """TwoNN's ``discard_fraction`` in (0, 1): 0 makes the fit's last point -log(1 - N/N) infinite."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"Expected `discard_fraction` in (0, 1), but got {value!r}.")
    if value == 0.0:
        raise ValueError("`discard_fraction=0` makes the TwoNN fit's last point -log(1 - N/N) infinite; keep it > 0 (DADApy: 0.1).")
    return float(value)


def flag(value: object, name: str) -> bool:
    """``value`` as a bool (Python or numpy), else a TypeError: a string such as "no" is truthy, not False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected `{name}` to be True or False, but got {value!r}.")
    return bool(value)


def optional_name(value: object, name: str, what: str) -> str | None:
    """``value`` when None or a non-empty string, else a TypeError naming ``what`` the string is."""
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"Expected `{name}` to be None or {what}, but got {value!r}.")
    return value


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
