"""knn on clouds shaped like a real LLM's token states: a few points of huge norm ("massive activations").

SmolLM2-135M's pooled token states (4,650 tokens, D = 576) have norms from 114 to 28,590 (median 169):
a handful of tokens sit ~170x the median norm out along a few axes. Gaussian benchmark data has
nothing of the kind, and knn's certificate (a rounding bound per candidate pair) used to take the
largest norm in every row's bound: every row failed and went to the all-points fallback (48 s).

Timed per cloud, the same N and D with and without the outliers:
  ours    knn(x, k) (exact), and how many rows the certificate sent to the fallback
  GEMM    x @ x.T (float32): the floor
  naive   torch.cdist + topk (float32, no exactness)

    python benchmarks/bench_outliers.py                 # N = 4,650, D = 576, k = 64, CPU
    python benchmarks/bench_outliers.py --device cuda --n 50000 --d 768

Prints medians of ``--repeats`` runs and the ratios ours/GEMM and ours/naive.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_geom.geometry import knn
from lightning_geom.geometry import neighbors as nb_mod


def cloud(n: int, d: int, *, outliers: float, seed: int = 0) -> torch.Tensor:
    """Gaussian token states of norm ~170 (std 7 per axis at D = 576); a fraction ``outliers`` of them
    (one cluster) pushed ~28,000 out along axis 3 and up to 5,000 along axis 7, as SmolLM2's are."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 7.0
    m = int(round(outliers * n))
    if m:
        out = torch.randperm(n, generator=g)[:m]
        x[out, 3] += 28_000.0 * (0.8 + 0.2 * torch.rand(m, generator=g))
        x[out, 7] -= 5_000.0 * torch.rand(m, generator=g)
    return x


def _time(fn, device: torch.device, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4650)
    p.add_argument("--d", type=int, default=576)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--outliers", type=float, default=0.02, help="fraction of points of huge norm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    refined: list[int] = []
    real = nb_mod._refine_failed

    def counting(*a, **kw):
        refined.append(int(a[5].numel()))
        return real(*a, **kw)

    nb_mod._refine_failed = counting
    print(f"N = {args.n}, D = {args.d}, k = {args.k}, device {device}")
    print(f"{'cloud':>22} {'ours s':>8} {'GEMM s':>8} {'naive s':>8} {'ours/GEMM':>9} {'ours/naive':>10} {'rows to fallback':>16}")
    for frac in (0.0, args.outliers):
        x = cloud(args.n, args.d, outliers=frac).to(device)
        norms = x.norm(dim=1)
        refined.clear()
        knn(x, args.k)  # warm-up, and the rows the certificate fails
        failed = sum(refined)
        ours = _time(lambda x=x: knn(x, args.k), device, args.repeats)
        gemm = _time(lambda x=x: x @ x.T, device, args.repeats)
        naive = _time(lambda x=x: torch.cdist(x, x).topk(args.k + 1, largest=False), device, args.repeats)
        name = f"{100 * frac:g} % outliers" if frac else "gaussian"
        print(f"{name:>22} {ours:8.3f} {gemm:8.3f} {naive:8.3f} {ours / gemm:9.1f} {ours / naive:10.2f} {failed:>16}"
              f"   (norms {float(norms.min()):.0f}..{float(norms.max()):.0f}, median {float(norms.median()):.0f})")
    nb_mod._refine_failed = real


if __name__ == "__main__":
    main()
