"""GeometryMonitor on a realistic model: GPT-2 (HF config, random init, random tokens), per checkpoint.

    python benchmarks/bench_gpt2_overhead.py                       # CPU: a small GPT-2, fp32
    python benchmarks/bench_gpt2_overhead.py --device cuda --size small --probe 1024 --seq 256 --steps 300

Trains GPT-2 twice with the same seed (without and with ``GeometryMonitor``, ``every_n_steps``
after the log-spaced start) and prints, per checkpoint, the *floor*: the probe's forward through
the transformer without the LM head, with hidden states (what any capture must do) beside the
monitor's own time and its parts (``monitor.timings``: capture, geometry, log, figures). Issue 9's
target on an H100 (GPT-2 small, bf16, 1,024 x 256 probe): monitor <= 1.5x the floor per checkpoint.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch

SIZES = {  # n_layer, n_embd, n_head
    "tiny": (4, 128, 4),
    "mini": (6, 256, 8),
    "small": (12, 768, 12),  # GPT-2 small, 124M
}


def _module(size: str, seq: int, vocab: int):
    import lightning as L
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_embd, n_head = SIZES[size]

    class LM(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=seq)
            self.model = GPT2LMHeadModel(cfg)

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-4)

    return LM()


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int, seed: int) -> None:
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i]}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def floor_forward(module, probe: _Tokens, batch: int, device: str, precision: str) -> float:
    """Seconds of the probe's forward through the transformer (no head), hidden states on: the floor."""
    net = module.model.transformer.to(device).eval()
    dtype = torch.bfloat16 if precision.startswith("bf16") else None
    times = []
    for _ in range(3):
        _sync(device)
        t = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            for s in range(0, len(probe), batch):
                net(input_ids=probe.ids[s : s + batch].to(device), output_hidden_states=True)
        _sync(device)
        times.append(time.perf_counter() - t)
    module.model.train()
    return statistics.median(times)


def run(args: argparse.Namespace, monitor: bool):
    import lightning as L

    from lightning_geom.callbacks import GeometryMonitor

    L.seed_everything(0, verbose=False)
    module = _module(args.size, args.seq, args.vocab)
    probe = _Tokens(args.probe, args.seq, args.vocab, seed=1)
    cbs = []
    mon = None
    if monitor:
        bg = {"auto": "auto", "on": True, "off": False}[args.background]
        mon = GeometryMonitor(
            probe=probe, num_samples=args.probe, batch_size=args.probe_batch, every_n_steps=args.every, figure_every=0, output_dir=args.out, background=bg
        )
        cbs.append(mon)
    trainer = L.Trainer(
        max_steps=args.steps, callbacks=cbs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
        precision=args.precision,
    )
    loader = torch.utils.data.DataLoader(_Tokens(args.steps * args.batch, args.seq, args.vocab, seed=0), batch_size=args.batch)
    t = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - t, mon, module, probe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--probe", type=int, default=256)
    p.add_argument("--probe-batch", type=int, default=64)
    p.add_argument("--precision", default=None, help="Lightning precision (default: bf16-mixed on cuda, 32 on cpu)")
    p.add_argument("--out", default="/tmp/lightning_geom_gpt2")
    p.add_argument("--background", choices=["auto", "on", "off"], default="auto", help="GeometryMonitor's background analysis (auto: on a GPU)")
    args = p.parse_args(argv)
    args.precision = args.precision or ("bf16-mixed" if args.device.startswith("cuda") else "32-true")
    warnings.filterwarnings("ignore")
    base, _, _, _ = run(args, monitor=False)
    wall, mon, module, probe = run(args, monitor=True)
    floor = floor_forward(module, probe, args.probe_batch, args.device, args.precision)
    n_layer, n_embd, _ = SIZES[args.size]
    print(f"GPT-2 {args.size} ({n_layer} x {n_embd}), seq {args.seq}, vocab {args.vocab}, {args.steps} steps, {args.precision} on {args.device}")
    print(f"probe {args.probe} x {args.seq}; floor (transformer forward without the head, hidden states on): {floor:.3f} s")
    print(f"training alone {base:.1f} s, with GeometryMonitor {wall:.1f} s: overhead {wall / base - 1:+.1%} ({len(mon.history)} checkpoints)")
    print(f"{'step':>6} {'total s':>8} {'capture s':>9} {'geometry s':>10} {'blocking s':>10} {'total/floor':>11}")
    for t in mon.timings:
        print(
            f"{t['step']:>6} {t['total_s']:8.3f} {t.get('capture_s', 0):9.3f} {t.get('geometry_s', 0):10.3f} "
            f"{t['blocking_s']:10.3f} {t['total_s'] / floor:11.2f}"
        )
    med = statistics.median(t["total_s"] for t in mon.timings[1:] or mon.timings)
    blk = statistics.median(t["blocking_s"] for t in mon.timings[1:] or mon.timings)
    print(f"median monitor time per checkpoint {med:.3f} s = {med / floor:.2f}x the floor (target <= 1.5x)")
    print(f"median time the training waited per checkpoint {blk:.3f} s = {blk / floor:.2f}x the floor (background: {args.background})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
