"""Tiny real models for the callback and capture tests (built from configs, random init, offline)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel


def token_data(n: int = 256, t: int = 12, vocab: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two classes of sequences (tokens from the lower / upper half of the vocabulary), padded on the right."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    ids = torch.randint(0, vocab // 2, (n, t), generator=g) + labels[:, None] * (vocab // 2)
    lengths = torch.randint(t // 2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


class DictDataset(Dataset):
    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


class TinyGPT(L.LightningModule):
    """A 3-block GPT-2 LM (HF, random init) trained on ``token_data``."""

    def __init__(self, n_layer: int = 3, width: int = 32, vocab: int = 64, nan_after_layer: int | None = None) -> None:
        super().__init__()
        self.model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=width, n_head=2, vocab_size=vocab, n_positions=32))
        self.nan_after_layer = nan_after_layer
        if nan_after_layer is not None:
            self.model.transformer.h[nan_after_layer].register_forward_hook(self._nan_in_eval)

    @staticmethod
    def _nan_in_eval(module, inputs, out):
        """NaN features when probed (eval mode) only, so training itself stays finite."""
        if module.training:
            return out
        return (out[0] * float("nan"),) + tuple(out[1:]) if isinstance(out, tuple) else out * float("nan")

    def training_step(self, batch, batch_idx):
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
        self.log("loss", out.loss)
        return out.loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def loader(data: dict[str, torch.Tensor], batch_size: int = 32, shuffle: bool = False) -> DataLoader:
    return DataLoader(DictDataset(data), batch_size=batch_size, shuffle=shuffle)


class PretrainedLM(L.LightningModule):
    """A LightningModule around an HF causal LM read from a local folder (the usual fine-tuning wrapper)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path)

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class PlainBlocks(L.LightningModule):
    """A plain PyTorch transformer (no Hugging Face, no ``output_hidden_states``): blocks in a ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Linear(6, 16)
        self.blocks = torch.nn.ModuleList(
            [torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0) for _ in range(3)]
        )
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        h = self.emb(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def plain_data(n=192):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, 6, generator=g)
    return x, (x[:, 0, 0] > 0).long() + (x[:, 1, 1] > 0).long()


class FlatBlocks(L.LightningModule):
    """A plain MLP on (B, 6) feature rows (a tabular model): blocks in a Sequential, no tokenizer."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.inp = torch.nn.Linear(6, width)
        self.blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU()) for _ in range(3)])
        self.head = torch.nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class HubClassifier(L.LightningModule):
    """A module whose ``__init__`` loads its network by name (``from_pretrained(name)``), as fine-tuning
    code does: offline, a hub name cannot be built; a local folder can."""

    def __init__(self, name: str = "some-org/tiny-bert", num_labels: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels)

    def forward(self, **batch):
        return self.model(**batch)


class NanoLM(torch.nn.Module):
    """A plain PyTorch causal LM in the nanoGPT style: forward(idx) -> (logits, loss)."""

    def __init__(self, vocab=30, d=16, t=12):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab, d), torch.nn.Embedding(t, d)
        self.h = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.LayerNorm(d), torch.nn.Linear(d, d), torch.nn.Tanh()) for _ in range(2))
        self.lm_head = torch.nn.Linear(d, vocab)

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h:
            x = x + blk(x).cumsum(1) / torch.arange(1, idx.shape[1] + 1).view(1, -1, 1)  # causal mixing
        return self.lm_head(x), None


class NanoModule(L.LightningModule):
    """A LightningModule around :class:`NanoLM` (a plain token network, no Hugging Face config)."""

    def __init__(self, vocab: int = 30) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = NanoLM(vocab=vocab)

    def forward(self, idx):
        return self.net(idx)
