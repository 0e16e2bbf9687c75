"""Why a model did not run on a probe: the token-id checks behind a forward's opaque IndexError.

An embedding lookup fails deep inside a model with "index out of range in self" (CPU) or a device
assert (CUDA) when a probe was tokenized with another tokenizer, holds label values (-100), or is
a float tensor. :func:`token_id_problem` reads the probe's token ids against the model's input
embedding and says which of these it is, in one line; the capture and the pullback call it only
after a forward failed, so a model that remaps its ids is never second-guessed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["token_id_problem", "explain_forward_error", "batch_call_problem", "explained"]


def _input_embedding(net: nn.Module) -> nn.Embedding | None:
    """The token embedding: Hugging Face's ``get_input_embeddings()``, else the first ``nn.Embedding``."""
    get = getattr(net, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb
    return next((m for m in net.modules() if isinstance(m, nn.Embedding)), None)


def _token_ids(batch: Any) -> Tensor | None:
    """The batch's token ids: a dict's ``input_ids``, else the (first) tensor fed positionally."""
    if isinstance(batch, Mapping):
        ids = batch.get("input_ids")
    elif isinstance(batch, (tuple, list)) and batch:
        ids = batch[0]
    else:
        ids = batch
    return ids if isinstance(ids, Tensor) and ids.ndim >= 1 and ids.numel() else None


def token_id_problem(net: nn.Module, batch: Any) -> str | None:
    """One line naming what is wrong with ``batch``'s token ids for ``net``'s input embedding, or None."""
    emb = _input_embedding(net)
    ids = _token_ids(batch)
    if emb is None or ids is None:
        return None
    name, n = type(net).__name__, int(emb.num_embeddings)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        return (
            f"the token ids are {str(ids.dtype).removeprefix('torch.')} {tuple(ids.shape)}, but {name} starts with an "
            f"embedding of {n} tokens: pass integer token ids (the model tokenizer's input_ids, int64)."
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n:
        return (
            f"the token ids span [{lo}, {hi}], but {name}'s embedding has {n} rows (ids 0 to {n - 1}): "
            "tokenize the inputs with the model's own tokenizer (and keep label values such as -100 out of input_ids)."
        )
    return None


def explain_forward_error(net: nn.Module, batch: Any, err: BaseException) -> ValueError | None:
    """A one-line ValueError for a forward that failed on bad token ids (an embedding's index error), else None."""
    text = str(err).lower()
    if not isinstance(err, (IndexError, RuntimeError)) or not ("index" in text or "indices" in text):
        return None
    problem = token_id_problem(net, batch)
    return ValueError(problem[0].upper() + problem[1:]) if problem else None


def batch_call_problem(net: nn.Module, batch: Any, err: BaseException) -> str | None:
    """One line for a forward that failed because of how a dict batch was fed to it, else None: a
    one-argument ``forward(x)`` given the whole dict (no key names ``x``), or a key that is no
    parameter of the forward."""
    from .modules import LABEL_KEYS, forward_signature

    if not isinstance(batch, Mapping) or not isinstance(err, (TypeError, AttributeError)):
        return None
    text, name = str(err), type(net).__name__
    sig = forward_signature(net)
    keys = ", ".join(map(str, batch))
    if "unexpected keyword argument" in text:
        return (
            f"{name}.forward does not take the probe batch's keys ({keys}): {text.split(': ', 1)[-1] if ': ' in text else text}; "
            "give the batch the forward's parameter names, or pass `forward_fn=lambda net, batch: net(...)`."
        )
    if "dict" in text and sig is not None and not sig.any_keyword and len(sig.positional) >= 1:
        import inspect

        first = next(iter(inspect.signature(net.forward).parameters))
        inputs = [k for k in batch if k not in LABEL_KEYS]
        example = inputs[0] if inputs else "inputs"
        return (
            f"{name}.forward({first}) got the probe batch dict ({keys}) whole, as none of its keys is named {first!r} "
            f"({type(err).__name__}: {text}): name the input {first!r} in the batch, or pass "
            f"`forward_fn=lambda net, batch: net(batch[{example!r}])`."
        )
    return None


@contextmanager
def explained(net: nn.Module | None, batch: Any, *, fed: bool = True) -> Iterator[None]:
    """Around a forward of ``net`` on ``batch``: an embedding's opaque index error, and (``fed``: the batch
    was split into the call by us, not by a user's ``forward_fn``) a dict batch the forward cannot take,
    re-raised as one line (:func:`explain_forward_error`, :func:`batch_call_problem`); other errors (or no
    ``net``) pass as they are."""
    try:
        yield
    except (IndexError, RuntimeError) as err:
        better = explain_forward_error(net, batch, err) if net is not None else None
        if better is None:
            raise
        raise better from err
    except (TypeError, AttributeError) as err:
        problem = batch_call_problem(net, batch, err) if net is not None and fed else None
        if problem is None:
            raise
        raise ValueError(problem) from err
