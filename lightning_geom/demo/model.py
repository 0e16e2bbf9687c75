"""A small image-GPT (next-pixel prediction, as iGPT) in the nanoGPT style: one file, readable top to bottom."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import LEVELS, SEQ_LEN


@dataclass
class GPTOutput:
    """logits: (B, T, vocab); hidden_states: embeddings + one (B, T, D) per block (HF convention,
    the last one *before* the final LayerNorm, unlike most HF models)."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)  # 3 x (B, T, D)
        q, k, v = (
            z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v)
        )  # (B, H, T, D/H)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class NextTokenModule(L.LightningModule):
    """What both demo GPTs share: the block stack and head, the loss logging and the optimiser.

    Subclasses define ``blocks``, ``ln_f``, ``head`` and ``_loss(batch)``; ``hparams`` hold ``lr``,
    ``weight_decay`` and ``max_steps``.
    """

    def run_blocks(self, x: Tensor, output_hidden_states: bool = False) -> GPTOutput:
        """(B, T, D) embeddings -> logits; hidden states = embeddings + one per block (before ln_f)."""
        states = [x]
        for blk in self.blocks:
            x = blk(x)
            states.append(x)
        return GPTOutput(self.head(self.ln_f(x)), tuple(states) if output_hidden_states else None)

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True)

    def configure_optimizers(self):
        return adamw_one_cycle(self, self.hparams.lr, self.hparams.weight_decay, self.hparams.max_steps)


class ImageGPT(NextTokenModule):
    """Autoregressive pixel model: predicts pixel t from pixels < t (a start token first).

    Args:
        n_layer: transformer blocks.
        width: residual width.
        heads: attention heads.
        lr: AdamW learning rate (cosine decay to 10% over ``max_steps``).
        max_steps: length of the learning-rate schedule.
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        n_layer: int = 8,
        width: int = 64,
        heads: int = 4,
        lr: float = 3e-3,
        max_steps: int = 600,
        weight_decay: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tok = nn.Embedding(LEVELS + 1, width)  # + start token
        self.pos = nn.Embedding(SEQ_LEN, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, LEVELS)

    def input_ids(self, pixels: Tensor) -> Tensor:
        """(B, 64) token ids fed to the network: [start, p_0 .. p_62]."""
        start = torch.full((pixels.shape[0], 1), LEVELS, dtype=pixels.dtype, device=pixels.device)
        return torch.cat([start, pixels[:, :-1]], dim=1)

    def forward(self, pixels: Tensor, output_hidden_states: bool = False) -> GPTOutput:
        """pixels: (B, 64) int64 in [0, 15]. Inputs are [start, p_0 .. p_62]; logits predict p_0 .. p_63."""
        return self.forward_embeddings(self.tok(self.input_ids(pixels)), output_hidden_states)

    def forward_embeddings(self, tok_emb: Tensor, output_hidden_states: bool = False) -> GPTOutput:
        """The network from token embeddings (B, T, D) (before position embeddings) to logits."""
        t = tok_emb.shape[1]
        x = tok_emb + self.pos(torch.arange(t, device=tok_emb.device))
        return self.run_blocks(x, output_hidden_states)

    def _loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits = self(batch["pixels"]).logits
        return F.cross_entropy(logits.reshape(-1, LEVELS), batch["pixels"].reshape(-1))




def adamw_one_cycle(module: nn.Module, lr: float, weight_decay: float, max_steps: int) -> dict:
    """AdamW (betas 0.9, 0.95) with a one-cycle schedule over ``max_steps``, stepped every step."""
    opt = torch.optim.AdamW(
        module.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95)
    )
    total = max(int(max_steps), 4)
    # OneCycleLR needs >= 2 warm-up steps (its phase length divides by pct_start * total - 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total, pct_start=max(0.05, 2.0 / total), final_div_factor=10
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
