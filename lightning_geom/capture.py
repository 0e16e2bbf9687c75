"""Representations out of a model: one forward pass per probe batch, every layer at once.

Two ways to reach the layers:

* **hidden states** (default, ``layers=None``): the network is called with
  ``output_hidden_states=True`` and its output's ``hidden_states`` is used — Hugging Face models
  (embeddings + one entry per block; note that in most HF models the last entry is taken *after*
  the final LayerNorm) and the demo's image-GPT.
* **forward hooks** on named submodules chosen by glob patterns (``layers=["transformer.h.*"]``),
  registered in a context manager and removed in ``finally`` (as TransformerLens' hook points);
  captured tensors are detached at once. A plain PyTorch network whose forward takes no
  ``output_hidden_states`` is hooked at its repeated blocks (:func:`~.modules.repeated_blocks`).
  Which submodules, and the hooks themselves: :mod:`.modules`.

Token dimensions are pooled (``"mean"`` over non-padding tokens, ``"last"`` non-padding token,
``"first"`` token, or a callable), optionally after a LayerNorm without affine parameters
(``normalize="layer_norm"``: the "LayerNorm-ed residual stream" of Valeriani et al. 2023).
Features come back as float32 (N, D) per layer, on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .diagnose import explained
from .geometry.overlap import class_vector
from .modules import (  # noqa: F401 - used here, and capture's public names since before the split (modules.py)
    LABEL_KEYS,
    LayerChoiceError,
    _first_tensor,
    _is_hf,
    _layer_hint,
    dict_outputs,
    forward_call,
    forward_signature,
    hook_modules,
    is_encoder_decoder,
    layer_patterns,
    match_modules,
    no_attention_fastpath,
    output_logits,
    repeated_blocks,
    resolve_network,
    takes_hidden_states,
)

__all__ = [
    "NoLogitsError",
    "Representations",
    "pool",
    "hook_modules",
    "resolve_network",
    "split_batch",
    "capture_representations",
    "layer_name",
    "map_tensors",
    "logits_and_hidden",
    "last_positions",
    "take_last",
    "batch_last_positions",
]

Pooling = Literal["mean", "last", "first", "tokens"] | Callable[[Tensor, Tensor | None], Tensor]


def layer_name(i: int) -> str:
    """Stable name of the i-th captured layer: ``layer_00``, ``layer_01``, ..."""
    return f"layer_{i:02d}"


@dataclass(frozen=True)
class Representations:
    """Pooled features of N probe samples at every captured layer.

    Attributes:
        features: one (N, D_l) float32 CPU tensor per layer, in depth order.
        sources: what each layer is (``"hidden_states[3]"`` or a module name).
        labels: the labels found in the batches (concatenated), or None. Their count is not
            checked here: compare it with ``n_samples`` before use.
        lengths: with ``pooling="tokens"``, the (N,) number of real tokens of each sample; the
            features are then (N, T, D) token clouds, zero beyond each length (right padding).
    """

    features: tuple[Tensor, ...]
    sources: tuple[str, ...]
    labels: Tensor | None = None
    lengths: Tensor | None = None  # pooling="tokens": (N,) real tokens per sample; features are (N, T, D)

    @property
    def n_samples(self) -> int:
        return int(self.features[0].shape[0]) if self.features else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(layer_name(i) for i in range(len(self.features)))


def _channels_last(h: Tensor) -> Tensor:
    """A convolutional feature map (B, C, H, W, ...) as a token sequence (B, H W ..., C); others unchanged."""
    return h.flatten(2).transpose(1, 2) if h.ndim > 3 else h


def pool(h: Tensor, attention_mask: Tensor | None = None, how: Pooling = "mean") -> Tensor:
    """Pool a (B, T, D) hidden state over tokens into (B, D); (B, D) passes through; a channels-first
    feature map (B, C, H, W) of a convolutional network is read as (B, H W, C): its spatial positions
    are the tokens (``"mean"`` = global average pooling).

    Args:
        h: (B, T, D), (B, D) or (B, C, H, W) hidden states.
        attention_mask: (B, T) with 1 for real tokens, 0 for padding, or None (all real).
        how: ``"mean"`` over real tokens, ``"last"`` real token, ``"first"`` token, ``"tokens"``
            (no pooling: the (B, T, D) token cloud, padding zeroed), or a callable
            ``(h, attention_mask) -> (B, D)``.

    Raises:
        ValueError: unknown ``how``, or a 1-d ``h``.

    Example:
        >>> h = torch.arange(12.0).view(1, 3, 4)
        >>> pool(h, torch.tensor([[1, 1, 0]]), "mean").tolist()
        [[2.0, 3.0, 4.0, 5.0]]
        >>> pool(h, torch.tensor([[1, 1, 0]]), "last").tolist()
        [[4.0, 5.0, 6.0, 7.0]]
        >>> pool(h, torch.tensor([[0, 1, 1]]), "first").tolist()  # left padding
        [[4.0, 5.0, 6.0, 7.0]]
        >>> pool(torch.arange(8.0).view(1, 2, 2, 2)).tolist()  # (B, C, H, W): mean over the 4 positions
        [[1.5, 5.5]]
    """
    if callable(how):
        return how(h, attention_mask)
    if h.ndim == 2:
        return h
    h = _channels_last(h)  # (B, C, H, W, ...) -> (B, H W, C): "mean" is global average pooling
    if h.ndim != 3:
        raise ValueError(f"Expected a hidden state of shape (B, T, D), (B, D) or (B, C, H, W), but got {tuple(h.shape)}.")
    if how == "first":  # the first real token (left padding: not position 0)
        if attention_mask is not None and attention_mask.shape == h.shape[:2]:
            return h[torch.arange(h.shape[0], device=h.device), attention_mask.to(h.device).float().argmax(dim=1)]
        return h[:, 0]
    if how == "tokens":
        if attention_mask is not None and attention_mask.shape == h.shape[:2]:
            return h * attention_mask.to(device=h.device, dtype=h.dtype).unsqueeze(-1)
        return h
    mask = None
    if attention_mask is not None and attention_mask.shape == h.shape[:2]:
        mask = attention_mask.to(device=h.device, dtype=h.dtype)
    if how == "mean":
        if mask is None:
            return h.mean(dim=1)
        return (h * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
    if how == "last":
        return take_last(h, mask)
    raise ValueError(f"Expected `pooling` to be one of 'mean', 'last', 'first', 'tokens' or a callable, but got {how!r}.")


def state_mask(net: nn.Module, mask: Tensor, t: int) -> Tensor | None:
    """The (B, t) mask of hidden states with ``t`` positions: the batch's ``attention_mask`` when it is per
    token; an audio model's per-sample mask turned into its frames' (Hugging Face's
    ``_get_feature_vector_attention_mask``: wav2vec2, HuBERT, WavLM, ...); else None (every position
    real), with a warning when some row was padded (its padding frames then enter the pooling)."""
    if mask.ndim != 2 or mask.shape[1] == t:
        return mask
    for m in (net, getattr(net, "base_model", None)):
        frames = getattr(m, "_get_feature_vector_attention_mask", None)
        if callable(frames):
            try:
                out = frames(t, mask)
            except Exception:  # noqa: BLE001 - another signature: fall through
                continue
            if isinstance(out, Tensor) and tuple(out.shape) == (mask.shape[0], t):
                return out
    if not bool((mask != 0).all()):
        warnings.warn(
            f"The attention_mask has {mask.shape[1]} positions but {type(net).__name__}'s hidden states have {t}, and "
            "the model does not say how they map: padded positions are pooled as if real. Pass `pooling=` a "
            "callable (h, mask) -> (B, D), or probe unpadded batches.", UserWarning, stacklevel=4,
        )
    return None


def last_positions(mask: Tensor) -> Tensor:
    """(B,) index of each row's last real token: the last nonzero of the (B, T) ``mask``, either padding side.

    Example:
        >>> last_positions(torch.tensor([[1, 1, 0], [0, 1, 1]])).tolist()
        [1, 2]
    """
    steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return ((mask != 0) * steps).argmax(dim=1)


def take_last(t: Tensor, mask: Tensor | None) -> Tensor:
    """(B, T, ...) -> (B, ...) at each row's last real token (:func:`last_positions`); the last column without a mask."""
    if mask is None:
        return t[:, -1]
    return t[torch.arange(t.shape[0], device=t.device), last_positions(mask.to(t.device))]


def batch_last_positions(batch: Any) -> Tensor | None:
    """(B,) last real token of each row of a batch with a padded ``attention_mask`` (a dict's, or an
    (ids, mask, labels) tuple's: :func:`split_batch`) in which some row has a 0, else None: the last
    position is every row's own."""
    mask = split_batch(batch)[1].get("attention_mask") if isinstance(batch, (Mapping, tuple, list)) and batch else None
    if not isinstance(mask, Tensor) or mask.ndim != 2 or bool((mask != 0).all()):
        return None
    return last_positions(mask)


def _is_mask_of(m: Any, x: Any) -> bool:
    """Whether ``m`` is an attention mask for the (B, T) token ids ``x``: same shape, bool or 0 / 1 integers,
    and every row a padding mask: its ones one block at the start (right padding) or at the end (left
    padding). Token type ids (all 0 for one sentence; 0, then 1, then padding for a pair) are not."""
    if not (isinstance(m, Tensor) and isinstance(x, Tensor) and m.ndim == 2 and m.shape == x.shape and m.numel()):
        return False
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool or m.is_floating_point() or m.is_complex():
        return False  # not token ids / not a 0-1 mask
    if m.dtype != torch.bool and not bool(((m == 0) | (m == 1)).all()):
        return False
    ones = m.bool()
    count = ones.sum(dim=1, keepdim=True)
    at = torch.arange(m.shape[1], device=m.device)[None, :]
    right, left = at < count, at >= m.shape[1] - count
    return bool(((count > 0).squeeze(1) & ((ones == right).all(dim=1) | (ones == left).all(dim=1))).all())


def split_batch(batch: Any, label_key: str | None = "labels") -> tuple[tuple, dict, Tensor | None]:
    """(args, kwargs, labels) of a batch: a dict goes in as keyword arguments (label keys removed),
    a tensor positionally, a (inputs, labels, ...) tuple as its first item with the second as labels;
    an (input_ids, attention_mask, labels, ...) tuple (``TensorDataset(ids, mask, labels)``: a 0 / 1
    second item shaped like the first) passes its mask as ``attention_mask`` and its third item as labels.
    """
    if isinstance(batch, Mapping):
        keys = {label_key} if label_key else set()
        keys |= set(LABEL_KEYS) if label_key == "labels" else set()
        labels = next((batch[k] for k in ([label_key] if label_key else []) + list(LABEL_KEYS) if k in batch), None)
        kwargs = {k: v for k, v in batch.items() if k not in keys}
        return (), kwargs, labels
    if isinstance(batch, Tensor):
        return (batch,), {}, None
    if isinstance(batch, (tuple, list)) and batch:
        if len(batch) > 2 and _is_mask_of(batch[1], batch[0]):
            return (batch[0],), {"attention_mask": batch[1]}, batch[2] if isinstance(batch[2], Tensor) else None
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return (batch[0],), {}, labels
    raise TypeError(f"Cannot feed a batch of type {type(batch).__name__}; pass `forward_fn(module, batch)`.")


def sample_labels(lab: Any) -> Tensor | None:
    """A batch's labels as one class per sample: (B,) (or a scalar) as they are, a (B, 1) column (a
    dataset that yields each label as a 1-element tensor) as its (B,) values, one-hot (B, C) as its
    classes; None for others ((B, T) token targets of an LM, soft labels) and for no labels."""
    if lab is None:
        return None
    t = class_vector(torch.as_tensor(lab))
    return t.reshape(-1) if t.ndim <= 1 else None


def map_tensors(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in a (nested) dict / tuple / list batch; other leaves pass through."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


class NoLogitsError(ValueError):
    """The network's output has no ``logits`` or no ``hidden_states`` (a base model without a head).
    ``fields``: the names the output holds, when it is a mapping (a QA model's start / end logits)."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


def logits_and_hidden(net: nn.Module, batch: Any, label_key: str | None = "labels") -> tuple[Tensor, tuple[Tensor, ...]]:
    """Call the network on a batch with ``output_hidden_states=True``: (logits, hidden_states).

    Raises:
        NoLogitsError: the output has no ``logits`` or no ``hidden_states``.
    """
    if is_encoder_decoder(net):  # its logits come from the decoder, which needs targets; no one stack to pull back
        raise NoLogitsError(
            f"{type(net).__name__} is an encoder-decoder model: its logits need decoder inputs and come from the decoder, "
            "not from the encoder's hidden states; pass `run_fn(network, batch) -> (logits, decoder_hidden_states)`."
        )
    args, kwargs = split_batch(batch, label_key)[:2]
    if "attention_mask" not in kwargs:  # the pullback's position would be a padding token's
        _warn_unmasked(net, args, kwargs, "read as the sample's last token")
    args, kwargs = forward_call(net, batch, args, kwargs)
    blocks = [] if takes_hidden_states(net) else repeated_blocks(net)
    if blocks:  # a plain PyTorch network: its output is the logits, its blocks' outputs the hidden states
        with explained(net, batch), hook_modules(net, blocks, detach=False) as store:
            out = net(*args, **kwargs)
        return _checked_logits(net, output_logits(out), tuple(store[n][-1] for n in blocks))
    with explained(net, batch), dict_outputs(net):
        out = net(*args, **kwargs, output_hidden_states=True)
    return _checked_logits(net, output_logits(out), getattr(out, "hidden_states", None), out)


def _checked_logits(net: nn.Module, logits: Tensor | None, hidden: Any, out: Any = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(logits, hidden_states)``, or the NoLogitsError that names which is missing (and the output's
    fields, when it has some) and the fix."""
    if logits is None or hidden is None:
        what = " and ".join(n for n, v in (("`logits`", logits), ("`hidden_states`", hidden)) if v is None)
        fields = tuple(str(k) for k in out.keys()) if isinstance(out, Mapping) and logits is None else ()
        has = f" (its output holds {', '.join(fields)})" if fields else ""
        raise NoLogitsError(
            f"{type(net).__name__} returns no {what}{has} (a model without an output head has no logits to pull back); "
            "pass `run_fn(network, batch) -> (logits, hidden_states)`.",
            fields,
        )
    return logits, hidden


def unmasked_padding(net: nn.Module, ids: Any, reading: str = "pooled as if it were text") -> str | None:
    """The warning for (B, T) token ids that start or end in the model's pad token (``config.pad_token_id``,
    else its EOS token; two in a row when pad is EOS) in a batch without an ``attention_mask``: the padding
    would be ``reading`` (pooled as if it were text). None when nothing looks padded."""
    cfg = getattr(net, "config", None)
    eos = getattr(cfg, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    pad = getattr(cfg, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else eos  # GPT-2 style: the tokenizer pads with EOS, the config names none
    if not isinstance(pad, int) or not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.shape[1] < 3:
        return None
    run = 2 if pad == eos else 1
    if not bool(((ids[:, -run:] == pad).all(dim=1) | (ids[:, :run] == pad).all(dim=1)).any()):
        return None
    return (  # no counts in the text: Python shows one warning per text and place, not one per batch
        f"Probe sequences start or end with the pad token (id {pad}), but the batch has no "
        f"`attention_mask`: their padding is {reading}. Put the tokenizer's attention_mask in the probe batches."
    )


def _warn_unmasked(net: nn.Module, args: tuple, kwargs: dict, reading: str) -> None:
    """:func:`unmasked_padding` on a split batch's token ids (its ``input_ids``, else its first argument), as a warning."""
    note = unmasked_padding(net, kwargs.get("input_ids", args[0] if args else None), reading)
    if note:
        warnings.warn(note, stacklevel=3)


def float_dtype(net: nn.Module) -> torch.dtype | None:
    """The dtype of ``net``'s first floating-point parameter (what its layers compute in), or None."""
    return next((p.dtype for p in net.parameters() if p.is_floating_point()), None)


def model_inputs(batch: Any, device: torch.device | str, dtype: torch.dtype | None) -> Any:
    """``batch`` on ``device``, its floating-point *inputs* in ``dtype`` (a model kept in bfloat16 or
    float64, as Lightning's "bf16-true" / "64-true" precision does, fed a float32 probe: "mat1 and mat2
    must have the same dtype"); labels (a dict's label keys, a tuple's items after the first) keep theirs."""

    def move(t: Tensor, cast: bool) -> Tensor:
        t = t.to(device)
        return t.to(dtype) if cast and dtype is not None and t.is_floating_point() and t.dtype != dtype else t

    if isinstance(batch, Mapping):
        return {k: map_tensors(v, lambda t, c=k not in LABEL_KEYS: move(t, c)) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)) and batch:  # (inputs, labels, ...): the first item is the input
        return type(batch)(map_tensors(v, lambda t, c=i == 0: move(t, c)) for i, v in enumerate(batch))
    return map_tensors(batch, lambda t: move(t, True))


def _normalize(h: Tensor, how: str | None) -> Tensor:
    if how is None:
        return h
    if how == "layer_norm":
        return F.layer_norm(h.float(), h.shape[-1:])
    raise ValueError(f"Expected `normalize` to be None or 'layer_norm', but got {how!r}.")


def capture_representations(
    module: nn.Module,
    batches: Iterable[Any],
    *,
    layers: Sequence[str] | None = None,
    pooling: Pooling = "mean",
    normalize: Literal["layer_norm"] | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    model_attr: str | None = None,
    label_key: str | None = "labels",
    device: torch.device | str | None = None,
    autocast: Callable[[], Any] | None = None,
    feature_device: torch.device | str | None = "cpu",
) -> Representations:
    """Run the probe batches through the network (eval mode, inference mode) and pool every layer.

    Args:
        module: the LightningModule (or any ``nn.Module``).
        batches: probe batches (dicts, tensors or (inputs, labels) tuples).
        layers: glob patterns of submodule names to hook; None uses ``output_hidden_states``.
        pooling: token pooling (see :func:`pool`).
        normalize: ``"layer_norm"`` to LayerNorm each token's vector (no affine) before pooling.
        forward_fn: ``forward_fn(network, batch)`` to call the network yourself.
        model_attr: which submodule is the network (see :func:`resolve_network`).
        label_key: the labels' key in dict batches.
        device: where to run (default: the module's parameters' device).
        autocast: a context-manager factory for precision (e.g. ``trainer.precision_plugin.forward_context``).
        feature_device: where the pooled float32 features are kept (default the CPU); None keeps
            them on ``device`` (no host copy per batch and layer: the geometry then runs there).

    With ``output_hidden_states`` (no ``layers``, no ``forward_fn``), a Hugging Face model with a
    head (``GPT2LMHeadModel``, ``BertForSequenceClassification``, ...) is run without it, through
    its ``base_model``: the hidden states are the same, and no layer needs the head's output (for
    an LM head that is a (batch, tokens, vocabulary) logits tensor, the largest op of the forward).

    Returns:
        :class:`Representations` with float32 features on ``feature_device``. Train mode is restored afterwards.

    Raises:
        ValueError: a layer pattern matching nothing, a model without ``hidden_states``.
    """
    net = resolve_network(module, model_attr)
    if device is None:
        p = next(iter(module.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    hooked = match_modules(net, layers) if layers else None
    if hooked is None and forward_fn is None and not takes_hidden_states(net):
        hooked = repeated_blocks(net)  # a plain PyTorch network: its blocks
        if not hooked:
            raise LayerChoiceError(
                f"{type(net).__name__}.forward takes no `output_hidden_states` and the network has no repeated blocks "
                f"(children named 0, 1, 2, ...): pass `layers=[...]` (glob patterns of submodule names). Some that exist: {_layer_hint([n for n, _ in net.named_modules() if n])}"
            )
    runner = _headless(net) if hooked is None and forward_fn is None else net
    keep = device if feature_device is None else torch.device(feature_device)
    feats: list[list[Tensor]] = []
    labels: list[Tensor] = []
    lens: list[Tensor] = []
    sources: tuple[str, ...] = ()
    was_training = module.training
    module.eval()
    dtype = float_dtype(net)  # the probe's float inputs in it (under autocast too: a float32 model stays float32)
    try:
        with torch.inference_mode(), no_attention_fastpath(), dict_outputs(net):
            for batch in batches:
                batch = model_inputs(batch, device, dtype)
                args, kwargs, lab = split_batch(batch, label_key)
                mask = kwargs.get("attention_mask") if isinstance(kwargs, dict) else None
                args, kwargs = forward_call(net, batch, args, kwargs)
                ctx = autocast() if autocast is not None else _null()
                with ctx, explained(net, batch, fed=forward_fn is None):
                    if hooked is not None:
                        with hook_modules(net, hooked) as store:
                            forward_fn(net, batch) if forward_fn else net(*args, **kwargs)
                        states = [store[n][-1] for n in hooked]
                        sources = tuple(hooked)
                    else:
                        out = forward_fn(net, batch) if forward_fn else runner(*args, **kwargs, output_hidden_states=True)
                        states = getattr(out, "hidden_states", None)
                        if states is None and isinstance(out, Mapping):
                            states = out.get("hidden_states")
                        if states is None:
                            raise LayerChoiceError(
                                f"{type(net).__name__} returned no `hidden_states`; pass `layers=[...]` "
                                "(glob patterns of submodule names) to capture with hooks. Some that exist: "
                                + _layer_hint([n for n, _ in net.named_modules() if n])
                            )
                        sources = tuple(f"hidden_states[{i}]" for i in range(len(states)))
                states = [_channels_last(h) for h in states]
                if mask is not None and states and states[0].ndim == 3:
                    mask = state_mask(net, mask, states[0].shape[1])
                pooled = [pool(_normalize(h, normalize), mask, pooling).float().to(keep) for h in states]
                if pooling == "tokens" and mask is not None and mask.shape[:2] == pooled[0].shape[:2]:
                    pooled, mask = right_align(pooled, mask)  # per-prompt clouds are (lengths)-prefixes
                if not feats:
                    feats = [[] for _ in pooled]
                    if mask is None and pooling != "first":
                        _warn_unmasked(net, args, kwargs, "pooled as if it were text")
                for acc, p in zip(feats, pooled):
                    acc.append(p)
                if pooling == "tokens":
                    t = pooled[0].shape[1]
                    lens.append(mask.sum(dim=1).long().cpu() if mask is not None and mask.shape[:2] == pooled[0].shape[:2] else torch.full((pooled[0].shape[0],), t))
                lab_t = sample_labels(lab)
                if lab_t is not None:
                    labels.append(lab_t.cpu())
    finally:
        module.train(was_training)
    if pooling == "tokens":  # batches may have different token counts: right-pad to the longest
        width = max(f.shape[1] for f in feats[0])
        feats = [[torch.nn.functional.pad(f, (0, 0, 0, width - f.shape[1])) for f in layer] for layer in feats]
    features = tuple(torch.cat(f).clone() for f in feats)  # clone: leave inference mode
    lab_t = torch.cat(labels).clone() if labels else None  # may mismatch N: the caller checks
    return Representations(features=features, sources=sources, labels=lab_t, lengths=torch.cat(lens) if lens else None)


def right_align(tokens: Sequence[Tensor], mask: Tensor) -> tuple[list[Tensor], Tensor]:
    """Token tensors (each (B, T, ...)) with every row's real tokens moved to the front, in order, and
    the mask to match: left- or mixed-padded batches become right-padded ones, so that a prompt's
    tokens are its first ``mask.sum()`` positions. Right-padded batches come back as they are."""
    m = mask.to(torch.bool)
    if not bool((m[:, 1:] & ~m[:, :-1]).any()):  # no real token after a padding position: right-padded
        return list(tokens), mask
    order = torch.sort((~m).to(torch.int8), dim=1, stable=True).indices  # real positions first, in order
    out = []
    for t in tokens:
        idx = order.to(t.device).view(*order.shape, *([1] * (t.dim() - 2))).expand(*order.shape, *t.shape[2:])
        out.append(t.gather(1, idx))
    return out, mask.gather(1, order.to(mask.device))


def _headless(net: nn.Module) -> nn.Module:
    """The Hugging Face ``base_model`` of a model with a head (same hidden states, no head), else ``net``;
    for an encoder-decoder model (T5, BART, ...) its encoder (the decoder needs targets to run)."""
    if not _is_hf(net):
        return net
    if is_encoder_decoder(net) and callable(getattr(net, "get_encoder", None)):
        return _EncoderOnly(net.get_encoder())
    base = getattr(net, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not net else net


class _EncoderOnly(nn.Module):
    """An encoder-decoder model's encoder, called with the batch keys it accepts (no decoder inputs)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        sig = forward_signature(encoder)
        self._any = sig is None or sig.any_keyword
        self._names = set() if sig is None else set(sig.names)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._any:
            kwargs = {k: v for k, v in kwargs.items() if k in self._names}
        return self.encoder(*args, **kwargs)


@contextmanager
def _null() -> Iterator[None]:
    yield
