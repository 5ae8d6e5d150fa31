#!/usr/bin/env python
"""Benchmark the LoRA-MoE layer against the frozen nn.Linear it wraps, and print a markdown table.

The same as `llmbind bench` (llmbind.bench.bench_command). For each shape and implementation:
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
    python tools/bench_moe.py --decoder-layer 1024x2816 --tokens 256 --impls dense,fused --rounds 9   # one whole layer

`--decoder-layer HIDDENxINTERMEDIATE` times one transformers LlamaDecoderLayer (attention + FFN) instead: the frozen
layer against the same layer with LoRA-MoE in its FFN linears (gate/up/down), forward + backward with the hidden
states requiring grad. 4096x11008 is the 7B layer (run it on a GPU; on a CPU use a reduced width).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the llmbind of this checkout, not another install
from llmbind.bench import bench_command


def bench_decoder_layer(hidden: int, intermediate: int, tokens: int, impls: list[str], device: str = "cpu",
                        dtype: str = "float32", rounds: int = 9, heads: int = 0, seed: int = 0) -> list[dict]:
    "fwd+bwd of one LlamaDecoderLayer, frozen, against the same layer with LoRA-MoE in its FFN; rows for a table."
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
    from llmbind.config import MoEConfig
    from llmbind.bench import time_paired
    from llmbind.moe import LoRAMoELinear
    torch.manual_seed(seed)
    dt = getattr(torch, dtype)
    heads = heads or max(1, hidden // 128)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                      num_key_value_heads=heads, num_hidden_layers=1)
    cfg._attn_implementation = "sdpa"
    base = LlamaDecoderLayer(cfg, 0).to(device=device, dtype=dt).requires_grad_(False)
    rope = LlamaRotaryEmbedding(cfg).to(device)
    x = torch.randn(1, tokens, hidden, device=device, dtype=dt, requires_grad=True)
    pos = rope(x, torch.arange(tokens, device=device)[None])
    gout = torch.randn(1, tokens, hidden, device=device, dtype=dt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    moe = MoEConfig()
    layers = {"frozen LlamaDecoderLayer": base}
    for impl in impls:
        import copy
        layer = copy.deepcopy(base)
        for name in moe.target_modules:
            lin = getattr(layer.mlp, name)
            m = LoRAMoELinear(lin, moe.num_experts, moe.top_k, moe.r, moe.lora_alpha, impl=impl)
            with torch.no_grad(): m.lora_B.normal_(std=0.01)
            setattr(layer.mlp, name, m)
        layers[f"+ LoRA-MoE {impl} (gate, up, down)"] = layer

    def fwd_bwd(layer):
        params = [p for p in layer.parameters() if p.requires_grad]
        def f():
            x.grad = None
            for p in params: p.grad = None
            out = layer(x, position_embeddings=pos)
            (out[0] if isinstance(out, tuple) else out).backward(gout)
            sync()
        return f

    df = time_paired({k: fwd_bwd(v) for k, v in layers.items()}, baseline="frozen LlamaDecoderLayer", rounds=rounds)
    return [{"layer": k, "T": tokens, "width": f"{hidden}/{intermediate}", "fwd+bwd ms": f"{r['median_ms']:.1f}",
             "x frozen layer": f"{r['ratio']:.3f}", "x frozen, fastest runs": f"{r['min_ratio']:.3f}",
             "x frozen, CPU time": f"{r['cpu_ratio']:.3f}"} for k, r in df.iterrows()]


def main(argv) -> int:
    if "--decoder-layer" not in argv: return bench_command(argv)
    import argparse, os, torch
    from llmbind.bench import _machine_info, _markdown
    ap = argparse.ArgumentParser(prog="bench_moe.py --decoder-layer")
    ap.add_argument("--decoder-layer", required=True, help="HIDDENxINTERMEDIATE, e.g. 4096x11008 (7B) or 1024x2816")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--impls", default="dense,fused")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    h, i = map(int, a.decoder_layer.lower().split("x"))
    load0 = os.getloadavg()
    rows = bench_decoder_layer(h, i, a.tokens, a.impls.split(","), a.device, a.dtype, a.rounds)
    print(f"Machine: {_machine_info(a.device)}. One LlamaDecoderLayer, dtype {a.dtype}, {a.rounds} paired rounds; load "
          f"average (1 min) {load0[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end.\n\n" + _markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
