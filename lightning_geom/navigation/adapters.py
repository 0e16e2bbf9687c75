"""How the explorer reaches a model's input-embedding space: embed a batch, run the rest, decode.

An :class:`Adapter` holds three functions; ``adapter_for(model)`` builds one for Hugging Face text
classifiers (any model taking ``inputs_embeds``), HF ViT image classifiers and the demo's image-GPT.
Any other module: build ``Adapter(embed=..., head=..., decoder=...)`` yourself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .decoders import Decoder, PatchDecoder, TokenDecoder

__all__ = ["Adapter", "adapter_for"]


@dataclass
class Adapter:
    """embed(batch) -> (B, T, d) explored embeddings; head(emb, batch) -> (B, m) logits; decoder."""

    embed: Callable[[Any], Tensor]
    head: Callable[[Tensor, Any], Tensor]
    decoder: Decoder | None = None


def adapter_for(model: nn.Module, tokenizer: Any = None) -> Adapter:
    """An adapter for a known model family.

    Raises:
        TypeError: a model this function does not know (the message says how to build an Adapter).
    """
    name = type(model).__name__
    if name == "ImageGPT":  # the demo: token embeddings of [start, p_0 .. p_62] -> next pixel
        return Adapter(
            embed=lambda b: model.tok(model.input_ids(b["pixels"] if isinstance(b, dict) else b)),
            head=lambda e, b: model.forward_embeddings(e).logits[:, -1],
            decoder=TokenDecoder(model.tok.weight),
        )
    if hasattr(model, "vit") and hasattr(model, "classifier"):  # HF ViTForImageClassification
        vit = model.vit
        proj = vit.embeddings.patch_embeddings.projection
        size = vit.config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return Adapter(
            embed=lambda b: vit.embeddings(b["pixel_values"] if isinstance(b, dict) else b),
            head=lambda e, b: model.classifier(vit.layernorm(vit.encoder(e)[0])[:, 0]),
            decoder=PatchDecoder(proj.weight, proj.bias, vit.embeddings.position_embeddings[0], size),
        )
    if hasattr(model, "get_input_embeddings") and model.get_input_embeddings() is not None:  # HF text models
        emb = model.get_input_embeddings()

        def head(e: Tensor, b: Any) -> Tensor:
            mask = b.get("attention_mask") if isinstance(b, dict) else None
            return model(inputs_embeds=e, attention_mask=mask).logits

        return Adapter(
            embed=lambda b: emb(b["input_ids"] if isinstance(b, dict) else b),
            head=head,
            decoder=TokenDecoder(emb.weight, tokenizer),
        )
    raise TypeError(
        f"No adapter for {name}: build `Adapter(embed=batch -> (B, T, d), head=(emb, batch) -> (B, m) logits, decoder=...)`."
    )
