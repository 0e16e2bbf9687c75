"""EquivalenceClassExplorer: walk the input-embedding space along the pullback metric (SiMEC / SiMExp).

Benfenati, Marta et al., arXiv 2410.06019. At each step t the pullback metric g(x_t) = J^T G J of
the classifier head is computed exactly (thin SVD of the m x n Jacobian, all of its nonzero spectrum,
:mod:`lightning_geom.geometry.pullback`):

* **SiMEC** moves along a random unit direction of ker g (prediction stays: an equivalence class),
  optionally followed by a Gauss-Newton corrector x <- x - J^+ (phi(x) - phi(x_0)) that pulls the
  point back onto the level set of the output;
* **SiMExp** moves along the top eigenvector (prediction changes), with a consistent sign from step to
  step, the first sign chosen to lower the probability of the starting class ("away").

Differences from the authors' released code (which takes G = I on the logits, the Jacobian per
sample with ``jacrev``, a full d x d ``eigh`` per explored token and step, an absolute 0.01
eigenvalue threshold): exact thin SVD of J (no d x d eigh), whole-sequence directions (or the chosen
tokens, by masking columns of J), relative thresholds, batched over samples, and the corrector.

Driven by ``Trainer.predict``: devices, precision and batching come from Lightning.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from ..diagnose import explained
from ..geometry.args import flag, positive_int
from ..geometry.pullback import (
    check_top_logits,
    output_map,
    resolve_top_logits,
    spectrum_from_jacobian,
)
from ..modules import dict_outputs
from .adapters import Adapter, adapter_for

__all__ = ["EquivalenceClassExplorer", "TokenPositionError"]


class TokenPositionError(ValueError):
    """An explored token position outside the batch's inputs."""


class EquivalenceClassExplorer(L.LightningModule):
    """Walk every input of a predict batch along null (SiMEC) or top (SiMExp) directions of g.

    Args:
        model: the classifier (HF text / ViT classifier, the demo image-GPT), or None with ``adapter``.
        adapter: how to embed, run and decode (default: ``adapter_for(model)``).
        mode: ``"simec"`` or ``"simexp"``.
        steps: walk length.
        step_size: eta. ``step_rule="fixed"``: each step has length eta * (mean norm of the starting
            embedding rows); ``"paper"``: eta * 1e-3 / sqrt(lambda_max) (the authors' rule).
        rel_tol: eigenvalues below rel_tol * lambda_max count as null.
        corrector: SiMEC only: one Gauss-Newton step back onto the output's level set after each move.
        tokens: ``"all"`` positions, a list of positions, or ``"top_attribution"`` (the
            ``n_attribution`` positions whose embeddings move the predicted log-probability most).
        output: output metric, ``"logits"`` (the authors'), ``"probs"`` or ``"fisher"``.
        top_logits: the metric on each sample's top-k classes at the start only (fixed for the walk;
            each class is one Jacobian row). ``"auto"`` (default): the top 16 of a head with more than
            64 outputs (an LM's vocabulary), all of a classifier's; None: all. Records then carry
            ``probs`` of those classes (``classes`` in the trajectory) and ``pred`` over all of them.
        record_every: keep a trajectory record (and decode) every n steps (and the last step).
        seed: seed of the random null directions (per batch: reproducible walks).
        progress: show a progress bar over the steps of each walk.

    ``predict_step`` returns one trajectory per sample: a dict with ``start_pred`` (``start_name``), ``steps``
    (a list of records: ``step``, ``pred`` (``pred_name`` where the adapter names classes: an LM's
    next token, a classifier's ``id2label``), ``probs``, ``distance`` from the start, ``eigenvalue``
    used, ``decoded``), ``decoded_as`` (the decoder's kind: ``tokens``, ``image``, ``input``) and, with
    ``top_logits``, the ``classes`` its ``probs`` are of.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        adapter: Adapter | None = None,
        mode: Literal["simec", "simexp"] = "simec",
        steps: int = 100,
        step_size: float = 0.01,
        step_rule: Literal["fixed", "paper"] = "fixed",
        rel_tol: float = 1e-3,
        corrector: bool = True,
        tokens: str | Sequence[int] = "all",
        n_attribution: int = 1,
        output: Literal["logits", "probs", "fisher"] = "logits",
        top_logits: int | Literal["auto"] | None = "auto",
        record_every: int = 10,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("simec", "simexp"):
            raise ValueError(f"Expected `mode` to be one of 'simec', 'simexp', but got {mode!r}.")
        if step_rule not in ("fixed", "paper"):
            raise ValueError(f"Expected `step_rule` to be one of 'fixed', 'paper', but got {step_rule!r}.")
        steps = positive_int(steps, "steps")
        corrector, progress = flag(corrector, "corrector"), flag(progress, "progress")
        for name, v in (("step_size", step_size), ("rel_tol", rel_tol)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"Expected `{name}` to be a finite number > 0, but got {v!r}.")
        record_every, n_attribution, seed = (
            positive_int(v, name, low=low, what=f"an integer >= {low}")
            for name, v, low in (("record_every", record_every, 1), ("n_attribution", n_attribution, 1), ("seed", seed, 0))
        )
        if isinstance(tokens, str) and tokens not in ("all", "top_attribution"):
            raise ValueError(f"Expected `tokens` to be 'all', 'top_attribution' or a list of positions, but got {tokens!r}.")
        if not isinstance(tokens, str) and (
            not isinstance(tokens, Sequence) or not tokens or any(isinstance(p, bool) or not isinstance(p, int) for p in tokens)
        ):
            raise ValueError(f"Expected `tokens` to be 'all', 'top_attribution' or a non-empty list of integer positions, but got {tokens!r}.")
        check_top_logits(top_logits)
        if model is None and adapter is None:
            raise ValueError("Pass `model=` (a known family) or `adapter=Adapter(embed, head, decoder)`.")
        self.model = model
        self.adapter = adapter or adapter_for(model)
        self.mode, self.steps, self.step_size, self.step_rule = mode, steps, step_size, step_rule
        self.rel_tol, self.corrector, self.tokens, self.n_attribution = rel_tol, corrector, tokens, n_attribution
        self.output, self.record_every, self.seed, self.progress = output, record_every, seed, progress
        self.top_logits = top_logits
        self._phi = output_map(output)
        self._keep: Tensor | None = None  # (B, k) classes the walk's metric sees (top_logits), None: all

    # ------------------------------------------------------------------ pieces
    def _f(self, batch: Any) -> Any:
        return lambda e: self._metric_outputs(self.adapter.head(e, batch))

    def _metric_outputs(self, z: Tensor) -> Tensor:
        """phi of the head's logits (B, m), restricted to the walk's classes when ``top_logits`` keeps some."""
        keep = self._keep
        if keep is None:
            return self._phi(z)
        if self.output == "logits":
            return z.gather(-1, keep)
        return self._phi(z).gather(-1, keep)  # probabilities over all classes, then the kept ones

    def _jacobian(self, e: Tensor, batch: Any, mask: Tensor) -> Tensor:
        """(B, m, n) Jacobian of phi(head) at e, columns outside the explored tokens zeroed."""
        from ..geometry.pullback import jacobian

        jac = jacobian(self._f(batch), e)  # (B, m, T*d)
        return jac * mask.expand(e.shape).reshape(e.shape[0], 1, -1).to(jac.dtype)

    def _token_mask(self, e: Tensor, batch: Any) -> Tensor:
        """(B, T, 1) 1 on the explored positions."""
        b, t = e.shape[:2]
        mask = torch.zeros(b, t, 1, dtype=e.dtype, device=e.device)
        if isinstance(self.tokens, str) and self.tokens == "all":
            mask[:] = 1
        elif isinstance(self.tokens, str):  # top_attribution
            x = e.detach().requires_grad_(True)
            with torch.enable_grad():
                logp = torch.log_softmax(self.adapter.head(x, batch), dim=-1)
                (g,) = torch.autograd.grad(logp.max(dim=-1).values.sum(), x)
            top = g.norm(dim=-1).topk(min(self.n_attribution, t), dim=1).indices  # (B, k)
            mask.scatter_(1, top.unsqueeze(-1), 1.0)
        else:
            outside = [p for p in self.tokens if not -t <= p < t]
            if outside:
                raise TokenPositionError(
                    f"Token position {outside[0]} is outside the {t} positions of this batch (0 .. {t - 1}, or -{t} .. -1 from the end)."
                )
            mask[:, list(self.tokens)] = 1
        return mask

    @staticmethod
    def _unit(v: Tensor) -> Tensor:
        return v / v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(1e-300).reshape(-1, *([1] * (v.ndim - 1)))

    # ------------------------------------------------------------------ the walk
    def walk(self, batch: Any, batch_idx: int = 0) -> list[dict[str, Any]]:
        """Walk every sample of ``batch``; returns one trajectory dict per sample."""
        with dict_outputs(self.model):  # a Hugging Face model set to return tuples: its named outputs here
            return self._walk(batch, batch_idx)

    def _walk(self, batch: Any, batch_idx: int) -> list[dict[str, Any]]:
        gen = torch.Generator(device="cpu").manual_seed(self.seed + batch_idx)
        with torch.no_grad(), explained(self.model, batch, fed=False):
            e0 = self.adapter.embed(batch).detach()
        dtype = e0.dtype
        b = e0.shape[0]
        if b == 0 or e0.ndim != 3:
            raise ValueError(
                f"Expected a batch of samples whose embeddings are (B, tokens, d) with B >= 1, but got {tuple(e0.shape)}: "
                "pass (B, T) token ids (a single prompt as ids[None]) or (B, C, H, W) images."
            )
        with torch.no_grad(), explained(self.model, batch, fed=False):
            z0 = self.adapter.head(e0, batch)
        if z0.ndim != 2 or z0.shape[0] != b:
            raise ValueError(
                f"The adapter's head gave outputs of shape {tuple(z0.shape)}; the explorer needs (B, classes) = ({b}, m): "
                "one prediction per sample (an LM: the next-token logits at the last position)."
            )
        top = resolve_top_logits(self.top_logits, z0.shape[-1])  # each sample's top classes at the start, fixed
        self._keep = None if top is None or top >= z0.shape[-1] else z0.topk(top, dim=-1).indices
        mask = self._token_mask(e0, batch)
        y0 = self._metric_outputs(z0)
        c0 = z0.argmax(dim=-1)
        scale = e0.norm(dim=-1).mean(dim=1)  # (B,) mean embedding-row norm
        e = e0.clone()
        prev: Tensor | None = None
        kind = getattr(self.adapter.decoder, "kind", None)
        trajs: list[dict[str, Any]] = [
            {"start_pred": int(c0[i]), "mode": self.mode, "steps": [], **({"decoded_as": kind} if kind else {})} for i in range(b)
        ]
        if self._keep is not None:
            for i, traj in enumerate(trajs):
                traj["classes"] = self._keep[i].tolist()
        if self.adapter.class_names is not None:
            for traj, name in zip(trajs, self.adapter.class_names(c0.tolist())):
                traj["start_name"] = name
        steps = range(self.steps + 1)
        if self.progress:
            from rich.progress import track

            steps = track(steps, description=f"{self.mode} walk ({b} samples)")
        for t in steps:
            jac = self._jacobian(e, batch, mask)  # (B, m, n)
            spec = spectrum_from_jacobian(jac, e.shape[1:])
            lam = spec.eigenvalues  # (B, r) float64
            if t % self.record_every == 0 or t == self.steps:
                self._record(trajs, t, e, e0, batch, lam, prev)
            if t == self.steps:
                break
            if self.mode == "simec":
                z = torch.randn(e.shape, generator=gen, dtype=torch.float64).to(e.device) * mask.to(torch.float64)
                keep = (lam > self.rel_tol * lam[:, :1]).unsqueeze(-1).to(torch.float64)
                vk = spec.eigenvectors * keep  # (B, r, n)
                flat = z.reshape(b, -1)
                flat = flat - torch.einsum("br,brn->bn", torch.einsum("brn,bn->br", vk, flat), vk)
                v = self._unit(flat.reshape(e.shape))
                used = lam[:, 0]
            else:
                v = spec.eigenvectors[:, 0].reshape(e.shape)  # top direction, unit
                if prev is None:  # away from the starting class
                    g = self._class_grad(e, batch, c0).to(torch.float64)
                    sign = -torch.sign((g * v).reshape(b, -1).sum(dim=1))
                else:
                    sign = torch.sign((prev * v).reshape(b, -1).sum(dim=1))
                v = v * torch.where(sign == 0, torch.ones_like(sign), sign).reshape(-1, *([1] * (v.ndim - 1)))
                used = lam[:, 0]
            prev = v
            if self.step_rule == "fixed":
                eta = (self.step_size * scale).to(torch.float64)
            else:
                eta = self.step_size * 1e-3 / used.clamp_min(1e-300).sqrt()
            e = e + (eta.reshape(-1, *([1] * (e.ndim - 1))) * v).to(dtype)
            if self.mode == "simec" and self.corrector:
                e = self._correct(e, y0, batch, mask, eta.reshape(-1).expand(b).to(e.device))
        return trajs

    def _class_grad(self, e: Tensor, batch: Any, cls: Tensor) -> Tensor:
        x = e.detach().requires_grad_(True)
        with torch.enable_grad():
            logp = torch.log_softmax(self.adapter.head(x, batch), dim=-1)
            (g,) = torch.autograd.grad(logp.gather(-1, cls[:, None]).sum(), x)
        return g

    def _correct(self, e: Tensor, y0: Tensor, batch: Any, mask: Tensor, limit: Tensor) -> Tensor:
        """One Gauss-Newton step: e - J^+ (phi(e) - phi(e0)), on the explored tokens.

        J is as precise as the model's arithmetic (``e``'s dtype), so singular values below
        max(m, n) eps(dtype) sigma_max are rounding, not directions: ``rcond`` cuts them (in float32 the
        float64 default inverted them and one correction moved a walk 1,000x its step). A correction is
        then at most ``limit`` (B,) long, the step just taken: correcting a first-order step needs less.
        """
        jac = self._jacobian(e, batch, mask).to(torch.float64)  # (B, m, n)
        with torch.no_grad():
            r = (self._f(batch)(e) - y0).to(torch.float64)  # (B, m)
        rcond = max(jac.shape[-2:]) * torch.finfo(e.dtype).eps
        delta = torch.linalg.lstsq(jac, r.unsqueeze(-1), rcond=rcond, driver="gelsd").solution.squeeze(-1)  # min-norm J^+ r
        norm = delta.norm(dim=1, keepdim=True)
        delta = delta * (limit.reshape(-1, 1).to(delta.dtype) / norm.clamp_min(1e-300)).clamp(max=1.0)
        return e - delta.reshape(e.shape).to(e.dtype)

    def _record(self, trajs: list, t: int, e: Tensor, e0: Tensor, batch: Any, lam: Tensor, prev: Tensor | None) -> None:
        with torch.no_grad():
            full = torch.softmax(self.adapter.head(e, batch), dim=-1).to(torch.float64)
        pred = full.argmax(dim=-1).cpu()
        probs = (full if self._keep is None else full.gather(-1, self._keep)).cpu()  # a large head: the kept classes'
        dist = (e - e0).reshape(e.shape[0], -1).norm(dim=1).cpu()
        decoded = self.adapter.decoder.decode(e) if self.adapter.decoder is not None else [None] * e.shape[0]
        names = self.adapter.class_names(pred.tolist()) if self.adapter.class_names is not None else None
        for i, traj in enumerate(trajs):
            item = decoded[i]
            traj["steps"].append(
                {
                    "step": t,
                    "pred": int(pred[i]),
                    "probs": [round(float(p), 6) for p in probs[i]],
                    "distance": float(dist[i]),
                    "lambda_max": float(lam[i, 0]),
                    "eigenvalue": float(lam[i, 0]) if self.mode == "simexp" else 0.0,  # SiMEC moves in ker g
                    "decoded": item.tolist() if isinstance(item, Tensor) else item,
                    **({} if names is None else {"pred_name": names[i]}),
                }
            )

    # ------------------------------------------------------------------ Lightning
    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        if self.model is not None:
            self.model.eval()
        # Trainer.predict runs under inference mode; the walk needs autograd (and normal tensors)
        with torch.inference_mode(False), torch.enable_grad():
            return self.walk(_clone(batch), batch_idx)

    def forward(self, batch: Any) -> list[dict[str, Any]]:
        return self.walk(batch)


def _clone(obj: Any) -> Any:
    from ..capture import map_tensors

    return map_tensors(obj, lambda t: t.clone())

