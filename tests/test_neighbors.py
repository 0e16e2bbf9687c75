import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from lightning_geom.geometry import Neighbors, gride, gride_scaling, knn, label_overlap, twonn


def _brute(x: np.ndarray, k: int):
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "d", "k", "block"), [(300, 7, 10, None), (257, 50, 33, 64), (40, 3, 39, 7)])
def test_knn_matches_cdist(dtype, n, d, k, block):
    x = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
    nb = knn(x, k, block_size=block)
    dist, idx = _brute(x.astype(np.float64), k)
    np.testing.assert_array_equal(nb.indices.numpy(), idx)
    np.testing.assert_allclose(nb.distances.numpy(), dist, rtol=1e-12, atol=0)
    assert nb.distances.dtype == torch.float64 and nb.indices.dtype == torch.int64


def test_knn_torch_and_numpy_agree_and_do_not_mutate():
    x = torch.randn(100, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before = x.clone()
    a, b = knn(x, 5), knn(x.numpy(), 5)
    assert torch.equal(x, before)
    assert torch.equal(a.indices, b.indices)


def test_near_duplicates_survive_float32():
    """Cancellation would turn 1e-5 distances between 1e3-norm points into 0 or garbage."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((500, 64)) * 1e3 + 5e3
    x = np.concatenate([base, base[:50] + 1e-5 * rng.standard_normal((50, 64))])
    nb = knn(x, 2)
    dist, idx = _brute(x, 2)
    np.testing.assert_allclose(nb.distances.numpy(), dist, rtol=1e-9)
    assert (nb.distances[:50, 0] > 0).all()
    np.testing.assert_array_equal(nb.indices[:50, 0].numpy(), np.arange(500, 550))


def test_exact_duplicates_have_zero_distance_and_index_ties_break_low():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    nb = knn(x, 2)
    assert nb.indices[0].tolist() == [1, 3]
    assert nb.distances[0].tolist() == [0.0, 0.0]


def test_certificate_fallback_rows_are_exact():
    """margin=0 forces the certificate to catch rows whose float32 ranking may be wrong."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 4))
    x[100:] = x[:100] + 1e-7 * rng.standard_normal((100, 4))  # many near-ties
    nb = knn(x, 3, margin=0)
    dist, idx = _brute(x, 3)
    np.testing.assert_allclose(nb.distances.numpy(), dist, rtol=1e-9)


def test_head_and_validation():
    nb = knn(np.random.default_rng(0).standard_normal((20, 3)), 5)
    assert isinstance(nb, Neighbors) and nb.head(2).k == 2 and nb.n_points == 20
    with pytest.raises(ValueError, match=r"Expected `k` in \[1, 5\]"):
        nb.head(6)


@pytest.mark.parametrize(
    ("x", "k", "err", "match"),
    [
        (np.zeros((5,)), 1, ValueError, r"shape \(N, D\)"),
        (np.zeros((0, 3)), 1, ValueError, "non-empty"),
        ({"x": [1.0, 2.0]}, 1, TypeError, "torch.Tensor or numpy.ndarray"),
        ([["a", "b"]] * 3, 1, TypeError, "array of numbers"),
        (np.random.default_rng(0).standard_normal((5, 2)), 5, ValueError, r"\[1, N - 1\] = \[1, 4\]"),
        (np.random.default_rng(0).standard_normal((5, 2)), 0, ValueError, "integer in"),
    ],
)
def test_knn_bad_input(x, k, err, match):
    with pytest.raises(err, match=match):
        knn(x, k)


def test_knn_names_nonfinite_rows():
    x = np.ones((10, 3)) * np.arange(10)[:, None]
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of 10 rows contain NaN or Inf \(rows \[3, 7\]\)"):
        knn(x, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_identical_points_exact_and_index_ordered(dtype):
    """Issue 13: a big group of identical points (last-token pooling of layer 0) fails the
    certificate row by row; the fallback must stay exact (ties by smaller index) in bounded memory."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g, dtype=dtype)
    x[::2] = x[0]  # half the points are one location
    x[1:40:2] = x[1]  # and a smaller group of copies
    nb = knn(x, 20)
    d = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    ref = torch.sort(d, dim=1, stable=True)
    assert torch.equal(nb.indices, ref.indices[:, :20])
    torch.testing.assert_close(nb.distances, ref.values[:, :20], rtol=0, atol=1e-12)


def test_knn_plans_its_memory_before_allocating(monkeypatch):
    """Issue 13: a problem that cannot fit is refused up front with sizes and a fix; a default block shrinks."""
    import lightning_geom.geometry.neighbors as nbm

    x = torch.randn(3000, 64, generator=torch.Generator().manual_seed(0))
    ref = knn(x, 10)
    need_small = nbm.knn_bytes(3000, 64, 14, 256)
    monkeypatch.setattr(nbm, "available_bytes", lambda device: int(need_small / 0.8) + 1)
    planned = knn(x, 10, block_size=None)  # the default block shrinks to fit, same answer
    assert torch.equal(planned.indices, ref.indices)
    with pytest.raises(MemoryError, match=r"needs about [\d.]+ (KiB|MiB|GiB) .* smaller `block_size`"):
        knn(x, 10, block_size=3000)
    monkeypatch.setattr(nbm, "available_bytes", lambda device: 1000)
    with pytest.raises(MemoryError, match="fewer points"):
        knn(x, 10)


def test_memory_budget_caps_the_working_set_and_keeps_the_answer():
    """Issue 10: `knn(..., memory_budget=)` plans blocks, the symmetric buffer and the recompute inside it."""
    import subprocess
    import sys

    code = r"""
import resource, sys, torch
from lightning_geom.geometry import knn
x = torch.randn(12000, 32, generator=torch.Generator().manual_seed(0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
nb = knn(x, 16, memory_budget=64 << 20)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
x64 = x.double()  # the process's first knn: its distances against the float64 differences
exact = torch.linalg.vector_norm(x64.unsqueeze(1) - x64[nb.indices], dim=-1)
assert ((nb.distances - exact).abs() / exact).max() < 1e-14, "first call's distances are off"
ref = knn(x, 16)
assert torch.equal(nb.indices, ref.indices) and torch.equal(nb.distances, ref.distances)
print(grew)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grew = int(out.stdout.strip().splitlines()[-1])
    assert grew < (64 << 20) + (16 << 20), grew  # the budget, plus allocator slack
    with pytest.raises(MemoryError, match="memory_budget is"):
        knn(torch.randn(3000, 64), 10, memory_budget=1 << 20)
    with pytest.raises(ValueError, match="positive number of bytes"):
        knn(torch.randn(30, 4), 3, memory_budget=-1)


def test_sqrt_exact_is_correctly_rounded():
    """On a CPU the Gram recompute's root comes from the hardware instruction (torch's MKL sqrt was
    once off by 3e-11 relative on a worker thread's first call after an sgemm: `sqrt_exact_`)."""
    from lightning_geom.geometry.neighbors import sqrt_exact_

    _ = torch.randn(512, 64) @ torch.randn(64, 512)  # an sgemm first, as in knn
    t = torch.rand(3000, 40, dtype=torch.float64) * 10
    want = torch.from_numpy(np.sqrt(t.numpy()))
    got = sqrt_exact_(t.clone())
    assert torch.equal(got, want)
    assert torch.equal(sqrt_exact_(t[:, ::2].clone()), want[:, ::2])


def test_cpu_plan_counts_the_buffers_knn_really_allocates(monkeypatch):
    """The CPU recompute works in 4 MiB chunks: a machine with ~200 MB free keeps its 1024-row blocks."""
    import lightning_geom.geometry.neighbors as nbm

    monkeypatch.setattr(nbm, "available_bytes", lambda device: 200 << 20)
    assert nbm.plan_memory(10000, 768, 68, 1024, torch.device("cpu")) == 1024


def test_available_memory_counts_the_page_cache():
    from pathlib import Path

    import lightning_geom.geometry.neighbors as nbm

    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo")
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    avail = int(fields["MemAvailable"].split()[0]) * 1024
    assert abs(nbm.available_bytes(torch.device("cpu")) - avail) < (256 << 20)  # MemAvailable, not MemFree


def _clouds_with_ties_and_cancellation(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if kind == "gauss":
        return torch.randn(600, 96, generator=g)
    if kind == "lattice":  # integer grid: exact ties at every distance
        grid = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        return torch.cat([0.1 * grid + 0.37, torch.full((grid.shape[0], 29), 0.3)], dim=1)  # inexact decimals
    if kind == "far_clusters":  # tight clusters far from the centroid: the identity cancels, pairs fall back
        centres = 100.0 * torch.randn(6, 40, generator=g)
        return (centres.repeat_interleave(100, 0) + 1e-3 * torch.randn(600, 40, generator=g)).float()
    x = torch.randn(300, 20, generator=g, dtype=torch.float64)  # exact copies and near-copies
    return torch.cat([x, x[:100], x[100:200] + 1e-9])


@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("kind", ["gauss", "lattice", "far_clusters", "copies"])
def test_gram_recompute_equals_the_difference_recompute(kind, reorder, monkeypatch):
    """The CPU's Gram-identity recompute (one sampled matmul; ``reorder``: with the points reordered for
    locality, as beyond the cache) against the difference recompute: the same indices, ties broken
    alike, distances to 1e-12; and the Gram path really ran."""
    from lightning_geom.geometry import neighbors as nbm

    if reorder:
        monkeypatch.setattr(nbm, "_GRAM_CACHE_BYTES", 0)
    x = _clouds_with_ties_and_cancellation(kind)
    calls = []
    real = nbm._gram_distances
    monkeypatch.setattr(nbm, "_gram_distances", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    fast = knn(x, 20)
    assert calls, "the Gram recompute did not run"
    monkeypatch.setattr(nbm, "gram_fits", lambda *a, **kw: False)
    exact = knn(x, 20)
    assert torch.equal(fast.indices, exact.indices)
    torch.testing.assert_close(fast.distances, exact.distances, rtol=1e-12, atol=0)
    ref = cdist(x.double().numpy(), x.double().numpy())
    np.fill_diagonal(ref, np.inf)
    np.testing.assert_allclose(fast.distances.numpy(), np.take_along_axis(ref, fast.indices.numpy(), 1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["far_clusters", "copies"])
def test_gram_distances_fall_back_to_the_difference_where_the_identity_cancels(kind):
    from lightning_geom.geometry import neighbors as nbm

    x = _clouds_with_ties_and_cancellation(kind)
    cols = knn(x, 20).indices
    rows = torch.arange(x.shape[0])
    dist, err = nbm._gram_distances(x, rows, cols, budget=1 << 22)
    exact = nbm._exact_distances(x, rows, cols)
    torch.testing.assert_close(dist, exact, rtol=1e-12, atol=0)  # the bare identity is off by 2.6e-6 / 1e293 here
    assert bool((err == 0).any())  # some pairs were recomputed from the difference


@pytest.mark.parametrize(("n", "k", "block"), [(1500, 10, 256), (1000, 40, 128), (700, 5, 200)])
def test_symmetric_candidates_down_the_columns_match_brute_force(n, k, block, monkeypatch):
    """The CPU default path (symmetric panels, two-stage top-k read down earlier panels' columns, the Gram
    recompute) at a small default block, so that many panels and both top-k routes run."""
    from lightning_geom.geometry import neighbors as nbm

    monkeypatch.setattr(nbm, "_default_block", lambda n, device: block)
    g = np.random.default_rng(n)
    x = np.concatenate([g.standard_normal((n - 50, 12)), np.round(g.standard_normal((50, 12)), 1)]).astype(np.float32)
    x[-10:] = x[-20:-10]  # exact copies: ties broken by index
    nb = knn(x, k)
    dist, idx = _brute(x.astype(np.float64), k)
    np.testing.assert_array_equal(nb.indices.numpy(), idx)
    np.testing.assert_allclose(nb.distances.numpy(), dist, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_points_give_the_exact_neighbours_of_their_values(dtype):
    """Half / bfloat16 points are widened exactly before centring: the answer is the float64 one on the same values."""
    from lightning_geom.geometry import knn_batched

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(400, 32, generator=g) * torch.logspace(-2, 1, 32) + 7.3).to(dtype)
    a, b = knn(x, 10), knn(x.double(), 10)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.distances, b.distances)
    c, d = knn_batched(x.view(4, 100, 32), 10), knn_batched(x.view(4, 100, 32).double(), 10)
    assert torch.equal(c.indices, d.indices)
    torch.testing.assert_close(c.distances, d.distances, rtol=1e-12, atol=0)


def test_memory_messages_use_readable_units():
    from lightning_geom.geometry.neighbors import format_bytes

    assert [format_bytes(b) for b in (1000, 1536, 3 << 20, 5 << 30)] == ["1000 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]
    with pytest.raises(MemoryError, match=r"needs about [\d.]+ MiB .* memory_budget is 1000 B\. Raise `memory_budget`"):
        knn(torch.randn(2000, 32), 5, memory_budget=1000)


def test_knn_takes_tensors_that_require_grad_and_refuses_complex_ones():
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    nb = knn(x.clone().requires_grad_(), 5)  # a measurement: no graph, no error from the out= GEMMs
    assert torch.equal(nb.indices, knn(x, 5).indices) and not nb.distances.requires_grad
    with pytest.raises(ValueError, match="real-valued"):
        knn(torch.randn(10, 3, dtype=torch.complex64), 2)


def _massive(n: int, d: int, seed: int) -> np.ndarray:
    """A cloud with an LLM's massive activations: 2 % of the points (one cluster) sit ~100x the median
    norm out along one axis, as some tokens' hidden states do in a pretrained decoder."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    out = rng.choice(n, n // 50, replace=False)
    x[out, 0] += 2e4 * (0.9 + 0.1 * rng.random(out.size)).astype(np.float32)
    x[out, 1] -= 3e3 * rng.random(out.size).astype(np.float32)
    return x


def test_a_few_points_of_huge_norm_do_not_fail_every_row(monkeypatch):
    """The certificate bounds a non-candidate's rounding by its own norm (huge-norm points are ruled out
    by the triangle inequality): with the largest norm in every row's bound, all 1,500 rows failed and
    went to the all-points fallback (48 s instead of 0.6 s for 4,650 SmolLM2 token states)."""
    from lightning_geom.geometry import neighbors

    refined = []
    real = neighbors._refine_failed
    monkeypatch.setattr(neighbors, "_refine_failed", lambda *a, **kw: refined.append(a[5].numel()) or real(*a, **kw))
    x = _massive(1500, 64, 7)
    nb = knn(x, 20)
    dist, idx = _brute(x.astype(np.float64), 20)
    np.testing.assert_array_equal(nb.indices.numpy(), idx)
    np.testing.assert_allclose(nb.distances.numpy(), dist, rtol=1e-10, atol=0)  # the Gram recompute's proven bound
    assert sum(refined) <= 1500 // 20, refined  # the outliers' own rows at most
    half = knn(x, 20, candidates="float16", margin=0)  # the widest certificate, no spare candidates
    np.testing.assert_array_equal(half.indices.numpy(), idx)


@pytest.mark.parametrize("kind", ["shells", "lattice", "graded"])
def test_norm_split_certificate_stays_exact_with_no_spare_candidates(kind):
    """margin=0 leaves the certificate alone to decide: points on spheres of radii 1 / 10 / 100, a lattice
    with exact ties (and a few points 1000x out), log-normal norms; float32 and float16 candidate passes."""
    rng = np.random.default_rng(5)
    n, d, k = 400, 12, 9
    if kind == "shells":
        x = rng.standard_normal((n, d))
        x *= rng.choice([1.0, 10.0, 100.0], (n, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    elif kind == "lattice":
        x = rng.integers(-2, 3, (n, d)).astype(float)
        x[:5] *= 1000.0
    else:
        x = rng.standard_normal((n, d)) * np.exp(2.0 * rng.standard_normal((n, 1)))
    dist, idx = _brute(x, k)
    for kw in ({"margin": 0}, {"margin": 0, "candidates": "float16"}):
        nb = knn(x, k, **kw)
        np.testing.assert_array_equal(nb.indices.numpy(), idx)
        np.testing.assert_allclose(nb.distances.numpy(), dist, rtol=1e-9, atol=0)


@pytest.mark.parametrize(("dtype", "exp"), [(torch.float64, 700), (torch.float64, -700), (torch.float32, 100), (torch.float32, -100)])
def test_points_far_outside_float32_range_are_rescaled_exactly(dtype, exp):
    """float64 data of magnitude 2^700 (or float32 at 2^100) used to overflow the float32 candidate pass
    (every distance inf: "exact copies") or underflow it (an IndexError); a power-of-two rescale keeps
    neighbours and distances exactly those of the unscaled points."""
    from lightning_geom.geometry import knn_batched, twonn

    torch.manual_seed(0)
    x = torch.randn(200, 5, dtype=dtype)
    s = 2.0**exp
    ref, far = knn(x, 4), knn(x * s, 4)
    assert torch.equal(far.indices, ref.indices)
    assert torch.equal(far.distances, ref.distances * s)
    assert twonn(x * s).dim == pytest.approx(twonn(x).dim, rel=1e-12)
    clouds = torch.stack([x[:100], x[100:]])
    bref, bfar = knn_batched(clouds, 3), knn_batched(clouds * s, 3)
    assert torch.equal(bfar.indices, bref.indices) and torch.equal(bfar.distances, bref.distances * s)


def test_integer_arguments_as_users_pass_them():
    """numpy and 0-d tensor integers are counts (k from an array's shape); floats, bools, a negative
    margin or a zero block size get one line naming the argument."""
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    ref = knn(x, 4)
    for k in (np.int64(4), torch.tensor(4)):
        nb = knn(x, k)
        assert torch.equal(nb.indices, ref.indices) and nb.k == 4
    assert label_overlap(ref, np.arange(40) % 3, k=np.int32(3)) == label_overlap(ref, np.arange(40) % 3, k=3)
    assert gride(x, n1=np.int64(2)).dim == gride(x, n1=2).dim
    assert gride_scaling(x, range_max=np.int64(8)).dims == gride_scaling(x, range_max=8).dims
    for bad in (2.0, True, torch.tensor(2.0)):
        with pytest.raises(ValueError, match="Expected `k` to be an integer"):
            knn(x, bad)
    with pytest.raises(ValueError, match="`margin` to be an integer >= 0"):
        knn(x, 3, margin=-1)
    with pytest.raises(ValueError, match="`block_size` to be a positive integer"):
        knn(x, 3, block_size=0)
    with pytest.raises(ValueError, match="`range_max` to be an integer"):
        gride_scaling(x, range_max=8.5)
    with pytest.raises(ValueError, match="discard_fraction"):
        twonn(x, discard_fraction="0.1")
