"""Exact Euclidean k-nearest neighbours: blocked float32 matmul + ``topk``, exact float64 recompute.

The floor of every geometry estimator is the distance GEMM (N x N x D multiply-adds). ``knn`` spends
its time there and wastes little after it:

1. centre the points (on a sampled coordinate-wise median: :func:`robust_centre`), cast to float32 and compute, one panel of rows at a time, the ranking
   score ``s_ij = <x_i, x_j> - |x_j|^2 / 2`` (so that ``|x_i - x_j|^2 = |x_i|^2 - 2 s_ij``), and keep
   the ``k + margin`` best candidates per row with ``topk``; the Gram matrix is symmetric, so only
   its upper triangle is multiplied (symmetric scores -|x_i - x_j|^2 / 2 from one GEMM of augmented
   points) and later rows read their scores down its columns (half the flops, no transposed copy);
2. recompute the kept distances in float64. On a CPU (default): from the float64 Gram identity
   ``|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>`` with the dot products from one sampled matmul (no gathered
   rows), wherever its proven rounding bound is below 1e-10 of the squared distance; near-duplicates
   and copies (where that identity cancels: a known failure of float32 TwoNN on N = 10k, D = 768
   embeddings), and rows with two distances closer than their bounds, take the norm of the
   *difference* of the points in float64 (the accelerator path does that for every pair);
3. certify each row: the exact k-th distance must lie below the float32 estimate of the last
   candidate minus a rounding-error bound (widened to the input rounding of TF32 / bf16 matmuls
   when ``torch.set_float32_matmul_precision`` or the backend flags allow them: :func:`matmul_unit`);
   points of much larger norm than the row's neighbours (an LLM's massive activations) are ruled out
   by the triangle inequality instead of widening the bound (:func:`_uncertified`);
   a row that fails takes candidates again with 4x the margin (one GEMM of its row against all
   points, up to three times), and only then is recomputed exactly against all points. The result
   is the exact kNN graph, not an approximation, whatever the matmul precision settings.

Memory: O(block x N) plus an N x N float32 buffer for the symmetric path (only its upper triangle
is written; used while it fits 1 GiB, above that every block is multiplied and nothing is kept),
and on a CPU a float64 copy of the points for the Gram recompute (when it fits).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .args import as_int, positive_int

__all__ = ["Neighbors", "knn", "knn_sharded", "knn_split", "as_points", "matmul_unit"]

_F32_EPS = float(torch.finfo(torch.float32).eps)
_TF32_UNIT = 2.0**-10  # TF32 keeps 10 explicit mantissa bits: inputs off by < 2^-10 relative (truncation included)
_BF16_UNIT = 2.0**-7  # bfloat16 keeps 7


def _setting(*names: str) -> str | None:
    """The first of the ``torch.backends`` precision settings ``names`` (dotted) that is set (not "none")."""
    for name in names:
        obj: object = torch.backends
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except (AttributeError, RuntimeError):
            continue
        if isinstance(obj, str) and obj != "none":
            return obj
    return None


def matmul_unit(device: torch.device) -> float:
    """Relative rounding u of the *inputs* of float32 matmuls on ``device`` under this process's settings.

    ``torch.set_float32_matmul_precision("high")`` (which Lightning recommends on Ampere and later GPUs)
    or ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` make a float32 GEMM round its inputs to
    TF32 (u = 2^-10); ``"medium"`` lets oneDNN use bfloat16 on CPUs that have it (u = 2^-7). 0 for
    IEEE float32. :func:`knn` widens its certificate by this much instead of changing the settings
    (they are process-wide: the training running beside a background analysis keeps its own).
    """
    try:
        if device.type == "cuda":
            mode = _setting("cuda.matmul.fp32_precision", "cuda.fp32_precision", "fp32_precision")
            if mode is None:
                mode = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        elif device.type == "cpu":
            mode = _setting("mkldnn.matmul.fp32_precision", "mkldnn.fp32_precision", "fp32_precision") or "ieee"
            if mode != "ieee" and not _cpu_has_low_precision_matmul():
                mode = "ieee"  # oneDNN keeps IEEE float32 on CPUs without bf16 / AMX units
        else:
            mode = "ieee"
    except RuntimeError:  # mixed legacy / new precision APIs: assume the widest rounding torch may apply
        mode = "bf16"
    return {"tf32": _TF32_UNIT, "bf16": _BF16_UNIT}.get(mode, 0.0)


@functools.cache
def _cpu_has_low_precision_matmul() -> bool:
    """Whether this CPU has the units (AVX512-BF16, AMX) with which oneDNN may round float32 matmuls."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported")
    found = [getattr(torch.cpu, name, None) for name in checks]
    if not all(callable(f) for f in found):
        return True  # unknown: assume it may
    return any(f() for f in found)


def _gemm(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """``out = a @ b`` into a float32 ``out``: every candidate GEMM of :func:`knn` goes through here.

    float16 operands (the half-precision candidate pass) are multiplied with float32 accumulation and
    output (``torch.mm(..., out_dtype=torch.float32)``: tensor cores on a GPU) where the device does that
    (:func:`half_gemm_ok`), else widened to float32 first: the same products (exact in float32), the
    same sums.
    """
    if a.dtype == torch.float16:
        if half_gemm_ok(a.device):
            return torch.mm(a, b, out_dtype=torch.float32, out=out)
        return torch.mm(a.to(torch.float32), b.to(torch.float32), out=out)
    return torch.mm(a, b, out=out)


_HALF_UNIT = 2.0**-11  # float16 keeps 10 explicit bits; knn rounds to nearest itself
_HALF_TOP = 2.0**15  # the half pass scales the points so that every |x|^2 / 2 is at most this (float16 max 65504)
_HALF_TINY = 2.0**-25  # float16 subnormals: absolute rounding of the smallest components


@functools.cache
def _half_gemm_check(device_key: str) -> bool:
    device = torch.device(device_key)
    if device.type != "cuda":
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(64, 40, device=device, generator=g).to(torch.float16)
        b = torch.randn(96, 40, device=device, generator=g).to(torch.float16)
        buf = torch.zeros(64, 200, device=device)
        out = buf[:, 50:146]  # a strided panel, as knn writes them
        torch.mm(a, b.T, out_dtype=torch.float32, out=out)
        ref = a.double() @ b.double().T
        scale = a.double().norm(dim=1, keepdim=True) * b.double().norm(dim=1)
        good = bool(((out.double() - ref).abs() <= 1e-5 * scale).all()) and bool((buf[:, :50] == 0).all())
    except (RuntimeError, TypeError):  # no float32-output half GEMM here (or fp16 accumulation forced on)
        return False
    if not good:
        warnings.warn(f"float16 GEMMs with float32 output disagree with float64 on {device}; knn uses float32 GEMMs.", stacklevel=3)
    return good


def half_gemm_ok(device: torch.device) -> bool:
    """Whether ``device`` multiplies float16 matrices into float32 with float32 accumulation (checked once
    per device against float64 on a small product, in a strided output panel as knn writes them)."""
    return _half_gemm_check(str(device))


_HALF_MIN_N = 32768  # "auto": the half pass where the GEMM is the cost (the certificate widens 50x)


def _use_half(candidates: str, device: torch.device, n: int) -> bool:
    """Whether the candidate GEMMs run on float16 points (see :func:`knn`'s ``candidates``)."""
    if candidates not in ("auto", "float32", "float16"):
        raise ValueError(f'Expected `candidates` to be "auto", "float32" or "float16", but got {candidates!r}.')
    if candidates == "auto":
        return device.type == "cuda" and n >= _HALF_MIN_N and half_gemm_ok(device)
    return candidates == "float16"


def _half_points(x32: Tensor, sq: Tensor) -> tuple[Tensor, Tensor, float]:
    """The centred points scaled by a power of two s and rounded to float16, their scaled norms s^2 |x|^2
    (of the unrounded points, float32: exact scaling) and s. s puts max |x|^2 / 2 at or below 2^15, so
    neither the points (|x_a| <= 2^8) nor the symmetric pass's |x|^2 / 2 columns overflow float16."""
    top = float(sq.max())
    s = 1.0 if top == 0 else 2.0 ** math.floor(math.log2(math.sqrt(2.0 * _HALF_TOP / top)))
    return (x32 * s).to(torch.float16), sq * (s * s), s


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which ``device``'s autocast is off (thread-local): the certificate assumes float32 GEMMs."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return contextlib.nullcontext()


@dataclass(frozen=True)
class Neighbors:
    """The k nearest neighbours of N points (self excluded).

    Attributes:
        distances: (N, k) float64 Euclidean distances, ascending along each row.
        indices: (N, k) int64 indices of the neighbours into the point set.
    """

    distances: Tensor
    indices: Tensor

    @functools.cached_property
    def all_distinct(self) -> bool:
        """Whether every point's nearest neighbour is at a positive distance (no duplicate points).

        Computed once (one host sync) and cached: every estimator asks it.
        """
        return bool((self.distances[:, 0] > 0).all())

    @property
    def k(self) -> int:
        """Number of neighbours per point."""
        return int(self.indices.shape[1])

    @property
    def n_points(self) -> int:
        """Number of points N."""
        return int(self.indices.shape[0])

    def head(self, k: int) -> Neighbors:
        """The first ``k`` neighbours of every point (a view, no copy).

        Raises:
            ValueError: if ``k`` exceeds the number of stored neighbours.
        """
        if not 1 <= k <= self.k:
            raise ValueError(
                f"Expected `k` in [1, {self.k}] (the neighbours stored), but got {k}. "
                f"Compute `knn(x, k={k})` to have more."
            )
        return Neighbors(self.distances[:, :k], self.indices[:, :k])

    def to(self, device: torch.device | str) -> Neighbors:
        """The same neighbours on another device."""
        return Neighbors(self.distances.to(device), self.indices.to(device))


def as_points(x: Tensor | np.ndarray, *, name: str = "x") -> Tensor:
    """Validate a point cloud and return it as a floating torch tensor (no copy when possible).

    Args:
        x: (N, D) array-like of points, numpy or torch, any float (or integer) dtype.
        name: the argument's name, used in error messages.

    Returns:
        (N, D) floating tensor on ``x``'s device (integers become float32).

    Raises:
        TypeError: if ``x`` is not a tensor or numpy array.
        ValueError: if ``x`` is not 2-d, is empty, or contains NaN / Inf (the message names the rows).
    """
    return _checked_points(x, name)[0]


def point_tensor(x: Tensor | np.ndarray, name: str = "x") -> Tensor:
    """``x`` as a detached, real, floating (N, D) tensor (numpy and nested lists converted, integers as
    float32, a numeric object array as float64), checked
    for everything that needs no read of its values: type, shape, D >= 1, meta, complex. A pandas
    DataFrame (or anything else with ``to_numpy``: duck-typed) is read through its array."""
    if not isinstance(x, (Tensor, np.ndarray, list, tuple)) and callable(getattr(x, "to_numpy", None)):
        x = x.to_numpy()  # a DataFrame: its numbers (a text column is named as the object array's below)
    if isinstance(x, (list, tuple)) and x and not isinstance(x[0], Tensor):  # nested lists of numbers
        try:
            x = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"Expected `{name}` to be an (N, D) array of numbers, but the {type(x).__name__} given is not one ({e}).") from None
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":  # object (a DataFrame's .values), strings, dates
            try:
                x = x.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"Expected `{name}` to hold numbers, but got a numpy array of dtype {x.dtype}: "
                    "pass the numeric feature columns only."
                ) from None
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        hint = " of tensors: stack them first (torch.stack, or torch.cat for batches)" if isinstance(x, (list, tuple)) and x else ""
        raise TypeError(
            f"Expected `{name}` to be a torch.Tensor or numpy.ndarray of shape (N, D), "
            f"but got {type(x).__name__}{hint}."
        )
    if x.ndim != 2:
        raise ValueError(
            f"Expected `{name}` to have shape (N, D), but got shape {tuple(x.shape)}. "
            "Pool token dimensions first (e.g. mean over tokens)."
        )
    if x.shape[1] == 0:
        raise ValueError(f"Expected `{name}` to be non-empty, but got shape {tuple(x.shape)}.")
    if x.is_meta:
        raise ValueError(f"`{name}` is a meta tensor (a shape without values): load or materialise the model's weights before measuring it.")
    if x.is_complex():
        raise ValueError(f"Expected `{name}` to be real-valued, but got {x.dtype}. Pass x.real, x.abs() or torch.view_as_real(x).flatten(-2).")
    x = x.detach()
    return x if x.is_floating_point() else x.to(torch.float32)


def _checked_points(x: Tensor | np.ndarray, name: str = "x") -> tuple[Tensor, float]:
    """:func:`as_points` and the points' largest |coordinate| (the finiteness check's by-product, for
    :func:`safe_scale`)."""
    x = point_tensor(x, name)
    if x.shape[0] == 0:
        raise ValueError(f"Expected `{name}` to be non-empty, but got shape {tuple(x.shape)}.")
    top = _max_abs(x)
    if not math.isfinite(top):
        bad = ~torch.isfinite(x).all(dim=1)
        rows = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"Expected `{name}` to contain only finite values, but {len(rows)} of {x.shape[0]} rows "
            f"contain NaN or Inf (rows [{shown}])."
        )
    return x, top


def _max_abs(x: Tensor) -> float:
    """max |x| in one pass (one reduction, one host sync): NaN if any entry is NaN, inf if any is infinite."""
    return float(torch.linalg.vector_norm(x, ord=math.inf)) if x.numel() else 0.0


def _all_finite(x: Tensor) -> bool:
    """Whether every entry is finite (:func:`_max_abs` is NaN or inf otherwise; it cannot overflow)."""
    return math.isfinite(_max_abs(x))


def _default_block(n: int, device: torch.device) -> int:
    """Rows per panel of the Gram matrix: 8192 on accelerators; on a CPU 512 up to N = 4,096 (the
    symmetric path's smaller panels skip more of the lower triangle: knn measured 7 % faster at N =
    2,000 and 8 % at 3,000, D = 768; from 10,000 on 512 and 1024 are even), else 1024."""
    if device.type != "cpu":
        return max(1, min(n, 8192))
    return max(1, min(n, 512 if n <= _SMALL_PANEL_MAX_N else 1024))


_SMALL_PANEL_MAX_N = 4096


_CPU_RECOMPUTE_BYTES = 4 << 20  # cache-sized float64 chunks (+ 2 MiB float32 gather): on a CPU bandwidth decides, not launches


def _recompute_budget(n: int, block: int, device: torch.device, *, explicit_block: bool) -> int:
    """Bytes of the float64 (rows, C, D) gather buffer of the exact recompute.

    On accelerators (and whenever ``block_size`` is given): up to 2 GiB, or as much as the float32
    Gram panel ``knn`` already holds (block x N x 4 bytes) when that is more; the recompute then
    takes at most ``2 C D / block`` chunks whatever N is (a fixed launch budget per layer) and a
    single one while N C D 8 bytes fit 2 GiB. On a CPU by default, 4 MiB chunks that stay in
    cache (measured: 2.4x faster than 256 MiB chunks at N = 10,000, D = 768); a CPU op costs
    microseconds, so there the count matters less than the memory traffic.
    """
    if device.type == "cpu" and not explicit_block:
        return _CPU_RECOMPUTE_BYTES
    return _panel_recompute_bytes(n, block)


def _panel_recompute_bytes(n: int, block: int) -> int:
    """The accelerator recompute budget: 2 GiB, or the Gram panel's bytes when that is more."""
    return max(2 << 30, block * n * 4)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: ``mem_get_info`` plus what PyTorch's caching allocator holds but no
    tensor uses, which this process's next allocations reuse; CPU: the OS's available pages), or None if unknown."""
    try:
        if device.type == "cuda":
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(torch.cuda.mem_get_info(device)[0]) + max(0, int(cached))
        if device.type == "cpu":
            meminfo = Path("/proc/meminfo")
            if meminfo.is_file():  # Linux: MemAvailable counts the reclaimable page cache, MemFree does not
                for line in meminfo.read_text().splitlines():
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
            if hasattr(os, "sysconf"):
                return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, RuntimeError):
        return None
    return None


def knn_bytes(n: int, d: int, kc: int, block: int, *, recompute: int | None = None, half: bool = False) -> int:
    """Working memory of :func:`knn` beyond its input: the float32 centred copy (and its float16 copy for
    a ``half`` candidate pass), one Gram panel, the candidate lists and the exact-recompute buffer
    (``recompute`` bytes; default its usual size), the optional N x N symmetric buffer not counted."""
    rc = min(n * kc * d * 8, _panel_recompute_bytes(n, block)) if recompute is None else recompute
    copies = n * d * (6 if half else 4)
    return copies + min(block, n) * n * 4 + n * kc * 40 + rc * 3 // 2  # float64 buffer + the float32 gather


def plan_memory(
    n: int, d: int, kc: int, block: int, device: torch.device, *, fixed_block: bool = False, budget: int | None = None,
    half: bool = False,
) -> int:
    """The Gram block size that fits the memory budget, decided before allocating.

    The budget is ``budget`` bytes if given, else 80 % of the free memory of ``device``. The
    default block shrinks (down to 64 rows) until :func:`knn_bytes` fits; a fixed ``block_size``
    that does not fit, or a problem that does not fit even at 64 rows, raises ``MemoryError``
    naming the sizes and what to change.
    """
    if budget is not None:
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(f"Expected `memory_budget` to be a positive number of bytes, but got {budget!r}.")
        limit, free = budget, None
    else:
        free = available_bytes(device)
        if free is None:
            return block
        limit = int(0.8 * free)
    def rc(b: int) -> int:  # the recompute buffer knn will really allocate with block b
        return min(n * kc * d * 8, _recompute_budget(n, b, device, explicit_block=fixed_block))

    while not fixed_block and block > 64 and knn_bytes(n, d, kc, block, recompute=rc(block), half=half) > limit:
        block //= 2
    need = knn_bytes(n, d, kc, block, recompute=8 * kc * d, half=half)  # at least one row of the recompute
    if need > limit:
        have = f"{format_bytes(free)} are free on {device}" if free is not None else f"memory_budget is {format_bytes(limit)}"
        raise MemoryError(
            f"knn of N = {n} points in D = {d} (k + margin = {kc}, block_size = {block}) needs about "
            f"{format_bytes(need)} of working memory, but {have}. "
            + ("Pass a smaller `block_size`, " if fixed_block else "Raise `memory_budget`, use ")
            + "fewer points (a random subset), or a device with more memory."
        )
    return block


def format_bytes(n: float) -> str:
    """``n`` bytes for a message: '512 B', '3.2 KiB', '1.5 MiB', '12.7 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _leftover(n: int, d: int, kc: int, block: int, budget: int | None, half: bool = False) -> int | None:
    """Bytes of ``budget`` left once the centred copies, one panel and the candidates are counted."""
    if budget is None:
        return None
    return budget - knn_bytes(n, d, kc, block, recompute=0, half=half)


_CENTRE_SAMPLE = 255  # points whose coordinate-wise median centres the float32 pass


def robust_centre(x: Tensor, lengths: Tensor | None = None, *, sample: int = _CENTRE_SAMPLE) -> Tensor:
    """The centre knn subtracts before its float32 pass: the coordinate-wise median of up to ``sample``
    evenly spaced points, float64: (1, D) for (N, D) points, (B, D) for (B, N, D) clouds of ``lengths``.

    Any centre keeps the result exact (the certificate bounds the centred points' rounding); a small
    one keeps the bound, (|x_i|^2 + |x_j|^2) eps32, small. The mean is pulled out by a few points of
    huge norm (an LLM's massive activations: 2 % of the points at 100x the median norm move it 2x the
    median norm), which inflates every point's norm and fails the certificate of most rows; the median
    is not. A sample's median costs 1 % of the mean's bandwidth's worth at most.
    """
    if x.dim() == 2:
        return x[:: -(-x.shape[0] // sample)].median(dim=0, keepdim=True).values.to(torch.float64)
    b, n, _ = x.shape
    lengths = torch.full((b,), n, device=x.device) if lengths is None else lengths
    s = max(1, min(sample, int(lengths.min())))
    pos = torch.arange(s, device=x.device) * (lengths.unsqueeze(1) - 1) // max(1, s - 1)  # (B, s): evenly spaced valid rows
    rows = x[torch.arange(b, device=x.device).unsqueeze(1), pos]  # (B, s, D)
    return rows.to(torch.float64).median(dim=1).values


def sqrt_exact_(t: Tensor) -> Tensor:
    """``t.sqrt_()``, correctly rounded on every device.

    On a CPU torch's float64 ``sqrt`` (and ``pow(0.5)``, ``exp``) go through MKL's vector math
    library, and its first call on an OpenMP worker thread after an MKL ``sgemm`` was measured off by
    3e-11 relative (torch 2.13 on a Sapphire Rapids CPU, 2 threads: one thread's half of the tensor
    wrong, once per process); knn's distances are exact to 1e-10, so on a CPU the root is taken by
    numpy (the hardware instruction) on the same memory.
    """
    if t.device.type == "cpu" and t.is_contiguous() and not t.requires_grad:
        a = t.numpy()
        np.sqrt(a, out=a)
        return t
    return t.sqrt_()


def sq_norms(x: Tensor) -> Tensor:
    """|x_i|^2 along the last dimension, in ``x``'s dtype, without a temporary of ``x``'s size.

    ``vector_norm`` then a square: its sum of D squares is off by at most D u relative, the root and
    the square add 3 u (u the unit roundoff), inside the (D + 2) eps the certificates allow for a
    squared norm; 4x faster than ``einsum`` (a batched matmul of 1 x D by D x 1) on a CPU.
    """
    return torch.linalg.vector_norm(x, dim=-1).square_()


def _exact_distances(x: Tensor, rows: Tensor, cols: Tensor, *, budget: int = _CPU_RECOMPUTE_BYTES) -> Tensor:
    """|x_i - x_j| in float64 for i in ``rows`` (R,), j in ``cols`` (R, C); returns (R, C).

    The difference is taken in float64 (exact for float32 points: no cancellation), in chunks of
    rows whose (rows, C, D) float64 buffer fits ``budget`` bytes (the narrow gather buffer adds at most
    half of that; :func:`knn_bytes` counts both): a handful of large ops, not a
    Python loop over small chunks. Points narrower than float64 are gathered in their own dtype
    (half the memory traffic of gathering a float64 copy: the gather is the bandwidth-bound part)
    and widened in the cache-resident buffer; the widening is exact, so the result is bit for bit
    that of gathering float64 rows.
    """
    r_all, c = cols.shape
    d = x.shape[1]
    chunk = max(1, min(r_all, budget // max(1, c * d * 8)))  # the float64 buffer; the narrow one is half of it or less
    out = torch.empty(cols.shape, dtype=torch.float64, device=x.device)
    buf = torch.empty(chunk * c, d, dtype=torch.float64, device=x.device)
    narrow = None if x.dtype == torch.float64 else torch.empty(chunk * c, d, dtype=x.dtype, device=x.device)
    flat = cols.reshape(-1)
    for s in range(0, r_all, chunk):
        e = min(s + chunk, r_all)
        nb = buf[: (e - s) * c]
        if narrow is None:
            torch.index_select(x, 0, flat[s * c : e * c], out=nb)
        else:
            torch.index_select(x, 0, flat[s * c : e * c], out=narrow[: (e - s) * c])
            nb.copy_(narrow[: (e - s) * c])
        centre = x.index_select(0, rows[s:e]).to(torch.float64)
        nb = nb.view(e - s, c, d)  # (r, C, D)
        nb.sub_(centre.unsqueeze(1))
        torch.linalg.vector_norm(nb, dim=-1, out=out[s:e])
    return out


# Rounding of the float64 Gram identity |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, per unit of
# |x_i|^2 + |x_j|^2: each of the three D-term sums is off by at most gamma_D = D u / (1 - D u) times its
# absolute terms (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, sec. 3.1), and
# |<x_i, x_j>| <= (|x_i|^2 + |x_j|^2) / 2; 3 gamma_(D + 2) covers the sums, products and the final adds.
_F64_EPS = float(torch.finfo(torch.float64).eps) / 2  # unit roundoff u
_GRAM_REL = 1e-10  # the Gram path is used only where its proven relative error on |x_i - x_j|^2 is below this


def _gram_error(d: int) -> float:
    """Bound on |fl(d2) - d2| / (|x_i|^2 + |x_j|^2) for the float64 Gram identity in dimension ``d``."""
    nu = (d + 2) * _F64_EPS
    return 3.0 * nu / (1.0 - nu)


def gram_fits(n: int, d: int, spare: int | None, device: torch.device) -> bool:
    """Whether the Gram recompute (CPU only) may hold its float64 centred copy of the points (2 N D 8 bytes
    with the rows' copy): within a ``memory_budget``'s spare bytes, else within half the free memory."""
    if device.type != "cpu":
        return False
    need = 2 * n * d * 8
    if spare is not None:
        return need <= spare
    free = available_bytes(device)
    return free is None or need <= free // 2


def _gram_distances(
    x: Tensor, rows: Tensor, cols: Tensor, *, budget: int, centred: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """|x_i - x_j| in float64 for i in ``rows`` (R,), j in ``cols`` (R, C), and each value's error bound on
    the squared distance: ((R, C) distances, (R, C) bounds).

    The dot products <x_i, x_j> of the (centred, float64) points come from one sampled matmul
    (``torch.sparse.sampled_addmm`` on the (R, C) pattern): no (R, C, D) gather, which is what bounds the
    difference recompute (:func:`_exact_distances`) on a CPU; measured 5x faster at N = 2,000 and 2x at
    N = 10,000, D = 768. Where the identity's proven rounding bound (:func:`_gram_error`) exceeds
    ``_GRAM_REL`` of the squared distance (near-duplicates, exact copies: cancellation), the pair is
    recomputed from the difference, exact; its bound is then 0. ``centred``: the points already
    centred in float64 (e.g. cloud by cloud), else ``x`` minus :func:`robust_centre`.
    """
    n, d = x.shape
    if centred is None:
        x64 = x.to(torch.float64) - robust_centre(x)  # centred: smaller norms, smaller rounding bound
    else:
        x64 = centred
    sq = sq_norms(x64)
    r, c = cols.shape
    crow = torch.arange(0, r * c + 1, c, device=x.device)
    zeros = torch.zeros(r * c, dtype=torch.float64, device=x.device)
    every_row = r == n and bool((rows == torch.arange(n, device=x.device)).all())
    if every_row and n * d * 8 > _GRAM_CACHE_BYTES:  # neighbours near in memory: 0.28 -> 0.17 s at N = 10,000, D = 768
        order = _local_order(cols)
        relabel = torch.empty_like(order)
        relabel[order] = torch.arange(n, device=x.device)
        xo = x64.index_select(0, order)
        dots = torch.empty(r, c, dtype=torch.float64, device=x.device)
        dots[order] = _sampled_dots(xo, xo, relabel[cols.index_select(0, order)], crow, zeros)
    else:
        left = x64 if every_row else x64.index_select(0, rows)
        dots = _sampled_dots(left, x64, cols, crow, zeros)
    scale = sq.index_select(0, rows).unsqueeze(1) + sq[cols]  # |x_i|^2 + |x_j|^2
    d2 = (scale - 2.0 * dots).clamp_min_(0.0)
    err = scale.mul_(_gram_error(d))
    risky = torch.nonzero(d2 * _GRAM_REL < err)  # (P, 2): relative error possibly above _GRAM_REL
    dist = sqrt_exact_(d2)
    if risky.numel():
        ri, ci = risky[:, 0], risky[:, 1]
        dist[ri, ci] = _exact_distances(x, rows[ri], cols[ri, ci].unsqueeze(1), budget=budget).squeeze(1)
        err[ri, ci] = 0.0
    return dist, err


_GRAM_CACHE_BYTES = 16 << 20  # float64 points beyond this do not stay in cache: the Gram recompute reorders them


def _sampled_dots(left: Tensor, right: Tensor, cols: Tensor, crow: Tensor, zeros: Tensor) -> Tensor:
    """<left_i, right_j> for j in ``cols[i]``: one ``sampled_addmm`` on the (R, C) CSR pattern; (R, C)."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the one op used here is tested
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols.reshape(-1), zeros, size=(left.shape[0], right.shape[0]), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values().view(cols.shape)


def _local_order(cols: Tensor, hops: int = 3, width: int = 8) -> Tensor:
    """An order of the points in which kNN neighbours sit close together: each point takes the smallest
    index within ``hops`` steps of its first ``width`` candidates (min-label propagation), and the points
    are sorted by that label (ties by index). Milliseconds; the sampled matmul then reads its rows from cache."""
    n = cols.shape[0]
    label = torch.arange(n, device=cols.device)
    near = cols[:, :width]
    for _ in range(hops):
        label = torch.minimum(label, label[near].amin(dim=1))
    return torch.argsort(label * n + torch.arange(n, device=cols.device))


def exact_candidates(
    x: Tensor, rows: Tensor, cols: Tensor, labels: Tensor, upto: int, *, budget: int, gram: bool,
    centred: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact distances of each row's candidates (float64), sorted by (distance, label): ((R, C), (R, C)).

    ``cols`` (R, C) index the candidates in ``x``; ``labels`` are what the result reports for them
    (their indices, possibly within a cloud). ``gram``: distances from :func:`_gram_distances`, and
    any row whose first ``upto + 1`` sorted distances hold two closer than their rounding bounds
    (an order the identity cannot prove; exact ties) is redone from the differences, so the order,
    ties broken by the smaller label, is exactly that of the difference recompute. ``centred``: see
    :func:`_gram_distances`.
    """
    if not gram:
        return _sort_rows(_exact_distances(x, rows, cols, budget=budget), labels)
    dist, err = _gram_distances(x, rows, cols, budget=budget, centred=centred)
    order = torch.sort(dist, dim=1).indices  # by distance alone: equal ones (gap 0) are redone below in (distance, label) order
    dist, idx, err = (t.gather(1, order) for t in (dist, labels, err))
    m = min(upto + 1, dist.shape[1])
    d2 = dist[:, :m].square()
    close = (d2[:, 1:] - d2[:, :-1]) <= (err[:, 1:m] + err[:, : m - 1]) * (1.0 + 1e-6)
    redo = torch.nonzero(close.any(dim=1)).flatten()
    if redo.numel():
        dist[redo], idx[redo] = _sort_rows(_exact_distances(x, rows[redo], cols[redo], budget=budget), labels[redo])
    return dist, idx


_TWO_STAGE_MIN_N = 65536  # from here on every device takes the two-stage top-k (group maxima first)
_SYM_BUDGET_BYTES = 1 << 30  # the symmetric path keeps an N x N float32 buffer up to this size
_SYM_MIN_BLOCKS = 1  # ... and on a CPU's default (512-row) blocks from 2 of them on (D = 768, knn: N = 1,000 rows 20.2 ms vs symmetric 20.2; 2,000: 62 vs 51; 3,000: 131 vs 121)


def _top(scores: Tensor, kc: int, col0: int, *, group: int = 8, two_stage: bool = True) -> tuple[Tensor, Tensor]:
    """Best ``kc`` scores per row (values, column indices + ``col0``), unsorted.

    Two stages, exact: the top-kc groups of ``group`` columns by their maximum must hold every
    top-kc element (a group without one has a smaller maximum than any group with one), so
    ``topk`` runs on N / group maxima and then on kc * group gathered scores.
    """
    b, w = scores.shape
    kk = min(kc, w)
    if not two_stage or w % group or w // group <= 2 * kk:
        top = torch.topk(scores, kk, dim=1, largest=True, sorted=False)
        return top.values, top.indices + col0
    gmax = scores.view(b, w // group, group).amax(dim=2)  # (b, w / group)
    gidx = torch.topk(gmax, kk, dim=1, largest=True, sorted=False).indices  # (b, kk)
    cols = (gidx.unsqueeze(2) * group + torch.arange(group, device=scores.device)).reshape(b, -1)
    top = torch.topk(scores.gather(1, cols), kk, dim=1, largest=True, sorted=False)
    return top.values, cols.gather(1, top.indices) + col0


def _candidates(
    x32: Tensor, sq: Tensor, kc: int, block: int, *, two_stage: bool = True, sym_bytes: int = _SYM_BUDGET_BYTES, min_blocks: int = 1
) -> tuple[Tensor, Tensor]:
    """Top-``kc`` float32 candidates per row (j != i): (the weakest kept score s_ij = <x_i, x_j> - |x_j|^2 / 2
    as float64 (N,), the (N, kc) indices, best first).

    Row block by row block, one GEMM gives the scores against the columns from the block on. When
    the upper triangle fits ``sym_bytes`` (and there are more than ``min_blocks`` blocks) the Gram matrix's symmetry
    halves the flops: :func:`_candidates_symmetric`.
    """
    n = x32.shape[0]
    if n > min_blocks * block and n * n * 4 <= min(sym_bytes, _SYM_BUDGET_BYTES):
        return _candidates_symmetric(x32, sq, kc, block, two_stage=two_stage)
    return _candidates_rows(x32, sq, (0, n), kc, block, two_stage=two_stage)


def _candidates_symmetric(x32: Tensor, sq: Tensor, kc: int, block: int, *, two_stage: bool, group: int = 8) -> tuple[Tensor, Tensor]:
    """:func:`_candidates` from the upper triangle of the Gram matrix only.

    Scores are made symmetric, t_ij = -|x_i - x_j|^2 / 2 = <x_i, x_j> - |x_i|^2 / 2 - |x_j|^2 / 2 (the
    same ranking per row as s_ij: they differ by |x_i|^2 / 2), in one GEMM of the augmented points
    [x, -|x|^2 / 2, 1] and [x, 1, -|x|^2 / 2]. Row block p's panel (its columns from the block on) is
    written into an N x N buffer in place; a later block's rows read their scores against the earlier
    columns down the buffer's columns as they are (t_ij = t_ji): :func:`_top_down`, no transposed copy.
    The buffer's lower-left triangle is never touched (no pages are faulted in for it).
    """
    n, device = x32.shape[0], x32.device
    hs = (0.5 * sq).unsqueeze(1)
    one = torch.ones_like(hs)
    cols = (-hs).to(x32.dtype), one.to(x32.dtype)  # the float16 pass rounds |x|^2 / 2 too: in its certificate
    left, right = torch.cat([x32, *cols], dim=1), torch.cat([x32, *reversed(cols)], dim=1)
    full = torch.empty(n, n, dtype=torch.float32, device=device)  # full[j, i], j <= i (rows' panels)
    out_v = torch.empty(n, dtype=torch.float64, device=device)
    out_i = torch.empty(n, kc, dtype=torch.int64, device=device)
    for s in range(0, n, block):
        e = min(s + block, n)
        panel = full[s:e, s:]
        _gemm(left[s:e], right[s:].T, panel)  # strided out (row stride N): BLAS writes it in place
        panel.diagonal().fill_(-math.inf)  # j != i
        v, i = _top(panel, kc, s, two_stage=two_stage)
        if s > 0:
            vb, ib = _top_down(full[:s, s:e], kc, two_stage=two_stage, group=group)
            v, i = torch.cat([v, vb], dim=1), torch.cat([i, ib], dim=1)
        top = torch.sort(v, dim=1, descending=True)  # best first; the merge keeps kc
        out_v[s:e] = top.values[:, kc - 1].to(torch.float64) + hs[s:e, 0].to(torch.float64)  # back to s_ij
        out_i[s:e] = i.gather(1, top.indices[:, :kc])
    return out_v, out_i


def _top_down(scores: Tensor, kc: int, *, two_stage: bool, group: int) -> tuple[Tensor, Tensor]:
    """Best ``kc`` of each *column* of ``scores`` (S, b): (values, row indices), (b, kc) each, unsorted.

    Two stages as in :func:`_top`, down the columns: maxima of groups of ``group`` rows, the top-kc
    groups, then their scores gathered from the transposed view (no copy of the S x b block).
    """
    s, b = scores.shape
    kk = min(kc, s)
    if not two_stage or s % group or s // group <= 2 * kk:
        top = torch.topk(scores.T, kk, dim=1, largest=True, sorted=False)
        return top.values, top.indices
    gmax = scores.unflatten(0, (s // group, group)).amax(dim=1)  # (S / group, b)
    gidx = torch.topk(gmax.T, kk, dim=1, largest=True, sorted=False).indices  # (b, kk)
    rows = (gidx.unsqueeze(2) * group + torch.arange(group, device=scores.device)).reshape(b, -1)  # (b, kk * group)
    top = torch.topk(scores.T.gather(1, rows), kk, dim=1, largest=True, sorted=False)
    return top.values, rows.gather(1, top.indices)


def _fix_failed_rows(
    x: Tensor, dist: Tensor, idx: Tensor, failed: Tensor, k: int, budget: int, *, offset: int = 0
) -> tuple[Tensor, Tensor]:
    """Exact neighbours of the rows whose certificate failed, in bounded memory.

    Rows whose k-th exact distance is 0 have k exact copies: their distances are right and only
    the tie-break (smaller index first) is at stake, so they take the k smallest-index copies of
    their point, from one ``unique`` over the points (no distance work). The others are
    recomputed exactly against all N points, a few rows at a time (at most ``budget`` bytes of
    distances and sort buffers per chunk), keeping only the best k of each. ``failed`` indexes the
    rows of ``dist``; row r is point ``offset + r`` of ``x``.
    """
    n, device = x.shape[0], x.device
    dist, idx = dist[:, :k].clone(), idx[:, :k].clone()
    zero = dist[failed, k - 1] == 0
    copies, others = failed[zero], failed[~zero]
    if copies.numel():
        _, inv, counts = torch.unique(x, dim=0, return_inverse=True, return_counts=True)
        members = torch.sort(inv, stable=True).indices  # points grouped by location, index order inside
        start = torch.cumsum(counts, 0) - counts  # (G,) first slot of each group in `members`
        slots = start[inv[copies + offset]].unsqueeze(1) + torch.arange(k + 1, device=device)  # (F0, k + 1)
        cand = members[slots]  # the k + 1 smallest-index copies (the row itself may be one)
        keep = cand != (copies + offset).unsqueeze(1)
        keep[:, -1] &= ~keep[:, :-1].all(dim=1)  # drop the last when the row itself was not among them
        idx[copies] = cand[keep].view(-1, k)
        dist[copies] = 0.0
    rows = max(1, min(others.numel(), budget // (n * 8 * 4)))
    everyone = torch.arange(n, device=device)
    for s in range(0, others.numel(), rows):
        part = others[s : s + rows]
        exact = _exact_distances(x, part + offset, everyone.expand(part.numel(), n), budget=budget)  # (r, N)
        exact[torch.arange(part.numel(), device=device), part + offset] = math.inf  # not its own neighbour
        best = torch.sort(exact, dim=1, stable=True)  # stable: exact ties keep index order
        dist[part], idx[part] = best.values[:, :k], best.indices[:, :k]
    return dist, idx


def _candidates_rows(
    x32: Tensor, sq: Tensor, rows: tuple[int, int] | Tensor, kc: int, block: int, *, two_stage: bool
) -> tuple[Tensor, Tensor]:
    """:func:`_candidates` of some rows against all N points (self excluded), panel by panel.

    ``rows``: a range ``(a, b)`` (its rows sliced, no copy) or an index tensor (gathered panel by panel).
    """
    n, device = x32.shape[0], x32.device
    r = rows[1] - rows[0] if isinstance(rows, tuple) else int(rows.numel())
    half_sq = 0.5 * sq  # (N,): sq = |x_j|^2
    flat = torch.empty(min(block, r) * n, dtype=torch.float32, device=device)  # allocated once (page faults cost)
    out_v = torch.empty(r, dtype=torch.float64, device=device)
    out_i = torch.empty(r, kc, dtype=torch.int64, device=device)
    for s in range(0, r, block):
        e = min(s + block, r)
        scores = flat[: (e - s) * n].view(e - s, n)
        if isinstance(rows, tuple):
            _gemm(x32[rows[0] + s : rows[0] + e], x32.T, scores)
            scores.sub_(half_sq)
            scores.diagonal(offset=rows[0] + s).fill_(-math.inf)  # j != i
        else:
            sel = rows[s:e]
            _gemm(x32.index_select(0, sel), x32.T, scores)
            scores.sub_(half_sq)
            scores.scatter_(1, sel.unsqueeze(1), -math.inf)  # j != i
        v, i = _top(scores, kc, 0, two_stage=two_stage)
        top = torch.sort(v, dim=1, descending=True)
        out_v[s:e], out_i[s:e] = top.values[:, kc - 1], i.gather(1, top.indices[:, :kc])
    return out_v, out_i


def knn_sharded(x_local: Tensor, k: int, *, group: object | None = None, **kwargs: object) -> Neighbors:
    """Exact kNN of a point set sharded over the ranks of a ``torch.distributed`` group.

    Each rank holds its rows (n_r, D); the shards are all-gathered (padded to the longest, so ranks
    may hold different counts), and each rank computes the exact neighbours of its own rows among
    all N points, with global indices (rank r's rows are ``sum(n_<r) ... + n_r - 1``): the result
    equals the rows of :func:`knn` on the concatenated set. Without an initialised process group it
    is :func:`knn`. Every rank must call it.

    Args:
        x_local: (n_r, D) this rank's points (same D and dtype on every rank).
        k: neighbours per point, 1 <= k <= N - 1.
        group: the process group (default: the world).
        **kwargs: :func:`knn` options (``block_size``, ``margin``, ``memory_budget``).

    Returns:
        :class:`Neighbors` of this rank's rows: (n_r, k) distances and global indices.
    """
    import torch.distributed as dist

    x_local = as_points(x_local, name="x_local")
    if not (dist.is_available() and dist.is_initialized()):
        return knn(x_local, k, **kwargs)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    sizes_t = [torch.zeros(1, dtype=torch.int64, device=x_local.device) for _ in range(world)]
    dist.all_gather(sizes_t, torch.tensor([x_local.shape[0]], dtype=torch.int64, device=x_local.device), group=group)
    sizes = [int(t.item()) for t in sizes_t]
    full = torch.cat(gather_rows(x_local, sizes, group=group))
    offset = sum(sizes[:rank])
    return knn(full, k, _rows=(offset, offset + sizes[rank]), **kwargs)


def knn_split(x: Tensor, k: int, *, group: object | None = None, **kwargs: object) -> Neighbors:
    """Exact kNN of a point set that every rank of a ``torch.distributed`` group holds whole, the work
    split over the ranks: rank r computes a contiguous 1 / world of the rows (against all points),
    and the rows are all-gathered, so every rank returns the whole :class:`Neighbors`, equal to
    :func:`knn` on one process. A failure on any rank (e.g. out of memory) raises on every rank
    (no rank is left waiting in the collective). Without an initialised group it is :func:`knn`.

    Args:
        x: (N, D) the same points on every rank.
        k: neighbours per point, 1 <= k <= N - 1.
        group: the process group (default: the world).
        **kwargs: :func:`knn` options (``block_size``, ``margin``, ``memory_budget``).
    """
    import torch.distributed as dist

    x = as_points(x)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return knn(x, k, **kwargs)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    n = x.shape[0]
    bounds = [n * r // world for r in range(world + 1)]
    sizes = [hi - lo for lo, hi in zip(bounds, bounds[1:])]
    a, b = bounds[rank], bounds[rank + 1]
    failed = torch.zeros(1, dtype=torch.int64, device=x.device)
    err: Exception | None = None
    mine = Neighbors(torch.empty(0, k, dtype=torch.float64, device=x.device), torch.empty(0, k, dtype=torch.int64, device=x.device))
    try:
        if b > a:
            mine = knn(x, k, _rows=(a, b), **kwargs)
    except Exception as e:  # noqa: BLE001 - raised on every rank below
        err, failed[0] = e, 1
    dist.all_reduce(failed, op=dist.ReduceOp.MAX, group=group)
    if int(failed.item()):
        if err is not None:
            raise err
        raise RuntimeError("knn_split: another rank failed computing its rows (see its error).")
    return Neighbors(torch.cat(gather_rows(mine.distances, sizes, group=group)), torch.cat(gather_rows(mine.indices, sizes, group=group)))


def gather_rows(t: Tensor, sizes: list[int], *, group: object | None = None) -> list[Tensor]:
    """Every rank's rows of ``t`` (this rank's has ``sizes[rank]`` rows, any trailing shape and dtype
    common to all ranks): padded to the longest, one ``all_gather``, returned unpadded, in rank order.
    Every rank of the group must call it."""
    import torch.distributed as dist

    buf = t.new_zeros((max(sizes), *t.shape[1:]))
    buf[: t.shape[0]] = t
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf, group=group)
    return [part[:m] for part, m in zip(parts, sizes)]


def _sort_rows(dist: Tensor, idx: Tensor, *more: Tensor) -> tuple[Tensor, ...]:
    """Sort each row (the last dimension) by (distance, index): deterministic order among exact ties.
    Tensors in ``more`` (same shape) are permuted alongside."""
    by_index = torch.argsort(idx, dim=-1)
    order = by_index.gather(-1, torch.sort(dist.gather(-1, by_index), dim=-1, stable=True).indices)
    return tuple(t.gather(-1, order) for t in (dist, idx, *more))


def norm_tiers(sq: Tensor) -> Tensor:
    """The points' |x_j|^2 sorted ascending, float64, along the last dimension: the thresholds T that
    :func:`_uncertified` tries. ``sq`` (..., N); padded entries may be set to 0 (they only make it stricter)."""
    return torch.sort(sq.to(torch.float64), dim=-1).values


def _uncertified(
    kth: Tensor, sq_rows: Tensor, last_score: Tensor, tiers: Tensor, d: int, unit: float = 0.0, tiny: float = 0.0
) -> Tensor:
    """Rows whose exact k-th distance is not proven to beat every non-candidate.

    Every non-candidate j has a float32 estimate est_ij >= est_last = |x_i|^2 - 2 s_last (top-k),
    and |est - exact^2| <= bound_ij = (8 sqrt(D) + 4) eps32 (|x_i|^2 + |x_j|^2) (the GEMM's rounding, plus
    that of the |x|^2 / 2 terms and of the symmetric scores' shift). A GEMM that rounds its inputs by
    ``unit`` (TF32, bf16: :func:`matmul_unit`) moves 2 <x_i, x_j> by at most 2 (2u + u^2) |x_i| |x_j| <=
    (2u + u^2) (|x_i|^2 + |x_j|^2) and the rounded |x|^2 / 2 columns of the symmetric scores by u
    (|x_i|^2 + |x_j|^2) more: (3u + u^2) (|x_i|^2 + |x_j|^2) is added. ``tiny``: an absolute rounding of
    each component on top of the relative one (float16 subnormals), which moves 2 <x_i, x_j> by at most
    2 tiny sqrt(D) (|x_i| + |x_j|) (1 + u) more.

    The proof splits the points at a threshold T_m = the m-th smallest |x_j|^2 (``tiers``,
    :func:`norm_tiers`), for every m: a non-candidate with |x_j|^2 <= T_m has exact^2 >= est_last -
    bound(T_m) > kth^2; one above it (|x_j|^2 >= T_(m+1)) has exact >= |x_j| - |x_i| > kth (the
    triangle inequality about the common centre; the float32 norms' rounding, (D + 2) eps32 relative,
    is allowed for). m = N - 1 alone is the plain certificate with max |x_j|^2 in every bound; the
    split keeps a few points of huge norm (an LLM's massive activations: 170x the median norm) from
    widening every row's bound. Condition one holds for the smallest m, condition two for the
    largest, so two ``searchsorted`` tell whether some m meets both. Both are strict: a point as far
    as the k-th is a candidate, so exact ties are broken by index among the candidates. Shapes: rows
    (..., R), ``tiers`` (..., N) with the same leading dims, or (N,).
    """
    sq64 = sq_rows.to(torch.float64)
    est_last = torch.add(sq64, last_score.to(torch.float64), alpha=-2.0)
    coef = (8.0 * math.sqrt(d) + 4.0) * _F32_EPS + (3.0 * unit + unit * unit) * (1.0 + 1e-3)
    grow = 1.0 + 10 * _GRAM_REL  # kth: exact to _GRAM_REL (Gram recompute); kth * grow bounds it
    norm = sq64.sqrt()
    rhs = torch.addcmul(est_last.add_(sq64, alpha=-coef), kth, kth, value=-grow * grow)  # condition one: coef T (+ t sqrt T) < rhs
    if tiny:  # (a float16 |x|^2 / 2 column's own subnormal rounding is far below the |x_j|^2 term above)
        t = 2.0 * tiny * math.sqrt(d) * (1.0 + unit) * (1.0 + 1e-3)
        rhs = rhs - t * norm
        root = (torch.sqrt(t * t + 4.0 * coef * rhs.clamp_min(0.0)) - t) / (2.0 * coef)  # the largest sqrt(T)
        t_max = torch.where(rhs > 0, root * root * (1.0 - 1e-9), -1.0)
    else:
        t_max = rhs.mul_((1.0 - 1e-9) / coef)  # rhs <= 0: t_max <= 0 and no T (>= 0) is below it
    rel = (d + 2) * _F32_EPS
    # condition two: T_(m+1) > l_min = (kth grow + |x_i| sqrt(1 + rel))^2 / (1 - rel)
    l_min = torch.add(kth, norm, alpha=math.sqrt(1.0 + rel) / grow).square_().mul_(grow * grow * (1.0 + 1e-9) / (1.0 - rel))
    if tiers.dim() > 1:
        t_max, l_min = t_max.contiguous(), l_min.contiguous()
    fits = torch.searchsorted(tiers, t_max)  # m in [0, fits) meet condition one (T_m < t_max)
    first = torch.searchsorted(tiers, l_min, right=True)  # m in [first - 1, N) meet condition two (T_N = inf)
    return first > fits


def _default_margin(k: int, unit: float) -> int:
    """Extra candidates kept beyond k: ``max(4, k // 16)`` for float32 GEMMs, ``max(16, k // 2)`` when they
    round their inputs (TF32 / bf16: the certificate is ~100x wider, so more rows need the extra room)."""
    return max(4, k // 16) if unit == 0.0 else max(16, k // 2)


_ESCALATIONS = 3  # candidate passes with 4x the margin for the rows a certificate fails, before all-points


def _refine_failed(
    x: Tensor, x32: Tensor, sq: Tensor, dist: Tensor, idx: Tensor, failed: Tensor, k: int, kc: int, *,
    block: int, budget: int, gram: bool, unit: float, two_stage: bool, offset: int = 0, centred: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Exact neighbours of the rows whose certificate failed: ((R, k) distances, (R, k) indices).

    A failed row took too few candidates for the rounding of its GEMM. It takes them again with 4x
    the margin (its row's GEMM against all points, a top-k, the exact recompute, the certificate),
    up to ``_ESCALATIONS`` times (or until every point is a candidate: then nothing is left to rule
    out); rows still unproven, and rows with k exact copies (only the copies' order is at stake), go
    to :func:`_fix_failed_rows`. ``failed`` indexes the rows of ``dist``; row r is point ``offset + r``.
    """
    n, d = x.shape
    dist, idx = dist[:, :k].clone(), idx[:, :k].clone()
    copies = dist[failed, k - 1] == 0
    left, todo = failed[copies], failed[~copies]
    width, tiers = kc, norm_tiers(sq)
    for _ in range(_ESCALATIONS):
        if not todo.numel():
            break
        width = min(n - 1, 4 * width)
        rows = todo + offset
        score, cand = _candidates_rows(x32, sq, rows, width, block, two_stage=two_stage)
        dd, ii = exact_candidates(x, rows, cand, cand, k, budget=budget, gram=gram, centred=centred)
        dist[todo], idx[todo] = dd[:, :k], ii[:, :k]
        if width == n - 1:  # every point was a candidate
            todo = todo[:0]
            break
        todo = todo[_uncertified(dd[:, k - 1], sq.index_select(0, rows), score, tiers, d, unit)]
    left = torch.cat([left, todo])
    if left.numel():
        dist, idx = _fix_failed_rows(x, dist, idx, left, k, budget, offset=offset)
    return dist, idx


def knn(
    x: Tensor | np.ndarray,
    k: int,
    *,
    block_size: int | None = None,
    margin: int | None = None,
    memory_budget: int | None = None,
    candidates: str = "auto",
    _rows: tuple[int, int] | None = None,
) -> Neighbors:
    r"""Exact Euclidean k nearest neighbours of every point, self excluded.

    .. math:: r_{i,j} = \| x_i - x_{n_j(i)} \|_2, \quad r_{i,1} \le r_{i,2} \le \dots \le r_{i,k}

    Candidates come from a blocked float32 Gram matrix (upper triangle only) + ``topk`` on ``x``'s device; the kept
    distances are recomputed in float64 (on a CPU from the Gram identity where its proven rounding is
    below 1e-10, else and on accelerators from the difference of the points: see the module
    docstring) and every row is certified against the float32 rounding bound (rows that fail are
    redone exactly).
    Ties are broken by the smaller index.

    Args:
        x: (N, D) points, numpy or torch, any float dtype.
        k: number of neighbours, 1 <= k <= N - 1.
        block_size: rows per panel and side of the Gram blocks (default on a CPU 512 up to N = 4,096, 1024 above; 8192 on GPU).
        margin: extra candidates kept for the exact re-ranking (default ``max(4, k // 16)``; ``max(16,
            k // 2)`` where float32 matmuls run in TF32 / bf16, see :func:`matmul_unit`).
        memory_budget: bytes of working memory ``knn`` may use beyond its input (default: 80 % of the
            device's free memory); the Gram block shrinks to fit, and the N x N symmetric buffer and
            the recompute chunks stay inside it.
        candidates: precision of the candidate GEMM (the result is exact either way): ``"float32"``;
            ``"float16"``: points scaled by a power of two and rounded to float16, multiplied with
            float32 accumulation (tensor cores: several times the float32 GEMM's speed on a GPU),
            certified with the rounding's bound (~50x wider: more candidates and rows that take a
            second, float32 pass); ``"auto"`` (default): float16 on a CUDA GPU from N = 32,768 on,
            where the GEMM is the cost, else float32.

    Returns:
        :class:`Neighbors` with (N, k) float64 ``distances`` and int64 ``indices`` on ``x``'s device.

    Raises:
        ValueError: bad shape, NaN / Inf rows, or ``k`` outside [1, N - 1].

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
        >>> nb = knn(x, 2)
        >>> nb.indices.tolist()
        [[1, 2], [0, 2], [1, 0], [2, 1]]
        >>> nb.distances[2].tolist()
        [2.0, 3.0]
    """
    x, top = _checked_points(x)
    n, d = x.shape
    k_int = as_int(k)
    if k_int is None or not 1 <= k_int <= n - 1:
        raise ValueError(
            f"Expected `k` to be an integer in [1, N - 1] = [1, {n - 1}] for N = {n} points, but got {k!r}."
        )
    k = k_int
    block_size = None if block_size is None else positive_int(block_size, "block_size")
    margin = None if margin is None else positive_int(margin, "margin", low=0)
    device = x.device
    half = _use_half(candidates, device, n)
    x, unscale = safe_scale(x, top)
    with no_autocast(device):  # autocast would run the candidate GEMMs in half precision
        nb = _knn(x, k, block_size=block_size, margin=margin, memory_budget=memory_budget, rows=_rows, half=half)
    return nb if unscale == 1.0 else Neighbors(nb.distances * unscale, nb.indices)


_SAFE_EXP = 40  # points whose largest |coordinate| lies outside [2^-40, 2^40] are rescaled by a power of two


def safe_scale(x: Tensor, top: float) -> tuple[Tensor, float]:
    """``x`` times a power of two that brings its largest |coordinate| near 1 when it lies outside
    [2^-40, 2^40], and the factor to multiply distances by afterwards (1.0 when untouched).

    The float32 candidate pass squares the points (float32 overflows past ~2^64 per coordinate and
    underflows below ~2^-63), and the float64 recompute sums squares too (float64 data of magnitude
    1e200 or 1e-200); a power of two scales every coordinate and distance exactly, so the neighbours
    and their float64 distances are those of the unscaled points. ``top``: max |x| over the real
    points (the finiteness check's :func:`_max_abs`).
    """
    if top == 0.0 or 2.0**-_SAFE_EXP <= top <= 2.0**_SAFE_EXP:
        return x, 1.0
    e = math.frexp(top)[1]  # top = m 2^e, 0.5 <= m < 1
    wide = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    return wide * 2.0**-e, 2.0**e


def _knn(
    x: Tensor, k: int, *, block_size: int | None, margin: int | None, memory_budget: int | None,
    rows: tuple[int, int] | None, half: bool,
) -> Neighbors:
    """:func:`knn` on validated points; ``half``: the candidate GEMM on float16 points."""
    n, d = x.shape
    device = x.device
    unit32 = matmul_unit(device)  # TF32 / bf16 float32 matmuls: a wider certificate
    unit = _HALF_UNIT if half else unit32  # the first pass's input rounding
    kc = min(n - 1, k + (_default_margin(k, unit) if margin is None else int(margin)))
    block = int(block_size) if block_size else _default_block(n, device)
    if block < 1:
        raise ValueError(f"Expected `block_size` to be a positive integer, but got {block_size!r}.")
    block = plan_memory(n, d, kc, block, device, fixed_block=bool(block_size), budget=memory_budget, half=half)
    spare = _leftover(n, d, kc, block, memory_budget, half)  # what a memory_budget leaves for optional buffers

    mean = robust_centre(x)  # any centre will do (the certificate bounds x32's rounding); the median resists outliers
    if x.dtype == torch.float64:
        x32 = (x - mean).to(torch.float32)  # centred: less cancellation
    else:  # centring in float32 (exact widening of half / bfloat16 first): its rounding is inside the certificate's bound
        x32 = x.to(torch.float32) - mean.to(torch.float32)
    sq = sq_norms(x32)  # (N,) |x_i|^2
    # CPU default: two-stage top-k (1.35x faster there); accelerators (or a given block_size): one
    # topk per panel, 9 fewer launches each (a GPU's topk is fast; its launches are not), except on
    # rows of >= 65,536 scores, where a radix select's passes over each panel outweigh 9 launches
    two_stage = (device.type == "cpu" and not block_size) or n >= _TWO_STAGE_MIN_N
    a, b = rows if rows is not None else (0, n)  # knn_sharded: only these rows' neighbours (among all points)
    xg, sqg, scale = _half_points(x32, sq) if half else (x32, sq, 1.0)  # the candidate GEMM's operands
    if rows is None:
        cand_score, cand_idx = _candidates(
            xg, sqg, kc, block, two_stage=two_stage, sym_bytes=_SYM_BUDGET_BYTES if spare is None else spare,
            min_blocks=_SYM_MIN_BLOCKS if device.type == "cpu" and not block_size else 1,  # accelerators: from 2 blocks
        )
    else:
        cand_score, cand_idx = _candidates_rows(xg, sqg, (a, b), kc, block, two_stage=two_stage)
    if half:
        del xg
        cand_score = cand_score / (scale * scale)  # back to the points' units (a power of two: exact)

    row_idx = torch.arange(a, b, device=device)
    budget = _recompute_budget(n, block, device, explicit_block=bool(block_size))
    if spare is not None:  # a memory_budget: the recompute chunks fit what is left
        budget = max(8 * kc * d, min(budget, spare * 2 // 3))  # the float64 buffer + its float32 gather (half)
    # CPU by default: the Gram identity's sampled matmul, no (N, C, D) gather; accelerators (and a given
    # block_size, which asks for the accelerator plan) keep the difference recompute in a few large ops
    gram = not block_size and gram_fits(n, d, spare, device)
    centred = torch.sub(x, mean) if gram else None  # the Gram recompute's points (float64 by promotion: one pass), on the same centre
    dist, idx = exact_candidates(x, row_idx, cand_idx, cand_idx, k, budget=budget, gram=gram, centred=centred)

    if kc < n - 1:
        tiny = _HALF_TINY / scale if half else 0.0  # float16 subnormals, in the points' units
        failed = torch.nonzero(_uncertified(dist[:, k - 1], sq[a:b], cand_score, norm_tiers(sq), d, unit, tiny)).flatten()
        if failed.numel():  # their next passes multiply in float32 (its own, narrower certificate)
            dist, idx = _refine_failed(
                x, x32, sq, dist, idx, failed, k, kc, block=block, budget=budget, gram=gram, unit=unit32,
                two_stage=two_stage, offset=a, centred=centred,
            )
    return Neighbors(dist[:, :k].contiguous(), idx[:, :k].contiguous())
