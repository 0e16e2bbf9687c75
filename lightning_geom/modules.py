"""Which submodules of a model are its layers: the network inside a LightningModule, glob patterns over
submodule names, a plain network's repeated blocks, and the forward hooks that read them.

Framework glue below :mod:`.capture` (which reads representations through these) and above the
geometry core; nothing here runs a forward pass.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "hook_modules",
    "LayerChoiceError",
    "is_encoder_decoder",
    "ForwardSignature",
    "forward_call",
    "forward_signature",
    "layer_patterns",
    "match_modules",
    "no_attention_fastpath",
    "dict_outputs",
    "repeated_blocks",
    "resolve_network",
    "restore_output_recording",
    "takes_hidden_states",
    "unwrap",
]


def _first_tensor(out: Any) -> Tensor:
    """The hidden state in a module's output: the tensor itself, or the first tensor of a tuple / ModelOutput
    (a nested tensor comes back padded with zeros)."""
    if isinstance(out, Tensor):
        return out.to_padded_tensor(0.0) if out.is_nested else out
    if isinstance(out, Mapping):
        out = tuple(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"Cannot find a tensor in a module output of type {type(out).__name__}.")


def _glob(pattern: str) -> re.Pattern:
    """``*`` matches within one dotted name part, ``**`` across parts, ``?`` one character."""
    out = []
    for tok in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^.]*", "?": "[^.]"}.get(tok, re.escape(tok)))
    return re.compile("".join(out) + r"\Z")


def layer_patterns(layers: str | Sequence[str] | None) -> list[str] | None:
    """Layer glob patterns as a list: one pattern may come as a plain string; None / empty: None."""
    if isinstance(layers, str):
        return [layers] if layers else None
    if layers is None:
        return None
    if not isinstance(layers, Sequence) or not all(isinstance(p, str) for p in layers):
        raise TypeError(
            f"Expected `layers` to be None, a glob pattern or a list of glob patterns of submodule names "
            f"(e.g. ['blocks.*'] or 'encoder.layer.*'), but got {layers!r}."
        )
    return list(layers) or None


def is_encoder_decoder(net: nn.Module) -> bool:
    """A Hugging Face encoder-decoder model (T5, BART, ...) that holds its decoder: the decoder needs
    targets to run. A head on the encoder alone (``WhisperForAudioClassification``: its config says
    encoder-decoder, it has no decoder) is not one."""
    if not getattr(getattr(net, "config", None), "is_encoder_decoder", False):
        return False
    return any(name.rpartition(".")[2] == "decoder" for name, _ in net.named_modules())


def match_modules(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the submodules matching any glob pattern, in the model's (depth) order.

    Names are relative to the network (see :func:`resolve_network`); ``*`` stays within one dotted
    part (``transformer.h.*`` is the blocks, not their children), ``**`` crosses parts.

    Raises:
        ValueError: a pattern matches nothing (the message lists module names that exist).
    """
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for pat in layer_patterns(patterns) or []:
        rx = _glob(pat)
        hits = [n for n in names if rx.match(n)]
        if not hits:
            raise LayerChoiceError(f"Layer pattern {pat!r} matches no submodule. Some that exist: {_layer_hint(names)}")
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


LABEL_KEYS = ("labels", "label", "targets", "target", "y")  # batch keys read as a sample's labels (split_batch)


def output_logits(out: Any) -> Tensor | None:
    """The logits in a forward's output: the tensor itself, ``.logits`` (Hugging Face outputs; else
    ``.prediction_logits``), a dict's ``"logits"``, or a tuple's first tensor (``(logits, aux_loss)``);
    None when there is none."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None:  # a head that names them otherwise (PatchTST, BertForPreTraining's MLM head)
        logits = getattr(out, "prediction_logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        logits = out[0]
    return logits if isinstance(logits, Tensor) else None


@dataclass(frozen=True)
class ForwardSignature:
    """What a module's ``forward`` takes: its parameter names, whether it takes ``**kwargs``, and its
    positional parameters (with whether each is required)."""

    names: frozenset[str]
    any_keyword: bool
    positional: tuple[bool, ...]  # one per positional parameter: required (no default)


def forward_signature(module: nn.Module) -> ForwardSignature | None:
    """:class:`ForwardSignature` of ``module.forward``; None when it cannot be read (a C extension, say)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return ForwardSignature(
        names=frozenset(p.name for p in params),
        any_keyword=any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params),
        positional=tuple(p.default is inspect.Parameter.empty for p in params if p.kind in kinds),
    )


def forward_call(net: nn.Module, batch: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The (args, kwargs) to call ``net`` with: as :func:`~.capture.split_batch` split the batch, unless
    ``net.forward`` does not take them so. A dict batch whose keys name none of the parameters of a
    one-argument forward is that argument (a ``forward(batch)`` that reads the dict); the
    ``attention_mask`` of an (ids, mask, labels) tuple goes second to a forward without such a keyword
    (``forward(x, mask)``), or is left out of a one-argument forward (the capture still pools with it).
    Keys a forward without ``**kwargs`` does not take (a sample index, an id column) are left out
    when some key names one of its parameters (as Hugging Face's Trainer drops unused columns).
    """
    sig = forward_signature(net) if kwargs else None
    if sig is None or sig.any_keyword:
        return args, kwargs
    if args:  # (ids, mask, labels) tuples: a forward without an `attention_mask` keyword takes it second, if at all
        if "attention_mask" not in kwargs or "attention_mask" in sig.names:
            return args, kwargs
        rest = {k: v for k, v in kwargs.items() if k != "attention_mask"}
        return ((*args, kwargs["attention_mask"]) if len(sig.positional) > len(args) else args), rest
    if isinstance(batch, Mapping) and not set(kwargs) & sig.names and sig.positional and sum(sig.positional) <= 1:
        return (batch,), {}
    if set(kwargs) & sig.names and set(kwargs) - sig.names:  # extra columns (an index, an id): not inputs of this forward
        return args, {k: v for k, v in kwargs.items() if k in sig.names}
    return args, kwargs


def takes_hidden_states(net: nn.Module) -> bool:
    """Whether ``net``'s forward can return ``hidden_states``: a Hugging Face model, or a forward with an
    ``output_hidden_states`` parameter (or ``**kwargs``, which may pass it on to a model inside)."""
    if _is_hf(net):
        return True
    sig = forward_signature(net)
    return sig is None or sig.any_keyword or "output_hidden_states" in sig.names


def repeated_blocks(net: nn.Module) -> list[str]:
    """The family of sibling submodules named 0, 1, 2, ... that holds the most parameters (a plain PyTorch
    transformer's blocks, e.g. ``blocks.0 .. blocks.11``, not the heads inside one of them), in depth
    order; the first such family on a tie; [] when there is none of two or more."""
    families: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, mod in net.named_modules():
        head, _, last = name.rpartition(".")
        if last.isdigit():
            families.setdefault(head, []).append((name, mod))

    def weight(members: list[tuple[str, nn.Module]]) -> tuple[int, int]:
        return sum(p.numel() for _, m in members for p in m.parameters()), len(members)

    best = max((f for f in families.values() if len(f) >= 2), key=weight, default=[])  # max keeps the first of equals
    return [name for name, _ in best]


class LayerChoiceError(ValueError):
    """No layers to capture: a pattern that matches nothing, or a model with neither hidden states nor blocks.

    A fault of the model / ``layers=`` choice, not of the data: the probe passes it on as it is.
    """


def _layer_hint(names: Sequence[str]) -> str:
    """What to match instead: the patterns of the repeated blocks (``encoder.layer.*``: 12 modules) and the
    top-level submodules, whole names only."""
    blocks: dict[str, int] = {}
    for n in names:
        head, _, last = n.rpartition(".")
        if last.isdigit():
            key = f"{head}.*" if head else "*"
            blocks[key] = blocks.get(key, 0) + 1
    top = [n for n in names if "." not in n]
    parts = []
    blocks = {p: c for p, c in blocks.items() if c > 1}  # one numbered child is not a stack of blocks
    if blocks:
        ranked = sorted(blocks.items(), key=lambda kv: -kv[1])[:4]
        parts.append("the repeated blocks " + ", ".join(f"{p!r} ({c} modules)" for p, c in ranked))
    if top:
        parts.append(f"the top-level modules {', '.join(top[:12])}{', ...' if len(top) > 12 else ''}")
    return ("; ".join(parts) or "none (the model has no submodules)") + "."


@contextmanager
def no_attention_fastpath() -> Iterator[None]:
    """PyTorch's own attention modules without their inference fast path, for the duration.

    Without gradients ``nn.TransformerEncoder`` given a ``src_key_padding_mask`` turns its input into
    a nested tensor: each block's output is then a nested tensor (no positions a hook can pool), and
    the fused kernels differ from the training path's. Off, every block computes as in training (the
    pullback's path too). Process-wide flag, restored on exit; Hugging Face models never use it.
    """
    mha = getattr(torch.backends, "mha", None)
    get, put = getattr(mha, "get_fastpath_enabled", None), getattr(mha, "set_fastpath_enabled", None)
    if get is None or put is None:
        yield
        return
    was = get()
    put(False)
    try:
        yield
    finally:
        put(was)


@contextmanager
def dict_outputs(net: nn.Module | None) -> Iterator[None]:
    """Hugging Face models inside ``net`` return their output dataclass (``.logits``, ``.hidden_states``)
    for the duration, even when their config says ``return_dict=False`` (set for TorchScript / ONNX
    export, or by ``torchscript=True``): such a model returns a plain tuple, whose items cannot be
    told apart by name. Every distinct config found is set back on exit."""
    configs = {}
    for mod in net.modules() if isinstance(net, nn.Module) else ():
        cfg = getattr(mod, "config", None)
        if cfg is not None and getattr(cfg, "return_dict", True) is False:
            configs[id(cfg)] = cfg
    for cfg in configs.values():
        cfg.return_dict = True
    try:
        yield
    finally:
        for cfg in configs.values():
            cfg.return_dict = False


@contextmanager
def hook_modules(model: nn.Module, names: Sequence[str], *, detach: bool = True) -> Iterator[dict[str, list[Tensor]]]:
    """Forward hooks on the named submodules; yields ``{name: [output per call]}``, detached unless
    ``detach=False`` (the pullback differentiates the logits with respect to them).

    Hooks are removed in ``finally``, whatever happens inside the block.
    """
    modules = dict(model.named_modules())
    store: dict[str, list[Tensor]] = {n: [] for n in names}
    handles = []

    def keep(out: Any) -> Tensor:
        t = _first_tensor(out)
        return t.detach() if detach else t

    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(lambda _m, _i, out, n=n: store[n].append(keep(out))))
        yield store
    finally:
        for h in handles:
            h.remove()


def resolve_network(module: nn.Module, model_attr: str | None = None) -> nn.Module:
    """The network to probe inside a LightningModule.

    ``model_attr`` names it (dotted path; ``""`` is the module itself); a Hugging Face model is its
    own network; otherwise, if the module has exactly one child that is a
    Hugging Face ``PreTrainedModel``, that one; otherwise the module itself.

    The network's Hugging Face models are made ready to return their hidden states
    (:func:`restore_output_recording`).

    Raises:
        AttributeError: ``model_attr`` does not exist.
    """
    if model_attr is not None:  # "" is the module itself
        net: Any = module
        for part in (p for p in model_attr.split(".") if p):
            if not hasattr(net, part):
                raise AttributeError(f"`model_attr={model_attr!r}`: {type(net).__name__} has no attribute {part!r}.")
            net = getattr(net, part)
        net = unwrap(net)
    else:
        module = unwrap(module)
        hf = [unwrap(c) for c in module.children() if _is_hf(unwrap(c))]
        net = module if _is_hf(module) or len(hf) != 1 else hf[0]  # an HF model itself (heads included), its one HF child, or itself
    restore_output_recording(net)
    return net


def restore_output_recording(net: nn.Module) -> None:
    """Register the outputs each Hugging Face model in ``net`` can record, where this process lacks them.

    transformers 5 collects ``hidden_states`` (and attentions) through hooks driven by a process-wide
    registry that a model's ``__init__`` fills. A model unpickled in a fresh process never ran its
    ``__init__`` there (``strategy="ddp_spawn"``, a ``torch.load`` of a whole pickled model), so
    ``output_hidden_states=True`` silently returned none. A model that already ran a forward there
    marked its hooks installed with nothing to record; the mark is cleared so that they are installed
    at the next forward. Nothing happens with older transformers, or when the registry knows the class.
    """
    if "transformers" not in sys.modules:  # no Hugging Face model can be in the network
        return
    try:
        # private (transformers >= 5): guarded
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return
    for m in net.modules():
        flags = getattr(m, "_can_record_outputs", None)
        if flags and _is_hf(m) and not _CAN_RECORD_REGISTRY.get(m):
            _CAN_RECORD_REGISTRY[m] = flags
            if getattr(m, "_output_capturing_hooks_installed", False):  # installed while the registry lacked it: none
                m._output_capturing_hooks_installed = False


def unwrap(m: nn.Module) -> nn.Module:
    """The model inside a wrapper that does not change what its layers compute: ``torch.compile``'s
    ``OptimizedModule`` (``_orig_mod``: the same parameters, run eagerly here) and PEFT's ``PeftModel``
    (``get_base_model()``: the adapters live inside it)."""
    for _ in range(8):  # wrappers of wrappers, bounded
        inner = getattr(m, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            get = getattr(m, "get_base_model", None)
            inner = get() if callable(get) and type(m).__name__.startswith("Peft") else None
        if not isinstance(inner, nn.Module) or inner is m:
            return m
        m = inner
    return m


def _is_hf(m: nn.Module) -> bool:
    return any(c.__name__ == "PreTrainedModel" for c in type(m).__mro__)
