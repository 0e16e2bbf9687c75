"""The pullback monitor's core (framework-free): per-layer spectra of g = J^T G J on the probe set.

``lightning_geom.callbacks.PullbackMonitor`` (Lightning) and ``lightning_geom.hf.PullbackCallback``
(Hugging Face Trainer) are thin shells around :class:`PullbackCore`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from ..capture import (
    batch_last_positions,
    float_dtype,
    logits_and_hidden,
    model_inputs,
    resolve_network,
)
from ..geometry.args import NON_NEGATIVE, optional_name, positive_int
from ..geometry.pullback import (
    OUTPUT_MAPS,
    check_top_logits,
    layer_spectra,
    spectrum_stats,
    subspace_overlap,
)
from ..report.history import is_number, metric_key
from .core import MonitorCore, Run, check_options
from .probe import gather_parts

__all__ = ["PullbackCore", "PULLBACK_STATS"]

PULLBACK_STATS = ("top", "trace", "participation", "effective_rank", "numerical_rank", "log_det", "token_entropy")


class PullbackCore(MonitorCore):
    r"""Log the spectrum of the pullback metric :math:`g_l = J_l^T G J_l` of every layer while training
    (Benfenati, Marta et al., arXiv 2410.06019).

    J_l is the Jacobian of the output (at ``position``, through the output map ``output``) with
    respect to layer l's hidden state; all layers come from one forward pass and one batched
    backward (:func:`~lightning_geom.geometry.pullback.layer_spectra`), exactly (float64 thin SVD).
    Per layer, the mean over the probe samples of each statistic is logged as
    ``pullback/<stat>/layer_NN`` (top eigenvalue, trace, participation ratio, entropy effective
    rank, numerical rank, pseudo-log-det, token entropy of the top eigenvectors' mass), plus
    ``pullback/stability/layer_NN``: the overlap of the top eigenvector subspaces with the previous
    checkpoint's (1 = unchanged). Figures (spectra per layer coloured by step; stat x layer x step
    heatmaps) go next to the GeometryMonitor's.

    Args:
        probe, num_samples (default 64), batch_size (default 16), every_n_steps, every_n_epochs,
            log_spaced, at_fit_start, at_fit_end, on_error, output_dir, figure_every: see
            :class:`~lightning_geom.monitoring.core.MonitorCore`.
        output: ``"logits"`` (G = I), ``"probs"`` or ``"fisher"``.
        position: output position for sequence outputs (default: each sample's last real token, read
            from a dict batch's ``attention_mask``; the last position without one).
        top_logits: pull back only each sample's top-k logits; ``"auto"`` (default): the top 16 of a
            head with more than 64 outputs (an LM's vocabulary: all 50,257 of GPT-2's would be 50,257
            backward directions per checkpoint), all of a classifier's; None: always all.
        run_fn: ``run_fn(network, batch) -> (logits, hidden_states)`` with gradients enabled;
            default calls the network with ``output_hidden_states=True``.
        model_attr: which attribute of the LightningModule is the network.
        label_key: key of labels in dict batches (removed before the call).
        track_samples: samples whose top eigenvectors are kept for the stability score.
        track_top: how many top eigenvectors the stability score compares.

    Warning:
        The backward pass through the probe costs about twice the forward; the default probe is
        small (64 samples) for that reason. It runs synchronously (``background=True`` does not
        apply: the Jacobians need the model as it is at the checkpoint); its figures are drawn in a
        worker thread when the training runs on a GPU in one process (``background="auto"``).
    """

    _prefix = "pullback"

    def __init__(
        self,
        probe: Any = None,
        *,
        output: Literal["logits", "probs", "fisher"] = "logits",
        position: int | None = None,
        top_logits: int | Literal["auto"] | None = "auto",
        run_fn: Callable[[Any, Any], tuple[torch.Tensor, Any]] | None = None,
        model_attr: str | None = None,
        label_key: str | None = "labels",
        track_samples: int = 8,
        track_top: int = 4,
        num_samples: int = 64,
        batch_size: int = 16,
        **kwargs: Any,
    ) -> None:
        check_options(type(self).__name__, kwargs, PullbackCore.__init__)
        if kwargs.get("background") is True:
            raise ValueError(
                "PullbackMonitor differentiates the model at each checkpoint, so it cannot run beside training "
                "(`background=True`); pass background=False, or lower its cost with fewer samples / every_n_steps."
            )
        super().__init__(probe, num_samples=num_samples, batch_size=batch_size, **kwargs)
        if output not in OUTPUT_MAPS:
            raise ValueError(f"Expected `output` to be one of {OUTPUT_MAPS}, but got {output!r}.")
        check_top_logits(top_logits)
        if position is not None and (isinstance(position, bool) or not isinstance(position, int)):
            raise ValueError(f"Expected `position` to be None (the last position) or an integer index, but got {position!r}.")
        track_samples, track_top = (
            positive_int(v, name, low=0, what=NON_NEGATIVE) for name, v in (("track_samples", track_samples), ("track_top", track_top))
        )
        self.output = output
        self.position = position
        self.top_logits = top_logits
        self.run_fn = run_fn
        self.model_attr = optional_name(model_attr, "model_attr", "the name of the module's attribute that holds the network")
        self.label_key = optional_name(label_key, "label_key", "the batch key of the labels")
        self.track_samples = track_samples
        self.track_top = track_top
        self._tracked: list | None = None  # previous checkpoint's top eigenvectors, per layer
        self._layout_done = False

    def _run(self, net: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        if self.run_fn is not None:
            return self.run_fn(net, batch)
        return logits_and_hidden(net, batch, self.label_key)

    def _local(self, run: Run) -> tuple[list, str | None]:
        """Per-sample statistics and tracked eigenvectors of this rank's shard, or an error message."""
        net = resolve_network(run.module, self.model_attr)
        was_training = run.module.training
        run.module.eval()
        out = []
        dtype = float_dtype(net)  # the probe's float inputs in the model's dtype
        try:
            for bid, batch in self._shard(self._probe(run)):
                batch = model_inputs(batch, run.device, dtype)
                # default position: each sample's last *real* token (a padded probe's last column is padding)
                position = self.position if self.position is not None else batch_last_positions(batch)
                spectra = layer_spectra(
                    lambda batch=batch: self._run(net, batch), output=self.output, position=position, top_logits=self.top_logits
                )
                stats = [{k: v.cpu() for k, v in spectrum_stats(s).items()} for s in spectra]
                mean_spec = [s.eigenvalues.mean(dim=0)[:32].cpu() for s in spectra]
                vecs = [s.eigenvectors[:, : self.track_top].to(torch.float32).cpu() for s in spectra]
                out.append((bid, stats, mean_spec, vecs))
            return out, None
        except Exception as err:  # noqa: BLE001 - sent through the collective, raised after it
            if self.on_error == "raise":
                raise
            return [], f"{type(err).__name__}: {err}"
        finally:
            run.module.train(was_training)

    def settings_dict(self) -> dict[str, Any]:
        return {
            **super().settings_dict(),
            "output": self.output,
            "position": self.position,
            "top_logits": self.top_logits,
            "track_samples": self.track_samples,
            "track_top": self.track_top,
        }

    def _measure(self, run: Run) -> dict[str, Any]:
        start = time.perf_counter()
        parts = gather_parts(*self._local(run), "pullback spectra")
        self._timed("spectra", start)
        n_layers = len(parts[0][1])
        n_samples = sum(int(p[1][0]["top"].shape[0]) for p in parts)
        vecs = [torch.cat([p[3][li] for p in parts])[: self.track_samples] for li in range(n_layers)]
        layers = []
        for li in range(n_layers):
            rec: dict[str, Any] = {"index": li}
            for stat in parts[0][1][li]:
                rec[stat] = float(torch.cat([p[1][li][stat] for p in parts]).mean())
            weights = [p[1][li]["top"].shape[0] for p in parts]
            rec["spectrum"] = (sum(w * p[2][li] for w, p in zip(weights, parts)) / sum(weights)).tolist()
            if self._tracked is not None and li < len(self._tracked) and self._tracked[li].shape == vecs[li].shape:
                rec["stability"] = float(subspace_overlap(self._tracked[li], vecs[li]).mean())
            else:
                rec["stability"] = None
            layers.append(rec)
        self._tracked = vecs
        return {"n_samples": n_samples, "layers": layers}

    def _publish(self, run: Run, record: dict[str, Any]) -> None:
        if not self._layout_done:
            run.sink.layout([*PULLBACK_STATS, "stability"], self._prefix)
            self._layout_done = True
        metrics = {
            metric_key(k, layer["index"], prefix=self._prefix): float(layer[k])
            for layer in record["layers"]
            for k in (*PULLBACK_STATS, "stability")
            if isinstance(layer.get(k), float)
        }
        metrics.update(
            {metric_key(f"time/{k}", prefix=self._prefix): float(v) for k, v in (record.get("time") or {}).items() if is_number(v)}
        )
        run.sink.scalars(metrics, record["step"])
        from ..report.history import flat_rows

        run.sink.table(flat_rows(self.history), record["step"], metric_key("table", prefix=self._prefix))
        charts = getattr(run.sink, "charts", None)
        if charts is not None:
            charts(self.history, ["top", "effective_rank", "stability"], self._prefix)

    def _figure_set(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        from ..report.figures import heatmap_figure, spectra_figure

        return {
            "pullback_spectra": spectra_figure(history),
            "pullback_log_det_heatmap": heatmap_figure(history, key="log_det"),
            "pullback_effective_rank_heatmap": heatmap_figure(history, key="effective_rank"),
        }
