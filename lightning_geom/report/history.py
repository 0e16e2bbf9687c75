"""The monitor's history as files: JSON (everything) and CSV (one row per step and layer)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..capture import layer_name

__all__ = ["metric_key", "is_number", "flat_rows", "scalars", "save_history", "write_atomic"]

ROW_FIELDS = ("step", "epoch", "layer", "id", "id_err", "id_n1", "twonn", "twonn_err", "label_overlap", "overlap_next", "error")
PHASE_FIELDS = ("peak1_layer", "min_layer", "peak2_layer", "depth", "rebound", "is_three_phase")


def metric_key(kind: str, layer: int | None = None, *, prefix: str = "geometry") -> str:
    """The one place metric names are built: ``geometry/id/layer_03``, ``geometry/phase/depth``."""
    return f"{prefix}/{kind}" if layer is None else f"{prefix}/{kind}/{layer_name(layer)}"


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what goes into scalar logs and tables."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def scalars(record: dict[str, Any], *, prefix: str = "geometry") -> dict[str, float]:
    """The scalar metrics of one checkpoint record, keyed by :func:`metric_key`."""
    out: dict[str, float] = {}
    for layer in record["layers"]:
        for kind in ("id", "twonn", "overlap_next", "label_overlap"):
            v = layer.get(kind)
            if is_number(v):
                out[metric_key(kind, layer["index"], prefix=prefix)] = float(v)
    for layer in (record.get("tokens") or {}).get("layers", []):  # per-prompt token geometry
        for kind in ("token_id", "token_id_std", "token_twonn", "token_overlap_next"):
            if is_number(layer.get(kind)):
                out[metric_key(kind, layer["index"], prefix=prefix)] = float(layer[kind])
    for layer in (record.get("token_cloud") or {}).get("layers", []):  # the pooled token cloud
        for kind in ("id", "twonn", "overlap_next"):
            if is_number(layer.get(kind)):
                out[metric_key(f"token_cloud_{kind}", layer["index"], prefix=prefix)] = float(layer[kind])
    if is_number(record.get("id_n1")):  # the GRIDE scale of geometry/id/*
        out[metric_key("id_n1", prefix=prefix)] = float(record["id_n1"])
    phase = record.get("phase")
    if phase:
        for name in PHASE_FIELDS:
            v = phase.get(name)
            if isinstance(v, bool) or is_number(v):  # None: the landmark does not exist (no second peak)
                out[metric_key(f"phase/{name}", prefix=prefix)] = float(v)
        if "n_change_points" in phase:  # robust change points: how many, where, how big
            out[metric_key("phase/n_change_points", prefix=prefix)] = float(phase["n_change_points"])
            for name in ("high_id_onset", "high_id_height"):
                if is_number(phase.get(name)):
                    out[metric_key(f"phase/{name}", prefix=prefix)] = float(phase[name])
            for i, (cp, jump) in enumerate(zip(phase["change_points"], phase["jumps"]), start=1):
                out[metric_key(f"phase/change_point_{i}", prefix=prefix)] = float(cp)
                if is_number(jump):
                    out[metric_key(f"phase/jump_{i}", prefix=prefix)] = float(jump)
    for name, v in (record.get("time") or {}).items():  # what the checkpoint cost, per phase
        if is_number(v):
            out[metric_key(f"time/{name}", prefix=prefix)] = float(v)
    return out


def row_fields(history: Sequence[dict[str, Any]]) -> list[str]:
    """CSV columns: step, epoch, layer, then every scalar a layer record holds somewhere (the geometry
    ones in their usual order, then the rest, e.g. the pullback statistics, sorted); lists and dicts
    stay in the JSON, and a column empty in every row (``error`` in a clean run) is left out."""
    seen: set[str] = set()
    for rec in history:
        for layer in rec.get("layers", []):  # scalars that hold a value somewhere: no all-empty column
            seen |= {k for k, v in layer.items() if k != "index" and v is not None and isinstance(v, (int, float, str, bool))}
    head = [f for f in ROW_FIELDS if f in ("step", "epoch", "layer") or f in seen]
    return head + sorted(seen - set(head))


def flat_rows(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (step, layer) with the per-layer scalars (``layer`` is the records' ``index``)."""
    fields = row_fields(history)
    rows = []
    for rec in history:
        for layer in rec["layers"]:
            row = {f: layer.get(f) for f in fields}
            row.update(step=rec["step"], epoch=rec["epoch"], layer=layer["index"])
            rows.append(row)
    return rows


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader (or a crash, a full disk) never sees a half-written file: either the old complete file
    or the new complete one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_history(history: Sequence[dict[str, Any]], out_dir: str | Path, *, name: str = "geometry_history") -> list[Path]:
    """Write ``<name>.json`` (everything) and ``<name>.csv`` (flat rows) under ``out_dir``, atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, cs = out / f"{name}.json", out / f"{name}.csv"
    write_atomic(js, json.dumps(list(history), indent=1))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=row_fields(history))
    w.writeheader()
    w.writerows(flat_rows(history))
    write_atomic(cs, buf.getvalue())
    return [js, cs]
