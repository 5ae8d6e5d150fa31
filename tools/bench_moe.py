#!/usr/bin/env python
"""Benchmark the LoRA-MoE layer against the frozen nn.Linear it wraps, and print a markdown table.

The same as `llmbind bench` (llmbind.kernels.bench_command). For each shape and implementation:
forward without autograd, forward with autograd, and forward + backward (input requires grad, only
the adapters are trainable). Every round runs all contenders in shuffled order; the table shows
median wall times and the median of the per-round ratios to the base Linear; for forward + backward
also the ratio of the fastest runs and the median ratio of process CPU time, as checks on a busy
machine. Rows "adapter only" time the layer with its base matmul replaced by zeros; "1 + adapter-only
share" is the layer's cost estimated from them (the most precise figure when other jobs share the cores).

    OMP_NUM_THREADS=1 python tools/bench_moe.py --threads 1 --rounds 9
    OMP_NUM_THREADS=1 python tools/bench_moe.py --threads 1 --rounds 25 --impls loop,dense --passes fwdbwd --shapes 4096x11008,11008x4096
    python tools/bench_moe.py --shapes 512x1408 --tokens 256 --rounds 3                      # quick
    python tools/bench_moe.py --device cuda --dtype bfloat16 --impls loop,dense,triton --rounds 20
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the llmbind of this checkout, not another install
from llmbind.kernels import bench_command

if __name__ == "__main__":
    sys.exit(bench_command(sys.argv[1:]))
