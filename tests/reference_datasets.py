"""The fixed-seed datasets of the DADApy reference values (generators as written in the fixture)."""

from __future__ import annotations

import numpy as np


def _q(m: np.ndarray) -> np.ndarray:
    return np.linalg.qr(m)[0]


def hypercube_d5_D20(n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(1)
    z = rng.uniform(0, 1, (n, 5))
    return z @ _q(rng.standard_normal((20, 5))).T


def gaussian_d5_D100(n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(4)
    z = rng.standard_normal((n, 5))
    return z @ _q(rng.standard_normal((100, 5))).T


def overlap_family(n: int = 2000) -> dict[str, np.ndarray]:
    """A, its noisy copy, its similarity transform, and labels drawn from A's latent coordinates."""
    rng = np.random.default_rng(11)
    z = rng.standard_normal((n, 10))
    a = z @ _q(rng.standard_normal((100, 10))).T
    e = rng.standard_normal((n, 100))
    r = _q(rng.standard_normal((100, 100)))
    u = rng.standard_normal((n, 100))
    labels = (z[:, 0] > 0).astype(int) + 2 * (z[:, 1] > 0.5).astype(int)  # 4 unbalanced classes
    return {
        "A": a,
        "A_plus_0.05E": a + 0.05 * e,
        "3AR_plus_7_(similarity)": 3 * a @ r + 7,
        "U": u,
        "labels": labels,
    }


ID_CASES = {"hypercube_d5_D20": hypercube_d5_D20, "gaussian_d5_D100": gaussian_d5_D100}


def checksum(x: np.ndarray) -> dict:
    return {"shape": list(x.shape), "sum": float(x.sum()), "sum_sq": float((x * x).sum())}


def copies_d4_D30() -> np.ndarray:
    """1,500 locations of a 4-d gaussian in R^30, 200 of them twice and 50 four times (1,850 rows), shuffled."""
    rng = np.random.default_rng(21)
    z = rng.standard_normal((1500, 4))
    loc = z @ _q(rng.standard_normal((30, 4))).T
    reps = np.ones(1500, dtype=int)
    reps[:200] = 2
    reps[200:250] = 4
    x = np.repeat(loc, reps, axis=0)
    return x[rng.permutation(x.shape[0])]


def lattice_d3(side: int = 10) -> np.ndarray:
    """The integer grid {0..side-1}^3: every point's nearest distances are tied (6 neighbours at 1)."""
    g = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return g.astype(np.float64)
