"""Write a tiny Llama GGUF file (float32 tensors, byte-level BPE vocabulary) for the loader tests.

The tensors are laid out as llama.cpp's converter writes them (GGUF names; the query / key rows
interleaved per head), so loading the file back must give the model it was written from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's (rotary halves per head) row order -> llama.cpp's (pairs interleaved per head)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_vocab() -> list[str]:
    """The 256 byte-level BPE symbols (GPT-2's byte -> printable character table), one merged pair, an end token."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)] + [chars[32] + "h", "<|endoftext|>"]  # one merge: " h"


def tiny_llama(layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0):
    """A random LlamaForCausalLM over the byte vocabulary (eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=258, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=257,
        eos_token_id=257, attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


def write_gguf(model, path: Path) -> Path:
    """``model`` (from :func:`tiny_llama`) as a float32 GGUF file at ``path``."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    vocab = byte_vocab()
    w.add_token_list(vocab)
    w.add_token_types([1] * 257 + [3])
    w.add_token_scores([0.0] * len(vocab))
    w.add_token_merges([vocab[32] + " h"])
    w.add_bos_token_id(257)
    w.add_eos_token_id(257)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd.pop("model.embed_tokens.weight"))
    w.add_tensor("output_norm.weight", sd.pop("model.norm.weight"))
    w.add_tensor("output.weight", sd.pop("lm_head.weight"))
    for name, arr in sd.items():
        _, _, i, rest = name.split(".", 3)  # model.layers.<i>.<rest>
        module = rest.rsplit(".", 1)[0]
        if module in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = cfg.num_attention_heads if module.endswith("q_proj") else cfg.num_key_value_heads
            arr = _interleave(arr, heads)
        w.add_tensor(f"blk.{i}.{_NAMES[module]}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
