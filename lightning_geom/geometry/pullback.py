"""Pullback of an output metric through a network's Jacobian (Benfenati, Marta et al., arXiv 2410.06019).

For f: R^n -> R^m (input embeddings to outputs) and an output metric G, the pullback metric is

    g(x) = J(x)^T G J(x),   J = df/dx  (n x n, rank <= m).

Every output metric used here is Euclidean on an *output map* phi, so g = J_phi^T J_phi with
J_phi = d(phi o f)/dx:

* ``"logits"``: phi = identity, G = I on the logits (the authors' released code);
* ``"probs"``:  phi = softmax, G = I on the probabilities (rank <= m - 1);
* ``"fisher"``: phi = 2 sqrt(softmax): the Fisher-Rao metric of the categorical distribution, equal to
  G = diag(p) - p p^T on the logits (rank <= m - 1).

A head with a single output (a binary classifier's logit, BCE-style) is read as the two-class logits
[0, z] by ``"probs"`` and ``"fisher"`` (sigmoid probabilities; Fisher G = p (1 - p)): the softmax of one
logit is constant, and its metric was g = 0 at every layer. A regression output wants ``"logits"``.

Eigenvectors of g with eigenvalue ~0 span directions the output does not see (an equivalence class);
the top ones change it most. We never form the n x n matrix:

* ``method="exact"`` (m small): the m x n Jacobian from m batched vector-Jacobian products, then a
  thin SVD in float64: eigenvalues sigma_i^2, eigenvectors the right singular vectors. This is far
  more accurate than ``eigh(J^T J)``, which squares the condition number.
* ``method="lanczos"`` (m large): top-k of the operator v -> J^T (J v) (one jvp + one vjp per product)
  with ``scipy.sparse.linalg.eigsh`` on a ``LinearOperator``.
* ``method="rsvd"``: randomized range finder on J^T J (batched products, a few power iterations).

Null directions: ker g = ker J, the complement of the row space: z - V V^T z.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "OUTPUT_MAPS",
    "Spectrum",
    "output_map",
    "jacobian",
    "pullback_spectrum",
    "spectrum_from_jacobian",
    "null_projection",
    "spectrum_stats",
    "token_mass",
    "subspace_overlap",
    "layer_spectra",
    "plan_directions",
    "PullbackMemoryError",
    "check_top_logits",
    "resolve_top_logits",
]

OutputName = Literal["logits", "probs", "fisher"]
OUTPUT_MAPS = ("logits", "probs", "fisher")


@dataclass(frozen=True)
class Spectrum:
    """Nonzero spectrum of g = J^T G J for a batch of B inputs.

    Attributes:
        eigenvalues: (B, r) float64, descending (r <= m, the rank bound).
        eigenvectors: (B, r, n) float64 unit row-space eigenvectors (n = flattened input size).
        input_shape: shape of one input (its flattening is n).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    input_shape: tuple[int, ...]

    @property
    def n(self) -> int:
        return int(math.prod(self.input_shape))


def _two_class(z: Tensor) -> Tensor:
    """A single output (B, 1) read as a binary classifier's logit: the two-class logits [0, z] (softmax:
    [1 - sigmoid(z), sigmoid(z)]; the Fisher metric on z is then sigmoid(z) (1 - sigmoid(z)), Bernoulli's);
    the softmax of one logit alone is constant and would pull back to g = 0. Wider outputs pass."""
    return torch.cat([torch.zeros_like(z), z], dim=-1) if z.shape[-1] == 1 else z


def output_map(output: OutputName | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """phi such that the output metric is Euclidean on phi(logits) (see the module docstring).

    Raises:
        ValueError: an unknown name.
    """
    if callable(output):
        return output
    if output == "logits":
        return lambda z: z
    if output == "probs":
        return lambda z: torch.softmax(_two_class(z), dim=-1)
    if output == "fisher":
        return lambda z: 2.0 * torch.exp(0.5 * torch.log_softmax(_two_class(z), dim=-1))
    raise ValueError(f"Expected `output` to be one of {OUTPUT_MAPS} or a callable, but got {output!r}.")


def _select(y: Tensor, position: int | Tensor | None) -> Tensor:
    """(B, T, m) -> (B, m) at ``position`` (sequence outputs: the last by default; a (B,) tensor: each
    row's own, e.g. its last real token in a padded batch); (B, m) passes through."""
    if y.ndim == 3:
        t = y.shape[1]
        if isinstance(position, Tensor):
            return y[torch.arange(y.shape[0], device=y.device), position.to(y.device)]
        if position is not None and not -t <= position < t:
            raise ValueError(
                f"Expected `position` in [-{t}, {t - 1}] (the output has {t} positions), but got {position}; "
                "pass None for each sample's last (real) token."
            )
        return y[:, -1 if position is None else position]
    if y.ndim != 2:
        raise ValueError(f"Expected model outputs of shape (B, m) or (B, T, m), but got {tuple(y.shape)}.")
    return y


def _composite(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    output: OutputName | Callable[[Tensor], Tensor],
    position: int | None,
    top_logits: int | None,
) -> Callable[[Tensor], Tensor]:
    """x (B, ...) -> phi(outputs) (B, m'), the top-k logits fixed at the starting point."""
    phi = output_map(output)
    keep = None
    if top_logits is not None:
        with torch.no_grad():
            z0 = _select(fn(x), position)
        keep = torch.topk(z0, min(top_logits, z0.shape[-1]), dim=-1).indices  # (B, k), fixed

    def f(inp: Tensor) -> Tensor:
        z = _select(fn(inp), position)
        if keep is not None:
            if output in ("probs", "fisher"):
                return phi(z).gather(-1, keep)  # softmax over all classes, then the kept ones
            z = z.gather(-1, keep)
        return phi(z)

    return f


def jacobian(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """(B, m, n) Jacobian of a batch-independent f: (B, ...) -> (B, m), by m batched vjps (one backward).

    Samples must not interact inside f (eval mode: no batch norm statistics).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = f(x)  # (B, m)
        b, m = y.shape
        eye = torch.eye(m, dtype=y.dtype, device=y.device).unsqueeze(1).expand(m, b, m)  # (m, B, m)
        try:
            (g,) = torch.autograd.grad(y, x, grad_outputs=eye, is_grads_batched=True)  # (m, B, ...)
        except RuntimeError:  # an op without a batching rule: one backward per output
            g = torch.stack([torch.autograd.grad(y, x, grad_outputs=eye[j], retain_graph=True)[0] for j in range(m)])
    return g.reshape(m, b, -1).transpose(0, 1)  # (B, m, n)


def spectrum_from_jacobian(jac: Tensor, input_shape: Sequence[int]) -> Spectrum:
    """Exact nonzero spectrum of J^T J from J (B, m, n) by a float64 thin SVD.

    For m < n (the usual case: few outputs, a long hidden state) the SVD goes through a QR of J^T
    (Chan's R-SVD): J^T = Q R, R = W S Z^T, so J = Z S (Q W)^T; eigenvalues S^2, eigenvectors the
    rows of (Q W)^T. Backward stable like the SVD of J itself, and 3x faster on batches of
    (16, 4096) Jacobians (one Householder QR and an m x m SVD instead of a bidiagonalisation of J).

    Raises:
        ValueError: a NaN / Inf entry in J (LAPACK's own error would only say it failed to converge).
    """
    j = jac.to(torch.float64)
    if not bool(torch.isfinite(j).all()):
        raise ValueError(
            "The Jacobian holds NaN or Inf: the model's outputs or this hidden state are not finite here "
            "(has training diverged, a NaN loss, or overflowed in float16?)."
        )
    shape = tuple(int(v) for v in input_shape)
    if j.shape[-2] >= j.shape[-1]:
        _, s, vh = torch.linalg.svd(j, full_matrices=False)  # s (B, r), vh (B, r, n)
        return Spectrum(eigenvalues=s * s, eigenvectors=vh, input_shape=shape)
    q, r = torch.linalg.qr(j.transpose(-2, -1))  # (B, n, m), (B, m, m)
    w, s, _ = torch.linalg.svd(r)
    return Spectrum(eigenvalues=s * s, eigenvectors=(q @ w).transpose(-2, -1), input_shape=shape)


def _jvp(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """J v by forward-mode AD, or by the double-vjp trick when forward mode is not supported."""
    try:
        return torch.func.jvp(f, (x,), (v,))[1]
    except (RuntimeError, NotImplementedError):
        return torch.autograd.functional.jvp(f, x, v)[1]


def _vjp(f: Callable[[Tensor], Tensor], x: Tensor, u: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(f(x), x, grad_outputs=u)
    return g


def _lanczos(f, x1: Tensor, k: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of v -> J^T J v for one sample x1 (1, ...), matrix-free, via scipy eigsh."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    n = x1.numel()
    shape, dtype = x1.shape, x1.dtype

    def matvec(v: np.ndarray) -> np.ndarray:
        vt = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).to(device=x1.device, dtype=dtype).reshape(shape)
        jv = _jvp(f, x1, vt)
        return _vjp(f, x1, jv).reshape(-1).to(torch.float64).cpu().numpy()

    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)  # fixed: reproducible, and not special like ones
    vals, vecs = eigsh(op, k=min(k, n - 1), which="LA", tol=tol, v0=v0)
    order = np.argsort(vals)[::-1]
    return np.clip(vals[order], 0.0, None), vecs[:, order].T


def _rsvd(f, x1: Tensor, k: int, *, oversample: int = 10, power: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs of J^T J for one sample by a randomized range finder (Halko et al. 2011)."""
    n = x1.numel()
    g = torch.Generator(device="cpu").manual_seed(seed)
    cols = min(n, k + oversample)
    q = torch.randn(n, cols, generator=g, dtype=torch.float64)
    gram = lambda v: _vjp(f, x1, _jvp(f, x1, v.to(x1.dtype).reshape(x1.shape))).reshape(-1).to(torch.float64).cpu()  # noqa: E731
    for _ in range(power + 1):
        y = torch.stack([gram(q[:, j]) for j in range(cols)], dim=1)  # (n, cols) = J^T J Q
        q = torch.linalg.qr(y).Q
    t = torch.stack([gram(q[:, j]) for j in range(cols)], dim=1)  # J^T J Q
    small = q.T @ t  # (cols, cols) = Q^T J^T J Q
    vals, vecs = torch.linalg.eigh(0.5 * (small + small.T))
    vals, vecs = vals.flip(0)[:k], vecs.flip(1)[:, :k]
    return vals.clamp_min(0.0), (q @ vecs).T


def pullback_spectrum(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    output: OutputName | Callable[[Tensor], Tensor] = "logits",
    method: Literal["auto", "exact", "lanczos", "rsvd"] = "auto",
    k: int | None = None,
    position: int | None = None,
    top_logits: int | None = None,
    tol: float = 1e-10,
) -> Spectrum:
    r"""Spectrum of the pullback metric :math:`g = J^T G J` at each input of a batch.

    Args:
        fn: the network from inputs (B, ...) (e.g. input embeddings (B, T, d)) to logits (B, m) or
            (B, T, m). Samples must not interact (eval mode).
        x: (B, ...) inputs.
        output: ``"logits"`` (G = I), ``"probs"``, ``"fisher"`` or a callable output map.
        method: ``"exact"`` (thin SVD of the m x n Jacobian; all of the nonzero spectrum),
            ``"lanczos"`` / ``"rsvd"`` (matrix-free top-k), ``"auto"`` (exact when m <= 512).
        k: number of eigenpairs for the matrix-free methods (default 16); exact returns all r <= m.
        position: sequence position of the output for (B, T, m) outputs (default: last).
        top_logits: restrict to the top-k logits at the starting point (large heads, e.g. an LM).
        tol: Lanczos tolerance.

    Returns:
        :class:`Spectrum` (float64, descending).

    Raises:
        ValueError: bad method / output / shapes.

    Example:
        >>> w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
        >>> s = pullback_spectrum(lambda x: x @ w.T, torch.ones(1, 3, dtype=torch.float64))
        >>> s.eigenvalues.tolist()
        [[4.0, 1.0]]
    """
    if method not in ("auto", "exact", "lanczos", "rsvd"):
        raise ValueError(f"Expected `method` to be one of 'auto', 'exact', 'lanczos', 'rsvd', but got {method!r}.")
    f = _composite(fn, x, output, position, top_logits)
    if method == "auto":  # one extra forward only to count the outputs
        with torch.no_grad():
            method = "exact" if f(x).shape[-1] <= 512 else "lanczos"
    if method == "exact":
        return spectrum_from_jacobian(jacobian(f, x), x.shape[1:])
    kk = k or 16
    vals, vecs = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].detach()
        fi = _composite(fn, xi, output, position, top_logits)
        if method == "lanczos":
            v, e = _lanczos(fi, xi, kk, tol)
            vals.append(torch.from_numpy(v.copy()))
            vecs.append(torch.from_numpy(np.ascontiguousarray(e)))
        else:
            v, e = _rsvd(fi, xi, kk)
            vals.append(v)
            vecs.append(e)
    return Spectrum(torch.stack(vals), torch.stack(vecs), tuple(int(v) for v in x.shape[1:]))


def null_projection(spectrum: Spectrum, z: Tensor, *, rel_tol: float = 1e-6) -> Tensor:
    """Project z (B, ...) onto ker g: z - V V^T z, V the eigenvectors with eigenvalue > rel_tol * top.

    O(n r) per sample; the result has the shape and dtype of ``z``.

    Example:
        >>> s = Spectrum(torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[[1.0, 0.0]]], dtype=torch.float64), (2,))
        >>> null_projection(s, torch.tensor([[3.0, 4.0]])).tolist()
        [[0.0, 4.0]]
    """
    b = z.shape[0]
    flat = z.reshape(b, -1).to(torch.float64)  # (B, n)
    v = spectrum.eigenvectors.to(flat.device)  # (B, r, n)
    lam = spectrum.eigenvalues.to(flat.device)
    keep = (lam > rel_tol * lam[:, :1]).to(torch.float64).unsqueeze(-1)  # (B, r, 1)
    vk = v * keep
    coef = torch.einsum("brn,bn->br", vk, flat)
    out = flat - torch.einsum("br,brn->bn", coef, vk)
    return out.reshape(z.shape).to(z.dtype)


def token_mass(spectrum: Spectrum, *, top: int = 4) -> Tensor:
    """(B, T) share of the top eigenvectors' squared mass on each token position (inputs (T, d))."""
    if len(spectrum.input_shape) < 2:
        raise ValueError("token_mass needs inputs shaped (T, d, ...).")
    b, r, _ = spectrum.eigenvectors.shape
    t = spectrum.input_shape[0]
    v = spectrum.eigenvectors[:, : min(top, r)].reshape(b, min(top, r), t, -1)
    mass = (v * v).sum(dim=-1).mean(dim=1)  # (B, T)
    return mass / mass.sum(dim=1, keepdim=True).clamp_min(1e-300)


def spectrum_stats(spectrum: Spectrum, *, rank_tol: float = 1e-3) -> dict[str, Tensor]:
    r"""Per-sample summaries of a spectrum, each (B,) float64.

    * ``top``: largest eigenvalue; ``trace``: sum of eigenvalues (= ||J||_F^2);
    * ``participation``: :math:`(\sum \lambda)^2 / \sum \lambda^2`;
    * ``effective_rank``: :math:`\exp(-\sum p_i \log p_i)`, :math:`p = \lambda / \sum \lambda`;
    * ``numerical_rank``: eigenvalues above ``rank_tol`` times the top;
    * ``log_det``: pseudo-log-determinant, sum of log of those eigenvalues;
    * ``token_entropy`` (sequence inputs): entropy of the top eigenvectors' mass over positions.
    """
    lam = spectrum.eigenvalues.clamp_min(0.0)
    total = lam.sum(dim=1)
    p = lam / total.clamp_min(1e-300).unsqueeze(1)
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1)
    above = lam > rank_tol * lam[:, :1]
    out = {
        "top": lam[:, 0],
        "trace": total,
        "participation": total**2 / (lam * lam).sum(dim=1).clamp_min(1e-300),
        "effective_rank": torch.exp(ent),
        "numerical_rank": above.sum(dim=1).to(torch.float64),
        "log_det": torch.where(above, torch.log(lam.clamp_min(1e-300)), torch.zeros_like(lam)).sum(dim=1),
    }
    if len(spectrum.input_shape) >= 2:
        tm = token_mass(spectrum)
        out["token_entropy"] = -(tm * torch.log(tm.clamp_min(1e-300))).sum(dim=1)
    return out


def subspace_overlap(a: Tensor, b: Tensor) -> Tensor:
    """(B,) mean squared cosine between two sets of orthonormal row vectors (B, r, n): ||A B^T||_F^2 / r.

    1 means the same subspace, ~r/n unrelated ones.
    """
    r = min(a.shape[1], b.shape[1])
    m = torch.einsum("brn,bsn->brs", a[:, :r].to(torch.float64), b[:, :r].to(torch.float64))
    return (m * m).sum(dim=(1, 2)) / r


def layer_spectra(
    run: Callable[[], tuple[Tensor, Sequence[Tensor]]],
    *,
    output: OutputName | Callable[[Tensor], Tensor] = "logits",
    position: int | Tensor | None = None,
    top_logits: int | Literal["auto"] | None = None,
    memory_budget: int | None = None,
) -> list[Spectrum]:
    """Spectrum of the output metric pulled back to *every* layer's hidden state, in one pass.

    ``run()`` does one forward pass with gradients enabled and returns ``(logits, hidden_states)``,
    the hidden states (B, T, d) being nodes of the graph (e.g. an HF model called with
    ``output_hidden_states=True``). Batched backwards with the m output directions then give
    J_l = d phi(y) / d h_l for all layers l at once — the Jacobian of "the rest of the network"
    from layer l — and each spectrum is the float64 thin SVD of its J_l.

    ``position``: the output position of sequence outputs (default the last; a (B,) tensor: one per
    sample, such as each one's last real token in a right-padded batch).
    ``top_logits``: pull back only each sample's top-k logits (None: all m); ``"auto"``: the top
    16 where the head has more than 64 outputs (an LM's vocabulary: each output is one backward
    direction), all of a classifier's.

    Memory is planned (:func:`plan_directions`): the Jacobians (B x m x sum_l n_l) must fit
    ``memory_budget`` bytes (default: half the device's free memory), and the m directions go through
    the backward in as few batches as that budget allows (each direction carries its own copy of the
    graph's gradients: all 30,522 of a full vocabulary at once is what runs a machine out of memory).

    Returns:
        One :class:`Spectrum` per hidden state (inputs of shape (T, d)).

    Raises:
        PullbackMemoryError: the Jacobians alone exceed the budget; the message names the need and the fix
            (``top_logits``, fewer samples, one ``position``).
    """
    with torch.enable_grad():
        logits, hidden = run()
        hidden = list(hidden)
        phi = output_map(output)
        z = _select(logits, position)
        top_logits = resolve_top_logits(top_logits, z.shape[-1])
        if top_logits is not None:
            keep = torch.topk(z.detach(), min(top_logits, z.shape[-1]), dim=-1).indices
            y = phi(z).gather(-1, keep) if output in ("probs", "fisher") else phi(z.gather(-1, keep))
        else:
            y = phi(z)  # (B, m)
        b, m = y.shape
        sizes = [h[0].numel() for h in hidden]
        chunk = plan_directions(
            m, b, sizes, hidden[0].element_size() if hidden else 4, graph_bytes=logits.numel() * logits.element_size(),
            budget=memory_budget, device=y.device,
        )
        jacs = [torch.zeros((m, b, n), dtype=h.dtype, device=h.device) for h, n in zip(hidden, sizes)]
        eye = torch.eye(m, dtype=y.dtype, device=y.device).unsqueeze(1).expand(m, b, m)
        for c0 in range(0, m, chunk):
            c1 = min(m, c0 + chunk)
            grads = _directions(y, hidden, eye[c0:c1], last=c1 == m)
            for jac, g in zip(jacs, grads):
                if g is not None:  # None: a hidden state the output does not depend on (zeros)
                    jac[c0:c1] = g.reshape(c1 - c0, b, -1)
            del grads
    return [spectrum_from_jacobian(jac.transpose(0, 1), h.shape[1:]) for h, jac in zip(hidden, jacs)]


AUTO_TOP_LOGITS = 16  # top_logits="auto": this many of a large head's logits ...
AUTO_HEAD_MAX = 64  # ... when it has more outputs than this (a classifier's heads are pulled back whole)


def check_top_logits(value: object) -> None:
    """Refuse a ``top_logits`` that is not ``"auto"``, None or a positive integer (one line)."""
    if value not in (None, "auto") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f'Expected `top_logits` to be "auto", None or a positive integer, but got {value!r}.')


def resolve_top_logits(value: int | Literal["auto"] | None, m: int) -> int | None:
    """How many of a head's ``m`` outputs to keep: ``"auto"``: 16 of more than 64 (an LM's vocabulary),
    all (None) of fewer; an integer or None: as given."""
    if value == "auto":
        return AUTO_TOP_LOGITS if m > AUTO_HEAD_MAX else None
    return value


class PullbackMemoryError(ValueError):
    """The Jacobians of a pullback do not fit the memory budget (the message says what would)."""


_GRAPH_FACTOR = 16  # a direction's gradients through one block: ~16 hidden-state-sized tensors (q, k, v, MLP, norms ...)


def plan_directions(
    m: int, b: int, sizes: Sequence[int], itemsize: int, *, graph_bytes: int = 0,
    budget: int | None = None, device: torch.device | str = "cpu",
) -> int:
    """Output directions per batched backward of :func:`layer_spectra` (1 <= c <= m).

    Memory: the Jacobians hold B m sum_l n_l values, plus a float64 copy of the largest layer's for its
    SVD; each direction in flight holds gradients of the size of the output tensor (``graph_bytes``:
    an LM's B x T x V logits) plus ~16 hidden states per layer (an estimate of a block's internals).
    ``budget``: bytes (default: half of :func:`~lightning_geom.geometry.neighbors.available_bytes`;
    unlimited where unknown).

    Raises:
        PullbackMemoryError: the Jacobians alone exceed the budget.
    """
    from .neighbors import available_bytes, format_bytes

    if budget is None:
        free = available_bytes(torch.device(device))
        budget = None if free is None else free // 2
    total = b * m * sum(sizes)
    need = total * itemsize + 2 * b * m * max(sizes, default=0) * 8
    per_direction = graph_bytes + _GRAPH_FACTOR * b * sum(sizes) * itemsize
    if budget is None:
        return m
    if need > budget:
        raise PullbackMemoryError(
            f"The pullback of {m:,} outputs to {len(sizes)} layers of up to {max(sizes, default=0):,} inputs for "
            f"{b} samples needs {format_bytes(need)} of Jacobians, more than its budget of {format_bytes(budget)}: "
            f"keep fewer outputs (top_logits=16 pulls back an LM's 16 top logits), fewer samples, or pass a larger memory_budget."
        )
    return max(1, min(m, (budget - need) // max(1, per_direction)))


def _directions(y: Tensor, hidden: Sequence[Tensor], eye: Tensor, *, last: bool) -> Sequence[Tensor | None]:
    """d <u_j, y> / d h_l for the c output directions u_j in ``eye`` (c, B, m): one batched backward, or one
    backward per direction where an op has no batched rule; the graph is kept unless ``last``."""
    try:
        return torch.autograd.grad(y, hidden, grad_outputs=eye, is_grads_batched=True, retain_graph=not last, allow_unused=True)
    except RuntimeError:
        per = [torch.autograd.grad(y, hidden, grad_outputs=u, retain_graph=True, allow_unused=True) for u in eye]
        return [None if per[0][li] is None else torch.stack([p[li] for p in per]) for li in range(len(hidden))]
