"""Probe data for `lightning-geom probe`: text files, CSV/JSONL, image folders, a datamodule, the digits.

Every loader returns :class:`ProbeData`: a list of model-ready batches and the labels (or None).
Errors are one line that says what to fix.
"""

from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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


def _codes(raw: list[Any]) -> tuple[torch.Tensor, list[str]]:
    names = sorted({str(v) for v in raw})
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[str(v)] for v in raw]), names


def _texts(path: Path, text_column: str, label_column: str | None) -> tuple[list[str], list[Any] | None]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:  # one sample per line
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path} is empty: put one text per line.")
        return lines, None
    if not rows:
        raise ValueError(f"{path} has no rows.")
    cols = list(rows[0])
    if text_column not in cols:
        raise ValueError(f"{path} has no column {text_column!r} (columns: {', '.join(cols)}); pass --text-column.")
    labels = None
    if label_column is not None and label_column in cols:
        labels = [r[label_column] for r in rows]
    elif label_column not in (None, "label"):
        raise ValueError(f"{path} has no column {label_column!r} (columns: {', '.join(cols)}); pass --label-column.")
    return [str(r[text_column]) for r in rows], labels


def load_probe_data(
    spec: str,
    loaded: Any,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    max_samples: int = 2000,
    batch_size: int = 32,
    seed: int = 0,
) -> ProbeData:
    """Read ``spec`` (``digits``, a file, an image folder, or a datamodule YAML) for the loaded model."""
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
    if path.is_dir():
        return _image_folder(path, loaded, max_samples, batch_size, seed)
    if loaded.tokenizer is None:
        raise ValueError(f"{loaded.source} has no tokenizer, so it cannot read the text file {path}.")
    texts, raw = _texts(path, text_column, label_column)
    texts = texts[:max_samples]
    labels, names = (None, None)
    if raw is not None:
        labels, names = _codes(raw[:max_samples])
    tok = loaded.tokenizer
    batches = []
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return ProbeData(batches, labels, len(texts), f"{path.name} ({len(texts)} texts)", names)


def _image_folder(path: Path, loaded: Any, max_samples: int, batch_size: int, seed: int) -> ProbeData:
    from PIL import Image

    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{path} has no class subfolders: put the images in {path}/<class>/<image>.")
    files = [(f, ci) for ci, c in enumerate(classes) for f in sorted((path / c).iterdir()) if f.suffix.lower() in IMAGE_EXT]
    if not files:
        raise ValueError(f"{path} has class folders but no images ({', '.join(sorted(IMAGE_EXT))}).")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(files), generator=g)[:max_samples].tolist()
    files = [files[i] for i in order]
    images = [Image.open(f).convert("RGB") for f, _ in files]
    labels = torch.tensor([c for _, c in files])
    if loaded.image_processor is not None:
        px = loaded.image_processor(images, return_tensors="pt")["pixel_values"]
    else:
        import numpy as np

        size = getattr(getattr(loaded.module, "config", None), "image_size", 224)
        px = torch.from_numpy(np.stack([np.asarray(im.resize((size, size)), dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)
    return ProbeData(_batches({"pixel_values": px}, batch_size), labels, len(labels), f"{path.name} ({len(labels)} images, {len(classes)} classes)", classes)


def _datamodule(path: Path, max_samples: int) -> ProbeData:
    import yaml

    cfg = yaml.safe_load(path.read_text())
    data = cfg.get("data", cfg)
    if "class_path" not in data:
        raise ValueError(f"{path} needs `data: {{class_path: ..., init_args: ...}}` (a LightningDataModule).")
    mod, _, name = data["class_path"].rpartition(".")
    dm = getattr(importlib.import_module(mod), name)(**(data.get("init_args") or {}))
    dm.setup("validate")
    batches, labels, n = [], [], 0
    for b in dm.val_dataloader():
        batches.append(b)
        lab = b.get("labels") if isinstance(b, dict) else (b[1] if isinstance(b, (tuple, list)) and len(b) > 1 else None)
        if lab is not None:
            labels.append(lab)
        n += len(lab) if lab is not None else len(next(iter(b.values())) if isinstance(b, dict) else b[0])
        if n >= max_samples:
            break
    lab_t = torch.cat(labels) if labels else None
    return ProbeData(batches, lab_t, n, f"{data['class_path']} validation set ({n} samples)")
