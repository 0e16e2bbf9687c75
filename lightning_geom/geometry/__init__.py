"""Pure geometry on tensors: kNN, intrinsic dimension, neighbourhood overlap.

Nothing here imports Lightning, transformers, wandb or matplotlib; every function is numbers in,
numbers out, on the input's device.
"""

from .batched import BatchedNeighbors, id_batched, knn_batched, overlap_batched
from .changepoints import RobustChangePoints, Segmentation, robust_change_points, segment_profile
from .copies import Copies, distinct_clouds, expand_copies, find_copies, row_keys
from .intrinsic_dim import (
    DuplicatePointsWarning,
    IDEstimate,
    IDScaling,
    TiedDistancesWarning,
    gride,
    gride_max_rank,
    gride_pairs,
    gride_scaling,
    id_profile,
    twonn,
    twonn_scaling,
)
from .neighbors import Neighbors, as_points, knn, knn_sharded, knn_split
from .overlap import encode_labels, label_overlap, label_problem, neighborhood_overlap, single_class
from .phases import PhaseSummary, three_phase

__all__ = [
    "BatchedNeighbors",
    "Copies",
    "distinct_clouds",
    "row_keys",
    "expand_copies",
    "find_copies",
    "knn_batched",
    "id_batched",
    "overlap_batched",
    "DuplicatePointsWarning",
    "TiedDistancesWarning",
    "IDEstimate",
    "IDScaling",
    "PhaseSummary",
    "RobustChangePoints",
    "Segmentation",
    "robust_change_points",
    "segment_profile",
    "three_phase",
    "Neighbors",
    "as_points",
    "encode_labels",
    "gride",
    "gride_max_rank",
    "gride_pairs",
    "id_profile",
    "gride_scaling",
    "knn",
    "knn_sharded",
    "knn_split",
    "label_overlap",
    "label_problem",
    "neighborhood_overlap",
    "single_class",
    "twonn",
    "twonn_scaling",
]
