"""What every probe-set monitor needs: the probe set, the schedule, DDP sharding/gathering, history
state, and the failure policy. ``GeometryMonitor`` (and later ``PullbackMonitor``) subclass it and
implement ``_measure``; everything else lives here once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..analysis import layer_errors
from ..capture import map_tensors

__all__ = ["ProbeMonitor", "probe_batches", "batch_len"]


def batch_len(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        for item in batch:
            if isinstance(item, Tensor) and item.ndim > 0:
                return int(item.shape[0])
    raise TypeError(f"Cannot tell the size of a batch of type {type(batch).__name__}.")


def _slice(batch: Any, a: int, b: int) -> Any:
    return map_tensors(batch, lambda t: t[a:b])


def _to_cpu(batch: Any) -> Any:
    return map_tensors(batch, lambda t: t.detach().cpu())


def probe_batches(probe: Any, *, num_samples: int, batch_size: int) -> list[Any]:
    """The first ``num_samples`` samples of a probe as a list of CPU batches.

    Args:
        probe: a ``DataLoader``, a ``Dataset``, a dict of (N, ...) tensors or an (N, ...) tensor.

    Raises:
        TypeError: any other kind of probe.
        ValueError: an empty probe.
    """
    if isinstance(probe, (Tensor, Mapping)):
        n = min(batch_len(probe), num_samples)
        batches = [_to_cpu(_slice(probe, s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    else:
        if isinstance(probe, Dataset):
            probe = DataLoader(probe, batch_size=batch_size, shuffle=False)
        if not isinstance(probe, Iterable):
            raise TypeError(
                "Expected `probe` to be a DataLoader, a Dataset, a dict of tensors or a tensor, "
                f"but got {type(probe).__name__}."
            )
        batches, seen = [], 0
        for batch in probe:
            take = min(batch_len(batch), num_samples - seen)
            batches.append(_to_cpu(_slice(batch, 0, take)))
            seen += take
            if seen >= num_samples:
                break
    if not batches or sum(batch_len(b) for b in batches) == 0:
        raise ValueError("The probe set is empty: pass `probe=` with at least a few hundred samples.")
    return batches


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a one-element list without DDP). Every rank must call it."""
    rank, world = _dist()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_parts(local: list, err: str | None, what: str) -> list:
    """Every rank's (batch id, ...) parts, in batch order; raises (on every rank) if any rank failed.

    Every rank calls the collective, whatever happened locally, so a failure never hangs DDP.
    """
    gathered = all_gather_objects((local, err))
    errors = [e for _, e in gathered if e]
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]}")
    return sorted((p for loc, _ in gathered for p in loc), key=lambda p: p[0])


class ProbeMonitor(Callback):
    """Base of the monitors: a fixed probe set measured on a schedule, with history as state.

    Args:
        probe: DataLoader, Dataset, dict of tensors or tensor; None takes the first ``num_samples``
            of the validation loader (the datamodule's, else the module's) at the start of fit.
        num_samples: probe size.
        batch_size: batch size for a probe given as a Dataset / dict / tensor.
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure at the end of every n-th epoch (None: not by epochs).
        log_spaced: also measure at steps 0, 1, 2, 4, 8, ... below ``every_n_steps`` (the profile forms early).
        at_fit_start: measure the untrained model (the first point of the emergence picture).
        at_fit_end: measure at the end of fit.
        on_error: ``"warn"`` turns any failure into one warning and training goes on; ``"raise"`` re-raises.
        output_dir: where figures and history files go (default: the first logger's log_dir / ``geometry``).
        figure_every: send figures every n checkpoints (0: only at the end of fit).

    Raises:
        ValueError: bad schedule values or ``on_error``.
    """

    _prefix = "probe"

    def __init__(
        self,
        probe: Any = None,
        *,
        num_samples: int = 1024,
        batch_size: int = 64,
        every_n_steps: int | None = 200,
        every_n_epochs: int | None = None,
        log_spaced: bool = True,
        at_fit_start: bool = True,
        at_fit_end: bool = True,
        on_error: Literal["warn", "raise"] = "warn",
        output_dir: str | None = None,
        figure_every: int = 5,
    ) -> None:
        super().__init__()
        if not isinstance(figure_every, int) or figure_every < 0:
            raise ValueError(f"Expected `figure_every` to be a non-negative integer, but got {figure_every!r}.")
        self.figure_every = figure_every
        for name, v in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"Expected `{name}` to be None or a positive integer, but got {v!r}.")
        for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Expected `{name}` to be a positive integer, but got {v!r}.")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"Expected `on_error` to be one of 'warn', 'raise', but got {on_error!r}.")
        self.probe = probe
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.log_spaced = log_spaced
        self.at_fit_start = at_fit_start
        self.at_fit_end = at_fit_end
        self.on_error = on_error
        self.output_dir = output_dir
        self.history: list[dict[str, Any]] = []
        self.timings: list[dict[str, float]] = []
        self._phase_times: dict[str, float] = {}
        self._batches: list[Any] | None = None
        self._probe_id: str | None = None
        self._restored_probe_id: str | None = None
        self._history_file: str | None = None  # resolved at the first save (never overwrite others' records)

    # ----------------------------------------------------------------- schedule
    def is_due(self, step: int) -> bool:
        """Whether step ``step`` is on the step schedule (log-spaced early, then every n steps)."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            return True
        if self.log_spaced and (self.every_n_steps is None or step < self.every_n_steps):
            return step == 0 or (step & (step - 1)) == 0
        return False

    def _recorded(self, step: int) -> bool:
        return any(r["step"] == step for r in self.history)

    @staticmethod
    def _skip(trainer: Trainer) -> bool:
        """The one predicate for 'not now': sanity check, or not fitting."""
        return bool(trainer.sanity_checking) or trainer.state.fn != "fit"

    # ----------------------------------------------------------------- Lightning hooks (thin)
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_start:
            self._maybe_measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.every_n_steps is not None or self.log_spaced:
            if self.is_due(trainer.global_step):
                self._maybe_measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._maybe_measure(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_fit_end:
            self._maybe_measure(trainer, pl_module)
        self._finish(trainer)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "probe_id": self._probe_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._restored_probe_id = state_dict.get("probe_id")

    # ----------------------------------------------------------------- machinery
    def _probe(self, trainer: Trainer, pl_module: LightningModule) -> list[Any]:
        if self._batches is None:
            probe = self.probe
            for source in (getattr(trainer, "datamodule", None), pl_module):
                if probe is not None or source is None:
                    continue
                try:
                    probe = source.val_dataloader()
                except Exception:  # noqa: BLE001 - not implemented: try the next source
                    probe = None
            if probe is None:
                raise ValueError(
                    f"{type(self).__name__} found no validation loader to take its probe set from: pass `probe=`."
                )
            self._batches = probe_batches(probe, num_samples=self.num_samples, batch_size=self.batch_size)
            self._probe_id = probe_fingerprint(self._batches)
            if self._restored_probe_id and self._restored_probe_id != self._probe_id and self.history:
                rank_zero_warn(
                    f"{type(self).__name__}: the probe set differs from the checkpoint's ({self._restored_probe_id} -> "
                    f"{self._probe_id}); its {len(self.history)} records are kept in their history file and a new "
                    "series starts (measurements on different probes are not comparable)."
                )
                self.history = []
        return self._batches

    def _shard(self, batches: list[Any]) -> list[tuple[int, Any]]:
        """This rank's (batch id, batch) pairs: batches dealt round-robin over the ranks."""
        rank, world = _dist()
        return [(i, b) for i, b in enumerate(batches) if i % world == rank]

    def _maybe_measure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._skip(trainer) or self._recorded(trainer.global_step):
            return
        start = time.perf_counter()
        self._phase_times = {}
        try:
            record = self._measure(trainer, pl_module)
        except Exception as err:
            if self.on_error == "raise":
                raise
            rank_zero_warn(
                f"{type(self).__name__} skipped step {trainer.global_step}: {type(err).__name__}: {err}. "
                "Training goes on; pass `on_error='raise'` to debug."
            )
            return
        cost = {f"{k}_s": round(v, 6) for k, v in self._phase_times.items()}
        cost["total_s"] = round(time.perf_counter() - start, 6)
        record = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch), **record, "time": cost}
        self.history.append(record)
        if trainer.is_global_zero:
            try:
                t = time.perf_counter()
                self._save_history(trainer)  # complete after every checkpoint, atomically
                self._log_settings(trainer)
                self._publish(trainer, record)
                cost["log_s"] = round(time.perf_counter() - t, 6)
                if self.figure_every and len(self.history) % self.figure_every == 0:
                    t = time.perf_counter()
                    self._figures(trainer)
                    cost["figures_s"] = round(time.perf_counter() - t, 6)
            except Exception as err:
                if self.on_error == "raise":
                    raise
                rank_zero_warn(f"{type(self).__name__} could not log step {trainer.global_step}: {err}")
        self.timings.append({"step": int(trainer.global_step), **cost})

    def settings_dict(self) -> dict[str, Any]:
        """The monitor's settings as plain values: sent once per fit to every logger's hyperparameters
        (W&B config, TensorBoard HPARAMS, CSV hparams.yaml) under ``<prefix>_monitor/``."""
        probe_n = sum(batch_len(b) for b in self._batches) if self._batches else None
        return {
            "probe_samples": probe_n if probe_n is not None else self.num_samples,
            "probe_id": self._probe_id,
            "batch_size": self.batch_size,
            "every_n_steps": self.every_n_steps,
            "every_n_epochs": self.every_n_epochs,
            "log_spaced": self.log_spaced,
            "figure_every": self.figure_every,
            "on_error": self.on_error,
        }

    def _log_settings(self, trainer: Trainer) -> None:
        if getattr(self, "_settings_logged", False):
            return
        self._settings_logged = True
        params = {f"{self._prefix}_monitor/{k}": _plain(v) for k, v in self.settings_dict().items()}
        for lg in trainer.loggers:
            try:
                lg.log_hyperparams(params)
            except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not stop training
                rank_zero_warn(f"{type(self).__name__} could not record its settings in {type(lg).__name__}: {err}")

    def _timed(self, phase: str, start: float) -> None:
        """Add the seconds since ``start`` to this checkpoint's ``phase`` (capture, geometry, ...)."""
        self._phase_times[phase] = self._phase_times.get(phase, 0.0) + time.perf_counter() - start

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Training crashed: write the history recorded so far (rank 0), never raise over the crash."""
        if trainer.is_global_zero and self.history:
            try:
                self._save_history(trainer)
            except Exception as err:  # noqa: BLE001 - the user's exception is the one that matters
                rank_zero_warn(f"{type(self).__name__} could not save its history after the crash: {err}")

    def _save_history(self, trainer: Trainer) -> None:
        """``<prefix>_history.json/.csv`` under the output folder, atomically.

        The first save of a run checks the file already there: if it holds records this monitor
        does not (a resume with other settings, another probe, or a fresh run into the same
        folder), they are kept and this run writes ``<prefix>_history.1.json`` (then ``.2``, ...),
        with one warning naming the file.
        """
        from ..report.history import save_history
        from ..report.loggers import default_output_dir

        out = default_output_dir(trainer, self.output_dir, sub="geometry")
        if self._history_file is None:
            self._history_file = _free_history_name(out, f"{self._prefix}_history", self.history, type(self).__name__)
        save_history(self.history, out, name=self._history_file)

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """One checkpoint's record (without step/epoch). Every rank calls it (collectives inside)."""
        raise NotImplementedError

    def _publish(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Log one record (rank 0)."""

    def _finish(self, trainer: Trainer) -> None:
        """End of fit: final figures and files (rank 0)."""
        if trainer.is_global_zero and self.history:
            try:
                self._figures(trainer)
            except Exception as err:
                if self.on_error == "raise":
                    raise
                rank_zero_warn(f"{type(self).__name__} could not write its figures: {err}")

    def _figure_set(self) -> dict[str, Any]:
        """``{name: Figure}`` of the history so far."""
        return {}

    def _figures(self, trainer: Trainer) -> None:
        """History files and figures: PNG under the output folder, and to W&B / TensorBoard (rank 0)."""
        import matplotlib.pyplot as plt

        from ..report.loggers import default_output_dir, log_figures

        out = default_output_dir(trainer, self.output_dir, sub="geometry")
        self._save_history(trainer)
        figs = self._figure_set()
        log_figures(list(trainer.loggers), figs, trainer.global_step, prefix=self._prefix)
        for name, fig in figs.items():
            fig.savefig(out / f"{name}.png")
            plt.close(fig)


def _plain(v: Any) -> Any:
    """A hyperparameter value every logger accepts: numbers, bools and strings as they are, the rest as text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return "None" if v is None else v
    if callable(v):
        return getattr(v, "__name__", type(v).__name__)
    return str(v)


def probe_fingerprint(batches: list[Any]) -> str:
    """``"<n samples>:<sha1 prefix>"`` of the probe's tensors: a checkpoint's probe identity."""
    h = hashlib.sha1()
    n = 0
    for batch in batches:
        n += batch_len(batch)
        map_tensors(batch, lambda t: h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()))
    return f"{n}:{h.hexdigest()[:12]}"


def _free_history_name(out: Any, base: str, history: list[dict[str, Any]], owner: str) -> str:
    """``base`` unless its JSON holds records (steps) that ``history`` lacks; then ``base.1``, ``base.2``, ..."""
    import json
    from pathlib import Path

    ours = {(r.get("step"), r.get("epoch")) for r in history}
    name, i = base, 0
    while True:
        path = Path(out) / f"{name}.json"
        if not path.exists():
            break
        try:
            theirs = {(r.get("step"), r.get("epoch")) for r in json.loads(path.read_text())}
        except (OSError, ValueError, AttributeError, TypeError):
            theirs = {("unreadable", None)}
        if theirs <= ours:
            break
        i += 1
        name = f"{base}.{i}"
    if name != base:
        rank_zero_warn(
            f"{owner}: {base}.json in {out} holds records this run does not (a resume with other settings, another "
            f"probe, or another run in the same folder); they are kept, and this run writes {name}.json."
        )
    return name


def warn_layer_errors(owner: str, step: int, layers: list[dict[str, Any]]) -> None:
    """One warning naming every failed layer and its cause."""
    bad = layer_errors(layers)
    if bad:
        rank_zero_warn(f"{owner} at step {step}: " + "; ".join(bad))

