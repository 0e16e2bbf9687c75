"""Plateaus and change points of an intrinsic-dimension profile, robust across GRIDE scales.

A profile (ID per layer, with its standard errors) is segmented into plateaus by penalised weighted
least squares (optimal partitioning, Jackson et al. 2005; the objective of the ``ruptures``
package's ``Pelt``/``Dynp`` with an L2 cost): minimise

.. math:: \\sum_{s} \\sum_{i \\in s} \\left(\\frac{d_i - \\bar d_s}{\\sigma_i}\\right)^2 + \\beta \\, (S - 1)

over segmentations into S contiguous segments, :math:`\\bar d_s` the error-weighted mean of a
segment. The error bars are the noise level: a split must buy more than :math:`\\beta` (default
:math:`3 \\log L`, L layers, so that pure noise is rarely split) and separate means that differ by
at least ``min_jump`` (relative; default 5 %, so that a gradual trend measured with tiny error bars
is not cut into a staircase). The dynamic programme is exact and O(L^2): L is a few dozen layers.

The same profile read at several GRIDE scales can disagree (Issue 11: real LLMs' curves cross). A
change point is **robust** when the segmentations of a majority of scales put one within +-1
layer of it. Pure functions, numbers in, frozen dataclasses out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .args import as_int, non_negative_real, positive_int

__all__ = ["Segmentation", "RobustChangePoints", "segment_profile", "robust_change_points"]


@dataclass(frozen=True)
class Segmentation:
    """A profile cut into plateaus.

    Attributes:
        change_points: index of the first layer of every segment after the first (ascending).
        segments: (first layer, last layer, error-weighted mean) of every segment, in depth order.
        cost: the penalised objective at the optimum.
    """

    change_points: tuple[int, ...]
    segments: tuple[tuple[int, int, float], ...]
    cost: float

    def jumps(self) -> tuple[float, ...]:
        """Ratio of each segment's mean to the previous one's (x1.9 = the ID nearly doubles)."""
        return tuple(b[2] / a[2] if a[2] else math.inf for a, b in zip(self.segments, self.segments[1:]))


@dataclass(frozen=True)
class RobustChangePoints:
    """Change points found at most scales, and the plateaus they delimit at the headline scale.

    Attributes:
        change_points: robust change points (first layer of the new plateau), ascending.
        support: for each, the fraction of scales whose segmentation has one within +-1 layer.
        jumps: for each, the ratio of the plateau means after / before it (headline scale).
        plateaus: (first layer, last layer, mean ID) between consecutive robust change points.
        n_scales: number of scales segmented.
    """

    change_points: tuple[int, ...]
    support: tuple[float, ...]
    jumps: tuple[float, ...]
    plateaus: tuple[tuple[int, int, float], ...]
    n_scales: int

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples as lists)."""
        return {k: [list(v) if isinstance(v, tuple) else v for v in x] if isinstance(x, tuple) else x for k, x in asdict(self).items()}


def _check(values: Sequence[float], errs: Sequence[float] | None) -> tuple[list[float], list[float]]:
    v = [float(x) for x in values]
    if not v:
        raise ValueError("Expected a non-empty profile.")
    bad = [i for i, x in enumerate(v) if not math.isfinite(x)]
    if bad:
        raise ValueError(f"Expected finite values, but layers {bad} are not finite.")
    if errs is None:
        return v, [1.0] * len(v)
    e = [float(x) for x in errs]
    if len(e) != len(v):
        raise ValueError(f"Expected one error per layer ({len(v)}), but got {len(e)}.")
    if any(not math.isfinite(x) or x <= 0 for x in e):
        raise ValueError("Expected positive, finite errors (standard errors of the IDs).")
    return v, e


def _fit(v: list[float], w: list[float], cuts: list[int]) -> tuple[tuple[tuple[int, int, float], ...], float]:
    """Segments (first, last, weighted mean) for the cut positions, and their weighted residual sum."""
    bounds = [0, *cuts, len(v)]
    segs, rss = [], 0.0
    for a, b in zip(bounds, bounds[1:]):
        sw = sum(w[a:b])
        m = sum(wi * x for wi, x in zip(w[a:b], v[a:b])) / sw
        rss += sum(wi * (x - m) ** 2 for wi, x in zip(w[a:b], v[a:b]))
        segs.append((a, b - 1, m))
    return tuple(segs), rss


def segment_profile(
    values: Sequence[float],
    errs: Sequence[float] | None = None,
    *,
    penalty: float | None = None,
    min_jump: float = 0.05,
) -> Segmentation:
    """Optimal plateau segmentation of a profile by penalised weighted least squares.

    Args:
        values: (L,) the profile (ID per layer, depth order).
        errs: (L,) standard errors (the noise level); None weighs every layer 1.
        penalty: cost of one more segment, in units of chi-square; default ``3 log L`` (at least 2).
        min_jump: smallest relative difference between neighbouring plateau means; closer
            neighbours are merged (the weakest first) and the means refitted.

    Returns:
        :class:`Segmentation`.

    Raises:
        ValueError: empty profile, non-finite values, errors of the wrong length or not positive.

    Example:
        >>> s = segment_profile([5.0, 5.1, 4.9, 10.0, 10.2, 9.9, 6.0, 6.1], [0.2] * 8)
        >>> s.change_points
        (3, 6)
        >>> [round(m, 2) for _, _, m in s.segments]
        [5.0, 10.03, 6.05]
    """
    penalty = None if penalty is None else non_negative_real(penalty, "penalty")
    min_jump = non_negative_real(min_jump, "min_jump")
    v, e = _check(values, errs)
    n = len(v)
    w = [1.0 / x**2 for x in e]
    beta = max(2.0, 3.0 * math.log(n)) if penalty is None else float(penalty)
    # prefix sums of w, w x, w x^2: the weighted residual sum of any segment in O(1)
    pw, px, pxx = [0.0], [0.0], [0.0]
    for wi, x in zip(w, v):
        pw.append(pw[-1] + wi)
        px.append(px[-1] + wi * x)
        pxx.append(pxx[-1] + wi * x * x)

    def cost(a: int, b: int) -> float:  # layers a .. b-1
        sw, sx = pw[b] - pw[a], px[b] - px[a]
        return max(0.0, (pxx[b] - pxx[a]) - sx * sx / sw)

    best = [0.0] + [math.inf] * n
    prev = [0] * (n + 1)
    for t in range(1, n + 1):
        for s in range(t):
            c = best[s] + cost(s, t) + (beta if s > 0 else 0.0)
            if c < best[t]:
                best[t], prev[t] = c, s
    cuts, t = [], n
    while t > 0:
        if prev[t] > 0:
            cuts.append(prev[t])
        t = prev[t]
    cuts.sort()
    segs, rss = _fit(v, w, cuts)
    while len(segs) > 1:  # merge plateaus closer than min_jump, the weakest jump first
        rel = [abs(b[2] - a[2]) / max(abs(a[2]), abs(b[2]), 1e-12) for a, b in zip(segs, segs[1:])]
        i = min(range(len(rel)), key=rel.__getitem__)
        if rel[i] >= min_jump:
            break
        cuts.pop(i)
        segs, rss = _fit(v, w, cuts)
    return Segmentation(tuple(cuts), segs, rss + beta * len(cuts))


def _significant(
    curves: Sequence[Sequence[float]], errs: Sequence[Sequence[float]] | None, cuts: list[int], min_jump: float
) -> list[int]:
    """The cuts whose plateau means differ by at least ``min_jump`` (relative) at a majority of scales.

    Each scale's plateaus are refitted with the common cuts; the cut with the smallest median
    relative jump among those that fail is dropped and the rest refitted, until every cut passes
    (a staircase found on a gentle trend at some scales is not reported as a change).
    """
    cuts = list(cuts)
    while cuts:
        rel: list[list[float]] = []  # (cut, scale)
        for j, c in enumerate(curves):
            w = [1.0] * len(c) if errs is None else [1.0 / x**2 for x in errs[j]]
            segs, _ = _fit([float(x) for x in c], w, cuts)
            rel.append([abs(b[2] - a[2]) / max(abs(a[2]), abs(b[2]), 1e-12) for a, b in zip(segs, segs[1:])])
        per_cut = [sorted(r[i] for r in rel) for i in range(len(cuts))]
        failing = [i for i, r in enumerate(per_cut) if 2 * sum(x >= min_jump for x in r) <= len(r)]
        if not failing:
            break
        cuts.pop(min(failing, key=lambda i: per_cut[i][len(per_cut[i]) // 2]))
    return cuts


def robust_change_points(
    curves: Sequence[Sequence[float]],
    errs: Sequence[Sequence[float]] | None = None,
    *,
    headline: int = 0,
    tolerance: int = 1,
    **kwargs: float,
) -> RobustChangePoints:
    """Change points that the segmentations of a majority of scales agree on (within ``tolerance`` layers).

    Args:
        curves: (S, L) the profile at S scales (e.g. GRIDE at n1 = 1, 2, 4, ...), each in depth order.
        errs: (S, L) their standard errors, or None.
        headline: which scale's means describe the plateaus (the one the monitor logs).
        tolerance: layers of slack when matching change points across scales.
        **kwargs: :func:`segment_profile` options (``penalty``, ``min_jump``).

    Returns:
        :class:`RobustChangePoints`; with one scale, its own change points (support 1).

    Example:
        >>> up = [5.0] * 6 + [10.0] * 6
        >>> r = robust_change_points([up, [x * 1.1 for x in up], [4.0] * 12], [[0.3] * 12] * 3)
        >>> r.change_points, r.support, [round(j, 1) for j in r.jumps]
        ((6,), (0.67,), [2.0])
    """
    if not curves:
        raise ValueError("Expected at least one scale's profile.")
    n = len(curves[0])
    if any(len(c) != n for c in curves):
        raise ValueError("Expected every scale's profile to have the same number of layers.")
    if as_int(headline) is None or not 0 <= as_int(headline) < len(curves):
        raise ValueError(f"Expected `headline` in [0, {len(curves) - 1}], but got {headline!r}.")
    headline = int(headline)
    tolerance = positive_int(tolerance, "tolerance", low=0)
    segs = [segment_profile(c, None if errs is None else errs[j], **kwargs) for j, c in enumerate(curves)]
    s = len(segs)
    candidates = sorted({cp for sg in segs for cp in sg.change_points})

    def support(c: int) -> int:
        return sum(any(abs(cp - c) <= tolerance for cp in sg.change_points) for sg in segs)

    def exact(c: int) -> int:
        return sum(c in sg.change_points for sg in segs)

    chosen: list[int] = []
    # strongest first (within the tolerance, then where most scales put it exactly), then non-max suppression
    for c in sorted(candidates, key=lambda c: (-support(c), -exact(c), c)):
        if 2 * support(c) > s and all(abs(c - o) > tolerance for o in chosen):
            chosen.append(c)
    chosen.sort()
    chosen = _significant(curves, errs, chosen, kwargs.get("min_jump", 0.05))
    w = [1.0] * n if errs is None else [1.0 / x**2 for x in errs[headline]]
    plateaus, _ = _fit([float(x) for x in curves[headline]], w, chosen)
    jumps = tuple(b[2] / a[2] if a[2] else math.inf for a, b in zip(plateaus, plateaus[1:]))
    return RobustChangePoints(
        change_points=tuple(chosen),
        support=tuple(round(support(c) / s, 2) for c in chosen),
        jumps=jumps,
        plateaus=plateaus,
        n_scales=s,
    )
