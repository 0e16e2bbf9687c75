"""Clouds with exact copies: the kNN of every point from the kNN of the distinct locations."""

import pytest
import torch

from lightning_geom.analysis import GeometrySettings, _distinct_id, layer_geometry, layer_k
from lightning_geom.geometry import expand_copies, find_copies, knn


def _with_copies(n_loc: int, d: int, seed: int, heavy: int = 0) -> torch.Tensor:
    """n_loc gaussian locations; each repeated 1-4 times (one ``heavy`` times), rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n_loc, d, generator=g)
    reps = torch.randint(1, 5, (n_loc,), generator=g)
    if heavy:
        reps[0] = heavy
    x = loc.repeat_interleave(reps, dim=0)
    return x[torch.randperm(x.shape[0], generator=g)]


def _check(x: torch.Tensor, k: int) -> bool:
    """expand_copies equals the full knn (indices exactly, distances to rounding); False when it declines."""
    copies = find_copies(x)
    assert copies is not None
    nb_u = knn(copies.points, k + 1)
    got = expand_copies(nb_u, copies, k)
    if got is None:
        return False
    ref = knn(x, k)
    assert torch.equal(got.indices, ref.indices)
    torch.testing.assert_close(got.distances, ref.distances, rtol=1e-12, atol=1e-12)
    return True


@pytest.mark.parametrize("seed", range(4))
def test_expand_copies_equals_the_full_knn(seed):
    assert _check(_with_copies(300, 6, seed), 10)


def test_expand_copies_with_a_location_holding_more_copies_than_k():
    """One location repeated 40 times (k = 10): its points' neighbours are 10 of its own copies, by index."""
    assert _check(_with_copies(200, 5, 7, heavy=40), 10)


def test_expand_copies_declines_or_is_exact_on_ties():
    """A lattice (exact distance ties between locations) with copies: either exact or None, never wrong."""
    side = torch.arange(6, dtype=torch.float32)
    grid = torch.cartesian_prod(side, side)  # 36 locations, 4 at distance 1 from most
    x = torch.cat([grid, grid[::3], grid[::5]])
    outcomes = {_check(x, k) for k in (3, 4, 5, 8)}
    assert outcomes <= {True, False}
    # a cut through a tied group is refused, not guessed
    copies = find_copies(x)
    assert expand_copies(knn(copies.points, 5), copies, 4) is None


def test_find_copies_screens_distinct_clouds(monkeypatch):
    import lightning_geom.geometry.copies as cp

    monkeypatch.setattr(cp, "_KEY_CHUNK_BYTES", 8 * 8 * 7)  # 7 rows a chunk: the keys come in pieces
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g)
    assert find_copies(x) is None
    y = torch.cat([x, x[:3]])
    c = find_copies(y)
    assert c is not None and c.points.shape[0] == 500 and int(c.counts.max()) == 2
    assert torch.equal(c.points[c.inverse], y)


def test_layer_geometry_with_copies_matches_the_two_knn_path():
    """The record and the overlap indices from one kNN of the distinct points equal those of the
    full kNN + a separate kNN of the distinct points."""
    x = _with_copies(400, 6, 3)
    labels = torch.arange(x.shape[0]) % 3
    s = GeometrySettings()
    rec, idx = layer_geometry(x, labels, s)
    ref_nb = knn(x, layer_k(x.shape[0], s))
    tw, curve, warning = _distinct_id(x, s)
    assert rec["warning"] == warning and rec["twonn"] == tw.dim and rec["gride"] == curve.to_dict()
    assert torch.equal(idx, ref_nb.indices[:, : s.overlap_k])
    ref_rec, _ = layer_geometry(x, labels, s, neighbors=ref_nb)  # the precomputed-kNN path: two kNN
    assert rec == ref_rec


def test_layer_geometry_takes_every_knn_from_knn_fn():
    """The kNN of a layer comes from ``knn_fn`` (the monitor's split kNN under DDP): with copies one call,
    on the distinct points, and the same record as the default."""
    x = _with_copies(400, 6, 3)
    labels = torch.arange(x.shape[0]) % 3
    s = GeometrySettings()
    calls = []

    def counting(points, k):
        calls.append((int(points.shape[0]), k))
        return knn(points, k)

    rec, idx = layer_geometry(x, labels, s, knn_fn=counting)
    ref_rec, ref_idx = layer_geometry(x, labels, s)
    assert rec == ref_rec and torch.equal(idx, ref_idx)
    assert calls == [(find_copies(x).points.shape[0], layer_k(x.shape[0], s) + 1)]
    calls.clear()
    y = torch.randn(300, 5, generator=torch.Generator().manual_seed(1))  # no copies: one kNN of every point
    layer_geometry(y, None, s, knn_fn=counting)
    assert calls == [(300, layer_k(300, s))]


def test_expand_copies_needs_k_plus_one_neighbours():
    x = _with_copies(50, 3, 1)
    copies = find_copies(x)
    with pytest.raises(ValueError, match="k \\+ 1"):
        expand_copies(knn(copies.points, 4), copies, 4)


def test_expand_copies_merges_tied_groups_by_index():
    """Location 0 has two neighbouring locations at distance 1 (1 and -1), their copies' indices
    interleaved: when both groups lie inside the k neighbours they are merged by point index, as knn does."""
    v = [1.0, -1.0, 0.0, 1.0, -1.0, 2.5, -4.0, 7.3, 0.0, -1.0, 1.0, 2.5, 13.7, 21.1, 33.9, -57.3, 91.7]
    x = torch.tensor(v).unsqueeze(1)
    assert all(_check(x, k) for k in (7, 8, 9))
    assert not _check(x, 3)  # the k-th neighbour of the points at 0 cuts through the tie: declined


def test_distinct_clouds_keeps_first_occurrences_in_order():
    from lightning_geom.geometry import distinct_clouds

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 3, generator=g)
    x[0, 4] = x[0, 1]
    x[0, 6] = x[0, 1]
    x[2, 3] = x[2, 0]
    x[3, 5] = x[3, 0]  # in the padding of cloud 3: not a point
    lengths = torch.tensor([7, 7, 5, 3])
    out, counts = distinct_clouds(x, lengths)
    assert counts.tolist() == [5, 7, 4, 3]
    assert torch.equal(out[0, :5], x[0, [0, 1, 2, 3, 5]])
    assert torch.equal(out[1], x[1])  # no copies: unchanged
    assert torch.equal(out[2, :4], x[2, [0, 1, 2, 4]])
    assert torch.equal(out[3, :3], x[3, :3])


def test_per_prompt_id_is_that_of_each_prompts_distinct_tokens():
    """Token embeddings repeat within a prompt: each prompt's GRIDE / TwoNN equal the single-cloud
    estimators on its distinct tokens (the pooled path's and DADApy's remove_identical_points policy);
    a prompt with <= k distinct tokens has none; one warning gives the count."""
    from lightning_geom.analysis import token_geometry
    from lightning_geom.geometry import DuplicatePointsWarning, id_profile

    g = torch.Generator().manual_seed(1)
    vocab = torch.randn(40, 16, generator=g)
    ids = torch.randint(0, 40, (6, 30), generator=g)
    ids[5, :] = ids[5, 0] % 5  # prompt 5: 1 distinct token
    lengths = torch.tensor([30, 30, 25, 30, 20, 30])
    feats = [vocab[ids], vocab[ids] + 0.01 * torch.randn(6, 30, 16, generator=g)]  # layer 1: no copies
    with pytest.warns(DuplicatePointsWarning, match="exact copies of another token of their prompt"):
        recs, dropped = token_geometry(feats, lengths, k=8)
    assert dropped == 0
    per = recs[0]["per_prompt"]
    j = recs[0]["token_id_n1"]
    for p in range(6):
        cloud = torch.unique(feats[0][p, : lengths[p]], dim=0)
        if cloud.shape[0] <= 8:
            assert per[p] is None
            continue
        tw, curve = id_profile(cloud, range_max=8)
        assert per[p] == pytest.approx(curve.dims[curve.ranks.index(j)], rel=1e-9)
    assert recs[0]["n_prompts"] == 5
    assert all(v is not None for v in recs[1]["per_prompt"])


def test_per_prompt_layer_without_enough_distinct_tokens_is_none_not_an_error():
    """A layer where no prompt has more than k distinct tokens (a 3-token vocabulary) has no per-prompt
    ID (None, n_prompts 0); the other layers are measured."""
    from lightning_geom.analysis import token_geometry
    from lightning_geom.geometry import DuplicatePointsWarning

    g = torch.Generator().manual_seed(2)
    vocab = torch.randn(3, 8, generator=g)
    ids = torch.randint(0, 3, (4, 20), generator=g)
    feats = [vocab[ids], vocab[ids] + 0.05 * torch.randn(4, 20, 8, generator=g)]
    with pytest.warns(DuplicatePointsWarning, match="4 prompts with <= k = 8 distinct tokens have none"):
        recs, _ = token_geometry(feats, torch.full((4,), 20), k=8)
    assert recs[0]["token_id"] is None and recs[0]["token_twonn"] is None and recs[0]["n_prompts"] == 0
    assert recs[0]["per_prompt"] == [None] * 4
    assert recs[1]["n_prompts"] == 4 and recs[1]["token_id"] > 0
    assert recs[0]["token_overlap_next"] is not None  # the overlaps keep every token


def test_key_collisions_do_not_hide_copies():
    """Rows that differ only outside the hashed coordinates share a key: the copies are still found
    (find_copies through unique, distinct_clouds through its exact fallback)."""
    from lightning_geom.geometry import distinct_clouds, row_keys

    g = torch.Generator().manual_seed(5)
    d = 200
    hashed = torch.linspace(0, d - 1, 64).round().long().unique()
    free = torch.tensor([c for c in range(d) if c not in set(hashed.tolist())])
    a = torch.randn(d, generator=g)
    b = a.clone()
    b[free[0]] += 1.0  # same key as a, another row
    x = torch.stack([a, b, a, torch.randn(d, generator=g), b, a]).unsqueeze(0).repeat(2, 1, 1)
    assert row_keys(x[0])[0] == row_keys(x[0])[1]
    out, counts = distinct_clouds(x, torch.tensor([6, 4]))
    assert counts.tolist() == [3, 3]
    assert torch.equal(out[0, :3], x[0, [0, 1, 3]]) and torch.equal(out[1, :3], x[1, [0, 1, 3]])
    c = find_copies(x[0])
    assert c is not None and c.points.shape[0] == 3 and sorted(c.counts.tolist()) == [1, 2, 3]
    assert find_copies(x[0, [0, 1, 3]]) is None  # a key collision, no copies


def test_a_layer_with_copies_matches_dadapy_remove_identical_points(reference):
    """The oracle: DADApy's remove_identical_points, then TwoNN and the GRIDE scaling (fixture)."""
    import numpy as np
    from reference_datasets import copies_d4_D30

    ref = reference["copies_cases"]["copies_d4_D30"]
    x = torch.from_numpy(copies_d4_D30())
    assert x.shape[0] == ref["N"]
    s = GeometrySettings(range_max=32)
    rec, _ = layer_geometry(x, None, s)
    assert rec["warning"].startswith(f"{ref['N'] - ref['N_distinct']} of {ref['N']} points are exact copies")
    assert rec["twonn"] == pytest.approx(ref["twonn"], abs=1e-6)
    np.testing.assert_allclose(rec["gride"]["dims"], ref["gride_ids"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(rec["gride"]["scales"], ref["gride_rs"], atol=1e-9, rtol=0)


def test_a_prompt_with_copies_matches_dadapy_remove_identical_points(reference):
    """The per-prompt path (distinct_clouds + knn_batched + id_batched) against the same oracle."""
    from reference_datasets import copies_d4_D30

    from lightning_geom.analysis import token_geometry
    from lightning_geom.geometry import DuplicatePointsWarning

    ref = reference["copies_cases"]["copies_d4_D30"]
    x = torch.from_numpy(copies_d4_D30()).unsqueeze(0)
    with pytest.warns(DuplicatePointsWarning, match=f"{ref['N'] - ref['N_distinct']} of {ref['N']} tokens"):
        recs, _ = token_geometry([x], torch.tensor([x.shape[1]]), k=32, n1=2)
    assert recs[0]["token_id_n1"] == 2
    assert recs[0]["per_prompt"][0] == pytest.approx(ref["gride_ids"][1], abs=1e-6)
    assert recs[0]["token_twonn"] == pytest.approx(ref["twonn"], abs=1e-6)


def test_signed_zeros_are_copies():
    """Rows equal under == but for the sign of a zero are copies (their keys agree)."""
    x = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0], [4.0, 0.5]])
    c = find_copies(x)
    assert c is not None and c.counts.tolist() == [2, 1, 1]


def test_distinct_clouds_in_chunks_equal_one_chunk(monkeypatch):
    import lightning_geom.geometry.copies as cp

    g = torch.Generator().manual_seed(9)
    vocab = torch.randn(12, 5, generator=g)
    x = vocab[torch.randint(0, 12, (7, 15), generator=g)]
    lengths = torch.randint(3, 16, (7,), generator=g)
    whole = cp.distinct_clouds(x, lengths)
    monkeypatch.setattr(cp, "_KEY_CHUNK_BYTES", 15 * 5 * 4 * 2)  # two clouds a chunk
    parts = cp.distinct_clouds(x, lengths)
    assert torch.equal(whole[0], parts[0]) and torch.equal(whole[1], parts[1])
    for b in range(7):  # against the exact rule, cloud by cloud
        keep = cp._first_occurrences(x[b, : lengths[b]])
        assert torch.equal(whole[0][b, : int(whole[1][b])], x[b, : lengths[b]][keep])
