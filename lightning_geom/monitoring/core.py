"""The monitor core: what a checkpoint does, whatever the training framework.

A monitor measures a fixed probe set on a schedule and keeps the history as state. This module
decides *when* (the schedule), *what happens on failure* (the policy), *what is kept* (history,
timings, the probe's identity, atomic history files) and *where results go* (a :class:`Sink`), and
leaves *how to measure* to a subclass (``_measure``). It imports neither Lightning nor the
Hugging Face Trainer: the framework shells (``lightning_geom.callbacks``, ``lightning_geom.hf``)
translate their hooks into a :class:`Run` and call :meth:`MonitorCore.checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from ..capture import map_tensors
from ..geometry.args import NON_NEGATIVE, flag, known_keywords, positive_int
from .probe import batch_len, check_probe_kind, dist_info, probe_batches, probe_fingerprint, shard

__all__ = ["Sink", "Run", "MonitorCore", "plain"]


class Sink(Protocol):
    """Where a monitor's results go (implemented by each framework shell; every call on rank 0)."""

    def scalars(self, metrics: dict[str, float], step: int) -> None: ...

    def figures(self, images: dict[str, Any], step: int, prefix: str) -> None:
        """``{name: (H, W, 3) uint8 RGB array}``: each figure drawn once (``report.figures.render``)."""

    def hparams(self, params: dict[str, Any]) -> None: ...

    def table(self, rows: list[dict[str, Any]], step: int, key: str) -> None: ...

    def layout(self, kinds: list[str], prefix: str) -> None: ...

    def charts(self, history: list[dict[str, Any]], kinds: list[str], prefix: str) -> None: ...


@dataclass
class Run:
    """One moment of training, as the core sees it.

    Attributes:
        step: optimizer steps so far.
        epoch: the current epoch.
        module: the model (``nn.Module``) to probe.
        device: where to run the probe.
        rank_zero: whether this process logs and writes files.
        out_dir: where figures and history files go.
        sink: where scalars, figures, tables and settings go.
        autocast: a context-manager factory for the probe's forward (mixed precision), or None.
        fallback_probe: called for a probe when none was given (e.g. the validation loader).
    """

    step: int
    epoch: int
    module: torch.nn.Module
    device: torch.device
    rank_zero: bool
    out_dir: Path
    sink: Sink
    autocast: Callable[[], Any] | None = None
    fallback_probe: Callable[[], Any] | None = field(default=None, repr=False)


@dataclass
class _Pending:
    """An analysis running in the worker thread: its checkpoint, its future, and the seconds the
    training loop spent on it (the capture)."""

    run: Run
    future: Any
    blocking: float


@dataclass
class _Drawing:
    """Figures being drawn in the worker thread: their checkpoint, the future of ``(images, pngs,
    seconds)``, and that checkpoint's ``timings`` row (completed when they are shown)."""

    run: Run
    future: Any
    timing: dict[str, float]


def plain(v: Any) -> Any:
    """A hyperparameter value every logger accepts: numbers, bools and strings as they are, the rest as text."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return "None" if v is None else v
    if callable(v):
        return getattr(v, "__name__", type(v).__name__)
    return str(v)


def _rank_zero_warn(message: str) -> None:
    if dist_info()[0] == 0:
        warnings.warn(message, UserWarning, stacklevel=3)


def _free_history_name(out: Path, base: str, history: list[dict[str, Any]], owner: str) -> str:
    """``base`` unless its JSON holds records (steps) that ``history`` lacks; then ``base.1``, ``base.2``, ...

    Records are matched by step alone: a history never holds two records of one step, and the epoch of
    one step can read differently across a resume (a fit stopped by ``max_steps`` mid-epoch ends with
    the epoch counter already advanced; the resumed fit measures that step again in the old epoch)."""
    ours = {r.get("step") for r in history}
    name, i = base, 0
    while True:
        path = Path(out) / f"{name}.json"
        if not path.exists():
            break
        try:
            theirs = {r.get("step") for r in json.loads(path.read_text())}
        except (OSError, ValueError, AttributeError, TypeError):
            theirs = {"unreadable"}
        if theirs <= ours:
            break
        i += 1
        name = f"{base}.{i}"
    if name != base:
        _rank_zero_warn(
            f"{owner}: {base}.json in {out} holds records this run does not (a resume with other settings, another "
            f"probe, or another run in the same folder); they are kept, and this run writes {name}.json."
        )
    return name


def check_options(owner: str, given: dict[str, Any], init: Callable) -> None:
    """An unknown keyword option is a TypeError that names the closest known one (``init``'s or the core's).

    ``given`` is what ``init`` left in its ``**kwargs`` for :class:`MonitorCore`.
    """
    import inspect

    core = [n for n in inspect.signature(MonitorCore.__init__).parameters if n not in ("self", "probe")]
    if any(key not in core for key in given):
        own = [n for n, p in inspect.signature(init).parameters.items() if p.kind is p.KEYWORD_ONLY]
        known_keywords(owner, [key for key in given if key not in core], own + core)


class MonitorCore:
    """A fixed probe set measured on a schedule, with history as state (framework-free).

    Args:
        probe: DataLoader, Dataset, dict of tensors, ``(inputs, labels)`` tuple of tensors (one set of
            N samples, as a ``TensorDataset`` takes them) or tensor; None takes the first ``num_samples``
            of the run's fallback (the validation / evaluation set: under Lightning the one given to
            ``fit``, or a datamodule's / the module's ``val_dataloader``).
        num_samples: probe size.
        batch_size: batch size for a probe given as a Dataset / dict / tensor.
        every_n_steps: measure every n optimizer steps (None: not by steps).
        every_n_epochs: measure at the end of every n-th epoch (None: not by epochs).
        log_spaced: also measure at steps 0, 1, 2, 4, 8, ... below ``every_n_steps`` (the profile forms
            early; Pythia's checkpoint schedule); an integer m starts the doubling at m (0, m, 2m, 4m, ...:
            the first optimizer steps barely move a model out of its initialisation); False: off.
        at_fit_start: measure the untrained model (the first point of the emergence picture).
        at_fit_end: measure at the end of training.
        on_error: ``"warn"`` turns any failure into one warning and training goes on; ``"raise"`` re-raises.
        output_dir: where figures and history files go (default: chosen by the framework shell).
        figure_every: send figures every n checkpoints (0: only at the end).
        background: analyse in a worker thread, off the training's critical path: the probe's
            forward runs at the checkpoint (the model must not change under it), the analysis of
            the captured features runs beside the next training steps (on a GPU on its own CUDA
            stream), and its record is logged, with its own step, at the first training step after
            it finishes; the figures are then drawn in that thread too, and sent at the first
            training step after they are done. ``"auto"`` (default): on when the model trains on a GPU in one process;
            ``False`` always synchronous; ``True`` also on a CPU (where the analysis then competes
            with training for the cores). Under DDP the analysis has collectives and stays
            synchronous. Saving a checkpoint, the end of fit and a crash wait for it (no record is lost).
        name: prefix of the logged keys (``name/id/layer_NN`` instead of ``geometry/...``) and the
            output sub-folder, for two monitors of one kind in one run (a train and a validation
            probe, say); each needs its own name (Lightning keeps their states apart by it).

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
        log_spaced: bool | int = True,
        at_fit_start: bool = True,
        at_fit_end: bool = True,
        on_error: Literal["warn", "raise"] = "warn",
        output_dir: str | None = None,
        figure_every: int = 5,
        background: bool | Literal["auto"] = "auto",
        name: str | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)):
            raise ValueError(
                f"Expected `name` to be None or a word of letters, digits, '_', '-', '.' (it prefixes the logged keys "
                f"and names the output folder), but got {name!r}."
            )
        self.name = name
        if name is not None:
            self._prefix = name
        if background not in (True, False, "auto"):
            raise ValueError(f"Expected `background` to be True, False or 'auto', but got {background!r}.")
        self.background = background
        figure_every = positive_int(figure_every, "figure_every", low=0, what=NON_NEGATIVE)
        every_n_steps = None if every_n_steps is None else positive_int(every_n_steps, "every_n_steps", also="None or ")
        every_n_epochs = None if every_n_epochs is None else positive_int(every_n_epochs, "every_n_epochs", also="None or ")
        log_spaced = int(log_spaced) if isinstance(log_spaced, bool) else positive_int(  # True starts the doubling at 1
            log_spaced, "log_spaced", low=0, what="True, False or the first step of the doubling (a positive integer)"
        )
        num_samples, batch_size = positive_int(num_samples, "num_samples"), positive_int(batch_size, "batch_size")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"Expected `on_error` to be one of 'warn', 'raise', but got {on_error!r}.")
        if output_dir is not None and not isinstance(output_dir, (str, os.PathLike)):
            raise TypeError(f"Expected `output_dir` to be None or a folder path, but got {type(output_dir).__name__} {output_dir!r}.")
        if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
            raise ValueError(f"Expected `output_dir` to be a folder, but {output_dir} is a file; pass a folder (made if missing).")
        check_probe_kind(probe)
        self.figure_every = figure_every
        self.probe = probe
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.log_spaced = log_spaced
        self.at_fit_start = flag(at_fit_start, "at_fit_start")
        self.at_fit_end = flag(at_fit_end, "at_fit_end")
        self.on_error = on_error
        self.output_dir = output_dir
        self.history: list[dict[str, Any]] = []
        self.timings: list[dict[str, float]] = []
        self.failures: list[dict[str, Any]] = []  # {"step", "error"} of every checkpoint skipped (on_error="warn")
        self.final_figures_s = 0.0  # the figures drawn by finish() (not a checkpoint's timings row)
        self._phase_times: dict[str, float] = {}
        self._batches: list[Any] | None = None
        self._probe_id: str | None = None
        self._restored_probe_id: str | None = None
        self._history_file: str | None = None  # resolved at the first save (never overwrite others' records)
        self._settings_logged = False
        self._layout_done = False
        self._pending: _Pending | None = None  # the analysis running in the worker thread
        self._drawing: _Drawing | None = None  # figures being drawn there
        self._warned: set[str] = set()  # keys of the warnings said once per run
        self._worker: Any = None  # its ThreadPoolExecutor, made on first use

    _can_background = False  # subclasses whose analysis needs only the captured features (not the model) say so

    def __getstate__(self) -> dict[str, Any]:  # pickling (DDP spawn, deepcopy): no thread, nothing in flight
        self.collect()
        self._show_figures(wait=True)
        return {k: v for k, v in self.__dict__.items() if k != "_stream"} | {"_worker": None, "_pending": None, "_drawing": None}

    # ----------------------------------------------------------------- schedule
    def is_due(self, step: int) -> bool:
        """Whether step ``step`` is on the step schedule (log-spaced early, then every n steps)."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            return True
        if self.log_spaced and (self.every_n_steps is None or step < self.every_n_steps):
            m = int(self.log_spaced)  # True -> 1
            return step == 0 or (step % m == 0 and ((q := step // m) & (q - 1)) == 0)
        return False

    def is_due_epoch(self, epoch: int) -> bool:
        """Whether the end of (0-based) ``epoch`` is on the epoch schedule."""
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0

    def _recorded(self, step: int) -> bool:
        return any(r["step"] == step for r in self.history)

    def _warn(self, message: str, *, once: str | None = None) -> None:
        """One warning, on rank 0 (shells may route it through their framework's helper). With ``once``,
        only the first time that key comes up in this run: a cause that holds at every checkpoint (a
        probe too small for k, labels of the wrong length, a full disk) is said once, not at each."""
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        _rank_zero_warn(message)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        self.collect()  # a checkpoint being saved holds the record still being analysed
        return {"history": self.history, "probe_id": self._probe_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._restored_probe_id = state_dict.get("probe_id")
        self._replay_pending = bool(self.history)  # shells may re-send restored records to sinks that lack them

    def settings_dict(self) -> dict[str, Any]:
        """The monitor's settings as plain values: sent once per run to the sink's hyperparameters
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

    # ----------------------------------------------------------------- the probe
    def _probe(self, run: Run) -> list[Any]:
        if self._batches is None:
            probe = self.probe
            if probe is None and run.fallback_probe is not None:
                probe = run.fallback_probe()
            if probe is None:
                raise ValueError(f"{type(self).__name__} found no validation / evaluation set to take its probe from: pass `probe=`.")
            self._batches = probe_batches(probe, num_samples=self.num_samples, batch_size=self.batch_size)
            self._probe_id = probe_fingerprint(self._batches)
            if self._restored_probe_id and self._restored_probe_id != self._probe_id and self.history:
                self._warn(
                    f"{type(self).__name__}: the probe set differs from the checkpoint's ({self._restored_probe_id} -> "
                    f"{self._probe_id}); its {len(self.history)} records are kept in their history file and a new "
                    "series starts (measurements on different probes are not comparable)."
                )
                self.history = []
        return self._batches

    def _shard(self, batches: list[Any]) -> list[tuple[int, Any]]:
        """This rank's (batch id, batch) pairs: batches dealt round-robin over the ranks."""
        return shard(batches)

    # ----------------------------------------------------------------- one checkpoint
    def checkpoint(self, run: Run) -> dict[str, Any] | None:
        """Measure at ``run.step`` unless already recorded; log, save and draw on rank 0.

        Every rank calls it (the measurement has collectives). With ``on_error="warn"`` any failure
        is one warning and None; with ``"raise"`` it propagates. In the background (see
        ``background``) it returns None once the probe is captured; :meth:`collect` logs the record.
        """
        if self._recorded(run.step) or (self._pending is not None and self._pending.run.step == run.step):
            return None
        self.collect()  # one analysis in flight at most: its features are what it holds
        start = time.perf_counter()
        self._phase_times = {}
        if self._in_background(run):
            try:
                payload = self._capture_payload(run)
            except Exception as err:
                return self._failed(run, err)
            self._submit(run, payload, start)
            return None
        try:
            record = self._measure(run)
        except Exception as err:
            return self._failed(run, err)
        cost = {f"{k}_s": round(v, 6) for k, v in self._phase_times.items()}
        cost["total_s"] = cost["blocking_s"] = round(time.perf_counter() - start, 6)
        return self._record(run, record, cost)

    def _failed(self, run: Run, err: Exception) -> None:
        """A checkpoint that failed: raise (``on_error="raise"``), else one warning per distinct error.

        A structural failure (a model without logits, a probe the model cannot take) comes back at
        every checkpoint: the first occurrence warns, the repeats are only counted in ``failures``."""
        if self.on_error == "raise":
            raise err
        text = f"{type(err).__name__}: {str(err).rstrip('. ')}"
        self.failures.append({"step": int(run.step), "error": text})
        self._warn(
            f"{type(self).__name__} skipped step {run.step}: {text}. Training goes on; the same failure at later "
            "steps is not repeated here (see `monitor.failures`); pass `on_error='raise'` to debug.",
            once=f"skipped: {text}",
        )
        return None

    def _record(self, run: Run, record: dict[str, Any], cost: dict[str, float]) -> dict[str, Any]:
        """Keep one measured record: history, files, dashboards, figures (rank 0), timings.

        ``cost``: seconds per phase, ``total_s`` (the measurement's work) and ``blocking_s`` (what the
        training loop waited for it: all of it, or only the capture in the background); the logging
        and figures are added to both ``timings`` and the blocking time."""
        record = {"step": int(run.step), "epoch": int(run.epoch), **record, "time": cost}
        self.history.append(record)
        draw_later = False
        if run.rank_zero:
            try:
                t = time.perf_counter()
                self._save_history(run)  # complete after every checkpoint, atomically
                self._log_settings(run)
                self._publish(run, record)
                cost["log_s"] = round(time.perf_counter() - t, 6)
                if self.figure_every and len(self.history) % self.figure_every == 0:
                    self._figures_drawn_at = run.step
                    draw_later = self._draws_in_background(run)
                    if not draw_later:
                        t = time.perf_counter()
                        self._figures(run)
                        cost["figures_s"] = round(time.perf_counter() - t, 6)
            except Exception as err:
                if self.on_error == "raise":
                    raise
                self._warn(
                    f"{type(self).__name__} could not log step {run.step}: {err} (said once; the records are kept in `history`)",
                    once=f"log: {type(err).__name__}: {err}",
                )
        after = cost.get("log_s", 0.0) + cost.get("figures_s", 0.0)
        timing = {"step": int(run.step), **cost, "blocking_s": round(cost["blocking_s"] + after, 6)}
        self.timings.append(timing)
        if draw_later:  # drawn beside the training, shown by collect(), which completes this timings row
            self._show_figures(wait=True)  # one drawing in flight at most
            self._drawing = _Drawing(run, self._executor().submit(self._draw, list(self.history)), timing)
        return record

    # ----------------------------------------------------------------- the background analysis
    def _in_background(self, run: Run) -> bool:
        """Whether this checkpoint's analysis runs in the worker thread."""
        return self._can_background and self._draws_in_background(run)

    def _draws_in_background(self, run: Run) -> bool:
        """Whether the figures are drawn in the worker thread: ``background`` True, or "auto" on a GPU,
        in one process (on 2 CPU cores a drawing thread slowed the training more than it saved)."""
        if self.background is False or dist_info()[1] > 1:
            return False
        return self.background is True or torch.device(run.device).type == "cuda"

    def _submit(self, run: Run, payload: Any, start: float) -> None:
        """The analysis of ``payload`` to the worker thread (after the capture's kernels, on a GPU)."""
        ready = None
        if torch.device(run.device).type == "cuda":
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(torch.device(run.device)))  # after the capture's kernels, on the training's stream
        # the worker adds its phases to this checkpoint's _phase_times: the next checkpoint resets it only after collect()
        self._pending = _Pending(run, self._executor().submit(self._work, run, payload, ready), time.perf_counter() - start)

    def _executor(self) -> Any:
        """The one worker thread (made on first use) for the background analysis and the figures."""
        from concurrent.futures import ThreadPoolExecutor

        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{type(self).__name__}-analysis")
        return self._worker

    def _work(self, run: Run, payload: Any, ready: Any) -> tuple[dict[str, Any], float]:
        """The worker thread: the analysis, on its own CUDA stream after ``ready`` (GPU). Returns (record, seconds)."""
        start = time.perf_counter()
        if ready is None:
            record = self._analyse(run, payload)
        else:
            stream = getattr(self, "_stream", None)
            if stream is None or stream.device != torch.device(run.device):
                stream = self._stream = torch.cuda.Stream(device=run.device)
            with torch.cuda.stream(stream):
                stream.wait_event(ready)
                # the training's allocator must not reuse the payload's memory before this stream is done with it
                map_tensors(payload, lambda t: t.record_stream(stream) if t.is_cuda else None)
                record = self._analyse(run, payload)
            stream.synchronize()
        return record, time.perf_counter() - start

    def collect(self, *, wait: bool = True) -> dict[str, Any] | None:
        """Log the background analysis's record, if one is in flight: waiting for it (``wait=True``:
        checkpoints, state saving, the end of fit) or only if it has finished (every training step).
        Returns the record, or None."""
        self._show_figures(wait=wait)
        p = self._pending
        if p is None or (not wait and not p.future.done()):
            return None
        self._pending = None
        t = time.perf_counter()
        try:
            record, seconds = p.future.result()
        except Exception as err:
            return self._failed(p.run, err)
        cost = {f"{k}_s": round(v, 6) for k, v in self._phase_times.items()}
        cost["total_s"] = round(p.blocking + seconds, 6)
        cost["blocking_s"] = round(p.blocking + time.perf_counter() - t, 6)  # the capture, and any wait here
        return self._record(p.run, record, cost)

    def _capture_payload(self, run: Run) -> Any:
        """Background mode, main thread: what the analysis needs from the model (the probe's features)."""
        raise NotImplementedError

    def _analyse(self, run: Run, payload: Any) -> dict[str, Any]:
        """Background mode, worker thread: the record from the payload alone (no model, no collectives)."""
        raise NotImplementedError

    def _timed(self, phase: str, start: float) -> None:
        """Add the seconds since ``start`` to this checkpoint's ``phase`` (capture, geometry, ...)."""
        self._phase_times[phase] = self._phase_times.get(phase, 0.0) + time.perf_counter() - start

    def _measure(self, run: Run) -> dict[str, Any]:
        """One checkpoint's record (without step/epoch). Every rank calls it (collectives inside)."""
        raise NotImplementedError

    def _publish(self, run: Run, record: dict[str, Any]) -> None:
        """Log one record (rank 0)."""

    def _log_settings(self, run: Run) -> None:
        if self._settings_logged:
            return
        self._settings_logged = True
        try:
            run.sink.hparams({f"{self._prefix}_monitor/{k}": plain(v) for k, v in self.settings_dict().items()})
        except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not stop training
            self._warn(f"{type(self).__name__} could not record its settings: {err}")

    # ----------------------------------------------------------------- files and figures
    def _save_history(self, run: Run) -> None:
        """``<prefix>_history.json/.csv`` under the output folder, atomically.

        The first save of a run checks the file already there: if it holds records this monitor
        does not (a resume with other settings, another probe, or a fresh run into the same
        folder), they are kept and this run writes ``<prefix>_history.1.json`` (then ``.2``, ...),
        with one warning naming the file.
        """
        from ..report.history import save_history

        if self._history_file is None:
            self._history_file = _free_history_name(run.out_dir, f"{self._prefix}_history", self.history, type(self).__name__)
        save_history(self.history, run.out_dir, name=self._history_file)

    def crashed(self, run: Run) -> None:
        """Training crashed: write the history recorded so far (rank 0), never raise over the crash."""
        try:
            self.collect()  # the analysis in flight still counts
            self._show_figures(wait=True)  # and so do the figures it drew
        except Exception as err:  # noqa: BLE001 - the user's exception is the one that matters
            self._warn(f"{type(self).__name__} lost its last analysis in the crash: {err}")
        self._stop_worker()
        if run.rank_zero and self.history:
            try:
                self._save_history(run)
            except Exception as err:  # noqa: BLE001 - the user's exception is the one that matters
                self._warn(f"{type(self).__name__} could not save its history after the crash: {err}")

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def finish(self, run: Run) -> None:
        """End of training: final files and figures (rank 0); figures unless the last checkpoint just drew them."""
        self.collect()
        self._show_figures(wait=True)  # those of the record just collected, too
        self._stop_worker()
        if run.rank_zero and self.history and getattr(self, "_figures_drawn_at", None) != self.history[-1]["step"]:
            t = time.perf_counter()
            try:
                self._save_history(run)  # a resumed run that measured nothing new still writes its folder's file
                self._figures(run)
                self.final_figures_s = round(time.perf_counter() - t, 6)
            except Exception as err:
                if self.on_error == "raise":
                    raise
                self._warn(f"{type(self).__name__} could not write its figures: {err}")

    def cost(self) -> dict[str, float]:
        """What the monitor cost the training loop in this run (from :attr:`timings`): ``checkpoints``,
        seconds per phase (``capture_s``, ``geometry_s`` / ``spectra_s``, ``log_s``, ``figures_s``; the
        final figures drawn at the end of training included) and ``blocking_s``, all the time the
        training waited for it. Its share of training: ``blocking_s / (wall - blocking_s)``."""
        out: dict[str, float] = {"checkpoints": float(len(self.timings))}
        for row in self.timings:
            for key, v in row.items():
                if key.endswith("_s") and key != "total_s":
                    out[key] = out.get(key, 0.0) + float(v)
        final = float(getattr(self, "final_figures_s", 0.0))
        if final:
            out["figures_s"] = out.get("figures_s", 0.0) + final
            out["blocking_s"] = out.get("blocking_s", 0.0) + final
        out.setdefault("blocking_s", 0.0)
        return out

    def _figure_set(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """``{name: Figure}`` of ``history``."""
        return {}

    def _draw(self, history: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, bytes], float]:
        """The figures of ``history`` drawn once: ``(images, pngs, seconds)`` (any thread)."""
        from ..report.figures import draw, png_bytes

        start = time.perf_counter()
        images = draw(lambda: self._figure_set(history))
        pngs = {name: png_bytes(image) for name, image in images.items()}
        return images, pngs, time.perf_counter() - start

    def _show(self, run: Run, images: dict[str, Any], pngs: dict[str, bytes]) -> None:
        """Drawn figures to the sink and as PNG under the output folder (main thread, rank 0)."""
        out = Path(run.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        run.sink.figures(images, run.step, self._prefix)
        stem = f"{self.name}_" if self.name else ""  # named monitors sharing a folder keep their own figures
        for name, data in pngs.items():
            (out / f"{stem}{name}.png").write_bytes(data)

    def _figures(self, run: Run) -> None:
        """The figures of the history so far, drawn here and shown (rank 0). The history files are written by the callers."""
        images, pngs, _ = self._draw(list(self.history))
        self._show(run, images, pngs)

    def _show_figures(self, *, wait: bool) -> None:
        """Show the figures drawn in the worker thread, if any: waiting for them, or only if they are done."""
        d = self._drawing
        if d is None or (not wait and not d.future.done()):
            return
        self._drawing = None
        t = time.perf_counter()
        try:
            images, pngs, seconds = d.future.result()
            self._show(d.run, images, pngs)
        except Exception as err:
            if self.on_error == "raise":
                raise
            self._warn(f"{type(self).__name__} could not draw its figures at step {d.run.step}: {err} (said once)", once=f"draw: {err}")
            return
        d.timing["figures_s"] = round(seconds, 6)  # drawn beside the training; showing them is what it waited
        d.timing["blocking_s"] = round(d.timing.get("blocking_s", 0.0) + time.perf_counter() - t, 6)
