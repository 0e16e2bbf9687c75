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
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .neighbors import Neighbors, as_points, knn

__all__ = [
    "IDEstimate",
    "IDScaling",
    "twonn",
    "twonn_scaling",
    "gride",
    "gride_scaling",
    "gride_max_rank",
    "DuplicatePointsWarning",
]

_EPS64 = float(np.finfo(np.float64).eps)


class DuplicatePointsWarning(UserWarning):
    """Some points have a neighbour at distance zero and were left out of an estimate."""


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


def _distances(x: Tensor | np.ndarray | Neighbors, k: int, *, what: str) -> tuple[Tensor, Tensor | None, int]:
    """(N', k) float64 neighbour distances, an optional (N',) mask of usable rows, and N.

    From points with duplicate rows, the kNN is taken over the *distinct* points (so copies do not
    fake mu = 1 for their neighbours) and the mask leaves out every point that has a copy.
    """
    if isinstance(x, Neighbors):
        if x.k < k:
            raise ValueError(
                f"{what} needs the first {k} neighbours of every point, but the given `Neighbors` "
                f"holds only {x.k}. Compute them with `knn(x, k={k})` (or larger)."
            )
        return x.distances[:, :k].to(torch.float64), None, x.n_points
    pts = as_points(x)
    n = pts.shape[0]
    if n <= k:
        raise ValueError(f"{what} needs at least {k + 1} points (the {k}-th neighbour of each), but got N = {n}.")
    nb = knn(pts, k)
    if bool((nb.distances[:, 0] > 0).all()):
        return nb.distances, None, n
    uniq, counts = torch.unique(pts, dim=0, return_counts=True)
    if uniq.shape[0] <= k:
        raise ValueError(f"{what} needs at least {k + 1} distinct points, but got {uniq.shape[0]} (of N = {n}).")
    return knn(uniq, k).distances, counts == 1, n


def _ratio_pairs(r: Tensor, n1: int, n2: int) -> tuple[Tensor, Tensor, Tensor]:
    """(r_n1, r_n2, keep) from (N, >= n2) ascending float64 distances, robust to duplicate points.

    Without duplicates (every r_1 > 0) these are plain columns n1 and n2 (DADApy exactly). With
    duplicates, a point at distance 0 from another is dropped (``keep`` False) and, for the others,
    ranks count *distinct* neighbour locations, so that the copies of a duplicated point do not
    fake a ratio mu = 1; points with fewer than n2 distinct neighbours stored are dropped too.
    """
    if bool((r[:, 0] > 0).all()):
        keep = torch.ones(r.shape[0], dtype=torch.bool, device=r.device)
        return r[:, n1 - 1], r[:, n2 - 1], keep
    prev = torch.nn.functional.pad(r[:, :-1], (1, 0), value=0.0)
    distinct = r > prev  # (N, k): a new neighbour location
    count = distinct.cumsum(dim=1)  # distinct locations up to each column
    keep = (r[:, 0] > 0) & (count[:, -1] >= n2)
    pos_in = (count < n1).sum(dim=1, keepdim=True).clamp_max(r.shape[1] - 1)
    pos_out = (count < n2).sum(dim=1, keepdim=True).clamp_max(r.shape[1] - 1)
    return r.gather(1, pos_in).squeeze(1), r.gather(1, pos_out).squeeze(1), keep


def _ratios(x: Tensor | np.ndarray | Neighbors, pairs: list[tuple[int, int]], *, what: str) -> tuple[list, int]:
    """[(r_n1, r_n2)] on the usable points for each (n1, n2), and how many points were left out (warned once)."""
    r, base, n = _distances(x, max(p[1] for p in pairs), what=what)
    out, dropped = [], 0
    for n1, n2 in pairs:
        r_in, r_out, keep = _ratio_pairs(r, n1, n2)
        if base is not None:
            keep = keep & base
        dropped = max(dropped, n - int(keep.sum()))
        out.append((r_in[keep], r_out[keep]))
    if dropped:
        warnings.warn(
            f"{what}: {dropped} of {n} points have a neighbour at distance 0 (duplicate points) or too "
            "few distinct neighbours stored, and were left out of the estimate; the other points' "
            "neighbour ranks count distinct locations. DADApy keeps duplicates and returns a biased value.",
            DuplicatePointsWarning,
            stacklevel=3,
        )
    return out, dropped


def _twonn_from_mu(mu: Tensor, discard_fraction: float, method: str) -> tuple[float, float]:
    """(dim, err) from the ratios mu (N,) float64: least-squares fit or maximum likelihood."""
    n = mu.numel()
    log_mu = torch.log(mu)
    if method == "mle":
        dim = (n - 1) / float(log_mu.sum())
    else:
        n_eff = int(n * (1.0 - discard_fraction))
        x = torch.sort(log_mu).values[:n_eff]
        y = -torch.log1p(-torch.arange(1, n_eff + 1, dtype=torch.float64, device=mu.device) / n)
        dim = float((x * y).sum() / (x * x).sum())
    return dim, dim / math.sqrt(n)


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
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"Expected `discard_fraction` in [0, 1), but got {discard_fraction}.")
    if method == "fit" and discard_fraction == 0.0:
        raise ValueError(
            "`discard_fraction=0` makes the fit's last point -log(1 - N/N) infinite; "
            "use `method='mle'` to use all points."
        )
    ((r1, r2),), n_drop = _ratios(x, [(1, 2)], what="TwoNN")
    if r1.numel() < 3:
        raise ValueError(f"TwoNN needs at least 3 non-duplicate points, but got {r1.numel()}.")
    dim, err = _twonn_from_mu(r2 / r1, discard_fraction, method)
    return IDEstimate(
        dim=dim,
        err=err,
        scale=float(0.5 * (r1.mean() + r2.mean())),
        n_points=int(r1.numel()),
        estimator="twonn",
        n_dropped=n_drop,
    )


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


def _gride_many(mus: list[Tensor], pairs: list[tuple[int, int]], *, d0: float = 1e-3, d1: float = 1e3, tol: float = 1e-7) -> list[tuple[float, float]]:
    """(dim, err) for several GRIDE scales at once (DADApy's algorithm, vectorised over scales).

    Per scale: nudge mu == 1 by 10 eps, keep mu < q50 + 20 (q95 - q50), find the root of dlogL/dd by
    bisection on [d0, d1] (all scales share the bracket, so they need the same number of halvings),
    err = 1 / sqrt(Fisher information) on all (unfiltered) points.
    """
    s = len(mus)
    n = max(int(m.numel()) for m in mus)
    mu = np.full((n, s), np.nan)
    for j, m in enumerate(mus):
        mu[: m.numel(), j] = m.detach().cpu().numpy()
    valid = ~np.isnan(mu)
    mu = np.where(mu == 1.0, mu + 10 * _EPS64, mu)
    q95, q50 = np.nanpercentile(mu, [95, 50], axis=0)
    with np.errstate(invalid="ignore"):
        sel = valid & (mu < 20.0 * (q95 - q50) + q50)
    safe = np.where(valid, mu, 2.0)  # placeholder where invalid (masked out below)
    log_mu = np.log(safe)
    n1 = np.array([p[0] for p in pairs], dtype=np.float64)
    n2 = np.array([p[1] for p in pairs], dtype=np.float64)
    n_sel = sel.sum(axis=0)

    def neg_dloglik(d: np.ndarray) -> np.ndarray:
        one_m = np.maximum(1.0 - safe ** (-d), 2 * tol)
        terms = ((1 - n2 + n1) / one_m + n2 - 1.0) * log_mu
        return np.where(sel, terms, 0.0).sum(axis=0) - (n_sel - 1) / d

    lo, hi = np.full(s, d0), np.full(s, d1)
    f_hi = neg_dloglik(hi)
    while abs(lo[0] - hi[0]) > tol:
        mid = 0.5 * (lo + hi)
        up = neg_dloglik(mid) * f_hi > 0
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    dim = 0.5 * (lo + hi)
    mu_d = safe ** (-dim)
    one_m = np.maximum(1.0 - mu_d, 5 * _EPS64)
    fisher = valid.sum(axis=0) / dim**2 + np.where(valid, (n2 - n1 - 1) * (log_mu / one_m) ** 2 * mu_d, 0.0).sum(axis=0)
    return [(float(dim[j]), float(fisher[j] ** -0.5)) for j in range(s)]


def _gride_estimates(ratios: list[tuple[Tensor, Tensor]], pairs: list[tuple[int, int]], n_dropped: int) -> list[IDEstimate]:
    """GRIDE at each (n1, n2) from the usable points' (r_n1, r_n2) (float64)."""
    for r_in, _ in ratios:
        if r_in.numel() < 3:
            raise ValueError(f"GRIDE needs at least 3 non-duplicate points, but got {r_in.numel()}.")
    fits = _gride_many([r_out / r_in for r_in, r_out in ratios], pairs)
    return [_gride_at(r_in, r_out, n1, n2, n_dropped, dim, err) for (r_in, r_out), (n1, n2), (dim, err) in zip(ratios, pairs, fits)]


def _gride_at(r_in: Tensor, r_out: Tensor, n1: int, n2: int, n_dropped: int, dim: float, err: float) -> IDEstimate:
    return IDEstimate(
        dim=dim,
        err=err,
        scale=float(0.5 * (r_in.mean() + r_out.mean())),
        n_points=int(r_in.numel()),
        estimator="gride",
        n1=n1,
        n2=n2,
        n_dropped=n_dropped,
    )


def gride(x: Tensor | np.ndarray | Neighbors, *, n1: int = 1, n2: int = 2) -> IDEstimate:
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
        n2: outer neighbour rank, > n1.

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
    if not (isinstance(n1, int) and isinstance(n2, int) and 1 <= n1 < n2):
        raise ValueError(f"Expected integer ranks 1 <= n1 < n2, but got n1={n1!r}, n2={n2!r}.")
    ratios, n_drop = _ratios(x, [(n1, n2)], what=f"GRIDE (n1={n1}, n2={n2})")
    return _gride_estimates(ratios, [(n1, n2)], n_drop)[0]


def gride_max_rank(n_points: int, range_max: int = 64) -> int:
    """Largest neighbour rank :func:`gride_scaling` uses: the largest power of 2 <= min(range_max, N - 1)."""
    top = min(int(range_max), int(n_points) - 1)
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
    n = x.n_points if isinstance(x, Neighbors) else int(x.shape[0])
    top = gride_max_rank(n, range_max)
    pairs = [(2**i, 2 ** (i + 1)) for i in range(int(math.log2(top)))]
    ratios, n_drop = _ratios(x, pairs, what=f"GRIDE scaling (range_max={range_max})")
    rows = _gride_estimates(ratios, pairs, n_drop)
    return IDScaling(
        dims=tuple(e.dim for e in rows),
        errs=tuple(e.err for e in rows),
        scales=tuple(e.scale for e in rows),
        ranks=tuple(e.n1 for e in rows),
        estimator="gride",
    )
