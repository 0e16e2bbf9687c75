"""pandas tables as probe data: a DataFrame (features and a label column) or an ``(X, y)`` pair of
DataFrame / Series read as tensors. Duck-typed: pandas is not a dependency of this package."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["LABEL_NAMES", "frame_probe", "is_frame", "label_column_of"]

LABEL_NAMES = ("label", "labels", "target", "targets", "y", "class", "category")  # a table's label column, by default


def label_column_of(cols: Sequence[str], label_column: str | None, what: str) -> str | None:
    """The column of ``cols`` that holds the labels: ``label_column`` when it is given (not the default
    ``"label"``: missing is an error naming the columns); by default the first of ``label``, ``labels``,
    ``target``, ``targets``, ``y``, ``class``, ``category`` present (exact name, then any case), else None.
    (sklearn and pandas tables name it ``target``: read as a feature, it leaked the answer into the
    geometry.)"""
    if label_column is None:
        return None
    if label_column != "label":
        if label_column not in cols:
            raise ValueError(f"{what} has no column {label_column!r} (columns: {', '.join(map(str, cols))}); pass --label-column.")
        return label_column
    found = next((c for c in LABEL_NAMES if c in cols), None)
    if found is None:
        lower = {str(c).lower(): c for c in cols}
        found = next((lower[c] for c in LABEL_NAMES if c in lower), None)
    return found


def is_frame(v: Any) -> bool:
    """A pandas DataFrame or Series."""
    return type(v).__module__.split(".")[0] == "pandas" and hasattr(v, "to_numpy") and (hasattr(v, "columns") or hasattr(v, "dtype"))


def frame_probe(probe: Any) -> Any:
    """``probe`` with pandas tables read as tensors, anything else as it is:

    - a DataFrame: its label column (:func:`label_column_of`) out of the features: ``(features, labels)``,
      or the features alone when there is none;
    - an ``(X, y, ...)`` tuple holding a DataFrame / Series: X's numbers as the inputs, y as labels;
    - a Series of numbers: a tensor;
    - an ``(inputs, labels)`` tuple whose labels are a list / numpy array of class names or integers
      (scikit-learn's ``y``): the labels as a tensor.

    Features are float tensors (torch's default dtype); labels integer codes (names coded in sorted order).

    Raises:
        TypeError: a feature column that is not numeric (texts, categories), with the fix.
    """
    if is_frame(probe) and hasattr(probe, "columns"):
        cols = [str(c) for c in probe.columns]
        lab = label_column_of(cols, "label", "the DataFrame")
        if lab is None:
            return _numbers(probe)
        original = probe.columns[cols.index(lab)]
        return _numbers(probe.drop(columns=[original])), _labels(probe[original])
    if isinstance(probe, tuple) and 2 <= len(probe) <= 4 and any(is_frame(v) for v in probe):
        first = _numbers(probe[0]) if is_frame(probe[0]) else probe[0]
        return (first, *(_labels(v) if is_frame(v) else v for v in probe[1:]))
    if is_frame(probe):
        return _numbers(probe)
    if isinstance(probe, tuple) and 2 <= len(probe) <= 4 and _n_rows(probe[0]) is not None:
        n = _n_rows(probe[0])
        return (probe[0], *(_label_values(v, n) for v in probe[1:]))
    return probe


def _n_rows(v: Any) -> int | None:
    """Rows of a tensor or numpy array with at least one dimension, else None."""
    shape = getattr(v, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) > 0 and (isinstance(v, Tensor) or type(v).__module__ == "numpy") else None


def _label_values(v: Any, n: int) -> Any:
    """An ``(inputs, labels)`` tuple's labels given as a list or numpy array of ``n`` class names or numbers
    (scikit-learn style: ``y`` of strings) as a tensor (names coded in sorted order); anything else as it is."""
    if type(v).__module__ == "numpy" and getattr(v, "ndim", 0) == 1 and len(v) == n and v.dtype.kind in "USO":
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or len(v) != n or not v:
        return v
    if all(isinstance(e, str) for e in v):
        names = sorted(set(v))
        index = {name: i for i, name in enumerate(names)}
        return torch.tensor([index[e] for e in v])
    if all(isinstance(e, int) and not isinstance(e, bool) for e in v):
        return torch.tensor(v)
    return v


def _numbers(frame: Any) -> Tensor:
    """A DataFrame's / Series' numbers as a float tensor; a column of anything else is a TypeError."""
    dtypes = frame.dtypes.items() if hasattr(frame, "columns") else [(getattr(frame, "name", None) or "values", frame.dtype)]
    bad = [str(c) for c, dt in dtypes if getattr(dt, "kind", "O") not in "biuf"]
    if bad:
        raise TypeError(
            f"Expected a table of numbers, but column(s) {', '.join(bad[:5])} hold other values (texts, categories): "
            "encode them as numbers (pd.get_dummies(df), or df[col].cat.codes), or for texts give the model's "
            "tokenizer (lightning_geom.probe(model, df, tokenizer=tok) reads a `text` column)."
        )
    return torch.as_tensor(frame.to_numpy(dtype="float64")).to(torch.get_default_dtype())


def _labels(series: Any) -> Tensor:
    """A Series (or one-column DataFrame) of class labels as a tensor: integers as they are, names coded
    in sorted order, other numbers as floats (the label checks then name them)."""
    values = series.to_numpy()
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    kind = values.dtype.kind
    if kind in "biu":
        return torch.as_tensor(values.astype("int64"))
    if kind == "f":
        return torch.as_tensor(values)
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[str(v)] for v in values])
