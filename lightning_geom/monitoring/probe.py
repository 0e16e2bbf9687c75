"""The probe set of a monitor, framework-free: batches from any source, sharding across ranks, gathering.

Every rank calls the collectives, whatever happened locally, so a failure never hangs DDP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset, SubsetRandomSampler

from ..capture import LABEL_KEYS, map_tensors
from ..geometry.neighbors import available_bytes, gather_rows
from .collate import is_row_dataset, is_row_list, pad_collate, row_batches, row_problem
from .frames import frame_probe

__all__ = ["batch_len", "check_probe_kind", "probe_batches", "probe_fingerprint", "dist_info", "all_gather_objects", "gather_parts", "gather_features", "check_feature_memory", "shard"]


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
    raise TypeError(
        f"Cannot tell the size of a probe batch of type {type(batch).__name__}: a batch is a tensor, or a dict / "
        "tuple / list holding tensors with the samples on their first dimension (tokenize texts first)."
    )


def _is_array(v: Any) -> bool:
    return type(v).__module__ == "numpy" and hasattr(v, "shape") and getattr(v, "ndim", 0) > 0


def _from_numpy(v: Any) -> Tensor:
    """A numpy array as a tensor; floating point in torch's default dtype (as ``torch.tensor`` of a list
    of floats: a float64 array would not go through a float32 model)."""
    t = torch.as_tensor(v)
    return t.to(torch.get_default_dtype()) if t.is_floating_point() else t


def _as_tensors(probe: Any) -> Any:
    """A numpy array, or a dict's numpy arrays and (nested) lists of numbers, as tensors (floating point
    in torch's default dtype); anything else (tensors, scalars, other values a model takes as keyword
    arguments) as it is.

    Raises:
        TypeError: a dict value that is a list of texts or of mixed things (texts must be tokenized first).
    """
    if _is_array(probe):
        return _from_numpy(probe)
    if not isinstance(probe, Mapping):
        return probe
    out = {}
    for key, v in probe.items():
        if key in LABEL_KEYS and _is_text_list(v):  # class names: their codes in sorted-name order
            v = class_codes(v.tolist() if _is_array(v) else v)[0]
        elif _is_array(v):
            v = _from_numpy(v)
        elif isinstance(v, (list, tuple)) and v:
            try:
                v = torch.as_tensor(v)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    f"The probe's {key!r} is a {type(v).__name__} that is not numbers; a probe dict holds (N, ...) tensors "
                    "(tokenize texts first, e.g. tokenizer(texts, padding=True, return_tensors='pt'))."
                ) from None
        out[key] = v
    return out


def class_codes(values: Sequence[Any]) -> tuple[Tensor, list[str]]:
    """Class labels of any kind as (N,) codes in sorted-name order, and the names (``str`` of each value)."""
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[str(v)] for v in values]), names


def _is_text_list(v: Any) -> bool:
    """A list / tuple / numpy array of strings (class names, say)."""
    if _is_array(v):
        return v.dtype.kind in "USO" and v.ndim == 1 and all(isinstance(x, str) for x in v.tolist())
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, str) for x in v)


_PROBE_KINDS = "a DataLoader, a Dataset, a dict of tensors, an (inputs, labels) tuple of tensors or a tensor"


def is_sample_tuple(probe: Any) -> bool:
    """An ``(inputs, labels, ...)`` tuple of tensors or arrays holding the same N samples (as a
    ``TensorDataset`` takes them): one batch, not a sequence of batches. A list of tensors is the
    latter (batches of token ids, say) unless its items differ in dtype (float inputs beside integer labels)."""
    if not isinstance(probe, (tuple, list)) or not 2 <= len(probe) <= 4:
        return False
    items = [_from_numpy(v) if _is_array(v) else v for v in probe]
    if not all(isinstance(v, Tensor) and v.ndim > 0 for v in items):
        return False
    if len({int(v.shape[0]) for v in items}) != 1:
        return False
    return isinstance(probe, tuple) or len({v.dtype for v in items}) > 1


def _is_map_dataset(obj: Any) -> bool:
    """A torch map-style ``Dataset`` with at least one row."""
    if not isinstance(obj, Dataset) or isinstance(obj, torch.utils.data.IterableDataset):
        return False
    try:
        return len(obj) > 0  # type: ignore[arg-type]
    except TypeError:
        return False


def _first_row(obj: Any) -> Any:
    """``obj[0]``, or None when reading it fails (the checkpoint reports such a dataset's own error)."""
    try:
        return obj[0]
    except Exception:  # noqa: BLE001 - a user's dataset: its errors surface when the probe is read
        return None


def check_probe_kind(probe: Any) -> None:
    """Refuse, before training starts, what can never be a probe: a path or text, a list of texts, a
    number, an empty tensor or dict, or a dict whose input tensors hold different numbers of samples.

    Raises:
        TypeError: a kind that is no probe, with what to pass instead.
        ValueError: an empty probe, or a dict of tensors of different lengths.
    """
    probe = frame_probe(probe)  # a DataFrame of texts or categories: one line here, not at a checkpoint
    texts_first = (  # a (texts, labels) pair, as probe() takes it with a tokenizer
        isinstance(probe, tuple) and probe and isinstance(probe[0], (list, tuple)) and probe[0] and all(isinstance(t, str) for t in probe[0])
    )
    if isinstance(probe, (str, bytes)) or texts_first or (isinstance(probe, (list, tuple)) and probe and isinstance(probe[0], (str, bytes))):
        what = "a (texts, labels) pair" if texts_first else "a list of texts" if isinstance(probe, (list, tuple)) else "a string"
        raise TypeError(
            f"Expected `probe` to be {_PROBE_KINDS}, but got "
            f"{what}: tokenize texts first "
            "(tokenizer(texts, padding=True, return_tensors='pt')), or load a data file with "
            "lightning_geom.probing.data.load_probe_data."
        )
    if is_row_list(probe) or is_row_dataset(probe) or _is_map_dataset(probe):
        problem = row_problem(_first_row(probe))
        if problem is not None:
            raise TypeError(f"Expected `probe` to hold model inputs, but {problem}.")
    if isinstance(probe, (bool, int, float, complex)):
        raise TypeError(f"Expected `probe` to be {_PROBE_KINDS}, but got the number {probe!r}; `num_samples=` sets its size.")
    if isinstance(probe, Tensor) and (probe.ndim == 0 or probe.shape[0] == 0):
        raise ValueError(f"Expected `probe` to hold samples on its first dimension, but got a tensor of shape {tuple(probe.shape)}.")
    if isinstance(probe, Mapping):
        lengths = {
            key: int(v.shape[0]) for key, v in _as_tensors(probe).items() if isinstance(v, Tensor) and v.ndim > 0
        }
        if len(lengths) > 1:  # labels of another length are warned about and left out at the checkpoint
            lengths = {key: n for key, n in lengths.items() if key not in ("labels", "label")} or lengths
        if not lengths:
            raise ValueError(
                f"Expected the probe dict to hold (N, ...) tensors (e.g. input_ids), but it has {sorted(map(str, probe)) or 'no keys'}."
            )
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"Expected every tensor of the probe dict to hold the same number of samples (first dimension), but got {lengths}."
            )
        if not min(lengths.values()):
            raise ValueError(f"Expected the probe to hold samples, but its tensors are empty: {lengths}.")


def _slice(batch: Any, a: int, b: int) -> Any:
    return map_tensors(batch, lambda t: t[a:b])


def _to_cpu(batch: Any) -> Any:
    return map_tensors(batch, lambda t: t.detach().cpu())


def probe_batches(probe: Any, *, num_samples: int, batch_size: int) -> list[Any]:
    """The first ``num_samples`` samples of a probe as a list of CPU batches.

    Args:
        probe: a ``DataLoader``, a ``Dataset`` (torch's, or a Hugging Face ``datasets.Dataset`` of
            tokenized rows: padded by :func:`~.collate.pad_collate`), a dict of (N, ...) tensors, an
            ``(inputs, labels)`` tuple or an (N, ...) tensor (numpy arrays and nested lists of numbers
            are taken as tensors; a pandas DataFrame or (X, y) pair: :func:`~.frames.frame_probe`), a list of batches, or a list of samples (:func:`~.collate.is_row_list`:
            collated like a dataset's rows). A shuffling DataLoader is read in dataset order: the same probe
            at every checkpoint and after a resume.

    Raises:
        TypeError: any other kind of probe.
        ValueError: an empty probe.
    """
    probe = frame_probe(probe)  # pandas tables as tensors
    check_probe_kind(probe)
    if is_row_dataset(probe) or is_row_list(probe):  # a Hugging Face datasets.Dataset, a list of samples: rows, padded here
        batches = row_batches(probe, num_samples=num_samples, batch_size=batch_size)
        return [_to_cpu(b) for b in batches]
    probe = _as_tensors(probe)
    if is_sample_tuple(probe):
        probe = tuple(_from_numpy(v) if _is_array(v) else v for v in probe)
    if isinstance(probe, (Tensor, Mapping)) or is_sample_tuple(probe):
        n = min(batch_len(probe), num_samples)
        batches = [_to_cpu(_slice(probe, s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    else:
        if isinstance(probe, Dataset):  # rows of different lengths are padded (pad_collate; else torch's default)
            probe = DataLoader(probe, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)
        probe = _in_order(probe)
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


def _in_order(loader: Any) -> Any:
    """A shuffling DataLoader (``shuffle=True``: a ``RandomSampler``; a ``SubsetRandomSampler``'s subset)
    read in dataset order instead: the probe is "the first N samples", the same whatever the random
    state (a resumed run's included)."""
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return loader
    sampler = loader.sampler
    if isinstance(sampler, SubsetRandomSampler):
        dataset: Any = Subset(loader.dataset, [int(i) for i in sampler.indices])
    elif isinstance(sampler, RandomSampler) and not sampler.replacement:
        dataset = loader.dataset
    else:
        return loader
    return DataLoader(dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn, num_workers=0)


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


def gather_features(
    local: list[tuple[int, tuple[list[Tensor], Tensor | None, int]]], err: str | None, what: str
) -> tuple[list[Tensor], Tensor | None, int]:
    """Every rank's captured features, concatenated in probe (batch id) order, as tensors, the
    labels (None unless every batch has them) and the number of labels found (compare it with
    the number of samples: labels of the wrong length are dropped here, and the caller says so).

    ``local`` holds this rank's (batch id, (features per layer, labels or None, n)) parts. Only
    the small metadata (batch ids, counts, shapes, an error) travels pickled; the features travel
    as tensors: per layer one ``all_gather`` of this rank's rows, padded to the longest shard,
    on the features' device (gloo on CPU, NCCL on GPU; ``geometry.neighbors.gather_rows``). The gathered
    size is checked against the device's free memory first (``MemoryError`` naming the sizes).
    Raises on every rank if any rank failed, so a failure never hangs DDP. One process: no
    collective, the parts are concatenated.
    """
    local = sorted(local, key=lambda p: p[0])
    feats = [torch.cat([p[1][0][li] for p in local]) for li in range(len(local[0][1][0]))] if local else []
    has_labels = bool(local) and all(p[1][1] is not None for p in local)
    labels = torch.cat([p[1][1].reshape(-1) for p in local]) if has_labels else None
    n_labels = int(labels.shape[0]) if labels is not None else 0
    meta = {
        "ids": [p[0] for p in local], "counts": [int(p[1][2]) for p in local], "err": err, "n_labels": n_labels,
        "dims": [int(f.shape[1]) for f in feats], "labels": has_labels,
        "label_dtype": str(labels.dtype) if labels is not None else None,
    }
    everyone = all_gather_objects(meta)
    errors = [m["err"] for m in everyone if m["err"]]
    if errors:
        raise RuntimeError(f"{what} failed: {errors[0]}")
    if len(everyone) == 1:
        return feats, labels, n_labels
    dims = next(m["dims"] for m in everyone if m["dims"])
    if any(m["dims"] and m["dims"] != dims for m in everyone):
        raise RuntimeError(f"{what} failed: the ranks captured different layer widths {[m['dims'] for m in everyone]}.")
    sizes = [sum(m["counts"]) for m in everyone]
    device = feats[0].device if feats else torch.device("cpu")
    # the gathered rows and their concatenation, every layer
    check_feature_memory(sum(dims) * 4, sum(sizes), device, f"{what} (gathering from {len(everyone)} ranks)", copies=2)
    order = sorted((bid, r, j) for r, m in enumerate(everyone) for j, bid in enumerate(m["ids"]))

    def gather(t: Tensor | None, cols: int, dtype: torch.dtype) -> Tensor:
        mine = torch.zeros(0, cols, dtype=dtype, device=device) if t is None else t.reshape(t.shape[0], cols).to(device, dtype)
        parts = gather_rows(mine, sizes)
        pieces = []  # each rank's rows split by its batches, then put in batch-id order
        for part, m in zip(parts, everyone):
            pieces.append(list(torch.split(part, m["counts"])))
        return torch.cat([pieces[r][j] for _, r, j in order])

    out = [gather(feats[li] if feats else None, d, torch.float32) for li, d in enumerate(dims)]
    all_labels = None
    found = sum(m["n_labels"] for m in everyone)
    if all(m["labels"] and m["n_labels"] == sum(m["counts"]) for m in everyone if m["counts"]):
        dtype = getattr(torch, next(m["label_dtype"] for m in everyone if m["label_dtype"]).split(".")[-1])
        all_labels = gather(labels.to(device) if labels is not None else None, 1, dtype).reshape(-1)
    return out, all_labels, found


def check_feature_memory(per_sample: int, n_samples: int, device: torch.device | str, what: str, *, copies: int = 1) -> None:
    """Refuse, before holding them, features that would not fit: ``per_sample`` bytes (every
    captured layer of one sample) x ``n_samples`` x ``copies`` against 80 % of ``device``'s free
    memory (unknown free memory: no check).

    Raises:
        MemoryError: naming the sizes and what to change (fewer samples or layers).
    """
    need = per_sample * n_samples * copies
    free = _free_bytes(torch.device(device))
    if free is not None and need > 0.8 * free:
        raise MemoryError(
            f"{what}: {n_samples} probe samples x {per_sample / 2**20:.2f} MiB of features each (all captured layers) "
            f"need {need / 2**30:.2f} GiB on {device}, {free / 2**30:.2f} GiB are free; "
            "use fewer `num_samples` or fewer `layers`."
        )


def _free_bytes(device: torch.device) -> int | None:
    return available_bytes(device)


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
