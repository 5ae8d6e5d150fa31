#!/usr/bin/env python
"""Benchmark a training step of the demo's stage A with the LM head over every position against
`supervised_logits=True` (the head only where a label is predicted), and print a markdown table.

Both variants run on the same batches in alternating order on one model (forward + backward, no
optimizer step); the table shows median milliseconds per step and the median of the per-round ratios,
and the largest difference of the loss between the two (they compute the same loss).

    OMP_NUM_THREADS=1 python tools/bench_logits.py --rounds 12
    python tools/bench_logits.py --data runs/demo/data --batch 32 --rounds 20
"""
import argparse, statistics, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the llmbind of this checkout, not another install


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="a shapes world written by `llmbind demo` (default: a small one in a temp folder)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch
    from llmbind.demo import demo_config, demo_sizes, DemoData, STAGE_A_MIX, train_demo_tokenizer
    from llmbind.model import LLMBindForCausalLM
    from llmbind.synthetic import ensure_shapes_world
    torch.set_num_threads(a.threads)
    tmp = tempfile.TemporaryDirectory()
    cfg = demo_config(tmp.name, quick=True)
    data_dir = a.data or str(Path(tmp.name) / "data")
    if a.data is None:
        ensure_shapes_world(data_dir, demo_sizes(quick=True), seed=0, image_size=cfg.data.image_size, kinds=cfg.segment.class_names)
    train_demo_tokenizer(data_dir, cfg.llm.tokenizer_path, cfg.llm.vocab_size)       # the demo's tokenizer, learnt from that world
    cfg = cfg.override("moe.enabled=false", "llm.pretrained_path=null", f"data.data_dir={data_dir}")
    model = LLMBindForCausalLM.from_config(cfg, seed=0)
    model.requires_grad_(False); model.llm.requires_grad_(True); model.projector.requires_grad_(True); model.train()
    data = DemoData(cfg, data_dir, mix=STAGE_A_MIX, batch_size=a.batch, seed=0, plain=True, group=4)
    times, diffs, sup = {"full": [], "supervised": []}, [], []
    for r in range(a.rounds):
        b = next(data); b.pop("ids", None)
        n_tok = int(b["attention_mask"].sum()); sup.append(int((b["labels"] != -100).sum()) / max(1, n_tok))
        order = ["full", "supervised"] if r % 2 == 0 else ["supervised", "full"]
        losses = {}
        for name in order:
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            o = model(**b, supervised_logits=name == "supervised")
            o.loss.backward()
            times[name].append(time.perf_counter() - t0); losses[name] = float(o.loss.detach())
        diffs.append(abs(losses["full"] - losses["supervised"]))
    skip = 1 if a.rounds > 2 else 0                                      # the first round warms up
    med = {k: 1000 * statistics.median(v[skip:]) for k, v in times.items()}
    ratio = statistics.median([f / s for f, s in zip(times["full"][skip:], times["supervised"][skip:])])
    print(f"stage-A step (batch {a.batch}, {a.threads} thread(s), {a.rounds} rounds; supervised share of the text tokens "
          f"{statistics.mean(sup):.0%}, vocabulary {model.llm.lm_head.out_features})\n")
    print("| LM head | forward + backward, ms | speed-up |\n|---|---|---|")
    print(f"| every position | {med['full']:.0f} | 1.00 |")
    print(f"| supervised positions only | {med['supervised']:.0f} | {ratio:.2f} |")
    print(f"\nlargest loss difference between the two: {max(diffs):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
