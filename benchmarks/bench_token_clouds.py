"""Many small clouds (per-prompt token geometry, issue 10): clouds per second, batched vs looped.

    python benchmarks/bench_token_clouds.py                                   # CPU: B = 32, N = 256, D = 768
    python benchmarks/bench_token_clouds.py --device cuda --b 256 --n 1024    # the issue's H100 setting

Work per cloud: kNN (k = 64) + TwoNN + the GRIDE scale curve. Columns: our loop (``knn`` +
``id_profile`` per cloud), ours batched (``knn_batched`` + ``id_batched``), and the floor a user
would write without any exactness (one ``bmm`` + ``topk`` over all clouds, no estimators).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from lightning_geom.geometry import id_batched, id_profile, knn, knn_batched
from lightning_geom.profiling import OpCounter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--b", type=int, default=32)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.b, args.n, 12, generator=g)
    x = (z @ torch.randn(args.b, 12, args.d, generator=g) + 0.05 * torch.randn(args.b, args.n, args.d, generator=g)).to(device)

    def loop() -> None:
        for c in range(args.b):
            id_profile(knn(x[c], args.k), range_max=args.k)

    def batched() -> None:
        id_batched(knn_batched(x, args.k), range_max=args.k)

    def naive() -> None:
        torch.topk(torch.cdist(x, x), args.k + 1, dim=2, largest=False)

    batched()  # warm-up
    t_loop, t_batch, t_naive = (timed(f, device, args.repeats) for f in (loop, batched, naive))
    with OpCounter() as ops:
        batched()
    print(f"B = {args.b} clouds of N = {args.n}, D = {args.d}, k = {args.k} on {device}")
    print(f"{'':>22} {'s':>8} {'clouds/s':>10}")
    for name, t in (("loop (knn+id_profile)", t_loop), ("batched", t_batch), ("naive cdist+topk", t_naive)):
        print(f"{name:>22} {t:8.3f} {args.b / t:10.1f}")
    print(f"batched / loop speed-up {t_loop / t_batch:.1f}x; batched / naive {t_batch / t_naive:.2f}x; batched dispatches {ops.total} ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
