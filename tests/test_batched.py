"""Many small clouds at once (issue 10): the batched kNN and estimators equal the per-cloud ones."""

from __future__ import annotations

import pytest
import torch

from lightning_geom.geometry import (
    gride_scaling,
    id_batched,
    knn,
    knn_batched,
    neighborhood_overlap,
    overlap_batched,
    twonn,
)


def _clouds(b=5, n=120, d=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, 4, generator=g)
    return (z @ torch.randn(b, 4, d, generator=g) + 0.01 * torch.randn(b, n, d, generator=g)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_per_cloud_knn_with_unequal_lengths(dtype):
    x = _clouds(dtype=dtype)
    lengths = torch.tensor([120, 97, 64, 120, 40])
    x[1, 97:] = float("nan")  # padding may hold anything
    nb = knn_batched(x, 16, lengths=lengths, budget_bytes=120 * 120 * 4 * 2)  # 2 clouds per chunk
    for c in range(5):
        ref = knn(x[c, : lengths[c]], 16)
        m = int(lengths[c])
        assert torch.equal(nb.indices[c, :m], ref.indices)
        torch.testing.assert_close(nb.distances[c, :m], ref.distances, rtol=0, atol=1e-12)
        assert (nb.indices[c, m:] == -1).all() and torch.isinf(nb.distances[c, m:]).all()


def test_certificate_fallback_with_ties_in_a_cloud():
    x = _clouds(b=3, n=80)
    x[2, ::2] = x[2, 0]  # half of one cloud is one location: every such row needs the fallback
    nb = knn_batched(x, 8, margin=0)
    for c in range(3):
        ref = knn(x[c], 8)
        assert torch.equal(nb.indices[c], ref.indices)


def test_estimators_equal_the_per_cloud_ones():
    x = _clouds(b=4, n=200, d=16, seed=1, dtype=torch.float64)
    lengths = torch.tensor([200, 150, 180, 130])
    nb = knn_batched(x, 64, lengths=lengths)
    out = id_batched(nb, range_max=64)
    assert out["ranks"].tolist() == [1, 2, 4, 8, 16, 32, 64][: out["gride"].shape[1]]
    for c in range(4):
        pts = x[c, : lengths[c]]
        g = gride_scaling(pts, range_max=64)
        torch.testing.assert_close(out["gride"][c], torch.tensor(g.dims, dtype=torch.float64), rtol=1e-9, atol=0)
        torch.testing.assert_close(out["gride_err"][c], torch.tensor(g.errs, dtype=torch.float64), rtol=1e-9, atol=0)
        torch.testing.assert_close(out["scales"][c], torch.tensor(g.scales, dtype=torch.float64), rtol=1e-12, atol=0)
        assert out["twonn"][c].item() == pytest.approx(twonn(pts).dim, rel=1e-12)
    y = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ov = overlap_batched(nb, knn_batched(y, 10, lengths=lengths), k=10)
    for c in range(4):
        m = int(lengths[c])
        assert ov[c].item() == pytest.approx(neighborhood_overlap(x[c, :m], y[c, :m], k=10))


def test_op_count_does_not_grow_with_the_number_of_clouds():
    from lightning_geom.profiling import OpCounter

    def ops(b):
        x = _clouds(b=b, n=64, d=16)
        with OpCounter() as c:
            id_batched(knn_batched(x, 16, budget_bytes=1 << 30), range_max=16)
        return c.total

    assert ops(32) == ops(4)  # one chunk of clouds either way: the same launches for 8x the clouds


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"x": torch.zeros(3, 4)}, r"shape \(B, N, D\)"),
        ({"lengths": torch.tensor([10, 10])}, r"lengths` of shape \(3,\)"),
        ({"lengths": torch.tensor([10, 30, 10])}, "<= N = 20"),
        ({"k": 9, "lengths": torch.tensor([20, 9, 20])}, r"\[1, 8\], but got 9 \(clouds \[1\] have <= k points\)"),
        ({"lengths": torch.tensor([20.0, 10.5, 20.0])}, "integer `lengths`"),
        ({"x": torch.randn(3, 20, 4, dtype=torch.complex64)}, "real-valued"),
        ({"x": torch.randn(3, 20, 4).index_put_((torch.tensor([2]), torch.tensor([3])), torch.tensor(float("nan")))}, r"clouds \[2\] contain NaN"),
        ({"budget_bytes": -5}, "`budget_bytes` to be None or a positive number of bytes"),
        ({"budget_bytes": 1e6}, "`budget_bytes` to be None or a positive number of bytes"),
        ({"margin": -1}, "`margin` to be an integer >= 0"),
        ({"k": 0}, r"\[1, 19\], but got 0\.$"),
    ],
)
def test_bad_inputs(kw, match):
    args = {"x": torch.randn(3, 20, 4), "k": 5, **kw}
    with pytest.raises(ValueError, match=match):
        knn_batched(args.pop("x"), args.pop("k"), **args)


@pytest.mark.parametrize(("fraction", "match"), [(1.5, r"in \(0, 1\), but got 1.5"), (-0.1, r"in \(0, 1\)"), (True, r"in \(0, 1\)"), (0.0, "infinite")])
def test_id_batched_refuses_a_discard_fraction_twonn_refuses(fraction, match):
    """A fraction outside (0, 1) was taken as it came: 1.5 fitted nothing, 0 fitted an infinite point."""
    nb = knn_batched(torch.randn(2, 30, 4), 8)
    with pytest.raises(ValueError, match=match):
        id_batched(nb, range_max=8, discard_fraction=fraction)


def test_numpy_clouds_and_clouds_that_require_grad():
    x = torch.randn(3, 20, 4, generator=torch.Generator().manual_seed(1))
    ref = knn_batched(x, 5)
    assert torch.equal(knn_batched(x.numpy(), 5).indices, ref.indices)
    assert torch.equal(knn_batched(x.clone().requires_grad_(), 5).indices, ref.indices)


def test_a_cloud_of_copies_gets_nan_and_the_others_their_own_id():
    """A prompt whose tokens are (nearly) all the same token at a layer (rotary LMs' embeddings of a
    repeated word) has no ID: it gets NaN with a warning, and the other clouds are unchanged."""
    from lightning_geom.geometry import DuplicatePointsWarning

    x = _clouds(b=3, n=60)
    x[1] = x[1, :1].expand(60, -1).clone()  # one point, 60 copies
    x[1, 0] += 1.0  # ... and one other: 2 distinct locations
    nb = knn_batched(x, 8)
    with pytest.warns(DuplicatePointsWarning, match="1 of 3 clouds"):
        est = id_batched(nb, range_max=8)
    assert torch.isnan(est["gride"][1]).all() and torch.isnan(est["twonn"][1])
    for c in (0, 2):
        alone = id_batched(knn_batched(x[c : c + 1], 8), range_max=8)
        torch.testing.assert_close(est["gride"][c], alone["gride"][0])
        torch.testing.assert_close(est["twonn"][c], alone["twonn"][0])
    with pytest.raises(ValueError, match="at least 3 non-duplicate points"):
        id_batched(knn_batched(x[1:2], 8), range_max=8)


def test_clouds_with_points_of_huge_norm_equal_the_per_cloud_knn():
    """Massive activations in some clouds: the per-cloud certificate tiers by norm and stays exact."""
    x = _clouds(b=3, n=150, d=32, seed=4)
    x[0, ::40, 0] += 3e4  # a few tokens far out in clouds 0 and 2 (a cluster of their own)
    x[2, 5:9, 3] -= 1e4
    nb = knn_batched(x, 12, lengths=torch.tensor([150, 150, 120]))
    for c, m in enumerate((150, 150, 120)):
        ref = knn(x[c, :m], 12)
        assert torch.equal(nb.indices[c, :m], ref.indices)
        torch.testing.assert_close(nb.distances[c, :m], ref.distances, rtol=1e-10, atol=0)  # the Gram recompute's proven bound


def test_clouds_with_copies_equal_the_single_cloud_estimators():
    """Duplicate tokens: id_batched counts neighbour ranks over distinct locations as id_profile does on
    each cloud's own kNN (points with a copy left out, a copied neighbour not a ratio of 1)."""
    import warnings

    from lightning_geom.geometry import DuplicatePointsWarning, id_profile, knn

    x = _clouds(b=4, n=80, d=6, seed=3)
    x[0, 40:50] = x[0, :10]  # ten copies
    x[2, 1:4] = x[2, 0]  # one point four times
    lengths = torch.tensor([80, 70, 80, 75])
    with pytest.warns(DuplicatePointsWarning, match="neighbour ranks count distinct locations"):
        est = id_batched(knn_batched(x, 16, lengths=lengths), range_max=16)
    for c in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DuplicatePointsWarning)
            tw, curve = id_profile(knn(x[c, : lengths[c]], 16), range_max=16)
        torch.testing.assert_close(est["gride"][c], torch.tensor(curve.dims, dtype=torch.float64), rtol=1e-9, atol=0)
        torch.testing.assert_close(est["scales"][c], torch.tensor(curve.scales, dtype=torch.float64), rtol=1e-12, atol=0)
        assert float(est["twonn"][c]) == pytest.approx(tw.dim, rel=1e-9)


def test_batched_estimators_take_the_clouds_themselves():
    """id_batched / overlap_batched on (B, N, D) clouds equal them on the clouds' knn_batched; other kinds
    are one line, not an AttributeError."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 5, generator=g, dtype=torch.float64)
    a, b = id_batched(x, range_max=16), id_batched(knn_batched(x, 16), range_max=16)
    assert torch.equal(a["gride"], b["gride"]) and torch.equal(a["twonn"], b["twonn"])
    y = x @ torch.randn(5, 5, generator=g, dtype=torch.float64)
    assert torch.equal(overlap_batched(x, y, k=4), overlap_batched(knn_batched(x, 4), knn_batched(y, 4), k=4))
    with pytest.raises(TypeError, match="BatchedNeighbors of knn_batched"):
        id_batched([1, 2])
