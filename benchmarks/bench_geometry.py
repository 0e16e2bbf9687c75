"""Speed of the geometry core for one layer and its successor, against the GEMM floor and DADApy.

The work timed (per (N, D)), as the monitor does it for a layer l and layer l+1:
  ours    knn(x, 64), knn(y, 64); twonn, gride_scaling(range_max=64), label_overlap(k=10) on x;
          neighborhood_overlap(x, y, k=30)
  GEMM    x @ x.T and y @ y.T (float32, same device): the multiply-adds no exact kNN avoids
  DADApy  Data(x): compute_id_2NN, return_id_scaling_gride(64), return_label_overlap(k=10) (its
          cached distances serve all three), then return_data_overlap(coordinates=y, k=30)

Data: a 10-d gaussian embedded in D plus small noise (float32); y = x R + noise, R orthogonal.

DADApy pins numpy < 2, so it runs in its own virtual environment, through a subprocess, on the same
data saved to a temporary .npy. Make that venv once:

    python -m venv /tmp/dadapy-venv && /tmp/dadapy-venv/bin/pip install "numpy<2" dadapy==0.3.4

then:

    python benchmarks/bench_geometry.py --dadapy-python /tmp/dadapy-venv/bin/python
    python benchmarks/bench_geometry.py --device cuda          # GPU path (DADApy stays on CPU)
    python benchmarks/bench_geometry.py --device cuda --candidates float32   # no float16 candidate pass
    python benchmarks/bench_geometry.py --device cuda --matmul-precision high  # TF32 float32 GEMMs

Also printed: the naive code a user would write (``torch.cdist`` + ``topk``, the same two kNN,
no exactness guarantee), the torch ops our pipeline dispatches (``OpCounter``: on a GPU each one
is a kernel launch) and the estimators' share of the time (everything after the two kNN).

Prints medians of ``--repeats`` runs and the ratios ours/GEMM, ours/naive and DADApy/ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lightning_geom.geometry import gride_scaling, knn, label_overlap, neighborhood_overlap, twonn
from lightning_geom.profiling import OpCounter

_DADAPY_SCRIPT = r"""
import json, sys, time
import numpy as np
from dadapy import Data
x = np.load(sys.argv[1]); y = np.load(sys.argv[2]); labels = np.load(sys.argv[3]); repeats = int(sys.argv[4])
times, out = [], None
for _ in range(repeats):
    t = time.perf_counter()
    d = Data(x)
    tw = d.compute_id_2NN()
    gs = d.return_id_scaling_gride(range_max=64)
    lo = d.return_label_overlap(labels, k=10)
    no = d.return_data_overlap(coordinates=y, k=30)
    times.append(time.perf_counter() - t)
    out = {"twonn": float(tw[0]), "gride": [float(v) for v in gs[0]], "label": float(lo), "overlap": float(no)}
print(json.dumps({"times": times, "values": out}))
"""


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x: 10-d gaussian in R^d + 1e-2 noise; y = x R + 1e-2 noise; labels from the latent coords."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 10))
    basis = np.linalg.qr(rng.standard_normal((d, 10)))[0]
    x = z @ basis.T + 1e-2 * rng.standard_normal((n, d))
    r = np.linalg.qr(rng.standard_normal((d, d)))[0]
    y = x @ r + 1e-2 * rng.standard_normal((n, d))
    labels = np.argmax(z[:, :5], axis=1)
    return x.astype(np.float32), y.astype(np.float32), labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CANDIDATES = "auto"  # knn's candidate GEMM precision (--candidates)


def ours(x: torch.Tensor, y: torch.Tensor, labels: np.ndarray) -> dict:
    nx, ny = knn(x, 64, candidates=CANDIDATES), knn(y, 64, candidates=CANDIDATES)
    return {
        "twonn": twonn(nx).dim,
        "gride": list(gride_scaling(nx, range_max=64).dims),
        "label": label_overlap(nx, labels, k=10),
        "overlap": neighborhood_overlap(nx, ny, k=30),
    }


def estimators(nx, ny, labels: np.ndarray) -> None:
    twonn(nx)
    gride_scaling(nx, range_max=64)
    label_overlap(nx, labels, k=10)
    neighborhood_overlap(nx, ny, k=30)


def naive(x: torch.Tensor, y: torch.Tensor) -> None:
    """What a user would write: full distance matrix, then topk (float32, no exactness check)."""
    for z in (x, y):
        torch.topk(torch.cdist(z, z), 65, dim=1, largest=False)


def gemm(x: torch.Tensor, y: torch.Tensor) -> None:
    x @ x.T
    y @ y.T


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_dadapy(python: str, x: np.ndarray, y: np.ndarray, labels: np.ndarray, repeats: int, dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / f"{n}.npy") for n in ("x", "y", "labels")]
        np.save(paths[0], x.astype(dtype))
        np.save(paths[1], y.astype(dtype))
        np.save(paths[2], labels)
        res = subprocess.run(
            [python, "-c", _DADAPY_SCRIPT, *paths, str(repeats)], capture_output=True, text=True, check=True
        )
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return {"time": statistics.median(data["times"]), "values": data["values"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000x128,2000x768,10000x128,10000x768", help="NxD list")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dadapy-python", default=None, help="python of a venv with dadapy==0.3.4 (numpy<2)")
    p.add_argument("--dadapy-dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--candidates", default="auto", choices=["auto", "float32", "float16"], help="knn's candidate GEMM precision")
    p.add_argument("--matmul-precision", default=None, choices=["highest", "high", "medium"],
                   help="torch.set_float32_matmul_precision for the run (high: TF32 GEMMs on a GPU, ours and the floor alike)")
    args = p.parse_args(argv)
    global CANDIDATES
    CANDIDATES = args.candidates
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
          f"candidates {args.candidates}, float32 matmul precision {torch.get_float32_matmul_precision()}")
    header = (
        f"{'N':>6} {'D':>4} | {'ours s':>7} {'GEMM s':>7} {'ours/GEMM':>9} | {'naive s':>7} {'ours/naive':>10} | "
        f"{'ops':>5} {'est %':>5} | {'DADApy s':>8} {'DADApy/ours':>11} | check"
    )
    print(header)
    print("-" * len(header))
    for spec in args.sizes.split(","):
        n, d = (int(v) for v in spec.lower().split("x"))
        xn, yn, labels = make_data(n, d)
        x, y = torch.from_numpy(xn).to(device), torch.from_numpy(yn).to(device)
        ours(x[:256], y[:256], labels[:256])  # warm-up
        t_ours, vals = timed(lambda x=x, y=y, labels=labels: ours(x, y, labels), device, args.repeats)
        t_gemm, _ = timed(lambda x=x, y=y: gemm(x, y), device, args.repeats)
        t_naive, _ = timed(lambda x=x, y=y: naive(x, y), device, args.repeats)
        with OpCounter() as ops:
            ours(x, y, labels)
        nx, ny = knn(x, 64, candidates=CANDIDATES), knn(y, 64, candidates=CANDIDATES)
        t_est, _ = timed(lambda nx=nx, ny=ny, labels=labels: estimators(nx, ny, labels), device, args.repeats)
        row = (
            f"{n:>6} {d:>4} | {t_ours:7.3f} {t_gemm:7.3f} {t_ours / t_gemm:9.2f} | {t_naive:7.3f} {t_ours / t_naive:10.2f} | "
            f"{ops.total:>5} {100 * t_est / t_ours:5.1f} |"
        )
        if args.dadapy_python:
            ref = run_dadapy(args.dadapy_python, xn, yn, labels, args.repeats, args.dadapy_dtype)
            dv = ref["values"]
            check = max(
                abs(vals["twonn"] - dv["twonn"]) / dv["twonn"],
                max(abs(a - b) / b for a, b in zip(vals["gride"], dv["gride"])),
                abs(vals["label"] - dv["label"]),
                abs(vals["overlap"] - dv["overlap"]),
            )
            row += f" {ref['time']:8.3f} {ref['time'] / t_ours:11.2f} | max rel diff {check:.1e}"
        else:
            row += f" {'-':>8} {'-':>11} | (no --dadapy-python)"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
