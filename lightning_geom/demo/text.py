"""The text world of the demo: a byte-level GPT on the running Python's own standard library.

- :func:`stdlib_corpus`: the source of the standard library's public modules (tests, private
  ``_modules`` and GUI / test-support packages excluded), in sorted file order, as bytes; built
  once and cached (deterministic for one Python version).
- :class:`ChunkBatches`: random contiguous windows of the corpus, a whole batch from one
  indexing op (no per-sample Python loop), reproducible from a seed.
- :func:`docstring_probe`: the first sentence of the docstring of public functions of 10 modules,
  the same number per module, as byte sequences labelled by module: the probe's label overlap asks
  whether a layer puts the sentences of one module together.
- :class:`TextGPT`: the demo's transformer blocks over 256 byte values (nanoGPT style).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from .model import Block, GPTOutput, NextTokenModule

__all__ = ["stdlib_corpus", "docstring_sentences", "docstring_probe", "ChunkBatches", "TextDataModule", "TextGPT", "PROBE_MODULES"]

PROBE_MODULES = ("os", "math", "socket", "shutil", "random", "statistics", "inspect", "typing", "logging", "calendar")
_SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages", "dist-packages", "__pycache__"}
VOCAB = 256  # bytes


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("test") for p in rel[:-1]):
            continue
        if rel[-1].startswith(("test", "_")) and rel[-1] != "__init__.py":
            continue
        if any(p.startswith("_") for p in rel[:-1]):
            continue
        files.append(path)
    return files


def stdlib_corpus(cache_dir: str | Path | None = None, *, max_bytes: int = 8 << 20) -> Tensor:
    """The standard library's public source as a (N,) uint8 tensor of bytes (at most ``max_bytes``).

    Cached under ``cache_dir`` (default ``~/.cache/lightning_geom``) by Python version and size.
    """
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "lightning_geom"
    key = hashlib.sha1(f"{sys.version}|{max_bytes}".encode()).hexdigest()[:12]
    path = cache / f"stdlib_corpus_{key}.bin"
    if path.is_file():
        data = path.read_bytes()
    else:
        chunks, size = [], 0
        for f in _stdlib_files():
            text = f.read_bytes()
            chunks.append(text + b"\n\n")
            size += len(text) + 2
            if size >= max_bytes:
                break
        data = b"".join(chunks)[:max_bytes]
        try:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        except OSError:  # a read-only home: build it again next time
            pass
    if not data:
        raise ValueError(f"No standard-library source found under {sysconfig.get_paths()['stdlib']}.")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def docstring_sentences(modules: tuple[str, ...] = PROBE_MODULES, *, per_module: int = 20, min_per_module: int = 10) -> list[tuple[str, str]]:
    """(sentence, module): the first docstring sentence of public callables, the same number from each module.

    Balanced at ``per_module``, or at the smallest module's count when one has fewer (docstrings
    differ between Python versions).

    Raises:
        ValueError: a module with fewer than ``min_per_module`` usable docstrings.
    """
    found: dict[str, list[str]] = {}
    for name in modules:
        mod = importlib.import_module(name)
        texts: list[str] = []
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr, None)
            if attr.startswith("_") or not callable(obj):
                continue
            doc = (inspect.getdoc(obj) or "").strip().split("\n\n")[0].replace("\n", " ").strip()
            if 20 <= len(doc) <= 300 and doc not in texts:
                texts.append(doc)
        if len(texts) < min_per_module:
            raise ValueError(f"Module {name!r} has {len(texts)} usable docstrings, fewer than {min_per_module}; choose other modules.")
        found[name] = texts
    per = min(per_module, *(len(t) for t in found.values()))
    return [(t, name) for name in modules for t in found[name][:per]]


def docstring_probe(seq_len: int, modules: tuple[str, ...] = PROBE_MODULES, *, per_module: int = 20) -> dict[str, Tensor]:
    """The probe set: ``input_ids`` (N, seq_len) bytes (right-padded with 0), ``attention_mask``, ``labels`` (module index)."""
    rows = docstring_sentences(modules, per_module=per_module)
    ids = torch.zeros(len(rows), seq_len, dtype=torch.long)
    mask = torch.zeros(len(rows), seq_len, dtype=torch.long)
    for i, (text, _) in enumerate(rows):
        b = torch.tensor(list(text.encode()[:seq_len]), dtype=torch.long)
        ids[i, : len(b)], mask[i, : len(b)] = b, 1
    labels = torch.tensor([modules.index(m) for _, m in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class ChunkBatches(IterableDataset):
    """Batches of random contiguous windows of a byte corpus: ``{"input_ids": (B, T), "targets": (B, T)}``.

    One ``randint`` and one gather per batch; ``steps`` batches per pass (None: endless), seeded.
    """

    def __init__(self, data: Tensor, *, seq_len: int, batch_size: int, steps: int | None = None, seed: int = 0) -> None:
        if data.numel() <= seq_len + 1:
            raise ValueError(f"A corpus of {data.numel()} bytes is too short for windows of {seq_len + 1}.")
        self.data, self.seq_len, self.batch_size, self.steps, self.seed = data.long(), seq_len, batch_size, steps, seed
        self._epoch = 0

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        g = torch.Generator().manual_seed(self.seed + self._epoch)
        self._epoch += 1
        offsets = torch.arange(self.seq_len + 1)
        i = 0
        while self.steps is None or i < self.steps:
            starts = torch.randint(0, self.data.numel() - self.seq_len - 1, (self.batch_size, 1), generator=g)
            window = self.data[starts + offsets]  # (B, T + 1): one gather
            yield {"input_ids": window[:, :-1], "targets": window[:, 1:]}
            i += 1


class TextDataModule(L.LightningDataModule):
    """The stdlib corpus (last 5 % held out for validation) and the labelled docstring probe."""

    def __init__(self, seq_len: int = 128, batch_size: int = 32, max_bytes: int = 8 << 20, cache_dir: str | None = None, seed: int = 0) -> None:
        super().__init__()
        self.seq_len, self.batch_size, self.max_bytes, self.cache_dir, self.seed = seq_len, batch_size, max_bytes, cache_dir, seed
        self.data: Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = stdlib_corpus(self.cache_dir, max_bytes=self.max_bytes)

    def _split(self) -> tuple[Tensor, Tensor]:
        self.setup()
        cut = int(self.data.numel() * 0.95)
        return self.data[:cut], self.data[cut:]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(ChunkBatches(self._split()[0], seq_len=self.seq_len, batch_size=self.batch_size, seed=self.seed), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ChunkBatches(self._split()[1], seq_len=self.seq_len, batch_size=self.batch_size, steps=8, seed=12345), batch_size=None)

    def probe_set(self) -> dict[str, Tensor]:
        return docstring_probe(self.seq_len)

    def pullback_probe(self, n: int) -> dict[str, Tensor]:
        """``n`` fixed validation windows (no padding): the pullback metric reads the last position."""
        return {"input_ids": next(iter(self.val_dataloader()))["input_ids"][:n]}


class TextGPT(NextTokenModule):
    """A byte-level GPT: the demo's pre-LN blocks over 256 byte values, next-byte prediction.

    Args:
        n_layer, width, heads: the transformer's shape.
        seq_len: the context (positions).
        lr, max_steps, weight_decay: AdamW with a one-cycle schedule over ``max_steps``.
    """

    def __init__(self, n_layer: int = 8, width: int = 128, heads: int = 4, seq_len: int = 128, lr: float = 2e-3, max_steps: int = 1000, weight_decay: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tok = nn.Embedding(VOCAB, width)
        self.pos = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, output_hidden_states: bool = False) -> GPTOutput:
        """input_ids: (B, T) bytes. Causal attention, so right padding (``attention_mask``) changes no real position."""
        t = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(t, device=input_ids.device))  # (B, T, D)
        return self.run_blocks(x, output_hidden_states)

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self(batch["input_ids"]).logits
        return F.cross_entropy(logits.reshape(-1, VOCAB), batch["targets"].reshape(-1))

