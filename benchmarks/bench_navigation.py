"""Time per navigation step: ours vs the authors' method, on a BERT-base-sized random classifier.

    python benchmarks/bench_navigation.py            # d = 768, 12 layers, T = 128, 2 classes
    python benchmarks/bench_navigation.py --device cuda

One SiMEC step at one input, everything a step needs to pick its direction:
  ours     the m x n Jacobian of the logits by m batched vjps, a float64 thin SVD (all of the nonzero
           spectrum), a random null direction z - V V^T z (whole sequence)
  authors  (alessiomarta/transformers_equivalence_classes, as described in their paper/code)
           ``torch.func.jacrev`` over the whole input sequence, then for every explored token a full
           d x d ``eigh`` of J_t^T J_t and a random eigenvector under the 0.01 threshold
Prints medians of ``--repeats`` and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from transformers import BertConfig, BertForSequenceClassification

    from lightning_geom.geometry.pullback import jacobian, null_projection, spectrum_from_jacobian

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=args.width, num_hidden_layers=args.layers, num_attention_heads=max(1, args.width // 64),
        intermediate_size=4 * args.width, num_labels=args.classes, max_position_embeddings=max(512, args.tokens),
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(cfg).to(dev).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.tokens), device=dev)
    emb = model.get_input_embeddings()(ids).detach()
    fn = lambda e: model(inputs_embeds=e).logits  # noqa: E731
    g = torch.Generator(device="cpu").manual_seed(0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def ours():
        spec = spectrum_from_jacobian(jacobian(fn, emb), emb.shape[1:])
        z = torch.randn(emb.shape, generator=g).to(dev)
        return null_projection(spec, z, rel_tol=1e-3)

    def authors():
        jac = torch.func.jacrev(lambda e: fn(e.unsqueeze(0))[0])(emb[0])  # (m, T, d)
        out = []
        for t in range(args.tokens):
            jt = jac[:, t, :]  # (m, d)
            vals, vecs = torch.linalg.eigh(jt.T @ jt)  # d x d, every explored token
            null = vecs[:, vals < 0.01]
            out.append(null[:, torch.randint(null.shape[1], (1,), generator=g).item()] if null.shape[1] else vecs[:, 0])
        return out

    def timed(f):
        ts = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    ours()
    t_ours = timed(ours)
    t_auth = timed(authors)
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}")
    print(f"BERT-like classifier: {args.layers} layers, d = {args.width}, T = {args.tokens}, {args.classes} classes (n = {args.tokens * args.width})")
    print(f"ours    (batched vjps + thin SVD + null projection): {t_ours:8.3f} s / step")
    print(f"authors (jacrev + {args.tokens} x d x d eigh)          : {t_auth:8.3f} s / step")
    print(f"ratio: {t_auth / t_ours:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
