"""Memory-planned kNN at large N (issue 10): `knn(x, k, memory_budget=B)` stays inside B and equals the
unbudgeted answer.

Each run happens in a fresh subprocess, so that its peak resident memory (``ru_maxrss``) is its own;
the growth of the peak over the input's footprint is reported next to the budget.

    python benchmarks/bench_knn_memory.py                      # N = 60,000, D = 32, k = 16, 512 MB
    python benchmarks/bench_knn_memory.py --n 100000 --d 64 --budget-mb 1024
    python benchmarks/bench_knn_memory.py --device cuda --n 1000000 --d 768 --k 64 --budget-mb 16384
    python benchmarks/bench_knn_memory.py --device cuda --n 1000000 --d 768 --k 64 --budget-mb 16384 --matmul-precision high --candidates float32

The reference run (no budget, IEEE float32 candidates) must give the same indices and distances.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_RUN = r"""
import json, resource, sys, time, torch
from lightning_geom.geometry import knn
n, d, k, budget, device, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
candidates, precision = sys.argv[7], sys.argv[8]
if precision != "default":
    torch.set_float32_matmul_precision(precision)
x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(device)
if device.startswith("cuda"):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
nb = knn(x, k, memory_budget=budget if budget > 0 else None, candidates=candidates)
if device.startswith("cuda"):
    torch.cuda.synchronize()
sec = time.perf_counter() - t
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
if device.startswith("cuda"):
    grew = torch.cuda.max_memory_allocated() - base
torch.save({"i": nb.indices.cpu(), "d": nb.distances.cpu()}, out)
print(json.dumps({"seconds": sec, "peak_growth": grew}))
"""


def _one(n: int, d: int, k: int, budget: int, device: str, out: Path, candidates: str = "auto", precision: str = "default") -> dict:
    res = subprocess.run([sys.executable, "-c", _RUN, str(n), str(d), str(k), str(budget), device, str(out), candidates, precision],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--budget-mb", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--candidates", default="auto", choices=["auto", "float32", "float16"],
                   help="knn's candidate GEMM precision (auto: float16 on a GPU from N = 32,768)")
    p.add_argument("--matmul-precision", default="default", choices=["default", "highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision in the runs (high: TF32 float32 GEMMs on a GPU)")
    args = p.parse_args(argv)
    import torch

    budget = args.budget_mb << 20
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "budget.pt", Path(tmp) / "free.pt"
        capped = _one(args.n, args.d, args.k, budget, args.device, a, args.candidates, args.matmul_precision)
        # the reference: no budget, IEEE float32 candidates (what the budgeted run's plan and precision must equal)
        free = _one(args.n, args.d, args.k, 0, args.device, b, "float32", "highest")
        ra, rb = torch.load(a), torch.load(b)
        same = torch.equal(ra["i"], rb["i"]) and torch.equal(ra["d"], rb["d"])
    mem = "GPU peak allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print(f"knn N = {args.n}, D = {args.d}, k = {args.k} on {args.device}")
    print(f"  memory_budget {args.budget_mb} MB, candidates {args.candidates}, matmul precision {args.matmul_precision}: "
          f"{capped['seconds']:.1f} s, {mem} {capped['peak_growth'] / 2**20:.0f} MB "
          f"({'within' if capped['peak_growth'] <= budget else 'OVER'} the budget)")
    print(f"  no budget, float32 candidates, IEEE: {free['seconds']:.1f} s, {mem} {free['peak_growth'] / 2**20:.0f} MB")
    print(f"  same indices and distances: {same}")
    return 0 if same and capped["peak_growth"] <= budget else 1


if __name__ == "__main__":
    sys.exit(main())
