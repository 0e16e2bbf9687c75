"""The monitors for Hugging Face ``transformers.Trainer`` users: ``GeometryCallback`` and ``PullbackCallback``.

One line::

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[GeometryCallback(probe=val.select(range(512)))])

The same framework-free core as the Lightning monitors (:mod:`lightning_geom.monitoring`), the same
schedule (start of training, steps 1, 2, 4, ..., every ``every_n_steps``, end), the same metric keys
(``geometry/id/layer_NN``, ...). Metrics go through ``Trainer.log``: every ``report_to``
integration (W&B, TensorBoard, ...) and ``state.log_history`` receive them (the integrations
show them as ``train/geometry/...``, transformers' prefix for training logs). Figures go to the
TensorBoard writer and the W&B run when those integrations are active, and always as PNG next to
the history (JSON / CSV) under ``<args.output_dir>/geometry``. The history is saved with the
Trainer's checkpoints (transformers' stateful callbacks) so ``train(resume_from_checkpoint=...)``
continues it. Under ``torchrun`` / accelerate each rank captures its shard of the probe and the
core gathers; rank 0 logs. ``on_error="warn"`` never stops training.
"""

from __future__ import annotations

import inspect
import json
import uuid
import weakref
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .monitoring.core import Run
from .monitoring.geometry import GeometryCore
from .monitoring.pullback import PullbackCore
from .report.loggers import merge_layout, tensorboard_images, wandb_images

__all__ = ["GeometryCallback", "PullbackCallback", "HFSink"]

_ORIGINALS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def _find_trainer() -> Any | None:
    """The ``transformers.Trainer`` whose hook is running (callbacks are not given it): up the call stack."""
    frame = inspect.currentframe()
    while frame is not None:
        obj = frame.f_locals.get("self")
        if obj is not None and hasattr(obj, "callback_handler") and hasattr(obj, "log") and hasattr(obj, "state"):
            return obj
        frame = frame.f_back
    return None


class HFSink:
    """Results into a ``transformers.Trainer``: scalars through ``Trainer.log``; figures, settings and
    the custom-scalar layout to its TensorBoard writer and the active W&B run."""

    def __init__(self, trainer: Any, state: Any) -> None:
        self.trainer = trainer
        self.state = state
        self.logging = False  # our own Trainer.log call is running (its on_log must not recurse)

    def _tb(self) -> Any | None:
        for cb in getattr(getattr(self.trainer, "callback_handler", None), "callbacks", []):
            writer = getattr(cb, "tb_writer", None)
            if writer is not None:
                return writer
        return None

    @staticmethod
    def _wandb() -> Any | None:
        import sys

        wandb = sys.modules.get("wandb")
        return wandb if wandb is not None and getattr(wandb, "run", None) is not None else None

    def scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.trainer is None:  # no Trainer found: at least the history of the run
            self.state.log_history.append({**metrics, "step": step})
            return
        self.logging = True
        live = self.state.global_step
        try:  # Trainer.log stamps the live step; a record analysed in the background belongs to its own
            self.state.global_step = step
            self.trainer.log(dict(metrics))
        finally:
            self.state.global_step = live
            self.logging = False

    def figures(self, images: dict[str, Any], step: int, prefix: str) -> None:
        tb = self._tb()
        if tb is not None:
            tensorboard_images(tb, images, step, prefix)
        wandb = self._wandb()
        if wandb is not None:
            wandb.log(wandb_images(images, prefix), commit=False)

    def hparams(self, params: dict[str, Any]) -> None:
        tb = self._tb()
        if tb is not None:
            tb.add_text("monitor_settings", json.dumps(params, indent=1))
        wandb = self._wandb()
        if wandb is not None:
            wandb.config.update(params, allow_val_change=True)

    def table(self, rows: list[dict[str, Any]], step: int, key: str) -> None:
        wandb = self._wandb()
        if wandb is not None and rows:
            cols = list(rows[0])
            wandb.log({key: wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in rows])}, commit=False)

    def charts(self, history: list[dict[str, Any]], kinds: list[str], prefix: str) -> None:
        from .report.loggers import wandb_line_charts

        wandb = self._wandb()
        if wandb is not None:
            wandb_line_charts(wandb, history, kinds, prefix=prefix)

    def layout(self, kinds: list[str], prefix: str) -> None:
        tb = self._tb()
        if tb is not None:  # transformers' integrations log "<key>" as "train/<key>"
            merge_layout(tb, kinds, prefix=prefix, tag_prefix="(train/)?")


class _HFShell(TrainerCallback, ExportableState):
    """Trainer hooks for a monitor core (mixed in second: ``class GeometryCallback(GeometryCore, _HFShell)``)."""

    _init_args: dict[str, Any]

    def _remember(self, args: dict[str, Any]) -> None:
        """Keep the JSON-able constructor arguments: transformers saves them with each checkpoint."""
        self._instance = uuid.uuid4().hex
        _ORIGINALS[self._instance] = self
        self._init_args = {k: v for k, v in args.items() if _json_ok(v)}  # functions stay with the live instance
        self._sink: HFSink | None = None

    def _rejoin(self, instance: str | None, saved: dict[str, Any]) -> bool:
        """On resume transformers rebuilds the callback from its saved arguments; a probe (tensors, a
        dataset) or a function cannot be saved as JSON, so the rebuilt callback shares everything with
        the instance the user passed (found by ``instance``): the user's reference stays live."""
        if instance is None:
            return False
        original = _ORIGINALS.get(instance)
        if original is None:  # saved by another process: the live instance of this type with the same arguments
            same = [cb for cb in list(_ORIGINALS.values()) if type(cb) is type(self) and cb._init_args == saved]
            original = same[-1] if same else None
        if original is None or type(original) is not type(self):
            return False
        self.__dict__ = original.__dict__  # one state, two handles
        return True

    # ---------------------------------------------------------------- transformers' stateful callbacks
    def state(self) -> dict[str, Any]:
        return {"args": {**self._init_args, "_instance": self._instance}, "attributes": {"core_state": self.state_dict()}}

    @property
    def core_state(self) -> dict[str, Any]:
        return self.state_dict()

    @core_state.setter
    def core_state(self, value: dict[str, Any]) -> None:
        self.load_state_dict(value)

    # ---------------------------------------------------------------- hooks (thin)
    def _make_run(self, args: Any, state: Any, model: Any) -> Run:
        trainer = _find_trainer()
        if self._sink is None or self._sink.trainer is not trainer:
            self._sink = HFSink(trainer, state)
        device = next(model.parameters()).device
        dtype = torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None

        def autocast() -> Any:
            return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

        def fallback() -> Any:
            ds = getattr(trainer, "eval_dataset", None)
            if ds is None:
                return None
            if isinstance(ds, dict):  # several eval sets: the first
                ds = next(iter(ds.values()))
            if hasattr(trainer, "_remove_unused_columns"):
                try:
                    ds = trainer._remove_unused_columns(ds, description="evaluation")
                except Exception:  # noqa: BLE001 - a plain torch Dataset: nothing to remove
                    pass
            return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=trainer.data_collator)

        out = Path(self.output_dir) if self.output_dir else Path(args.output_dir) / (self.name or "geometry")
        return Run(
            step=int(state.global_step),
            epoch=int(state.epoch or 0),
            module=model,
            device=device,
            rank_zero=bool(state.is_world_process_zero),
            out_dir=out,
            sink=self._sink,
            autocast=autocast if dtype is not None else None,
            fallback_probe=fallback,
        )

    def _restore(self, state: Any) -> None:
        """Resuming: take this callback's history from the checkpoint's ``stateful_callbacks``.

        transformers rebuilds stateful callbacks only with ``restore_callback_states_from_checkpoint``
        (default False); the monitor's history must continue either way.
        """
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if not saved:
            return
        entries = saved if isinstance(saved, list) else [saved]
        mine = [e for e in entries if {k: v for k, v in e.get("args", {}).items() if k != "_instance"} == self._init_args]
        entry = (mine or entries)[0]
        core = entry.get("attributes", {}).get("core_state")
        if core and not any(r["step"] > state.global_step for r in core.get("history", [])):
            self.load_state_dict(core)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:  # a resume
            self._restore(state)
        if self.at_fit_start:
            self.checkpoint(self._make_run(args, state, model))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.collect(wait=False)  # background work (a record, figures): logged / shown as soon as it is done
        if (self.every_n_steps is not None or self.log_spaced) and self.is_due(state.global_step):
            self.checkpoint(self._make_run(args, state, model))

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.is_due_epoch(int(round(state.epoch or 0)) - 1):
            self.checkpoint(self._make_run(args, state, model))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        run = self._make_run(args, state, model)
        if self.at_fit_end:
            self.checkpoint(run)
        self.finish(run)


def _json_ok(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


class GeometryCallback(GeometryCore, _HFShell):
    """:class:`~lightning_geom.monitoring.geometry.GeometryCore` for ``transformers.Trainer``.

    Args: as :class:`~lightning_geom.callbacks.GeometryMonitor`; ``probe=None`` takes the first
    ``num_samples`` of the Trainer's ``eval_dataset`` (collated with its data collator); ``output_dir``
    defaults to ``<args.output_dir>/geometry``.
    """

    def __init__(self, probe: Any = None, *, _instance: str | None = None, **kwargs: Any) -> None:
        if self._rejoin(_instance, kwargs):
            return
        GeometryCore.__init__(self, probe, **kwargs)
        self._remember(kwargs)


class PullbackCallback(PullbackCore, _HFShell):
    """:class:`~lightning_geom.monitoring.pullback.PullbackCore` for ``transformers.Trainer``.

    Args: as :class:`~lightning_geom.callbacks.PullbackMonitor`.
    """

    def __init__(self, probe: Any = None, *, _instance: str | None = None, **kwargs: Any) -> None:
        if self._rejoin(_instance, kwargs):
            return
        PullbackCore.__init__(self, probe, **kwargs)
        self._remember(kwargs)
