"""Run GeometryMonitor under DDP (2 CPU processes, gloo) or in one process; write rank 0's history.

    python tests/ddp_run.py OUT.json --devices 2

Lightning's DDP launcher re-runs this script for rank 1, so it must be a script, not a test body.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from helpers import TinyGPT, loader, token_data  # noqa: E402

from lightning_geom.callbacks import GeometryMonitor, PullbackMonitor  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--shard-above", type=int, default=None, help="GeometryMonitor(shard_knn_above=...)")
    p.add_argument("--val-probe", action="store_true", help="no probe=: the validation loader given to fit() is the probe")
    args = p.parse_args()
    torch.manual_seed(0)
    data = token_data(150)  # 150 = 5 batches of 32 (last one 22): uneven shards across 2 ranks
    for key in data:  # the last 10 samples copy the first 10: every layer has exact copies (one kNN of its distinct points)
        data[key][140:] = data[key][:10]
    mon = GeometryMonitor(
        probe=None if args.val_probe else data, num_samples=150, batch_size=32, every_n_steps=100, log_spaced=False, at_fit_end=False, range_max=16, figure_every=0,
        output_dir=str(Path(args.out).parent / "geo"), shard_knn_above=args.shard_above,
    )
    pb = PullbackMonitor(
        probe={k: v[:20] for k, v in data.items()}, num_samples=20, batch_size=8, top_logits=4, every_n_steps=100,
        log_spaced=False, at_fit_end=False, figure_every=0, output_dir=str(Path(args.out).parent / "geo"),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=1,
        callbacks=[mon, pb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(TinyGPT(), loader(data), val_dataloaders=loader(data) if args.val_probe else None)
    if trainer.is_global_zero:
        Path(args.out).write_text(json.dumps({"geometry": mon.history, "pullback": pb.history}))


if __name__ == "__main__":
    main()
