"""The geometry of scikit-learn's bundled digits images (1797 8x8 images, 10 classes), as a table."""

from __future__ import annotations

import numpy as np

from .geometry import gride_scaling, knn, label_overlap, twonn


def digits_geometry_table(*, k: int = 10, range_max: int = 64) -> str:
    """TwoNN, the GRIDE scale curve and the label overlap of the digits pixels, as printable text.

    Duplicate images (a few digits are pixel-identical) are dropped by the estimators with a warning.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float64)  # (1797, 64)
    y = np.asarray(data.target)
    nb = knn(x, max(range_max, k))
    tw = twonn(nb)
    gs = gride_scaling(nb, range_max=range_max)
    lo = label_overlap(nb, y, k=k)
    lines = [
        f"scikit-learn digits: N = {x.shape[0]} images, D = {x.shape[1]} pixels, {len(set(y.tolist()))} classes",
        f"TwoNN ID          : {tw.dim:6.2f} +- {tw.err:.2f}   (scale {tw.scale:.2f}, {tw.n_points} points)",
        f"label overlap k={k:<2}: {lo:6.3f}",
        "GRIDE scale curve :",
        f"  {'n1':>4} {'n2':>4} {'scale':>8} {'ID':>7} {'err':>6}",
    ]
    for n1, d, e, r in zip(gs.ranks, gs.dims, gs.errs, gs.scales):
        lines.append(f"  {n1:>4} {2 * n1:>4} {r:8.3f} {d:7.2f} {e:6.2f}")
    return "\n".join(lines)
