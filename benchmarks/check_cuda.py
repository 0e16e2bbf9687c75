"""Correctness on a GPU: the CUDA paths against the CPU's (the tests run on CPU only).

    PYTHONPATH=. python3 benchmarks/check_cuda.py          # first step of benchmarks/gpu_check.sh

Checks, each printed as ok / FAIL with the largest difference:
  knn           gaussian, massive-activation outliers (SmolLM2-like norms), copies; float32 and the
                float16 candidate pass; indices equal to the CPU's, distances to 1e-10 relative (the CPU
                recomputes through the Gram identity, the GPU from differences)
  knn_batched   padded clouds with copies: equal to the CPU's
  copies        find_copies / expand_copies on the GPU equal knn of all points; distinct_clouds
                equal to the CPU's
  estimators    id_profile and id_batched on the GPU equal the CPU's to 1e-9
Exit status 1 when anything fails.
"""

from __future__ import annotations

import sys

import torch

from lightning_geom.geometry import (
    distinct_clouds,
    expand_copies,
    find_copies,
    id_batched,
    id_profile,
    knn,
    knn_batched,
)

FAILED: list[str] = []


def report(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        FAILED.append(name)


def clouds(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6000, 12, generator=g)
    gauss = z @ torch.randn(12, 256, generator=g) + 0.01 * torch.randn(6000, 256, generator=g)
    outl = gauss.clone()
    outl[::50, :4] += 3e4 * torch.rand(120, 4, generator=g)  # a few huge-norm rows
    loc = torch.randn(2500, 64, generator=g)
    reps = torch.randint(1, 4, (2500,), generator=g)
    copies = loc.repeat_interleave(reps, 0)
    copies = copies[torch.randperm(copies.shape[0], generator=g)]
    return {"gaussian": gauss, "outliers": outl, "copies": copies}


def same_knn(name: str, a, b) -> None:
    idx = torch.equal(a.indices.cpu(), b.indices.cpu())
    rel = float(((a.distances.cpu() - b.distances.cpu()).abs() / b.distances.cpu().clamp_min(1e-300)).max())
    report(name, idx and rel < 1e-10, f"indices equal {idx}, max rel distance diff {rel:.1e}")  # the CPU recompute: Gram identity, 1e-10


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device under test (cpu: a dry run of this script)")
    dev = torch.device(p.parse_args().device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    for name, x in clouds().items():
        ref = knn(x, 32)
        same_knn(f"knn {name} float32", knn(x.to(dev), 32, candidates="float32"), ref)
        same_knn(f"knn {name} float16", knn(x.to(dev), 32, candidates="float16"), ref)
    x = clouds()["copies"]
    c = find_copies(x.to(dev))
    report("find_copies", c is not None and c.points.shape[0] == 2500, "")
    if c is not None:
        nb = expand_copies(knn(c.points, 33), c, 32)
        if nb is None:
            report("expand_copies", False, "declined (no exact ties expected)")
        else:
            same_knn("expand_copies", nb, knn(x, 32))
        tw_g, cv_g = id_profile(knn(c.points, 33), range_max=32)
        tw_c, cv_c = id_profile(knn(c.points.cpu(), 33), range_max=32)
        diff = max(abs(a - b) for a, b in zip(cv_g.dims, cv_c.dims))
        report("id_profile", diff < 1e-9 and abs(tw_g.dim - tw_c.dim) < 1e-9, f"max GRIDE diff {diff:.1e}")
    g = torch.Generator().manual_seed(3)
    vocab = torch.randn(300, 128, generator=g)
    tokens = vocab[torch.randint(0, 300, (64, 200), generator=g)]
    lengths = torch.randint(60, 201, (64,), generator=g)
    nb_c = knn_batched(tokens, 16, lengths=lengths)
    nb_g = knn_batched(tokens.to(dev), 16, lengths=lengths.to(dev))
    idx = torch.equal(nb_g.indices.cpu(), nb_c.indices)
    dd = float((nb_g.distances.cpu() - nb_c.distances).nan_to_num(0.0, 0.0, 0.0).abs().max())
    report("knn_batched with copies", idx and dd < 1e-10, f"indices equal {idx}, max distance diff {dd:.1e}")
    xu_c, lu_c = distinct_clouds(tokens, lengths)
    xu_g, lu_g = distinct_clouds(tokens.to(dev), lengths.to(dev))
    report("distinct_clouds", torch.equal(lu_g.cpu(), lu_c) and torch.equal(xu_g.cpu(), xu_c), "")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e_c = id_batched(nb_c, range_max=16)
        e_g = id_batched(nb_g, range_max=16)
    diff = float((e_g["gride"].cpu() - e_c["gride"]).nan_to_num(0.0).abs().max())
    report("id_batched", diff < 1e-9, f"max GRIDE diff {diff:.1e}")
    print("all ok" if not FAILED else f"FAILED: {', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
