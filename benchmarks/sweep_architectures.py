"""Probe tiny random models of many Hugging Face architectures end to end; print one line per run.

A robustness sweep, not a benchmark: each architecture (encoders, decoders with and without a BOS
token or a pad token, encoder-decoders, a state-space model, a mixture of experts) is built from a
small config with random weights, saved with a word-level tokenizer, and run through
``lightning-geom probe`` twice: plain, and with ``--tokens both --shuffle-control``. A failure
prints the command's last line. Run it after a transformers upgrade:

    python benchmarks/sweep_architectures.py [--only llama,t5enc] [--out /tmp/arch_sweep]

Session 10 (transformers 5.24): 25 architectures x 2, all exit 0 after loading a folder as the
class its config names (a saved T5EncoderModel used to become a T5Model and fail).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

WORDS = "the a cat dog sat ran on under mat log red blue big small quick slow and then over near".split()


def _tokenizer(kind: str):
    """Word-level tokenizers: "enc" ([CLS] x [SEP], a pad token), "dec" (no pad token), "dec_bos" (<s> x)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "enc":
        vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
        core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.Whitespace()
        core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "dec_bos":
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _specs() -> dict:
    import transformers as T

    v = len(WORDS) + 5
    s = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    kv = dict(num_key_value_heads=1, max_position_embeddings=64)
    return {
        "bert": ("enc", lambda: T.BertForSequenceClassification(T.BertConfig(vocab_size=v, num_hidden_layers=3, max_position_embeddings=64, **s))),
        "roberta": ("enc", lambda: T.RobertaForMaskedLM(T.RobertaConfig(vocab_size=v, num_hidden_layers=3, max_position_embeddings=70, pad_token_id=0, **s))),
        "distilbert": ("enc", lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=v, n_layers=3, dim=32, n_heads=2, hidden_dim=64, max_position_embeddings=64))),
        "albert": ("enc", lambda: T.AlbertModel(T.AlbertConfig(vocab_size=v, num_hidden_layers=3, embedding_size=16, max_position_embeddings=64, **s))),
        "electra": ("enc", lambda: T.ElectraForSequenceClassification(T.ElectraConfig(vocab_size=v, num_hidden_layers=3, embedding_size=16, max_position_embeddings=64, **s))),
        "deberta": ("enc", lambda: T.DebertaV2Model(T.DebertaV2Config(vocab_size=v, num_hidden_layers=3, max_position_embeddings=64, **s))),
        "mpnet": ("enc", lambda: T.MPNetModel(T.MPNetConfig(vocab_size=v, num_hidden_layers=3, max_position_embeddings=70, **s))),
        "gpt2": ("dec", lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=v, n_layer=3, n_embd=32, n_head=2, n_positions=64))),
        "gpt_neo": ("dec", lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(vocab_size=v, num_layers=2, attention_types=[[["global", "local"], 1]], hidden_size=32, num_heads=2, max_position_embeddings=64))),
        "gpt_neox": ("dec", lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(vocab_size=v, num_hidden_layers=3, max_position_embeddings=64, **s))),
        "opt": ("dec_bos", lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=v, num_hidden_layers=3, hidden_size=32, ffn_dim=64, num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32))),
        "llama": ("dec_bos", lambda: T.LlamaForCausalLM(T.LlamaConfig(vocab_size=v, num_hidden_layers=3, **kv, **s))),
        "mistral": ("dec_bos", lambda: T.MistralForCausalLM(T.MistralConfig(vocab_size=v, num_hidden_layers=3, **kv, **s))),
        "qwen2": ("dec", lambda: T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=v, num_hidden_layers=3, **kv, **s))),
        "phi": ("dec", lambda: T.PhiForCausalLM(T.PhiConfig(vocab_size=v, num_hidden_layers=3, max_position_embeddings=64, **s))),
        "gemma": ("dec_bos", lambda: T.GemmaForCausalLM(T.GemmaConfig(vocab_size=v, num_hidden_layers=3, head_dim=16, **kv, **s))),
        "gemma2": ("dec_bos", lambda: T.Gemma2ForCausalLM(T.Gemma2Config(vocab_size=v, num_hidden_layers=3, head_dim=16, **kv, **s))),
        "bloom": ("dec", lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=v, n_layer=3, hidden_size=32, n_head=2))),
        "falcon": ("dec", lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=v, num_hidden_layers=3, hidden_size=32, num_attention_heads=2))),
        "t5": ("enc", lambda: T.T5ForConditionalGeneration(T.T5Config(vocab_size=v, num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16))),
        "t5enc": ("enc", lambda: T.T5EncoderModel(T.T5Config(vocab_size=v, num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16))),
        "bart": ("enc", lambda: T.BartForSequenceClassification(T.BartConfig(vocab_size=v, encoder_layers=2, decoder_layers=2, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, max_position_embeddings=64))),
        "mamba": ("dec", lambda: T.MambaForCausalLM(T.MambaConfig(vocab_size=v, num_hidden_layers=3, hidden_size=32, state_size=8))),
        "mixtral": ("dec_bos", lambda: T.MixtralForCausalLM(T.MixtralConfig(vocab_size=v, num_hidden_layers=2, num_local_experts=2, **kv, **s))),
        "xglm": ("dec", lambda: T.XGLMForCausalLM(T.XGLMConfig(vocab_size=v, num_layers=2, d_model=32, ffn_dim=64, attention_heads=2, max_position_embeddings=64))),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated architecture names")
    p.add_argument("--out", default="arch_sweep")
    args = p.parse_args()
    root = Path(args.out)
    specs = _specs()
    names = args.only.split(",") if args.only else list(specs)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(96):  # two "classes" of word salad, 12-23 words each
        lab = i % 2
        rows.append({"text": " ".join(rng.choice(WORDS[:10] if lab else WORDS[10:], size=int(rng.integers(12, 24)))), "label": "a" if lab else "b"})
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    failed = 0
    for name in names:
        kind, build = specs[name]
        folder = root / "models" / name
        torch.manual_seed(0)
        build().save_pretrained(folder)
        _tokenizer(kind).save_pretrained(folder)
        for extra in ([], ["--tokens", "both", "--shuffle-control", "--token-k", "4"]):
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "lightning_geom.cli", "probe", str(folder), "--data", str(data), "--out",
                   str(root / "reports" / (name + ("_tokens" if extra else ""))), "--range-max", "16", "--pullback-samples", "2", *extra]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            last = (res.stdout.strip().splitlines() or res.stderr.strip().splitlines() or [""])[-1][:150]
            failed += res.returncode != 0
            print(f"{name:10s} {'tokens' if extra else 'plain ':6s} rc={res.returncode} {time.perf_counter() - t0:5.1f}s  {last}", flush=True)
    print(f"{failed} failed of {2 * len(names)}")
    return int(failed > 0)


if __name__ == "__main__":
    raise SystemExit(main())
