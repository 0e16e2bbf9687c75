"""knn / knn_batched stay exact when float32 matmuls round their inputs (TF32 on GPUs, bfloat16 on some CPUs).

``torch.set_float32_matmul_precision("high")`` (Lightning recommends it on Ampere and later) makes every
float32 GEMM on a GPU round its inputs to TF32; the certificate must know, or it certifies wrong
neighbours. A CPU cannot run TF32, so the candidate GEMMs are emulated here by truncating their
inputs' mantissas (what TF32 / bfloat16 tensor cores do) through the modules' GEMM seams.
"""

import pytest
import torch

import lightning_geom.geometry.batched as batched_mod
import lightning_geom.geometry.neighbors as nb_mod
from lightning_geom.geometry import knn, knn_batched
from lightning_geom.geometry.neighbors import matmul_unit


def _truncate(t: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 values with only ``bits`` explicit mantissa bits (rounded toward zero)."""
    return (t.contiguous().view(torch.int32) & ~((1 << (23 - bits)) - 1)).view(torch.float32)


def _rounding_gemms(monkeypatch, bits: int, unit: float) -> None:
    monkeypatch.setattr(nb_mod, "_gemm", lambda a, b, out: torch.mm(_truncate(a, bits), _truncate(b.T, bits).T, out=out))
    monkeypatch.setattr(batched_mod, "_gemm_batched", lambda c, a, b: torch.baddbmm(c, _truncate(a, bits), _truncate(b, bits)))
    monkeypatch.setattr(nb_mod, "matmul_unit", lambda device: unit)
    monkeypatch.setattr(batched_mod, "matmul_unit", lambda device: unit)


def _clusters(n_clusters: int, per: int, d: int, seed: int) -> torch.Tensor:
    """Tight clusters far from the centre: the GEMM's rounding (relative to |x|^2) exceeds the neighbours' gaps."""
    g = torch.Generator().manual_seed(seed)
    return (5 * torch.randn(n_clusters, d, generator=g)).repeat_interleave(per, 0) + torch.randn(n_clusters * per, d, generator=g)


@pytest.fixture
def restore_precision():
    saved = (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)
    yield
    torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision = saved


def test_matmul_unit_reads_the_backend_precision(restore_precision, monkeypatch):
    monkeypatch.setattr(nb_mod, "_cpu_has_low_precision_matmul", lambda: True)
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"
    assert matmul_unit(torch.device("cpu")) == 0.0 and matmul_unit(torch.device("cuda")) == 0.0
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    assert matmul_unit(torch.device("cuda")) == 2.0**-10
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    assert matmul_unit(torch.device("cpu")) == 2.0**-7
    monkeypatch.setattr(nb_mod, "_cpu_has_low_precision_matmul", lambda: False)  # no bf16 / AMX units: IEEE
    assert matmul_unit(torch.device("cpu")) == 0.0


@pytest.mark.parametrize(("bits", "unit"), [(10, 2.0**-10), (7, 2.0**-7)])  # TF32, bfloat16
@pytest.mark.parametrize("block", [None, 256])  # the symmetric (augmented) GEMM and the row panels
def test_knn_is_exact_under_rounding_gemms(monkeypatch, bits, unit, block):
    x = _clusters(20, 100, 256, seed=0)
    ref = knn(x.double(), 20)
    _rounding_gemms(monkeypatch, bits, unit)
    fixed = []
    monkeypatch.setattr(nb_mod, "_fix_failed_rows", lambda *a, **kw: fixed.append(1) or (_ for _ in ()).throw(AssertionError))
    nb = knn(x, 20, block_size=block)
    assert torch.equal(nb.indices, ref.indices)
    torch.testing.assert_close(nb.distances, ref.distances, rtol=1e-12, atol=0)
    assert not fixed  # the wider candidate passes settled every failed row, no all-points recompute


def test_the_float32_certificate_alone_misses_rounding_gemms(monkeypatch):
    """Why the width matters: the same rounding GEMM certified as if it were IEEE float32 gives wrong neighbours."""
    x = _clusters(20, 100, 256, seed=0)
    ref = knn(x.double(), 20)
    _rounding_gemms(monkeypatch, 7, 0.0)
    assert not torch.equal(knn(x, 20).indices, ref.indices)


def test_knn_batched_is_exact_under_rounding_gemms(monkeypatch):
    x = _clusters(8, 60, 128, seed=1).view(1, 480, 128).repeat(6, 1, 1) + 0.1 * torch.randn(6, 480, 128, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([480, 300, 480, 200, 480, 479])
    ref = knn_batched(x.double(), 16, lengths=lengths)
    _rounding_gemms(monkeypatch, 7, 0.0)
    assert not torch.equal(knn_batched(x, 16, lengths=lengths).indices, ref.indices)  # unwidened: wrong
    _rounding_gemms(monkeypatch, 7, 2.0**-7)
    nb = knn_batched(x, 16, lengths=lengths)
    assert torch.equal(nb.indices, ref.indices)
    valid = ref.valid()
    torch.testing.assert_close(nb.distances[valid], ref.distances[valid], rtol=1e-12, atol=0)


def test_knn_ignores_an_autocast_region():
    x = _clusters(10, 50, 64, seed=3)
    ref, refb = knn(x.double(), 10), knn_batched(x.view(5, 100, 64).double(), 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nb, nbb = knn(x, 10), knn_batched(x.view(5, 100, 64), 10)
    assert torch.equal(nb.indices, ref.indices) and torch.equal(nbb.indices, refb.indices)


def _lattice(n: int, d: int, seed: int) -> torch.Tensor:
    """Integer points: exact distance ties everywhere (the order then rests on the tie-break alone)."""
    return torch.randint(0, 4, (n, d), generator=torch.Generator().manual_seed(seed)).to(torch.float32) * 0.5


@pytest.mark.parametrize("data", ["clusters", "gauss", "lattice", "far"])
@pytest.mark.parametrize("block", [None, 128])  # the symmetric (augmented) GEMM and the row panels
def test_float16_candidates_are_exact(data, block):
    g = torch.Generator().manual_seed(4)
    x = {
        "clusters": _clusters(12, 80, 96, seed=5),
        "gauss": torch.randn(900, 200, generator=g),
        "lattice": _lattice(700, 6, seed=6),
        "far": 1e4 + torch.randn(800, 32, generator=g) * 1e-2,  # tiny spread far from the origin: centring and scaling
    }[data]
    ref = knn(x.double(), 15, candidates="float32")
    nb = knn(x, 15, candidates="float16", block_size=block)
    assert torch.equal(nb.indices, ref.indices)
    torch.testing.assert_close(nb.distances, ref.distances, rtol=1e-12, atol=1e-300)


def test_float16_candidates_keep_rows_and_options():
    x = _clusters(10, 60, 64, seed=7)
    ref = knn(x, 8)
    part = knn(x, 8, candidates="float16", _rows=(100, 350))
    assert torch.equal(part.indices, ref.indices[100:350])
    with pytest.raises(ValueError, match="candidates"):
        knn(x, 8, candidates="bfloat16")
    assert not nb_mod._use_half("auto", torch.device("cpu"), 10**6)  # "auto" is float16 only on CUDA
