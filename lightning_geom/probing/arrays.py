"""Probe data from arrays and tables of numbers: what a model without a tokenizer reads.

``.npy`` (the inputs), ``.npz`` / ``.pt`` (a tensor, an ``(inputs, labels)`` tuple, or named arrays)
and a ``.csv`` / ``.tsv`` whose columns are numbers (features + a label column), as :class:`~.data.ProbeData`
batches. Arrays named as the model's forward inputs go to it by name; NaN / Inf inputs and cells that
are not numbers are one line naming where.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..capture import LABEL_KEYS
from ..monitoring.frames import label_column_of
from .data import ProbeData, _is_missing, _rows, _usable_labels, probe_data_of

__all__ = ["ARRAY_EXT", "array_data", "keyword_inputs", "numeric_table", "table_probe_data"]

ARRAY_EXT = {".npy", ".npz", ".pt", ".pth"}
_INPUT_KEYS = ("inputs", "input", "x", "X", "features", "data")  # an array file's model input, by name
_HF_INPUT_KEYS = {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask", "inputs_embeds", "input_values", "input_features"}


def keyword_inputs(module: Any) -> set[str]:
    """The names a model's forward takes as keyword inputs (besides the usual Hugging Face ones)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return set(_HF_INPUT_KEYS)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return set(_HF_INPUT_KEYS) | (named - set(LABEL_KEYS) - {"return_dict", "output_hidden_states", "output_attentions", "use_cache"})


def array_data(path: Path, label_column: str | None, max_samples: int, batch_size: int, *, keywords: set[str] = _HF_INPUT_KEYS) -> ProbeData:
    """A probe from an array file: ``.npy`` (the inputs, (N, ...)), ``.npz`` or a ``torch.save``-d
    ``.pt`` / ``.pth`` (a tensor, an ``(inputs, labels)`` tuple, or a dict of arrays). In a dict, arrays
    named as the model's keyword inputs (``keywords``: its forward's parameters, ``input_ids``,
    ``attention_mask``, ``pixel_values``, ``input_values``, ...) are passed by name; otherwise the inputs are the one array not named as labels (or the one named ``inputs``,
    ``x``, ``features``, ...). Labels: ``label_column`` (default ``label``), else ``labels`` / ``y`` /
    ``targets``."""
    import numpy as np

    what = str(path)
    try:
        if path.suffix.lower() in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            obj = np.load(path, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                with obj:
                    obj = {k: obj[k] for k in obj.files}
    except Exception as err:  # noqa: BLE001 - zip / pickle / format errors all mean one thing to the user
        why = str(err).splitlines()[0][:160] if str(err) else ""
        if "weights_only" in str(err) or "Weights only" in str(err):  # torch.load's safe mode: not tensors alone
            why = "not a torch.save file of tensors, tuples and dicts only"
        raise ValueError(
            f"{path} is not a readable array file ({type(err).__name__}: {why}): "
            "--data takes .npy, .npz, or a .pt holding a tensor, an (inputs, labels) tuple or a dict of tensors."
        ) from None
    if isinstance(obj, dict):
        if "state_dict" in obj or "pytorch-lightning_version" in obj:
            raise ValueError(f"{path} is a model checkpoint, not data: name it as the model, and the probe data with --data.")
        obj = _array_dict(obj, label_column, what, keywords)
    elif isinstance(obj, list) and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj):
        obj = tuple(obj)
    if not isinstance(obj, (torch.Tensor, np.ndarray, tuple, dict)):
        raise ValueError(f"{path} holds a {type(obj).__name__}: expected a tensor, an (inputs, labels) tuple or a dict of tensors.")
    data = probe_data_of(obj, max_samples=max_samples, batch_size=batch_size)
    _check_finite(data.batches, path)
    data.description = f"{path.name} ({data.n} samples)"
    return data


def _float_inputs(obj: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a batch's inputs (a tensor, or a dict's values; labels left out)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() and obj.ndim else []
    if isinstance(obj, dict):
        return [t for k, v in obj.items() if k not in LABEL_KEYS for t in _float_inputs(v)]
    return []


def _check_finite(batches: list[Any], path: Path) -> None:
    """Refuse floating-point inputs with NaN / Inf: every feature of such a sample would be NaN."""
    seen, first, count = 0, None, 0
    for b in batches:
        tensors = _float_inputs(b[0] if isinstance(b, (tuple, list)) else b)
        if tensors:
            bad = torch.stack([~torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1) for t in tensors]).any(dim=0)
            count += int(bad.sum())
            if first is None and bool(bad.any()):
                first = seen + int(bad.nonzero()[0, 0])
            seen += int(bad.shape[0])
    if count:
        raise ValueError(f"{path}: {count} samples (the first: number {first}) hold NaN or infinite inputs: fill or drop them.")


def _array_dict(obj: dict, label_column: str | None, what: str, keywords: set[str] = _HF_INPUT_KEYS) -> Any:
    """A dict of arrays as a probe: keyword inputs with ``labels``, or ``(inputs, labels)``."""
    names = [label_column] if label_column not in (None, "label") else []
    lab_key = next((k for k in [*names, *LABEL_KEYS] if k in obj), None)
    if label_column not in (None, "label") and lab_key != label_column:
        raise ValueError(f"{what} has no array {label_column!r} (it has {', '.join(map(str, obj))}); pass --label-column.")
    rest = {k: v for k, v in obj.items() if k != lab_key}
    named = [k for k in rest if k in keywords and k not in _INPUT_KEYS]  # the model's own input names
    if named:
        out = {k: rest[k] for k in named}
        if lab_key is not None:
            out["labels"] = obj[lab_key]
        return out
    key = next((k for k in _INPUT_KEYS if k in rest), None) or (next(iter(rest)) if len(rest) == 1 else None)
    if key is None:
        raise ValueError(
            f"{what}: cannot tell the inputs among the arrays {', '.join(map(str, obj))}: name them "
            f"{' / '.join(_INPUT_KEYS[:3])} (and the labels {' / '.join(LABEL_KEYS[:3])})."
        )
    return (rest[key], obj[lab_key]) if lab_key is not None else rest[key]


def numeric_table(path: Path, text_column: str, label_column: str | None) -> tuple[Any, list[Any] | None] | None:
    """A CSV / TSV / Parquet table of numbers for a model without a tokenizer: ((N, F) float64 features, raw labels or
    None); None when the file has the text column (then it is texts). A cell that is not a number is an
    error naming file, line and column."""
    import numpy as np

    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows.")
    cols = list(rows[0][1])
    if text_column in cols:
        return None
    lab = label_column_of(cols, label_column, str(path))
    index = [c for c in cols if c != lab and _is_index_column(c, [rec.get(c) for _, rec in rows])]
    if index:  # pandas' to_csv writes the row index as a first, unnamed column: no feature of the samples
        warnings.warn(f"{path}: column {index[0]!r} is a row index (0, 1, 2, ...; pandas' to_csv writes one): left out of the features.", stacklevel=3)
    feats = [c for c in cols if c != lab and c not in index]
    if not feats:
        raise ValueError(f"{path} has no feature columns besides the label {lab!r}.")
    x = np.empty((len(rows), len(feats)))
    for r, (no, rec) in enumerate(rows):
        for c, name in enumerate(feats):
            try:
                x[r, c] = float(rec[name])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}:{no}: column {name!r} holds {rec[name]!r}, not a number: a model without a tokenizer reads "
                    f"a table of numbers (features, and the label column {label_column!r}); for texts pass --tokenizer "
                    f"and name the text column with --text-column."
                ) from None
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{path}:{rows[bad[0]][0]}: {bad.size} of {len(rows)} rows hold NaN or infinite values "
            "(the network's features would be NaN): fill or drop them."
        )
    labels = [rec[lab] for _, rec in rows] if lab is not None else None
    return x, labels


def _is_index_column(name: str, values: list[Any]) -> bool:
    """An unnamed column ('' or pandas' 'Unnamed: 0') holding 0, 1, 2, ... (or 1, 2, 3, ...): a row index."""
    if name.strip() and not name.startswith(("Unnamed:", "__index_level_")):  # pandas' to_csv / to_parquet
        return False
    try:
        ints = [int(float(v)) for v in values]
    except (TypeError, ValueError):
        return False
    return ints == list(range(ints[0], ints[0] + len(ints))) and ints[0] in (0, 1)


def table_probe_data(
    x: Any, labels: Sequence[Any] | None, *, max_samples: int = 2000, batch_size: int = 32, what: str = "table", name: str = "table",
) -> ProbeData:
    """(N, F) features (and raw class labels: numbers read as such, names coded in sorted order) as
    ``(inputs, labels)`` batches of float tensors."""
    from ..monitoring.probe import class_codes

    x = torch.as_tensor(x, dtype=torch.get_default_dtype())[:max_samples]
    codes, names = None, None
    if labels is not None:
        raw = [_number_or_text(v) for v in list(labels)[:max_samples]]
        if any(_is_missing(v) for v in raw):
            raise ValueError(f"{what}: {sum(_is_missing(v) for v in raw)} empty labels; fill them or remove those rows.")
        if all(isinstance(v, float) for v in raw):
            codes = torch.tensor(raw)  # numbers: checked as class ids below (regression targets are refused)
            names = None
        else:
            codes, names = class_codes(raw)
        codes, names = _usable_labels(codes, names, what)
        codes = None if codes is None else codes.long()
    batches = [(x[s : s + batch_size], codes[s : s + batch_size]) if codes is not None else x[s : s + batch_size] for s in range(0, len(x), batch_size)]
    return ProbeData(batches, codes, len(x), f"{name} ({len(x)} rows)", names)


def _number_or_text(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return float(v) if isinstance(v, (int, float)) else v
