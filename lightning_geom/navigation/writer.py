"""Write explorer trajectories: JSON per batch, a decoded-token table (text), image grids (PNG)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

__all__ = ["TrajectoryWriter", "write_trajectories"]


def write_trajectories(trajs: list[dict[str, Any]], out: str | Path, *, prefix: str = "walk", image_shape: tuple | None = None) -> list[Path]:
    """Files for a list of trajectories: ``<prefix>_NNN.json`` each, ``tokens.csv`` (token decoders),
    ``inputs.csv`` (walks in a model's input space: one row per record, one column per input coordinate),
    ``<prefix>_NNN.png`` grids (image decoders, 2-d / (C, H, W) inputs, or token ids shown as images
    when ``image_shape``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows, inputs = [], []
    for i, traj in enumerate(trajs):
        path = out / f"{prefix}_{i:03d}.json"
        path.write_text(json.dumps(traj))
        written.append(path)
        for rec in traj["steps"]:
            dec = rec.get("decoded")
            name = {"pred_name": rec["pred_name"]} if "pred_name" in rec else {}
            head = {"sample": i, "step": rec["step"], "pred": rec["pred"], **name, "distance": rec["distance"]}
            if traj.get("decoded_as") == "input" and dec is not None:
                inputs.append({**head, **{f"x{j}": v for j, v in enumerate(_flat(dec))}})
            elif isinstance(dec, list) and dec and not isinstance(dec[0], list):
                rows.append({**head, "tokens": " ".join(map(str, dec))})
        grid = _grid(traj, image_shape)
        if grid is not None:
            png = out / f"{prefix}_{i:03d}.png"
            grid.savefig(png)
            written.append(png)
    for table_rows, file in ((rows, "tokens.csv"), (inputs, "inputs.csv")):
        if table_rows:
            table = out / file
            with table.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in table_rows for k in r)), restval="")
                w.writeheader()
                w.writerows(table_rows)
            written.append(table)
    return written


def _flat(v: Any) -> list[Any]:
    """A nested list's numbers in row-major order."""
    return [x for item in v for x in _flat(item)] if isinstance(v, list) else [v]


def _grid(traj: dict[str, Any], image_shape: tuple | None):
    """A row of images along the walk, titled with step and prediction; None when nothing is an image."""
    import numpy as np

    frames = []
    for rec in traj["steps"]:
        dec = rec.get("decoded")
        if dec is None:
            continue
        try:
            arr = np.asarray(dec, dtype=np.float64)
        except (TypeError, ValueError):  # token strings: no picture
            return None
        if arr.ndim == 3:  # (C, H, W)
            img = arr.transpose(1, 2, 0) if arr.shape[0] == 3 else arr[0]
        elif arr.ndim == 2 and traj.get("decoded_as") == "input" and min(arr.shape) > 1:  # an (H, W) input
            img = arr
        elif image_shape is not None and arr.ndim == 1:
            flat = np.concatenate([arr[1:], [np.nan]]) if arr.size == int(np.prod(image_shape)) else arr
            img = flat[: int(np.prod(image_shape))].reshape(image_shape)
        else:
            continue
        frames.append((rec["step"], rec["pred"], img))
    if not frames:
        return None
    from ..report.figures import subplots

    fig, axes = subplots(1, len(frames), figsize=(1.6 * len(frames), 2.0), dpi=100, squeeze=False)
    for ax, (step, pred, img) in zip(axes[0], frames):
        if img.ndim == 3:
            img = (img - np.nanmin(img)) / max(np.nanmax(img) - np.nanmin(img), 1e-12)
        ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None)
        ax.set_title(f"t={step}\npred {pred}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{traj['mode']} walk (start class {traj['start_pred']})", fontsize=9)
    fig.tight_layout()
    return fig


class TrajectoryWriter(BasePredictionWriter):
    """Lightning prediction writer for :class:`EquivalenceClassExplorer` outputs."""

    def __init__(self, out: str | Path, *, image_shape: tuple | None = None) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.image_shape = image_shape

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0) -> None:
        write_trajectories(prediction, self.out, prefix=f"batch{batch_idx:03d}_walk", image_shape=self.image_shape)
