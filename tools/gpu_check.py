#!/usr/bin/env python
"""The checks that need a GPU, in one run, printed as markdown (and written to --out):

1. the LoRA-MoE implementations (dense, grouped, Triton compiled for the card, the fused autograd Function)
   against the float64 loop reference on CUDA tensors, the notebook's cases in fp32 and bf16 plus a 7B-sized
   one; then the fused layer under torch.compile and under CUDA graphs (`fused_compile`);
2. the layer benchmark (`llmbind bench`) in bf16 at 512 and 4096 tokens, 7B FFN shapes, with plain LoRA
   (PEFT) as a second yardstick, and decoding (1 and 8 tokens, no grad) as a path of its own;
3. the whole tiny model on the GPU: loss and gradients of the implementations against each other, fp32 on
   GPU against fp32 on CPU, bf16 (the GPU default) against fp32, generation with masks;
4. training through DeepSpeed with the stand-in model: `train` with the tiny preset as it is (CPU, fp32),
   `train_gpu` and `train_gpu_bf16` moved to the GPU (nccl): the loss falls, and a run stopped and resumed
   ends with the weights of an uninterrupted one;
5. `demo`: `llmbind demo --quick` (the tiny preset trains on the CPU even here), then `stage_b_gpu` and
   `stage_b_gpu_bf16`: the demo's stage B (the real tiny LLMBind) from that run's base, on the GPU.

The tiny preset says `device="cpu"`, so the GPU parts override `device` and `train.precision`.
A run on an NVIDIA H200 is recorded in tools/gpu_check_h200_2026-11-27.md.

Each part reports its own failure and the next one still runs; the exit status counts the failures.

    python tools/gpu_check.py --out gpu_check.md            # about 6 minutes on one H200
    python tools/gpu_check.py --dry-run --parts model,train  # the script itself on a CPU (no Triton, small shapes)
    python tools/gpu_check.py --parts kernels,model         # a subset
"""
import argparse, json, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))   # the llmbind of this checkout, not another install
LINES: list[str] = []
DEV = "cuda"        # --dry-run: "cpu", to try the script itself on a machine without a GPU


def say(s: str = ""):
    print(s, flush=True)
    LINES.append(s)


def table(rows: list[dict]):
    if not rows: return
    cols = list(rows[0])
    say("| " + " | ".join(cols) + " |")
    say("|" + "---|" * len(cols))
    for r in rows: say("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    say()


def part_env():
    import torch, platform
    vers = {}
    from importlib.metadata import version, PackageNotFoundError
    for m in ("torch", "triton", "transformers", "peft", "deepspeed", "diffusers", "segment-anything"):
        try: vers[m] = version(m)
        except PackageNotFoundError: vers[m] = "missing"
    gpu = (f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
           if DEV == "cuda" else "none (dry run on the CPU)")
    say(f"GPU: {gpu}, CUDA {torch.version.cuda}; Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    say()


def part_kernels():
    import torch
    from llmbind.kernels import check_impl
    cases = dict(default={}, one_token=dict(T=1), odd_dims=dict(T=7, d_in=13, d_out=11, r=3),
                 k_equals_N=dict(top_k=4), one_expert=dict(num_experts=1, top_k=1), top1=dict(top_k=1),
                 empty_experts=dict(T=2, num_experts=8, top_k=2), no_out=dict(with_out=False),
                 bf16=dict(dtype=torch.bfloat16),
                 big_fp32=dict(T=512, d_in=4096, d_out=11008, num_experts=4, top_k=2, r=8),
                 big_bf16=dict(T=512, d_in=4096, d_out=11008, num_experts=4, top_k=2, r=8, dtype=torch.bfloat16))
    tol = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
    rows, bad = [], 0
    for case, kw in cases.items():
        row = {"case": case, "dtype": str(kw.get("dtype", torch.float32)).removeprefix("torch.")}
        for impl in ("dense", "grouped", "triton", "fused"):
            try:
                if DEV == "cpu" and (case.startswith("big") or impl == "triton"): continue
                errs = check_impl(impl, device=DEV, **kw)
                worst = max(errs.values())
                ok = worst < tol[kw.get("dtype", torch.float32)]
                row[impl] = f"{worst:.1e}" + ("" if ok else " FAIL")
                bad += not ok
            except Exception as e:
                row[impl] = f"error: {type(e).__name__}: {str(e)[:80]}"
                bad += 1
        rows.append(row)
    say("### LoRA-MoE implementations against the float64 loop reference (worst relative error of output and "
        f"gradients; tolerance fp32 {tol[torch.float32]:g}, bf16 {tol[torch.bfloat16]:g})")
    say()
    table(rows)
    if bad: raise AssertionError(f"{bad} implementation checks failed")


def part_bench():
    from llmbind.bench import bench_command
    say("### Layer benchmark, bf16, 512 and 4096 tokens, and decoding (1 and 8 tokens, forward without grad)")
    say()
    f = Path(tempfile.mkstemp(suffix=".md")[1])
    bench_command(["--device", DEV, "--dtype", "bfloat16",
                   "--impls", "loop,grouped,dense,triton,fused" if DEV == "cuda" else "loop,dense,fused",
                   "--shapes", "4096x11008,11008x4096" if DEV == "cuda" else "256x512", "--tokens", "512,4096",
                   "--decode", "1,8", "--rounds", "15" if DEV == "cuda" else "3", "--out", str(f)])
    LINES.extend(f.read_text().splitlines() + [""])


def part_fused_compile():
    "The fused layer under torch.compile and under CUDA graphs: same outputs and gradients as eager, and its speed."
    import torch
    from torch import nn
    from llmbind.moe import LoRAMoELinear
    from llmbind.bench import time_paired
    d_in, d_out, T = (4096, 11008, 512) if DEV == "cuda" else (64, 96, 16)
    dt = torch.bfloat16
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False, device=DEV, dtype=dt).requires_grad_(False)
    layer = LoRAMoELinear(base, impl="fused")
    with torch.no_grad(): layer.lora_B.normal_(std=0.01)
    x = torch.randn(T, d_in, device=DEV, dtype=dt, requires_grad=True)
    gout = torch.randn(T, d_out, device=DEV, dtype=dt)
    params = [x, layer.router.weight, layer.lora_A, layer.lora_B]

    def step(f):
        for p in params: p.grad = None
        y = f(x)
        (y.float() * gout.float()).sum().backward()
        return [y.detach().float()] + [p.grad.float() for p in params if p.grad is not None]

    ref = step(layer)
    modes = {"compile (default)": dict(backend="inductor") if DEV == "cuda" else dict(backend="aot_eager"),
             "compile (reduce-overhead: CUDA graphs)": dict(mode="reduce-overhead")}
    rows, fns, bad = [], {"base Linear": lambda: step(base), "fused, eager": lambda: step(layer)}, 0
    for name, kw in modes.items():
        if DEV == "cpu" and "CUDA" in name: continue
        try:
            torch._dynamo.reset()
            f = torch.compile(layer, **kw)
            for _ in range(3): got = step(f)      # warm-up: compile, record the graphs
            err = max(((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() for a, b in zip(got, ref))
            ok = err < 3e-2
            rows.append({"variant": name, "worst rel. diff to eager (out, grads of x, W_g, A, B)": f"{err:.1e}",
                         "ok": "yes" if ok else "NO"})
            bad += not ok
            fns[f"fused, {name}"] = (lambda f=f: step(f))
        except Exception as e:
            traceback.print_exc()
            rows.append({"variant": name, "worst rel. diff to eager (out, grads of x, W_g, A, B)": f"error: {type(e).__name__}: {str(e)[:100]}", "ok": "NO"})
            bad += 1
    say(f"### Fused LoRA-MoE under torch.compile, bf16, {d_in}→{d_out}, T={T}")
    say()
    table(rows)
    sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)
    df = time_paired({k: (lambda f=f: (f(), sync())) for k, f in fns.items()}, baseline="base Linear", rounds=15 if DEV == "cuda" else 3)
    table([{"layer (fwd+bwd)": k, "ms": f"{v['median_ms']:.3f}", "x base": f"{v['ratio']:.3f}"} for k, v in df.iterrows()])
    if bad: raise AssertionError(f"{bad} compiled variants failed")


def part_model():
    import numpy as np, torch
    from llmbind.config import LLMBindConfig
    from llmbind.model import LLMBindForCausalLM
    sys.path.insert(0, str(ROOT / "tests"))
    from test_model import samples, collate       # the six-task batch of the model tests (chat, vqa, seg, gen, det, cls)
    torch.set_num_threads(os.cpu_count() or 1)    # the test module sets one thread
    ss = samples()

    def to(x, dev):
        if torch.is_tensor(x): return x.to(dev)
        if isinstance(x, dict): return {k: to(v, dev) for k, v in x.items()}
        if isinstance(x, (list, tuple)): return type(x)(to(v, dev) for v in x)
        return x

    def run(impl, device, dtype):
        from llmbind.moe import lora_moe_layers
        cfg = LLMBindConfig.tiny().override(f"moe.impl={'dense' if impl == 'fused' else impl}", f"dtype={dtype}")
        m = LLMBindForCausalLM.from_config(cfg, device=device, seed=1)
        for l in lora_moe_layers(m).values(): l.impl = impl     # the config's moe.impl does not list "fused" yet
        batch = collate(m, ss)
        m.train()
        out = m(**to(batch, device))
        out.loss.backward()
        grads = {n: p.grad.detach().float().cpu() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
        return m, {k: float(v) for k, v in out.terms.items()}, grads

    def rel(g1, g2):
        return max(((g1[k] - g2[k]).abs().max() / g2[k].abs().max().clamp_min(1e-6)).item() for k in g2)

    t0 = time.time()
    _, ref_terms, ref_grads = run("loop", "cpu", "float32")
    rows, bad = [], 0
    for impl, dev, dt, tol in [("loop", DEV, "float32", 1e-3), ("dense", DEV, "float32", 1e-3),
                               ("grouped", DEV, "float32", 1e-3), ("triton", DEV, "float32", 1e-3),
                               ("fused", DEV, "float32", 1e-3), ("dense", DEV, "bfloat16", 0.25),
                               ("triton", DEV, "bfloat16", 0.25), ("fused", DEV, "bfloat16", 0.25)]:
        if DEV == "cpu" and impl == "triton": continue
        try:
            m, terms, grads = run(impl, dev, dt)
            dl = abs(terms["total"] - ref_terms["total"]) / abs(ref_terms["total"])
            dg = rel(grads, ref_grads)
            ok = dl < tol and (dg < tol * 10 if dt == "float32" else dl < tol)
            rows.append({"impl": impl, "device": dev, "dtype": dt, "total loss": f"{terms['total']:.5f}",
                         "rel. loss diff": f"{dl:.1e}", "worst rel. grad diff": f"{dg:.1e}", "ok": "yes" if ok else "NO"})
            bad += not ok
        except Exception as e:
            rows.append({"impl": impl, "device": dev, "dtype": dt, "total loss": f"error: {type(e).__name__}: {str(e)[:100]}"})
            traceback.print_exc()
            bad += 1
    say(f"### Tiny model, one batch of six tasks: against fp32 on CPU with the loop reference "
        f"(total loss {ref_terms['total']:.5f})")
    say()
    table(rows)
    try:
        m, _, _ = run("dense", DEV, "bfloat16")
        m.eval()
        img = np.random.default_rng(5).integers(0, 255, (37, 81, 3), dtype=np.uint8)
        with torch.no_grad():
            r = m.generate("segment it", image=img, max_new_tokens=10)
            f = m.generate("segment it", image=img, response="<seg> <det> <cls>")
        ok = tuple(f.masks.shape) == (1, 37, 81) and f.boxes is not None
        say(f"generate on the GPU (bf16): {len(r.token_ids)} tokens; forced '<seg> <det> <cls>': masks "
            f"{tuple(f.masks.shape)} on {f.masks.device if torch.is_tensor(f.masks) else 'numpy'}, boxes "
            f"{tuple(f.boxes.shape)}, classes {f.classes} -> {'ok' if ok else 'WRONG'} ({time.time() - t0:.0f} s for this part)")
        say()
        bad += not ok
    except Exception as e:
        traceback.print_exc()
        say(f"generate on the GPU failed: {type(e).__name__}: {e}")
        bad += 1
    if bad: raise AssertionError(f"{bad} model checks failed")


def part_train(out: Path, device: str = "cpu", precision: str = "fp32"):
    import torch
    from safetensors.torch import load_file
    from llmbind.config import LLMBindConfig
    from llmbind.train import launch, read_metrics, train_command
    M, D = "llmbind.standin:standin_model", "llmbind.standin:standin_data"
    cfg = LLMBindConfig.tiny().override("train.total_steps=20", "train.warmup_steps=4", "train.lr=1e-2",
                                        "train.micro_batch_size=4", "train.grad_accum=2", "train.save_every=5",
                                        "train.nproc=1", f"device={device}",     # the tiny preset itself says cpu, fp32
                                        f"train.precision={precision}")
    t0 = time.time()
    a = launch(1, cfg, M, D, out / "a", quiet=True, progress=False)
    ta = time.time() - t0
    launch(1, cfg, M, D, out / "b", quiet=True, progress=False, stop_after=10)
    rc = train_command(["--out", str(out / "b"), "--resume", "--quiet"])
    tr = read_metrics(out / "a", "train")
    first, last = tr[0]["loss"], tr[-1]["loss"]
    wa, wb = load_file(out / "a" / "model.safetensors"), load_file(out / "b" / "model.safetensors")
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    launch_cfg = json.loads((out / "a" / "launch.json").read_text())
    sa = json.loads((out / "a" / "summary.json").read_text())
    say(f"### Training through DeepSpeed (stand-in model, ZeRO-2, one rank, device {device!r}: ran on {sa.get('device')}, "
        f"precision {launch_cfg['config']['train'].get('precision', 'auto')})")
    say()
    say(f"20 steps in {ta:.1f} s (launch included); loss {first:.4f} -> {last:.4f}; resume exit status {rc}; "
        f"stopped after 10 and resumed vs uninterrupted: max |weight difference| {diff:.3g}")
    keys = [k for k in ("step", "loss", "lr", "tokens_per_s", "precision", "device") if k in tr[-1]]
    say(f"last metrics row: { {k: tr[-1][k] for k in keys} }")
    say()
    if not (last < first and rc == 0): raise AssertionError("the loss did not fall or the resume failed")
    if diff != 0: say(f"(resume is not bit-exact here: {diff:.3g})")


def part_stage_b(work: Path, device: str = "cuda", steps: int = 20, precision: str = "fp32"):
    "Stage B of the demo (the real tiny LLMBind model) on `device`, from the quick demo's world and stage-A base."
    from llmbind.demo import demo_config
    from llmbind.pipeline import pipeline_functions
    from llmbind.train import launch, read_metrics
    demo = work / "demo"
    if not (demo / "stage_a").exists(): raise FileNotFoundError("run the demo part first (it writes the world and the stage-A base)")
    cfg = demo_config(demo, steps_b=steps, quick=True).override(f"device={device}", "train.nproc=1", f"train.eval_every={steps}",
                                                              f"train.save_every={steps}", f"train.precision={precision}")
    t0 = time.time()
    s = launch(1, cfg, out_dir=work / f"stage_b_{device}_{precision}", quiet=True, progress=False, overwrite=True,
               **pipeline_functions(cfg))
    tr = read_metrics(work / f"stage_b_{device}_{precision}", "train")
    ev = read_metrics(work / f"stage_b_{device}_{precision}", "eval")
    say(f"### Demo stage B (LLMBind: task tokens, LoRA-MoE, SAM, DeepSpeed ZeRO-2) with device {device!r}, precision {precision}")
    say()
    say(f"{steps} steps in {time.time() - t0:.0f} s (launch included), ran on {s.get('device')}, median step "
        f"{1e3 * s.get('median_step_time_s', float('nan')):.0f} ms; loss {tr[0]['loss']:.3f} -> {tr[-1]['loss']:.3f}; "
        f"terms at the end: { {k: round(v, 3) for k, v in tr[-1].items() if k.startswith('loss/') and k.count('/') == 1} }; "
        f"eval total {ev[-1].get('eval/total', float('nan')) if ev else 'none':.4}")
    say()
    if not (tr[-1]["loss"] < tr[0]["loss"]): raise AssertionError("the stage-B loss did not fall")


def part_demo(out: Path):
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "llmbind.cli", "demo", "--quick", "--nproc", "1", "--out", str(out / "demo")],
                       capture_output=True, text=True, timeout=400)
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-12:])
    say(f"### `llmbind demo --quick --nproc 1` on this machine (the tiny preset trains on the CPU): exit {p.returncode}, {time.time() - t0:.0f} s")
    say()
    say("```\n" + tail + "\n```")
    say()
    rep = out / "demo" / "report.json"
    if rep.exists():
        r = json.loads(rep.read_text())
        say(f"stage B: {r['stage_b']}")
        say(f"timings (s): { {k: round(v, 1) for k, v in r['timings'].items()} }")
        say()
    if p.returncode != 0: raise AssertionError("the quick demo failed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="also write the markdown here")
    ap.add_argument("--parts", default="kernels,fused_compile,bench,model,train,train_gpu,train_gpu_bf16,demo,stage_b_gpu,stage_b_gpu_bf16")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--dry-run", action="store_true", help="run the script on the CPU (small shapes, no Triton) to check it")
    a = ap.parse_args(argv)
    import torch
    global DEV
    if a.dry_run: DEV = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; these checks need a GPU"); return 2
    work = Path(a.work or tempfile.mkdtemp(prefix="llmbind_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"# GPU checks ({time.strftime('%Y-%m-%d')})")
    say()
    part_env()
    parts = {"kernels": part_kernels, "fused_compile": part_fused_compile, "bench": part_bench, "model": part_model,
             "train": lambda: part_train(work / "train", "cpu" if DEV == "cpu" else "auto"),
             "train_gpu": lambda: part_train(work / "train_gpu", DEV),
             "train_gpu_bf16": lambda: part_train(work / "train_gpu_bf16", DEV, "bf16"),
             "demo": lambda: part_demo(work), "stage_b_gpu": lambda: part_stage_b(work, DEV),
             "stage_b_gpu_bf16": lambda: part_stage_b(work, DEV, precision="bf16")}
    failed, summary = [], []
    for name in a.parts.split(","):
        t0 = time.time()
        try:
            parts[name]()
            summary.append(f"{name}: ok ({time.time() - t0:.0f} s)")
        except Exception as e:
            traceback.print_exc()
            say(f"**{name} failed**: {type(e).__name__}: {e}")
            say()
            failed.append(name)
            summary.append(f"{name}: FAILED ({time.time() - t0:.0f} s)")
        if a.out: Path(a.out).write_text("\n".join(LINES) + "\n")
    say("Summary: " + "; ".join(summary))
    if a.out: Path(a.out).write_text("\n".join(LINES) + "\n")
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
