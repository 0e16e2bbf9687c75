"""Neighbourhood overlap between representations and with labels (Doimo, Glielmo, Ansuini, Laio 2020).

Both take points (N, D) or a precomputed :class:`~.neighbors.Neighbors` and match DADApy 0.3.4's
``return_data_overlap`` and ``return_label_overlap`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .args import flag, positive_int
from .neighbors import Neighbors, as_points, knn

__all__ = ["neighborhood_overlap", "label_overlap", "encode_labels", "one_hot_classes", "class_vector", "single_class"]


def _indices(x: Tensor | np.ndarray | Neighbors, k: int, *, name: str) -> Tensor:
    """(N, k) neighbour indices from points or a ``Neighbors``."""
    k = positive_int(k, "k")
    if isinstance(x, Neighbors):
        if x.k < k:
            raise ValueError(
                f"Expected `{name}` to hold at least k = {k} neighbours, but it holds {x.k}. "
                f"Compute them with `knn(x, k={k})`."
            )
        return x.indices[:, :k]
    x = as_points(x, name=name)
    n = int(x.shape[0])
    if n <= k:
        raise ValueError(f"Expected more than k = {k} points in `{name}`, but got N = {n}. Lower `k`.")
    return knn(x, k).indices


def neighborhood_overlap(
    a: Tensor | np.ndarray | Neighbors,
    b: Tensor | np.ndarray | Neighbors,
    *,
    k: int = 30,
    per_point: bool = False,
) -> float | Tensor:
    r"""Neighbourhood overlap :math:`\chi_k^{a,b}` between two representations of the same N samples.

    .. math:: \chi_k^{a,b} = \frac{1}{N} \sum_i \frac{1}{k} \left| \mathcal{N}_k^a(i) \cap \mathcal{N}_k^b(i) \right|

    (Doimo et al., NeurIPS 2020; DADApy ``return_data_overlap``). 1 means identical neighbourhoods,
    ~k/N means unrelated ones.

    Args:
        a: (N, D_a) points or ``Neighbors`` of the first representation.
        b: (N, D_b) points or ``Neighbors`` of the second (same samples, same order).
        k: neighbourhood size.
        per_point: return the (N,) float64 per-sample overlaps instead of their mean.

    Returns:
        The mean overlap (float) or the per-sample overlaps.

    Raises:
        ValueError: different N, bad ``k``.

    Example:
        >>> x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
        >>> neighborhood_overlap(x, 3 * x + 1, k=10)
        1.0
    """
    per_point = flag(per_point, "per_point")
    ia = _indices(a, k, name="a")
    ib = _indices(b, k, name="b")
    if ia.shape[0] != ib.shape[0]:
        raise ValueError(
            f"Expected `a` and `b` to describe the same samples, but they have N = {ia.shape[0]} "
            f"and N = {ib.shape[0]}."
        )
    ib = ib.to(ia.device)
    n = ia.shape[0]
    counts = torch.empty(n, dtype=torch.float64, device=ia.device)
    chunk = max(1, (1 << 24) // (k * k))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        hit = ia[s:e].unsqueeze(2) == ib[s:e].unsqueeze(1)  # (c, k, k)
        counts[s:e] = hit.any(dim=2).sum(dim=1).to(torch.float64)
    per = counts / k
    return per if per_point else float(per.mean())


def one_hot_classes(labels: Tensor | np.ndarray) -> Tensor | np.ndarray | None:
    """The (N,) class ids of one-hot (N, C) labels (every row 0 / 1 with exactly one 1), else None.

    Example:
        >>> one_hot_classes(torch.tensor([[0, 1, 0], [1, 0, 0]])).tolist()
        [1, 0]
    """
    if labels.ndim != 2 or labels.shape[1] < 2 or labels.shape[0] == 0:
        return None
    if isinstance(labels, Tensor):
        if labels.is_complex() or not bool(((labels == 0) | (labels == 1)).all()) or not bool((labels.sum(dim=1) == 1).all()):
            return None
        return labels.argmax(dim=1)
    if labels.dtype.kind not in "biuf" or not ((labels == 0) | (labels == 1)).all() or not (labels.sum(axis=1) == 1).all():
        return None
    return labels.argmax(axis=1)


def class_vector(labels: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """(N,) class labels from the 2-d shapes they also come in: one-hot (N, C) as their classes, an
    (N, 1) column (``y.reshape(-1, 1)``; a dataset that yields each label as a 1-element tensor) as its
    values; anything else unchanged (the caller checks the shape).

    Example:
        >>> class_vector(torch.tensor([[2], [0]])).tolist()
        [2, 0]
    """
    if labels.ndim == 2 and labels.shape[1] == 1:
        return labels[:, 0]
    classes = one_hot_classes(labels)
    return labels if classes is None else classes


def encode_labels(labels: Sequence | np.ndarray | Tensor, n: int) -> Tensor:
    """Labels of any hashable kind as (N,) int64 codes 0..C-1 (CPU); one-hot (N, C) labels as their classes,
    an (N, 1) column as its (N,) values.

    Raises:
        ValueError: if the labels are not one-dimensional of length ``n`` (nor one-hot).
    """
    if labels is None:
        raise ValueError(f"Expected `labels`: one class label per point ({n},), but got None.")
    if isinstance(labels, Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[0] == n:
        arr = class_vector(arr)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"Expected `labels` to have shape ({n},) (one label per point), but got shape {arr.shape}."
        )
    if arr.dtype.kind in "fc":
        why = numeric_label_problem(torch.from_numpy(np.ascontiguousarray(arr)))
        if why is not None:
            raise ValueError(f"Expected class labels, but {why}.")
    try:
        _, codes = np.unique(arr, return_inverse=True)
    except TypeError as e:  # an object array mixing kinds: 1 and "a" have no order
        kinds = sorted({type(v).__name__ for v in arr.tolist()})
        raise ValueError(
            f"Expected class labels of one kind, but they mix {', '.join(kinds)} ({e}): convert them, "
            "e.g. `[str(v) for v in labels]`."
        ) from None
    return torch.from_numpy(codes.reshape(-1).astype(np.int64))


def numeric_label_problem(flat: Tensor) -> str | None:
    """Why floating-point labels are not class ids (NaN / Inf, or non-integer values), else None."""
    if flat.is_complex():
        return "the labels are complex numbers: pass integer class ids"
    if not flat.is_floating_point() or flat.numel() == 0:
        return None
    bad = ~torch.isfinite(flat)
    if bool(bad.any()):
        return f"{int(bad.sum())} of {flat.numel()} labels are NaN or infinite: drop those samples or give them a class"
    frac = flat != flat.round()
    if bool(frac.any()):
        example = float(flat[frac][0])
        return (
            f"the labels are non-integer numbers (e.g. {example:g}): regression targets, not classes; "
            "bin them into classes first (e.g. torch.bucketize) to measure a label overlap"
        )
    return None


def label_problem(labels: Tensor) -> str | None:
    """Why these labels cannot give a meaningful label overlap, or None when they can.

    Label overlap counts neighbours of the same class, so it needs class ids shared by several
    samples: NaN / non-integer values (regression targets), a single class (the overlap is 1.0
    whatever the geometry) or a class per sample (0.0 whatever the geometry) are refused.
    """
    flat = labels.reshape(-1)
    why = numeric_label_problem(flat)
    if why is not None:
        return why
    if single_class(flat):
        return "every sample has the same label (the overlap would be 1.0 whatever the model does): use several classes"
    if flat.numel() > 2 and torch.unique(flat).numel() == flat.numel():
        return (
            "every sample has a label of its own (the overlap would be 0.0 whatever the model does; sample ids?): "
            "labels must be classes shared by several samples"
        )
    return None


def single_class(labels: Tensor) -> bool:
    """Whether every label is the same one (then any label overlap is 1.0, whatever the geometry)."""
    flat = labels.reshape(-1)
    return bool(flat.numel()) and bool((flat == flat[0]).all())


def label_overlap(
    x: Tensor | np.ndarray | Neighbors,
    labels: Sequence | np.ndarray | Tensor,
    *,
    k: int = 10,
    weighted: bool = True,
    per_point: bool = False,
) -> float | Tensor:
    r"""Overlap of each point's neighbourhood with its class (Doimo et al. 2020).

    .. math:: \chi_k^{gt}(i) = \frac{1}{k} \#\{ j \in \mathcal{N}_k(i) : y_j = y_i \}

    averaged over points; ``weighted=True`` weights point i by :math:`1 / n_{y_i}` (each class counts
    equally, DADApy's default), otherwise a plain mean.

    Args:
        x: (N, D) points or ``Neighbors``.
        labels: (N,) class labels (ints, strings, ...).
        k: neighbourhood size.
        weighted: class-balanced mean.
        per_point: return the (N,) float64 per-sample values instead.

    Returns:
        The (weighted) mean overlap, or the per-sample values.

    Raises:
        ValueError: labels of the wrong length, bad ``k``.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
        >>> label_overlap(x, [0, 0, 0, 1, 1, 1], k=2)
        1.0
    """
    weighted, per_point = flag(weighted, "weighted"), flag(per_point, "per_point")
    idx = _indices(x, k, name="x")
    codes = encode_labels(labels, idx.shape[0]).to(idx.device)
    same = (codes[idx] == codes.unsqueeze(1)).sum(dim=1).to(torch.float64) / k  # (N,)
    if per_point:
        return same
    if not weighted:
        return float(same.mean())
    w = 1.0 / torch.bincount(codes).to(torch.float64)[codes]
    return float((w * same).sum() / w.sum())
