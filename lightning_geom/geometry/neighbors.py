"""Exact Euclidean k-nearest neighbours: blocked float32 matmul + ``topk``, exact float64 recompute.

The floor of every geometry estimator is the distance GEMM (N x N x D multiply-adds). ``knn`` spends
its time there and wastes little after it:

1. centre the points (float64 mean), cast to float32 and compute, block of rows by block of rows,
   the ranking score ``s_ij = <x_i, x_j> - |x_j|^2 / 2`` with one ``addmm`` (so that
   ``|x_i - x_j|^2 = |x_i|^2 - 2 s_ij``), and keep the ``k + margin`` best candidates with ``topk``;
2. recompute the kept distances exactly, as the norm of the *difference* of the points in float64,
   so that near-duplicates are not turned into zeros or garbage by the cancellation in
   ``|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>`` (a known failure of float32 TwoNN on N = 10k, D = 768 embeddings);
3. certify each row: the exact k-th distance must lie below the float32 estimate of the last
   candidate minus a rounding-error bound; a row that fails (rare) is recomputed exactly against
   all points. The result is the exact kNN graph, not an approximation.

Memory stays O(block x N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Neighbors", "knn", "as_points"]

_F32_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class Neighbors:
    """The k nearest neighbours of N points (self excluded).

    Attributes:
        distances: (N, k) float64 Euclidean distances, ascending along each row.
        indices: (N, k) int64 indices of the neighbours into the point set.
    """

    distances: Tensor
    indices: Tensor

    @property
    def k(self) -> int:
        """Number of neighbours per point."""
        return int(self.indices.shape[1])

    @property
    def n_points(self) -> int:
        """Number of points N."""
        return int(self.indices.shape[0])

    def head(self, k: int) -> Neighbors:
        """The first ``k`` neighbours of every point (a view, no copy).

        Raises:
            ValueError: if ``k`` exceeds the number of stored neighbours.
        """
        if not 1 <= k <= self.k:
            raise ValueError(
                f"Expected `k` in [1, {self.k}] (the neighbours stored), but got {k}. "
                f"Compute `knn(x, k={k})` to have more."
            )
        return Neighbors(self.distances[:, :k], self.indices[:, :k])

    def to(self, device: torch.device | str) -> Neighbors:
        """The same neighbours on another device."""
        return Neighbors(self.distances.to(device), self.indices.to(device))


def as_points(x: Tensor | np.ndarray, *, name: str = "x") -> Tensor:
    """Validate a point cloud and return it as a floating torch tensor (no copy when possible).

    Args:
        x: (N, D) array-like of points, numpy or torch, any float (or integer) dtype.
        name: the argument's name, used in error messages.

    Returns:
        (N, D) floating tensor on ``x``'s device (integers become float32).

    Raises:
        TypeError: if ``x`` is not a tensor or numpy array.
        ValueError: if ``x`` is not 2-d, is empty, or contains NaN / Inf (the message names the rows).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(
            f"Expected `{name}` to be a torch.Tensor or numpy.ndarray of shape (N, D), "
            f"but got {type(x).__name__}."
        )
    if x.ndim != 2:
        raise ValueError(
            f"Expected `{name}` to have shape (N, D), but got shape {tuple(x.shape)}. "
            "Pool token dimensions first (e.g. mean over tokens)."
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"Expected `{name}` to be non-empty, but got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"Expected `{name}` to contain only finite values, but {len(rows)} of {x.shape[0]} rows "
            f"contain NaN or Inf (rows [{shown}])."
        )
    return x


def _default_block(n: int, device: torch.device) -> int:
    # ~32 MiB of float32 scores per block on CPU (cache friendly), ~1 GiB on accelerators.
    budget = (1 << 23) if device.type == "cpu" else (1 << 28)
    return max(1, min(n, budget // max(n, 1)))


def _exact_distances(x64: Tensor, rows: Tensor, cols: Tensor, *, chunk: int = 16) -> Tensor:
    """|x_i - x_j| in float64 for i in ``rows`` (R,), j in ``cols`` (R, C); returns (R, C)."""
    out = torch.empty(cols.shape, dtype=torch.float64, device=x64.device)
    c = cols.shape[1]
    for s in range(0, rows.shape[0], chunk):
        e = min(s + chunk, rows.shape[0])
        nb = x64.index_select(0, cols[s:e].reshape(-1)).view(e - s, c, -1)  # (r, C, D)
        nb.sub_(x64.index_select(0, rows[s:e]).unsqueeze(1))
        out[s:e] = torch.linalg.vector_norm(nb, dim=-1)
    return out


def _sort_rows(dist: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (distance, index): deterministic order among exact ties."""
    by_index = torch.argsort(idx, dim=1)
    dist, idx = dist.gather(1, by_index), idx.gather(1, by_index)
    order = torch.sort(dist, dim=1, stable=True).indices
    return dist.gather(1, order), idx.gather(1, order)


def knn(x: Tensor | np.ndarray, k: int, *, block_size: int | None = None, margin: int | None = None) -> Neighbors:
    r"""Exact Euclidean k nearest neighbours of every point, self excluded.

    .. math:: r_{i,j} = \| x_i - x_{n_j(i)} \|_2, \quad r_{i,1} \le r_{i,2} \le \dots \le r_{i,k}

    Candidates come from a blocked float32 ``addmm`` + ``topk`` on ``x``'s device; the kept
    distances are recomputed exactly (difference of the points in float64) and every row is
    certified against the float32 rounding bound (rows that fail are redone exactly).
    Ties are broken by the smaller index.

    Args:
        x: (N, D) points, numpy or torch, any float dtype.
        k: number of neighbours, 1 <= k <= N - 1.
        block_size: rows per block (default: ~32 MiB of scores on CPU, ~1 GiB on GPU).
        margin: extra candidates kept for the exact re-ranking (default ``max(4, k // 8)``).

    Returns:
        :class:`Neighbors` with (N, k) float64 ``distances`` and int64 ``indices`` on ``x``'s device.

    Raises:
        ValueError: bad shape, NaN / Inf rows, or ``k`` outside [1, N - 1].

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
        >>> nb = knn(x, 2)
        >>> nb.indices.tolist()
        [[1, 2], [0, 2], [1, 0], [2, 1]]
        >>> nb.distances[2].tolist()
        [2.0, 3.0]
    """
    x = as_points(x)
    n, d = x.shape
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n - 1:
        raise ValueError(
            f"Expected `k` to be an integer in [1, N - 1] = [1, {n - 1}] for N = {n} points, but got {k!r}."
        )
    device = x.device
    kc = min(n - 1, k + (max(4, k // 8) if margin is None else int(margin)))
    block = int(block_size) if block_size else _default_block(n, device)

    x64 = x.to(torch.float64)  # exact distances: differences of the points as given
    x32 = (x64 - x64.mean(dim=0, keepdim=True)).to(torch.float32)  # centred: less cancellation
    sq = (x32 * x32).sum(dim=1)  # (N,)
    neg_half_sq = (-0.5 * sq).unsqueeze(0)  # (1, N)

    cand_idx = torch.empty(n, kc, dtype=torch.int64, device=device)
    cand_score = torch.empty(n, kc, dtype=torch.float32, device=device)
    for s in range(0, n, block):
        e = min(s + block, n)
        scores = torch.addmm(neg_half_sq, x32[s:e], x32.T)  # (b, N): <x_i,x_j> - |x_j|^2/2
        scores[torch.arange(e - s, device=device), torch.arange(s, e, device=device)] = -math.inf
        top = torch.topk(scores, kc, dim=1, largest=True, sorted=True)
        cand_score[s:e], cand_idx[s:e] = top.values, top.indices
        del scores

    rows = torch.arange(n, device=device)
    dist = _exact_distances(x64, rows, cand_idx)
    dist, idx = _sort_rows(dist, cand_idx)

    if kc < n - 1:
        # Certificate: every non-candidate j has est_ij >= est_last (topk), and
        # |est - exact^2| <= bound, so exact^2 >= est_last - bound >= kth^2 proves the row.
        est_last = sq - 2.0 * cand_score[:, -1].to(torch.float64)
        bound = 8.0 * _F32_EPS * math.sqrt(d) * (sq.to(torch.float64) + sq.max().to(torch.float64))
        kth = dist[:, k - 1]
        failed = torch.nonzero(kth * kth > est_last - bound).flatten()
        if failed.numel():
            full = rows.unsqueeze(0).expand(failed.numel(), n)
            exact = _exact_distances(x64, failed, full, chunk=1)
            exact[torch.arange(failed.numel(), device=device), failed] = math.inf
            dfix, ifix = _sort_rows(exact, full.clone())
            dist[failed], idx[failed] = dfix[:, :kc], ifix[:, :kc]
    return Neighbors(dist[:, :k].contiguous(), idx[:, :k].contiguous())
