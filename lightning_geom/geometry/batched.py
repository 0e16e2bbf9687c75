"""Geometry of many small point clouds at once: per-prompt token clouds (B clouds of up to N points).

Viswanathan, Gardinazzi, Panerai, Cazzaniga, Biagetti ("The Geometry of Tokens in Internal
Representations of Large Language Models", arXiv 2501.10573) treat each prompt's tokens at a layer
as one point cloud and compute its ID and neighbourhood overlap, for thousands of prompts and every
layer: tens of thousands of kNN problems of N ~ 1,000 points. Looping :func:`~.neighbors.knn` over
them pays per-call overhead B times; here the B clouds go through batched GEMMs (``baddbmm``) and
one ``topk``, chunked by a memory budget, with the same exactness as ``knn``: the kept candidates
are recomputed in float64 as in ``knn`` (on a CPU through the Gram identity, a cache-sized group of
clouds at a time, the difference where it could cancel) and every row is certified against the
float32 rounding bound (failing rows are redone against their whole cloud).

Clouds of unequal length (prompts of different token counts) come padded to N with ``lengths``;
padded points are never anyone's neighbour and their rows are marked (distance ``inf``, index -1).
Every estimator returns one value per cloud, as tensors.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .args import as_int, positive_int
from .args import discard_fraction as check_discard
from .intrinsic_dim import (
    D_MAX,
    TIES,
    DuplicatePointsWarning,
    TiedDistancesWarning,
    _gride_solve,
    _scales,
    gride_max_rank,
    gride_pairs,
    location_ranks,
)
from .neighbors import (
    _CPU_RECOMPUTE_BYTES,
    _GRAM_CACHE_BYTES,
    _default_margin,
    _exact_distances,
    _max_abs,
    _top,
    _uncertified,
    exact_candidates,
    matmul_unit,
    no_autocast,
    norm_tiers,
    robust_centre,
    safe_scale,
    sq_norms,
)

__all__ = ["BatchedNeighbors", "knn_batched", "id_batched", "overlap_batched"]

_BATCH_BUDGET_BYTES = 16 << 20  # scores of one chunk of clouds (B_c x N x N float32) on a CPU: cache-sized (B = 64 x 1024: 2.84 s at 256 MiB, 2.32 s at 16 MiB)


@dataclass(frozen=True)
class BatchedNeighbors:
    """The k nearest neighbours of every point of B clouds (self excluded, within its cloud).

    Attributes:
        distances: (B, N, k) float64, ascending; ``inf`` on padded rows.
        indices: (B, N, k) int64 indices into the point's own cloud; -1 on padded rows.
        lengths: (B,) int64 number of real points per cloud.
    """

    distances: Tensor
    indices: Tensor
    lengths: Tensor

    @property
    def k(self) -> int:
        return int(self.indices.shape[-1])

    def valid(self) -> Tensor:
        """(B, N) bool: which rows are real points."""
        n = self.indices.shape[1]
        return torch.arange(n, device=self.lengths.device) < self.lengths.unsqueeze(1)

    @property
    def all_distinct(self) -> bool:
        """Whether every real point's nearest neighbour is at a positive distance (no copies in any cloud)."""
        return not bool(((self.distances[..., 0] == 0) & self.valid()).any())


def _check(x: Tensor | np.ndarray, k: int, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """``x`` as a real, detached floating (B, N, D) tensor and ``lengths`` as (B,) int64, or a one-line error."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ValueError(
            f"Expected `x` to be a tensor of shape (B, N, D) (B clouds of N points), but got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}."
        )
    b, n, d = x.shape
    if b == 0 or n == 0 or d == 0:
        raise ValueError(f"Expected a non-empty (B, N, D) tensor, but got shape {tuple(x.shape)}.")
    if x.is_complex():
        raise ValueError(f"Expected `x` to be real-valued, but got {x.dtype}.")
    x = x.detach() if x.is_floating_point() else x.detach().to(torch.float32)
    if lengths is None:
        lengths = torch.full((b,), n, dtype=torch.int64, device=x.device)
    lengths = torch.as_tensor(lengths, device=x.device)
    if lengths.shape != (b,):
        raise ValueError(f"Expected `lengths` of shape ({b},) (one per cloud), but got {tuple(lengths.shape)}.")
    if lengths.is_floating_point() and not bool((lengths == lengths.round()).all()):
        raise ValueError(f"Expected integer `lengths` (points per cloud), but got {lengths.tolist()[:10]}.")
    lengths = lengths.to(torch.int64)
    lo, hi = lengths.min().item(), lengths.max().item()
    if hi > n:
        raise ValueError(f"Expected every length <= N = {n}, but the largest is {hi}.")
    k_int = as_int(k)
    if k_int is None or not 1 <= k_int <= lo - 1:
        short = torch.nonzero(lengths <= (k_int if k_int is not None else 1)).flatten().tolist()
        which = f" (clouds {short[:10]}{', ...' if len(short) > 10 else ''} have <= k points)" if short else ""
        raise ValueError(
            f"Expected `k` to be an integer in [1, shortest cloud - 1] = [1, {lo - 1}], but got {k!r}{which}."
            + (" Drop the short clouds, or lower k." if short else "")
        )
    k = k_int
    valid = None if lo == n else torch.arange(n, device=x.device) < lengths.unsqueeze(1)
    top = _max_abs(x) if valid is None else _max_abs(x[valid])  # (unpadded: no masked copy of the clouds)
    if not math.isfinite(top):
        bad = ~torch.isfinite(x).all(dim=2)
        if valid is not None:
            bad &= valid
        clouds = torch.nonzero(bad.any(dim=1)).flatten().tolist()
        raise ValueError(
            f"Expected finite values in the real (unpadded) points, but clouds {clouds[:10]}"
            f"{', ...' if len(clouds) > 10 else ''} contain NaN or Inf. Drop those clouds (or fix the model's overflow)."
        )
    return x, lengths, top


def knn_batched(
    x: Tensor,
    k: int,
    *,
    lengths: Tensor | None = None,
    margin: int | None = None,
    budget_bytes: int | None = None,
) -> BatchedNeighbors:
    r"""Exact Euclidean k nearest neighbours within each of B clouds, self excluded.

    .. math:: r_{b,i,j} = \| x_{b,i} - x_{b, n_j(b,i)} \|_2

    Candidates come from batched float32 Gram matrices (``baddbmm``) and one ``topk`` per chunk of
    clouds; the kept candidates are recomputed in float64 and certified as in
    :func:`~.neighbors.knn` (rows that fail are redone exactly against their cloud).
    Ties are broken by the smaller index.

    Args:
        x: (B, N, D) points (torch or numpy); clouds shorter than N are padded (any values) and given
            ``lengths``.
        k: neighbours per point, 1 <= k <= min(lengths) - 1.
        lengths: (B,) real points per cloud (default: all N).
        margin: extra candidates for the exact re-ranking (default ``max(4, k // 16)``; ``max(16,
            k // 2)`` where float32 matmuls run in TF32 / bf16: :func:`~.neighbors.matmul_unit`).
        budget_bytes: memory for one chunk of clouds' scores and of the exact recompute (default:
            2 GiB on accelerators; on a CPU cache-sized chunks, 16 MiB of scores and the float64
            Gram recompute by 16 MiB groups of clouds, which are faster there); the number of
            chunks, not the ops per chunk, grows with B.

    Returns:
        :class:`BatchedNeighbors` with (B, N, k) float64 ``distances`` and int64 ``indices``.

    Raises:
        ValueError: bad shapes or lengths, ``k`` too large for the shortest cloud, NaN / Inf points.

    Example:
        >>> x = torch.tensor([[[0.0], [1.0], [3.0]], [[0.0], [5.0], [0.0]]])
        >>> nb = knn_batched(x, 1, lengths=torch.tensor([3, 2]))
        >>> nb.indices[..., 0].tolist()
        [[1, 0, 1], [1, 0, -1]]
    """
    x, lengths, top = _check(x, k, lengths)
    margin = None if margin is None else positive_int(margin, "margin", low=0)
    budget_bytes = None if budget_bytes is None else positive_int(budget_bytes, "budget_bytes", what="a positive number of bytes", also="None or ")
    x, unscale = safe_scale(x, top)  # exact, see safe_scale
    with no_autocast(x.device):  # autocast would run the candidate GEMMs in half precision
        nb = _knn_batched(x, k, lengths, margin, budget_bytes)
    return nb if unscale == 1.0 else BatchedNeighbors(nb.distances * unscale, nb.indices, nb.lengths)


def _gemm_batched(bias: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``bias + a @ b`` over a batch (float32): every candidate GEMM of :func:`knn_batched` (a test seam)."""
    return torch.baddbmm(bias, a, b)


def _knn_batched(x: Tensor, k: int, lengths: Tensor, margin: int | None, budget_bytes: int | None) -> BatchedNeighbors:
    """:func:`knn_batched` on validated clouds."""
    b, n, d = x.shape
    device = x.device
    unit = matmul_unit(device)  # TF32 / bf16 float32 matmuls: a wider certificate
    kc = min(int(lengths.min()) - 1, k + (_default_margin(k, unit) if margin is None else int(margin)))
    budget = budget_bytes or (_BATCH_BUDGET_BYTES if device.type == "cpu" else 2 << 30)
    chunk = max(1, min(b, budget // max(1, n * n * 4)))
    valid = torch.arange(n, device=device) < lengths.unsqueeze(1)  # (B, N)
    padded = bool((lengths < n).any())
    mean = robust_centre(x, lengths)  # (B, D) from valid rows only; any centre works (the certificate bounds x32's rounding)
    if padded:  # padding (any values, NaN too) zeroed
        x32 = torch.where(valid.unsqueeze(2), x.to(torch.float32) - mean.unsqueeze(1).to(torch.float32), 0)  # centred in float32
    else:  # no (B, N, D) masks: at B = 32 clouds of 1024 x 768 they cost as much as the recompute
        x32 = x.to(torch.float32) - mean.unsqueeze(1).to(torch.float32)  # half / bfloat16 widened exactly first
    sq = sq_norms(x32)  # (B, N)
    cand_v = torch.empty(b, n, kc, dtype=torch.float32, device=device)
    cand_i = torch.empty(b, n, kc, dtype=torch.int64, device=device)
    two_stage = device.type == "cpu"  # the CPU's two-stage top-k (exact; 1.35x faster there), one topk on accelerators
    for s in range(0, b, chunk):
        e = min(s + chunk, b)
        # s_ij = <x_i, x_j> - |x_j|^2 / 2: larger is nearer; self and padded columns excluded
        scores = _gemm_batched((-0.5 * sq[s:e]).unsqueeze(1), x32[s:e], x32[s:e].transpose(1, 2))  # (c, N, N)
        scores.diagonal(dim1=1, dim2=2).fill_(-math.inf)
        if padded:
            scores.masked_fill_(~valid[s:e].unsqueeze(1), -math.inf)
        v, i = _top(scores.view((e - s) * n, n), kc, 0, two_stage=two_stage)  # unsorted: the recompute sorts
        cand_v[s:e], cand_i[s:e] = v.view(e - s, n, kc), i.view(e - s, n, kc)
    # exact float64 recompute of the kept candidates, all clouds as one flat point set
    offset = (torch.arange(b, device=device) * n).view(b, 1, 1)
    flat = x.reshape(b * n, d)
    rows = torch.arange(b * n, device=device)
    # cache-sized chunks on a CPU (bandwidth decides there), the clouds' budget on accelerators (launches decide)
    rc_budget = _CPU_RECOMPUTE_BYTES if device.type == "cpu" and not budget_bytes else budget
    # CPU by default: the Gram identity's sampled matmul (no (B N, C, D) gather), each cloud centred on its own
    if device.type == "cpu" and not budget_bytes:
        dist, idx = _gram_recompute(x, mean, valid if padded else None, cand_i, k)
    else:
        cols = (cand_i + offset).view(b * n, kc)
        dist, idx = exact_candidates(flat, rows, cols, cand_i.view(b * n, kc), k, budget=rc_budget, gram=False)
        dist, idx = dist.view(b, n, kc), idx.view(b, n, kc)  # (distance, index) order
    if bool((lengths > kc + 1).any()):  # some rows have non-candidates to rule out
        tiers = norm_tiers(torch.where(valid, sq, 0))  # per cloud (padding as 0: only stricter)
        uncertified = _uncertified(dist[..., k - 1], sq, cand_v.amin(dim=2), tiers, d, unit)  # the weakest kept score
        full = lengths.unsqueeze(1) > kc + 1  # rows with non-candidates left to rule out
        failed = torch.nonzero(valid & full & uncertified)
        if failed.numel():
            dist, idx = dist[..., :k].clone(), idx[..., :k].clone()
            clouds = torch.unique(failed[:, 0])
            wider = min(int(lengths[clouds].min()) - 1, 4 * kc)  # the failed clouds' candidates with 4x the margin
            if failed.shape[0] * 8 > clouds.numel() * n and wider > kc:
                # many rows of few clouds (a TF32 / bf16 GEMM's wide certificate): those clouds again with
                # 4x the margin (batched GEMMs) rather than each row against its cloud in float64
                again = _knn_batched(x[clouds], k, lengths[clouds], wider - k, budget_bytes)
                dist[clouds], idx[clouds] = again.distances, again.indices
            else:
                _redo_rows(flat, dist, idx, failed, valid, n, k, budget)
    dist, idx = dist[..., :k].contiguous(), idx[..., :k].contiguous()
    dist = dist.masked_fill(~valid.unsqueeze(2), math.inf)
    idx = idx.masked_fill(~valid.unsqueeze(2), -1)
    return BatchedNeighbors(dist, idx, lengths)


_GRAM_GROUP_BYTES = _GRAM_CACHE_BYTES  # float64 centred points per group of clouds: in cache, so never reordered


def _gram_recompute(x: Tensor, mean: Tensor, valid: Tensor | None, cand_i: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact distances of every cloud's candidates (sorted by (distance, index)), a group of clouds at a time:
    each group's float64 centred points (``_GRAM_GROUP_BYTES``, the Gram recompute's cache size) stay in cache for the Gram identity's
    sampled matmul (:func:`~.neighbors.exact_candidates`); one (B N, D) float64 copy would cost more
    in page faults and DRAM traffic than the recompute itself."""
    b, n, d = x.shape
    kc = cand_i.shape[2]
    g = max(1, min(b, _GRAM_GROUP_BYTES // max(1, n * d * 8)))
    dist = torch.empty(b, n, kc, dtype=torch.float64, device=x.device)
    idx = torch.empty(b, n, kc, dtype=torch.int64, device=x.device)
    offset = (torch.arange(g, device=x.device) * n).view(g, 1, 1)
    rows = torch.arange(g * n, device=x.device)
    buf = torch.empty(g, n, d, dtype=torch.float64, device=x.device)  # reused: fresh pages fault on every touch
    for s in range(0, b, g):
        e = min(s + g, b)
        m = e - s
        centred = buf[:m].copy_(x[s:e]).sub_(mean[s:e].unsqueeze(1))
        if valid is not None:
            centred.masked_fill_(~valid[s:e].unsqueeze(2), 0.0)
        labels = cand_i[s:e].reshape(m * n, kc)
        cols = (cand_i[s:e] + offset[:m]).view(m * n, kc)
        dd, ii = exact_candidates(
            x[s:e].reshape(m * n, d), rows[: m * n], cols, labels, k, budget=_CPU_RECOMPUTE_BYTES, gram=True, centred=centred.view(m * n, d)
        )
        dist[s:e], idx[s:e] = dd.view(m, n, kc), ii.view(m, n, kc)
    return dist, idx


def _redo_rows(flat: Tensor, dist: Tensor, idx: Tensor, failed: Tensor, valid: Tensor, n: int, k: int, budget: int) -> None:
    """Exact neighbours of the (cloud, row) pairs in ``failed`` (F, 2), against their whole cloud, in place."""
    device = flat.device
    per = max(1, min(failed.shape[0], budget // max(1, n * 8 * 4)))
    cols = torch.arange(n, device=device)
    for s in range(0, failed.shape[0], per):
        part = failed[s : s + per]
        cb, ci = part[:, 0], part[:, 1]
        exact = _exact_distances(flat, cb * n + ci, cb.unsqueeze(1) * n + cols, budget=budget)  # (r, N)
        exact.masked_fill_(~valid[cb] | (cols == ci.unsqueeze(1)), math.inf)
        best = torch.sort(exact, dim=1, stable=True)
        dist[cb, ci], idx[cb, ci] = best.values[:, :k], best.indices[:, :k]


def spread_clouds(sub: dict[str, Tensor], good: Tensor, b: int) -> dict[str, Tensor]:
    """:func:`id_batched`'s estimates of the clouds ``good`` (indices among ``b``) back at their places
    among all ``b`` clouds, NaN at the others (``ranks`` as they are)."""
    full = {}
    for key, v in sub.items():
        if key == "ranks":
            full[key] = v
            continue
        full[key] = torch.full((b, *v.shape[1:]), math.nan, dtype=v.dtype, device=v.device)
        full[key][good.to(v.device)] = v
    return full


def _as_batched(nb: BatchedNeighbors | Tensor | np.ndarray, k: int, name: str) -> BatchedNeighbors:
    """``nb`` itself, or the :func:`knn_batched` of (B, N, D) clouds with the ``k`` neighbours the caller needs."""
    if isinstance(nb, BatchedNeighbors):
        return nb
    if isinstance(nb, (Tensor, np.ndarray)):
        return knn_batched(nb, k)
    raise TypeError(f"Expected `{name}` to be the BatchedNeighbors of knn_batched(x, k) or (B, N, D) clouds, but got {type(nb).__name__}.")


def id_batched(nb: BatchedNeighbors | Tensor, *, range_max: int = 64, discard_fraction: float = 0.1) -> dict[str, Tensor]:
    """TwoNN and the GRIDE scale curve of every cloud, as tensors (one solve for all clouds and scales).

    The same numbers as ``twonn`` / ``gride_scaling`` / ``id_profile`` on each cloud's own kNN,
    duplicates included: in a cloud with duplicate points (distance 0: repeated tokens) those points
    are left out of the estimates and, for the others, neighbour ranks count distinct locations (a
    duplicated neighbour does not fake a ratio mu = 1); points with fewer than n2 distinct neighbours
    stored are left out at that scale. One :class:`DuplicatePointsWarning` counts them. A cloud left
    with fewer than 3 usable points gets NaN everywhere (one more warning counts them).

    Raises:
        ValueError: no cloud has 3 usable points.

    Returns:
        ``{"twonn": (B,), "gride": (B, S), "gride_err": (B, S), "scales": (B, S), "ranks": (S,)}``
        with GRIDE at n1 = 1, 2, 4, ... up to ``range_max / 2`` (the rank range of the shortest cloud).
    """
    discard_fraction = check_discard(discard_fraction)  # as twonn's fit
    if not isinstance(nb, BatchedNeighbors):  # clouds: the kNN that GRIDE's ranks need (knn_batched checks the shape)
        n_pts = int(nb.shape[1]) if isinstance(nb, (Tensor, np.ndarray)) and nb.ndim == 3 else 0
        nb = _as_batched(nb, gride_max_rank(n_pts, range_max) if n_pts >= 3 else 1, "nb")
    b, n, k = nb.indices.shape
    top = gride_max_rank(int(nb.lengths.min()), range_max)
    if nb.k < top:
        raise ValueError(f"GRIDE up to rank {top} needs k >= {top} neighbours, but the batch holds {nb.k}. Pass `range_max={nb.k}` or compute knn_batched with k >= {top}.")
    pairs = gride_pairs(top)
    s = len(pairs)
    r = nb.distances  # (B, N, k)
    valid = nb.valid()
    dev = r.device
    n1 = torch.tensor([p[0] for p in pairs], device=dev)
    n2 = torch.tensor([p[1] for p in pairs], device=dev)
    # ranks: plain columns in a cloud without duplicates (DADApy exactly); in a cloud with some, the
    # count of distinct neighbour locations (the single-cloud estimators' rule, cloud by cloud)
    dup_cloud = (valid & (r[..., 0] == 0)).any(dim=1)  # (B,)
    safe = torch.where(valid.unsqueeze(2), r, 1.0)  # padded rows: harmless placeholders
    if bool(dup_cloud.any()):
        # a point and its neighbours at distance 0 share a location id: ranks count locations
        idx = nb.indices.to(torch.int64)
        loc = torch.minimum(torch.arange(n, device=dev).expand(b, n), torch.where(r == 0, idx, n).amin(dim=2))  # (B, N)
        order, count = location_ranks(r, loc.gather(1, idx.clamp_min(0).view(b, n * k)).view(b, n, k))
        r, safe = r.gather(2, order), safe.gather(2, order)
        count = torch.where(dup_cloud.view(b, 1, 1), count, torch.arange(1, k + 1, device=dev))  # (B, N, k)
        pos_in = torch.searchsorted(count, n1.expand(b, n, s).contiguous()).clamp_max_(k - 1)  # first column with count >= n1
        pos_out = torch.searchsorted(count, n2.expand(b, n, s).contiguous()).clamp_max_(k - 1)
        keep = valid.unsqueeze(2) & (r[..., :1] > 0) & (count[..., -1:] >= n2)  # (B, N, S)
        g_in = torch.where(keep, safe.gather(2, pos_in), 1.0)  # (B, N, S): r_n1, r_n2 of every usable point
        g_out = torch.where(keep, safe.gather(2, pos_out), 1.0)
        dropped = int((valid.unsqueeze(2) & ~keep).any(dim=2).sum())
    else:  # no copies anywhere (the usual case): plain columns n1, n2 (the count above doubles the time)
        keep = valid.unsqueeze(2).expand(b, n, s)
        g_in, g_out = safe.index_select(2, n1 - 1), safe.index_select(2, n2 - 1)
        dropped = 0
    if dropped:
        warnings.warn(
            f"{dropped} points have a duplicate in their cloud (distance 0) or too few distinct neighbours stored, "
            "and were left out of their cloud's ID; the other points' neighbour ranks count distinct locations.",
            DuplicatePointsWarning,
            stacklevel=2,
        )
    n_kept = keep.sum(dim=1)  # (B, S)
    few = n_kept.amin(dim=1) < 3
    if bool(few.all()):
        raise ValueError(f"Every cloud needs at least 3 non-duplicate points with enough distinct neighbours, but the most any has is {int(n_kept.amin(dim=1).max())}.")
    if bool(few.any()):  # those clouds get NaN; the others are measured as if alone
        good = torch.nonzero(~few).flatten()
        warnings.warn(
            f"{int(few.sum())} of {b} clouds have fewer than 3 distinct points; their ID is NaN.",
            DuplicatePointsWarning,
            stacklevel=2,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DuplicatePointsWarning)  # the duplicates were counted above
            sub = id_batched(
                BatchedNeighbors(nb.distances[good], nb.indices[good], nb.lengths[good]),
                range_max=range_max, discard_fraction=discard_fraction,
            )
        return spread_clouds(sub, good, b)
    r_in = g_in.permute(1, 0, 2).reshape(n, b * s)  # (N, B*S): column = (cloud, scale)
    r_out = g_out.permute(1, 0, 2).reshape(n, b * s)
    keep_cols = keep.permute(1, 0, 2).reshape(n, b * s)
    counts = n_kept.reshape(-1).tolist()
    dim, err, _ = _gride_solve(r_in, r_out, keep_cols, counts, pairs * b)
    scales = _scales(r_in, r_out, keep_cols, counts).view(b, s)
    # TwoNN (fit) per cloud: sorted log mu of the usable points (scale 1: r2 / r1), least squares through the origin
    k0 = keep[..., 0]
    log_mu = torch.where(k0, torch.log(g_out[..., 0] / g_in[..., 0]), math.inf)
    srt = torch.sort(log_mu, dim=1).values  # usable values first
    nk = n_kept[:, 0].to(torch.float64).unsqueeze(1)
    n_eff = torch.floor(nk * (1.0 - discard_fraction))
    pos = torch.arange(1, n + 1, device=r.device, dtype=torch.float64).unsqueeze(0)
    use = pos <= n_eff
    lx = torch.where(use, srt, 0.0)
    ly = torch.where(use, -torch.log1p(-(pos / nk).clamp_max(1 - 1e-16)), 0.0)
    twonn = (lx * ly).sum(1) / (lx * lx).sum(1)
    # tied distances (every ratio 1): TwoNN's 0 / 0 and GRIDE's root above its bracket are no finite ID
    twonn = twonn.nan_to_num(nan=math.inf, posinf=math.inf)
    dim = torch.where(dim >= D_MAX * (1 - 1e-9), math.inf, dim)
    unbounded = torch.isinf(dim.view(b, s)).any(dim=1) | torch.isinf(twonn)
    if bool(unbounded.any()):
        warnings.warn(
            TiedDistancesWarning(f"{int(unbounded.sum())} of {b} clouds (e.g. {int(unbounded.nonzero()[0])}) have an unbounded ID at some scale: {TIES} (reported as inf)."),
            stacklevel=2,
        )
    return {
        "twonn": twonn,
        "gride": dim.view(b, s),
        "gride_err": err.view(b, s),
        "scales": scales,
        "ranks": torch.tensor([p[0] for p in pairs]),
    }


def overlap_batched(a: BatchedNeighbors | Tensor, b: BatchedNeighbors | Tensor, *, k: int = 10) -> Tensor:
    r"""Neighbourhood overlap :math:`\chi_k` of two representations of the same clouds, per cloud: (B,).

    .. math:: \chi_k^{(b)} = \frac{1}{n_b} \sum_{i < n_b} \frac{1}{k} |\mathcal{N}^a_k(b, i) \cap \mathcal{N}^b_k(b, i)|

    ``a`` and ``b``: the :func:`knn_batched` of each representation, or the (B, N, D) clouds themselves.
    """
    a, b = _as_batched(a, k, "a"), _as_batched(b, k, "b")
    if a.indices.shape[:2] != b.indices.shape[:2] or not torch.equal(a.lengths, b.lengths):
        raise ValueError("Expected the two neighbour sets to describe the same clouds (shapes and lengths).")
    if not 1 <= k <= min(a.k, b.k):
        raise ValueError(f"Expected k in [1, {min(a.k, b.k)}], but got {k}.")
    ia, ib = a.indices[..., :k], b.indices[..., :k].to(a.indices.device)
    hit = (ia.unsqueeze(3) == ib.unsqueeze(2)).any(dim=3).sum(dim=2).to(torch.float64) / k  # (B, N)
    valid = a.valid()
    return torch.where(valid, hit, 0.0).sum(dim=1) / a.lengths.to(torch.float64)
