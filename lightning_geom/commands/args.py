"""argparse types shared by the commands: bad numbers are usage errors (exit code 2), not tracebacks."""

from __future__ import annotations

import argparse

__all__ = ["at_least", "positive_int", "non_negative_int", "positive_float", "fraction", "token_positions", "init_arg", "init_args"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def at_least(low: int, why: str):
    """An argparse type: an integer >= ``low`` (``why``: what a smaller one cannot do)."""

    def parse(text: str) -> int:
        v = _int(text)
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low} ({why}), got {v}")
        return v

    return parse


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    v = positive_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text}")
    return v


def token_positions(text: str) -> str | list[int]:
    """``all``, ``top_attribution`` or comma-separated token positions (integers; negative: from the end)."""
    if text in ("all", "top_attribution"):
        return text
    parts = [p.strip() for p in text.split(",")]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all', 'top_attribution' or comma-separated positions like 0,3, got {text!r}") from None


def init_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE``: a checkpoint hyperparameter to override; the value read as JSON (numbers, true /
    false, null, lists) where it parses, else as the string itself (a path, a name)."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a hyperparameter name and its value), got {text!r}")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def init_args(pairs: list[tuple[str, object]] | None) -> dict[str, object]:
    """The ``--init-arg`` pairs as a dict (a key given twice: the last value)."""
    return dict(pairs or [])
