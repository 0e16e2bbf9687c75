"""Send scalars, figures and tables to whatever loggers the Trainer has (W&B, TensorBoard, CSV, ...).

Unknown logger types get the scalars (``log_metrics``) and nothing else. Call on rank 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["log_scalars", "log_figures", "log_table", "log_line_charts", "layer_series", "add_layout", "default_output_dir"]

log = logging.getLogger(__name__)


def _kind(logger: Any) -> str:
    name = type(logger).__name__
    if name == "WandbLogger":
        return "wandb"
    if name == "TensorBoardLogger":
        return "tensorboard"
    if name == "CSVLogger":
        return "csv"
    return "other"


def log_scalars(loggers: Sequence[Any], metrics: dict[str, float], step: int) -> None:
    """``log_metrics`` on every logger (CSVLogger writes them to its metrics.csv)."""
    if not metrics:
        return
    for lg in loggers:  # one failing logger must not keep the others from their metrics
        try:
            lg.log_metrics(metrics, step=step)
        except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not stop training
            log.warning("Could not log metrics to %s at step %d: %s: %s", type(lg).__name__, step, type(err).__name__, err)


def tensorboard_images(writer: Any, images: dict[str, Any], step: int, prefix: str) -> None:
    """Rendered figures (``{name: (H, W, 3) uint8 array}``) to a TensorBoard ``SummaryWriter``."""
    for name, image in images.items():
        writer.add_image(f"{prefix}/figures/{name}", image, global_step=step, dataformats="HWC")


def wandb_images(images: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Rendered figures as ``{"<prefix>/figures/<name>": wandb.Image}`` for a ``log`` call."""
    import wandb

    return {f"{prefix}/figures/{n}": wandb.Image(im) for n, im in images.items()}


def log_figures(loggers: Sequence[Any], images: dict[str, Any], step: int, *, prefix: str = "geometry") -> None:
    """Rendered figures (``{name: (H, W, 3) uint8 array}``) to W&B (``wandb.Image``) and TensorBoard
    (``add_image``); CSV has no figures."""
    for lg in loggers:
        kind = _kind(lg)
        try:
            if kind == "tensorboard":
                tensorboard_images(lg.experiment, images, step, prefix)
            elif kind == "wandb":
                lg.experiment.log(wandb_images(images, prefix) | {"trainer/global_step": step})
        except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not stop training
            log.warning("Could not send figures to %s: %s", type(lg).__name__, err)


def log_table(loggers: Sequence[Any], rows: list[dict[str, Any]], step: int, *, key: str = "geometry/table") -> None:
    """The flat (step, layer, id, overlaps) rows as a ``wandb.Table`` for custom charts (W&B only)."""
    if not rows:
        return
    columns = list(rows[0])
    for lg in loggers:
        if _kind(lg) == "wandb":
            try:
                lg.log_table(key=key, columns=columns, data=[[r[c] for c in columns] for r in rows], step=step)
            except Exception as err:  # noqa: BLE001
                log.warning("Could not send the geometry table to W&B: %s", err)


def layer_series(history: Sequence[dict[str, Any]], kind: str) -> tuple[list[int], list[list[float]], list[str]]:
    """(steps, one series per layer, layer names) of ``kind`` over the history: a multi-line chart's data."""
    from ..capture import layer_name

    steps = [int(r["step"]) for r in history]
    n_layers = max((len(r["layers"]) for r in history), default=0)
    ys = [[float("nan")] * len(history) for _ in range(n_layers)]
    for j, rec in enumerate(history):
        for layer in rec["layers"]:
            v = layer.get(kind)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                ys[layer["index"]][j] = float(v)
    return steps, ys, [layer_name(i) for i in range(n_layers)]


def profile_series(history: Sequence[dict[str, Any]], kind: str = "id", *, max_lines: int = 10) -> tuple[list[int], list[list[float]], list[str]]:
    """(layer indices, one ``kind`` profile per checkpoint, "step N" names) for the profile chart:
    the value against depth, one line per checkpoint (at most ``max_lines``, evenly spaced, the
    first and the last always in)."""
    if not history:
        return [], [], []
    n = len(history)
    picks = sorted({round(i * (n - 1) / max(1, max_lines - 1)) for i in range(min(n, max_lines))})
    n_layers = max(len(r["layers"]) for r in history)
    ys, names = [], []
    for j in picks:
        row = [float("nan")] * n_layers
        for layer in history[j]["layers"]:
            v = layer.get(kind)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[layer["index"]] = float(v)
        ys.append(row)
        names.append(f"step {int(history[j]['step'])}")
    return list(range(n_layers)), ys, names


def wandb_line_charts(run: Any, history: Sequence[dict[str, Any]], kinds: Sequence[str], *, prefix: str) -> None:
    """One W&B multi-line chart per metric kind, every layer a line against step (``wandb.plot.line_series``),
    and for the ID the profile chart ``{prefix}/charts/profile``: ID against layer, one line per checkpoint."""
    import wandb

    charts = {}
    for kind in kinds:
        steps, ys, names = layer_series(history, kind)
        if steps and any(v == v for row in ys for v in row):  # something other than NaN
            charts[f"{prefix}/charts/{kind}"] = wandb.plot.line_series(xs=steps, ys=ys, keys=names, title=f"{prefix}/{kind}", xname="step")
    if "id" in kinds:
        layers, ys, names = profile_series(history, "id")
        if layers and any(v == v for row in ys for v in row):
            charts[f"{prefix}/charts/profile"] = wandb.plot.line_series(
                xs=layers, ys=ys, keys=names, title=f"{prefix}: ID against layer, one line per checkpoint", xname="layer"
            )
    if charts:
        run.log(charts, commit=False)


def log_line_charts(loggers: Sequence[Any], history: Sequence[dict[str, Any]], kinds: Sequence[str], *, prefix: str = "geometry") -> None:
    """The W&B multi-line charts for every W&B logger (the others have their own layouts)."""
    for lg in loggers:
        if _kind(lg) == "wandb":
            try:
                wandb_line_charts(lg.experiment, history, kinds, prefix=prefix)
            except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not stop training
                log.warning("Could not send the multi-line charts to W&B: %s", err)


_LAYOUTS: dict[int, dict[str, dict]] = {}  # per TensorBoard writer: every monitor's categories so far


def add_layout(loggers: Sequence[Any], kinds: Sequence[str], *, prefix: str = "geometry") -> None:
    """TensorBoard custom-scalar layout: one multi-line chart per metric kind with every layer's curve.

    TensorBoard shows one layout per run (the last written), so each call writes the union of the
    categories of every monitor on that writer: GeometryMonitor's and PullbackMonitor's both show.
    """
    for lg in loggers:
        if _kind(lg) == "tensorboard":
            try:
                merge_layout(lg.experiment, kinds, prefix=prefix)
            except Exception as err:  # noqa: BLE001
                log.warning("Could not add the TensorBoard custom-scalar layout: %s", err)


def merge_layout(writer: Any, kinds: Sequence[str], *, prefix: str, tag_prefix: str = "") -> None:
    """Add ``prefix``'s charts (every layer of each kind as one multi-line chart) to ``writer``'s
    custom-scalar layout, written as the union with every other monitor's categories on that writer.
    ``tag_prefix`` is a regex for what a framework prepends to the keys (transformers: ``(train/)?``)."""
    layout = _LAYOUTS.setdefault(id(writer), {})
    layout[prefix] = {k: ["Multiline", [rf"{tag_prefix}{prefix}/{k}/layer_\d+"]] for k in kinds}
    writer.add_custom_scalars(dict(layout))


def default_output_dir(trainer: Any, output_dir: str | Path | None, sub: str = "geometry") -> Path:
    """``output_dir``, else ``<first logger's log_dir>/<sub>``, else ``<default_root_dir>/<sub>``."""
    if output_dir is not None:
        return Path(output_dir)
    for lg in getattr(trainer, "loggers", []) or []:
        d = getattr(lg, "log_dir", None)
        if d:
            return Path(d) / sub
    return Path(trainer.default_root_dir) / sub
