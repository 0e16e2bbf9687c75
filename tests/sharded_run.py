"""Run knn_sharded and knn_split on `world` gloo processes; rank 0 writes the results (used by test_sharded.py)."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _points(n: int = 901, d: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    x[::5] = x[3]  # a group of identical points: the certificate's fallback across shards
    return x


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lightning_geom.geometry import knn_sharded, knn_split

    x = _points()
    whole = knn_split(x, 10)  # every rank: the whole answer, rows computed 1 / world each
    if rank == 0:
        torch.save((whole.distances, whole.indices), out + ".split")
    bounds = [0, 300, 610, 901] if world == 3 else [0, 450, 901]  # unequal shards
    nb = knn_sharded(x[bounds[rank] : bounds[rank + 1]], 10)
    parts = [None] * world
    dist.all_gather_object(parts, (nb.distances, nb.indices))
    if rank == 0:
        torch.save((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])), out)
    dist.destroy_process_group()


if __name__ == "__main__":
    world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    mp.spawn(_worker, args=(world, port, out), nprocs=world)
