"""Does the demo's 2-layer base learn to copy at a given learning rate?

Trains the stage-A LLaMA (2 layers, width 128, the tiny tokenizer) from scratch on the pure copy task
"USER: Repeat: w1 ... wk ASSISTANT: w1 ... wk" with random one-token words, and prints, per learning
rate, the token accuracy of the copied words on fixed held-out sequences every `--every` steps. A
model that has formed induction heads copies almost every token; one that has not stays at chance.

    python tools/induction_lr.py --lrs 1e-3 3e-3 --steps 600
"""
import argparse, random, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from llmbind.config import LLMBindConfig
from llmbind.model import build_tokenizer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = LLMBindConfig.tiny()
    tok = build_tokenizer(cfg)
    vocab = tok.get_vocab()
    words = sorted(i for t, i in vocab.items() if t.startswith("\u0120") and t[1:].isalpha() and len(t) >= 4)
    pre = tok(" USER: Repeat:", add_special_tokens=False)["input_ids"]
    mid = tok(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id

    def batch(rng, n):
        xs, ys = [], []
        for _ in range(n):
            s = [rng.choice(words) for _ in range(rng.randint(3, 20))]
            xs.append(pre + s + mid + s + [eos]); ys.append([-100] * (len(pre) + len(s) + len(mid)) + s + [eos])
        L = max(map(len, xs))
        return (torch.tensor([x + [tok.pad_token_id] * (L - len(x)) for x in xs]),
                torch.tensor([y + [-100] * (L - len(y)) for y in ys]))

    val = batch(random.Random(12345), 128)
    table = {}
    for lr in a.lrs:
        torch.manual_seed(a.seed)
        c = cfg.llm
        m = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                                         num_hidden_layers=a.layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                                         max_position_embeddings=c.max_position_embeddings))
        opt = torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        rng, t0, row = random.Random(a.seed), time.perf_counter(), {}
        for step in range(1, a.steps + 1):
            x, y = batch(rng, a.batch)
            loss = m(input_ids=x, labels=y).loss
            opt.zero_grad(set_to_none=True); loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
            if step % a.every == 0 or step == a.steps:
                with torch.no_grad():
                    pred = m(input_ids=val[0]).logits[:, :-1].argmax(-1); tgt = val[1][:, 1:]; keep = (tgt != -100) & (tgt != eos)   # the copied words
                    row[step] = float((pred[keep] == tgt[keep]).float().mean())
                print(f"lr {lr:g} step {step} loss {loss.item():.3f} copy accuracy {row[step]:.3f} ({time.perf_counter() - t0:.0f}s)",
                      file=sys.stderr, flush=True)
        table[lr] = row
    steps = sorted({s for r in table.values() for s in r})
    print("| step | " + " | ".join(f"lr {lr:g}" for lr in table) + " |")
    print("|---|" + "---|" * len(table))
    for s in steps: print(f"| {s} | " + " | ".join(f"{table[lr].get(s, float('nan')):.3f}" for lr in table) + " |")
    print(f"copy accuracy of the words (end-of-sequence token not counted); chance is 1/{len(words)} = {1 / len(words):.3f}")


if __name__ == "__main__":
    main()
