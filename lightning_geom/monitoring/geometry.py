"""The geometry monitor's core (framework-free): capture the probe, per-layer geometry, phases, reporting.

``lightning_geom.callbacks.GeometryMonitor`` (Lightning) and ``lightning_geom.hf.GeometryCallback``
(Hugging Face Trainer) are thin shells around :class:`GeometryCore`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..analysis import GeometrySettings, finish_profile, layer_errors, profile_geometry
from ..capture import capture_representations, layer_patterns, right_align
from ..geometry import DuplicatePointsWarning, label_problem
from ..geometry.args import optional_name, positive_int
from ..report.history import metric_key, scalars
from ..tokens import token_keep_mask
from .core import MonitorCore, Run, check_options
from .probe import (
    all_gather_objects,
    batch_len,
    check_feature_memory,
    dist_info,
    gather_features,
    probe_batches,
)

__all__ = ["GeometryCore"]


class GeometryCore(MonitorCore):
    r"""Log the intrinsic-dimension profile of every layer, the neighbourhood overlaps and the three
    phases (Valeriani et al., arXiv 2302.00294) while the model trains.

    At each checkpoint of the schedule the probe set runs through the model (eval mode, inference
    mode, one forward pass for all layers); per layer one kNN serves the GRIDE scale curve (Denti
    et al. 2022), the ID at the chosen scale, TwoNN (Facco et al. 2017), the label overlap and the
    overlap with the next layer (Doimo et al. 2020). Scalars go to every logger under
    ``geometry/{id,twonn,overlap_next,label_overlap}/layer_NN`` and ``geometry/phase/*``; figures
    (the emergence picture, a layer x step heatmap, the overlap profiles) to W&B and TensorBoard
    and as PNG, the history as JSON and CSV, under ``output_dir``.

    Args:
        probe, num_samples, batch_size, every_n_steps, every_n_epochs, log_spaced, at_fit_start,
            at_fit_end, on_error, output_dir, figure_every: see :class:`~lightning_geom.monitoring.core.MonitorCore`.
        layers: glob patterns of submodules to hook; None uses the model's ``hidden_states`` (a Hugging
            Face model, or a forward with an ``output_hidden_states`` argument), else the outputs of its
            repeated blocks (the family of children named 0, 1, 2, ... holding the most parameters: ``blocks.*`` of a plain
            PyTorch transformer; :func:`~lightning_geom.capture.repeated_blocks`).
        pooling: ``"mean"``, ``"last"``, ``"first"`` or a callable (see :func:`~lightning_geom.capture.pool`).
        normalize: ``"layer_norm"`` to read the LayerNorm-ed residual stream.
        forward_fn: ``forward_fn(network, batch)`` to call the network yourself.
        model_attr: which attribute of the training module is the network (default: resolved).
        label_key: key of the labels in dict batches (tuple batches: the second item).
        range_max: largest GRIDE rank of the scale curve.
        id_n1: GRIDE rank of the logged ID, or ``"auto"``: chosen at the first checkpoint (the median
            of the layers' first stable scales) and kept for the whole run (and across resumes), so
            that the curves move with the model, not with the scale; logged as ``geometry/id_n1``.
            Every scale's ID stays in ``history`` (``layers[i]["gride"]``).
        overlap_k: k of the overlap with the next layer (default 10, as Doimo et al.'s code).
        label_k: k of the label overlap.
        tokens: ``"per_prompt"`` also measures each of the first ``token_prompts`` probe samples' token
            cloud per layer (Viswanathan et al., arXiv 2501.10573: :func:`~lightning_geom.analysis.token_geometry`)
            and logs the mean and spread over prompts as ``geometry/token_id/layer_NN``,
            ``token_id_std``, ``token_twonn``, ``token_overlap_next`` (one extra forward of those prompts).
            ``"pooled"`` flattens the same prompts' tokens into one cloud per layer (a seeded subsample of at
            most ``max_tokens``) and logs its ID profile as ``geometry/token_cloud_id/layer_NN``,
            ``token_cloud_twonn``, ``token_cloud_overlap_next`` (no second forward: the per-prompt capture's
            tokens; every token, special ones too); ``"both"`` does the two.
        token_prompts: prompts in the per-prompt analysis and the pooled cloud.
        max_tokens: the most tokens in the pooled cloud (a seeded uniform subsample, the same tokens at
            every checkpoint while the probe is the same).
        drop_token_ids: token ids left out of the pooled cloud (e.g. ``tokenizer.all_special_ids``: BOS /
            EOS / [CLS] states are outliers); needs dict batches with ``input_ids``.
        token_k: neighbours per token (prompts with <= ``token_k`` real tokens are left out).
        shard_knn_above: under DDP, a probe of at least this many samples has each layer's kNN rows
            split over the ranks (``knn_split``: exact, the same answer as one process) instead of
            whole layers dealt to ranks; None never splits.

    Example (through a framework shell)::

        trainer = L.Trainer(callbacks=[GeometryMonitor(probe=val_subset, every_n_steps=200)])
        trainer = transformers.Trainer(..., callbacks=[GeometryCallback(probe=eval_subset)])
    """

    _prefix = "geometry"

    def __init__(
        self,
        probe: Any = None,
        *,
        layers: Sequence[str] | None = None,
        pooling: Literal["mean", "last", "first"] | Callable = "mean",
        normalize: Literal["layer_norm"] | None = None,
        forward_fn: Callable | None = None,
        model_attr: str | None = None,
        label_key: str | None = "labels",
        range_max: int = 64,
        id_n1: int | str = "auto",
        overlap_k: int = 10,
        label_k: int = 10,
        tokens: Literal["per_prompt", "pooled", "both"] | None = None,
        token_prompts: int = 64,
        max_tokens: int = 4096,
        drop_token_ids: Sequence[int] = (),
        token_k: int = 8,
        shard_knn_above: int | None = 50_000,
        **kwargs: Any,
    ) -> None:
        check_options(type(self).__name__, kwargs, GeometryCore.__init__)
        super().__init__(probe, **kwargs)
        self.shard_knn_above = None if shard_knn_above is None else positive_int(shard_knn_above, "shard_knn_above", also="None or ")
        if tokens not in (None, "per_prompt", "pooled", "both"):
            raise ValueError(f"Expected `tokens` to be None, 'per_prompt', 'pooled' or 'both', but got {tokens!r}.")
        self.max_tokens = positive_int(max_tokens, "max_tokens", low=16)
        self.drop_token_ids = sorted({int(i) for i in drop_token_ids})
        self.tokens = tokens
        self.token_prompts, self.token_k = positive_int(token_prompts, "token_prompts", low=2), positive_int(token_k, "token_k", low=2)
        if not (callable(pooling) or pooling in ("mean", "last", "first")):
            raise ValueError(f"Expected `pooling` to be one of 'mean', 'last', 'first' or a callable, but got {pooling!r}.")
        if normalize not in (None, "layer_norm"):
            raise ValueError(f"Expected `normalize` to be None or 'layer_norm', but got {normalize!r}.")
        self.settings = GeometrySettings(range_max=range_max, id_n1=id_n1, overlap_k=overlap_k, label_k=label_k)
        self.layers = layer_patterns(layers)
        self.pooling = pooling
        self.normalize = normalize
        self.forward_fn = forward_fn
        self.model_attr = optional_name(model_attr, "model_attr", "the name of the module's attribute that holds the network")
        self.label_key = optional_name(label_key, "label_key", "the batch key of the labels")
        self._layout_done = False
        self._locked_n1: int | None = None  # id_n1="auto": the scale chosen at the first checkpoint, kept

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "id_n1": self._locked_n1}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._locked_n1 = state_dict.get("id_n1")

    def settings_dict(self) -> dict[str, Any]:
        return {
            **super().settings_dict(),
            "layers": self.layers or "hidden_states",
            "pooling": self.pooling,
            "normalize": self.normalize,
            "range_max": self.settings.range_max,
            "id_n1": self._locked_n1 if self._locked_n1 is not None else self.settings.id_n1,
            "overlap_k": self.settings.overlap_k,
            "label_k": self.settings.label_k,
            "shard_knn_above": self.shard_knn_above,
            **({"tokens": self.tokens, "token_prompts": self.token_prompts, "max_tokens": self.max_tokens,
                "drop_token_ids": self.drop_token_ids} if self.tokens else {}),
        }

    def _settings(self) -> GeometrySettings:
        """The settings of this checkpoint: with ``id_n1="auto"``, the scale locked at the first one.

        Re-choosing the scale at every checkpoint made the logged ID jump with the scale, not the
        model (layer 0 of the demo: 10.72 -> 9.41 -> 10.74 as n1 flipped between 2 and 4).
        """
        if self.settings.id_n1 == "auto" and self._locked_n1 is not None:
            return dataclasses.replace(self.settings, id_n1=self._locked_n1)
        return self.settings

    # --------------------------------------------------------------- measuring
    def _capture(self, run: Run) -> tuple[list[tuple[int, Any]], str | None]:
        """Features of this rank's shard: [(batch id, (features per layer, labels))], or an error."""
        shard = self._shard(self._probe(run))
        if not shard:
            return [], None
        try:
            # features stay on the training device: the geometry runs there, and under DDP they are
            # all-gathered as tensors on it (NCCL on GPU, gloo on CPU)
            keep = None
            out = []
            for bid, batch in shard:
                reps = capture_representations(
                    run.module,
                    [batch],
                    layers=self.layers,
                    pooling=self.pooling,
                    normalize=self.normalize,
                    forward_fn=self.forward_fn,
                    model_attr=self.model_attr,
                    label_key=self.label_key,
                    device=run.device,
                    autocast=run.autocast,
                    feature_device=keep,
                )
                if not out:  # plan before holding the whole probe's features (all layers at once)
                    per = sum(f[0].numel() * f.element_size() for f in reps.features)
                    total = sum(batch_len(b) for b in self._probe(run))
                    check_feature_memory(per, total, reps.features[0].device, type(self).__name__)  # DDP: gather_features checks its buffers
                out.append((bid, (reps.features, reps.labels, batch_len(batch))))
            return out, None
        except Exception as err:  # noqa: BLE001 - sent through the collective, raised after it
            if self.on_error == "raise":
                raise
            return [], f"{type(err).__name__}: {err}"

    _can_background = True  # the analysis needs only the captured features

    def _measure(self, run: Run) -> dict[str, Any]:
        return self._analyse(run, self._capture_payload(run))

    def _capture_payload(self, run: Run) -> tuple[Any, ...]:
        """The probe's features (all ranks' under DDP), labels, and the per-prompt token clouds (rank 0)."""
        start = time.perf_counter()
        features, labels, n_labels = gather_features(*self._capture(run), "capturing the probe representations")
        tokens = self._token_capture(run) if self.tokens and dist_info()[0] == 0 else None
        self._timed("capture", start)
        return features, labels, n_labels, tokens

    def _analyse(self, run: Run, payload: tuple[Any, ...]) -> dict[str, Any]:
        """One checkpoint's record from the captured features (the worker thread in the background)."""
        features, labels, n_labels, tokens = payload
        start = time.perf_counter()
        n_layers = len(features)
        if n_labels and n_labels != features[0].shape[0]:
            self._warn(
                f"{type(self).__name__}: {n_labels} labels for {features[0].shape[0]} probe samples; "
                "label overlap skipped (labels must be one per sample).",
                once="labels: length",
            )
            labels = None
        problem = label_problem(labels) if labels is not None else None
        if problem is not None:
            self._warn(f"{type(self).__name__}: label overlap is left out: {problem}.", once=f"labels: {problem[:24]}")
            labels = None
        rank, world = dist_info()
        # one process raises at the failing layer (its traceback); under DDP every rank raises after the gather
        policy = self.on_error if world == 1 else "warn"
        settings = self._settings()
        n_points = int(features[0].shape[0])
        if world > 1 and self.shard_knn_above is not None and n_points >= self.shard_knn_above:
            mine = self._split_layers(features, labels, settings, policy)
        else:  # whole layers dealt round-robin to the ranks
            mine = profile_geometry(features, labels, settings, layers=range(rank, n_layers, world), on_error=policy)
        records = [r for part in all_gather_objects(mine) for r in part]
        if self.on_error == "raise" and layer_errors(records):
            raise RuntimeError(f"{type(self).__name__}: " + "; ".join(layer_errors(records)))
        layers, phase = finish_profile(records, settings)
        used = next((r["id_n1"] for r in layers if not r.get("error") and r.get("id_n1") is not None), None)
        if self.settings.id_n1 == "auto" and self._locked_n1 is None and used is not None:
            self._locked_n1 = int(used)
        self._timed("geometry", start)
        bad = "; ".join(layer_errors(layers))
        if bad:  # each distinct set of failures said once; every record keeps its layers' errors
            self._warn(
                f"{type(self).__name__} at step {run.step}: {bad} (said once; later checkpoints with the same failures "
                "keep them in their records' `error`)",
                once=f"layers: {bad}",
            )
        record = {"n_samples": int(features[0].shape[0]), "id_n1": used, "layers": layers, "phase": phase}
        if self.tokens in ("per_prompt", "both"):
            start = time.perf_counter()
            mine = self._token_record(tokens) if dist_info()[0] == 0 else None
            record["tokens"] = next(r for r in all_gather_objects(mine) if r is not None)  # rank 0's, on every rank
            self._timed("tokens", start)
        if self.tokens in ("pooled", "both"):
            start = time.perf_counter()
            mine = self._cloud_record(tokens) if dist_info()[0] == 0 else None
            record["token_cloud"] = next(r for r in all_gather_objects(mine) if r is not None)
            self._timed("token_cloud", start)
        return record

    def _split_layers(self, features: list, labels: Any, settings: GeometrySettings, policy: str) -> list[dict[str, Any]]:
        """Large clouds under DDP: every rank computes a share of each layer's kNN rows
        (:func:`~lightning_geom.geometry.knn_split`, same answer as one process; a layer with exact
        copies: one split kNN of its distinct points), every rank runs the layer's estimators on
        them (milliseconds; the same on every rank) and keeps the records of the layers dealt to it
        round-robin. A failing layer is ``profile_geometry``'s error handling: the features are the
        same on every rank, so is the failure."""
        from ..geometry import knn_split

        rank, world = dist_info()
        mine: list[dict[str, Any]] = []
        for li in range(len(features)):
            rec = profile_geometry(features, labels, settings, layers=[li], on_error=policy, knn_fn=knn_split)
            if li % world == rank:
                mine += rec
        return mine

    def _token_capture(self, run: Run) -> tuple[list[Any], Any, Any]:
        """The token clouds of the first ``token_prompts`` probe samples (rank 0; one more forward):
        (per-layer (B, T, D) features, (B,) lengths, (B, T) token ids padded with -1, or None)."""
        batches = probe_batches(self._probe(run), num_samples=self.token_prompts, batch_size=self.batch_size)
        reps = capture_representations(
            run.module, batches, layers=self.layers, pooling="tokens", normalize=self.normalize, forward_fn=self.forward_fn,
            model_attr=self.model_attr, label_key=self.label_key, device=run.device, autocast=run.autocast, feature_device=None,
        )
        if reps.lengths is None or reps.features[0].ndim != 3:
            raise ValueError(f"tokens={self.tokens!r} needs token-level hidden states (B, T, D) from the model.")
        ids = None
        if all(isinstance(bt, Mapping) and torch.is_tensor(bt.get("input_ids")) for bt in batches):
            width = reps.features[0].shape[1]  # right-padded to the longest batch, as the features
            ids = torch.cat([torch.nn.functional.pad(_aligned_ids(bt), (0, width - bt["input_ids"].shape[1]), value=-1) for bt in batches])
        return reps.features, reps.lengths, ids

    def _token_record(self, tokens: tuple[list[Any], Any, Any]) -> dict[str, Any]:
        """Per-prompt token geometry of the captured token clouds (rank 0)."""
        from ..analysis import token_geometry

        features, lengths, _ = tokens
        with warnings.catch_warnings(record=True) as caught:  # a probe's repeated tokens: said once per run
            warnings.simplefilter("always", DuplicatePointsWarning)
            layers, dropped = token_geometry(features, lengths, k=self.token_k)
        for w in caught:
            if issubclass(w.category, DuplicatePointsWarning):
                self._warn(f"{type(self).__name__}: {w.message} (said once per run)", once="tokens: copies")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if dropped:
            self._warn(
                f"{type(self).__name__}: {dropped} of {lengths.numel()} prompts have <= {self.token_k} tokens; left out of the per-prompt geometry.",
                once=f"tokens: {dropped} dropped",
            )
        return {"layers": layers, "dropped": dropped}

    def _cloud_record(self, tokens: tuple[list[Any], Any, Any]) -> dict[str, Any]:
        """The pooled token cloud of the captured prompts (rank 0): every real token of every prompt as
        one point per layer, a seeded subsample of ``max_tokens``; its ID profile and layer-to-layer overlap."""
        features, lengths, ids = tokens
        if self.drop_token_ids and ids is None:
            raise ValueError("drop_token_ids needs the probe's token ids: dict batches with `input_ids`.")
        valid = token_keep_mask(lengths, features[0].shape[1], input_ids=ids, drop_ids=self.drop_token_ids)  # (B, T)
        rows, cols = valid.nonzero(as_tuple=True)
        available = int(rows.numel())
        if available > self.max_tokens:  # the same subsample at every checkpoint (same seed, same probe)
            keep = torch.randperm(available, generator=torch.Generator().manual_seed(0))[: self.max_tokens].sort().values
            rows, cols = rows[keep], cols[keep]
        cloud = [f[rows.to(f.device), cols.to(f.device)] for f in features]
        settings = dataclasses.replace(self.settings, id_n1="auto")  # its own scale: a token cloud is not the probe
        layers, phase = finish_profile(profile_geometry(cloud, None, settings), settings)
        keys = ("index", "id", "id_err", "id_n1", "twonn", "twonn_err", "overlap_next", "warning", "error")
        return {
            "n_tokens": int(rows.numel()), "available": available,
            "layers": [{key: r.get(key) for key in keys} for r in layers], "phase": phase,
        }

    # --------------------------------------------------------------- reporting (rank 0)
    def _publish(self, run: Run, record: dict[str, Any]) -> None:
        if not self._layout_done:
            run.sink.layout(["id", "twonn", "overlap_next", "label_overlap"], self._prefix)
            self._layout_done = True
        run.sink.scalars(scalars(record, prefix=self._prefix), record["step"])
        from ..report.history import flat_rows

        # the whole table at every checkpoint (W&B): a crashed run keeps its custom charts
        run.sink.table(flat_rows(self.history), record["step"], metric_key("table"))
        charts = getattr(run.sink, "charts", None)  # W&B: one multi-line chart per metric, every layer a line
        if charts is not None:
            charts(self.history, ["id", "twonn", "label_overlap", "overlap_next"], self._prefix)

    def _figure_set(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        from ..report.figures import all_figures

        return all_figures(history)


def _aligned_ids(batch: dict[str, Any]) -> Tensor:
    """A batch's token ids on the CPU, each row's real tokens first (as the captured token clouds:
    :func:`~lightning_geom.capture.right_align`), padding positions -1."""
    ids, mask = batch["input_ids"].cpu(), batch.get("attention_mask")
    if not torch.is_tensor(mask) or mask.shape != ids.shape:
        return ids
    (out,), m = right_align([ids], mask.cpu())
    return out.masked_fill(m == 0, -1)
