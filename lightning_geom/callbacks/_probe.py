"""The Lightning shell of the monitors: Lightning's hooks, loggers and checkpoint state, translated
into calls of the framework-free core (:mod:`lightning_geom.monitoring`).

``GeometryMonitor`` = ``GeometryCore`` + this shell; ``PullbackMonitor`` = ``PullbackCore`` + it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from ..monitoring.core import Run, warn_layer_errors
from ..monitoring.probe import all_gather_objects, batch_len, dist_info, gather_parts, probe_batches
from ..report.loggers import add_layout, default_output_dir, log_figures, log_scalars, log_table

__all__ = ["ProbeMonitor", "LightningSink", "probe_batches", "batch_len", "all_gather_objects", "gather_parts", "warn_layer_errors"]

_dist = dist_info  # the name this module exported before the core split


class LightningSink:
    """Scalars, figures, tables, settings and the custom-scalar layout to every logger of a Lightning Trainer."""

    def __init__(self, trainer: Trainer) -> None:
        self.loggers = list(trainer.loggers)

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        log_scalars(self.loggers, metrics, step=step)

    def figures(self, figures: dict[str, Any], step: int, prefix: str) -> None:
        log_figures(self.loggers, figures, step, prefix=prefix)

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


class ProbeMonitor(Callback):
    """Lightning hooks for a monitor core (mixed in first: ``class GeometryMonitor(GeometryCore, ProbeMonitor)``).

    Measures at the start of fit, on the step schedule after each optimizer step, at the end of every
    n-th epoch and at the end of fit; never during the sanity check or outside ``fit``. The core's
    state (history, probe fingerprint, locked scale) is this callback's checkpoint state.
    """

    def _make_run(self, trainer: Trainer, pl_module: LightningModule) -> Run:
        """This moment of training, as the core sees it."""
        sources = [getattr(trainer, "datamodule", None), pl_module]

        def fallback() -> Any:
            for source in sources:
                if source is None:
                    continue
                try:
                    return source.val_dataloader()
                except Exception:  # noqa: BLE001 - not implemented: try the next source
                    continue
            return None

        return Run(
            step=int(trainer.global_step),
            epoch=int(trainer.current_epoch),
            module=pl_module,
            device=pl_module.device,
            rank_zero=bool(trainer.is_global_zero),
            out_dir=Path(default_output_dir(trainer, self.output_dir, sub="geometry")),
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
            self.checkpoint(self._make_run(trainer, pl_module))

    # ----------------------------------------------------------------- Lightning hooks (thin)
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_start:
            self._maybe_measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
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
