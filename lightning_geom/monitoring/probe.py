"""The probe set of a monitor, framework-free: batches from any source, sharding across ranks, gathering.

Every rank calls the collectives, whatever happened locally, so a failure never hangs DDP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..capture import map_tensors

__all__ = ["batch_len", "probe_batches", "probe_fingerprint", "dist_info", "all_gather_objects", "gather_parts", "shard"]


def batch_len(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        for item in batch:
            if isinstance(item, Tensor) and item.ndim > 0:
                return int(item.shape[0])
    raise TypeError(f"Cannot tell the size of a batch of type {type(batch).__name__}.")


def _slice(batch: Any, a: int, b: int) -> Any:
    return map_tensors(batch, lambda t: t[a:b])


def _to_cpu(batch: Any) -> Any:
    return map_tensors(batch, lambda t: t.detach().cpu())


def probe_batches(probe: Any, *, num_samples: int, batch_size: int) -> list[Any]:
    """The first ``num_samples`` samples of a probe as a list of CPU batches.

    Args:
        probe: a ``DataLoader``, a ``Dataset``, a dict of (N, ...) tensors or an (N, ...) tensor.

    Raises:
        TypeError: any other kind of probe.
        ValueError: an empty probe.
    """
    if isinstance(probe, (Tensor, Mapping)):
        n = min(batch_len(probe), num_samples)
        batches = [_to_cpu(_slice(probe, s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    else:
        if isinstance(probe, Dataset):
            probe = DataLoader(probe, batch_size=batch_size, shuffle=False)
        if not isinstance(probe, Iterable):
            raise TypeError(
                "Expected `probe` to be a DataLoader, a Dataset, a dict of tensors or a tensor, "
                f"but got {type(probe).__name__}."
            )
        batches, seen = [], 0
        for batch in probe:
            take = min(batch_len(batch), num_samples - seen)
            batches.append(_to_cpu(_slice(batch, 0, take)))
            seen += take
            if seen >= num_samples:
                break
    if not batches or sum(batch_len(b) for b in batches) == 0:
        raise ValueError("The probe set is empty: pass `probe=` with at least a few hundred samples.")
    return batches


def dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a one-element list without DDP). Every rank must call it."""
    rank, world = dist_info()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def gather_parts(local: list, err: str | None, what: str) -> list:
    """Every rank's (batch id, ...) parts, in batch order; raises (on every rank) if any rank failed.

    Every rank calls the collective, whatever happened locally, so a failure never hangs DDP.
    """
    gathered = all_gather_objects((local, err))
    errors = [e for _, e in gathered if e]
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]}")
    return sorted((p for loc, _ in gathered for p in loc), key=lambda p: p[0])


def probe_fingerprint(batches: list[Any]) -> str:
    """``"<n samples>:<sha1 prefix>"`` of the probe's tensors: a checkpoint's probe identity."""
    h = hashlib.sha1()
    n = 0
    for batch in batches:
        n += batch_len(batch)
        map_tensors(batch, lambda t: h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()))
    return f"{n}:{h.hexdigest()[:12]}"


def shard(batches: list[Any]) -> list[tuple[int, Any]]:
    """This rank's (batch id, batch) pairs: batches dealt round-robin over the ranks."""
    rank, world = dist_info()
    return [(i, b) for i, b in enumerate(batches) if i % world == rank]
