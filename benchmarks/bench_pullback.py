"""Pullback-metric spectra: the exact thin-SVD route against materialising g and eigh, and more.

    python benchmarks/bench_pullback.py

1. exact route (m batched vjps + float64 thin SVD of the m x n Jacobian) vs materialising
   g = J^T J (n x n) and ``torch.linalg.eigh`` — a random BERT classifier, n = T x d >= 4096;
2. matrix-free top-k (Lanczos, rSVD) vs the exact route for a large-m head (a GPT-2 LM head);
3. per-layer spectra for all layers in one forward + one batched backward vs one layer at a time.
Medians of ``--repeats``; ratios printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def timed(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv: list[str] | None = None) -> int:
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    from lightning_geom.demo import ImageGPT
    from lightning_geom.geometry.pullback import jacobian, layer_spectra, pullback_spectrum

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t, d = args.tokens, args.width
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    # 1. exact vs materialised -------------------------------------------------------------
    cfg = BertConfig(vocab_size=100, hidden_size=d, num_hidden_layers=2, num_attention_heads=4, intermediate_size=4 * d, num_labels=4, max_position_embeddings=t)
    bert = BertForSequenceClassification(cfg).eval()
    emb = bert.bert.embeddings.word_embeddings(torch.randint(0, 100, (1, t))).detach()
    fn = lambda e: bert(inputs_embeds=e).logits  # noqa: E731
    n = t * d

    def materialised():
        j = jacobian(fn, emb)[0].to(torch.float64)  # (m, n)
        g = j.T @ j  # (n, n)
        return torch.linalg.eigh(g)

    t_exact = timed(lambda: pullback_spectrum(fn, emb, method="exact"), args.repeats)
    t_mat = timed(materialised, 1)
    ex = pullback_spectrum(fn, emb, method="exact").eigenvalues[0]
    ref = materialised().eigenvalues.flip(0)[: ex.numel()]
    print(f"\n1. BERT classifier, m = 4, n = T x d = {t} x {d} = {n}")
    print(f"   exact thin SVD : {t_exact * 1e3:9.1f} ms")
    print(f"   materialise g + eigh (n x n = {n}^2 float64, {n * n * 8 / 2**20:.0f} MiB): {t_mat * 1e3:9.1f} ms")
    print(f"   ratio          : {t_mat / t_exact:9.0f}x   (max rel. eigenvalue diff {float(((ex - ref).abs() / ex[0]).max()):.1e} of the top)")

    # 2. matrix-free top-k on a large head -------------------------------------------------
    gcfg = GPT2Config(vocab_size=2048, n_embd=d, n_layer=2, n_head=4, n_positions=64, attn_implementation="eager")
    gpt = GPT2LMHeadModel(gcfg).double().eval()
    ge = gpt.transformer.wte(torch.randint(0, 2048, (1, 16))).detach()
    gfn = lambda e: gpt(inputs_embeds=e).logits  # noqa: E731
    k = 8
    t_ex2 = timed(lambda: pullback_spectrum(gfn, ge, method="exact"), 1)
    t_lz = timed(lambda: pullback_spectrum(gfn, ge, method="lanczos", k=k), 1)
    t_rs = timed(lambda: pullback_spectrum(gfn, ge, method="rsvd", k=k), 1)
    exv = pullback_spectrum(gfn, ge, method="exact").eigenvalues[0, :k]
    lzv = pullback_spectrum(gfn, ge, method="lanczos", k=k).eigenvalues[0]
    print(f"\n2. GPT-2 LM head, m = 2048 logits, n = 16 x {d} = {16 * d}, top-{k}")
    print(f"   exact (2048 vjps + SVD): {t_ex2:7.2f} s")
    print(f"   Lanczos (matrix-free)  : {t_lz:7.2f} s   ({t_ex2 / t_lz:.1f}x faster; max rel diff {float(((lzv - exv).abs() / exv).max()):.1e})")
    print(f"   rSVD (matrix-free)     : {t_rs:7.2f} s   ({t_ex2 / t_rs:.1f}x faster)")

    # 3. all layers at once vs one at a time ------------------------------------------------
    model = ImageGPT(n_layer=12, width=64).eval()
    pixels = torch.randint(0, 16, (8, 64))

    def run():
        out = model(pixels, output_hidden_states=True)
        return out.logits, out.hidden_states

    def one_at_a_time():
        with torch.no_grad():
            hidden = model(pixels, output_hidden_states=True).hidden_states
        for layer in range(len(hidden)):
            def rest(h, layer=layer):
                for blk in model.blocks[layer:]:
                    h = blk(h)
                return model.head(model.ln_f(h))

            pullback_spectrum(rest, hidden[layer], output="fisher", position=-1)

    t_all = timed(lambda: layer_spectra(run, output="fisher", position=-1), args.repeats)
    t_one = timed(one_at_a_time, args.repeats)
    print("\n3. demo image-GPT, 12 blocks, width 64, 8 samples, Fisher metric of the last pixel, 13 hidden states")
    print(f"   all layers, one forward + one batched backward: {t_all:6.2f} s")
    print(f"   one layer at a time                           : {t_one:6.2f} s   ({t_one / t_all:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
