#!/usr/bin/env bash
# Every GPU number issues 9 and 10 ask for, in ONE device run (~8-10 min on one H100 / H200), for a
# session that is lent a GPU (the `device` tool's `run`: one command, $OUT comes back):
#
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
#
# The device machine has torch, lightning, transformers, tensorboard, scipy, matplotlib (no wandb,
# no DADApy): the project runs from the copied tree with PYTHONPATH=. Each step is capped so that
# one slow step cannot eat the whole budget; the outputs land in $OUT/*.txt.
set -u
export PYTHONPATH=. HF_HUB_OFFLINE=1 MPLBACKEND=Agg WANDB_MODE=disabled
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 cap=$2; shift 2
    echo "== $name (cap ${cap}s)"
    timeout "$cap" "$@" > "$OUT/$name.txt" 2>&1; echo "exit $?" >> "$OUT/$name.txt"
    tail -n 12 "$OUT/$name.txt"
}
# correctness first: the CUDA paths (knn float32 / float16, outliers, copies, batched, estimators) against the CPU's
step check_cuda 40 python3 benchmarks/check_cuda.py
# issue 9: knn vs the fp32 GEMM and naive cdist+topk; estimators' share; op counts
# (candidates "auto": float16 candidate GEMMs from N = 32,768; then the same large sizes with float32 GEMMs)
step geometry 120 python3 benchmarks/bench_geometry.py --device cuda --sizes 2000x768,10000x768,50000x768,100000x768 --repeats 3
step geometry_fp32 45 python3 benchmarks/bench_geometry.py --device cuda --sizes 50000x768,100000x768 --repeats 1 --candidates float32
# issue 10: many small clouds (clouds/s, ratio to bmm+topk), and N = 10^6 within 16 GiB
step token_clouds 60 python3 benchmarks/bench_token_clouds.py --device cuda --b 256 --n 1024 --d 768 --k 64
# (float16 candidates within 16 GiB, against the unbudgeted IEEE float32 run: same indices and distances)
step knn_1m 150 python3 benchmarks/bench_knn_memory.py --device cuda --n 1000000 --d 768 --k 64 --budget-mb 16384
# issue 9: monitor overhead where models train (GeometryMonitor background="auto": the analysis in a worker
# thread on its own CUDA stream; blocking = what training waited)
# (geometry in the background and synchronously, and the PullbackMonitor, against one baseline run; the
# figures are drawn in the worker thread in the background, inline with --background off)
step callback_overhead 200 python3 benchmarks/bench_callback_overhead.py --accelerator gpu --layers 12 --width 256 --probe 1797 --steps 800 --background auto,off
step gpt2_overhead 120 python3 benchmarks/bench_gpt2_overhead.py --device cuda --size small --probe 1024 --seq 256 --steps 300 --every 100 --batch 16
