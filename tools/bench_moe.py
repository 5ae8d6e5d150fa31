#!/usr/bin/env python
"""Benchmark the LoRA-MoE layer against the frozen nn.Linear it wraps, and print a markdown table.

For each shape and implementation: forward without autograd, forward with autograd, and
forward + backward (input requires grad, only the adapters are trainable). Every round runs all
contenders in shuffled order; the table shows median wall times over the rounds and the median of the
per-round ratios to the base Linear; for forward + backward also the ratio of the fastest runs and the
median ratio of process CPU time, as checks on a busy machine. Rows "adapter only" time the layer
with its base matmul replaced by zeros; "1 + adapter-only share" is the layer's cost estimated from
them (the most precise figure when other jobs share the cores).

    OMP_NUM_THREADS=2 python tools/bench_moe.py --threads 2 --rounds 9
    python tools/bench_moe.py --shapes 512x1408 --tokens 256 --rounds 3     # quick
    python tools/bench_moe.py --device cuda --dtype bfloat16 --impls loop,dense,triton --rounds 20
"""
import argparse, datetime, os, platform, sys, time

import torch


def machine_info(device: str) -> str:
    "One line describing the machine and the library versions."
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): cpu = line.split(":", 1)[1].strip(); break
    except OSError: pass
    dev = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU {cpu}, {os.cpu_count()} cores"
    return (f"{dev}; torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} "
            f"{platform.release()}; torch threads {torch.get_num_threads()}")


def markdown(rows: list[dict], cols: list[str]) -> str:
    "A GitHub markdown table (no extra dependency)."
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows: out.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096x11008,11008x4096,1024x2816", help="d_in x d_out, comma separated")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--impls", default="loop,grouped,dense")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave as is)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--passes", default="nograd,fwd,fwdbwd", help="any of nograd, fwd, fwdbwd")
    ap.add_argument("--out", default=None, help="also write the markdown to this file")
    a = ap.parse_args(argv)

    from llmbind.moe import bench_lora_moe
    if a.threads: torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    impls = tuple(a.impls.split(","))
    names = {"nograd": "forward (no grad)", "fwd": "forward", "fwdbwd": "forward+backward"}
    passes = tuple(names[p] for p in a.passes.split(","))
    load0, t0 = os.getloadavg(), time.time()
    rows = []
    for shape in a.shapes.split(","):
        d_in, d_out = map(int, shape.lower().split("x"))
        df = bench_lora_moe(d_in, d_out, a.tokens, impls, a.experts, a.top_k, a.rank, 16, dtype, a.device, a.rounds, a.threads,
                            passes=passes)
        for name, r in df.iterrows():
            ad = f"adapter only: {name.removeprefix('LoRA-MoE ')}"
            row = {"shape": f"{d_in}→{d_out}", "T": a.tokens, "layer": name}
            for p, short in [("forward (no grad)", "fwd no-grad"), ("forward", "fwd"), ("forward+backward", "fwd+bwd")]:
                if p not in passes: continue
                row[f"{short} ms (x base)"] = f"{r[(p, 'ms')]:.1f} ({r[(p, 'x base')]:.3f})"
                if p == "forward+backward":
                    est = f"{1 + df.loc[ad, (p, 'x base')]:.3f}" if name.startswith("LoRA-MoE") and ad in df.index else ""
                    row.update({"fwd+bwd x base, fastest runs": f"{r[(p, 'x base (min)')]:.3f}",
                                "fwd+bwd x base, CPU time": f"{r[(p, 'x base (CPU time)')]:.3f}",
                                "fwd+bwd: 1 + adapter-only share": est})
            rows.append(row)
        print(f"done {shape}", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    text = "\n".join([
        f"Machine: {machine_info(a.device)}. dtype {a.dtype}, N={a.experts}, k={a.top_k}, r={a.rank}; "
        f"{a.rounds} paired rounds; {datetime.date.today()}; run took {time.time() - t0:.0f} s; "
        f"load average (1 min) {load0[0]:.1f} at start, {load1[0]:.1f} at end.",
        "",
        markdown(rows, list(rows[0])),
    ])
    print(text)
    if a.out:
        with open(a.out, "w") as f: f.write(text + "\n")
    return text


if __name__ == "__main__":
    main()
