"""The Lightning shell of the monitors: Lightning's hooks, loggers and checkpoint state, translated
into calls of the framework-free core (:mod:`lightning_geom.monitoring`).

``GeometryMonitor`` = ``GeometryCore`` + this shell; ``PullbackMonitor`` = ``PullbackCore`` + it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from ..monitoring.core import Run
from ..monitoring.probe import all_gather_objects, batch_len, dist_info, gather_parts, probe_batches
from ..report.loggers import (
    add_layout,
    default_output_dir,
    log_figures,
    log_line_charts,
    log_scalars,
    log_table,
)

__all__ = ["ProbeMonitor", "LightningSink", "probe_batches", "batch_len", "all_gather_objects", "gather_parts"]

_dist = dist_info  # the name this module exported before the core split


class LightningSink:
    """Scalars, figures, tables, settings and the custom-scalar layout to every logger of a Lightning Trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self.loggers = list(trainer.loggers)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        log_scalars(self.loggers, metrics, step=step)

    def figures(self, images: dict[str, Any], step: int, prefix: str) -> None:
        log_figures(self.loggers, images, step, prefix=prefix)

    def hparams(self, params: dict[str, Any]) -> None:
        for lg in self.loggers:
            try:
                lg.log_hyperparams(params)
            except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not stop training
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(f"could not record the monitor's settings in {type(lg).__name__}: {err}")

    def table(self, rows: list[dict[str, Any]], step: int, key: str) -> None:
        log_table(self.loggers, rows, step, key=key)

    def layout(self, kinds: list[str], prefix: str) -> None:
        add_layout(self.loggers, kinds, prefix=prefix)

    def charts(self, history: list[dict[str, Any]], kinds: list[str], prefix: str) -> None:
        log_line_charts(self.loggers, history, kinds, prefix=prefix)


def _csv_steps(path: Path, prefix: str) -> set[int]:
    """Steps of a Lightning metrics.csv that hold a value in some column starting with ``prefix``."""
    import csv

    if not path.is_file():
        return set()
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {int(float(r["step"])) for r in rows if r.get("step") and any(k.startswith(prefix) and v not in ("", None) for k, v in r.items() if k)}


def validation_loader(trainer: Trainer, pl_module: LightningModule) -> Any:
    """The fit's (first) validation DataLoader as it was given: ``trainer.fit(model, train, val)``, a
    datamodule's or the module's ``val_dataloader``; None when there is none.

    The loader as given, not ``trainer.val_dataloaders``: under DDP Lightning re-wraps that one with a
    distributed sampler (each rank would read another probe), and it exists only once validation ran.
    """
    def first(loaders: Any) -> Any:
        if isinstance(loaders, (list, tuple)):
            return loaders[0] if loaders else None
        if isinstance(loaders, dict):
            return next(iter(loaders.values()), None)
        return loaders

    source = getattr(getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None), "_data_source", None)
    try:  # Lightning's _DataLoaderSource resolves fit()'s argument, the datamodule's and the module's hook (private: guarded)
        if source is not None and source.is_defined():
            return first(source.dataloader())
    except Exception:  # noqa: BLE001 - a private API that moved, or a val_dataloader() that fails: try the hooks
        pass
    for owner in (getattr(trainer, "datamodule", None), pl_module):
        if owner is None:
            continue
        try:
            loaders = owner.val_dataloader()
        except Exception:  # noqa: BLE001 - not implemented: try the next source
            continue
        if loaders is not None:
            return first(loaders)
    return first(trainer.val_dataloaders) if trainer.world_size == 1 else None


class ProbeMonitor(Callback):
    """Lightning hooks for a monitor core (mixed in first: ``class GeometryMonitor(GeometryCore, ProbeMonitor)``).

    Measures at the start of fit, on the step schedule after each optimizer step, at the end of every
    n-th epoch and at the end of fit; never during the sanity check or outside ``fit``. The core's
    state (history, probe fingerprint, locked scale) is this callback's checkpoint state.
    """

    def _make_run(self, trainer: Trainer, pl_module: LightningModule) -> Run:
        """This moment of training, as the core sees it."""
        def fallback() -> Any:
            return validation_loader(trainer, pl_module)

        return Run(
            step=int(trainer.global_step),
            epoch=int(trainer.current_epoch),
            module=pl_module,
            device=pl_module.device,
            rank_zero=bool(trainer.is_global_zero),
            out_dir=Path(default_output_dir(trainer, self.output_dir, sub=self.name or "geometry")),
            sink=LightningSink(trainer),
            autocast=getattr(getattr(trainer, "precision_plugin", None), "forward_context", None),
            fallback_probe=fallback,
        )

    @staticmethod
    def _skip(trainer: Trainer) -> bool:
        """The one predicate for 'not now': sanity check, or not fitting."""
        return bool(trainer.sanity_checking) or trainer.state.fn != "fit"

    def _maybe_measure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._skip(trainer):
            run = self._make_run(trainer, pl_module)
            self._replay(trainer, run)
            self.checkpoint(run)

    def _replay(self, trainer: Trainer, run: Run) -> None:
        """After a restore: the restored records to every CSV logger whose file lacks them.

        A resumed run usually logs into a new CSV version folder, which would hold only the new
        steps; TensorBoard and W&B keep their earlier events, so they are not sent again (no duplicates).
        """
        if not getattr(self, "_replay_pending", False) or not run.rank_zero:
            return
        self._replay_pending = False
        for lg in trainer.loggers:
            if type(lg).__name__ != "CSVLogger":
                continue
            have = _csv_steps(Path(lg.log_dir) / "metrics.csv", f"{self._prefix}/")
            missing = [r for r in self.history if r["step"] not in have]
            if missing:
                sink = LightningSink(trainer)
                sink.loggers = [lg]
                for rec in missing:
                    self._publish(Run(**{**run.__dict__, "sink": sink}), rec)

    # ----------------------------------------------------------------- Lightning hooks (thin)
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_start:
            self._maybe_measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.collect(wait=False)  # background work (a record, figures): logged / shown as soon as it is done
        if (self.every_n_steps is not None or self.log_spaced) and self.is_due(trainer.global_step):
            self._maybe_measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_due_epoch(trainer.current_epoch):
            self._maybe_measure(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_end:
            self._maybe_measure(trainer, pl_module)
        self.finish(self._make_run(trainer, pl_module))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.crashed(self._make_run(trainer, pl_module))
