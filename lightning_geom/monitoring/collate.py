"""Batches from datasets of rows: a Hugging Face ``datasets.Dataset`` or any map-style dataset of dicts.

Iterating such a dataset gives one row at a time (``{"input_ids": [101, 2023, ...], "label": 1, "text":
"..."}``), tokenized rows of different lengths. :func:`pad_collate` makes a batch of them the way a
tokenizer's padding would: numeric fields stacked, 1-d fields of different lengths right-padded
(token ids with 0 and an ``attention_mask`` made to match when the rows have none; ``labels``
with -100, the ignore index), text fields left out (a model takes none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from ..capture import LABEL_KEYS

__all__ = ["pad_collate", "is_row_dataset", "is_row_list", "row_batches", "row_problem"]

_PAD = {"labels": -100, "label": -100}  # the ignore index of a per-token target; other fields pad with 0


def _numeric(v: Any) -> Tensor | None:
    """``v`` as a tensor when it is a number, an array or a (nested) list of numbers; None for text."""
    if isinstance(v, Tensor):
        return v
    if isinstance(v, (str, bytes)) or v is None:
        return None
    try:
        t = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError):
        return None
    return t if t.dtype != torch.bool or t.ndim else t.long()


def pad_collate(rows: Sequence[Any]) -> Any:
    """One batch of ``rows``: dict rows stacked field by field (1-d fields of different lengths
    right-padded, see the module docstring), other rows by torch's ``default_collate``.

    Raises:
        ValueError: a field whose rows differ in shape beyond one padded dimension.

    Example:
        >>> b = pad_collate([{"input_ids": [5, 6, 7], "label": 1, "text": "a b c"}, {"input_ids": [8], "label": 0, "text": "d"}])
        >>> b["input_ids"].tolist(), b["attention_mask"].tolist(), b["label"].tolist(), "text" in b
        ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]], [1, 0], False)
    """
    if not rows or not isinstance(rows[0], Mapping):
        return default_collate(list(rows))
    out: dict[str, Tensor] = {}
    lengths: Tensor | None = None
    for key in rows[0]:
        vals = [_numeric(r.get(key)) for r in rows]
        if any(v is None for v in vals):
            continue  # text (or a field some rows lack): no model input
        shapes = {tuple(v.shape) for v in vals}
        if len(shapes) == 1:
            out[key] = torch.stack(vals)
            continue
        if any(v.ndim != 1 for v in vals):
            raise ValueError(
                f"The probe rows' {key!r} differ in shape ({sorted(shapes)[:3]}): only 1-d fields (token ids) can be "
                "padded; pad them yourself, or pass a DataLoader with a collate_fn."
            )
        width = max(v.shape[0] for v in vals)
        pad = _PAD.get(key, 0)
        out[key] = torch.stack([torch.nn.functional.pad(v, (0, width - v.shape[0]), value=pad) for v in vals])
        if key == "input_ids":
            lengths = torch.tensor([v.shape[0] for v in vals])
    if lengths is not None and "attention_mask" not in out:
        out["attention_mask"] = (torch.arange(out["input_ids"].shape[1]) < lengths.unsqueeze(1)).long()
    return out


def is_row_dataset(obj: Any) -> bool:
    """A map-style dataset of dict rows that is not a torch ``Dataset`` (a Hugging Face ``datasets.Dataset``);
    a Python list or tuple is a sequence of batches, never rows."""
    if isinstance(obj, (Tensor, Mapping, str, bytes, list, tuple, DataLoader, torch.utils.data.Dataset)):
        return False
    if not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        return False
    try:
        return len(obj) > 0 and isinstance(obj[0], Mapping)
    except Exception:  # noqa: BLE001 - an object that only looks like a dataset
        return False


def _is_scalar(v: Any) -> bool:
    return (isinstance(v, Tensor) and v.ndim == 0) or (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        type(v).__module__ == "numpy" and getattr(v, "ndim", None) == 0
    )


def is_row_list(obj: Any) -> bool:
    """A Python list / tuple of *samples*, not of batches: ``[dataset[i] for i in ...]``, items that are
    dicts or tuples holding a 0-d label (a number or a 0-d tensor: no batch has one), or dicts whose
    ``input_ids`` are 1-d (a batch's are (B, T)). Such a list is collated into batches
    (:func:`pad_collate`); read as batches, each sample's tokens (or features) were taken for samples."""
    if not isinstance(obj, (list, tuple)) or not obj:
        return False
    first = obj[0]
    if isinstance(first, Mapping):
        ids = first.get("input_ids")
        return any(_is_scalar(v) for v in first.values()) or (ids is not None and getattr(_numeric(ids), "ndim", 0) == 1)
    if isinstance(first, (tuple, list)) and first:
        return any(_is_scalar(v) for v in first)
    return False


def row_problem(row: Any) -> str | None:
    """Why a dataset row cannot be a model input, or None: a dict row with no numeric field besides its
    label (texts not tokenized yet), or a tuple row holding a text."""
    tokenize = "tokenize them first (e.g. dataset.map(lambda r: tokenizer(r['text'], truncation=True), batched=True))"
    if isinstance(row, Mapping):
        inputs = [k for k, v in row.items() if k not in LABEL_KEYS and _numeric(v) is not None]
        if inputs:
            return None
        texts = [str(k) for k, v in row.items() if isinstance(v, str)]
        what = f"texts ({', '.join(texts)})" if texts else f"no numeric field besides the label ({', '.join(map(str, row)) or 'no fields'})"
        return f"the probe's rows hold {what} and no model inputs (input_ids, ...): {tokenize}"
    if isinstance(row, (tuple, list)) and any(isinstance(v, str) for v in row):
        return f"the probe's rows are ({', '.join(type(v).__name__ for v in row)}) tuples holding texts: {tokenize}"
    return None


def row_batches(rows: Any, *, num_samples: int, batch_size: int) -> list[Any]:
    """The first ``num_samples`` rows of a map-style dataset as :func:`pad_collate` batches."""
    n = min(len(rows), num_samples)
    return [pad_collate([rows[i] for i in range(s, min(s + batch_size, n))]) for s in range(0, n, batch_size)]
