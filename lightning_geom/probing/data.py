"""Probe data for `lightning-geom probe`: text files, CSV/JSONL, tables of numbers, arrays (.npy, .npz, .pt),
image folders, a datamodule, the digits.

Every loader returns :class:`ProbeData`: a list of model-ready batches and the labels (or None).
Errors are one line that says what to fix.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..geometry import label_problem
from ..loading import import_class, padding_tokenizer
from ..monitoring.frames import is_frame, label_column_of

__all__ = ["ProbeData", "load_probe_data"]

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class ProbeData:
    batches: list[Any]
    labels: torch.Tensor | None
    n: int
    description: str
    label_names: list[str] | None = None


def _batches(data: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    n = len(next(iter(data.values())))
    return [{k: v[s : s + batch_size] for k, v in data.items()} for s in range(0, n, batch_size)]


_MISSING = {"", "nan", "none", "null", "na", "n/a"}


def _is_missing(v: Any) -> bool:
    """An empty / NaN / null cell: never a class of its own."""
    if v is None:
        return True
    if isinstance(v, float) and v != v:  # NaN
        return True
    return isinstance(v, str) and v.strip().lower() in _MISSING



TABLE_EXT = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".arrow")  # files of records (columns); any other text file: one text per line


def is_table(path: Path) -> bool:
    """A file of records (:data:`TABLE_EXT`) or a ``save_to_disk`` folder (:func:`is_saved_dataset`)."""
    return path.suffix.lower() in TABLE_EXT or is_saved_dataset(path)

_BINARY = ((b"\x93NUMPY", "a NumPy array"), (b"PAR1", "a Parquet table"), (b"PK\x03\x04", "a zip archive (.npz, .pt, .xlsx)"),
           (b"\x80", "a pickle"), (b"ARROW1", "an Arrow table"), (b"\x89HDF", "an HDF5 file"), (b"SQLite format", "an SQLite database"))


def _read_utf8(path: Path) -> str:
    """The file's text as UTF-8 (a byte-order mark is not part of the first line); another encoding is a
    one-line error with the line of the first bad byte and the fix; a binary file (NUL bytes) says what it is."""
    raw = path.read_bytes()
    if b"\x00" in raw[:8192] or any(raw.startswith(magic) for magic, _ in _BINARY):
        kind = next((what for magic, what in _BINARY if raw.startswith(magic)), "binary")
        raise ValueError(
            f"{path} is {kind if kind != 'binary' else 'a binary file'}, not text: --data reads texts (.txt one per line, "
            ".csv, .tsv, .jsonl, .json, .parquet, .arrow, a datasets save_to_disk folder), arrays (.npy, .npz, .pt), an image folder, 'digits' or a datamodule YAML; "
            "other data goes through Python: lightning_geom.probe(model, array_or_dataloader)."
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix})."
        ) from None


def _lines(text: str) -> list[str]:
    """Lines split at \\n, \\r\\n or \\r only: ``str.splitlines`` also splits at U+2028, \\x0b, \\x1c ...,
    which may sit inside one text (one text per line must stay one sample)."""
    return re.split(r"\r\n|\n|\r", text)


def _delimiter(text: str) -> str:
    """A .csv file's delimiter, read off its header line: ``,`` unless the header has none and has a
    ``;`` (spreadsheets in many locales), a tab or a ``|``."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    return next((c for c in (";", "\t", "|") if c in header), ",")


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of a CSV / TSV / JSONL / JSON file, (row number, record) of a Parquet table;
    malformed records name file and line."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".arrow" or path.is_dir():
        return _arrow_rows(path)
    text = _read_utf8(path)
    if suffix in (".csv", ".tsv"):
        # a StringIO, not splitlines(): quoted cells may hold newlines (and splitlines() also splits at
        # \x0b, \x1c, \u2028 ... inside a text)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else _delimiter(text))
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise ValueError(f"{path}:{reader.line_num}: {len(row) - 1 + len(row[None])} cells for {len(reader.fieldnames or [])} header columns.")
            rows.append((reader.line_num, row))
        return rows
    whole = _json_document(path, text) if suffix == ".json" else None
    if whole is not None:  # a JSON array of records, or {column: [values]} (pandas / datasets `to_dict()`)
        out = list(enumerate(whole, start=1))
    else:  # JSON lines
        out = []
        for no, line in enumerate(_lines(text), start=1):
            if not line.strip():
                continue
            try:
                out.append((no, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{no}: invalid JSON ({err.msg}); one JSON object per line.") from None
    for no, rec in out:
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{no}: expected a JSON object with a text field, but got {type(rec).__name__}.")
    return out


def _parquet_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number from 1, record) of a Parquet table (what Hugging Face datasets and pandas save), read
    with pyarrow when it is installed; without it a one-line error with the install and the conversion."""
    pa = _pyarrow(path, "a Parquet table")
    try:
        table = pa.parquet.read_table(path)
    except Exception as err:  # noqa: BLE001 - pyarrow's own errors: one line naming the file
        raise ValueError(f"{path}: not a readable Parquet table ({type(err).__name__}: {err}).") from None
    return list(enumerate(table.to_pylist(), start=1))


def _pyarrow(path: Path, kind: str) -> Any:
    """pyarrow, or a one-line error saying that reading ``path`` (a ``kind``) needs it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - loads the parquet reader onto the package
    except ImportError:
        raise ValueError(
            f"{path} is {kind}: reading it needs pyarrow (pip install pyarrow), or save it as .jsonl "
            "(pandas: df.to_json('data.jsonl', orient='records', lines=True); datasets: ds.to_json('data.jsonl'))."
        ) from None
    return pyarrow


def is_saved_dataset(path: Path) -> bool:
    """A folder written by Hugging Face datasets' ``save_to_disk``: ``state.json`` beside ``*.arrow`` shards,
    or ``dataset_dict.json`` beside one folder per split."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _arrow_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number from 1, record) of an Arrow table: a ``.arrow`` file (IPC stream, as datasets writes
    its shards, or IPC file format) or a ``save_to_disk`` folder (its shards in order). A folder of
    several splits is a one-line error naming them."""
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        pick = next((s for s in ("test", "validation", "valid", "eval") if s in splits), splits[0] if splits else "test")
        raise ValueError(f"{path} holds several splits ({', '.join(splits) or 'none found'}): pass one of them, e.g. {path / pick}.")
    files = sorted(path.glob("*.arrow")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} has no .arrow shards: is it a `save_to_disk` folder?")
    pa = _pyarrow(path, "an Arrow table")
    import pyarrow.ipc  # noqa: F401 - the IPC readers

    records: list[dict[str, Any]] = []
    for f in files:
        try:
            with pa.memory_map(str(f)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()
                except pa.ArrowInvalid:  # the random-access IPC file format
                    src.seek(0)
                    table = pa.ipc.open_file(src).read_all()
        except Exception as err:  # noqa: BLE001 - pyarrow's own errors: one line naming the file
            raise ValueError(f"{f}: not a readable Arrow table ({type(err).__name__}: {err}).") from None
        records.extend(table.to_pylist())
    return list(enumerate(records, start=1))


def _json_document(path: Path, text: str) -> list[Any] | None:
    """The records of a .json file that is one document: an array of records, ``{column: [values]}``
    (equal-length lists: one record per position) or ``{"data": [records]}`` (one list of records);
    None for JSON lines (one object per line) in a .json file."""
    head = text.lstrip()[:1]
    if head not in ("[", "{"):
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        if head == "{":  # several objects: JSON lines
            return None
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg}).") from None
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        return None
    lists = {k: v for k, v in doc.items() if isinstance(v, list)}
    if lists and len(lists) == len(doc):
        sizes = {len(v) for v in lists.values()}
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):  # {"data": [records]}
            return next(iter(lists.values()))
        if len(sizes) > 1:
            raise ValueError(f"{path}: the columns have different lengths ({', '.join(f'{k}: {len(v)}' for k, v in lists.items())}).")
        n = sizes.pop()
        return [{k: v[i] for k, v in lists.items()} for i in range(n)]
    return [doc]  # one record


def _texts(
    path: Path, text_column: str, label_column: str | None, *, drop_unlabeled: bool = False
) -> tuple[list[str], list[Any] | None]:
    """Texts and raw labels of a data file; every malformed record is an error naming file and line."""
    if not is_table(path):  # one sample per line
        for flag, v, default in (("--text-column", text_column, "text"), ("--label-column", label_column, "label")):
            if v not in (None, default):
                raise ValueError(
                    f"{path} is plain text (one text per line, no columns), so {flag} {v!r} has nothing to name: "
                    "put texts and labels in a .csv, .tsv, .jsonl or .parquet file."
                )
        lines = [line.strip() for line in _lines(_read_utf8(path)) if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty: put one text per line.")
        return lines, None
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows.")
    cols = list(rows[0][1])
    names = [c.strip() for c in text_column.split(",")] if "," in text_column else [text_column]  # "premise,hypothesis": pairs
    if len(names) > 2:
        raise ValueError(f"--text-column {text_column!r}: one column, or two for text pairs (e.g. premise,hypothesis).")
    missing = [c for c in names if c not in cols]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r} (columns: {', '.join(cols)}); pass --text-column (two, comma-separated, for pairs).")
    label_column = label_column_of(cols, label_column, str(path))
    use_labels = label_column is not None
    texts, labels, dropped = [], [], 0
    for no, rec in rows:
        for c in names:
            t = rec.get(c)
            if _is_missing(t) or not isinstance(t, (str, int, float)):
                raise ValueError(f"{path}:{no}: no text in {c!r} (got {t!r}); fill it or remove the record.")
        if use_labels:
            lab = rec.get(label_column)
            if _is_missing(lab):
                if drop_unlabeled:
                    dropped += 1
                    continue
                raise ValueError(
                    f"{path}:{no}: empty label in {label_column!r} (got {lab!r}); fill it, remove the record, "
                    "or pass --drop-unlabeled."
                )
            labels.append(lab)
        texts.append(tuple(str(rec[c]) for c in names) if len(names) == 2 else str(rec[names[0]]))
    if dropped:
        warnings.warn(f"{path}: {dropped} records without a label were dropped (--drop-unlabeled).", stacklevel=3)
    if not texts:
        raise ValueError(f"{path}: no labelled records left.")
    return texts, (labels if use_labels else None)


def _usable_labels(labels: torch.Tensor | None, names: list[str] | None, what: str) -> tuple[torch.Tensor | None, list[str] | None]:
    """Labels that say nothing about neighbourhoods (one class, a class per sample, regression
    targets: :func:`~lightning_geom.geometry.label_problem`): warn and leave the label metrics out."""
    problem = label_problem(labels) if labels is not None else None
    if problem is not None:
        warnings.warn(f"{what}: label overlap and retrieval are left out: {problem}.", stacklevel=3)
        return None, None
    return labels, names


def probe_data_of(obj: Any, *, max_samples: int = 2000, batch_size: int = 32) -> ProbeData:
    """In-memory probe data, as the monitors take it: a DataLoader, a Dataset, a dict of (N, ...) tensors,
    an ``(inputs, labels)`` tuple of tensors or a tensor (the first ``max_samples`` samples). Labels from
    a dict's ``labels`` or a tuple's second item (class labels per sample; others are left out, warned).
    """
    from ..capture import sample_labels, split_batch
    from ..monitoring.probe import batch_len, probe_batches

    batches = probe_batches(obj, num_samples=max_samples, batch_size=batch_size)
    raw = [split_batch(b)[2] for b in batches]
    labels = [sample_labels(v) if isinstance(v, torch.Tensor) else None for v in raw]
    lab = None
    if all(isinstance(v, torch.Tensor) for v in labels):
        lab = torch.cat(labels)
    n = sum(batch_len(b) for b in batches)
    what = f"{type(obj).__name__} in memory ({n} samples)"
    lab, _ = _usable_labels(lab, None, what)
    return ProbeData(batches, lab, n, what)


def load_probe_data(
    spec: str,
    loaded: Any,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    max_samples: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
    drop_unlabeled: bool = False,
) -> ProbeData:
    """Read ``spec`` (``digits``, a file, an image folder, or a datamodule YAML) for the loaded model.

    Raises:
        ValueError: a missing file, a malformed record (named by file and line), an empty text or
            label (unless ``drop_unlabeled``), non-positive ``max_samples`` / ``batch_size``.
    """
    for name, v in (("max_samples", max_samples), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"Expected `{name}` to be a positive integer, but got {v!r}.")
    if spec == "digits":
        from ..demo.data import digits_sequences

        x, y = digits_sequences()
        x, y = x[:max_samples], y[:max_samples]
        return ProbeData(_batches({"pixels": x, "labels": y}, batch_size), y, len(y), f"scikit-learn digits ({len(y)} images)", [str(i) for i in range(10)])
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"No such data file or folder: {spec} (or use 'digits').")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _datamodule(path, max_samples)
    if path.is_dir() and not is_saved_dataset(path):
        return _image_folder(path, loaded, max_samples, batch_size, seed)
    if path.suffix.lower() in (".ckpt", ".safetensors", ".bin", ".gguf"):
        raise ValueError(f"{path} is a model file, not data: name it as the model, and the probe data with --data.")
    from .arrays import ARRAY_EXT, array_data, keyword_inputs, numeric_table, table_probe_data

    if path.suffix.lower() in ARRAY_EXT:
        return array_data(path, label_column, max_samples, batch_size, keywords=keyword_inputs(loaded.module))
    if is_table(path):
        tokenized = token_records(path, text_column, label_column, max_samples, batch_size)
        if tokenized is not None:
            return tokenized
    if (path.suffix.lower() in (".csv", ".tsv", ".parquet", ".arrow") or is_saved_dataset(path)) and loaded.tokenizer is None and loaded.image_processor is None and loaded.kind != "hf-image":
        table = numeric_table(path, text_column, label_column)
        if table is not None:
            return table_probe_data(*table, max_samples=max_samples, batch_size=batch_size, what=str(path), name=path.name)
    if loaded.tokenizer is None and (loaded.image_processor is not None or loaded.kind == "hf-image"):
        raise ValueError(f"{loaded.source} is an image model, and {path} is text: pass an image folder (<class>/<image>) as --data.")
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source} has no tokenizer, so it cannot read the text file {path}: pass --tokenizer FOLDER (the tokenizer files its model was trained with).")
    texts, raw = _texts(path, text_column, label_column, drop_unlabeled=drop_unlabeled)
    return text_probe_data(texts, raw, loaded.tokenizer, max_samples=max_samples, batch_size=batch_size, what=str(path), name=path.name, source=loaded.source)


def token_records(path: Path, text_column: str, label_column: str | None, max_samples: int, batch_size: int) -> ProbeData | None:
    """A table of records tokenized already (an ``input_ids`` list per record, no ``text_column``: a
    ``datasets`` table saved after ``map(tokenizer)``) as padded batches of its model inputs and labels
    (class names coded in sorted order); None for a table of texts or of numbers."""
    from ..monitoring.probe import class_codes
    from .arrays import _HF_INPUT_KEYS

    rows = _rows(path)
    if not rows:
        return None
    first = rows[0][1]
    if not isinstance(first.get("input_ids"), list):  # (tokens saved beside their text are used as saved)
        return None
    lab = label_column_of(list(first), label_column, str(path))
    rows = rows[:max_samples]
    keys = [k for k in first if k in _HF_INPUT_KEYS and isinstance(first[k], list)]
    samples = []
    for no, rec in rows:
        try:
            samples.append({k: torch.as_tensor(rec[k]) for k in keys})
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{path}:{no}: the token column(s) {', '.join(keys)} do not hold lists of numbers ({err}).") from None
    names = None
    if lab is not None:
        raw = [rec[lab] for _, rec in rows]
        if any(_is_missing(v) for v in raw):
            bad = next(no for no, rec in rows if _is_missing(rec[lab]))
            raise ValueError(f"{path}:{bad}: empty label in {lab!r}; fill it or remove the record.")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
            codes = torch.tensor(raw)
        else:
            codes, names = class_codes(raw)
        for sample, c in zip(samples, codes):
            sample["labels"] = c
    data = probe_data_of(samples, max_samples=max_samples, batch_size=batch_size)
    data.description = f"{path.name} ({data.n} tokenized samples)"
    if names is not None:
        data.label_names = names
    return data


def texts_in_memory(data: Any, limit: int = 2000) -> tuple[list[str], Any] | None:
    """(texts, labels or None) when ``data`` is a list of texts (or of (text, text_pair) tuples), a ``(texts, labels)`` pair, or rows of
    text not tokenized yet (:func:`text_rows`), else None."""
    def is_texts(v: Any) -> bool:  # texts, or (text, text_pair) tuples (second texts mostly distinct: else (text, label) rows)
        if not isinstance(v, (list, tuple)) or not v:
            return False
        if all(isinstance(t, str) for t in v):
            return True
        pairs = all(isinstance(t, tuple) and len(t) == 2 and all(isinstance(u, str) for u in t) for t in v)
        return pairs and len({t[1] for t in v}) * 2 > len(v)

    if is_texts(data):
        return list(data), None
    if isinstance(data, tuple) and len(data) == 2 and is_texts(data[0]) and not isinstance(data[1], (str, bytes)):
        labels = data[1].tolist() if hasattr(data[1], "tolist") else list(data[1])
        return list(data[0]), labels
    return text_rows(data, limit)


_TEXT_FIELDS = ("text", "sentence", "content", "document", "review")  # the text of a row with several string fields


def text_rows(data: Any, limit: int = 2000) -> tuple[list[str], list[Any] | None] | None:
    """The first ``limit`` rows' (texts, labels or None) of a dataset or list of rows that hold text not
    tokenized yet: dict rows with no numeric input field besides the label (a Hugging Face ``Dataset``
    before ``map(tokenizer)``, JSON records; scalar fields such as an ``idx`` are left out), the text their one string field (or the first of
    ``text``, ``sentence``, ... when there are several; two other string fields are a pair, tokenized as
    ``tokenizer(first, second)``: NLI's premise / hypothesis), the label under a label key
    (``labels``, ``label``, ...); or ``(text, label)`` tuples (string labels when they repeat: class names,
    not the second sentences of pairs). None for anything else."""
    from ..modules import LABEL_KEYS

    if is_frame(data) and hasattr(data, "columns"):  # a pandas DataFrame: its records
        data = data.to_dict("records")
    if isinstance(data, (str, bytes, dict, torch.Tensor)) or not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        return None
    try:
        n = len(data)
        first = data[0] if n else None
    except Exception:  # noqa: BLE001 - not a row container: the other readers decide
        return None
    if isinstance(first, Mapping):
        # token inputs are sequences (input_ids lists / tensors); a scalar field (GLUE's `idx`) is metadata
        numeric = [k for k, v in first.items() if k not in LABEL_KEYS and (isinstance(v, (list, tuple)) or getattr(v, "ndim", 0) >= 1)]
        strings = [k for k, v in first.items() if isinstance(v, str) and k not in LABEL_KEYS]
        field = strings[0] if len(strings) == 1 else next((f for f in _TEXT_FIELDS if f in strings), None)
        pair = tuple(strings) if field is None and len(strings) == 2 else None  # premise / hypothesis, sentence1 / sentence2
        if (field is None and pair is None) or numeric:
            return None
        lab = next((key for key in LABEL_KEYS if key in first), None)
        rows = [data[i] for i in range(min(n, limit))]
        texts = [(r[pair[0]], r[pair[1]]) for r in rows] if pair else [r[field] for r in rows]
        return texts, ([_plain(r[lab]) for r in rows] if lab else None)
    if isinstance(first, (tuple, list)) and len(first) == 2 and isinstance(first[0], str) and not isinstance(first[1], bytes):
        rows = [data[i] for i in range(min(n, limit))]
        labels = [_plain(r[1]) for r in rows]
        if isinstance(first[1], str) and len(set(labels)) * 2 > len(labels):  # mostly distinct: sentence pairs, not class names
            return None
        return [r[0] for r in rows], labels
    return None


def _plain(v: Any) -> Any:
    """A label as a plain value: a 0-d tensor or numpy scalar's number (hashable by value)."""
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v


def text_probe_data(
    texts: Sequence[str],
    labels: Sequence[Any] | None,
    tokenizer: Any,
    *,
    max_samples: int = 2000,
    batch_size: int = 32,
    what: str = "texts",
    name: str = "texts in memory",
    source: str = "the model",
) -> ProbeData:
    """Texts (and optional class labels, any hashable values: coded in sorted-name order) tokenized into
    padded batches (right padding, at most 128 tokens each): the first ``max_samples``. ``what`` names
    the texts in messages, ``name`` in the report, ``source`` the tokenizer's model.

    Raises:
        ValueError: no texts, a text that is not a string or is empty, labels of another length.
    """
    from ..monitoring.probe import class_codes

    texts = list(texts)
    if not texts:
        raise ValueError(f"{what}: no texts to probe.")
    pairs = all(isinstance(t, tuple) and len(t) == 2 for t in texts)  # (text, text_pair): NLI, paraphrase

    def bad_text(t: Any) -> bool:
        return any(not isinstance(u, str) or not u.strip() for u in t) if pairs else not isinstance(t, str) or not t.strip()

    bad = next((i for i, t in enumerate(texts) if bad_text(t)), None)
    if bad is not None:
        one = texts[bad]
        kind = "empty" if (isinstance(one, str) or pairs) else "a " + type(one).__name__ + ", not a string"
        raise ValueError(f"{what}: text number {bad} is {kind}{' (in its pair)' if pairs else ''}.")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{what}: {len(labels)} labels for {len(texts)} texts: give one label per text.")
    texts = texts[:max_samples]
    codes, names = (None, None)
    if labels is not None:
        codes, names = _usable_labels(*class_codes(list(labels)[:max_samples]), what)
    tok = padding_tokenizer(tokenizer)
    batches = []
    for s in range(0, len(texts), batch_size):
        part = texts[s : s + batch_size]
        args = ([a for a, _ in part], [b for _, b in part]) if pairs else (part,)
        enc = tok(*args, padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    _check_tokens(batches, tok, f"{what} with {source}'s tokenizer")
    return ProbeData(batches, codes, len(texts), f"{name} ({len(texts)} texts)", names)


_UNKNOWN_SHARE = 0.5  # warn when more of the real tokens than this are the tokenizer's unknown token
_DUPLICATE_SHARE = 0.05  # warn when more samples than this are token-for-token copies of another


def token_diagnostics(
    batches: list[dict[str, torch.Tensor]], unk_id: int | None, special_ids: Sequence[int] = ()
) -> tuple[float, int, int]:
    """(share of the real, non-special tokens that are ``unk_id``, samples that repeat an earlier sample
    token for token, samples) over tokenized batches (``input_ids`` and optionally ``attention_mask``)."""
    seen: set[tuple[int, ...]] = set()
    unknown = real = copies = n = 0
    special = torch.tensor([i for i in special_ids if i != unk_id], dtype=torch.long)
    for b in batches:
        ids = b["input_ids"]
        mask = b.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        real += int((mask & ~torch.isin(ids, special.to(ids.device))).sum())
        if unk_id is not None:
            unknown += int(((ids == unk_id) & mask).sum())
        for row, m in zip(ids.tolist(), mask.tolist()):
            key = tuple(t for t, keep in zip(row, m) if keep)
            n += 1
            copies += key in seen
            seen.add(key)
    return (unknown / real if real else 0.0), copies, n


def _check_tokens(batches: list[dict[str, torch.Tensor]], tok: Any, what: str) -> None:
    """One warning each when the texts are mostly unknown tokens or many are copies after tokenization:
    both make points coincide, which the ID estimators leave out (or cannot measure at all)."""
    share, copies, n = token_diagnostics(batches, getattr(tok, "unk_token_id", None), getattr(tok, "all_special_ids", ()) or ())
    if share > _UNKNOWN_SHARE:
        warnings.warn(
            f"{what}: {100 * share:.0f} % of the tokens are the unknown token {getattr(tok, 'unk_token', '')!r}; "
            "is this the model's own tokenizer, and a language / script it knows?",
            stacklevel=3,
        )
    if copies > _DUPLICATE_SHARE * n:
        warnings.warn(
            f"{what}: {copies} of {n} texts are token-for-token copies of another (after truncation to 128 tokens); "
            "copies are left out of the ID estimates: deduplicate the data or use more varied texts.",
            stacklevel=3,
        )


def load_rgb(path: str | Path) -> Any:
    """An image file as an 8-bit RGB ``PIL.Image``. 16-bit and 32-bit integer images (a 16-bit PNG
    opens as mode ``I;16``) are scaled to 0-255 by their type's range (PIL's own ``convert("RGB")``
    clips them: a 16-bit image becomes white), float images (``F``) by [0, 1] or their maximum.

    Raises:
        OSError: not a readable image (``PIL.UnidentifiedImageError``, a truncated file).
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I") or im.mode == "F":
            arr = np.asarray(im, dtype=np.float64)
            top = float(arr.max()) if arr.size else 0.0
            if im.mode == "F":
                scale = 1.0 if top <= 1.0 else top
            else:
                scale = 65535.0 if top <= 65535 else top  # I;16 (or I holding 16-bit values); wider: its maximum
            return Image.fromarray(np.clip(arr / max(scale, 1e-300) * 255.0, 0, 255).round().astype(np.uint8)).convert("RGB")
        return im.convert("RGB")


def _image_folder(path: Path, loaded: Any, max_samples: int, batch_size: int, seed: int) -> ProbeData:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{path} has no class subfolders: put the images in {path}/<class>/<image>.")
    files = [(f, ci) for ci, c in enumerate(classes) for f in sorted((path / c).iterdir()) if f.suffix.lower() in IMAGE_EXT]
    if not files:
        raise ValueError(f"{path} has class folders but no images ({', '.join(sorted(IMAGE_EXT))}).")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=g).tolist()
    images, kept, bad = [], [], []
    for i in order:  # in the seeded order until max_samples readable ones: an unreadable file is skipped, not fatal
        if len(kept) == max_samples:
            break
        f, ci = files[i]
        try:
            images.append(load_rgb(f))
            kept.append((f, ci))
        except (OSError, ValueError) as err:  # PIL: UnidentifiedImageError (an OSError), truncated files
            bad.append(f"{f.relative_to(path)} ({str(err).splitlines()[0][:80]})")
    if bad:
        warnings.warn(
            f"{path}: {len(bad)} image file(s) could not be read and were left out: {'; '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}.",
            stacklevel=3,
        )
    if not kept:
        raise ValueError(f"{path}: none of its {len(files)} image files could be read ({bad[0]}).")
    files = kept
    labels = torch.tensor([c for _, c in files])
    labels, classes_kept = _usable_labels(labels, classes, str(path))
    if loaded.image_processor is not None:
        px = loaded.image_processor(images, return_tensors="pt")["pixel_values"]
    else:
        import numpy as np

        size = getattr(getattr(loaded.module, "config", None), "image_size", 224)
        px = torch.from_numpy(np.stack([np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)
    return ProbeData(_batches({"pixel_values": px}, batch_size), labels, len(files), f"{path.name} ({len(files)} images, {len(classes)} classes)", classes_kept)


def _datamodule(path: Path, max_samples: int) -> ProbeData:
    import yaml

    try:
        cfg = yaml.safe_load(_read_utf8(path))
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise ValueError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', None) or err}).") from None
    data = cfg.get("data", cfg) if isinstance(cfg, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("class_path"), str):
        raise ValueError(f"{path} needs `data: {{class_path: ..., init_args: ...}}` (a LightningDataModule).")
    cls = import_class(data["class_path"], f"{path}: class_path {data['class_path']!r}")
    name = data["class_path"].rpartition(".")[2]
    try:
        dm = cls(**(data.get("init_args") or {}))
    except TypeError as err:
        raise ValueError(f"{path}: init_args do not fit {name}: {err}.") from None
    dm.setup("validate")
    got = probe_data_of(dm.val_dataloader(), max_samples=max_samples)  # in order, labels as the monitors read them
    return ProbeData(got.batches, got.labels, got.n, f"{data['class_path']} validation set ({got.n} samples)")
