"""Intrinsic-dimension estimators: TwoNN (Facco et al. 2017) and GRIDE (Denti et al. 2022).

Every function takes either points (N, D) or a precomputed :class:`~.neighbors.Neighbors`, so that
one kNN per representation serves every estimator, and returns a frozen dataclass.

Numbers match DADApy 0.3.4 (``Data.compute_id_2NN``, ``Data.return_id_scaling_gride``) to ~1e-9
in float64. One documented deviation: points whose nearest-neighbour distance is exactly zero
(duplicates) are dropped with one warning and the estimate is made on the rest; DADApy keeps
them (with a tiny epsilon distance), which biases TwoNN and collapses GRIDE towards 0.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .args import as_int, positive_int
from .args import discard_fraction as check_discard
from .neighbors import Neighbors, as_points, knn

__all__ = [
    "IDEstimate",
    "IDScaling",
    "twonn",
    "twonn_scaling",
    "gride",
    "gride_scaling",
    "gride_max_rank",
    "gride_pairs",
    "id_profile",
    "DuplicatePointsWarning",
    "TiedDistancesWarning",
]

_EPS64 = float(np.finfo(np.float64).eps)


class DuplicatePointsWarning(UserWarning):
    """Some points have a neighbour at distance zero and were left out of an estimate."""


class TiedDistancesWarning(UserWarning):
    """Neighbour distances tied at some scales (r_{n2} = r_{n1} for most points: a lattice, quantised
    values): the estimate there reflects the ties (inf where the likelihood has no maximum).
    ``ranks``: the n1 of those scales."""

    def __init__(self, message: str, ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.ranks = tuple(ranks)


D_MAX = 1e3  # the top of GRIDE's bracket (DADApy's): a root above it is no finite ID
TIES = (
    "most neighbour-distance ratios r_2n / r_n are exactly 1 (tied distances: a lattice, quantised or repeated "
    "coordinates), so the estimate there reflects the ties, not the data; read the ID at a larger n1"
)


def unbounded(dims: list[float], ranks: Sequence[int], estimator: str, median: Sequence[float] | None = None) -> list[float]:
    """``dims`` with estimates that have no finite maximum read as inf (GRIDE at its bracket top
    :data:`D_MAX`, TwoNN's 0 / 0 when every ratio is exactly 1), and one :class:`TiedDistancesWarning`
    naming the scales where the estimate is unbounded or above :data:`D_MAX`, or where at least half
    the ratios are tied at 1 (``median`` ratio 1: the estimate there reflects the ties, not the data's
    dimension)."""
    out = [math.inf if (d >= D_MAX * (1 - 1e-9) and estimator == "gride") or math.isnan(d) else d for d in dims]
    tied = [m <= 1.0 + 1e-12 for m in median] if median is not None else [False] * len(out)
    bad = [r for r, d, t in zip(ranks, out, tied) if d >= D_MAX or t]
    if bad:
        capped = f" (no maximum below ID {D_MAX:g}: reported as inf)" if any(math.isinf(d) for d in out) else ""
        warnings.warn(
            TiedDistancesWarning(f"{'GRIDE' if estimator == 'gride' else 'TwoNN'} at n1 = {', '.join(map(str, bad))}: {TIES}{capped}.", bad),
            stacklevel=3,
        )
    return out


@dataclass(frozen=True)
class IDEstimate:
    """One intrinsic-dimension estimate.

    Attributes:
        dim: the estimated intrinsic dimension.
        err: its standard error (see each estimator for how it is defined).
        scale: the length scale probed: mean distance of the neighbours the ratio uses.
        n_points: points that entered the estimate (after dropping duplicates).
        estimator: ``"twonn"`` or ``"gride"``.
        n1: rank of the inner neighbour of the ratio mu = r_{n2} / r_{n1}.
        n2: rank of the outer neighbour.
        n_dropped: points left out because their n1-th neighbour distance was zero.
    """

    dim: float
    err: float
    scale: float
    n_points: int
    estimator: str
    n1: int = 1
    n2: int = 2
    n_dropped: int = 0

    def to_dict(self) -> dict:
        """A plain dict (JSON-ready)."""
        return asdict(self)


@dataclass(frozen=True)
class IDScaling:
    """An intrinsic-dimension scale analysis: one row per scale, smallest scale first.

    Attributes:
        dims: estimated ID at each scale.
        errs: standard error at each scale.
        scales: mean neighbour distance probed at each scale.
        ranks: for GRIDE the inner neighbour rank n1 (n2 = 2 n1); for TwoNN decimation the subset size.
        estimator: ``"gride"`` or ``"twonn"``.
    """

    dims: tuple[float, ...]
    errs: tuple[float, ...]
    scales: tuple[float, ...]
    ranks: tuple[int, ...]
    estimator: str

    def __len__(self) -> int:
        return len(self.dims)

    def to_dict(self) -> dict:
        """A plain dict of lists (JSON-ready)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _distances(
    x: Tensor | np.ndarray | Neighbors, k: int, *, what: str
) -> tuple[Tensor, Tensor | None, int, bool, Tensor | None]:
    """(N', k) float64 neighbour distances, an optional (N',) mask of usable rows, N, whether the
    columns are distinct locations, and (for a ``Neighbors`` with copies) each column's location id.

    From points with duplicate rows, the kNN is taken over the *distinct* points (so copies do not
    fake mu = 1 for their neighbours; its columns are distinct locations) and the mask leaves out
    every point that has a copy. From a ``Neighbors`` with duplicates, all its stored columns come
    back (more than ``k``): the copies take up columns, and the ratio table counts distinct
    locations among them by the location ids (a point and the neighbours it has at distance 0 share
    one), so that two different neighbours at the same distance (a lattice, quantised values) stay two.
    """
    if isinstance(x, Neighbors):
        if x.k < k:
            raise ValueError(
                f"{what} needs the first {k} neighbours of every point, but the given `Neighbors` "
                f"holds only {x.k}. Compute them with `knn(x, k={k})` (or larger)."
            )
        if not x.all_distinct:  # every stored column: ranks count distinct locations, copies use up columns
            idx = x.indices.to(torch.int64)
            n = idx.shape[0]
            own = torch.arange(n, device=idx.device)
            location = torch.minimum(own, torch.where(x.distances == 0, idx, n).amin(dim=1))  # (N,)
            return x.distances.to(torch.float64), None, x.n_points, False, location[idx]
        return x.distances[:, :k].to(torch.float64), None, x.n_points, True, None
    pts = as_points(x)
    n = pts.shape[0]
    if n <= k:
        raise ValueError(f"{what} needs at least {k + 1} points (the {k}-th neighbour of each), but got N = {n}.")
    nb = knn(pts, k)
    if nb.all_distinct:
        return nb.distances, None, n, True, None
    uniq, counts = torch.unique(pts, dim=0, return_counts=True)
    if uniq.shape[0] <= k:
        raise ValueError(f"{what} needs at least {k + 1} distinct points, but got {uniq.shape[0]} (of N = {n}).")
    return knn(uniq, k).distances, counts == 1, n, True, None


def _ratio_table(
    x: Tensor | np.ndarray | Neighbors, pairs: list[tuple[int, int]], *, what: str
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, int]:
    """Neighbour distances r_{n1}, r_{n2} of every point at every (n1, n2) pair, as tensors.

    Returns ``(r_in, r_out, keep, n_kept, n_dropped)``: (N, S) float64 distances on the kNN's
    device, an (N, S) bool mask of usable points (None: all), the count of usable points
    per pair (host ints), and how many points were left out (warned once). One host sync.

    Without duplicates (every r_1 > 0) these are plain columns n1 and n2 (DADApy exactly). With
    duplicates, a point at distance 0 from another is dropped and, for the others, ranks count
    *distinct* neighbour locations, so that the copies of a duplicated point do not fake a ratio
    mu = 1; points with fewer than n2 distinct neighbours stored are dropped too.
    """
    r, base, n, distinct, location = _distances(x, max(p[1] for p in pairs), what=what)
    if distinct:
        cols = r[:, [p[0] - 1 for p in pairs] + [p[1] - 1 for p in pairs]]  # (N, 2S)
        if base is None:
            return cols[:, : len(pairs)], cols[:, len(pairs) :], None, [int(r.shape[0])] * len(pairs), 0
        keep = base.to(r.device).unsqueeze(1).expand(-1, len(pairs))  # the distinct points that had no copy
        n_kept = keep.sum(dim=0).tolist()
        _warn_dropped(what, n - min(n_kept), n)
        return cols[:, : len(pairs)], cols[:, len(pairs) :], keep, n_kept, n - min(n_kept)
    dev = r.device
    n1 = torch.tensor([p[0] for p in pairs], device=dev)
    n2 = torch.tensor([p[1] for p in pairs], device=dev)
    order, count = location_ranks(r, location)
    r_s = r.gather(1, order)
    last = r.shape[1] - 1
    pos_in = (count.unsqueeze(2) < n1).sum(dim=1).clamp_max(last)  # (N, S)
    pos_out = (count.unsqueeze(2) < n2).sum(dim=1).clamp_max(last)
    keep = (r[:, :1] > 0) & (count[:, -1:] >= n2)  # (N, S)
    if base is not None:
        keep = keep & base.to(dev).unsqueeze(1)
    n_kept = keep.sum(dim=0).tolist()
    dropped = n - min(n_kept)
    _warn_dropped(what, dropped, n)
    return r_s.gather(1, pos_in), r_s.gather(1, pos_out), keep, n_kept, dropped


def location_ranks(r: Tensor, location: Tensor) -> tuple[Tensor, Tensor]:
    """Distinct neighbour locations along the last dim of sorted distances ``r`` (..., k), with each
    column's location id ``location`` (copies share one): ``(order, count)``, the column order that
    puts the columns of one distance by location id (copies side by side), and per column of that
    order the count of distinct locations up to it. A column is a new location unless it repeats the
    distance and the id of the one before, so that two different neighbours at one distance (a
    lattice, quantised values) stay two; the point's own copies (distance 0) are not neighbours."""
    order = torch.argsort(location, dim=-1, stable=True)
    order = order.gather(-1, torch.argsort(r.gather(-1, order), dim=-1, stable=True))
    r_s, loc_s = r.gather(-1, order), location.gather(-1, order)
    pad = torch.nn.functional.pad
    new = (r_s > pad(r_s[..., :-1], (1, 0), value=0.0)) | (loc_s != pad(loc_s[..., :-1], (1, 0), value=-1))
    return order, (new & (r_s > 0)).cumsum(dim=-1)


def _warn_dropped(what: str, dropped: int, n: int) -> None:
    if dropped:
        warnings.warn(
            f"{what}: {dropped} of {n} points have a neighbour at distance 0 (duplicate points) or too "
            "few distinct neighbours stored, and were left out of the estimate; the other points' "
            "neighbour ranks count distinct locations. DADApy keeps duplicates and returns a biased value.",
            DuplicatePointsWarning,
            stacklevel=4,
        )


def _masked_mean(v: Tensor, keep: Tensor | None, n_kept: list[int]) -> Tensor:
    """(S,) column means of (N, S) ``v`` over the usable rows."""
    if keep is None:
        return v.mean(dim=0)
    return torch.where(keep, v, 0.0).sum(dim=0) / torch.tensor(n_kept, dtype=v.dtype, device=v.device)


def _scales(r_in: Tensor, r_out: Tensor, keep: Tensor | None, n_kept: list[int]) -> Tensor:
    """(S,) mean of r_n1 and r_n2 over the usable points: the length scale of each GRIDE ratio."""
    if keep is None:  # one stack, one mean
        return torch.stack([r_in, r_out]).mean(dim=(0, 1))
    return 0.5 * (_masked_mean(r_in, keep, n_kept) + _masked_mean(r_out, keep, n_kept))


def _column_quantiles(v: Tensor, keep: Tensor | None, n_kept: list[int], qs: tuple[float, ...]) -> Tensor:
    """(Q, S) quantiles of each column of (N, S) ``v`` over its usable rows (numpy's 'linear' rule)."""
    if keep is None:  # every column has N values: the positions are known on the host
        srt = torch.sort(v, dim=0).values
        n = v.shape[0]
        pos = [q * (n - 1) for q in qs]
        lo = [int(math.floor(p)) for p in pos]
        ends = srt[lo + [min(i + 1, n - 1) for i in lo]]  # (2Q, S)
        frac = torch.tensor([p - i for p, i in zip(pos, lo)], dtype=v.dtype, device=v.device).unsqueeze(1)
        return torch.lerp(ends[: len(qs)], ends[len(qs) :], frac)
    srt = torch.sort(torch.where(keep, v, math.inf), dim=0).values
    cnt = torch.tensor(n_kept, dtype=torch.float64, device=v.device)
    pos = torch.tensor(qs, dtype=torch.float64, device=v.device).unsqueeze(1) * (cnt - 1)  # (Q, S)
    lo = pos.floor()
    hi = torch.minimum(lo + 1, cnt - 1)
    a, b = srt.gather(0, lo.long()), srt.gather(0, hi.long())
    return a + (b - a) * (pos - lo)


def twonn(
    x: Tensor | np.ndarray | Neighbors,
    *,
    discard_fraction: float = 0.1,
    method: Literal["fit", "mle"] = "fit",
) -> IDEstimate:
    r"""TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez, Laio, Sci. Rep. 7, 2017).

    With :math:`\mu_i = r_{i,2} / r_{i,1}` Pareto(d) distributed, ``method="fit"`` sorts mu, keeps the
    smallest ``int(N (1 - discard_fraction))`` and fits :math:`-\log(1 - i/N) = d \log \mu_{(i)}`
    by least squares through the origin (N the full count), as DADApy's ``compute_id_2NN()``.
    ``method="mle"`` is :math:`d = (N - 1) / \sum_i \log \mu_i` (all points).

    Args:
        x: (N, D) points or a ``Neighbors`` with k >= 2.
        discard_fraction: fraction of the largest mu left out of the fit (DADApy: 1 - mu_fraction).
        method: ``"fit"`` or ``"mle"``.

    Returns:
        :class:`IDEstimate`; ``scale`` is the mean of r1 and r2; ``err`` is d / sqrt(N), the
        asymptotic standard error of the ML estimator.

    Warning:
        DADApy reports ``err = 0`` on the full data set; we report d / sqrt(N). Duplicate points
        (r1 = 0) are dropped with a :class:`DuplicatePointsWarning` rather than kept.

    Raises:
        ValueError: unknown method, ``discard_fraction`` outside [0, 1) (0 only with ``"mle"``),
            fewer than 3 points, or fewer than 3 non-duplicate points.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.rand(2000, 3, generator=g, dtype=torch.float64)
        >>> round(twonn(z @ torch.randn(3, 10, generator=g, dtype=torch.float64)).dim)
        3
    """
    if method not in ("fit", "mle"):
        raise ValueError(f"Expected `method` to be one of 'fit', 'mle', but got {method!r}.")
    if isinstance(discard_fraction, bool) or not isinstance(discard_fraction, numbers.Real) or not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"Expected `discard_fraction` in [0, 1), but got {discard_fraction!r}.")
    if method == "fit" and discard_fraction == 0.0:
        raise ValueError(
            "`discard_fraction=0` makes the fit's last point -log(1 - N/N) infinite; "
            "use `method='mle'` to use all points."
        )
    r_in, r_out, keep, n_kept, n_drop = _ratio_table(x, [(1, 2)], what="TwoNN")
    dim = _twonn_fit(r_in[:, 0], r_out[:, 0], None if keep is None else keep[:, 0], n_kept[0], discard_fraction, method)
    dim_f, scale_f = torch.cat([dim.reshape(1), _scales(r_in, r_out, keep, n_kept)]).tolist()
    return _twonn_estimate(unbounded([dim_f], [1], "twonn")[0], scale_f, n_kept[0], n_drop)


def _twonn_estimate(dim: float, scale: float, n: int, n_dropped: int) -> IDEstimate:
    return IDEstimate(dim=dim, err=dim / math.sqrt(n), scale=scale, n_points=n, estimator="twonn", n_dropped=n_dropped)


def _twonn_fit(r1: Tensor, r2: Tensor, keep: Tensor | None, n: int, discard_fraction: float, method: str) -> Tensor:
    """The TwoNN dimension as a 0-d tensor from (N,) r1, r2 and the usable points (``n`` of them)."""
    if n < 3:
        raise ValueError(f"TwoNN needs at least 3 non-duplicate points, but got {n}. Most points are exact copies of another (identical inputs, or a layer that maps them together): use more varied samples, or deduplicate them.")
    if keep is not None:  # duplicates: a data-dependent selection (one more sync, rare path)
        r1, r2 = r1[keep], r2[keep]
    log_mu = torch.log(r2 / r1)
    if method == "mle":
        dim = (n - 1) / log_mu.sum()
    else:  # least squares through the origin of -log(1 - i/N) on the sorted log mu
        n_eff = int(n * (1.0 - discard_fraction))
        lx = torch.sort(log_mu).values[:n_eff]
        ly = torch.from_numpy(-np.log1p(-np.arange(1, n_eff + 1, dtype=np.float64) / n)).to(lx.device)
        dim = torch.dot(lx, ly) / torch.dot(lx, lx)
    return dim


def id_profile(
    x: Tensor | np.ndarray | Neighbors, *, range_max: int = 64, discard_fraction: float = 0.1
) -> tuple[IDEstimate, IDScaling]:
    """TwoNN (``method="fit"``) and the GRIDE scale curve from one ratio table: what a monitor needs per layer.

    The same numbers as ``twonn(x, discard_fraction=...)`` and ``gride_scaling(x, range_max=...)``
    (TwoNN's ratio r2 / r1 is GRIDE's first scale), with one kNN read, one solve and one host
    transfer: a fixed, small number of launches on an accelerator.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(1000, 3, generator=g, dtype=torch.float64)
        >>> tw, curve = id_profile(z, range_max=8)
        >>> round(tw.dim), curve.ranks
        (3, (1, 2, 4))
    """
    discard_fraction = check_discard(discard_fraction)
    if not isinstance(x, Neighbors):
        x = as_points(x)
    pairs = gride_pairs(gride_max_rank(x.n_points if isinstance(x, Neighbors) else int(x.shape[0]), range_max))
    table = _ratio_table(x, pairs, what=f"GRIDE scaling (range_max={range_max})")
    r_in, r_out, keep, n_kept, n_drop = table
    dim, err, scale, median = _gride_curve(table, pairs)
    tw_dim = _twonn_fit(r_in[:, 0], r_out[:, 0], None if keep is None else keep[:, 0], n_kept[0], discard_fraction, "fit")
    vals = torch.cat([dim, err, scale, median, tw_dim.reshape(1), scale[:1]]).tolist()  # one transfer; TwoNN's scale = GRIDE's first
    s = len(pairs)
    median_f = vals[3 * s : 4 * s]
    dims, errs, scales = unbounded(vals[:s], [p[0] for p in pairs], "gride", median_f), vals[s : 2 * s], vals[2 * s : 3 * s]
    tw = _twonn_estimate(unbounded([vals[-2]], [1], "twonn", median_f[:1])[0], vals[-1], n_kept[0], n_drop)
    return tw, IDScaling(tuple(dims), tuple(errs), tuple(scales), tuple(p[0] for p in pairs), "gride")


def twonn_scaling(
    x: Tensor | np.ndarray,
    *,
    min_points: int = 10,
    discard_fraction: float = 0.1,
    method: Literal["fit", "mle"] = "fit",
    seed: int = 0,
) -> IDScaling:
    r"""TwoNN at growing length scales by decimation (Facco et al. 2017; DADApy ``return_id_scaling_2NN``).

    For subset sizes :math:`N, N/2, N/4, \dots` (rounded, larger than ``min_points``; DADApy's list),
    draw ``round(N / size)`` random subsets without replacement, estimate TwoNN on each, and report
    the mean and the standard error of the mean (std / sqrt(repeats)). Smaller subsets probe larger
    scales; ``scales`` is the mean r1, r2 distance over the repeats.

    Args:
        x: (N, D) points (decimation needs the points, not a kNN graph).
        min_points: smallest subset size kept (exclusive), as DADApy's ``n_min``.
        discard_fraction: as in :func:`twonn`.
        method: as in :func:`twonn`.
        seed: seed of the subset draws (``torch.Generator``); the full-size row does not depend on it.

    Returns:
        :class:`IDScaling` with ``ranks`` = subset sizes, largest first (smallest scale first).

    Warning:
        Subsets differ from DADApy's (different random generator); only the full-size row is
        comparable exactly, the rest statistically.

    Raises:
        TypeError: if given a ``Neighbors`` instead of points.
        ValueError: fewer than ``2 * min_points`` points... or an empty size list.
    """
    if isinstance(x, Neighbors):
        raise TypeError("`twonn_scaling` decimates the point set, so it needs the points (N, D), not `Neighbors`.")
    min_points = positive_int(min_points, "min_points", low=0)
    if as_int(seed) is None:
        raise ValueError(f"Expected `seed` to be an integer, but got {seed!r}.")
    pts = as_points(x)
    n = pts.shape[0]
    n_dec = int(math.log2(n)) - 1 if n > 1 else 0
    sizes = [int(round(n / 2**i)) for i in range(n_dec)]
    sizes = [s for s in sizes if s > max(min_points, 2)]
    if not sizes:
        raise ValueError(
            f"TwoNN decimation needs more than min_points = {min_points} points in the first subsets, "
            f"but N = {n}. Use more points or a smaller `min_points`."
        )
    gen = torch.Generator().manual_seed(seed)
    dims, errs, scales = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicatePointsWarning)
        for size in sizes:
            reps = max(1, int(round(n / size)))
            vals, rs = [], []
            for _ in range(reps):
                idx = torch.randperm(n, generator=gen)[:size].to(pts.device) if size < n else None
                sub = pts if idx is None else pts.index_select(0, idx)
                est = twonn(sub, discard_fraction=discard_fraction, method=method)
                vals.append(est.dim)
                rs.append(est.scale)
            v = np.asarray(vals)
            dims.append(float(v.mean()))
            errs.append(float(v.std() / math.sqrt(len(v))) if len(v) > 1 else 0.0)
            scales.append(float(np.mean(rs)))
    return IDScaling(tuple(dims), tuple(errs), tuple(scales), tuple(sizes), "twonn")


def _gride_solve(
    r_in: Tensor, r_out: Tensor, keep: Tensor | None, n_kept: list[int], pairs: list[tuple[int, int]],
    *, d0: float = 1e-3, d1: float = D_MAX, newton_steps: int = 1, rtol: float = 1e-10,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""GRIDE maximum-likelihood (dim, err, median ratio) at S scales at once, as tensor ops on the kNN's device.

    With :math:`L_i = \log\mu_i`, :math:`c = n_2 - n_1 - 1`, the likelihood equation is

    .. math:: f(d) = (n_2 - 1)\sum_i L_i - c \sum_i \frac{L_i}{1 - \mu_i^{-d}} - \frac{N - 1}{d} = 0,

    with :math:`f' = c \sum_i L_i^2 \mu_i^{-d} / (1 - \mu_i^{-d})^2 + (N - 1)/d^2 > 0` (the
    log-likelihood is concave in d, so the root is unique). Start: the moment estimate
    :math:`d_0 = (\psi(n_2) - \psi(n_1)) / \overline{L}` (:math:`\mu^{-d}` is Beta(n1, n2 - n1));
    then a few Newton steps in log d, all scales together, without host syncs; one sync checks
    convergence (relative step below ``rtol``), and a vectorised bisection finishes any scale that
    has not converged. DADApy's outlier filter (:math:`\mu < q_{50} + 20 (q_{95} - q_{50})`),
    its mu = 1 nudge and its bracket [1e-3, 1e3] are kept; DADApy stops its bisection at a width
    of 1e-7, so the two agree to ~1e-7 while this solves to ~1e-11. ``err`` is
    :math:`1/\sqrt{I(d)}`, the Fisher information on all (unfiltered) points.

    Args:
        r_in, r_out: (N, S) float64 distances r_{n1}, r_{n2}.
        keep: (N, S) usable points, or None (all).
        n_kept: (S,) usable points per scale (host).
        pairs: the S (n1, n2) ranks.

    Returns:
        (S,) float64 ``dim`` and ``err`` on the kNN's device.
    """
    dev = r_in.device
    consts = torch.tensor(
        [[p[1] - 1.0 for p in pairs], [p[1] - p[0] - 1.0 for p in pairs], [sum(1.0 / j for j in range(*p)) for p in pairs]],
        dtype=torch.float64,
        device=dev,
    )
    n2m1, c, harmonic = consts  # (S,) each: n2 - 1, n2 - n1 - 1, psi(n2) - psi(n1)
    mu = (r_out / r_in).clamp_min_(1.0 + 10 * _EPS64)  # DADApy nudges mu == 1 by 10 eps
    q95, q50 = _column_quantiles(mu, keep, n_kept, (0.95, 0.5))
    sel = mu < torch.lerp(q50, q95, 20.0)  # DADApy's filter: mu < q50 + 20 (q95 - q50)
    if keep is not None:
        mu = torch.where(keep, mu, 2.0)  # placeholder where unusable (masked out below)
        sel = sel & keep
    # a scale where the filter keeps no point (every ratio tied at q50 = q95): all its usable points
    sel |= ~sel.any(dim=0) if keep is None else keep & ~sel.any(dim=0)
    log_mu = torch.log(mu)
    a = log_mu * sel  # (N, S): L_i on the selected points, 0 elsewhere
    sum_a = a.sum(dim=0)
    n_sel = sel.sum(dim=0).to(torch.float64)
    nm1 = n_sel - 1.0  # (S,)
    big_a = n2m1 * sum_a
    neg_log = log_mu.neg()

    def newton_step(d: Tensor) -> Tensor:
        u, w = _gride_terms(d, neg_log, a)
        s0, s1 = w.sum(dim=0), (w * w).mul_(u).sum(dim=0)  # (S,) each
        r = nm1 / d
        f = torch.addcmul(big_a, c, s0, value=-1.0).sub_(r)  # f(d)
        d_fp = torch.addcmul(r, c * d, s1)  # d f'(d)
        return f.div_(d_fp).neg_().clamp_(-1.0, 1.0)  # Newton step in log d, at most a factor e

    dim = (harmonic * n_sel).div_(sum_a).clamp_(d0, d1)  # moment estimate
    # Newton converges quadratically from the moment estimate: a last step of size h leaves an
    # error ~h^2, so |h| <= sqrt(rtol) after the first `newton_steps` (checked with one sync) is done.
    for i in range(newton_steps + 30):
        last = newton_step(dim)
        dim = dim.mul_(last.exp()).clamp_(d0, d1)
        if i + 1 >= newton_steps and not bool((last.abs() > math.sqrt(rtol)).any()):
            break
    else:  # Newton did not settle (never seen): bisection for the unsettled scales
        dim = torch.where(last.abs() > math.sqrt(rtol), _gride_bisect(neg_log, a, big_a, c, nm1, d0, d1), dim)
    mu_d = torch.exp(dim * neg_log)
    info = (log_mu / (1.0 - mu_d).clamp_min_(5 * _EPS64)).square_().mul_(mu_d)  # (N, S)
    if keep is not None:
        info = torch.where(keep, info, 0.0)
    n_all = float(n_kept[0]) if keep is None else torch.tensor(n_kept, dtype=torch.float64, device=dev)
    fisher = torch.addcmul(n_all / dim.square(), c, info.sum(dim=0))
    return dim, fisher.rsqrt(), q50


def _gride_terms(d: Tensor, neg_log: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """u = mu^-d and w = L / (1 - mu^-d) on the selected points (DADApy clamps 1 - mu^-d at 2e-7), (N, S) each."""
    u = torch.exp(d * neg_log)
    return u, a / (1.0 - u).clamp_min_(2e-7)


def _gride_bisect(neg_log: Tensor, a: Tensor, big_a: Tensor, c: Tensor, nm1: Tensor, d0: float, d1: float, tol: float = 1e-12) -> Tensor:
    """The root of GRIDE's f(d) on [d0, d1] by bisection (all scales at once): the fallback of Newton."""
    def f(d: Tensor) -> Tensor:
        return big_a - c * _gride_terms(d, neg_log, a)[1].sum(dim=0) - nm1 / d

    lo = torch.full_like(big_a, d0)
    hi = torch.full_like(big_a, d1)
    for _ in range(int(math.ceil(math.log2((d1 - d0) / tol)))):
        mid = 0.5 * (lo + hi)
        up = f(mid) > 0  # f increases with d: the root is below mid
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    return 0.5 * (lo + hi)


def _gride_curve(table: tuple, pairs: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(S,) GRIDE dim, err, scale and median ratio mu on the device from a :func:`_ratio_table` result."""
    r_in, r_out, keep, n_kept, _ = table
    if min(n_kept) < 3:
        raise ValueError(f"GRIDE needs at least 3 non-duplicate points, but got {min(n_kept)}. Most points are exact copies of another (identical inputs, or a layer that maps them together): use more varied samples, or deduplicate them.")
    dim, err, median = _gride_solve(r_in, r_out, keep, n_kept, pairs)
    return dim, err, _scales(r_in, r_out, keep, n_kept), median


def _gride_estimates(x: Tensor | np.ndarray | Neighbors, pairs: list[tuple[int, int]], *, what: str) -> list[IDEstimate]:
    """GRIDE at each (n1, n2): one ratio table, one solve, one host transfer."""
    table = _ratio_table(x, pairs, what=what)
    n_kept, n_drop = table[3], table[4]
    dims, errs, scales, median = torch.stack(_gride_curve(table, pairs)).tolist()
    dims = unbounded(dims, [p[0] for p in pairs], "gride", median)
    return [
        IDEstimate(dim=d, err=e, scale=sc, n_points=int(k), estimator="gride", n1=p[0], n2=p[1], n_dropped=n_drop)
        for d, e, sc, k, p in zip(dims, errs, scales, n_kept, pairs)
    ]


def gride(x: Tensor | np.ndarray | Neighbors, *, n1: int = 1, n2: int | None = None) -> IDEstimate:
    r"""GRIDE maximum-likelihood intrinsic dimension (Denti, Doimo, Laio, Mira, Sci. Rep. 12, 2022).

    With :math:`\mu_i = r_{i,n_2} / r_{i,n_1}`, the log-likelihood of d is

    .. math:: \ell(d) = (N-1)\log d + \sum_i (n_2 - n_1 - 1)\log(\mu_i^d - 1)
              - \sum_i ((n_2 - 1) d + 1)\log\mu_i - \sum_i \log B(n_2 - n_1, n_1)

    maximised by bisection of :math:`\ell'(d)` on [1e-3, 1e3] after DADApy's outlier filter
    (:math:`\mu < q_{50} + 20 (q_{95} - q_{50})`). ``err`` is :math:`1/\sqrt{I(d)}`, the Fisher
    information on all (unfiltered) points. ``n1=1, n2=2`` is the TwoNN maximum-likelihood estimate.

    Args:
        x: (N, D) points or a ``Neighbors`` with k >= n2.
        n1: inner neighbour rank, >= 1.
        n2: outer neighbour rank, > n1 (default ``2 * n1``, GRIDE's scale-doubling choice).

    Returns:
        :class:`IDEstimate`; ``scale`` is the mean of r_{n1} and r_{n2}.

    Raises:
        ValueError: bad ranks, too few points for ``n2``, or fewer than 3 non-duplicate points.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(2000, 4, generator=g, dtype=torch.float64)
        >>> round(gride(z @ torch.randn(4, 16, generator=g, dtype=torch.float64), n1=4, n2=8).dim)
        4
    """
    i1 = as_int(n1)
    i2 = (None if i1 is None else 2 * i1) if n2 is None else as_int(n2)
    if i1 is None or i2 is None or not 1 <= i1 < i2:
        raise ValueError(f"Expected integer ranks 1 <= n1 < n2, but got n1={n1!r}, n2={n2!r}.")
    n1, n2 = i1, i2
    return _gride_estimates(x, [(n1, n2)], what=f"GRIDE (n1={n1}, n2={n2})")[0]


def gride_pairs(top: int) -> list[tuple[int, int]]:
    """The GRIDE scale ranks (n1, n2) = (1, 2), (2, 4), ... with n2 <= ``top`` (a power of 2)."""
    return [(2**i, 2 ** (i + 1)) for i in range(int(math.log2(top)))]


def gride_max_rank(n_points: int, range_max: int = 64) -> int:
    """Largest neighbour rank :func:`gride_scaling` uses: the largest power of 2 <= min(range_max, N - 1)."""
    r = as_int(range_max)
    if r is None:
        raise ValueError(f"Expected `range_max` to be an integer >= 2, but got {range_max!r}.")
    n = as_int(n_points)
    if n is None:
        raise ValueError(f"Expected `n_points` to be an integer, but got {n_points!r}.")
    top = min(r, n - 1)
    if top < 2:
        raise ValueError(f"GRIDE scaling needs range_max >= 2 and N >= 3 points, but got range_max={range_max}, N={n_points}.")
    return 2 ** int(math.log2(top))


def gride_scaling(x: Tensor | np.ndarray | Neighbors, *, range_max: int = 64) -> IDScaling:
    r"""GRIDE scale analysis (Denti et al. 2022; DADApy ``return_id_scaling_gride``).

    Estimates :func:`gride` at :math:`n_1 = 2^i, n_2 = 2^{i+1}` for :math:`2^{i+1} \le` range_max,
    i.e. at growing length scales; ``scales`` are the mean :math:`r_{n_1}, r_{n_2}` distances.
    Valeriani et al. (arXiv 2302.00294) read the ID where this curve is flat.

    Args:
        x: (N, D) points or a ``Neighbors`` with k >= ``gride_max_rank(N, range_max)``.
        range_max: largest neighbour rank used (capped at N - 1, rounded down to a power of 2).

    Returns:
        :class:`IDScaling` with ``ranks`` = n1 per row.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(1000, 2, generator=g, dtype=torch.float64)
        >>> s = gride_scaling(z, range_max=16)
        >>> s.ranks
        (1, 2, 4, 8)
    """
    if not isinstance(x, Neighbors):
        x = as_points(x)
    n = x.n_points if isinstance(x, Neighbors) else int(x.shape[0])
    pairs = gride_pairs(gride_max_rank(n, range_max))
    rows = _gride_estimates(x, pairs, what=f"GRIDE scaling (range_max={range_max})")
    return IDScaling(
        dims=tuple(e.dim for e in rows),
        errs=tuple(e.err for e in rows),
        scales=tuple(e.scale for e in rows),
        ranks=tuple(e.n1 for e in rows),
        estimator="gride",
    )
