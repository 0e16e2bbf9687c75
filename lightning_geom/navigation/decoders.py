"""Decoders: input embeddings back into something a person reads (tokens, image patches, the inputs).

A decoder is any object with ``decode(emb: Tensor (B, T, d)) -> list`` (one item per sample) and
``kind`` (``"tokens"``, ``"image"`` or ``"input"``): the :class:`Decoder` protocol. Other modalities plug in by
implementing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Decoder", "TokenDecoder", "MLMDecoder", "PatchDecoder", "InputDecoder"]


def _tokens(ids: Tensor, tokenizer: Any) -> list[Any]:
    """(B, T) ids as lists of ids, or of token strings when there is a tokenizer."""
    ids = ids.cpu()
    if tokenizer is None:
        return ids.tolist()
    return [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]


@runtime_checkable
class Decoder(Protocol):
    kind: str

    def decode(self, emb: Tensor) -> list[Any]:
        """One decoded item per sample of ``emb`` (B, T, d)."""
        ...


class TokenDecoder:
    """Nearest row of the input embedding matrix, by Euclidean distance, for every position.

    Args:
        weight: (V, d) input embedding matrix (``model.get_input_embeddings().weight``).
        tokenizer: optional; turns ids into strings (``convert_ids_to_tokens``).
        offset: (T, d) or (B, T, d) added to the token embedding inside the model's input space
            (e.g. position embeddings) and removed before the search; None when the explored space
            is the token embeddings themselves.

    Example:
        >>> w = torch.eye(3)
        >>> TokenDecoder(w).decode(torch.tensor([[[0.9, 0.1, 0.0], [0.0, 0.2, 0.7]]]))
        [[0, 2]]
    """

    kind = "tokens"

    def __init__(self, weight: Tensor, tokenizer: Any = None, offset: Tensor | None = None) -> None:
        self.weight = weight.detach()
        self.tokenizer = tokenizer
        self.offset = None if offset is None else offset.detach()
        self._sq = (self.weight.double() ** 2).sum(dim=1)  # (V,)

    def ids(self, emb: Tensor) -> Tensor:
        """(B, T) ids of the nearest embedding rows."""
        e = emb.detach().double()
        if self.offset is not None:
            e = e - self.offset.double().to(e.device)
        w = self.weight.double().to(e.device)
        d2 = self._sq.to(e.device) - 2.0 * e @ w.T  # |e - w|^2 - |e|^2: same argmin
        return d2.argmin(dim=-1)

    def decode(self, emb: Tensor) -> list[Any]:
        return _tokens(self.ids(emb), self.tokenizer)


class MLMDecoder:
    """Tokens read through a masked-language-model head (the authors' choice for BERT): the argmax of
    ``mlm(inputs_embeds=emb).logits`` at every position.

    Args:
        mlm: a model with a masked-LM head that accepts ``inputs_embeds`` (e.g. ``BertForMaskedLM``
            sharing the explored model's embeddings).
        tokenizer: optional; turns ids into strings.
    """

    kind = "tokens"

    def __init__(self, mlm: Any, tokenizer: Any = None) -> None:
        self.mlm = mlm
        self.tokenizer = tokenizer

    def ids(self, emb: Tensor) -> Tensor:
        with torch.no_grad():
            return self.mlm(inputs_embeds=emb.to(next(self.mlm.parameters()).dtype)).logits.argmax(dim=-1)

    def decode(self, emb: Tensor) -> list[Any]:
        return _tokens(self.ids(emb), self.tokenizer)


class PatchDecoder:
    """ViT patch embeddings back into an image: remove the position embeddings, drop the CLS token,
    apply the pseudo-inverse of the patch projection, fold the patches back.

    Args:
        proj_weight: (d, C, p, p) patch projection (a strided Conv2d's weight).
        proj_bias: (d,) its bias.
        position: (1 + P, d) or (P, d) position embeddings added after the projection.
        image_size: (H, W).
        cls_token: whether the sequence starts with a CLS token.
        lead: how many tokens precede the patches (default: 1 with ``cls_token``, else 0; DeiT: 2,
            its CLS and distillation tokens).

    The pseudo-inverse recovers the patch exactly when the projection is injective (C p^2 <= d).
    """

    kind = "image"

    def __init__(
        self, proj_weight: Tensor, proj_bias: Tensor | None, position: Tensor, image_size: Sequence[int], *, cls_token: bool = True,
        lead: int | None = None,
    ) -> None:
        d, c, p, _ = proj_weight.shape
        self.c, self.p = c, p
        self.h, self.w = int(image_size[0]), int(image_size[1])
        mat = proj_weight.detach().double().reshape(d, c * p * p)  # (d, C p p)
        self.pinv = torch.linalg.pinv(mat)  # (C p p, d)
        self.bias = torch.zeros(d, dtype=torch.float64) if proj_bias is None else proj_bias.detach().double()
        self.position = position.detach().double().reshape(-1, d)
        self.lead = (1 if cls_token else 0) if lead is None else int(lead)

    def decode(self, emb: Tensor) -> list[Tensor]:
        """One (C, H, W) float image per sample."""
        e = emb.detach().double().cpu()
        e = e - self.position[: e.shape[1]]
        e = e[:, self.lead :]
        patches = (e - self.bias) @ self.pinv.T  # (B, P, C p p)
        b, n, _ = patches.shape
        gh, gw = self.h // self.p, self.w // self.p
        img = patches.reshape(b, gh, gw, self.c, self.p, self.p).permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
        return list(img.reshape(b, self.c, self.h, self.w).float())


class InputDecoder:
    """The walked point is the model's input itself (a network of float inputs: features, images,
    signals, walked in its input space): each sample's row back in the input's own shape.

    ``shape``: one sample's input shape; an adapter that learns it from the batch sets it before the
    walk decodes (None: the flat row).

    Example:
        >>> InputDecoder((2, 2)).decode(torch.arange(8.0).view(2, 1, 4))[1]
        tensor([[4., 5.],
                [6., 7.]])
    """

    kind = "input"

    def __init__(self, shape: Sequence[int] | None = None) -> None:
        self.shape = None if shape is None else tuple(shape)

    def decode(self, emb: Tensor) -> list[Tensor]:
        flat = emb.detach().reshape(emb.shape[0], -1).float().cpu()
        return [row.reshape(self.shape) if self.shape is not None else row for row in flat]
