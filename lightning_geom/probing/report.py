"""`probe()`: every layer's geometry of one or several models on one data set, as a report.

It adds no math of its own: capture (:mod:`lightning_geom.capture`), the geometry core, the phase
detection and the pullback spectra. Per model and layer: TwoNN and the GRIDE scale curve with error
bars, the ID at a common stable scale, label overlap, nearest-neighbour retrieval (is a sample's
nearest neighbour of its label?), the neighbourhood-overlap matrix between all pairs of layers, the
three-phase summary, and pullback-metric statistics when the model has an output head.
"""

from __future__ import annotations

import base64
import html
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis import GeometrySettings, finish_profile, layer_errors, profile_geometry
from ..capture import (
    LayerChoiceError,
    capture_representations,
    float_dtype,
    match_modules,
    model_inputs,
    resolve_network,
)
from ..geometry import DuplicatePointsWarning, Neighbors, label_overlap, neighborhood_overlap
from ..geometry.args import as_int, flag, known_keywords, positive_int
from ..tokens import capture_token_cloud, lm_capture_forward

__all__ = ["GeometryReport", "probe_model", "probe"]


@dataclass
class GeometryReport:
    """The probe's results: one entry per model (``models``), with JSON and HTML writers."""

    models: list[dict[str, Any]]
    settings: dict[str, Any]
    data: str
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self, path: str | Path | None = None) -> str:
        models = [{**m, **_addressable(m)} for m in self.models]
        text = json.dumps({"data": self.data, "settings": self.settings, "timings": self.timings, "models": models}, indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, out_dir: str | Path) -> list[Path]:
        """layers.csv (one row per model and layer: the layer's numbers, pullback, per-prompt token and
        pooled token-cloud summaries) and, with per-prompt token geometry, token_prompts.csv (one row
        per prompt: its ID at every layer). Columns empty in every row are left out."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cols = ["id", "id_err", "id_n1", "twonn", "twonn_err", "label_overlap", "retrieval", "overlap_next"]
        pcols = sorted({k for m in self.models for r in m.get("pullback") or [] for k in r if k != "index"})
        tcols = ["token_id", "token_id_std", "token_twonn", "token_overlap_next", "token_id_shuffled", "loss_pearson", "loss_spearman"]
        ccols = ["id", "twonn", "overlap_next", "loss_neighbors"]
        header = ["model", "layer", *cols, *(f"pullback_{c}" for c in pcols)]
        header += [c if c.startswith("token_") else f"token_{c}" for c in tcols] + [f"token_cloud_{c}" for c in ccols]
        rows = []
        for m in self.models:
            pb = {r["index"]: r for r in m.get("pullback") or []}
            tok = {r["index"]: r for r in (m.get("tokens") or {}).get("layers", [])}
            cloud = {r["index"]: r for r in (m.get("token_cloud") or {}).get("layers", [])}
            for r in m["layers"]:
                i = r["index"]
                rows.append(
                    [m["name"], i] + [r.get(c) for c in cols] + [pb.get(i, {}).get(c) for c in pcols]
                    + [tok.get(i, {}).get(c) for c in tcols] + [cloud.get(i, {}).get(c) for c in ccols]
                )
        paths = [_write_csv(out / "layers.csv", header, rows)]
        prompt_rows, prompt_header = _prompt_table(self.models)
        if prompt_rows:
            paths.append(_write_csv(out / "token_prompts.csv", prompt_header, prompt_rows))
        return paths

    def figures(self) -> dict[str, Any]:
        """``{name: Figure}`` of the report (matplotlib, outside pyplot)."""
        from . import figures

        return figures.report_figures(self)

    def pngs(self) -> dict[str, bytes]:
        """``{name: PNG bytes}``: every figure drawn once (under the drawing lock a monitor's worker thread shares)."""
        from ..report.figures import draw, png_bytes

        return {name: png_bytes(image) for name, image in draw(self.figures).items()}

    def to_html(self, path: str | Path | None = None, *, pngs: dict[str, bytes] | None = None) -> str:
        """The self-contained page (``pngs``: the figures already drawn, else drawn here); written to ``path`` if given."""
        from .html import render

        text = render(self, self.pngs() if pngs is None else pngs)
        if path is not None:
            Path(path).write_text(text)
        return text

    def write(self, out_dir: str | Path) -> list[Path]:
        """report.html, metrics.json, layers.csv (token_prompts.csv with per-prompt token geometry) and the PNG figures under ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        pngs = self.pngs()
        written = []
        for name, data in pngs.items():
            (out / f"{name}.png").write_bytes(data)
            written.append(out / f"{name}.png")
        self.to_html(out / "report.html", pngs=pngs)
        self.to_json(out / "metrics.json")
        return [out / "report.html", out / "metrics.json", *self.to_csv(out), *written]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """``rows`` under ``header`` as CSV, without the columns that are empty in every row."""
    import csv

    keep = [j for j in range(len(header)) if any(row[j] is not None for row in rows)]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([header[j] for j in keep])
        w.writerows([[row[j] for j in keep] for row in rows])
    return path


def _prompt_table(models: list[dict[str, Any]]) -> tuple[list[list[Any]], list[str]]:
    """The per-prompt ID x layer table of ``--tokens per-prompt``: one row per (model, kept prompt) with
    its next-token loss (causal LMs), its GRIDE ID at every layer and, with the control, that of its
    block-shuffled tokens. Empty when no model has per-prompt token geometry."""
    layers = sorted({t["index"] for m in models for t in (m.get("tokens") or {}).get("layers", [])})
    shuffled = any("per_prompt_shuffled" in t for m in models for t in (m.get("tokens") or {}).get("layers", []))
    header = ["model", "prompt", "loss"] + [f"id_layer_{i}" for i in layers]
    header += [f"id_shuffled_layer_{i}" for i in layers] if shuffled else []
    rows = []
    for m in models:
        tok = m.get("tokens")
        if not tok:
            continue
        by = {t["index"]: t for t in tok["layers"]}
        prompts = tok.get("kept_prompts") or list(range(len(tok["layers"][0]["per_prompt"])))
        loss = tok.get("prompt_loss") or [None] * len(prompts)
        for j, p in enumerate(prompts):
            row = [m["name"], p, loss[j]] + [by[i]["per_prompt"][j] if i in by else None for i in layers]
            if shuffled:
                row += [by[i].get("per_prompt_shuffled", [None] * len(prompts))[j] if i in by else None for i in layers]
            rows.append(row)
    return rows, header


def png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _overlap_matrix(indices: list[torch.Tensor | None], k: int) -> list[list[float | None]]:
    nbs = [None if i is None else Neighbors(torch.zeros(i.shape, dtype=torch.float64), i) for i in indices]
    n = len(nbs)
    mat: list[list[float | None]] = [[None] * n for _ in range(n)]
    for a in range(n):
        for b in range(a, n):
            if nbs[a] is not None and nbs[b] is not None:
                v = 1.0 if a == b else neighborhood_overlap(nbs[a], nbs[b], k=k)
                mat[a][b] = mat[b][a] = v
    return mat


def probe_model(
    loaded: Any,
    data: Any,
    *,
    name: str,
    layers: list[str] | None = None,
    pooling: str = "mean",
    k: int = 10,
    range_max: int = 64,
    pullback_samples: int = 8,
    pullback_share: float = 0.25,
    device: str | None = None,
    progress: bool = True,
    tokens: str | Sequence[str] | None = None,
    token_prompts: int = 128,
    token_k: int = 8,
    shuffle_control: bool = False,
    max_tokens: int = 10_000,
    keep_special_tokens: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The geometry of one model's layers on ``data`` (a :class:`~.data.ProbeData`).

    ``tokens="per_prompt"`` adds the per-prompt token geometry of the first ``token_prompts``
    samples (:func:`~lightning_geom.analysis.token_geometry`) and, with ``shuffle_control``, the
    same on the prompts with their tokens shuffled in blocks of 4 (syntax and meaning disrupted;
    Viswanathan et al. 2025 see the ID rise).

    ``tokens="pooled"`` adds the geometry of one cloud per layer made of the tokens of all samples
    (a ``seed``-ed subsample of at most ``max_tokens``, special tokens left out unless
    ``keep_special_tokens``; :func:`~lightning_geom.tokens.capture_token_cloud`): its ID profile,
    and for a causal LM each token's next-token loss beside it (see :func:`_pooled_section`).
    ``tokens=("per_prompt", "pooled")`` does both.

    The pullback statistics run on up to ``pullback_samples`` samples, one at a time, and stop
    before they would take more than ``pullback_share`` of the probe's time (forward + geometry +
    pullback; at least one sample is always measured); ``pullback_share=1`` measures them all.
    """
    from rich.progress import Progress

    from ..monitoring.probe import batch_len, check_feature_memory

    _check_options(layers, pullback_samples, pullback_share, device, token_prompts, token_k, shuffle_control, keep_special_tokens, seed)
    timings: dict[str, float] = {}
    module = loaded.module
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    module.to(dev)
    settings = GeometrySettings(range_max=range_max, overlap_k=k, label_k=k)
    wanted = token_modes(tokens)
    if layers:  # a pattern that matches nothing is the --layers' fault, not a model / data mismatch
        match_modules(resolve_network(module), layers)
    drop = () if keep_special_tokens else getattr(loaded.tokenizer, "all_special_ids", ()) or ()
    # a causal LM with the pooled token cloud: one forward gives the cloud, its losses and the
    # sequence features (TokenCloud.pooled, equal to the capture's), instead of two forwards
    share = (
        "pooled" in wanted and layers is None and pooling in ("mean", "last", "first") and _is_lm(module)
        and _has_token_ids(data.batches)
    )
    shared = None
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"[{name}] forward passes", total=None if share else len(data.batches))
        feats: list[list[torch.Tensor]] = []
        t0 = time.perf_counter()
        if share:
            batches = _token_batches(data.batches, "--tokens pooled")
            shared = capture_token_cloud(module, batches, max_tokens=max_tokens, seed=seed, drop_ids=drop, device=dev, pooled=pooling)
            feats = [[f] for f in shared.pooled]
            sources = shared.sources
        for batch in [] if share else data.batches:
            try:
                reps = capture_representations(module, [batch], layers=layers, pooling=pooling, device=dev)
            except LayerChoiceError:  # the model / `layers` choice, not the data
                raise
            except (TypeError, ValueError, KeyError, IndexError) as err:
                if feats:  # the first batch ran: not a mismatch of model and data
                    raise
                keys = ", ".join(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
                raise ValueError(
                    f"{name} does not run on {data.description}'s batches ({keys}): {type(err).__name__}: "
                    f"{_first_line(err)}. Is --data the kind of input this model takes?"
                ) from err
            if not feats:
                feats = [[] for _ in reps.features]
                sources = reps.sources
                per = sum(f[0].numel() * f.element_size() for f in reps.features)  # plan before holding them all
                check_feature_memory(per, sum(batch_len(b) for b in data.batches), reps.features[0].device, name)
            for acc, f in zip(feats, reps.features):
                acc.append(f)
            bar.advance(task)
        features = [torch.cat(f) for f in feats]
        timings["forward_s"] = time.perf_counter() - t0
        labels = data.labels
        if labels is not None and len(labels) != features[0].shape[0]:
            labels = None
        t0 = time.perf_counter()
        task = bar.add_task(f"[{name}] per-layer geometry", total=len(features))
        records = []
        for li in range(len(features)):
            records += profile_geometry(features, labels, settings, layers=[li])
            bar.advance(task)
        if records and all(r.get("error") for r in records):
            raise ValueError(f"{name}: every layer failed, nothing to report: " + "; ".join(layer_errors(records)))
        indices = [r.get("_indices") for r in sorted(records, key=lambda r: r["index"])]
        matrix = _overlap_matrix(indices, k)
        layer_recs, phase = finish_profile(records, settings)
        for r, idx in zip(layer_recs, indices):
            r["source"] = sources[r["index"]]
            r["retrieval"] = None
            if labels is not None and idx is not None:
                nb1 = Neighbors(torch.zeros(idx.shape[0], 1, dtype=torch.float64), idx[:, :1])
                r["retrieval"] = label_overlap(nb1, labels, k=1, weighted=False)
        timings["geometry_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        spent = timings["forward_s"] + timings["geometry_s"]
        budget = math.inf if pullback_share >= 1 else spent * pullback_share / max(1e-9, 1.0 - pullback_share)
        pull, pulled, pull_note = _pullback(module, data, pullback_samples, dev, budget_s=budget) if pullback_samples else (None, 0, "skipped (--pullback-samples 0)")
        timings["pullback_s"] = time.perf_counter() - t0
        token_rec = cloud_rec = None
        if "per_prompt" in wanted:
            t0 = time.perf_counter()
            bar.add_task(f"[{name}] per-prompt token geometry", total=None)
            token_rec = _token_section(module, data, layers, token_prompts, token_k, shuffle_control, dev)
            timings["tokens_s"] = time.perf_counter() - t0
        if "pooled" in wanted:
            t0 = time.perf_counter()
            bar.add_task(f"[{name}] pooled token cloud", total=None)
            cloud_rec = _pooled_section(module, data, layers, max_tokens, drop, seed, settings, dev, cloud=shared)
            timings["token_cloud_s"] = time.perf_counter() - t0  # with a shared forward: the cloud's geometry only
    best = None
    ret = [(r["retrieval"], r["index"]) for r in layer_recs if isinstance(r.get("retrieval"), float)]
    if ret:
        best = max(ret)[1]
    return {
        "name": name,
        "source": loaded.source,
        "kind": loaded.kind,
        "device": str(dev),
        "n_layers_captured": len(features),
        "step": _checkpoint_step(loaded),
        "n_samples": int(features[0].shape[0]),
        "layers": layer_recs,
        "overlap_matrix": matrix,
        "phase": phase,
        "best_retrieval_layer": best,
        "pullback": pull,
        "pullback_samples_used": pulled,
        "pullback_note": pull_note,
        "tokens": token_rec,
        "token_cloud": cloud_rec,
        "timings": timings,
    }


TOKEN_MODES = ("per_prompt", "pooled")


def token_modes(tokens: str | Sequence[str] | None) -> set[str]:
    """The token analyses asked for: None, ``"per_prompt"``, ``"pooled"``, ``"both"`` or a list of them
    (``-`` spelled as ``_`` too).

    Raises:
        ValueError: an unknown name.
    """
    if tokens is None:
        return set()
    names = [tokens] if isinstance(tokens, str) else list(tokens)
    out = set()
    for n in names:
        key = str(n).replace("-", "_")
        if key == "both":
            out.update(TOKEN_MODES)
        elif key in TOKEN_MODES:
            out.add(key)
        else:
            raise ValueError(f"Expected `tokens` to be 'per_prompt', 'pooled', 'both' or None, but got {n!r}.")
    return out


def _pooled_section(
    module: Any, data: Any, layers: Any, max_tokens: int, drop: Any, seed: int, settings: GeometrySettings, dev: torch.device,
    *, cloud: Any = None,
) -> dict[str, Any]:
    """The geometry of the pooled token cloud (all samples' tokens, subsampled) at every layer.

    Per layer: TwoNN, GRIDE at a common scale and the overlap with the next layer (as the sample
    profile), the three-phase summary, and for a causal LM ``loss_neighbors``: the Spearman
    correlation of each token's next-token loss with the mean loss of its ``overlap_k`` nearest
    neighbours there (near 0: the layer's neighbourhoods ignore how predictable a token is; near 1:
    tokens sit among tokens that are as hard to predict). ``cloud``: the cloud already captured (with
    the probe's forward, :func:`probe_model`).
    """
    if cloud is None:
        batches = _token_batches(data.batches, "--tokens pooled")
        cloud = capture_token_cloud(module, batches, layers=layers, max_tokens=max_tokens, seed=seed, drop_ids=drop, device=dev)
    if cloud.n_tokens <= max(settings.overlap_k, 2):
        raise ValueError(f"the pooled token cloud has {cloud.n_tokens} tokens, too few for k = {settings.overlap_k}: use more or longer texts, or --keep-special-tokens.")
    records = profile_geometry(list(cloud.features), None, settings)
    if cloud.loss is not None:
        for r in records:
            if r.get("_indices") is not None:
                r["loss_neighbors"] = _loss_neighbors(cloud.loss, r["_indices"][:, : settings.overlap_k].cpu())
    layer_recs, phase = finish_profile(records, settings)
    keys = ("index", "id", "id_err", "id_n1", "twonn", "twonn_err", "overlap_next", "loss_neighbors", "error")
    out: dict[str, Any] = {
        "layers": [{key: r.get(key) for key in keys} for r in layer_recs],
        "phase": phase,
        "n_tokens": cloud.n_tokens,
        "available": cloud.available,
        "max_tokens": max_tokens,
        "prompts": int(cloud.prompt.unique().numel()),
        "special_tokens_dropped": bool(list(drop)),
    }
    if cloud.loss is not None:
        ok = torch.isfinite(cloud.loss)
        out["loss_mean"] = float(cloud.loss[ok].mean()) if bool(ok.any()) else None
    return out


def _loss_neighbors(loss: torch.Tensor, idx: torch.Tensor) -> float | None:
    """Spearman correlation of each token's loss with the mean loss of its neighbours (tokens and
    neighbours without a loss, i.e. prompts' last tokens, left out); None with < 3 such tokens."""
    nb = loss[idx]  # (M, k)
    mean_nb = torch.nanmean(nb, dim=1)
    return _correlations(loss, mean_nb)["loss_spearman"]


def _shuffle_blocks(batch: Any, block: int, seed: int) -> Any:
    """The control of Viswanathan et al.: each prompt's real tokens permuted in blocks of ``block`` (padding
    stays). ``batch``: a dict with ``input_ids`` (and its mask), or a plain network's (B, T) ids tensor."""
    g = torch.Generator().manual_seed(seed)
    ids = _batch_ids(batch).clone()
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    for i in range(ids.shape[0]):
        real = mask[i].nonzero().flatten() if mask is not None else torch.arange(ids.shape[1])  # either padding side
        row = ids[i, real]
        blocks = [row[s : s + block] for s in range(0, row.numel(), block)]
        order = torch.randperm(len(blocks), generator=g).tolist()
        ids[i, real] = torch.cat([blocks[j] for j in order])
    return {**batch, "input_ids": ids} if isinstance(batch, Mapping) else ids


def _batch_ids(b: Any) -> torch.Tensor | None:
    """A batch's (B, T) token ids: a dict's ``input_ids``, or (a plain network's input) an integer (B, T)
    tensor, alone or first in an (ids, labels) tuple; else None."""
    x = b.get("input_ids") if isinstance(b, Mapping) else b[0] if isinstance(b, (tuple, list)) and b else b
    return x if isinstance(x, torch.Tensor) and x.ndim == 2 and not x.is_floating_point() and not x.is_complex() else None


def _has_token_ids(batches: Sequence[Any]) -> bool:
    return all(_batch_ids(b) is not None for b in batches)


def _token_batches(batches: Sequence[Any], what: str) -> list[Any]:
    """The batches without their labels, for a token analysis (``what``), or a one-line error."""
    if not _has_token_ids(batches):
        raise ValueError(f"{what} needs token inputs (input_ids, or a plain network's (B, T) integer ids); this data set has none.")
    return [{key: v for key, v in b.items() if key != "labels"} if isinstance(b, Mapping) else _batch_ids(b) for b in batches]


def _is_lm(module: Any) -> bool:
    from ..capture import resolve_network
    from ..tokens import is_causal_lm

    return is_causal_lm(resolve_network(module))


def _token_states_and_losses(
    module: Any, batches: list[dict[str, torch.Tensor]], dev: torch.device
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """A causal LM's per-prompt token clouds (``capture_representations(pooling="tokens")``), the prompts'
    real-token counts (P,) and their mean next-token losses (P,), from one forward per batch
    (:func:`~lightning_geom.tokens.lm_capture_forward`) instead of a capture and :func:`_prompt_losses`."""
    losses: list[torch.Tensor] = []
    reps = capture_representations(module, batches, pooling="tokens", device=dev, forward_fn=lm_capture_forward(losses))
    return reps.features, reps.lengths, torch.cat([torch.nanmean(per, dim=1).float().cpu() for per in losses])


def _prompt_losses(module: Any, batches: list[dict[str, torch.Tensor]], dev: torch.device) -> torch.Tensor | None:
    """(P,) mean next-token cross-entropy of each prompt over its real tokens, when the model is a causal LM; else None."""
    from ..capture import resolve_network
    from ..tokens import is_causal_lm, next_token_losses

    net = resolve_network(module)
    if not is_causal_lm(net):
        return None
    out = []
    with torch.inference_mode():
        for b in batches:
            per = next_token_losses(net, {key: v.to(dev) if torch.is_tensor(v) else v for key, v in b.items()})  # (B, T), NaN where no target
            out.append(torch.nanmean(per, dim=1).float().cpu())
    return torch.cat(out)


def _correlations(ids: torch.Tensor, loss: torch.Tensor) -> dict[str, float | None]:
    """Pearson and Spearman correlation of per-prompt ID with per-prompt loss over the prompts that
    have an ID (NaN left out; None with < 3 prompts)."""
    ok = torch.isfinite(ids) & torch.isfinite(loss)
    ids, loss = ids[ok], loss[ok]
    if ids.numel() < 3 or float(ids.std()) == 0 or float(loss.std()) == 0:
        return {"loss_pearson": None, "loss_spearman": None}
    from scipy import stats

    return {
        "loss_pearson": float(stats.pearsonr(ids.double().numpy(), loss.double().numpy())[0]),
        "loss_spearman": float(stats.spearmanr(ids.double().numpy(), loss.double().numpy())[0]),
    }


def _token_section(module: Any, data: Any, layers: Any, prompts: int, k: int, shuffle: bool, dev: torch.device) -> dict[str, Any]:
    """Per-prompt token geometry of the first ``prompts`` samples (and of their block-shuffled control)."""
    from ..analysis import token_geometry
    from ..monitoring.probe import batch_len, probe_batches

    batches = _token_batches(probe_batches(data.batches, num_samples=prompts, batch_size=64), "--tokens per-prompt")
    n = sum(batch_len(b) for b in batches)

    def measure(bs: list) -> tuple[list, int]:
        reps = capture_representations(module, bs, layers=layers, pooling="tokens", device=dev)
        return token_geometry(reps.features, reps.lengths, k=k)

    lm = layers is None and _is_lm(module)
    if lm:  # a causal LM: the token states and the per-prompt losses from one forward (not two)
        features, lens, losses = _token_states_and_losses(module, batches, dev)
        per, dropped = token_geometry(features, lens, k=k)
        del features
    else:
        per, dropped = measure(batches)
        losses = _prompt_losses(module, batches, dev) if layers is not None else None
    lengths = torch.cat([
        b["attention_mask"].sum(1) if isinstance(b, Mapping) and "attention_mask" in b else torch.full((len(_batch_ids(b)),), _batch_ids(b).shape[1])
        for b in batches
    ])
    out: dict[str, Any] = {"layers": per, "dropped": dropped, "prompts": n, "k": k}
    out["kept_prompts"] = torch.nonzero(lengths > k).flatten().tolist()  # the prompts of every per_prompt list
    if losses is not None:  # a causal LM: does a prompt's ID go with how well the model predicts it?
        kept = losses[lengths > k]
        out["loss_mean"] = float(kept.mean())
        out["prompt_loss"] = [v if math.isfinite(v) else None for v in kept.tolist()]
        for rec in per:
            ids = torch.tensor([math.nan if v is None else v for v in rec["per_prompt"]], dtype=torch.float64)
            rec.update(_correlations(ids, kept))
    if shuffle:
        with warnings.catch_warnings():  # the same tokens reordered: their copies were reported just above
            warnings.simplefilter("ignore", DuplicatePointsWarning)
            shuffled, _ = measure([_shuffle_blocks(b, 4, seed=i) for i, b in enumerate(batches)])
        for rec, ctl in zip(per, shuffled):
            rec["token_id_shuffled"] = ctl["token_id"]
            rec["token_id_shuffled_std"] = ctl["token_id_std"]
            rec["per_prompt_shuffled"] = ctl["per_prompt"]
    return out


def _pullback(
    module: Any, data: Any, n: int, dev: torch.device, *, budget_s: float = math.inf
) -> tuple[list[dict[str, Any]] | None, int, str | None]:
    """Mean pullback statistics per layer over the first ``n`` samples, when the model has logits.

    Sample by sample (each at its own length: no padding in the Jacobian), stopping before the
    next sample would take the time past ``budget_s`` (one sample is always measured). Returns
    (one row per layer, samples measured, None); without a pullback (None, 0, why not): the report
    says why the section is missing instead of leaving it out silently.
    """
    from ..capture import (
        NoLogitsError,
        is_encoder_decoder,
        logits_and_hidden,
        map_tensors,
        resolve_network,
    )
    from ..geometry.pullback import layer_spectra, spectrum_stats
    from ..monitoring.probe import batch_len

    net = resolve_network(module)
    first = data.batches[0]
    if is_encoder_decoder(net):
        return None, 0, "an encoder-decoder model: its logits need decoder inputs (targets); the layers probed are the encoder's"
    count = min(n, batch_len(first))
    dtype = float_dtype(net)  # the samples' float inputs in the model's dtype
    t0 = prev = time.perf_counter()
    per_layer: list[dict[str, list[torch.Tensor]]] = []
    done = 0
    try:
        for i in range(count):
            one = map_tensors(first, lambda v, i=i: v[i : i + 1] if v.ndim else v)  # dict, tuple or tensor batches
            if isinstance(one, Mapping) and "attention_mask" in one:  # the sample alone, its real tokens only (either padding side)
                real = one["attention_mask"][0].bool()
                one = {k: v[:, real] if v.ndim == 2 and v.shape[1] == real.numel() else v for k, v in one.items()}
            one = model_inputs(one, dev, dtype)
            # an LM's vocabulary: its top 16 logits (each output is one backward direction); a classifier's head whole
            spectra = layer_spectra(lambda one=one: logits_and_hidden(net, one), output="fisher", top_logits="auto")
            if not per_layer:
                per_layer = [{} for _ in spectra]
            for acc, sp in zip(per_layer, spectra):
                for key, v in spectrum_stats(sp).items():
                    acc.setdefault(key, []).append(v.reshape(-1))
            done += 1
            now = time.perf_counter()
            last, elapsed, prev = now - prev, now - t0, now
            if elapsed + 1.25 * max(last, elapsed / done) > budget_s:  # the next sample could overrun the budget
                break
    except Exception as err:  # noqa: BLE001 - no output head, or an op without a gradient: no pullback section
        if not done:
            if isinstance(err, NoLogitsError):
                if any("logits" in f for f in err.fields):  # e.g. question answering: start_logits and end_logits, two heads
                    return None, 0, f"{type(net).__name__} has no single `logits` output to pull back (its output holds {', '.join(err.fields)})"
                return None, 0, f"{type(net).__name__} has no output head (no logits to pull back)"
            why = (str(err).splitlines() or [""])[0][:200]
            return None, 0, f"the pullback failed on this model ({type(err).__name__}: {why})"
    rows = []
    for li, acc in enumerate(per_layer):
        stats = {k: torch.cat(v) for k, v in acc.items()}
        rows.append({"index": li, **{k: float(v.mean()) for k, v in stats.items() if torch.isfinite(v).all()}})
    return rows, done, None


def probe(
    models: Any, data: Any, *, names: list[str] | None = None, tokenizer: Any = None, progress: bool = True, **kwargs: Any
) -> GeometryReport:
    """Probe one model or several (e.g. checkpoints of one run) on the same data.

    Args:
        models: a :class:`~lightning_geom.loading.LoadedModel`, an ``nn.Module``, a path, or a list of them.
        data: a :class:`~.data.ProbeData`, a spec string (``digits``, a file, a folder), a list of texts,
            a ``(texts, labels)`` pair, rows of text not tokenized yet (dict rows with a text and a label,
            a Hugging Face ``Dataset`` before ``map(tokenizer)``, ``(text, label)`` pairs:
            :func:`~.data.text_rows`; tokenized with the model's tokenizer), or data in memory as the monitors take it
            (:func:`~.data.probe_data_of`: a DataLoader, Dataset, dict of tensors, ``(inputs, labels)``
            tuple of tensors or a tensor).
        names: display names (default: file names).
        tokenizer: a Hugging Face tokenizer (or a folder holding one) for models that bring none (an
            ``nn.Module`` in memory): it reads text data (a file, a list of texts).
        **kwargs: :func:`probe_model` options (layers, pooling, k, range_max, pullback_samples, device,
            tokens, token_prompts, token_k, shuffle_control, max_tokens, keep_special_tokens, seed).

    Returns:
        :class:`GeometryReport`.
    """
    from ..loading import LoadedModel, load_model
    from .data import ProbeData, load_probe_data, probe_data_of, text_probe_data, texts_in_memory

    known_keywords("probe", kwargs, [n for n in inspect.signature(probe_model).parameters if n not in ("loaded", "data", "name", "progress")])
    defaults = {n: p.default for n, p in inspect.signature(probe_model).parameters.items() if p.default is not inspect.Parameter.empty}
    _check_options(*(kwargs.get(n, defaults[n]) for n in inspect.signature(_check_options).parameters))  # before loading anything

    items = models if isinstance(models, (list, tuple)) else [models]
    loaded = []
    for m in items:
        if isinstance(m, LoadedModel):
            loaded.append(m)
        elif isinstance(m, torch.nn.Module):
            loaded.append(LoadedModel(module=m, kind="module", source=type(m).__name__))
        else:
            loaded.append(load_model(m))
    if tokenizer is not None:
        from ..loading import load_tokenizer, padding_tokenizer

        tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else padding_tokenizer(tokenizer)
        for item in loaded:
            item.tokenizer = item.tokenizer or tok
    texts = texts_in_memory(data)
    if texts is not None:
        if loaded[0].tokenizer is None:
            raise ValueError(f"{loaded[0].source} has no tokenizer to read the texts with: pass `tokenizer=` (the one the model was trained with).")
        data = text_probe_data(*texts, loaded[0].tokenizer, source=loaded[0].source)
    elif isinstance(data, (str, os.PathLike)):
        data = load_probe_data(str(data), loaded[0])
    elif not isinstance(data, ProbeData):  # tensors, a dict, an (inputs, labels) tuple, a Dataset or DataLoader
        data = probe_data_of(data)
    token_modes(kwargs.get("tokens"))  # a bad name fails before any forward pass
    mt = kwargs.get("max_tokens", 10_000)
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 3:
        raise ValueError(f"Expected `max_tokens` to be an integer >= 3 (tokens in the pooled cloud), but got {mt!r}.")
    k = kwargs.get("k", 10)
    if data.n <= max(k, 2):
        raise ValueError(f"{data.n} samples are too few for k = {k}: use more samples or a smaller --k.")
    names = names or _names([m.source for m in loaded])
    reports = [probe_model(m, data, name=nm, progress=progress, **kwargs) for m, nm in zip(loaded, names)]
    # the values used, not only the arguments given (issue 14: the table showed None for defaults)
    settings = {key: kwargs.get(key, defaults.get(key)) for key in ("layers", "pooling", "k", "range_max", "pullback_samples", "pullback_share")}
    settings["layers"] = settings["layers"] or "hidden_states (embeddings + one per block)"
    modes = token_modes(kwargs.get("tokens"))
    if "per_prompt" in modes:
        settings.update({key: kwargs.get(key, defaults.get(key)) for key in ("token_prompts", "token_k", "shuffle_control")})
    if "pooled" in modes:
        settings.update({key: kwargs.get(key, defaults.get(key)) for key in ("max_tokens", "keep_special_tokens", "seed")})
    if modes:
        settings["tokens"] = sorted(modes)
    settings["device"] = reports[0]["device"] if reports else None
    settings["gride_scale_n1"] = next((r.get("id_n1") for m in reports for r in m["layers"] if r.get("id_n1") is not None), None)
    from .. import __version__

    settings["lightning_geom"] = __version__
    settings["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return GeometryReport(models=reports, settings=settings, data=data.description, timings={m["name"]: m["timings"] for m in reports})


def check_device(device: Any, what: str = "`device`") -> None:
    """Refuse a device this machine does not have, before any work (``what``: how the user named it)."""
    if device is None:
        return
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ValueError(f"{what} {device!r}: not a device name (cpu, cuda, cuda:1, mps, ...).")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{what} {device}: not a device name (cpu, cuda, cuda:1, mps, ...).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {device}: no CUDA device here (torch {torch.__version__}); use cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {device}: only {torch.cuda.device_count()} CUDA device(s) here.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what} {device}: MPS is not available here; use cpu.")


def _check_options(layers: Any, pullback_samples: Any, pullback_share: Any, device: Any, token_prompts: Any, token_k: Any,
                   shuffle_control: Any, keep_special_tokens: Any, seed: Any) -> None:
    """:func:`probe_model`'s options, each a one-line error before any forward pass."""
    from ..modules import layer_patterns

    layer_patterns(layers if layers != [] else None)
    if layers is not None and not isinstance(layers, (str, Sequence)):
        raise TypeError(f"Expected `layers` to be None or glob patterns of submodule names, but got {layers!r}.")
    positive_int(pullback_samples, "pullback_samples", low=0, what="a number of samples >= 0 (0: no pullback)")
    if isinstance(pullback_share, bool) or not (isinstance(pullback_share, (int, float)) and 0 < pullback_share <= 1):
        raise ValueError(f"Expected `pullback_share` in (0, 1] (1: every requested sample), but got {pullback_share!r}.")
    check_device(device)
    positive_int(token_prompts, "token_prompts")
    positive_int(token_k, "token_k")
    flag(shuffle_control, "shuffle_control")
    flag(keep_special_tokens, "keep_special_tokens")
    if as_int(seed) is None:
        raise ValueError(f"Expected `seed` to be an integer, but got {seed!r}.")


def _first_line(err: BaseException, limit: int = 400) -> str:
    """An error's first line, cut at ``limit`` characters with an ellipsis (never mid-word silently)."""
    line = (str(err).splitlines() or [""])[0].rstrip(".")
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _checkpoint_step(loaded: Any) -> int | None:
    """The global step of a Lightning checkpoint (from its file), else None."""
    src = str(getattr(loaded, "source", ""))
    if not src.endswith(".ckpt"):
        return None
    try:
        return int(torch.load(src, map_location="cpu", weights_only=False).get("global_step"))
    except Exception:  # noqa: BLE001 - the step is decoration, never a reason to fail
        return None


def _addressable(m: dict[str, Any]) -> dict[str, Any]:
    """Per-layer entries under ``layer_NN`` keys (the monitor's names) and the layer x scale ID map."""
    from ..capture import layer_name

    rows = [r for r in m["layers"] if r.get("gride")]
    ranks = list(rows[0]["gride"]["ranks"]) if rows else []
    id_map = {
        "ranks": ranks,
        "layers": [r["index"] for r in m["layers"]],
        "gride": [r["gride"]["dims"] if r.get("gride") and list(r["gride"]["ranks"]) == ranks else None for r in m["layers"]],
        "twonn": [r.get("twonn") for r in m["layers"]],
    }
    return {"by_layer": {layer_name(r["index"]): r for r in m["layers"]}, "id_map": id_map}


def _names(sources: list[str]) -> list[str]:
    """Display names: file stems, or (when two collide, e.g. two ``last.ckpt``) the shortest distinct path tails."""
    parts = [Path(s).parts or (s,) for s in sources]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) if depth > 1 else (Path(s).stem or s) for p, s in zip(parts, sources)]
        if len(set(names)) == len(names):
            return names
    return [f"{s} #{i}" for i, s in enumerate(sources)]


def esc(s: Any) -> str:
    return html.escape(str(s))
