"""The geometry of a whole layer profile, from captured features: pure, shared by the monitor and the probe.

Per layer, one kNN (k = the largest rank any estimator needs) serves TwoNN, the GRIDE scale curve,
the ID at the chosen scale, the label overlap, and the neighbourhood overlap with the next layer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .geometry import (
    Copies,
    DuplicatePointsWarning,
    IDScaling,
    Neighbors,
    TiedDistancesWarning,
    as_points,
    expand_copies,
    find_copies,
    gride_max_rank,
    gride_pairs,
    id_profile,
    knn,
    label_overlap,
    neighborhood_overlap,
    robust_change_points,
    three_phase,
)
from .geometry.args import as_int
from .geometry.intrinsic_dim import D_MAX, TIES

__all__ = [
    "GeometrySettings", "choose_scale", "layer_geometry", "profile_geometry", "finish_profile", "profile_phases", "layer_errors",
    "token_geometry",
]


@dataclass(frozen=True)
class GeometrySettings:
    """What to compute per layer.

    Attributes:
        range_max: largest GRIDE neighbour rank of the scale curve (capped at N - 1).
        id_n1: GRIDE inner rank of the reported ID, or ``"auto"``: each layer's first stable scale
            (:func:`choose_scale`), then their median used for every layer of the profile.
        overlap_k: k of the neighbourhood overlap with the next layer (Doimo et al.'s code: 10).
        label_k: k of the label overlap.
    """

    range_max: int = 64
    id_n1: int | str = "auto"
    overlap_k: int = 10
    label_k: int = 10

    def __post_init__(self) -> None:
        for name in ("range_max", "id_n1", "overlap_k", "label_k"):  # numpy / 0-d tensor integers as ints
            v = getattr(self, name)
            if not isinstance(v, (bool, str)) and as_int(v) is not None:
                object.__setattr__(self, name, as_int(v))
        if not (self.id_n1 == "auto" or (isinstance(self.id_n1, int) and not isinstance(self.id_n1, bool) and self.id_n1 >= 1)):
            raise ValueError(f"Expected `id_n1` to be 'auto' or a positive integer, but got {self.id_n1!r}.")
        for name in ("range_max", "overlap_k", "label_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Expected `{name}` to be a positive integer, but got {v!r}.")
        if self.range_max < 2:  # the scale curve's first pair is (1, 2)
            raise ValueError(f"Expected `range_max` to be an integer >= 2 (GRIDE's first scale is n1 = 1, n2 = 2), but got {self.range_max}.")


def choose_scale(curve: IDScaling, *, tol: float = 0.1, avoid: Sequence[int] = ()) -> int:
    """Index of the scale where the GRIDE curve is stable (Valeriani et al. read the ID there).

    The first scale from n1 = 2 on whose relative change to the next scale is below ``tol``;
    if none is, the one with the smallest relative change; a one-scale curve gives 0. Scales whose
    n1 is in ``avoid`` (tied distances: :class:`~.geometry.TiedDistancesWarning`) or whose ID is not
    finite are taken only when no other is left.
    """
    d = curve.dims
    if len(d) < 2:
        return 0
    change = [abs(d[i + 1] - d[i]) / max(abs(d[i]), 1e-12) for i in range(len(d) - 1)]
    # an unbounded or tied scale is never the stable one
    change = [c if math.isfinite(c) and curve.ranks[i] not in avoid else math.inf for i, c in enumerate(change)]
    start = 1 if len(change) > 1 else 0
    for i in range(start, len(change)):
        if change[i] < tol:
            return i
    return min(range(start, len(change)), key=change.__getitem__)


def layer_k(n: int, settings: GeometrySettings) -> int:
    """Neighbours one layer's kNN needs: the largest GRIDE rank, the overlap k and the label k.

    Raises:
        ValueError: ``n`` points are too few for that many neighbours.
    """
    k = max(gride_max_rank(n, settings.range_max), settings.overlap_k, settings.label_k, 2)
    if n <= k:
        raise ValueError(f"{n} probe samples are too few for k = {k} neighbours; use more samples or smaller k.")
    return k


KnnFn = Callable[[Tensor, int], Neighbors]


def _finite_features(x: Tensor) -> Tensor:
    """:func:`as_points` of a layer's features; NaN / Inf features get the likely cause added."""
    try:
        return as_points(x, name="features")
    except ValueError as err:
        if "finite" not in str(err):
            raise
        raise ValueError(f"{err} The model's outputs are not finite here: has training diverged (a NaN loss), or overflowed in float16?") from None


def layer_geometry(
    x: Tensor, labels: Tensor | None, settings: GeometrySettings, *, neighbors: Neighbors | None = None,
    knn_fn: KnnFn = knn,
) -> tuple[dict[str, Any], Tensor | None]:
    """All per-layer numbers from (N, D) features: a JSON-ready record and the (N, overlap_k) kNN indices.

    ``neighbors``: the layer's kNN with :func:`layer_k` neighbours when already computed; by default
    ``knn_fn(x, layer_k(N))``. ``knn_fn``: the kNN every step uses (default :func:`knn`; the
    monitor passes :func:`~lightning_geom.geometry.knn_split` under DDP, so that each rank computes a
    share of the rows; every rank must then call this with the same ``x``). A layer with exact copies
    takes one ``knn_fn`` of its distinct points, expanded to every point.

    Raises:
        ValueError: NaN/Inf features, too few samples, labels of the wrong length (from the core).
    """
    n = int(x.shape[0])
    k = layer_k(n, settings)
    copies = find_copies(_finite_features(x)) if neighbors is None else None
    with warnings.catch_warnings(record=True) as caught:  # the estimators' notes go into the record
        warnings.simplefilter("always", DuplicatePointsWarning)
        warnings.simplefilter("always", TiedDistancesWarning)
        if copies is not None:  # one kNN, of the distinct locations, serves the ID and (expanded) every point
            tw, curve, dup, nb = _copies_geometry(x, copies, k, settings, knn_fn)
        elif (nb := knn_fn(x, k) if neighbors is None else neighbors).all_distinct:
            tw, curve = id_profile(nb, range_max=settings.range_max)
            dup = None
        else:  # copies (an LM's token embeddings; a causal LM's tokens after a shared prefix) would use up the
            # columns of ``nb``: the ID of the distinct locations, as DADApy's remove_identical_points does
            tw, curve, dup = _distinct_id(x, settings)
    notes = [dup] if dup else []
    ties, tied_ranks = [], set()
    for w in caught:
        if issubclass(w.category, TiedDistancesWarning):
            ties.append(str(w.message).split(": ", 1)[0])  # "GRIDE at n1 = 1, 2" / "TwoNN at n1 = 1"
            if str(w.message).startswith("GRIDE"):
                tied_ranks |= set(getattr(w.message, "ranks", ()))
        elif issubclass(w.category, DuplicatePointsWarning):
            notes = notes or [str(w.message)]
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if ties:
        inf = f" (no maximum below ID {D_MAX:g}: inf)" if any(math.isinf(v) for v in (*curve.dims, tw.dim)) else ""
        notes.append(f"{' and '.join(dict.fromkeys(ties))}: {TIES}{inf}.")
    dup = " ".join(notes) or None
    if settings.id_n1 == "auto":
        i = choose_scale(curve, avoid=tied_ranks)
    else:
        if settings.id_n1 not in curve.ranks:
            raise ValueError(f"`id_n1={settings.id_n1}` is not a scale of the GRIDE curve {curve.ranks}.")
        i = curve.ranks.index(settings.id_n1)
    rec: dict[str, Any] = {
        "n_points": n,
        "id": curve.dims[i],
        "id_err": curve.errs[i],
        "id_n1": curve.ranks[i],
        "id_scale": curve.scales[i],
        "twonn": tw.dim,
        "twonn_err": tw.err,
        "gride": curve.to_dict(),
        "label_overlap": None,
        "overlap_next": None,
        "warning": dup,
        "error": None,
    }
    if tied_ranks:
        rec["tied_n1"] = sorted(tied_ranks)  # GRIDE scales whose ratios are mostly tied (not read as the layer's ID)
    if labels is not None:
        rec["label_overlap"] = label_overlap(nb, labels, k=settings.label_k)
    return rec, nb.indices[:, : settings.overlap_k].clone()


def _copies_geometry(
    x: Tensor, copies: Copies, k: int, settings: GeometrySettings, knn_fn: KnnFn = knn
) -> tuple[Any, Any, str, Neighbors]:
    """TwoNN, the GRIDE curve and the warning of the distinct locations, and the kNN of every point:
    from one kNN of the M distinct points (``expand_copies``), or a second, full one where an exact
    distance tie between locations leaves the copies' order open."""
    m = int(copies.points.shape[0])
    note = _distinct_note(int(x.shape[0]), m)
    nb_u = knn_fn(copies.points, min(m - 1, k + 1))
    tw, curve = id_profile(nb_u, range_max=settings.range_max)
    nb = expand_copies(nb_u, copies, k) if nb_u.k >= k + 1 else None
    if nb is None:
        nb = knn_fn(x, k)
    return tw, curve, note, nb


def _distinct_note(n: int, m: int) -> str:
    """The layer's warning for ``m`` distinct points among ``n``; a one-line error when too few remain."""
    if m < 4:
        raise ValueError(
            f"only {m} distinct points among {n}: the layer maps (nearly) every sample to the same vector; "
            "use more varied samples."
        )
    return f"{n - m} of {n} points are exact copies of another: the ID is that of the {m} distinct points."


def _distinct_id(x: Tensor, settings: GeometrySettings) -> tuple[Any, Any, str]:
    """TwoNN and the GRIDE curve of the distinct rows of ``x`` (each location once), and the warning."""
    uniq = torch.unique(x, dim=0)
    note = _distinct_note(int(x.shape[0]), int(uniq.shape[0]))
    tw, curve = id_profile(uniq, range_max=settings.range_max)
    return tw, curve, note


def profile_geometry(
    features: Sequence[Tensor],
    labels: Tensor | None,
    settings: GeometrySettings,
    *,
    layers: Sequence[int] | None = None,
    on_error: str = "warn",
    neighbors: dict[int, Neighbors] | None = None,
    knn_fn: KnnFn = knn,
) -> list[dict[str, Any]]:
    """Per-layer records for the chosen layers (default all); ``neighbors`` gives precomputed kNNs
    of some layers (index -> :class:`Neighbors` with :func:`layer_k` neighbours); ``knn_fn`` computes
    the others (see :func:`layer_geometry`).

    With ``on_error="warn"`` a failing layer gets ``error`` set (its cause, one line) and the
    others go on; with ``"raise"`` the first failure propagates with its traceback.
    Each record carries ``_indices`` (its kNN indices) for :func:`finish_profile`.

    Raises:
        ValueError: unknown ``on_error``; with ``on_error="raise"``, whatever a layer raised.
    """
    if on_error not in ("warn", "raise"):
        raise ValueError(f"Expected `on_error` to be one of 'warn', 'raise', but got {on_error!r}.")
    out = []
    for li in range(len(features)) if layers is None else layers:
        try:
            rec, idx = layer_geometry(features[li], labels, settings, neighbors=(neighbors or {}).get(li), knn_fn=knn_fn)
        except Exception as err:
            if on_error == "raise":
                raise
            rec, idx = {"error": f"{type(err).__name__}: {err}"}, None
        rec["index"] = li
        rec["_indices"] = idx
        out.append(rec)
    return out


def layer_errors(records: Sequence[dict[str, Any]]) -> list[str]:
    """``"layer_NN: cause"`` for every failed layer record; layers failing with the same cause share one
    entry (``"layer_00, layer_01, layer_02: cause"``), so a cause common to all is said once."""
    by_cause: dict[str, list[str]] = {}
    for r in records:
        if r.get("error"):
            by_cause.setdefault(str(r["error"]), []).append(f"layer_{r['index']:02d}")
    return [f"{', '.join(names)}: {cause}" for cause, names in by_cause.items()]


def _common_scale(records: list[dict[str, Any]]) -> None:
    """Report every layer's ID at one GRIDE rank: the median of the layers' stable ranks.

    One scale for the whole profile, as Valeriani et al. do, so that the profile's shape is not an
    artefact of each layer reading its curve at a different rank.
    """
    ok = [r for r in records if not r.get("error") and r.get("gride")]
    if not ok:
        return
    picks = sorted(r["gride"]["ranks"][choose_scale(_curve(r), avoid=r.get("tied_n1", ()))] for r in ok)
    n1 = picks[(len(picks) - 1) // 2]
    for r in ok:
        g = r["gride"]
        i = g["ranks"].index(n1) if n1 in g["ranks"] else len(g["ranks"]) - 1
        r.update(id=g["dims"][i], id_err=g["errs"][i], id_n1=g["ranks"][i], id_scale=g["scales"][i])


def _curve(r: dict[str, Any]) -> IDScaling:
    g = r["gride"]
    return IDScaling(tuple(g["dims"]), tuple(g["errs"]), tuple(g["scales"]), tuple(g["ranks"]), g["estimator"])


def finish_profile(records: list[dict[str, Any]], settings: GeometrySettings) -> tuple[list[dict[str, Any]], dict | None]:
    """Sort records by layer, add the overlap with the next layer, drop kNN indices, and detect the phases."""
    records = sorted(records, key=lambda r: r["index"])
    for a, b in zip(records, records[1:]):
        ia, ib = a.get("_indices"), b.get("_indices")
        if ia is not None and ib is not None:
            k = settings.overlap_k
            a["overlap_next"] = neighborhood_overlap(
                Neighbors(torch.zeros(ia.shape, dtype=torch.float64, device=ia.device), ia),
                Neighbors(torch.zeros(ib.shape, dtype=torch.float64, device=ib.device), ib),
                k=k,
            )
    for r in records:
        r.pop("_indices", None)
    if settings.id_n1 == "auto":
        _common_scale(records)
    return records, profile_phases(records)


def profile_phases(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The three-phase summary of the layers that have an ID; failed layers are left out and named.

    Landmarks are layer indices (not positions among the measured layers); ``left_out`` lists the
    layers without an ID. None when fewer than 3 layers have one.
    """
    ok = [(r["index"], r["id"]) for r in records if isinstance(r.get("id"), float) and math.isfinite(r["id"]) and r["id"] > 0]
    if len(ok) < 3:
        return None
    layer = [i for i, _ in ok]
    phase = three_phase([v for _, v in ok]).to_dict()
    for key in ("peak1_layer", "min_layer", "peak2_layer"):
        if phase[key] is not None:
            phase[key] = layer[phase[key]]
    phase["plateau_layers"] = [layer[p] for p in phase["plateau_layers"]]
    phase["left_out"] = sorted({r["index"] for r in records} - set(layer))
    phase.update(_robust_segments([r for r in records if r["index"] in set(layer)]))
    return phase


def _robust_segments(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Plateaus and change points of the GRIDE profile that most scales agree on (as layer indices).

    Keys: ``change_points`` (first layer of each new plateau), ``change_support`` (fraction of
    scales), ``jumps`` (plateau mean ratio after / before), ``plateaus`` ([first, last, mean ID]
    at the reported scale), ``n_change_points``, and the highest plateau's first layer and mean
    (``high_id_onset``, ``high_id_height``; None for a single plateau). Empty when the layers'
    scale curves differ.
    """
    curves = [r.get("gride") or {} for r in records]
    ranks = [tuple(c.get("ranks", ())) for c in curves]
    if not ranks or not ranks[0] or len(set(ranks)) != 1:
        return {}
    n_scales = len(ranks[0])
    ids = [[c["dims"][j] for c in curves] for j in range(n_scales)]  # (S, L)
    errs = [[max(c["errs"][j], 1e-9) for c in curves] for j in range(n_scales)]
    if not all(math.isfinite(v) for row in ids + errs for v in row):
        return {}
    n1 = records[0].get("id_n1")
    head = ranks[0].index(n1) if n1 in ranks[0] else 0
    rc = robust_change_points(ids, errs, headline=head)
    layer = [r["index"] for r in records]
    plateaus = [[layer[a], layer[b], m] for a, b, m in rc.plateaus]
    high = max(plateaus, key=lambda p: p[2]) if len(plateaus) > 1 else None  # the high-ID phase, if the profile has phases
    return {
        "change_points": [layer[c] for c in rc.change_points],
        "change_support": list(rc.support),
        "jumps": list(rc.jumps),
        "plateaus": plateaus,
        "n_change_points": len(rc.change_points),
        # Cheng et al. (arXiv 2405.15471): an earlier onset of the high-ID phase goes with better language modelling
        "high_id_onset": None if high is None else high[0],
        "high_id_height": None if high is None else high[2],
    }


def _distinct_token_ids(x: Tensor, nb: Any, k: int, layer: int) -> dict[str, Tensor]:
    """``id_batched`` of each prompt's distinct tokens (a layer where tokens repeat exactly: the token
    embeddings), as the pooled cloud and DADApy's remove_identical_points do; prompts with <= k distinct
    tokens get NaN. One :class:`DuplicatePointsWarning` gives the count."""
    from .geometry import id_batched, knn_batched
    from .geometry.batched import spread_clouds
    from .geometry.copies import distinct_clouds

    xu, lu = distinct_clouds(x, nb.lengths)
    ok = lu > k
    n_tokens, n_copies = int(nb.lengths.sum()), int((nb.lengths - lu).sum())
    warnings.warn(
        f"layer {layer}: {n_copies} of {n_tokens} tokens are exact copies of another token of their prompt: "
        f"each prompt's ID is that of its distinct tokens ({int((~ok).sum())} prompts with <= k = {k} distinct tokens have none).",
        DuplicatePointsWarning,
        stacklevel=3,
    )
    if not bool(ok.any()):  # no prompt has an ID at this layer: NaN for all (the record says n_prompts 0)
        ranks = torch.tensor([p[0] for p in gride_pairs(gride_max_rank(k + 1, k))])  # id_batched's scales
        nan = torch.full((ok.shape[0], len(ranks)), math.nan, dtype=torch.float64, device=x.device)
        return {"twonn": nan[:, 0].clone(), "gride": nan, "gride_err": nan.clone(), "scales": nan.clone(), "ranks": ranks}
    sub = id_batched(knn_batched(xu[ok], k, lengths=lu[ok]), range_max=k)
    return spread_clouds(sub, torch.nonzero(ok).flatten(), int(ok.shape[0]))  # NaN where too few distinct tokens


def token_geometry(
    features: Sequence[Tensor], lengths: Tensor, *, k: int = 8, overlap_k: int = 4, n1: int | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Per-prompt token geometry of every layer (Viswanathan et al., arXiv 2501.10573): each prompt's
    tokens at a layer are one point cloud; per layer, the mean and spread over prompts.

    Args:
        features: per layer, (P, T, D) token clouds right-padded to T (``capture(..., pooling="tokens")``).
        lengths: (P,) real tokens per prompt.
        k: neighbours per token (GRIDE scales n1 = 1, 2, ... up to k / 2); prompts with <= k tokens are left out.
            A layer where tokens repeat exactly within a prompt (the token embeddings) measures each
            prompt's ID on its distinct tokens (a prompt with <= k of them has none there), as the
            pooled cloud does; the overlaps keep every token.
        overlap_k: k of the per-prompt overlap with the next layer.
        n1: the GRIDE rank of ``token_id`` (default: 2, or the largest available).

    Returns:
        (per-layer records with ``token_id``, ``token_id_std``, ``token_twonn``, ``token_overlap_next``,
        ``n_prompts`` (prompts with an ID at that layer) and ``per_prompt`` (each kept prompt's ID, in
        prompt order; None for a prompt with fewer than 3 distinct tokens there)), and how many prompts
        were too short (kept prompts: ``lengths > k``).

    Raises:
        ValueError: no prompt has more than ``k`` tokens.
    """
    from .geometry import id_batched, knn_batched, overlap_batched

    keep = lengths > k
    dropped = int((~keep).sum())
    if not bool(keep.any()):
        raise ValueError(f"No prompt has more than k = {k} tokens (longest: {int(lengths.max())}); use longer prompts or a smaller k.")
    lens = lengths[keep]
    nbs, out = [], []
    for li, x in enumerate(features):
        x = x[keep.to(x.device)]
        nb = knn_batched(x, k, lengths=lens.to(x.device))
        est = id_batched(nb, range_max=k) if nb.all_distinct else _distinct_token_ids(x, nb, k, li)
        ranks = est["ranks"].tolist()
        j = ranks.index(n1) if n1 in ranks else ranks.index(2) if 2 in ranks else len(ranks) - 1
        every = est["gride"][:, j]
        ok = torch.isfinite(every)  # a prompt with too few distinct tokens at this layer has no ID (NaN)
        ids = every[ok]
        some = ids.numel() > 0  # else None: no prompt has an ID at this layer
        out.append({
            "index": li,
            "token_id": float(ids.mean()) if some else None,
            "token_id_std": (float(ids.std()) if ids.numel() > 1 else 0.0) if some else None,
            "token_id_n1": ranks[j],
            "token_twonn": float(est["twonn"][ok].mean()) if some else None,
            "token_overlap_next": None,
            "n_prompts": int(ids.numel()),
            # GRIDE of each kept prompt, None where it has no ID (for correlations with per-prompt quantities)
            "per_prompt": [v if v == v else None for v in every.tolist()],
        })
        nbs.append(nb)
    for a, b, rec in zip(nbs, nbs[1:], out):
        rec["token_overlap_next"] = float(overlap_batched(a, b, k=min(overlap_k, k)).mean())
    return out, dropped
