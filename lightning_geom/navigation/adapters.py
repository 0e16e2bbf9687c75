"""How the explorer reaches a model's input-embedding space: embed a batch, run the rest, decode.

An :class:`Adapter` holds three functions; ``adapter_for(model)`` builds one for Hugging Face text
classifiers (any model taking ``inputs_embeds``), HF causal LMs (the next-token logits at each
prompt's last real position), HF ViT (and other patch-token) image classifiers, the demo's image-GPT,
and plain PyTorch networks of float inputs (tabular features, images, signals: the walk runs in the
input space itself, no decoder). Any other module: build ``Adapter(embed=..., head=..., decoder=...)``
yourself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..modules import LABEL_KEYS, output_logits
from .decoders import Decoder, InputDecoder, PatchDecoder, TokenDecoder

__all__ = ["Adapter", "adapter_for"]


@dataclass
class Adapter:
    """embed(batch) -> (B, T, d) explored embeddings; head(emb, batch) -> (B, m) logits; decoder;
    class_names(ids) -> names of classes (an LM's next tokens, a classifier's ``id2label``) or None."""

    embed: Callable[[Any], Tensor]
    head: Callable[[Tensor, Any], Tensor]
    decoder: Decoder | None = None
    class_names: Callable[[Sequence[int]], list[str]] | None = None


def _label_names(model: nn.Module) -> Callable[[Sequence[int]], list[str]] | None:
    """A classifier's ``config.id2label`` as a class-name function (None without one)."""
    table = getattr(getattr(model, "config", None), "id2label", None)
    if not isinstance(table, dict) or not table:
        return None
    return lambda ids: [str(table.get(int(i), table.get(str(int(i)), int(i)))) for i in ids]


def _token_embeddings(model: nn.Module) -> nn.Embedding | None:
    """The model's token embedding table (``get_input_embeddings()``), or None: no such method, not
    implemented (convolutional image models), or not a token table (a vision model's patch convolution)."""
    try:
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        return None
    return emb if isinstance(emb, nn.Embedding) else None


def _vit_blocks(vit: nn.Module, e: Tensor) -> Tensor:
    """A HF ViT's transformer blocks on patch embeddings ``e``: ``vit.encoder`` (transformers 4) or
    ``vit.layers`` (transformers 5.2x, no encoder module), each block's output its first item if a tuple."""
    encoder = getattr(vit, "encoder", None)
    if encoder is not None:
        out = encoder(e)
        return out[0] if isinstance(out, (tuple, list)) else getattr(out, "last_hidden_state", out)
    h = e
    for block in vit.layers:
        out = block(h)
        h = out[0] if isinstance(out, (tuple, list)) else out
    return h


def _image_classifier(model: nn.Module) -> Adapter | None:
    """An HF ``...ForImageClassification`` whose base model has an ``embeddings`` module (patch tokens,
    (B, T, d)): explored there; the head is the whole model with that module's output replaced by the
    explored embeddings (a forward hook), so every architecture's own blocks, norms and pooling run.
    A patch decoder when the sequence is the patches after at most one CLS token and absolute position
    embeddings (the image back from the embeddings); else no decoder. None for other models."""
    import inspect

    if not type(model).__name__.endswith("ForImageClassification"):
        return None
    base = getattr(model, "base_model", None)
    embeddings = getattr(base, "embeddings", None)
    proj = getattr(getattr(embeddings, "patch_embeddings", None), "projection", None)
    if not isinstance(proj, nn.Conv2d) or "pixel_values" not in inspect.signature(model.forward).parameters:
        return None  # no patch tokens (a convolutional stem: ConvNeXt, ResNet)

    def pixels(b: Any) -> Tensor:
        return b["pixel_values"] if isinstance(b, Mapping) else b

    def embed(b: Any) -> Tensor:
        out = embeddings(pixels(b))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, Tensor) or out.ndim != 3:
            raise TypeError(
                f"No adapter for {type(model).__name__}: its embeddings are {tuple(getattr(out, 'shape', ()))} feature maps, "
                "not (B, tokens, d); build `Adapter(embed=batch -> (B, T, d), head=(emb, batch) -> (B, m) logits, decoder=...)`."
            )
        return out

    def head(e: Tensor, b: Any) -> Tensor:
        def swap(module: nn.Module, inputs: Any, out: Any) -> Any:
            return (e, *out[1:]) if isinstance(out, tuple) else e

        hook = embeddings.register_forward_hook(swap)
        try:
            return model(pixel_values=pixels(b)).logits
        finally:
            hook.remove()

    decoder = None
    position = getattr(embeddings, "position_embeddings", None)
    size = getattr(model.config, "image_size", None)
    if isinstance(position, Tensor) and size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        patches = (size[0] // proj.stride[0]) * (size[1] // proj.stride[1])
        lead = position.shape[-2] - patches
        if 0 <= lead <= 4:  # CLS (+ DeiT's distillation token) before the patches
            decoder = PatchDecoder(proj.weight, proj.bias, position.reshape(-1, position.shape[-1]), size, lead=lead)
    return Adapter(embed=embed, head=head, decoder=decoder, class_names=_label_names(model))


def _input_tensor(batch: Any, name: str) -> Tensor:
    """The float input of a batch for :func:`_feature_input`: a tensor, a tuple's first item, or a dict's
    one floating-point tensor (labels left out)."""
    if isinstance(batch, Tensor):
        x = batch
    elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        x = batch[0]
    elif isinstance(batch, Mapping):
        floats = [v for k, v in batch.items() if k not in LABEL_KEYS and isinstance(v, Tensor) and v.is_floating_point()]
        if len(floats) != 1:
            raise TypeError(
                f"{name}: the explorer walks one float input, but the batch dict has {len(floats)} ({', '.join(map(str, batch))}): "
                "pass the input tensor (or an (inputs, labels) tuple), or build an `Adapter`."
            )
        x = floats[0]
    else:
        raise TypeError(f"{name}: cannot find the input in a batch of type {type(batch).__name__}: pass a tensor or an (inputs, labels) tuple.")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} got {str(x.dtype).removeprefix('torch.')} inputs, but the explorer walks a continuous input space: "
            "token ids need the model's token embedding (a Hugging Face model, or an `Adapter` whose embed looks them up)."
        )
    return x


def _logits(out: Any, name: str) -> Tensor:
    """A forward's logits (:func:`~lightning_geom.modules.output_logits`), or a one-line TypeError."""
    logits = output_logits(out)
    if logits is None:
        raise TypeError(f"{name}'s forward returned {type(out).__name__}, not logits: build an `Adapter` whose head returns (B, classes).")
    return logits


def _feature_input(model: nn.Module) -> Adapter:
    """A plain network whose forward takes a float tensor (features, images, signals): the walk runs in
    its input space itself, each sample's input flattened into one (1, n) "token" row (the metric
    g = J^T G J over all n input coordinates) and reshaped back for the forward. The walked inputs are
    the result: :class:`~.decoders.InputDecoder` records each in its sample's shape (``decoded``)."""
    name = type(model).__name__
    decoder = InputDecoder()

    def embed(b: Any) -> Tensor:
        x = _input_tensor(b, name)
        decoder.shape = tuple(x.shape[1:])
        return x.reshape(x.shape[0], 1, -1)

    def head(e: Tensor, b: Any) -> Tensor:
        x = _input_tensor(b, name)
        return _logits(model(e.reshape(x.shape).to(x.dtype)), name)

    return Adapter(embed=embed, head=head, decoder=decoder, class_names=None)


def _ids_of(batch: Any) -> Tensor | None:
    """A batch's integer token ids: an integer tensor, a tuple's first item, or a dict's ``input_ids``; else None."""
    x = batch
    if isinstance(batch, (tuple, list)) and batch:
        x = batch[0]
    elif isinstance(batch, Mapping):
        x = batch.get("input_ids")
    return x if isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex() and x.ndim == 2 else None


def _call(model: nn.Module, batch: Any) -> Any:
    """``model`` on a batch as the capture calls it (a tensor, an (inputs, labels) tuple, a dict of inputs)."""
    from ..capture import split_batch
    from ..modules import forward_call

    if isinstance(batch, Tensor):
        return model(batch)
    args, kwargs, _ = split_batch(batch)
    args, kwargs = forward_call(model, batch, args, kwargs)
    return model(*args, **kwargs)


def _token_input(model: nn.Module, tokenizer: Any = None) -> Adapter | None:
    """A plain network of token ids (a nanoGPT-style LM, a classifier with an ``nn.Embedding``): explored at
    the output of the embedding table its ids go through (found by a forward with hooks on every
    ``nn.Embedding``: the one whose input is the batch's ids); the head is the whole network with that
    table's output replaced (a forward hook), the class an LM's next token after the last real position
    or a classifier's logits; decoded to the nearest rows of the table. None without an ``nn.Embedding``."""
    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if not tables:
        return None
    from ..capture import take_last

    name = type(model).__name__
    found: dict[str, Any] = {}
    decoder = _LazyTokenDecoder(tokenizer)

    def embed(b: Any) -> Tensor:
        ids = _ids_of(b)
        seen: list[tuple[nn.Embedding, Tensor]] = []
        def takes_ids(i: Any) -> bool:
            return bool(i) and isinstance(i[0], Tensor) and (i[0] is ids or (i[0].shape == ids.shape and torch.equal(i[0].cpu(), ids.cpu())))

        hooks = [t.register_forward_hook(lambda m, i, o: seen.append((m, o)) if takes_ids(i) else None) for t in tables]
        try:
            with torch.no_grad():
                _logits(_call(model, b), name)
        finally:
            for h in hooks:
                h.remove()
        if not seen:
            raise TypeError(
                f"{name}: none of its nn.Embedding tables takes the batch's token ids as they are: build an `Adapter` "
                "(embed = the token embeddings, head = the network from them)."
            )
        found["table"] = seen[0][0]
        decoder.table = seen[0][0]
        return seen[0][1].detach()

    def head(e: Tensor, b: Any) -> Tensor:
        table = found["table"]
        hook = table.register_forward_hook(lambda m, i, o: e)
        try:
            logits = _logits(_call(model, b), name)
        finally:
            hook.remove()
        if logits.ndim == 3:  # (B, T, V): an LM's next token after each prompt's last real position
            return take_last(logits, b.get("attention_mask") if isinstance(b, Mapping) else None)
        return logits

    names = None
    if tokenizer is not None:  # an LM's classes are tokens: named when the head is as wide as the vocabulary
        width = len(tokenizer)

        def names(ids: Sequence[int]) -> list[str]:
            return [tokenizer.convert_ids_to_tokens(int(i)) if int(i) < width else str(int(i)) for i in ids]

    return Adapter(embed=embed, head=head, decoder=decoder, class_names=names)


class _LazyTokenDecoder:
    """:class:`~.decoders.TokenDecoder` of the table a plain token network's ids go through, known after
    the first ``embed``."""

    kind = "tokens"

    def __init__(self, tokenizer: Any = None) -> None:
        self.table: nn.Embedding | None = None
        self.tokenizer = tokenizer

    def decode(self, emb: Tensor) -> list[Any]:
        return TokenDecoder(self.table.weight, self.tokenizer).decode(emb) if self.table is not None else [None] * emb.shape[0]


def _plain_network(model: nn.Module, tokenizer: Any = None) -> Adapter:
    """A plain PyTorch network (no Hugging Face config): token ids go through :func:`_token_input`, float
    inputs through :func:`_feature_input`, decided per batch by the input's dtype."""
    feature, token = _feature_input(model), _token_input(model, tokenizer)
    current: dict[str, Adapter] = {"a": feature}

    def embed(b: Any) -> Tensor:
        current["a"] = token if token is not None and _ids_of(b) is not None else feature
        return current["a"].embed(b)

    class _Decoder:
        @property
        def kind(self) -> str | None:
            return getattr(current["a"].decoder, "kind", None)

        def decode(self, emb: Tensor) -> list[Any]:
            return current["a"].decoder.decode(emb)

    def names(ids: Sequence[int]) -> list[str]:
        pick = current["a"].class_names
        return pick(ids) if pick is not None else [str(int(i)) for i in ids]

    named = token is not None and token.class_names is not None
    return Adapter(embed=embed, head=lambda e, b: current["a"].head(e, b), decoder=_Decoder(), class_names=names if named else None)


def adapter_for(model: nn.Module, tokenizer: Any = None) -> Adapter:
    """An adapter for a known model family.

    Raises:
        TypeError: a model this function does not know (the message says how to build an Adapter).
    """
    name = type(model).__name__
    if name == "ImageGPT":  # the demo: token embeddings of [start, p_0 .. p_62] -> next pixel
        return Adapter(
            embed=lambda b: model.tok(model.input_ids(b["pixels"] if isinstance(b, Mapping) else b)),
            head=lambda e, b: model.forward_embeddings(e).logits[:, -1],
            decoder=TokenDecoder(model.tok.weight),
        )
    if hasattr(model, "vit") and hasattr(model, "classifier"):  # HF ViTForImageClassification
        vit = model.vit
        proj = vit.embeddings.patch_embeddings.projection
        size = vit.config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return Adapter(
            embed=lambda b: vit.embeddings(b["pixel_values"] if isinstance(b, Mapping) else b),
            head=lambda e, b: model.classifier(vit.layernorm(_vit_blocks(vit, e))[:, 0]),
            decoder=PatchDecoder(proj.weight, proj.bias, vit.embeddings.position_embeddings[0], size),
            class_names=_label_names(model),
        )
    generic = _image_classifier(model)
    if generic is not None:  # other HF image classifiers (DeiT, BEiT, DINOv2, ...)
        return generic
    emb = _token_embeddings(model)
    if emb is not None:  # HF text models
        from ..capture import NoLogitsError, is_encoder_decoder, take_last
        from ..tokens import is_causal_lm

        if is_encoder_decoder(model):
            raise TypeError(
                f"{name} is an encoder-decoder model: its logits need decoder inputs. Navigate a classifier "
                "(...ForSequenceClassification), a causal LM (...ForCausalLM) or build an Adapter for its encoder."
            )
        causal = is_causal_lm(model)

        def head(e: Tensor, b: Any) -> Tensor:
            mask = b.get("attention_mask") if isinstance(b, Mapping) else None
            logits = getattr(model(inputs_embeds=e, attention_mask=mask), "logits", None)
            if logits is None:
                raise NoLogitsError(
                    f"{name} has no output head (no logits): navigate needs a classifier (...ForSequenceClassification) "
                    "or a causal LM (...ForCausalLM)."
                )
            if causal and logits.ndim == 3:  # (B, T, V): the next token after each prompt's last real position
                return take_last(logits, mask)
            return logits

        if causal:  # the classes are next tokens
            names = None if tokenizer is None else (lambda ids: tokenizer.convert_ids_to_tokens([int(i) for i in ids]))
        else:
            names = _label_names(model)
        return Adapter(
            embed=lambda b: emb(b["input_ids"] if isinstance(b, Mapping) else b),
            head=head,
            decoder=TokenDecoder(emb.weight, tokenizer),
            class_names=names,
        )
    from ..capture import resolve_network

    inner = resolve_network(model)  # a LightningModule around one HF model: that model's adapter
    if inner is not model:
        return adapter_for(inner, tokenizer)
    if not hasattr(model, "config") and any(True for _ in model.parameters()):  # a plain network: float inputs or token ids
        return _plain_network(model, tokenizer)
    raise TypeError(
        f"No adapter for {name}: build `Adapter(embed=batch -> (B, T, d), head=(emb, batch) -> (B, m) logits, decoder=...)`."
    )
