"""Pooled token clouds: every token of every prompt as one point, and its next-token loss.

Per-prompt token geometry (``capture_representations(..., pooling="tokens")`` +
:func:`~lightning_geom.analysis.token_geometry`) treats each prompt's tokens as one cloud. The
pooled view (Viswanathan et al., arXiv 2501.10573; Valeriani et al. 2023 pool sequences instead)
puts all tokens of all prompts into one cloud per layer. A probe of 2,000 texts of 128 tokens is
256,000 points per layer, so the cloud is a seeded uniform subsample of at most ``max_tokens``
tokens, chosen while streaming through the batches (memory: ``max_tokens`` x D per layer plus one
batch), optionally without special tokens (``[CLS]``, ``[SEP]``, BOS: their hidden states are
outliers far from the text's, the "massive activations" of the first token) or the first token.

For a causal LM the next-token cross-entropy of every kept token comes along: the loss of
predicting token t + 1 from the hidden state at position t (NaN at a prompt's last real token).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .capture import capture_representations, pool, resolve_network, right_align, split_batch
from .geometry.neighbors import available_bytes, format_bytes
from .modules import dict_outputs

__all__ = ["TokenCloud", "token_keep_mask", "next_token_losses", "lm_capture_forward", "capture_token_cloud", "is_causal_lm"]


@dataclass(frozen=True)
class TokenCloud:
    """A subsample of the probe's tokens, flattened into one cloud per layer.

    Attributes:
        features: one (M, D_l) float32 tensor per layer; row i is token ``position[i]`` of prompt ``prompt[i]``.
        prompt: (M,) index of each token's prompt in the probe (batches concatenated).
        position: (M,) position of each token among its prompt's real tokens (left padding is not counted).
        loss: (M,) next-token cross-entropy at each kept token (predicting the token after it; NaN
            at a prompt's last real token), or None when the model is not a causal LM.
        available: eligible tokens before the subsample (real, and not dropped as special).
        sources: what each layer is (as :attr:`~lightning_geom.capture.Representations.sources`).
        pooled: with ``capture_token_cloud(pooled=how)``, every prompt's tokens pooled per layer
            ((P, D_l) float32, prompts in order): the sequence features of the same forward.
    """

    features: tuple[Tensor, ...]
    prompt: Tensor
    position: Tensor
    loss: Tensor | None
    available: int
    sources: tuple[str, ...] = ()
    pooled: tuple[Tensor, ...] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.prompt.numel())


def is_causal_lm(net: nn.Module) -> bool:
    """A Hugging Face causal LM (``...ForCausalLM``, ``...LMHeadModel``): its ``logits`` predict the next token."""
    return type(net).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def token_keep_mask(
    lengths: Tensor, width: int, *, input_ids: Tensor | None = None, drop_ids: Iterable[int] = (), drop_first: bool = False
) -> Tensor:
    """(N, width) bool: the real tokens (position < length) that are not dropped.

    Args:
        lengths: (N,) real tokens of each prompt (right padding).
        width: the padded token count T.
        input_ids: (N, T) token ids, needed to drop ``drop_ids``.
        drop_ids: token ids to leave out (a tokenizer's ``all_special_ids``: CLS, SEP, BOS, EOS, ...).
        drop_first: leave out position 0 of every prompt (a BOS token that is not marked special).

    Example:
        >>> token_keep_mask(torch.tensor([3, 1]), 4, input_ids=torch.tensor([[0, 5, 6, 1], [0, 1, 1, 1]]), drop_ids=[0]).int().tolist()
        [[0, 1, 1, 0], [0, 0, 0, 0]]
    """
    keep = torch.arange(width).unsqueeze(0) < lengths.reshape(-1, 1).cpu()
    ids = list(drop_ids)
    if ids:
        if input_ids is None:
            raise ValueError("`drop_ids` needs `input_ids` to find those tokens.")
        keep &= ~torch.isin(input_ids.cpu(), torch.tensor(ids, dtype=input_ids.dtype))
    if drop_first:
        keep[:, 0] = False
    return keep


def next_token_losses(net: nn.Module, batch: dict[str, Tensor], *, max_logits: int = 2**25) -> Tensor:
    """(B, T) float64 next-token cross-entropy of a causal LM at every position of one batch.

    ``loss[b, t] = -log p(ids[b, t + 1] | ids[b, :t + 1])``, the loss of the prediction made from the
    hidden state at position t; NaN where t or t + 1 is padding (so at each prompt's last real token).
    The logits are computed ``max_logits`` (rows x tokens x vocabulary) at a time: an LM head's
    (B, T, V) float32 output is the largest tensor of the forward (64 x 128 x 50,257 = 1.6 GB).

    Raises:
        ValueError: ``batch`` has no ``input_ids``.
    """
    return _lm_pass(net, batch, max_logits=max_logits, hidden=False)[0]


def _lm_pass(
    net: nn.Module, batch: dict[str, Tensor], *, max_logits: int, hidden: bool
) -> tuple[Tensor, tuple[Tensor, ...] | None]:
    """:func:`next_token_losses` and, with ``hidden``, the same forward's hidden states (each (B, T, D),
    row slices concatenated): one pass gives both, where a separate capture would run the model twice."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError("next-token losses need token inputs: a dict batch with `input_ids`.")
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    vocab = _vocab_size(net)
    rows = max(1, max_logits // max(1, ids.shape[1] * vocab)) if vocab else ids.shape[0]
    _, kwargs, _ = split_batch(batch)
    if hidden:
        kwargs = {**kwargs, "output_hidden_states": True}
    out, states = [], []
    for s in range(0, ids.shape[0], rows):
        part = {k: v[s : s + rows] if torch.is_tensor(v) and v.shape[:1] == ids.shape[:1] else v for k, v in kwargs.items()}
        with dict_outputs(net):
            res = net(**part)
        logits = res.logits[:, :-1].float()  # position t predicts token t + 1
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[s : s + rows, 1:], reduction="none").double()
        del logits
        m = mask[s : s + rows]
        valid = (m[:, :-1] > 0) & (m[:, 1:] > 0)
        ce = torch.where(valid, ce, torch.full_like(ce, float("nan")))
        out.append(torch.nn.functional.pad(ce, (0, 1), value=float("nan")))
        if hidden:
            got = getattr(res, "hidden_states", None)
            if got is None:
                raise ValueError(f"{type(net).__name__} returned no `hidden_states`; pass `layers=[...]` to capture with hooks.")
            states.append(tuple(got))
        del res
    if not hidden:
        return torch.cat(out), None
    return torch.cat(out), tuple(torch.cat(layer) for layer in zip(*states))


def aligned_to(t: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T) per-token values on the CPU, each row's real tokens first as in a captured token cloud
    (:func:`~lightning_geom.capture.right_align`; left padding moved to the end), or as they are
    without a (B, T) mask."""
    if not torch.is_tensor(mask) or mask.shape != t.shape:
        return t.cpu()
    return right_align([t.cpu()], mask.cpu())[0][0]


def lm_capture_forward(losses: list[Tensor]) -> Callable[[nn.Module, dict[str, Tensor]], dict[str, Any]]:
    """A ``forward_fn`` for :func:`~lightning_geom.capture.capture_representations` on a causal LM: the
    hidden states, and each batch's (B, T) next-token losses (:func:`next_token_losses`) appended to
    ``losses``, from one forward (:func:`_lm_pass`) instead of a capture and a second pass."""

    def forward(net: nn.Module, batch: dict[str, Tensor]) -> dict[str, Any]:
        per, states = _lm_pass(net, batch, max_logits=2**25, hidden=True)
        losses.append(per)
        return {"hidden_states": states}

    return forward


def _vocab_size(net: nn.Module) -> int | None:
    size = getattr(getattr(net, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None


def capture_token_cloud(
    module: nn.Module,
    batches: Sequence[Any],
    *,
    layers: Sequence[str] | None = None,
    max_tokens: int | None = 10_000,
    seed: int = 0,
    drop_ids: Iterable[int] = (),
    drop_first: bool = False,
    loss: bool = True,
    device: torch.device | str | None = None,
    normalize: str | None = None,
    feature_device: torch.device | str | None = "cpu",
    pooled: str | None = None,
) -> TokenCloud:
    """Every eligible token of the probe batches as one point per layer: a seeded uniform subsample
    of at most ``max_tokens`` of them, kept while streaming (bounded memory).

    Each eligible token draws a key from ``torch.Generator().manual_seed(seed)`` (batch by batch, in
    row-major order); the ``max_tokens`` smallest keys are kept, so the sample is uniform, depends
    only on the seed and the batches, and equals the whole set when there are fewer tokens.

    Args:
        module: the network or LightningModule (see :func:`~lightning_geom.capture.resolve_network`).
        batches: token batches (dicts with ``input_ids`` and ``attention_mask``, right-padded).
        layers: glob patterns of submodules (default: the hidden states).
        max_tokens: the most tokens kept (None: all; mind the memory: tokens x D x layers x 4 bytes).
        seed: the subsample's seed.
        drop_ids: token ids left out (e.g. ``tokenizer.all_special_ids``).
        drop_first: leave out every prompt's first token (an unmarked BOS).
        loss: also the next-token loss of every kept token when the network is a causal LM.
        device: where to run the model (default: its parameters' device).
        normalize: as in :func:`~lightning_geom.capture.capture_representations`.
        feature_device: where the kept features live (default the CPU).
        pooled: also pool every prompt's tokens (``"mean"``, ``"last"``, ``"first"``: see
            :func:`~lightning_geom.capture.pool`) into ``TokenCloud.pooled``, the sequence features
            of the same forward (the probe's main analysis, without a forward of its own).

    Raises:
        ValueError: ``max_tokens`` not a positive integer; a model without token-level hidden states;
            no eligible token left (every token dropped).
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"Expected `max_tokens` to be a positive integer or None (all tokens), but got {max_tokens!r}.")
    drop = sorted({int(i) for i in drop_ids})
    net = resolve_network(module)
    with_loss = loss and is_causal_lm(net)
    if device is not None:
        run_dev = torch.device(device)
    else:
        first = next(iter(module.parameters()), None)
        run_dev = first.device if first is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    keys = torch.empty(0, dtype=torch.float64)
    prompt = torch.empty(0, dtype=torch.long)
    position = torch.empty(0, dtype=torch.long)
    losses = torch.empty(0, dtype=torch.float64)
    feats: list[Tensor] = []
    sources: tuple[str, ...] = ()
    available, offset = 0, 0
    fused = with_loss and layers is None  # the hidden states and the losses from one forward
    pooled_feats: list[list[Tensor]] = []
    fused_losses: list[Tensor] = []

    for batch in batches:
        reps = capture_representations(
            module, [batch], layers=layers, pooling="tokens", normalize=normalize, device=device,
            feature_device=feature_device, forward_fn=lm_capture_forward(fused_losses) if fused else None,
        )
        per = fused_losses.pop() if fused else None  # this batch's (B, T) losses, from the same forward
        if reps.lengths is None or reps.features[0].ndim != 3:
            raise ValueError("a pooled token cloud needs token-level hidden states (B, T, D) from the model; this one gives (B, D).")
        sources = reps.sources
        b, t = reps.features[0].shape[:2]
        if pooled is not None:  # the sequence features from the same (right-aligned, padding-zeroed) token states
            real = (torch.arange(t) < reps.lengths.reshape(-1, 1).cpu()).long()
            got = [pool(f, real.to(f.device), pooled) for f in reps.features]
            pooled_feats = pooled_feats or [[] for _ in got]
            for acc, g in zip(pooled_feats, got):
                acc.append(g)
        _check_cloud_memory(available + int(reps.lengths.sum()), max_tokens, reps.features, len(feats) > 0)
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        ids = aligned_to(ids, mask) if ids is not None else None  # the capture moved real tokens to the front
        keep = token_keep_mask(reps.lengths, t, input_ids=ids, drop_ids=drop if ids is not None else (), drop_first=drop_first)
        rows, cols = keep.nonzero(as_tuple=True)
        available += int(rows.numel())
        new_keys = torch.rand(b, t, generator=gen, dtype=torch.float64)[rows, cols]
        new_feats = [f[rows.to(f.device), cols.to(f.device)] for f in reps.features]
        new_loss = None
        if fused and rows.numel():
            new_loss = aligned_to(per, mask)[rows, cols].clone()
        elif with_loss and rows.numel():  # hooked layers: the loss from a second forward
            was = net.training
            net.eval()
            try:
                with torch.inference_mode():
                    per = next_token_losses(net, {key: v.to(run_dev) if torch.is_tensor(v) else v for key, v in batch.items()})
            finally:
                net.train(was)
            new_loss = aligned_to(per, mask)[rows, cols].clone()
        keys, order = _merge_keys(keys, new_keys, max_tokens)
        prompt = torch.cat([prompt, rows + offset])[order]
        position = torch.cat([position, cols])[order]
        if with_loss:
            losses = torch.cat([losses, new_loss if new_loss is not None else torch.empty(0, dtype=torch.float64)])[order]
        feats = [torch.cat([a, n])[order.to(n.device)] for a, n in zip(feats, new_feats)] if feats else [n[order.to(n.device)] for n in new_feats]
        offset += b
    if available == 0:
        raise ValueError(
            "no token left for the pooled token cloud: every token is padding or dropped"
            + (f" (dropped ids {drop[:8]}{'...' if len(drop) > 8 else ''}, drop_first={drop_first})" if drop or drop_first else "")
            + "; keep the special tokens or use longer texts."
        )
    final = torch.argsort(prompt * (int(position.max()) + 1) + position)  # prompt order, then position
    return TokenCloud(
        features=tuple(f[final.to(f.device)].clone() for f in feats),
        prompt=prompt[final],
        position=position[final],
        loss=losses[final] if with_loss else None,
        available=available,
        sources=sources,
        pooled=tuple(torch.cat(layer) for layer in pooled_feats) if pooled is not None else None,
    )


def _check_cloud_memory(seen: int, max_tokens: int | None, features: Sequence[Tensor], checked: bool) -> None:
    """Refuse a cloud that cannot fit where its features are kept, before it is built: ``max_tokens``
    (or, with None, the tokens seen so far) x every layer's width x 4 bytes, twice (the merge's copy)."""
    if checked and max_tokens is not None:  # the bound does not change after the first batch
        return
    n = seen if max_tokens is None else max_tokens
    width = sum(int(f.shape[-1]) for f in features)
    need = 2 * n * width * 4
    dev = features[0].device
    free = available_bytes(dev)
    if free is not None and need > 0.8 * free:
        raise ValueError(
            f"the pooled token cloud of {n:,} tokens x {len(features)} layers ({width:,} features per token) needs "
            f"{format_bytes(need)} on {dev}, but {format_bytes(free)} are free: lower `max_tokens` (--max-tokens) "
            "or capture fewer layers."
        )


def _merge_keys(kept: Tensor, new: Tensor, max_tokens: int | None) -> tuple[Tensor, Tensor]:
    """The smallest ``max_tokens`` of ``cat([kept, new])`` and their positions in it."""
    both = torch.cat([kept, new])
    if max_tokens is None or both.numel() <= max_tokens:
        return both, torch.arange(both.numel())
    vals, order = torch.topk(both, max_tokens, largest=False, sorted=False)
    return vals, order
