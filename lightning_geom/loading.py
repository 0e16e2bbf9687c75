"""Load what a user points a command at: a Lightning checkpoint, a pickled torch module, a Hugging
Face model folder, or a GGUF file (or a folder holding one) on disk.

Nothing is ever downloaded: a hub name is refused with a message that says to pass a folder.
GGUF files (llama.cpp's format) are read through transformers' GGUF support: the weights are
dequantised to float32, the tokenizer comes from the same file (needs the ``gguf`` package).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["LoadedModel", "load_model", "load_tokenizer", "padding_tokenizer", "quiet_loading"]

_HF_NEEDS = ("config.json",)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    """A model ready for probing: the network, its tokenizer / image processor, and what it is."""

    module: nn.Module
    kind: str  # "lightning" | "torch" | "hf-text" | "hf-image" | "hf"
    source: str
    tokenizer: Any = None
    image_processor: Any = None
    lightning_module: Any = None


_QUIET = False  # set by quiet_loading: the GGUF reader's own tqdm bar is silenced when it is used


def quiet_loading() -> None:
    """No progress bars from transformers' loading ("Loading weights", and the GGUF reader's
    "Converting and de-quantizing", a plain tqdm that ignores transformers' switch): for
    ``--no-progress`` (logs, CI)."""
    global _QUIET
    _QUIET = True
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()


def _quiet_gguf_reader() -> None:
    """Silence the tqdm bar of transformers' GGUF reader (after :func:`quiet_loading`)."""
    import functools

    try:
        import transformers.modeling_gguf_pytorch_utils as reader
    except ImportError:  # pragma: no cover - an older transformers
        return
    bar = getattr(reader, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        reader.tqdm = functools.partial(bar, disable=True)


def padding_tokenizer(tok: Any) -> Any:
    """The tokenizer ready for padded batches: right padding (the poolings read the attention mask
    from the left), and a pad token where a causal LM's has none (its EOS, else UNK: padded
    positions are masked out, so which token fills them does not matter)."""
    if getattr(tok, "pad_token", "x") is None:
        filler = getattr(tok, "eos_token", None) or getattr(tok, "unk_token", None)
        if filler is None:
            raise ValueError("the tokenizer has no pad, EOS or UNK token to pad batches with: give it a pad token (tokenizer.pad_token = ...) and save it with the model.")
        tok.pad_token = filler
    if hasattr(tok, "padding_side"):
        tok.padding_side = "right"
    return tok


def import_class(path: str, where: str) -> Any:
    """The object a dotted ``package.module.Name`` path names; a bad path, a module that does not import
    or a missing name is a one-line ValueError starting with ``where`` (the option or file that gave it)."""
    mod, _, name = path.rpartition(".")
    if not mod:
        raise ValueError(f"{where}: expected a class path like 'package.module.Class', but got {path!r}.")
    try:
        return getattr(_import_module(mod), name)
    except ImportError as err:
        raise ValueError(f"{where}: cannot import {mod!r} ({err}); is the package installed and on the path?") from None
    except AttributeError:
        raise ValueError(f"{where}: {mod!r} has no attribute {name!r}.") from None


def _import_module(mod: str) -> Any:
    """``importlib.import_module``, retried with the working directory on ``sys.path`` when the package is
    not found: a console script (``lightning-geom ...``), unlike ``python -m``, does not look there, and
    the user's module usually sits in the folder they run from."""
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        if err.name != mod.partition(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(mod)
        except ModuleNotFoundError:
            sys.path.remove(cwd)
            raise err from None


def _import(path: str) -> Any:
    cls = import_class(path, f"--module {path}")
    name = path.rpartition(".")[2]
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and hasattr(cls, "load_from_checkpoint")):
        raise ValueError(f"--module {path}: {name!r} is not a LightningModule class.")
    return cls


def _read_checkpoint(path: Path) -> dict | nn.Module:
    """``torch.load`` of a Lightning checkpoint or of a whole pickled module (``torch.save(model, path)``),
    with a one-line error for a truncated or foreign file and for bare weights (a ``state_dict``)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - zip / pickle / EOF errors all mean the same to the user
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated, still being written, or not a .ckpt): "
            f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        ) from None
    if isinstance(ckpt, nn.Module):
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(
            f"{path} holds bare weights (a state_dict), which cannot rebuild a model without its code: save a "
            "Lightning checkpoint (trainer.save_checkpoint), a Hugging Face folder (model.save_pretrained) or "
            "the whole module (torch.save(model, path))."
        )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' inside) nor a pickled torch module.")
    return ckpt


def _load_checkpoint(path: Path, module: str | None, init_args: dict[str, Any] | None = None) -> LoadedModel:
    ckpt = _read_checkpoint(path)
    if isinstance(ckpt, nn.Module) and init_args:
        raise ValueError(f"--init-arg sets a Lightning checkpoint's hyperparameters; {path} is a pickled module without any.")
    if isinstance(ckpt, nn.Module):  # torch.save(model, path): the module itself (its class must import here)
        ckpt.eval()
        return LoadedModel(module=ckpt, kind="torch", source=str(path), tokenizer=_module_tokenizer(ckpt, {}))
    if module:
        cls = _import(module)
    else:
        hp = ckpt.get("hyper_parameters", {}) or {}
        if {"n_layer", "width", "heads", "seq_len"} <= set(hp):  # the demo's text world
            from .demo.text import TextGPT

            cls = TextGPT
        elif {"n_layer", "width", "heads"} <= set(hp):  # the demo's image-GPT
            from .demo import ImageGPT

            cls = ImageGPT
        else:
            raise ValueError(
                f"Cannot tell the LightningModule class of {path}: pass `--module package.module.Class`."
            )
    try:
        lm = cls.load_from_checkpoint(str(path), map_location="cpu", **(init_args or {}))
    except OSError as err:  # the module's __init__ reads files: typically from_pretrained(<hub name>) offline
        raise ValueError(_init_download_error(path, cls, err, ckpt.get("hyper_parameters") or {})) from None
    except (RuntimeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} does not load into {cls.__name__}: {str(err).splitlines()[0][:200]}; is --module right?") from None
    lm.eval()
    return LoadedModel(module=lm, kind="lightning", source=str(path), lightning_module=lm, tokenizer=_module_tokenizer(lm, ckpt))


def _init_download_error(path: Path, cls: type, err: OSError, hparams: Any) -> str:
    """One line for a module whose ``__init__`` failed to read files: a Hugging Face Hub download (offline,
    not cached) named with its fix (``--init-arg KEY=DIR`` for the hyperparameter that holds a hub name),
    any other file error as it is."""
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    hub = any(w in str(err) for w in ("huggingface.co", "Hugging Face", "offline", "valid model identifier", "HF_HUB"))
    if not hub:
        return f"{path}: {cls.__name__}.__init__ failed to read a file ({first}); --init-arg KEY=VALUE overrides a hyperparameter."
    names = [k for k, v in (hparams.items() if isinstance(hparams, dict) else ()) if isinstance(v, str) and _looks_like_hub_name(v)]
    fix = f"--init-arg {names[0]}=DIR" if names else "--init-arg KEY=DIR (the hyperparameter that names the model)"
    return (
        f"{path}: {cls.__name__}.__init__ loads a model from the Hugging Face Hub, which is neither reachable nor in "
        f"the local cache ({first}). The checkpoint holds the weights; only the architecture is read there: save that "
        f"model once with model.save_pretrained(DIR) and pass {fix}, or run once where the Hub is reachable (it is then cached)."
    )


def _looks_like_hub_name(v: str) -> bool:
    """``org/name`` (or ``name``) that is no existing local path: what ``from_pretrained`` fetches from the Hub."""
    return bool(v) and not Path(v).exists() and v.count("/") <= 1 and not v.startswith((".", "/", "~")) and " " not in v


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")


def _has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` is a directory holding tokenizer files."""
    return folder.is_dir() and any((folder / f).exists() for f in _TOKENIZER_FILES)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a local folder (``tokenizer.json``, ``vocab.txt``, ...), ready for padded batches.

    Raises:
        ValueError: no such folder, or no tokenizer files in it (hub names are not downloaded).
    """
    p = Path(path)
    if not _has_tokenizer(p):
        raise ValueError(f"--tokenizer {path}: not a folder with tokenizer files ({', '.join(_TOKENIZER_FILES)}); hub names are not downloaded.")
    from transformers import AutoTokenizer

    return padding_tokenizer(AutoTokenizer.from_pretrained(p, local_files_only=True))


def _module_tokenizer(lm: torch.nn.Module, ckpt: dict) -> Any:
    """The tokenizer a LightningModule brings, if any: its ``tokenizer`` attribute, else the first local
    folder with tokenizer files among its hyperparameters' strings and its HF submodels'
    ``config._name_or_path`` (where ``from_pretrained`` read them). None when there is none."""
    own = getattr(lm, "tokenizer", None)
    if callable(own) and hasattr(own, "convert_ids_to_tokens"):
        return padding_tokenizer(own)
    hp = ckpt.get("hyper_parameters", {}) or {}
    hp = {**(hp if isinstance(hp, dict) else {}), **dict(getattr(lm, "hparams", None) or {})}  # with --init-arg's overrides
    places = [v for v in hp.values() if isinstance(v, str)]
    places += [getattr(m.config, "_name_or_path", "") for m in lm.modules() if hasattr(getattr(m, "config", None), "_name_or_path")]
    for place in places:
        try:
            if place and _has_tokenizer(Path(place)):
                return load_tokenizer(place)
        except (OSError, ValueError):  # a string that is no usable path, or files that do not load
            continue
    return None


def _load_hf(path: Path) -> LoadedModel:
    missing = [f for f in _HF_NEEDS if not (path / f).exists()]
    if missing or not any((path / w).exists() for w in _WEIGHTS):
        raise ValueError(
            f"{path} is not a complete Hugging Face model folder: it needs config.json and weights "
            f"({' or '.join(_WEIGHTS[:2])}); found {sorted(p.name for p in path.iterdir())[:10]}."
        )
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    arch = " ".join(cfg.architectures or [])
    import transformers as tf

    if "ForImageClassification" in arch:
        cls, kind = tf.AutoModelForImageClassification, "hf-image"
    elif "ForSequenceClassification" in arch:
        cls, kind = tf.AutoModelForSequenceClassification, "hf-text"
    elif "ForCausalLM" in arch or "LMHead" in arch:
        cls, kind = tf.AutoModelForCausalLM, "hf-text"
    else:
        cls, kind = tf.AutoModel, "hf"
    # the class the folder names, where transformers has it: AutoModel maps a config to its model type's
    # base class, which is not always what was saved (T5EncoderModel's config -> T5Model, which needs
    # decoder inputs to run)
    named = [getattr(tf, a, None) for a in (cfg.architectures or [])]
    cls = next((c for c in named if c is not None and hasattr(c, "from_pretrained")), cls)
    model = cls.from_pretrained(path, local_files_only=True)
    model.eval()
    tok = proc = None
    if _has_tokenizer(path):
        tok = load_tokenizer(path)
        if kind == "hf":
            kind = "hf-text"
    if (path / "preprocessor_config.json").exists():
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        if kind == "hf":
            kind = "hf-image"
    return LoadedModel(module=model, kind=kind, source=str(path), tokenizer=tok, image_processor=proc)


def _gguf_in(folder: Path) -> Path | None:
    """The one ``*.gguf`` file of a folder without config.json (None when there is none).

    Raises:
        ValueError: several GGUF files (the user must pick one).
    """
    if (folder / "config.json").exists():
        return None
    found = sorted(folder.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found[:5])
        raise ValueError(f"{folder} holds {len(found)} GGUF files ({names}); pass the one to probe as the path.")
    return found[0] if found else None


def _load_gguf(path: Path) -> LoadedModel:
    """A GGUF file as a causal LM (or a seq2seq LM for an encoder-decoder architecture), weights
    dequantised to float32, with the tokenizer it embeds."""
    from transformers.utils import is_gguf_available

    if not is_gguf_available():
        raise ValueError(f"{path} is a GGUF file; reading it needs the `gguf` package: pip install gguf")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")
    import transformers as tf

    if _QUIET:
        _quiet_gguf_reader()
    folder, name = str(path.parent), path.name
    try:
        cfg = tf.AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
        # decoder LMs (Llama, Qwen, Gemma, ...) keep their LM head; an encoder-decoder (T5) its seq2seq head
        cls = tf.AutoModelForSeq2SeqLM if getattr(cfg, "is_encoder_decoder", False) else tf.AutoModelForCausalLM
        model = cls.from_pretrained(folder, gguf_file=name, local_files_only=True)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        raise ValueError(
            f"{path} does not load through transformers' GGUF support: {str(err).splitlines()[0][:200]} "
            "(supported: the architectures and quantisations of transformers' GGUF reader)."
        ) from None
    model.eval()
    try:
        tok = padding_tokenizer(tf.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True))
    except (ValueError, KeyError, NotImplementedError, OSError) as err:
        raise ValueError(f"{path}: the tokenizer inside the GGUF file does not load: {str(err).splitlines()[0][:200]}") from None
    return LoadedModel(module=model, kind="hf-text", source=str(path), tokenizer=tok)


def load_model(path: str | Path, *, module: str | None = None, init_args: dict[str, Any] | None = None) -> LoadedModel:
    """A Lightning checkpoint (``.ckpt``), a whole pickled torch module (``torch.save(model, path)``),
    a Hugging Face model folder, or a GGUF file / a folder holding one (loaded as a causal LM,
    dequantised, with the tokenizer from the same file).

    Raises:
        FileNotFoundError: the path does not exist (a hub name is refused here too).
        ValueError: an incomplete folder, or a checkpoint whose class cannot be told.

    ``init_args``: a Lightning checkpoint's hyperparameters to override when its module is built (e.g. a
    local folder for a hub name its ``__init__`` loads); refused for other kinds of model.
    """
    p = Path(path)
    if not p.exists():
        hint = " Hub names are not downloaded: save the model to a folder first." if "/" in str(path) and not str(path).startswith((".", "/")) else ""
        raise FileNotFoundError(f"No such model file or folder: {path}.{hint}")
    if init_args and (p.is_dir() or p.suffix.lower() == ".gguf"):
        raise ValueError(f"--init-arg sets a Lightning checkpoint's hyperparameters; {path} is a model folder / file without any.")
    if p.is_dir():
        gguf = _gguf_in(p)
        return _load_gguf(gguf) if gguf is not None else _load_hf(p)
    if p.suffix.lower() == ".gguf":
        return _load_gguf(p)
    return _load_checkpoint(p, module, init_args or {})
