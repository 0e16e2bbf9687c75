"""Point clouds with exact copies: find them, and the kNN of all points from that of the distinct ones.

A language model's token states hold exact copies (token embeddings; in a causal LM every token after
a shared prefix). The ID is measured on the distinct locations (DADApy's ``remove_identical_points``),
and the overlaps need the kNN of every point. Both come from one kNN of the M distinct locations:

    point i at location u: first the other copies of u (distance 0), then the copies of u's distinct
    neighbours v_1, v_2, ... (distance |u - v_j|), each group's copies in index order,

with exact ties between distinct locations merged by point index (the order :func:`knn` gives). Where
such a tie falls on a row's k-th neighbour the distinct kNN cannot decide which copies come first, and
:func:`expand_copies` says so (None): the caller computes the full kNN.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .neighbors import Neighbors, _sort_rows, point_tensor

__all__ = ["Copies", "find_copies", "expand_copies", "distinct_clouds", "row_keys"]

_KEY_CHUNK_BYTES = 64 << 20  # distinct_clouds sorts chunks of clouds of about this size
_KEY_COLUMNS = 64  # row_keys hashes this many coordinates (evenly spread)


@dataclass(frozen=True)
class Copies:
    """The distinct rows of a cloud: ``points`` (M, D), ``inverse`` (N,) the location of every point,
    ``counts`` (M,) the copies of every location."""

    points: Tensor
    inverse: Tensor
    counts: Tensor


def row_keys(x: Tensor) -> Tensor:
    """A float64 key per row of ``x`` (..., N, D) from the bits of (up to) 64 fixed coordinates: rows
    with different keys are different rows, exactly; equal keys are to be confirmed on the rows.

    key = sum_j w_j b_j over the 16-bit words b_j of those coordinates, with fixed random integer
    weights small enough that every partial sum is an integer below 2^53: float64 adds them exactly,
    so the key does not depend on the summation order a matrix-vector kernel picks (a plain float
    dot product gave copies of one row different keys at different positions). One small gather and
    a GEMV (find_copies with its sort of the keys: ~0.7 ms at N = 2,000, D = 768). Signed zeros are
    made one (x + 0.0 turns -0.0 into 0.0), so rows that compare equal have equal bits.
    """
    cols, w = _key_plan(int(x.shape[-1]), x.element_size(), str(x.device))
    words = (x.index_select(-1, cols) + 0.0).contiguous().view(torch.int16)  # (..., N, W) exact 16-bit words
    return words.to(torch.float64) @ w


@functools.lru_cache(maxsize=64)
def _key_plan(d: int, element_size: int, device: str) -> tuple[Tensor, Tensor]:
    """:func:`row_keys`' coordinates and weights for rows of ``d`` values of ``element_size`` bytes."""
    cols = torch.linspace(0, d - 1, min(d, _KEY_COLUMNS)).round().long().unique()
    width = int(cols.numel()) * element_size // 2  # 16-bit words per row
    wbits = 52 - 15 - max(1, width - 1).bit_length()  # |w b| < 2^(15 + wbits), W of them: < 2^52
    g = torch.Generator(device="cpu").manual_seed(0x5EED)
    w = torch.randint(1, 2**wbits, (width,), generator=g, dtype=torch.int64).to(torch.float64)
    return cols.to(device), w.to(device)


def find_copies(x: Tensor | np.ndarray) -> Copies | None:
    """The distinct rows of ``x`` (N, D) when some rows are exact copies of others, else None.

    A cheap screen first (:func:`row_keys` and a sort of N keys): rows with distinct keys are
    distinct, so a cloud without copies (the usual case) skips the lexicographic ``unique`` of the
    rows (~10 % of a kNN at N = 2,000, D = 768). Repeated keys go to ``torch.unique(dim=0)``, which
    decides. Integer and bool points are compared as float32 (as :func:`~.neighbors.as_points` reads them).

    Raises:
        TypeError, ValueError: not (N, D) points with D >= 1, complex, or a meta tensor (:func:`~.neighbors.point_tensor`).
    """
    x = point_tensor(x)  # no read of the values: finiteness is the kNN's check
    n = int(x.shape[0])
    if int(torch.unique(row_keys(x)).numel()) == n:
        return None
    points, inverse, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
    if points.shape[0] == n:
        return None
    return Copies(points, inverse, counts)


def distinct_clouds(x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Each cloud's distinct points, first occurrences in their order: ((B, M, D) right-padded with
    zeros, (B,) distinct counts). ``x`` (B, N, D) holds ``lengths`` (B,) real points per cloud.

    Rows are sorted by :func:`row_keys` within each cloud (stably) and a row equal to the one before it
    is a copy; a cloud where two different rows share a key (the rule could miss a copy) is redone
    with ``torch.unique(dim=0)``. Clouds are processed in chunks of at most ``_KEY_CHUNK_BYTES`` of
    sorted rows. A cloud without copies comes back unchanged.
    """
    b, n, d = x.shape
    device = x.device
    valid = torch.arange(n, device=device) < lengths.to(device).unsqueeze(1)
    keep = torch.zeros(b, n, dtype=torch.bool, device=device)
    per = max(1, _KEY_CHUNK_BYTES // max(1, n * d * x.element_size()))
    for s in range(0, b, per):
        xc, vc = x[s : s + per], valid[s : s + per]
        keys = row_keys(xc)
        # padded rows last: sort by (padded, key), stably (first occurrences first among equal rows)
        order = torch.sort(keys, dim=1, stable=True).indices
        order = order.gather(1, torch.sort((~vc).gather(1, order).to(torch.int8), dim=1, stable=True).indices)
        ks, vs = keys.gather(1, order), vc.gather(1, order)
        xs = xc.gather(1, order.unsqueeze(2).expand(-1, -1, d))
        same_key = (ks[:, 1:] == ks[:, :-1]) & vs[:, 1:]
        same_row = (xs[:, 1:] == xs[:, :-1]).all(dim=2)
        dup = torch.zeros_like(vs)
        dup[:, 1:] = same_key & same_row
        keep[s : s + per] = vc & ~torch.zeros_like(dup).scatter_(1, order, dup)
        for c in torch.nonzero((same_key & ~same_row).any(dim=1)).flatten().tolist():  # a key collision
            m = int(vc[c].sum())
            keep[s + c] = False
            keep[s + c, :m] = _first_occurrences(xc[c, :m])
    counts = keep.sum(dim=1)
    out = x.new_zeros(b, max(1, int(counts.max())), d)
    bi, ni = keep.nonzero(as_tuple=True)
    out[bi, (torch.cumsum(keep, dim=1) - 1)[bi, ni]] = x[bi, ni]
    return out, counts


def _first_occurrences(rows: Tensor) -> Tensor:
    """(L,) bool: the first occurrence of every distinct row of ``rows`` (L, D), exactly."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    n = rows.shape[0]
    first = torch.full((int(inverse.max()) + 1,), n, device=rows.device).scatter_reduce(0, inverse, torch.arange(n, device=rows.device), "amin")
    keep = torch.zeros(n, dtype=torch.bool, device=rows.device)
    keep[first] = True
    return keep


def expand_copies(nb_distinct: Neighbors, copies: Copies, k: int) -> Neighbors | None:
    """The exact kNN (self excluded, ties by the smaller index) of all N points from the kNN of their
    M distinct locations (:func:`find_copies`), which needs at least ``k + 1`` neighbours.

    Returns None when a row's k-th neighbour lies in a group of copies whose distance ties exactly with
    another location's: the distinct kNN then cannot tell which copies come first.

    Raises:
        ValueError: ``nb_distinct`` has fewer than ``k + 1`` neighbours.

    Example:
        >>> from lightning_geom.geometry import knn
        >>> x = torch.tensor([[0.0], [5.0], [0.0], [1.0], [5.0], [3.5]])
        >>> c = find_copies(x)
        >>> c.points.flatten().tolist(), c.counts.tolist()
        ([0.0, 1.0, 3.5, 5.0], [2, 1, 1, 2])
        >>> nb = expand_copies(knn(c.points, 3), c, 2)
        >>> nb.indices.tolist() == knn(x, 2).indices.tolist()
        True
        >>> nb.indices[0].tolist(), nb.distances[0].tolist()  # point 0: its copy, then the location 1.0
        ([2, 3], [0.0, 1.0])
    """
    inverse, counts = copies.inverse, copies.counts
    m, ku = nb_distinct.indices.shape
    n, device = int(inverse.shape[0]), inverse.device
    if ku < k + 1:
        raise ValueError(f"expand_copies needs the distinct kNN with >= k + 1 = {k + 1} neighbours, got {ku}.")
    need = k + 1  # slots per location: its own point may be one of them
    members = torch.sort(inverse, stable=True).indices  # points grouped by location, index order inside
    start = torch.cumsum(counts, 0) - counts
    groups = torch.cat([torch.arange(m, device=device).unsqueeze(1), nb_distinct.indices], dim=1)  # (M, ku + 1)
    gdist = torch.cat([torch.zeros(m, 1, dtype=nb_distinct.distances.dtype, device=device), nb_distinct.distances], dim=1)
    gcount = counts[groups]
    cum = torch.cumsum(gcount, dim=1)  # slots filled up to each group; cum[:, j] >= j + 1
    slots = torch.arange(need, device=device).expand(m, need).contiguous()
    g = torch.searchsorted(cum, slots, right=True)  # (M, need): the group of every slot, <= k < ku
    last = g[:, -1:]
    # exact only if the boundary group's distance is its own: a tie with the next group (or, when the
    # boundary group is cut, with the previous one) would merge their copies by index across the cut
    nxt = gdist.gather(1, last + 1)
    prev = gdist.gather(1, (last - 1).clamp_min(0))
    here = gdist.gather(1, last)
    cut = cum.gather(1, last) > need
    if bool(((nxt == here) | (cut & (last > 0) & (prev == here))).any()):
        return None
    offset = slots - (cum.gather(1, g) - gcount.gather(1, g))
    pts = members[start[groups.gather(1, g)] + offset]  # (M, need) point indices
    dist, pts = _sort_rows(gdist.gather(1, g), pts)  # ties among whole groups: by point index
    rows, rd = pts[inverse], dist[inverse]  # (N, need)
    keep = rows != torch.arange(n, device=device).unsqueeze(1)
    keep[:, -1] &= ~keep[:, :-1].all(dim=1)  # drop the last slot when the point itself was not among them
    return Neighbors(rd[keep].view(n, k), rows[keep].view(n, k))
