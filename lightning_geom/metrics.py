"""torchmetrics wrappers of the geometry core: accumulate points across batches (and ranks), compute once.

Each metric keeps its points in list states with ``dist_reduce_fx="cat"``, so under DDP
``compute()`` sees the points of every rank, then calls the same pure function as the functional
API (:mod:`lightning_geom.geometry`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from .geometry import gride, label_overlap, neighborhood_overlap, twonn
from .geometry.args import discard_fraction as check_discard
from .geometry.args import flag, positive_int
from .geometry.neighbors import point_tensor
from .geometry.overlap import class_vector, numeric_label_problem

__all__ = ["IntrinsicDimension", "NeighborhoodOverlap", "LabelOverlap"]


def _check_points(x: Tensor, name: str) -> Tensor:
    """A batch of points as the functional API reads them (:func:`~.geometry.neighbors.point_tensor`: numpy
    and lists too), float64 kept (the functional API's precision), narrower floats widened to float32."""
    if isinstance(x, Tensor) and x.ndim != 2:
        raise ValueError(f"Expected `{name}` to be a tensor of shape (B, D), but got {tuple(x.shape)}.")
    x = point_tensor(x, name)
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)


def _cat(metric: Metric, state: list[Tensor] | Tensor, name: str) -> Tensor:
    """The points of every update (and rank), or a one-line error when there are none or widths differ."""
    if isinstance(state, Tensor):  # already concatenated by the DDP sync
        return state
    if not state:
        raise ValueError(
            f"{type(metric).__name__}.compute() was called before any update(): "
            "add points with update(...) first (or reset() only after compute())."
        )
    widths = sorted({t.shape[1] for t in state})
    if len(widths) > 1:
        raise ValueError(
            f"{type(metric).__name__}: the updates' `{name}` have different widths D = {widths}; "
            "every update must describe points of the same representation."
        )
    return dim_zero_cat(state)


class IntrinsicDimension(Metric):
    r"""Intrinsic dimension of all points seen so far (TwoNN or GRIDE).

    Args:
        estimator: ``"twonn"`` (Facco et al. 2017) or ``"gride"`` (Denti et al. 2022).
        n1: GRIDE inner rank (n2 = 2 n1). Ignored by TwoNN.
        discard_fraction: TwoNN fit's discarded fraction. Ignored by GRIDE.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> basis = torch.randn(3, 12, generator=g)
        >>> metric = IntrinsicDimension()
        >>> for _ in range(4):
        ...     metric.update(torch.rand(500, 3, generator=g) @ basis)
        >>> round(float(metric.compute()))
        3
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        estimator: Literal["twonn", "gride"] = "twonn",
        *,
        n1: int = 1,
        discard_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if estimator not in ("twonn", "gride"):
            raise ValueError(f"Expected `estimator` to be one of 'twonn', 'gride', but got {estimator!r}.")
        self.estimator = estimator
        self.n1 = positive_int(n1, "n1")
        self.discard_fraction = check_discard(discard_fraction)
        self.add_state("points", default=[], dist_reduce_fx="cat")

    def update(self, x: Tensor) -> None:
        """Add a batch of points (B, D)."""
        self.points.append(_check_points(x, "x"))

    def compute(self) -> Tensor:
        """The estimated ID as a 0-d float tensor."""
        x = _cat(self, self.points, "x")
        if self.estimator == "twonn":
            est = twonn(x, discard_fraction=self.discard_fraction)
        else:
            est = gride(x, n1=self.n1, n2=2 * self.n1)
        return torch.tensor(est.dim, dtype=torch.float64)


class NeighborhoodOverlap(Metric):
    r"""Neighbourhood overlap :math:`\chi_k` between two representations of the same samples.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> metric = NeighborhoodOverlap(k=5)
        >>> a = torch.randn(100, 8, generator=g)
        >>> metric.update(a, 2 * a - 1)
        >>> float(metric.compute())
        1.0
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, k: int = 30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = positive_int(k, "k")
        self.add_state("a", default=[], dist_reduce_fx="cat")
        self.add_state("b", default=[], dist_reduce_fx="cat")

    def update(self, a: Tensor, b: Tensor) -> None:
        """Add a batch: (B, D_a) and (B, D_b) representations of the same B samples."""
        a, b = _check_points(a, "a"), _check_points(b, "b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"Expected `a` and `b` to have the same batch size, but got {a.shape[0]} and {b.shape[0]}.")
        self.a.append(a)
        self.b.append(b)

    def compute(self) -> Tensor:
        """The overlap as a 0-d float tensor."""
        return torch.tensor(
            neighborhood_overlap(_cat(self, self.a, "a"), _cat(self, self.b, "b"), k=self.k), dtype=torch.float64
        )


class LabelOverlap(Metric):
    r"""Overlap of each point's k-neighbourhood with its class, class-balanced by default.

    Example:
        >>> metric = LabelOverlap(k=2)
        >>> metric.update(torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]]), torch.tensor([0, 0, 0, 1, 1, 1]))
        >>> float(metric.compute())
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 10, *, weighted: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = positive_int(k, "k")
        self.weighted = flag(weighted, "weighted")
        self.add_state("points", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, x: Tensor, labels: Tensor) -> None:
        """Add a batch of points (B, D) and their integer labels (B,) (or one-hot (B, C), or a (B, 1) column)."""
        x = _check_points(x, "x")
        labels = class_vector(torch.as_tensor(labels))  # one-hot (B, C): the classes; (B, 1): the column
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"Expected `labels` to have shape ({x.shape[0]},), but got {tuple(labels.shape)}.")
        why = numeric_label_problem(labels)
        if why is not None:  # casting them to int64 would merge 0.3 and 0.7 into class 0
            raise ValueError(f"Expected class labels, but {why}.")
        self.points.append(x)
        self.labels.append(labels.to(device=x.device, dtype=torch.int64))

    def compute(self) -> Tensor:
        """The label overlap as a 0-d float tensor."""
        return torch.tensor(
            label_overlap(_cat(self, self.points, "x"), dim_zero_cat(self.labels), k=self.k, weighted=self.weighted),
            dtype=torch.float64,
        )
