"""Three-phase detection on an intrinsic-dimension profile (Valeriani et al., NeurIPS 2023, arXiv 2302.00294).

Across depth, the ID of self-supervised transformers rises to a first peak, falls to a low plateau
in the middle layers (the most semantic ones: highest label overlap), rises to a second peak and
falls again at the output. This module finds those landmarks in a profile; numbers in, dataclass out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .args import non_negative_real

__all__ = ["PhaseSummary", "three_phase"]


@dataclass(frozen=True)
class PhaseSummary:
    """Landmarks of an ID profile (layer indices into the profile).

    Attributes:
        peak1_layer, peak1: first peak: argmax of ID over the first half of depth.
        min_layer, minimum: the lowest ID after the first peak.
        plateau_layers: the contiguous span around ``min_layer`` with ID <= minimum * (1 + plateau_tol);
            empty when the ID does not rise again after the minimum (a falling tail is no plateau).
        peak2_layer, peak2: the highest ID after the minimum; None when nothing after the minimum is
            higher (a minimum is never reported as a peak).
        depth: (peak1 - minimum) / peak1, how deep the valley is relative to the first peak.
        rebound: (peak2 - minimum) / peak2, how much the ID rises again after the valley.
        is_three_phase: depth >= min_depth and rebound >= min_rebound, with peak1 < min < peak2 in depth.
    """

    peak1_layer: int
    peak1: float
    min_layer: int
    minimum: float
    plateau_layers: tuple[int, ...]
    peak2_layer: int | None
    peak2: float | None
    depth: float
    rebound: float
    is_three_phase: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plateau_layers"] = list(self.plateau_layers)
        return d


def three_phase(
    profile: Sequence[float],
    *,
    plateau_tol: float = 0.1,
    min_depth: float = 0.2,
    min_rebound: float = 0.1,
) -> PhaseSummary:
    r"""Find the first peak, the plateau/minimum and the second peak of an ID profile.

    .. math:: \text{depth} = \frac{\text{peak}_1 - \min}{\text{peak}_1}, \qquad
              \text{rebound} = \frac{\text{peak}_2 - \min}{\text{peak}_2}

    The profile is called three-phase when depth >= ``min_depth`` (default 0.2: the valley is at
    least 20% below the first peak) and rebound >= ``min_rebound`` (default 0.1: the ID climbs back
    by at least 10%), with the layers in the order peak 1 < minimum < peak 2. These thresholds are
    ours (the paper reads the profiles by eye); a flat or monotone profile is not three-phase.

    Args:
        profile: ID per layer in depth order (at least 3 finite values).
        plateau_tol: relative tolerance above the minimum that still counts as plateau.
        min_depth: smallest depth of a three-phase profile.
        min_rebound: smallest rebound of a three-phase profile.

    Returns:
        :class:`PhaseSummary`.

    Raises:
        ValueError: fewer than 3 layers, or a non-finite or non-positive value.

    Example:
        >>> s = three_phase([10, 25, 30, 18, 12, 11, 12, 20, 24, 15])
        >>> (s.peak1_layer, s.min_layer, s.peak2_layer, s.is_three_phase)
        (2, 5, 8, True)
        >>> s.plateau_layers
        (4, 5, 6)
        >>> three_phase([5, 6, 7, 8, 9]).is_three_phase
        False
        >>> falling = three_phase([8, 12, 11, 10, 9])  # minimum at the end: no second peak, no plateau
        >>> (falling.min_layer, falling.peak2_layer, falling.plateau_layers)
        (4, None, ())
    """
    plateau_tol, min_depth, min_rebound = (non_negative_real(v, n) for v, n in ((plateau_tol, "plateau_tol"), (min_depth, "min_depth"), (min_rebound, "min_rebound")))
    ids = [float(v) for v in profile]
    if len(ids) < 3:
        raise ValueError(f"Expected an ID profile of at least 3 layers, but got {len(ids)}.")
    bad = [i for i, v in enumerate(ids) if not math.isfinite(v) or v <= 0]
    if bad:
        raise ValueError(f"Expected finite, positive IDs, but layers {bad} are {[ids[i] for i in bad]}.")
    n = len(ids)
    first_half = max(1, math.ceil(n / 2))
    p1 = max(range(first_half), key=lambda i: (ids[i], -i))
    after = range(p1 + 1, n)
    m = min(after, key=lambda i: (ids[i], i)) if len(after) else p1
    lo, hi = m, m
    limit = ids[m] * (1.0 + plateau_tol)
    while lo - 1 > p1 and ids[lo - 1] <= limit:
        lo -= 1
    while hi + 1 < n and ids[hi + 1] <= limit:
        hi += 1
    tail = range(m + 1, n)
    p2 = max(tail, key=lambda i: (ids[i], -i)) if len(tail) else None
    if p2 is not None and ids[p2] <= ids[m]:
        p2 = None  # nothing rises after the minimum: no second peak
    if p2 is None:
        lo, hi = m, m - 1  # and no plateau: the profile just ends low
    depth = (ids[p1] - ids[m]) / ids[p1]
    rebound = 0.0 if p2 is None else (ids[p2] - ids[m]) / ids[p2]
    return PhaseSummary(
        peak1_layer=p1,
        peak1=ids[p1],
        min_layer=m,
        minimum=ids[m],
        plateau_layers=tuple(range(lo, hi + 1)),
        peak2_layer=p2,
        peak2=None if p2 is None else ids[p2],
        depth=depth,
        rebound=rebound,
        is_three_phase=bool(p2 is not None and depth >= min_depth and rebound >= min_rebound and p1 < m < p2),
    )
