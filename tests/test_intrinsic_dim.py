import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_geom.geometry import (
    DuplicatePointsWarning,
    find_copies,
    gride,
    gride_max_rank,
    gride_scaling,
    id_profile,
    knn,
    twonn,
    twonn_scaling,
)

CASES = ["hypercube_d5_D20", "gaussian_d5_D100"]


@pytest.mark.parametrize("case", CASES)
def test_twonn_matches_dadapy(case, id_datasets, reference):
    ref = reference["id_cases"][case]
    x = id_datasets[case]
    est = twonn(x)
    assert abs(est.dim - ref["twonn_default"]["id"]) < 1e-6
    assert abs(est.scale - ref["twonn_default"]["scale"]) < 1e-9
    assert est.n_points == 2000 and est.n_dropped == 0
    assert abs(twonn(x, discard_fraction=0.02).dim - ref["twonn_mu_fraction_0.98"]["id"]) < 1e-6
    assert abs(twonn(x, method="mle").dim - ref["twonn_ml"]["id"]) < 1e-6


@pytest.mark.parametrize("case", CASES)
def test_gride_scaling_matches_dadapy(case, id_datasets, reference):
    ref = reference["id_cases"][case]["gride_scaling"]
    s = gride_scaling(id_datasets[case], range_max=64)
    assert list(s.ranks) == ref["n1"]
    np.testing.assert_allclose(s.dims, ref["ids"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(s.errs, ref["errs"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(s.scales, ref["rs"], atol=1e-9, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_float32_input_within_suggested_tolerance(case, id_datasets, reference):
    ref = reference["id_cases"][case]
    x = torch.from_numpy(id_datasets[case]).float()
    assert twonn(x).dim == pytest.approx(ref["twonn_default"]["id"], rel=1e-4)
    np.testing.assert_allclose(gride_scaling(x).dims, ref["gride_scaling"]["ids"], rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_twonn_scaling_against_dadapy(case, id_datasets, reference):
    ref = reference["id_cases"][case]["twonn_decimation_scaling"]
    s = twonn_scaling(id_datasets[case], seed=0)
    assert list(s.ranks) == ref["n_subset"]
    assert abs(s.dims[0] - ref["ids"][0]) < 1e-6 and s.errs[0] == 0.0
    for mine, theirs, e1, e2 in zip(s.dims[1:], ref["ids"][1:], s.errs[1:], ref["errs"][1:]):
        assert abs(mine - theirs) < 3 * (e1 + e2) + 0.1 * theirs
    assert all(a < b for a, b in zip(s.scales, s.scales[1:]))  # smaller subsets, larger scales


def test_one_knn_serves_every_estimator(id_datasets):
    x = id_datasets["gaussian_d5_D100"]
    nb = knn(x, 64)
    assert twonn(nb) == twonn(x)
    assert gride_scaling(nb) == gride_scaling(x)
    assert gride(nb, n1=4, n2=8) == gride(x, n1=4, n2=8)


def test_gride_n1_1_is_twonn_mle(id_datasets):
    x = id_datasets["hypercube_d5_D20"]
    assert gride(x).dim == pytest.approx(twonn(x, method="mle").dim, abs=1e-6)


def test_gride_general_ranks_recover_dimension():
    g = np.random.default_rng(5)
    x = g.standard_normal((3000, 7)) @ g.standard_normal((7, 30))
    assert gride(x, n1=3, n2=9).dim == pytest.approx(7, rel=0.1)
    assert gride(x, n1=4).dim == gride(x, n1=4, n2=8).dim  # n2 defaults to 2 n1 (GRIDE's doubling)


def test_id_profile_names_a_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        id_profile({"x": [0.0, 1.0]})
    with pytest.raises(TypeError, match="array of numbers"):
        id_profile([["a", "b"]])


@pytest.mark.parametrize("estimator", ["twonn", "gride"])
def test_duplicates_are_dropped_with_one_warning(estimator, id_datasets):
    x = id_datasets["gaussian_d5_D100"]
    dup = np.concatenate([x, x[:150]])  # 300 points now have a twin at distance 0
    fn = twonn if estimator == "twonn" else gride
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        est = fn(dup)
    msgs = [w for w in rec if issubclass(w.category, DuplicatePointsWarning)]
    assert len(msgs) == 1 and "300 of 2150 points" in str(msgs[0].message)
    assert est.n_dropped == 300 and est.n_points == 1850
    assert est.dim == pytest.approx(5, abs=0.5)  # DADApy would collapse towards 0 (GRIDE)


def test_gride_scaling_with_duplicates_matches_deduplicated_data():
    """Copies of points neither fake mu = 1 for their neighbours nor collapse any scale."""
    x = np.random.default_rng(0).standard_normal((1500, 3))
    dup = np.concatenate([x] + [x[:20]] * 4)  # 5 copies of 20 points
    with pytest.warns(DuplicatePointsWarning) as rec:
        s = gride_scaling(dup, range_max=16)
    assert len(rec) == 1 and "100 of 1580 points" in str(rec[0].message)
    clean = gride_scaling(x[20:], range_max=16)  # what the kept points see, without the copies
    np.testing.assert_allclose(s.dims, clean.dims, rtol=0.05)
    assert all(math.isfinite(d) for d in s.dims)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-100, 100),
)
def test_id_invariant_under_similarity(seed, scale, shift):
    g = np.random.default_rng(seed)
    x = g.standard_normal((300, 4)) @ g.standard_normal((4, 12))
    q = np.linalg.qr(g.standard_normal((12, 12)))[0]
    y = scale * x @ q + shift
    assert twonn(y).dim == pytest.approx(twonn(x).dim, rel=1e-6)
    np.testing.assert_allclose(gride_scaling(y, range_max=16).dims, gride_scaling(x, range_max=16).dims, rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: twonn(x, method="bogus"), "one of 'fit', 'mle'"),
        (lambda x: twonn(x, discard_fraction=1.0), r"`discard_fraction` in \[0, 1\)"),
        (lambda x: twonn(x, discard_fraction=0.0), "method='mle'"),
        (lambda x: twonn(x[:2]), "at least 3 points"),
        (lambda x: gride(x, n1=2, n2=2), "1 <= n1 < n2"),
        (lambda x: gride(x[:5], n1=4, n2=8), r"at least 9 points .* N = 5"),
        (lambda x: gride(knn(x, 4), n1=4, n2=8), "holds only 4"),
        (lambda x: gride_max_rank(2), "N >= 3"),
        (lambda x: twonn_scaling(x[:10]), "min_points = 10"),
        (lambda x: twonn(np.where(np.arange(50)[:, None] == 7, np.nan, x)), r"rows \[7\]"),
    ],
)
def test_bad_input(call, match):
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(ValueError, match=match):
        call(x)


def test_twonn_scaling_needs_points():
    x = np.random.default_rng(0).standard_normal((50, 3))
    with pytest.raises(TypeError, match="needs the points"):
        twonn_scaling(knn(x, 2))


def test_all_duplicates_raise():
    with pytest.raises(ValueError, match="at least 3 distinct points, but got 1"):
        twonn(np.ones((10, 2)))


def test_duplicates_in_precomputed_neighbors_use_distinct_ranks(id_datasets):
    """A kNN graph computed with copies inside: ranks skip repeated locations."""
    x = id_datasets["gaussian_d5_D100"]
    dup = np.concatenate([x, x[:150]])
    with pytest.warns(DuplicatePointsWarning, match="left out"):
        from_graph = gride_scaling(knn(dup, 64), range_max=32)
    with pytest.warns(DuplicatePointsWarning):
        from_points = gride_scaling(dup, range_max=32)
    np.testing.assert_allclose(from_graph.dims, from_points.dims, rtol=0.03)


def test_a_knn_with_duplicates_uses_every_stored_neighbour():
    """With copies in the cloud, the ranks count distinct locations among *all* stored neighbours: a
    kNN with spare columns gives the same ID as the points themselves (it used to read only the first
    n2 columns, so copies used them up: every point was dropped at the largest scale, or fewer were kept)."""
    import warnings

    from lightning_geom.geometry import DuplicatePointsWarning, gride, knn, twonn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:60], x[:20]])  # 60 points with one copy, 20 of them with two
    nb = knn(x, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicatePointsWarning)
        tw, curve = id_profile(nb, range_max=16)
        assert tw.dim == pytest.approx(twonn(x).dim, rel=1e-9) and tw.dim == pytest.approx(twonn(nb).dim, rel=1e-12)
        for n1, d in zip(curve.ranks, curve.dims):
            assert d == pytest.approx(gride(x, n1=n1).dim, rel=1e-6)


@pytest.mark.parametrize("fn", ["knn", "twonn", "gride", "gride_scaling", "id_profile", "label_overlap", "neighborhood_overlap", "find_copies"])
@pytest.mark.parametrize("bad", ["list", "none", "meta"])
def test_every_public_function_names_an_input_that_is_no_points(fn, bad):
    """Each entry point checks its points the same way: a list of words or None is a TypeError / ValueError naming
    what it expects (gride_scaling and the overlaps read `.shape` first: AttributeError), a meta tensor
    one line (was `Tensor.item() cannot be called on meta tensors`)."""
    from lightning_geom import geometry as G

    x = {"list": [["a", "b"]] * 20, "none": None, "meta": torch.empty(20, 3, device="meta")}[bad]
    call = {
        "knn": lambda: G.knn(x, 3), "twonn": lambda: G.twonn(x), "gride": lambda: G.gride(x),
        "gride_scaling": lambda: G.gride_scaling(x, range_max=4), "id_profile": lambda: G.id_profile(x, range_max=4),
        "label_overlap": lambda: G.label_overlap(x, [0, 1] * 10, k=3), "neighborhood_overlap": lambda: G.neighborhood_overlap(x, x, k=3),
        "find_copies": lambda: G.find_copies(x),
    }[fn]
    with pytest.raises((TypeError, ValueError), match="meta tensor" if bad == "meta" else "(N, D)|Tensor or numpy"):
        call()


def test_points_as_nested_lists_or_a_numeric_object_array_equal_the_array():
    """A list of rows and a DataFrame's object ``.values`` are read as the numbers they hold (they were a
    TypeError / torch's "can't convert np.ndarray of type numpy.object_"); strings name the problem."""
    from lightning_geom.geometry import knn, twonn

    x = np.random.default_rng(0).standard_normal((60, 3))
    ref = knn(x, 5)
    import pandas as pd

    for other in (x.tolist(), np.array(x, dtype=object), pd.DataFrame(x)):  # a DataFrame: was "got DataFrame"
        nb = knn(other, 5)
        assert torch.equal(nb.indices, ref.indices) and torch.equal(nb.distances, ref.distances)
    assert twonn(x.tolist()).dim == twonn(x).dim
    with pytest.raises(TypeError, match="dtype <U1: pass the numeric feature columns"):
        twonn(np.full((60, 3), "a"))
    with pytest.raises(TypeError, match="stack them first"):
        knn([torch.zeros(3)] * 10, 2)


def test_find_copies_reads_integer_points_as_floats():
    x = torch.tensor([[1, 2], [3, 4], [1, 2]])
    c = find_copies(x)
    assert c is not None and c.points.tolist() == [[1.0, 2.0], [3.0, 4.0]] and c.inverse.tolist() == [0, 1, 0]


def test_tied_distances_of_a_lattice_are_named_and_unbounded_scales_are_inf(reference):
    """On the integer grid every point's nearest distances tie (r2 = r1 = 1). DADApy returns its
    bracket bottom (GRIDE 0.001) and curve_fit's default (TwoNN 1.0) there: failures, not IDs. Ours
    said NaN (TwoNN, GRIDE n1 = 1, 2) with no word. Now: inf where the likelihood has no maximum, a
    TiedDistancesWarning naming the scales, and DADApy's numbers wherever DADApy has one."""
    from reference_datasets import lattice_d3

    from lightning_geom.analysis import GeometrySettings, layer_geometry
    from lightning_geom.geometry import TiedDistancesWarning, id_batched, knn_batched

    ref = reference["lattice_cases"]["lattice_d3"]
    x = torch.from_numpy(lattice_d3())
    with pytest.warns(TiedDistancesWarning, match=r"GRIDE at n1 = 1, 2, 8: most neighbour-distance ratios .* exactly 1") as rec:
        curve = gride_scaling(x, range_max=16)
    assert rec[0].message.ranks == (1, 2, 8)
    assert math.isinf(curve.dims[0]) and 10 < curve.dims[1] < 1e3  # n1 = 2: 99 % of the ratios tied
    for ours, theirs in zip(curve.dims[2:], ref["gride_ids"][2:]):  # where DADApy has an ID, the same one
        assert ours == pytest.approx(theirs, rel=1e-6)
    assert ref["gride_ids"][0] == pytest.approx(1e-3, rel=1e-3) and ref["twonn"] == 1.0  # DADApy's failures
    with pytest.warns(TiedDistancesWarning, match="TwoNN at n1 = 1"):
        assert math.isinf(twonn(x).dim)
    rec_layer, _ = layer_geometry(x.float(), None, GeometrySettings(range_max=16))
    assert rec_layer["id_n1"] == 4 and rec_layer["id"] == pytest.approx(ref["gride_ids"][2], rel=1e-6)  # a scale without ties
    assert rec_layer["tied_n1"] == [1, 2, 8] and "GRIDE at n1 = 1, 2, 8 and TwoNN at n1 = 1" in rec_layer["warning"]
    with pytest.warns(TiedDistancesWarning, match="1 of 2 clouds"):
        b = id_batched(knn_batched(torch.stack([x[:300], x[:300] * 0 + torch.randn(300, 3, dtype=torch.float64)]), 16), range_max=16)
    assert math.isinf(b["twonn"][0]) and math.isinf(b["gride"][0, 0]) and torch.isfinite(b["gride"][1]).all()


def test_continuous_data_raise_no_tie_warning():
    from lightning_geom.geometry import TiedDistancesWarning, id_profile

    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiedDistancesWarning)
        tw, curve = id_profile(x, range_max=32)
    assert all(math.isfinite(d) for d in (*curve.dims, tw.dim))


def _quantised_with_copies() -> np.ndarray:
    """Integer points in 5-d (exact distance ties between different points everywhere) with 15 copies."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, (400, 5)).astype(np.float64)
    x = np.unique(x, axis=0)[:300]
    return np.concatenate([x, x[:15]])


def test_copies_and_tied_distances_count_locations_not_distances():
    """With copies in the data, ranks count distinct neighbour *locations*. They counted distinct
    *distances*: two different neighbours at one distance (quantised data) became one rank, TwoNN was
    off (7.9 instead of 10.7 on coarsely quantised digits) and GRIDE found 'no usable point'. Oracle:
    brute force in numpy over the distinct points, leaving out the points that had a copy."""
    from lightning_geom.geometry import id_batched, knn_batched

    x = _quantised_with_copies()
    uniq, counts = np.unique(x, axis=0, return_counts=True)
    d = np.sqrt(((uniq[:, None, :] - uniq[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    r = np.sort(d, axis=1)[counts == 1]  # each kept point's distances to the other locations
    log_mu = np.sort(np.log(r[:, 1] / r[:, 0]))
    n = len(log_mu)
    n_eff = int(n * 0.9)
    ly = -np.log1p(-np.arange(1, n_eff + 1) / n)
    oracle = float(np.dot(log_mu[:n_eff], ly) / np.dot(log_mu[:n_eff], log_mu[:n_eff]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_points = twonn(torch.from_numpy(x)).dim
        nb = knn(torch.from_numpy(x), 32)
        from_nb = twonn(nb).dim
        curve_pts, curve_nb = gride_scaling(torch.from_numpy(x), range_max=16), gride_scaling(nb, range_max=16)
        tw, _ = id_profile(nb, range_max=16)
        batched = id_batched(knn_batched(torch.from_numpy(x)[None], 32), range_max=16)
    assert from_points == pytest.approx(oracle, rel=1e-9) and from_nb == pytest.approx(oracle, rel=1e-9)
    assert tw.dim == pytest.approx(oracle, rel=1e-9) and float(batched["twonn"][0]) == pytest.approx(oracle, rel=1e-9)
    assert curve_nb.dims == pytest.approx(curve_pts.dims, rel=1e-9)
    assert batched["gride"][0].tolist() == pytest.approx(list(curve_pts.dims), rel=1e-9)
